#!/usr/bin/env bash
# CPU per run of a workload at 1,000 nodes, by process, while `drover bench` runs it
# back to back:
#
#     scripts/cpu-per-run.sh [w1|floor] [SECONDS]      (BIN=path/to/drover to pick a build)
#
# Starts a long bench, waits WAIT seconds (default 25: the fleet is up and the runs go),
# reads the CPU ticks
# of the bench process (controller and driver), of its child processes (agents, or the
# floor's responders and driver) and of the nats-servers over SECONDS, then stops the
# bench. For w1 it counts the runs in that window from the controller's `round` debug
# lines (a submit round is the one with 1,000 commands) and prints CPU ms per run; for
# the floor (no such lines) it prints CPU ms per second only. Bounded: the bench is
# stopped (SIGINT, which stops everything it started; SIGKILL after 30 s) at the end or on
# error, and the script fails if the bench has ended before the window.
set -euo pipefail
W=${1:-w1}
S=${2:-8}
BIN=${BIN:-target/release/drover}
LOG=$(mktemp)
DROVER_LOG=drover_controller::runtime=debug "$BIN" bench --nodes 1000 --runs 2000 --workloads "$W" >/dev/null 2>"$LOG" &
BP=$!
descendants() { local c; for c in $(pgrep -P "$1" || true); do echo "$c"; descendants "$c"; done; }
stop() {
  kill -INT "$BP" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$BP" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$BP" 2>/dev/null; then
    for p in $(descendants "$BP") "$BP"; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  wait "$BP" 2>/dev/null || true
  rm -f "$LOG" "$LOG.1" "$LOG.2"
}
trap stop EXIT
HZ=$(getconf CLK_TCK)
sleep "${WAIT:-25}"
ticks() {
  local p n t
  for p in $BP $(descendants "$BP"); do
    case "$(cat /proc/"$p"/comm 2>/dev/null)" in
      nats-server) n=nats ;;
      *) if [ "$p" = "$BP" ]; then n=bench; else n=children; fi ;;
    esac
    t=$(awk '{print $14 + $15}' /proc/"$p"/stat 2>/dev/null || echo 0)
    echo "$n $t"
  done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
runs() { grep -cE 'commands[^ ]*=[^ ]*1000 ' "$LOG" || true; }
kill -0 "$BP" 2>/dev/null || { echo "the bench ended early:" >&2; tail -5 "$LOG" >&2; exit 1; }
r1=$(runs); ticks >"$LOG.1"; sleep "$S"; ticks >"$LOG.2"; r2=$(runs)
n=$((r2 - r1))
echo "$W: $n runs in ${S}s"
join "$LOG.1" "$LOG.2" | awk -v s="$S" -v n="$n" -v hz="$HZ" '{
  ms = ($3 - $2) * 1000 / hz
  if (n > 0) printf "%-9s %6.0f ms CPU per second  %6.1f ms CPU per run\n", $1, ms / s, ms / n
  else printf "%-9s %6.0f ms CPU per second\n", $1, ms / s
}'
