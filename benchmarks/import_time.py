"""How long `import jukebox_pl` takes beyond importing torch and pytorch_lightning.

Each measurement is a fresh interpreter: import torch and pytorch_lightning, then time
`import jukebox_pl` alone (and, separately, the first registry lookup, which imports the
core components and discovers plugins). Prints the median of --repeats runs.

    .venv/bin/python benchmarks/import_time.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import json, time
import torch, pytorch_lightning
start = time.perf_counter()
import jukebox_pl
imported = time.perf_counter() - start
from jukebox_pl import registry
start = time.perf_counter()
registry.names("pipeline")
first_lookup = time.perf_counter() - start
print(json.dumps({"import": imported, "first_lookup": first_lookup}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        output = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(output))
    for key in ("import", "first_lookup"):
        values = [run[key] for run in runs]
        print(
            f"{key:>13}: median {statistics.median(values) * 1000:8.1f} ms   (min {min(values) * 1000:.1f}, "
            f"max {max(values) * 1000:.1f}, {args.repeats} fresh interpreters)"
        )


if __name__ == "__main__":
    main()
