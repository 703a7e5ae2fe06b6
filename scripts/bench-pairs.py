#!/usr/bin/env python3
"""Compare drover builds in alternating pairs: w1 at 1,000 nodes against the floor.

    scripts/bench-pairs.py ROUNDS BIN_A BIN_B [BIN_C ...]

Each round runs `BIN bench --nodes 1000 --runs 10 --workloads floor,w1 -o json` for each
binary in turn, so that every build sees the same machine state, and prints w1's median,
the floor, their ratio and the CPU per run of the controller, the agents and the
nats-server (and the floor's: its process and its server, from builds that report it).
It also prints the controller's and the agents' CPU divided by the nats-server's: on a machine whose speed drifts (a shared VM), all three move together
from bench to bench, while these quotients stay put, so they compare builds that send
the same messages (not builds that change what goes over NATS). A "binary" can be a wrapper script (e.g. one that sets an environment
variable). Each bench bounds its own time; this script gives each one 5 minutes.
"""
import json
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    rounds, bins = int(sys.argv[1]), sys.argv[2:]
    for _ in range(rounds):
        for b in bins:
            out = subprocess.run(
                [b, "bench", "--nodes", "1000", "--runs", "10", "--workloads", "floor,w1", "-o", "json"],
                capture_output=True, text=True, timeout=300, check=True,
            ).stdout
            figures = {f["workload"]: f for f in json.loads(out)["figures"]}
            w1, floor = figures["w1"], figures["floor"]["median_ms"]
            c, runs = w1["cost"], w1["runs"]
            per_run = lambda s: s / runs * 1000  # noqa: E731
            total = c["controller_cpu_s"] + c["agents_cpu_s"] + c["nats_cpu_s"]
            fc = figures["floor"].get("floor_cost")
            floor_cpu = (fc["process_cpu_s"] + fc["nats_cpu_s"]) / figures["floor"]["runs"] * 1000 if fc else float("nan")
            print(
                f"{b:40} w1 {w1['median_ms']:6.1f} ms  floor {floor:5.1f} ms  ratio {w1['median_ms'] / floor:4.2f}  "
                f"CPU per run: controller {per_run(c['controller_cpu_s']):5.1f}  agents {per_run(c['agents_cpu_s']):5.1f}  "
                f"nats {per_run(c['nats_cpu_s']):5.1f}  total {per_run(total):5.1f} ms (floor {floor_cpu:5.1f} ms)  "
                f"per nats CPU: controller {c['controller_cpu_s'] / c['nats_cpu_s']:4.2f}  "
                f"agents {c['agents_cpu_s'] / c['nats_cpu_s']:4.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
