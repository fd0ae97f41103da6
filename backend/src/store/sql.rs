//! The SQL text, in the dialect SQLite and PostgreSQL share. Parameters are `$n`.

/// A peer counts as online while `online` and its last heartbeat is at or after the cutoff.
macro_rules! live_peer {
    ($p:literal, $cutoff:literal) => {
        concat!(
            "(",
            $p,
            ".online = TRUE AND ",
            $p,
            ".last_seen >= ",
            $cutoff,
            ")"
        )
    };
}

pub(super) const PEER_PRESENCE: &str = "SELECT online, last_seen FROM peers WHERE id = $1";

pub(super) const UPSERT_PEER: &str = "\
INSERT INTO peers (id, addresses, port, udp_port, relay_only, observed_ip, name, version,
                   registered_at, last_seen, online)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, TRUE)
ON CONFLICT (id) DO UPDATE SET
    addresses = excluded.addresses, port = excluded.port, udp_port = excluded.udp_port,
    relay_only = excluded.relay_only, observed_ip = excluded.observed_ip, name = excluded.name,
    version = excluded.version, last_seen = excluded.last_seen, online = TRUE,
    connections = '[]'";

pub(super) const DELETE_PEER: &str = "DELETE FROM peers WHERE id = $1";

pub(super) const EXPIRE_PEERS: &str =
    "UPDATE peers SET online = FALSE WHERE online = TRUE AND last_seen < $1 RETURNING id";

/// The columns of a `rows::PeerRow` from `peers p`, live at cutoff `$1`.
macro_rules! peer_columns {
    () => {
        concat!(
            "p.id, p.addresses, p.port, p.udp_port, p.relay_only, p.observed_ip, p.name,
        p.version, p.registered_at, p.last_seen, ",
            live_peer!("p", "$1"),
            " AS live,
        (SELECT COUNT(*) FROM file_peers fp WHERE fp.peer_id = p.id) AS files,
        p.uploaded, p.downloaded, p.connections"
        )
    };
}

