"""Start-up time: what a user waits for before anything runs; prints one JSON object.

Each command runs in a fresh interpreter, `--repeat` times (median reported); `import torch` is the
floor every command that touches a model pays, measured in the same run.

    python benchmarks/startup.py
    python benchmarks/startup.py --repeat 9
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

CLI = [shutil.which("latentloop")] if shutil.which("latentloop") else [sys.executable, "-m", "latentloop"]
COMMANDS = {
    "import_torch": [sys.executable, "-c", "import torch"],
    "import_latentloop": [sys.executable, "-c", "import latentloop"],
    "from_latentloop_import_generate": [sys.executable, "-c", "from latentloop import generate, load_model"],
    "latentloop_help": [*CLI, "--help"],
    "latentloop_generate_help": [*CLI, "generate", "--help"],
}
TARGETS_S = {"import_latentloop": 2.5, "latentloop_help": 1.5}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (the median is reported)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    result = {"machine": f"{os.cpu_count()} CPU cores, {sys.platform}", "repeat": args.repeat}
    for name, command in COMMANDS.items():
        seconds(command)  # warm the file cache: the first run of a fresh machine reads everything from disk
        median = statistics.median(seconds(command) for _ in range(args.repeat))
        result[f"{name}_s"] = round(median, 3)
        if name in TARGETS_S:
            result[f"{name}_target_s"] = TARGETS_S[name]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
