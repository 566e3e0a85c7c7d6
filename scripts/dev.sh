#!/usr/bin/env bash
# The first of the README's two commands: `rekey dev` on a fresh Debian machine.
# Installs what building and running it needs when missing (protoc for
# etcd-client's build, the Postgres server binaries for the throwaway
# database), then builds and runs `rekey dev`. Arguments go to `rekey dev`
# (e.g. --state-dir DIR, --database-url URL).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
exec cargo run --release --locked -p rekey --bin rekey -- dev "$@"