pub(super) const LIST_PEERS: &str = concat!(
    "SELECT ",
    peer_columns!(),
    " FROM peers p
    WHERE ($2 = FALSE OR ",
    live_peer!("p", "$1"),
    ")
    ORDER BY p.last_seen DESC, p.id
    LIMIT $3 OFFSET $4"
);

pub(super) const GET_PEER: &str =
    concat!("SELECT ", peer_columns!(), " FROM peers p WHERE p.id = $2");

pub(super) const COUNT_PEERS: &str = concat!(
    "SELECT COUNT(*) FROM peers p WHERE ($2 = FALSE OR ",
    live_peer!("p", "$1"),
    ")"
);

pub(super) const FILE_LAYOUT: &str =
    "SELECT size, chunk_size, merkle_root, CAST(length(chain) AS BIGINT) AS chain_len
     FROM files WHERE id = $1";

pub(super) const INSERT_FILE: &str = "\
INSERT INTO files (id, name, size, chunk_size, chunk_count, merkle_root, chunk_hashes, chain, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO NOTHING";

/// Gives a file stored before chains were kept the chain a peer announced with it.
pub(super) const FILL_CHAIN: &str =
    "UPDATE files SET chain = $2 WHERE id = $1 AND length(chain) = 0";

pub(super) const UPSERT_FILE_PEER: &str = "\
INSERT INTO file_peers (file_id, peer_id, have, chunks_have, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (file_id, peer_id) DO UPDATE SET
    have = excluded.have, chunks_have = excluded.chunks_have, updated_at = excluded.updated_at";

pub(super) const DELETE_FILE_PEERS: &str = "DELETE FROM file_peers WHERE file_id = $1";

pub(super) const DELETE_FILE: &str = "DELETE FROM files WHERE id = $1 RETURNING name";

pub(super) const DELETE_FILE_PEER: &str =
    "DELETE FROM file_peers WHERE file_id = $1 AND peer_id = $2";

/// Seeders and leechers of `f.id` among peers live at cutoff `$n`.
macro_rules! swarm_counts {
    ($cutoff:literal) => {
        concat!(
            "(SELECT COUNT(*) FROM file_peers fp JOIN peers p ON p.id = fp.peer_id
              WHERE fp.file_id = f.id AND fp.have IS NULL AND ",
            live_peer!("p", $cutoff),
            ") AS seeders,
             (SELECT COUNT(*) FROM file_peers fp JOIN peers p ON p.id = fp.peer_id
              WHERE fp.file_id = f.id AND fp.have IS NOT NULL AND ",
            live_peer!("p", $cutoff),
            ") AS leechers"
        )
    };
}

pub(super) const GET_FILE: &str = concat!(
    "SELECT f.id, f.name, f.size, f.chunk_size, f.merkle_root, f.chunk_hashes, f.chain, f.created_at, ",
    swarm_counts!("$2"),
    " FROM files f WHERE f.id = $1"
);

pub(super) const LIST_FILES: &str = concat!(
    "SELECT f.id, f.name, f.size, f.chunk_size, f.chunk_count, f.merkle_root, f.created_at, ",
    swarm_counts!("$2"),
    " FROM files f
    WHERE lower(f.name) LIKE $1 ESCAPE '\\'
    ORDER BY f.created_at DESC, f.id
    LIMIT $3 OFFSET $4"
);

pub(super) const COUNT_FILES: &str =
    "SELECT COUNT(*) FROM files f WHERE lower(f.name) LIKE $1 ESCAPE '\\'";

pub(super) const FILE_CHUNK_COUNT: &str = "SELECT chunk_count FROM files WHERE id = $1";

pub(super) const FILE_PEERS: &str = concat!(
    "SELECT p.id, p.addresses, p.observed_ip, p.port, p.udp_port, p.relay_only, fp.have,
        fp.chunks_have, p.last_seen
    FROM file_peers fp JOIN peers p ON p.id = fp.peer_id
    WHERE fp.file_id = $1 AND ",
    live_peer!("p", "$2"),
    " AND p.id <> $3
    ORDER BY (fp.have IS NULL) DESC, p.last_seen DESC, p.id
    LIMIT $4"
);

pub(super) const STATS: &str = concat!(
    "SELECT (SELECT COUNT(*) FROM peers p WHERE ",
    live_peer!("p", "$1"),
    ") AS peers_online,
        (SELECT COUNT(*) FROM peers) AS peers_total,
        (SELECT COUNT(*) FROM files) AS files,
        (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM files) AS total_bytes"
);

pub(super) const PUT_USER: &str = "\
INSERT INTO users (username, password_hash, role, created_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role";

pub(super) const CREATE_USER_IF_ABSENT: &str = "\
INSERT INTO users (username, password_hash, role, created_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (username) DO NOTHING";

pub(super) const GET_USER: &str =
    "SELECT username, password_hash, role, created_at FROM users WHERE username = $1";

pub(super) const LIST_USERS: &str =
    "SELECT username, password_hash, role, created_at FROM users ORDER BY username";

pub(super) const DELETE_USER: &str = "DELETE FROM users WHERE username = $1";

pub(super) const INSERT_API_KEY: &str =
    "INSERT INTO api_keys (id, name, key_hash, created_at) VALUES ($1, $2, $3, $4)";

pub(super) const FIND_API_KEY: &str = "\
SELECT id, name, created_at, revoked_at FROM api_keys
WHERE key_hash = $1 AND revoked_at IS NULL";

pub(super) const LIST_API_KEYS: &str =
    "SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at, id";

pub(super) const REVOKE_API_KEY: &str =
    "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

pub(super) const INIT_SETTING: &str =
    "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";

pub(super) const GET_SETTING: &str = "SELECT value FROM settings WHERE key = $1";
