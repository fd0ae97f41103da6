-- The whole-content SHA-256's chaining value after each chunk but the last, 32 bytes each, in
-- order: peers verify each chunk against it (docs/protocol.md §1). Files announced before this
-- column existed have none until a peer announces them again with their chain.
ALTER TABLE files ADD COLUMN chain BLOB NOT NULL DEFAULT x'';
