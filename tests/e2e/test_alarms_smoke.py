"""A 1-seed smoke run of ``benchmarks/alarms.py`` (the full benchmark is too long for the suite).

It fits the dropout MLP healthy and with a NaN injected at step 25, and checks the records the
README's table is made from: the healthy run is judged over all its steps, the NaN is found at the
step it was injected in and stops the run there, and the weights stay finite (the gated update).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.timeout(240)
def test_alarms_smoke_run_writes_the_table_and_records(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import alarms
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "alarms.json"
    assert alarms.main(["--smoke", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| fault | runs | detected |" in table and "| nan | 1 |" in table

    records = json.loads(out.read_text())
    healthy = [r for r in records if r["fault"] is None]
    faulty = [r for r in records if r["fault"] == "nan"]
    assert len(healthy) == 1 and len(faulty) == 1
    assert healthy[0]["steps"] == 2 * 20
    nan = faulty[0]
    k = nan["fault_step"]
    steps = [e["step"] for e in nan["events"] if e["kind"] == "non_finite"]
    assert steps and min(s for s in steps if s >= k) == k, (k, steps)
    assert nan["stop_step"] == k  # stopped in the step of the NaN
    assert nan["weights_finite"]  # the gated update never reached the weights
    assert nan["layer"] in {e["layer"] for e in nan["events"] if e["step"] == k}  # found in the layer it was injected in
