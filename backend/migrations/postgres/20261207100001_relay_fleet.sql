-- The relay fleet (docs/deployment.md "Relay fleet"). A peer registers its home relay, where
-- others open tunnels and hole punches to it.
ALTER TABLE peers ADD COLUMN relay TEXT;

-- Every running tracker reports in every few seconds: the relay URL it publishes (if any) and
-- its own counts, so that GET /api/relays lists the live relays and /api/stats sums the
-- figures of every replica instead of showing the answering one's.
CREATE TABLE tracker_instances (
    id             TEXT PRIMARY KEY,      -- random, per process
    relay_url      TEXT,                  -- --relay-url, NULL when it publishes none
    relay_attached BIGINT NOT NULL DEFAULT 0,
    ws_clients     BIGINT NOT NULL DEFAULT 0,
    last_seen      BIGINT NOT NULL        -- Unix ms
);
CREATE INDEX tracker_instances_last_seen ON tracker_instances (last_seen);
