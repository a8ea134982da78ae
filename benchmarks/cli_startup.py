"""Wall time of quick commands, each in a fresh process: `optdisco --help`, `--version`,
`library`, `tasks` and `search --task nosuch` (an input error that must answer before Ray or a store).

    python benchmarks/cli_startup.py --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = (["--help"], ["--version"], ["library"], ["tasks"], ["search", "--task", "nosuch", "--no-progress"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for argv in COMMANDS:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "optdisco.search.cli", *argv], capture_output=True, check=False)
            times.append(time.perf_counter() - t)
        print(f"optdisco {' '.join(argv):<40} median {statistics.median(times):6.2f} s  "
              f"(min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
