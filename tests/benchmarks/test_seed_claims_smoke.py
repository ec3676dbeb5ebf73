"""Smoke run of ``benchmarks/seed_claims.py`` (1 architecture, 1 seed, short fits): the table is written
and every row that is defined on that run carries finite numbers."""

import importlib.util
import json
import logging
import math
import re
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_global_state():
    """The benchmark silences Lightning's loggers and warnings for its own log (``_clientfit.quiet``):
    undo that after each test, so later tests see the log records and warnings they check."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "transformers")
    levels = {n: logging.getLogger(n).level for n in names}
    with warnings.catch_warnings():
        yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def _load():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("seed_claims", ROOT / "benchmarks" / "seed_claims.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(300)
def test_seed_claims_smoke(tmp_path):
    sc = _load()
    out, md = tmp_path / "claims.json", tmp_path / "claims.md"
    assert sc.main(["--smoke", "--out", str(out), "--markdown", str(md), "--results", str(tmp_path / "none")]) == 0
    data = json.loads(out.read_text())
    rows = {r["claim"]: r for r in data["rows"]}
    table = md.read_text()
    assert table.count("\n") == len(rows) + 2  # header, rule, one line per row
    for claim in rows:
        assert claim in table

    def numbers(text):
        return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text.replace("−", "-"))]

    # Rows defined on the smoke run (cnn: every layer has a zeta map; eeg_states' reference_cnn fault run)
    defined = [c for c in rows if c.startswith("state balanced accuracy") and "other seeds" not in c]
    defined += [c for c in rows if c.startswith(("layers differ", "layer spectra", "total power", "share of critical",
                                                 "zeta range", "grid coverage", "corr(", "cross-modal"))]
    assert len(defined) == 16
    for claim in defined:
        measured = rows[claim]["measured"]
        assert "n/a" not in measured, (claim, measured)
        vals = numbers(measured)
        assert vals and all(math.isfinite(v) for v in vals), (claim, measured)
        assert rows[claim]["runs"] in ("1", "1 archs", "5 pairs"), (claim, rows[claim]["runs"])
    for claim in defined:
        if claim.startswith(("state balanced", "share of critical", "grid coverage", "cross-modal")):
            mean = numbers(rows[claim]["measured"])[0]
            assert 0.0 <= mean <= 100.0, (claim, mean)
    # cross-run rows need two seeds: said so, not a number
    assert all(rows[c]["measured"] == "n/a" for c in rows if "other seeds" in c)
    # rows from other benchmarks without their outputs: a pointer to the command, not a figure
    for claim in ("memory", "overhead (step time with / without the callbacks − 1)"):
        assert rows[claim]["measured"].startswith("not measured: run benchmarks/")
    run = next(r for r in data["runs"] if r["kind"] == "plain")
    assert run["spectral"]["analyses"] >= 2 and sum(run["windows"]) > 0
    # the table re-made from the JSON (no fits) is the same table
    again = tmp_path / "again.md"
    assert sc.main(["--from-json", str(out), "--markdown", str(again), "--results", str(tmp_path / "none")]) == 0
    assert again.read_text() == table
    zeta = next(r for r in data["runs"] if r["kind"] == "zeta")
    assert zeta["zeta_layers"] and 0.0 <= zeta["critical_share"] <= 1.0 and zeta["zeta_min"] <= zeta["zeta_max"]


def test_seed_claims_bad_arch():
    sc = _load()
    with pytest.raises(SystemExit):
        sc.main(["--archs", "vgg"])


def test_seed_claims_reads_other_benchmarks(tmp_path):
    """Rows from other benchmarks come from their JSON files (alarms.py --out records, documented keys)."""
    sc = _load()
    ev = lambda step, kind: {"step": step, "kind": kind, "layer": "l", "phase": "train", "source": "nn_eeg", "detail": ""}  # noqa: E731
    alarms = [
        {"client": "cnn", "seed": 0, "fault": "nan", "fault_step": 10, "steps": 20, "seconds": 0.2, "events": [ev(10, "non_finite")]},
        {"client": "cnn", "seed": 0, "fault": "dead_layer", "fault_step": 10, "steps": 20, "seconds": 0.2,
         "events": [ev(5, "collapse"), ev(11, "collapse")]},
        {"client": "cnn", "seed": 0, "fault": None, "steps": 20, "seconds": 0.2, "events": []},
    ]
    (tmp_path / "alarms.json").write_text(json.dumps(alarms))
    (tmp_path / "memory.json").write_text(json.dumps({"variants": [{"name": "defaults", "extra_mib": 6.5}]}))
    (tmp_path / "overhead_clients.json").write_text(json.dumps([{"client": "cnn", "ratio": 1.05}, {"client": "lstm", "ratio": 1.01}]))
    ext = sc._external(tmp_path)
    # latencies 0 and 1 steps (the event before the fault is not a detection); 10 ms steps -> <= 10 and 20 ms
    assert ext["latency"][0].startswith("0.5 ± 0.71 (0–1) steps") and "holds" in ext["latency"][1]
    assert ext["memory"][0].startswith("+6.5")
    assert ext["overhead"][0].startswith("3 ± 2.8 (1–5) %") and "does not hold" in ext["overhead"][1]
    assert ext["analysis_latency"][0].startswith("not measured: run benchmarks/eeg_overhead.py")
