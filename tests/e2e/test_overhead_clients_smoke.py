"""``benchmarks/overhead_clients.py --smoke`` and ``--figures`` run end to end and report what they say.

No timing is asserted (speed is the benchmark's business): the smoke run must fit every arm, give a
finite positive ratio per arm, attribute the ``all`` arm's epoch time, and print the table.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead_clients.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SCRIPT.parents[1]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_smoke_fits_every_arm_and_attributes_the_epoch_time(tmp_path):
    out = tmp_path / "overhead.json"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = json.loads(out.read_text())["results"]
    assert res["client"] == "cnn" and res["repeats"] == 1
    (rnd,) = res["rounds"]
    assert set(rnd) == {"plain", "all", "floor"} and all(r["steps"] == 8 for r in rnd.values())
    for arm in ("all", "floor"):
        med, lo, hi = res["ratio"][arm]
        assert math.isfinite(med) and med > 0 and lo <= med <= hi
    pe = res["per_epoch_ms"]
    assert pe["figures"] > 0 and pe["zeta"] > 0  # the defaults draw panels and run zeta every validation epoch
    assert pe["epoch_hooks"] >= pe["zeta"] + pe["tract"] + pe["figures"] - 1e-6
    assert res["figures_per_epoch"] >= 1
    assert "| cnn | 8 × 1 |" in proc.stdout and "overhead_clients.py --smoke" in proc.stdout


def test_figures_mode_times_every_figure_kind(tmp_path):
    out = tmp_path / "figures.json"
    proc = _run("--figures", "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    costs = json.loads(out.read_text())["figures"]
    assert {"spectrum (9 layers)", "heatmap zeta 8x8x4", "matrix 8x8", "spectrogram (32 x 33)"} <= set(costs)
    for name, c in costs.items():
        assert c["px"][0] >= 640, name  # issue 16: at least 640 px wide
        assert c["total"] > 0 and c["render"] > 0, name
