-- etcd encryption keys through their whole life (issue 15): storage
-- migrations, the keys each backup needs, and the write counts behind the
-- aesgcm write budget. Migrations are immutable once merged.

-- One row per `rekey etcd migrate` (command line, scheduled job or API).
-- A run that stopped (crash, failure) is resumed by the next run with the
-- same plan: `progress` holds, per resource, the last etcd key whose page was
-- finished; objects already rewritten are no longer stale and are skipped.
CREATE TABLE etcd_migrations (
    id                 bigserial PRIMARY KEY,
    started_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    trigger            text NOT NULL CHECK (trigger IN ('cli', 'schedule', 'api')),
    requested_by       text NOT NULL,
    status             text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    encryption_config  text NOT NULL,                -- path of the file
    config_sha256      text NOT NULL,
    -- what the run brings every value to: sha256 of `resource=write key
    -- fingerprint` for each migrated resource; a later run resumes a stopped
    -- one only when this matches
    plan               text NOT NULL,
    resources          text[] NOT NULL,
    max_rate           double precision,             -- objects per second; NULL: unlimited
    -- per resource: {"cursor", "done", "write_key", "planned", "rewritten",
    -- "conflicts", "gone", "unchanged"}
    progress           jsonb NOT NULL DEFAULT '{}',
    planned            bigint NOT NULL DEFAULT 0,    -- stale values found before rewriting
    rewritten          bigint NOT NULL DEFAULT 0,    -- PUT answered with a new resourceVersion
    conflicts          bigint NOT NULL DEFAULT 0,    -- 409: rewritten by someone else meanwhile
    gone               bigint NOT NULL DEFAULT 0,    -- 404: deleted meanwhile
    unchanged          bigint NOT NULL DEFAULT 0,    -- the API server wrote nothing
    remaining_stale    bigint,                       -- the re-scan's count (0 when done)
    error              text
);

CREATE INDEX etcd_migrations_unfinished ON etcd_migrations (plan, started_at DESC)
    WHERE status <> 'completed';

-- Which provider keys each backup's snapshot needs:
-- [{"key": "aescbc:old", "fingerprint": "...", "values": 12, "writing": false, "escrowed": true}, ...]
-- NULL for backups taken before rekey recorded keys.
ALTER TABLE backups ADD COLUMN encryption_keys jsonb;

-- Sum of the etcd `version` of every value scanned (each write to a key
-- bumps it): the difference between two checks estimates the writes made in
-- between, for the aesgcm write budget.
ALTER TABLE etcd_checks ADD COLUMN version_sum bigint;
