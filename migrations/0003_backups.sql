-- Encrypted etcd backups (issue 5): one row per `backup run`, kept after pruning.
-- Migrations are immutable once merged: add a new file instead of editing this one.

CREATE TABLE backups (
    -- the backup id written in the object's header and bound into every chunk
    id               uuid PRIMARY KEY,
    -- where the encrypted object lives: file:///..., s3://bucket/key, gs://..., az://...
    location         text NOT NULL,
    status           text NOT NULL
                     CHECK (status IN ('running', 'completed', 'failed', 'pruned')),
    -- what was backed up: an etcd snapshot (the only source `backup run` has today)
    source           text NOT NULL DEFAULT 'etcd' CHECK (source IN ('etcd')),
    -- who asked: `rekey/cli`, `rekey/<replica>` for the scheduler, or an API client's subject
    requested_by     text NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    -- ciphertext: size in bytes and hex SHA-256 of the whole object as stored
    size_bytes       bigint CHECK (size_bytes >= 0),
    sha256           text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    plaintext_bytes  bigint CHECK (plaintext_bytes >= 0),
    -- the key-encryption key that wraps the data key (16 hex digits; never the key)
    kek_id           text NOT NULL CHECK (kek_id ~ '^[0-9a-f]{16}$'),
    chunk_size       integer NOT NULL CHECK (chunk_size > 0),
    -- etcd's revision when the snapshot was taken (the snapshot holds it or a later one)
    etcd_revision    bigint,
    error            text,
    pruned_at        timestamptz
);

-- `list` and `prune` walk completed backups newest first.
CREATE INDEX backups_by_time ON backups (started_at DESC);
-- One live backup per object.
CREATE UNIQUE INDEX backups_location ON backups (location) WHERE status <> 'pruned';
