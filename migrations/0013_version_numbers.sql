-- Per-credential version numbers (issue 16): `number` is the how-many-th
-- issuance of its credential (1, 2, 3, ...), shown to people and in the
-- API's `current_version`; `id` stays the stable key recovery uses (the file
-- sink's marker, the Secret annotation `rekey.io/version`). A failed attempt
-- gives its number back. Migrations are immutable once merged.

ALTER TABLE credential_versions ADD COLUMN number bigint;

UPDATE credential_versions v SET number = n.n
FROM (SELECT id, row_number() OVER (PARTITION BY credential_id ORDER BY id) AS n
      FROM credential_versions WHERE status <> 'failed') n
WHERE v.id = n.id;

CREATE UNIQUE INDEX credential_versions_number ON credential_versions (credential_id, number)
    WHERE status <> 'failed';
