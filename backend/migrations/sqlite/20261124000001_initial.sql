-- Peers, files, which peer has which file, users, API keys and settings.
CREATE TABLE peers (
    id            TEXT PRIMARY KEY,
    addresses     TEXT NOT NULL,          -- JSON array of strings
    port          INTEGER NOT NULL,
    udp_port      INTEGER,
    relay_only    BOOLEAN NOT NULL DEFAULT FALSE,
    observed_ip   TEXT NOT NULL,
    name          TEXT,
    version       TEXT,
    registered_at INTEGER NOT NULL,       -- Unix ms
    last_seen     INTEGER NOT NULL,       -- Unix ms
    online        BOOLEAN NOT NULL DEFAULT TRUE,
    uploaded      INTEGER NOT NULL DEFAULT 0,
    downloaded    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX peers_last_seen ON peers (last_seen);

CREATE TABLE files (
    id           TEXT PRIMARY KEY,         -- hex SHA-256 of the content
    name         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    chunk_size   INTEGER NOT NULL,
    chunk_count  INTEGER NOT NULL,
    merkle_root  TEXT NOT NULL,
    chunk_hashes BLOB NOT NULL,            -- 32 bytes per chunk, in order
    created_at   INTEGER NOT NULL
);
CREATE INDEX files_created_at ON files (created_at);

CREATE TABLE file_peers (
    file_id     TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    peer_id     TEXT NOT NULL REFERENCES peers (id) ON DELETE CASCADE,
    have        BLOB,                      -- bitfield; NULL when the peer has every chunk
    chunks_have INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (file_id, peer_id)
);
CREATE INDEX file_peers_peer_id ON file_peers (peer_id);

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,           -- argon2 PHC string
    role          TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,       -- hex SHA-256 of the key
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
