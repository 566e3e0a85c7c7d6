-- Named issuers (issue 12): each `ca` issuer's CA certificate is tracked in
-- the inventory as the credential `ca/<issuer>`, written by the service from
-- its configuration (source `issuer`, not managed: never rotated as a leaf).
ALTER TABLE credentials DROP CONSTRAINT credentials_source_check;
ALTER TABLE credentials ADD CONSTRAINT credentials_source_check
    CHECK (source IN ('config', 'api', 'scan', 'discovered', 'issuer'));
