-- "Rotate now" idempotency keys (issue 17): a key belongs to one caller and
-- one credential, remembers a digest of the request it came with (the same
-- key with another body is a conflict, not a replay), and expires after 24
-- hours (rekey::store::rotations::IDEMPOTENCY_KEY_TTL; rows past it are
-- ignored and pruned). Rows written before this migration have no caller
-- and no digest: no request matches them any more.
ALTER TABLE rotation_requests ADD COLUMN caller_sha256 text NOT NULL DEFAULT '';
ALTER TABLE rotation_requests ADD COLUMN request_sha256 text;
ALTER TABLE rotation_requests DROP CONSTRAINT rotation_requests_pkey;
ALTER TABLE rotation_requests ADD PRIMARY KEY (credential_id, caller_sha256, idempotency_key);
CREATE INDEX rotation_requests_created_at ON rotation_requests (credential_id, created_at);
