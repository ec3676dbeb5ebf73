"""Run every CPU benchmark one after the other (``make benchmarks``), each in its own process.

The benchmarks time things, so they run sequentially, never in parallel with each other, and are
best run on an otherwise idle machine. Each one prints its own table; this script prints a header
per benchmark and a summary of exit codes and wall times at the end. ``benchmarks/cuda_check.py``
needs a GPU and is run only when CUDA is available. ``zeta_cost.py`` needs Captum
(``pip install --no-deps captum``, the ``bench`` extra); it is skipped with a notice when missing.

``alarms.py``, ``eeg_overhead.py``, ``memory.py`` and ``overhead_clients.py`` write JSON to
``build/benchmarks/``; ``seed_claims.py``, run last, reads those files there (rows without one say which command to run).

Usage::

    .venv/bin/python benchmarks/run_all.py             # full settings, ~1.5 hours on 2 cores (alarms ~45 min)
    .venv/bin/python benchmarks/run_all.py --quick     # each benchmark's --quick/smoke settings
    .venv/bin/python benchmarks/run_all.py eeg_overhead memory   # a selection
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent

#: benchmark -> (full arguments, quick arguments)
BENCHMARKS: Dict[str, tuple] = {
    "eeg_overhead": (["--out", "build/benchmarks/eeg_overhead.json"], ["--quick", "--out", "build/benchmarks/eeg_overhead.json"]),
    "eeg_states": ([], ["--seeds", "1", "--epochs", "2"]),
    "fmri_overhead": ([], ["--quick"]),
    "fmri_localisation": ([], ["--quick"]),
    "zeta_cost": ([], ["--quick"]),
    "memory": (["--out", "build/benchmarks/memory.json"], ["--repeats", "1", "--out", "build/benchmarks/memory.json"]),
    "cuda_check": ([], ["--epochs", "1", "--repeats", "1"]),
    "alarms": (["--jobs", "2", "--out", "build/benchmarks/alarms.json"], ["--smoke", "--out", "build/benchmarks/alarms.json"]),
    "overhead_clients": (["--clients", "cnn,resnet,lstm,gpt2,bert", "--arms", "plain,all,all_inline,all_nopanels,eeg,fmri,floor",
                          "--repeats", "3", "--epochs", "2", "--steps", "100,25", "--out", "build/benchmarks/overhead_clients.json"], ["--smoke", "--out", "build/benchmarks/overhead_clients.json"]),
    "works_with": (["--overhead", "build/benchmarks/overhead_clients.json,build/benchmarks/overhead_variants.json",
                    "--out", "build/benchmarks/works_with.json"],
                   ["--rows", "cnn", "--steps", "5", "--overhead", "build/benchmarks/overhead_clients.json"]),
    # last: its table reads the JSON outputs of the benchmarks above (build/benchmarks/*.json)
    "seed_claims": (["--jobs", "2", "--out", "build/seed_claims.json", "--markdown", "build/seed_claims.md"],
                    ["--smoke", "--out", "build/seed_claims.json"]),
}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="smoke settings (figures are not the reported ones)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; allowed: {sorted(BENCHMARKS)}")
    results = []
    for name in args.names or list(BENCHMARKS):
        if name == "zeta_cost" and importlib.util.find_spec("captum") is None:
            print(f"== {name}: skipped (Captum not installed: pip install --no-deps captum)", flush=True)
            results.append((name, "skipped", 0.0))
            continue
        if name == "cuda_check":
            import torch

            if not torch.cuda.is_available():
                print(f"== {name}: skipped (no CUDA device)", flush=True)
                results.append((name, "skipped", 0.0))
                continue
        full, quick = BENCHMARKS[name]
        cmd = [sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd)
        results.append((name, "ok" if rc == 0 else f"exit {rc}", time.perf_counter() - start))
    print("\n| benchmark | result | wall (s) |\n|---|---|---:|")
    for name, result, seconds in results:
        print(f"| {name} | {result} | {seconds:.0f} |")
    return 0 if all(r in ("ok", "skipped") for _, r, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
