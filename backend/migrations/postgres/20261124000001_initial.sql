-- Peers, files, which peer has which file, users, API keys and settings.
CREATE TABLE peers (
    id            TEXT PRIMARY KEY,
    addresses     TEXT NOT NULL,          -- JSON array of strings
    port          BIGINT NOT NULL,
    udp_port      BIGINT,
    relay_only    BOOLEAN NOT NULL DEFAULT FALSE,
    observed_ip   TEXT NOT NULL,
    name          TEXT,
    version       TEXT,
    registered_at BIGINT NOT NULL,       -- Unix ms
    last_seen     BIGINT NOT NULL,       -- Unix ms
    online        BOOLEAN NOT NULL DEFAULT TRUE,
    uploaded      BIGINT NOT NULL DEFAULT 0,
    downloaded    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX peers_last_seen ON peers (last_seen);

CREATE TABLE files (
    id           TEXT PRIMARY KEY,         -- hex SHA-256 of the content
    name         TEXT NOT NULL,
    size         BIGINT NOT NULL,
    chunk_size   BIGINT NOT NULL,
    chunk_count  BIGINT NOT NULL,
    merkle_root  TEXT NOT NULL,
    chunk_hashes BYTEA NOT NULL,            -- 32 bytes per chunk, in order
    created_at   BIGINT NOT NULL
);
CREATE INDEX files_created_at ON files (created_at);

CREATE TABLE file_peers (
    file_id     TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    peer_id     TEXT NOT NULL REFERENCES peers (id) ON DELETE CASCADE,
    have        BYTEA,                      -- bitfield; NULL when the peer has every chunk
    chunks_have BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (file_id, peer_id)
);
CREATE INDEX file_peers_peer_id ON file_peers (peer_id);

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,           -- argon2 PHC string
    role          TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,       -- hex SHA-256 of the key
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
