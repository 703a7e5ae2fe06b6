#!/usr/bin/env bash
# From a fresh machine with Rust to a rollout you can watch: installs nats-server if
# missing, builds drover, starts a local fleet (`drover dev`: nats-server, controller,
# 5 agents), runs examples/rolling-rollback.yaml and examples/budget-rollback.yaml with
# --watch, then stops the fleet.
#   scripts/demo.sh [--keep]     --keep leaves the fleet running afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=install-deps.sh
source scripts/install-deps.sh

echo "== building drover (first build takes a few minutes on 2 cores)" >&2
cargo build --quiet --bin drover
DROVER=target/debug/drover

PORT=${DROVER_DEMO_PORT:-7070}
export DROVER_API="http://127.0.0.1:${PORT}"
if curl -fsS "$DROVER_API/v1/health" >/dev/null 2>&1; then
  echo "error: something already listens on 127.0.0.1:${PORT}; set DROVER_DEMO_PORT" >&2
  exit 1
fi

mkdir -p .drover
"$DROVER" dev --agents 5 --api-addr "127.0.0.1:${PORT}" --data-dir .drover >.drover/dev.log 2>&1 &
DEV_PID=$!
stop_fleet() { kill -TERM "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true; }
if [ "${1:-}" != "--keep" ]; then trap stop_fleet EXIT; fi

# `drover dev` prints its banner once the controller sees every agent online.
for _ in $(seq 1 300); do
  grep -q "a local fleet is running" .drover/dev.log 2>/dev/null && break
  kill -0 "$DEV_PID" 2>/dev/null || { echo "error: drover dev exited; see .drover/dev.log:" >&2; cat .drover/dev.log >&2; exit 1; }
  sleep 0.2
done
grep -q "a local fleet is running" .drover/dev.log || { echo "error: drover dev did not become ready in 60s; see .drover/dev.log" >&2; exit 1; }

echo "== the local fleet" >&2
"$DROVER" nodes list
echo >&2
echo "== drover run examples/rolling-rollback.yaml --watch   (a rolling rollout that succeeds)" >&2
first=0
"$DROVER" run examples/rolling-rollback.yaml --watch || first=$?
echo >&2
echo "== drover run examples/budget-rollback.yaml --watch   (two nodes fail: the budget trips, the fleet is rolled back)" >&2
second=0
"$DROVER" run examples/budget-rollback.yaml --watch || second=$?
echo >&2
echo "== config files left by the rolled-back job (none expected):" >&2
ls /tmp/drover-demo-local-*.conf 2>/dev/null || echo "(none)" >&2
echo >&2
status=0
if [ "$first" != 0 ]; then
  echo "error: the rolling rollout did not succeed (exit $first)" >&2; status=1
fi
if [ "$second" != 1 ]; then
  echo "error: the budget demo should end rolled back (exit 1), got exit $second" >&2; status=1
fi
if [ "${1:-}" = "--keep" ]; then
  echo "The fleet keeps running (pid $DEV_PID, API $DROVER_API). Stop it with: kill $DEV_PID" >&2
else
  echo "Done (exit $status). Start the fleet yourself with: $DROVER dev" >&2
fi
exit "$status"
