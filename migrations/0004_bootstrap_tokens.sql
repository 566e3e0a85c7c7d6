-- Bootstrap tokens (Secrets of type bootstrap.kubernetes.io/token in kube-system)
-- and the node joins made with them. Written by the bootstrap watcher and
-- `rekey token ...`. Migrations are immutable once merged.

CREATE TABLE bootstrap_tokens (
    -- the 6-character token id (the part before the dot; never the secret part)
    id              text PRIMARY KEY CHECK (id ~ '^[a-z0-9]{6}$'),
    -- uid of the Secret seen last: a new Secret with the same id is a new token
    secret_uid      text,
    description     text,
    -- the Secret's creationTimestamp (max_age counts from here)
    created         timestamptz,
    -- data.expiration, NULL: never expires
    expiration      timestamptz,
    usages          text[] NOT NULL DEFAULT '{}',
    groups          text[] NOT NULL DEFAULT '{}',
    policy          text NOT NULL DEFAULT 'revoke-after-join'
                    CHECK (policy IN ('revoke-after-join', 'keep-until-expiry')),
    -- active: unused; used: a node joined with it (kept by policy);
    -- revoking: claimed for revocation, Secret deletion in progress;
    -- revoked: deleted by rekey; expired/deleted: the Secret went away by itself
    state           text NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'used', 'revoking', 'revoked', 'expired', 'deleted')),
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    -- joined | max-age | expired | manual
    revoked_reason  text,
    -- the node whose join triggered the revocation
    revoked_node    text,
    revoked_by      text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX bootstrap_tokens_live ON bootstrap_tokens (state)
    WHERE state IN ('active', 'used', 'revoking');

-- One row per kubelet client CSR made with a bootstrap token, recorded as soon
-- as it is seen: the controller-manager deletes approved CSRs after an hour.
CREATE TABLE bootstrap_token_joins (
    csr_uid            text PRIMARY KEY,
    csr_name           text NOT NULL,
    token_id           text NOT NULL,
    -- from the request's subject, CN=system:node:<name>
    node_name          text NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    approved_at        timestamptz,
    issued_at          timestamptz,
    node_registered_at timestamptz,
    csr_deleted_at     timestamptz
);

CREATE INDEX bootstrap_token_joins_token ON bootstrap_token_joins (token_id);
CREATE INDEX bootstrap_token_joins_node ON bootstrap_token_joins (node_name);
