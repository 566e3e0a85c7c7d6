#!/usr/bin/env bash
# Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/seed-*:
# real configuration files, EncryptionConfigurations, etcd values written by
# the independent Python encoder (integration/scripts/k8s_encrypt.py) under
# the keys of rekey::fuzzing::FUZZ_ENCRYPTION_CONFIG, and real backups made by
# `rekey backup encrypt` under rekey::fuzzing::FUZZ_KEK.
#
# Needs the debug binary (`cargo build -p rekey --bins`) and the test venv
# (`target/pyenv`, made by integration/test.sh). Run from anywhere; the
# committed corpora were seeded with it, fuzzed, then minimised (`cargo fuzz cmin`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
corpus="$root/fuzz/corpus"
rekey="$root/target/debug/rekey"
py="${REKEY_TEST_PYTHON:-$root/target/pyenv/bin/python}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$corpus"/{config,encryption_config,etcd_values,backup_header,backup_stream}

# --- config -------------------------------------------------------------------
cat > "$corpus/config/seed-design" <<'EOF'
[database]
url = "postgres://rekey@localhost/rekey"

[issuer]
ca_cert = "/etc/rekey/ca/ca.crt"
ca_key  = "/etc/rekey/ca/ca.key"

[[certificate]]
name = "cert/default/web-tls"
dns_names = ["web.default.svc", "web.default.svc.cluster.local"]
ip_addresses = []
key = "ecdsa-p256"
lifetime = "24h"
renew_fraction = 0.66
schedule = "0 0 3 * * *"
sink = { kind = "file", dir = "/var/lib/rekey/web" }

[[token]]
name = "sa-token/ci/deployer"
namespace = "ci"
service_account = "deployer"
audiences = ["https://kubernetes.default.svc"]
lifetime = "1h"
sink = { kind = "kubernetes-secret", namespace = "ci", name = "deployer-token" }

[bootstrap_tokens]
revoke_after_join = true
max_age = "24h"

[api]
listen = "0.0.0.0:8443"
tls_cert = "/etc/rekey/tls/tls.crt"
tls_key = "/etc/rekey/tls/tls.key"
client_ca = "/etc/rekey/client-ca/ca.crt"
roles = [ { subject_cn = "ops", role = "operator" }, { subject_cn = "auditor", role = "viewer" } ]

[etcd]
endpoints = ["https://10.0.0.1:2379"]
ca_cert = "ca.crt"
client_cert = "client.crt"
client_key = "client.key"

[backup]
destination = "s3://bucket/etcd/"
kek_file = "/etc/rekey/backup/kek"
chunk_size = "1MiB"
keep = 14
EOF
cat > "$corpus/config/seed-dev" <<'EOF'
[database]
url = "postgres://postgres@127.0.0.1:5432/rekey"

[issuer]
ca_cert = "/tmp/dev/ca/ca.crt"
ca_key = "/tmp/dev/ca/ca.key"

[engine]
concurrency = 8
max_jitter = "5s"

[[certificate]]
name = "cert/dev/web"
dns_names = ["web.dev.svc", "localhost"]
ip_addresses = ["127.0.0.1"]
key = "ecdsa-p256"
lifetime = "2m"
renew_fraction = 0.5
sink = { kind = "file", dir = "/tmp/dev/certs/web" }

[[certificate]]
name = "cert/dev/api"
dns_names = ["api.dev.svc"]
key = "ecdsa-p384"
lifetime = "3m"
renew_before = "1m"
sink = { kind = "file", dir = "/tmp/dev/certs/api" }

[[certificate]]
name = "cert/dev/etcd-peer"
dns_names = ["etcd-0.dev.svc"]
key = "ed25519"
lifetime = "1h"
schedule = "0 * * * * *"
sink = { kind = "file", dir = "/tmp/dev/certs/etcd-peer" }

[[scan]]
dir = "/etc/kubernetes/pki"

[metrics]
listen = "127.0.0.1:9090"
EOF
# With an environment after the NUL byte (overrides, DATABASE_URL).
{ cat "$corpus/config/seed-dev"; printf '\0REKEY_ENGINE_CONCURRENCY=4\nDATABASE_URL=postgres://u:secretpassword@db/rekey\nREKEY_BACKUP_KEEP=3\n'; } \
  > "$corpus/config/seed-dev-env"
printf '[database]\nurl = 5\n[[certificate]]\nname = "x"\nlifetime = "24x"\n' > "$corpus/config/seed-bad"

# --- encryption_config ------------------------------------------------------------
cat > "$corpus/encryption_config/seed-full" <<'EOF'
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
      - configmaps
      - deployments.apps
    providers:
      - aesgcm:
          keys:
            # rekey.io/created-at: 2026-01-01T00:00:00Z
            - name: k1
              secret: AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=
            - name: k2
              secret: AgICAgICAgICAgICAgICAg==
      - aescbc:
          keys:
            - name: cbc1
              secret: AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=
      - secretbox:
          keys:
            - name: box1
              secret: BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=
      - kms:
          apiVersion: v2
          name: vault
          endpoint: unix:///var/run/kms.sock
          timeout: 3s
      - identity: {}
  - resources:
      - '*.'
    providers:
      - identity: {}
