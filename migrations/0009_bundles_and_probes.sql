-- Trust bundles and consumer probes (issue 12).
-- Migrations are immutable once merged: add a new file instead of editing this one.

ALTER TABLE credentials
    -- The trust bundle the credential's sink holds in `ca.crt` (fingerprint:
    -- sha256 of the sorted sha256 digests of its CA certificates, hex; see
    -- service/src/issue/bundle.rs), and when rekey wrote or found it there.
    -- Set by every publish and by every bundle republish.
    ADD COLUMN bundle_fingerprint   text,
    ADD COLUMN bundle_published_at  timestamptz,
    -- Consumer probes (`probe = "host:port"`): the sha256 of the leaf the
    -- consumer served at the last successful probe, when, and that leaf's
    -- Authority Key Identifier (hex), which names the CA that signed it.
    ADD COLUMN served_fingerprint   text,
    ADD COLUMN served_checked_at    timestamptz,
    ADD COLUMN served_issuer_key_id text,
    -- The last probe attempt, and its error while probes fail.
    ADD COLUMN probed_at            timestamptz,
    ADD COLUMN probe_error          text,
    -- When the credential turns `stale-consumer` unless a probe sees the
    -- consumer serve the current version first (the current version's
    -- publish time plus `probe_grace`); NULL while it serves it, or no probe.
    ADD COLUMN stale_consumer_at    timestamptz;

-- The probe job walks the credentials that have a probe.
CREATE INDEX credentials_probed ON credentials (name)
    WHERE spec ? 'probe' AND removed_at IS NULL;

-- `[[bundle]]` targets: an issuer's trust bundle published alone (a file or a
-- ConfigMap key) for consumers that only verify, and what each holds.
CREATE TABLE bundle_targets (
    name                text PRIMARY KEY,
    issuer              text NOT NULL,
    sink                jsonb NOT NULL,
    -- The bundle the target holds (as credentials.bundle_fingerprint) and
    -- when rekey wrote it (or first found it there).
    bundle_fingerprint  text,
    published_at        timestamptz,
    -- The last check of the target, and its error while writing fails.
    checked_at          timestamptz,
    last_error          text,
    -- No longer declared: kept for history, never written again.
    removed_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX bundle_targets_by_issuer ON bundle_targets (issuer) WHERE removed_at IS NULL;
