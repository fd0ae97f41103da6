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
                   registered_at, last_seen, online, relay)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, TRUE, $10)
ON CONFLICT (id) DO UPDATE SET
    addresses = excluded.addresses, port = excluded.port, udp_port = excluded.udp_port,
    relay_only = excluded.relay_only, observed_ip = excluded.observed_ip, name = excluded.name,
    version = excluded.version, last_seen = excluded.last_seen, online = TRUE,
    connections = '[]', relay = excluded.relay";

pub(super) const DELETE_PEER: &str = "DELETE FROM peers WHERE id = $1";

pub(super) const EXPIRE_PEERS: &str =
    "UPDATE peers SET online = FALSE WHERE online = TRUE AND last_seen < $1 RETURNING id";

/// The columns of a `rows::PeerRow` from `peers p`, live at cutoff `$1`.
macro_rules! peer_columns {
    () => {
        concat!(
            "p.id, p.addresses, p.port, p.udp_port, p.relay_only, p.relay, p.observed_ip, p.name,
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

/// Creates a file's listing row (its first variant goes into `file_variants`).
pub(super) const INSERT_FILE: &str = "\
INSERT INTO files (id, name, size, chunk_size, chunk_count, merkle_root, chunk_hashes, chain,
                   created_at, variants_made)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, 1)
ON CONFLICT (id) DO NOTHING";

/// The variant of file `$1` with the manifest's content: the same size, chunk size and Merkle
/// root (so the same chunk hashes) and the same chain, or no chain yet (a variant stored before
/// chains were kept); an exact match first.
pub(super) const FIND_VARIANT: &str = "\
SELECT variant, CAST(length(chain) AS BIGINT) AS chain_len FROM file_variants
WHERE file_id = $1 AND size = $2 AND chunk_size = $3 AND merkle_root = $4
  AND (chain = $5 OR length(chain) = 0)
ORDER BY length(chain) DESC, variant
LIMIT 1";

/// Gives a variant stored before chains were kept the chain a peer announced with it.
pub(super) const FILL_CHAIN: &str =
    "UPDATE file_variants SET chain = $3 WHERE file_id = $1 AND variant = $2 AND length(chain) = 0";

/// Takes the next variant number of a file. The row lock it takes (PostgreSQL) holds other
/// trackers' new variants of the file back until this transaction ends, so two announces of one
/// new manifest cannot store it twice.
pub(super) const NEXT_VARIANT: &str =
    "UPDATE files SET variants_made = variants_made + 1 WHERE id = $1 RETURNING variants_made";

pub(super) const INSERT_VARIANT: &str = "\
INSERT INTO file_variants (file_id, variant, name, size, chunk_size, chunk_count, merkle_root,
                           chunk_hashes, chain, principal, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

pub(super) const COUNT_PRINCIPAL_VARIANTS: &str =
    "SELECT COUNT(*) FROM file_variants WHERE principal = $1";

pub(super) const COUNT_FILE_VARIANTS: &str =
    "SELECT COUNT(*) FROM file_variants WHERE file_id = $1";

/// Drops the variants of file `$1` that no peer live at cutoff `$2` claims.
pub(super) const DROP_IDLE_VARIANTS: &str = concat!(
    "DELETE FROM file_variants WHERE file_id = $1 AND NOT EXISTS (
        SELECT 1 FROM file_peers fp JOIN peers p ON p.id = fp.peer_id
        WHERE fp.file_id = file_variants.file_id AND fp.variant = file_variants.variant AND ",
    live_peer!("p", "$2"),
    ")"
);

/// The variant of file `$1` to give up for a new one from principal `$2` when every variant
/// has live announcers (cutoff `$3`): one stored by another principal that stored several
/// variants of this file (an honest principal's peers agree on one manifest), the one with the
/// fewest live announcers, the newest among those.
pub(super) const CROWDED_VARIANT: &str = concat!(
    "SELECT v.variant FROM file_variants v
    WHERE v.file_id = $1 AND v.principal <> $2
      AND (SELECT COUNT(*) FROM file_variants o
           WHERE o.file_id = v.file_id AND o.principal = v.principal) > 1
    ORDER BY (SELECT COUNT(*) FROM file_peers fp JOIN peers p ON p.id = fp.peer_id
              WHERE fp.file_id = v.file_id AND fp.variant = v.variant AND ",
    live_peer!("p", "$3"),
    "), v.variant DESC
    LIMIT 1"
);

pub(super) const DELETE_VARIANT: &str =
    "DELETE FROM file_variants WHERE file_id = $1 AND variant = $2";

/// Drops the claims of file `$1` whose variant is gone.
pub(super) const DROP_ORPHAN_CLAIMS: &str = "\
DELETE FROM file_peers WHERE file_id = $1 AND NOT EXISTS (
    SELECT 1 FROM file_variants v WHERE v.file_id = file_peers.file_id AND v.variant = file_peers.variant)";

pub(super) const UPSERT_FILE_PEER: &str = "\
INSERT INTO file_peers (file_id, peer_id, have, chunks_have, updated_at, variant)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (file_id, peer_id) DO UPDATE SET
    have = excluded.have, chunks_have = excluded.chunks_have, updated_at = excluded.updated_at,
    variant = excluded.variant";

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

pub(super) const FILE_CREATED_AT: &str = "SELECT created_at FROM files WHERE id = $1";

/// One row when file `$1` has a manifest variant (the primary key's index answers it).
pub(super) const FILE_HAS_VARIANT: &str =
    "SELECT variant FROM file_variants WHERE file_id = $1 LIMIT 1";

/// Seeders and leechers of variant `v` among peers live at cutoff `$n`.
macro_rules! variant_counts {
    ($cutoff:literal) => {
        concat!(
            "(SELECT COUNT(*) FROM file_peers fp JOIN peers p ON p.id = fp.peer_id
              WHERE fp.file_id = v.file_id AND fp.variant = v.variant AND fp.have IS NULL AND ",
            live_peer!("p", $cutoff),
            ") AS seeders,
             (SELECT COUNT(*) FROM file_peers fp JOIN peers p ON p.id = fp.peer_id
              WHERE fp.file_id = v.file_id AND fp.variant = v.variant AND fp.have IS NOT NULL AND ",
            live_peer!("p", $cutoff),
            ") AS leechers"
        )
    };
}

pub(super) const FILE_VARIANTS: &str = concat!(
    "SELECT v.variant, v.name, v.size, v.chunk_count, v.merkle_root, v.created_at, ",
    variant_counts!("$2"),
    " FROM file_variants v WHERE v.file_id = $1 ORDER BY v.variant"
);

pub(super) const VARIANT_MANIFEST: &str = "\
SELECT name, size, chunk_size, merkle_root, chunk_hashes, chain FROM file_variants
WHERE file_id = $1 AND variant = $2";

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

pub(super) const VARIANT_CHUNK_COUNT: &str =
    "SELECT chunk_count FROM file_variants WHERE file_id = $1 AND variant = $2";

/// Live claims of file `$1`, of variant `$5` only unless it is negative.
pub(super) const FILE_PEERS: &str = concat!(
    "SELECT p.id, p.addresses, p.observed_ip, p.port, p.udp_port, p.relay_only, p.relay, fp.have,
        fp.chunks_have, p.last_seen, fp.variant, v.chunk_count
    FROM file_peers fp JOIN peers p ON p.id = fp.peer_id
        JOIN file_variants v ON v.file_id = fp.file_id AND v.variant = fp.variant
    WHERE fp.file_id = $1 AND ",
    live_peer!("p", "$2"),
    " AND p.id <> $3 AND ($5 < 0 OR fp.variant = $5)
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

pub(super) const PUT_INSTANCE: &str = "\
INSERT INTO tracker_instances (id, relay_url, relay_attached, ws_clients, last_seen)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET
    relay_url = excluded.relay_url, relay_attached = excluded.relay_attached,
    ws_clients = excluded.ws_clients, last_seen = excluded.last_seen";

pub(super) const LIVE_INSTANCES: &str = "\
SELECT id, relay_url, relay_attached, ws_clients, last_seen FROM tracker_instances
WHERE last_seen >= $1 ORDER BY id";

/// Forgets instance `$1`, and every instance not heard from since `$2` (they stopped without
/// saying so).
pub(super) const DELETE_INSTANCES: &str =
    "DELETE FROM tracker_instances WHERE id = $1 OR last_seen < $2";
