-- Every distinct manifest announced under a file id (a "variant"), with the peers that claim
-- it: a file id is the SHA-256 of the content, so the tracker cannot tell a true manifest from
-- a false one, and the first announce must not decide for everyone (docs/architecture.md).
-- `files` keeps one row per id for listings (its name, size and root are those of the variant
-- that made the file known); the chunk hashes and chains live here only.
CREATE TABLE file_variants (
    file_id      TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    variant      INTEGER NOT NULL,         -- 1, 2, … within the file
    name         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    chunk_size   INTEGER NOT NULL,
    chunk_count  INTEGER NOT NULL,
    merkle_root  TEXT NOT NULL,
    chunk_hashes BLOB NOT NULL,            -- 32 bytes per chunk, in order
    chain        BLOB NOT NULL,            -- 32 bytes per chunk but the last
    principal    TEXT NOT NULL,            -- who stored it (quota); '' for older rows
    created_at   INTEGER NOT NULL,         -- Unix ms
    PRIMARY KEY (file_id, variant)
);
CREATE INDEX file_variants_principal ON file_variants (principal);

INSERT INTO file_variants (file_id, variant, name, size, chunk_size, chunk_count, merkle_root,
                           chunk_hashes, chain, principal, created_at)
SELECT id, 1, name, size, chunk_size, chunk_count, merkle_root, chunk_hashes, chain, '', created_at
FROM files;
UPDATE files SET chunk_hashes = x'', chain = x'';

-- Which variant each claim is for. (No foreign key: SQLite cannot add one with a default; the
-- store deletes a variant's claims with it.)
ALTER TABLE file_peers ADD COLUMN variant INTEGER NOT NULL DEFAULT 1;

-- How many variant numbers the file has handed out (numbers are not reused after a variant
-- is dropped, so a number names one manifest for good).
ALTER TABLE files ADD COLUMN variants_made INTEGER NOT NULL DEFAULT 1;
