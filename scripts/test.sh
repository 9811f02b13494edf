#!/usr/bin/env bash
# The whole check: installs redis-server when missing, then format, the minimum Rust version,
# lint, docs, the packages of the published crates, and every test of the workspace (the
# tests start their own redis-server processes on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_apt[*]} ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "error: the tests need redis-server and redis-cli (Redis 6.2 or newer) and python3 on PATH." >&2
    echo "Debian/Ubuntu: sudo apt-get install -y redis-server python3; macOS: brew install redis" >&2
    exit 1
  fi
fi

# tests/tests/metrics.rs parses the reference server's /metrics with the Prometheus project's
# own parser (Python's prometheus_client).
# From PyPI when pip can install it, else Debian's package (for Debian's own python3).
if ! python3 -c "import prometheus_client" >/dev/null 2>&1; then
  echo "installing prometheus-client (Python) ..."
  if ! python3 -m pip install -q prometheus-client; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-prometheus-client >/dev/null
      export CACHE_SDK_PYTHON=/usr/bin/python3
    else
      echo "error: tests/tests/metrics.rs needs Python's prometheus_client: pip install prometheus-client" >&2
      exit 1
    fi
  fi
fi

# The express-session compatibility test runs a Node app (tests/node) beside the Rust one
# when node and npm are present; then its packages are installed from the lock file and the
# test must run (CACHE_SDK_REQUIRE_NODE=1) instead of skipping.
# (If the npm registry cannot be reached, the live test is skipped; the committed fixtures
# made by the same packages are still checked.)
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if npm ci --prefix tests/node --no-audit --no-fund --loglevel=error; then
    export CACHE_SDK_REQUIRE_NODE=1
  else
    echo "note: npm ci failed; the live express-session test will be skipped" >&2
  fi
else
  echo "note: node/npm not found; the live express-session test will be skipped" >&2
fi

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
# The declared rust-version is not below what the locked dependencies need (CONTRIBUTING.md).
python3 scripts/check-msrv.py
cargo clippy --workspace --all-targets --all-features -- -D warnings
# cache-sdk's features: none (the cache alone) and each one on its own must build and lint
# clean (clippy checks without building; deps are shared with the runs above after the first
# time; the loop took 7 minutes of wall clock, 2 of CPU, on the loaded 2-core development
# machine). The unit tests of the cache alone run too. (Its doc examples compile as well,
# `cargo test -p cache-sdk --doc --no-default-features`, but that takes minutes: run it when
# changing feature gates.)
for features in "" sessions axum json dotenv tls cluster metrics; do
  echo "cache-sdk --no-default-features --features '$features'"
  cargo clippy -p cache-sdk --no-default-features --features "$features" -- -D warnings
done
cargo clippy -p cache-sdk --all-targets --no-default-features -- -D warnings
cargo test -p cache-sdk --no-default-features --lib
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
# The published crates package and build from their packages alone (the macro crate reaches
# cache-sdk's build through a temporary local registry, the rest comes from crates.io).
cargo package -p cache-sdk-macros -p cache-sdk --allow-dirty
cargo test --workspace --all-features
