-- Jobs that must run on one replica at a time (the bootstrap-token watcher,
-- scheduled etcd checks, scheduled backups) are led under a Postgres advisory
-- lock. Each new leadership bumps the epoch: a fencing token the leader's
-- records carry, so work by a deposed leader can be told apart.
CREATE TABLE leadership (
    name         text PRIMARY KEY,
    epoch        bigint NOT NULL,
    holder       text NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now()
);
