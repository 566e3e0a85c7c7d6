-- The key that authenticates the admin API's `continue` tokens (HMAC-SHA256).
-- One row, created by the first replica that serves a paged list and read by
-- every other, so a list started on one replica can be continued on another.
-- Not a secret in DESIGN.md's sense: see service/src/store/paging.rs.
-- Deleting the row rotates the key (tokens in flight then answer 400).
CREATE TABLE api_paging_key (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    key         bytea NOT NULL CHECK (octet_length(key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
