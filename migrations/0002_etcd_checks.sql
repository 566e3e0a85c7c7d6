-- etcd encryption-at-rest checks (issue 4): one row per `rekey etcd verify`
-- run, scheduled check or API call. The full report is kept as JSON; the
-- columns are what dashboards, the key-age policy and retention query.
CREATE TABLE etcd_checks (
    id                    bigserial PRIMARY KEY,
    started_at            timestamptz NOT NULL,
    finished_at           timestamptz NOT NULL DEFAULT now(),
    trigger               text NOT NULL CHECK (trigger IN ('cli', 'schedule', 'api')),
    encryption_config     text NOT NULL,          -- path of the file checked
    config_sha256         text,                   -- NULL when it could not be read
    config_valid          boolean NOT NULL,
    endpoints             text NOT NULL,          -- comma-separated client URLs
    prefix                text NOT NULL,
    resource              text NOT NULL,
    revision              bigint,                 -- etcd revision the scan read at
    -- write transformer for the resource, e.g. `aesgcm:key1`, and the first
    -- 16 hex digits of SHA-256(key bytes): identifies the key across renames
    -- without revealing it (key age comes from the first row that saw it).
    write_key             text,
    write_key_fingerprint text,
    total                 bigint NOT NULL DEFAULT 0,
    plaintext             bigint NOT NULL DEFAULT 0,
    stale                 bigint NOT NULL DEFAULT 0,
    undecryptable         bigint NOT NULL DEFAULT 0,
    verified              bigint NOT NULL DEFAULT 0,
    errors                integer NOT NULL DEFAULT 0,   -- findings of severity error
    warnings              integer NOT NULL DEFAULT 0,
    exit_code             smallint NOT NULL,            -- 0 clean, 1 problems, 2 invalid config
    report                jsonb NOT NULL
);

CREATE INDEX etcd_checks_finished_at ON etcd_checks (finished_at DESC);
CREATE INDEX etcd_checks_write_key ON etcd_checks (write_key_fingerprint, finished_at)
    WHERE write_key_fingerprint IS NOT NULL;
