-- How each peer last reached the peers it connects to, as its heartbeats report: a JSON array
-- of {"peer_id", "path"} objects (path: direct, hole_punched or relayed).
ALTER TABLE peers ADD COLUMN connections TEXT NOT NULL DEFAULT '[]';
