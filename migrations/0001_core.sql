-- The inventory: credentials, their versions, rotation attempts, and the audit log.
-- Migrations are immutable once merged: add a new file instead of editing this one.

CREATE TABLE credentials (
    id                   bigserial PRIMARY KEY,
    -- unique, e.g. cert/default/web-tls, sa-token/ci/deployer, scan//etc/kubernetes/pki/apiserver.crt
    name                 text NOT NULL UNIQUE,
    kind                 text NOT NULL
                         CHECK (kind IN ('certificate', 'service_account_token', 'bootstrap_token')),
    -- where the row came from: config file, admin API, [[scan]], discovery in the cluster
    source               text NOT NULL DEFAULT 'config'
                         CHECK (source IN ('config', 'api', 'scan', 'discovered')),
    -- false: tracked for expiry only, never rotated by rekey
    managed              boolean NOT NULL DEFAULT true,
    spec                 jsonb NOT NULL DEFAULT '{}',
    sink                 jsonb NOT NULL DEFAULT '{}',
    schedule             text,
    spec_hash            text NOT NULL DEFAULT '',
    not_before           timestamptz,
    not_after            timestamptz,
    current_version      bigint,
    next_rotation_at     timestamptz,
    next_rotation_reason text,
    -- lease for claiming work; lease_epoch is the fencing token, bumped on every claim
    lease_owner          text,
    lease_expires_at     timestamptz,
    lease_epoch          bigint NOT NULL DEFAULT 0,
    -- consecutive failed rotations, for backoff
    failures             integer NOT NULL DEFAULT 0,
    last_error           text,
    removed_at           timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- The claim query walks this index in due order.
CREATE INDEX credentials_due ON credentials (next_rotation_at)
    WHERE managed AND removed_at IS NULL;

CREATE TABLE credential_versions (
    id             bigserial PRIMARY KEY,
    credential_id  bigint NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    status         text NOT NULL
                   CHECK (status IN ('pending', 'published', 'superseded', 'revoked', 'failed')),
    rotation_id    uuid,
    -- sha256 of the certificate DER or of the token, hex
    fingerprint    text,
    serial         text,
    not_before     timestamptz,
    not_after      timestamptz,
    -- kind-specific facts that are not secret, e.g. the Secret a token is bound to
    details        jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    superseded_at  timestamptz,
    -- tokens: when a superseded version is revoked (after consumers reloaded)
    retire_after   timestamptz,
    revoked_at     timestamptz
);

-- Never two current versions of one credential.
CREATE UNIQUE INDEX credential_versions_one_current ON credential_versions (credential_id)
    WHERE status = 'published';
CREATE INDEX credential_versions_pending ON credential_versions (credential_id)
    WHERE status = 'pending';
CREATE INDEX credential_versions_by_credential ON credential_versions (credential_id, id DESC);
CREATE INDEX credential_versions_to_retire ON credential_versions (retire_after)
    WHERE status = 'superseded' AND retire_after IS NOT NULL;

ALTER TABLE credentials ADD CONSTRAINT credentials_current_version_fkey
    FOREIGN KEY (current_version) REFERENCES credential_versions (id);

CREATE TABLE rotations (
    id               uuid PRIMARY KEY,
    credential_id    bigint NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    trigger          text NOT NULL
                     CHECK (trigger IN ('schedule', 'expiry', 'manual', 'join', 'startup')),
    requested_by     text NOT NULL,
    reason           text,
    -- the due time this rotation serves (scheduled rotations)
    due_at           timestamptz,
    status           text NOT NULL
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'abandoned')),
    version_id       bigint REFERENCES credential_versions (id),
    replica          text,
    idempotency_key  text,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    error            text
);

-- At most one rotation in flight per credential: a second "rotate now" joins it.
CREATE UNIQUE INDEX rotations_one_in_flight ON rotations (credential_id)
    WHERE status IN ('queued', 'running');
-- A scheduled due time is served once.
CREATE UNIQUE INDEX rotations_once_per_due ON rotations (credential_id, due_at)
    WHERE status = 'succeeded' AND trigger IN ('schedule', 'expiry');
CREATE UNIQUE INDEX rotations_idempotency ON rotations (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX rotations_by_credential ON rotations (credential_id, requested_at DESC);

CREATE TABLE audit_events (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    -- certificate subject, ServiceAccount, or `rekey/<replica>` for the engine
    actor       text NOT NULL,
    action      text NOT NULL,
    target      text NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    reason      text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_events_at ON audit_events (at, id);
CREATE INDEX audit_events_target ON audit_events (target, at);

CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
