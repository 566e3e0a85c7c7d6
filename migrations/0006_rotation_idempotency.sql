-- Idempotency keys of "rotate now" requests. A key maps to the rotation the
-- request started or joined, so a retry with the same key gets that rotation
-- back even after it finished (rotations.idempotency_key could only hold the
-- key of the request that created the row).
CREATE TABLE rotation_requests (
    credential_id    bigint NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    idempotency_key  text NOT NULL,
    rotation_id      uuid NOT NULL REFERENCES rotations (id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (credential_id, idempotency_key)
);
