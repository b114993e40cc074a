"""CLI start-up, side by side with importing torch on the same machine, in one run.

    python benchmarks/bench_cli.py [--repeats 15]

Wall time of fresh processes, interleaved round by round so load drifts hit every command alike: `python -c "import
torch"` (the reference), `longclip --help`, `longclip tokens "a cat"`. Prints medians, spreads and the ratio to the
torch import (target ≤ 0.8) as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def longclip_command() -> list[str]:
    """The installed ``longclip`` script beside this interpreter, else ``python -m longclip_diffusion.cli``."""
    script = Path(sys.executable).with_name("longclip")
    if script.exists():
        return [str(script)]
    found = shutil.which("longclip")
    return [found] if found else [sys.executable, "-m", "longclip_diffusion.cli"]


def run_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="processes per command (median reported)")
    args = parser.parse_args()

    longclip = longclip_command()
    commands = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "longclip --help": [*longclip, "--help"],
        'longclip tokens "a cat"': [*longclip, "tokens", "a cat"],
    }
    for command in commands.values():  # warm the OS file cache
        run_seconds(command)
    timings: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            timings[name].append(run_seconds(command))

    reference = statistics.median(timings['python -c "import torch"'])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{args.repeats} runs each, interleaved\n")
    print("| command | median (s) | min–max (s) | × import torch |")
    print("|---|---:|---:|---:|")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.3f} | {min(values):.3f}–{max(values):.3f} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
