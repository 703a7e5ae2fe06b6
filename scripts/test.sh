#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, integration
# against a real nats-server started per test). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=install-deps.sh
source scripts/install-deps.sh

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  # Doc tests first, so that the last lines are nextest's summary of the whole suite.
  cargo test --workspace --locked --doc
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