EOF
cat > "$corpus/encryption_config/seed-legacy" <<'EOF'
kind: EncryptionConfig
apiVersion: v1
resources:
  - resources: ["*.*"]
    providers:
      - kms:
          name: old
          endpoint: unix:///tmp/kms.sock
          cachesize: 100
      - aescbc:
          keys:
            - {name: key1, secret: AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=}
EOF
printf 'apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - name: k1\n              secret: bm90IGEga2V5\n      - identity: {}\n      - identity: {}\n' \
  > "$corpus/encryption_config/seed-bad"

# --- etcd_values: selector byte (0x80 = open; low bits: 0 secrets, 1 configmaps, 2 pods) + value
"$py" "$root/integration/scripts/k8s_encrypt.py" > "$tmp/values.json" <<'EOF'
[
 {"etcd_key": "/registry/secrets/default/fuzz", "format": "plaintext"},
 {"etcd_key": "/registry/secrets/default/fuzz", "format": "plaintext", "object": "json"},
 {"etcd_key": "/registry/secrets/default/fuzz", "format": "aesgcm", "key_name": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="},
 {"etcd_key": "/registry/secrets/default/fuzz", "format": "aesgcm", "key_name": "k2", "secret": "AgICAgICAgICAgICAgICAg=="},
 {"etcd_key": "/registry/secrets/default/fuzz", "format": "aesgcm", "key_name": "k1", "secret": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "aad_key": "/registry/secrets/default/other"},
 {"etcd_key": "/registry/secrets/default/fuzz", "format": "aescbc", "key_name": "cbc1", "secret": "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="},
 {"etcd_key": "/registry/secrets/default/fuzz", "format": "aescbc", "key_name": "cbc2", "secret": "BQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUF", "object": "json"},
 {"etcd_key": "/registry/secrets/default/fuzz", "format": "secretbox", "key_name": "box1", "secret": "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ="},
 {"etcd_key": "/registry/secrets/default/fuzz", "format": "kms-v2", "key_name": "vault"}
]
EOF
"$py" - "$tmp/values.json" "$corpus/etcd_values" <<'EOF'
import base64, json, sys
values = json.load(open(sys.argv[1]))
for i, v in enumerate(values):
    raw = base64.b64decode(v)
    for sel in (0x80, 0x00, 0x81):
        open(f"{sys.argv[2]}/seed-{i}-{sel:02x}", "wb").write(bytes([sel]) + raw)
EOF

# --- backups under FUZZ_KEK -------------------------------------------------------
printf 'rekey-fuzz-kek-0123456789abcdef!' > "$tmp/kek"
chmod 600 "$tmp/kek"
for n in 0 100 1024 2500; do
  head -c "$n" /dev/urandom > "$tmp/plain-$n"
  "$rekey" backup encrypt --kek-file "$tmp/kek" --in "$tmp/plain-$n" --out "$tmp/b-$n.rkb" --chunk-size 1KiB >/dev/null
  cp "$tmp/b-$n.rkb" "$corpus/backup_stream/seed-backup-$n"
  head -c 107 "$tmp/b-$n.rkb" > "$corpus/backup_header/seed-header-$n"
done
# A truncated and an extended backup.
head -c 1200 "$tmp/b-2500.rkb" > "$corpus/backup_stream/seed-truncated"
cat "$tmp/b-100.rkb" "$tmp/b-100.rkb" > "$corpus/backup_stream/seed-extended"
# Tamper mode: [mode][position][plaintext].
for mode in 0 1 2; do
  { printf "\\x0$mode\\x04\\x00"; head -c 2100 "$tmp/plain-2500"; } > "$corpus/backup_stream/seed-tamper-$mode"
done
# KEK files (the header target parses its input as a KEK file too).
cp "$tmp/kek" "$corpus/backup_header/seed-kek-raw"
base64 < "$tmp/kek" > "$corpus/backup_header/seed-kek-base64"
# --- api_request ----------------------------------------------------------------
# URI, Content-Type, Authorization, body (one per line); and a client certificate.
mkdir -p "$corpus/api_request"
printf '/v1/audit?actor=CN%%3Dops&action=credential.rotate&after=10&limit=50\napplication/json\nBearer eyJhbGciOiJSUzI1NiJ9.e30.sig\n{"reason":"key compromise"}' > "$corpus/api_request/seed-audit"
printf '/v1/credentials/cert%%2Fdefault%%2Fweb/rotate?wait=true\napplication/json; charset=utf-8\nreq-1234_abc:x\n{"reason": null}' > "$corpus/api_request/seed-rotate"
printf '/v1/backups?include_pruned=true&completed_only=false&limit=1000\ntext/plain\nbasic dXNlcjpwYXNz\n\n  \n' > "$corpus/api_request/seed-backups"
printf '/v1/audit?limit=-1&after=abc\napplication/json\nBearer    \n{"reason":"x","extra":1}' > "$corpus/api_request/seed-bad"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/client.key" \
  -subj "/CN=ops/O=rekey" -days 1 -outform DER -out "$corpus/api_request/seed-client-cert.der" 2>/dev/null

echo "seeded $(find "$corpus" -name 'seed-*' | wc -l) inputs under $corpus"
