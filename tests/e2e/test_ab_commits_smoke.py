"""``benchmarks/ab_commits.py --smoke`` runs end to end: each fit in a process of its own commit's package.

No timing is asserted (speed is the benchmark's business): both commits' fits complete, each child
imported the package of its own tree (the script refuses otherwise), and every ratio is finite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "ab_commits.py"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout (the old side is a worktree of HEAD)")
def test_smoke_fits_both_commits_and_reports_finite_ratios(tmp_path):
    out = tmp_path / "ab.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--old", "HEAD", "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["fits"]) == {"old|cnn|plain", "old|cnn|eeg", "new|cnn|plain", "new|cnn|eeg"}
    (row,) = res["rows"]
    assert row["client"] == "cnn" and row["arm"] == "eeg"
    for key in ("old", "new", "new_over_old"):
        assert all(math.isfinite(v) and v > 0 for v in row[key])
    assert "| cnn | eeg |" in proc.stdout
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert "nnl_ab_" not in worktrees  # the old side's worktree is removed again
