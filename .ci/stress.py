"""Run a command several times in a row while CPU-bound processes compete for every core (`make test-stress`).

    python .ci/stress.py --runs 3 -- .venv/bin/python -m pytest

A suite that passes on an idle machine and fails on a busy one (as CI machines are) fails here. One
busy loop per core (``--hogs``) runs at the same priority as the command from before its first run until
after its last (and ends by itself if this script is killed); each run's exit status and time are
printed, and the exit status is the first failure's (0 when every run passed). pytest's 5 (no test
collected) counts as a pass.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

# CPU-bound until its parent (this script) is gone, however that ended.
BUSY_LOOP = """
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="how many times to run the command (3)")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 1, help="busy processes (one per core)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.runs < 1 or args.hogs < 0:
        parser.error("give --runs >= 1, --hogs >= 0 and a command after --")
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # the busy processes are killed
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.hogs)]
    results = []
    try:
        for run in range(1, args.runs + 1):
            print(f"stress: run {run}/{args.runs} with {args.hogs} busy processes: {' '.join(command)}", flush=True)
            started = time.monotonic()
            code = subprocess.call(command)
            results.append((0 if code == 5 else code, time.monotonic() - started))
            print(f"stress: run {run} exited {code} after {results[-1][1] / 60:.1f} min", flush=True)
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
    passed = sum(code == 0 for code, _ in results)
    times = ", ".join(f"{seconds / 60:.1f}" for _, seconds in results)
    print(f"stress: {passed} of {len(results)} runs passed with {args.hogs} busy processes (minutes: {times})")
    return next((code for code, _ in results if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
