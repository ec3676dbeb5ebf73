"""`build_report` and `nn-neuroimaging report` on a synthetic run written with SummaryWriter."""

from __future__ import annotations

import json
import math
import re

import pytest
from torch.utils.tensorboard import SummaryWriter

from nn_neuroimaging_lightning.cli import main
from nn_neuroimaging_lightning.report import NOT_RECORDED, build_report

BANDS = ("delta", "theta", "alpha", "beta", "gamma")
# latest value per (layer, band); earlier steps get different values so "latest" is checked
LATEST = {
    "model.conv1": {"delta": 0.5, "theta": 0.2, "alpha": 0.125, "beta": 0.1, "gamma": 0.075},
    "fc": {"delta": 0.0625, "theta": 0.25, "alpha": 0.3125, "beta": 0.1875, "gamma": 0.1875},
}
ZETA_TOP = "| rank | region | zeta |\n|---|---|---|\n| 1 | (0, 1, 2) | 0.4321 |\n| 2 | (3, 0, 1) | 0.1234 |"
PATHWAYS = "| source region | target region | strength |\n|---|---|---|\n| (0, 1, 2) | (3,) | 0.875 |\n\nmapping: exact"
EVENTS = [
    {"step": 7, "phase": "train", "layer": "model.conv1", "kind": "explosion", "value": 9.5, "source": "nn_eeg", "detail": "", "time": 1.0},
    {"step": 8, "phase": "train", "layer": "<loss>", "kind": "non_finite", "value": "nan", "source": "nn_eeg", "detail": "loss | nan", "time": 2.0},
    {"step": 9, "phase": "validate", "layer": "model.conv1", "kind": "explosion", "value": "inf", "source": "nn_eeg", "detail": "", "time": 3.0},
]


def _write_run(path, events=EVENTS, extra_events=0):
    with SummaryWriter(str(path)) as w:
        for step in (10, 20):
            for layer, bands in LATEST.items():
                for band, value in bands.items():
                    # Lightning's on_step suffix on the early point, plain tag on the latest
                    tag = f"nn_eeg/{layer}/band/{band}"
                    w.add_scalar(tag + "_step" if step == 10 else tag + "_epoch", value if step == 20 else 0.9, step)
            w.add_scalar("train_loss_step", 2.0 if step == 10 else 1.5, step)
            w.add_scalar("val_loss", 1.75 if step == 10 else 1.25, step)
            w.add_scalar("val_acc", 0.3 if step == 10 else 0.45, step)
            w.add_scalar("epoch", 0 if step == 10 else 1, step)
        for step, acc in ((5, 0.6), (15, 0.875), (25, 0.8125)):
            w.add_scalar("nn_eeg/state_accuracy_epoch", acc, step)
        for step, z in ((10, 0.25), (20, 0.4321)):
            w.add_scalar("nn_fmri/model.conv1/zeta_max", z, step)
        w.add_scalar("nn_fmri/fc/zeta_max_step", 0.0375, 20)
        w.add_text("nn_fmri/model.conv1/zeta_top", ZETA_TOP, 20)
        w.add_text("nn_fmri/tract/model.conv1__fc/pathways", PATHWAYS, 20)
        for step, (c, r, a, h) in ((10, (0.5, 0.25, 0.75, 0.375)), (20, (0.625, -0.125, 0.875, 0.5625))):
            for key, v in zip(("consistency", "rho", "agreement", "coherence"), (c, r, a, h)):
                w.add_scalar(f"cross_modal/{key}", v, step)
    with open(path / "events.jsonl", "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
        for i in range(extra_events):
            fh.write(json.dumps(dict(EVENTS[0], step=100 + i, layer="fc", kind="collapse")) + "\n")


def _section(report: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}.*?\n(.*?)(?=^## |\Z)", report, flags=re.S | re.M)
    assert match, f"section {title!r} missing in:\n{report}"
    return match.group(1)


def _table(text: str, first_header: str) -> list[list[str]]:
    """Rows (header first) of the first markdown table whose header starts with `first_header`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {first_header} |"):
            rows = []
            for row in lines[i:]:
                if not row.startswith("|"):
                    break
                if not row.startswith("|---"):
                    rows.append([c.strip() for c in row.strip().strip("|").split(" | ")])
            return rows
    raise AssertionError(f"no table starting with {first_header!r} in:\n{text}")


def _as_dict(rows):
    return {r[0]: dict(zip(rows[0][1:], r[1:])) for r in rows[1:]}


def test_report_sections_hold_the_logged_numbers(tmp_path):
    _write_run(tmp_path)
    report = build_report(tmp_path)

    summary = {r[0]: r[1] for r in _table(_section(report, "Run summary"), "measure")[1:]}
    assert summary["last step"] == "25"
    assert summary["epochs"] == "2"
    assert summary["train_loss"] == "1.5"
    assert summary["val_loss"] == "1.25"
    assert summary["val_acc"] == "0.45"
    assert summary["anomaly events"] == "3"

    bands = _table(_section(report, "Band powers per layer"), "layer")
    assert bands[0] == ["layer", *BANDS]  # canonical band order, suffixes stripped (no "gamma_epoch")
    cells = _as_dict(bands)
    assert set(cells) == set(LATEST)  # dotted layer name kept whole
    for layer, row in LATEST.items():
        for band, value in row.items():
            assert float(cells[layer][band]) == pytest.approx(value, rel=1e-4), (layer, band)

    acc = _table(_section(report, "State accuracy"), "latest")
    assert acc[1] == ["0.8125", "0.875", "25"]

    zeta = _section(report, "Zeta per layer")
    z = _as_dict(_table(zeta, "layer"))
    assert float(z["model.conv1"]["zeta_max (latest)"]) == pytest.approx(0.4321, rel=1e-4)
    assert float(z["model.conv1"]["zeta_max (max)"]) == pytest.approx(0.4321, rel=1e-4)
    assert float(z["fc"]["zeta_max (latest)"]) == pytest.approx(0.0375, rel=1e-4)
    assert ZETA_TOP in zeta  # verbatim
    assert "Top regions: fc" not in zeta

    tract = _section(report, "Tractography")
    assert "### model.conv1 -> fc" in tract and PATHWAYS in tract  # the pathways table verbatim

    cm = _as_dict(_table(_section(report, "Cross-modal consistency"), "measure"))
    expected = {"consistency": (0.625, 0.5, 0.625), "rho": (-0.125, -0.125, 0.25),
                "agreement": (0.875, 0.75, 0.875), "coherence": (0.5625, 0.375, 0.5625)}
    for key, (latest, lo, hi) in expected.items():
        got = cm[key]
        assert (float(got["latest"]), float(got["min"]), float(got["max"])) == pytest.approx((latest, lo, hi), rel=1e-4)

    anomalies = _section(report, "Anomalies")
    assert {r[0]: r[1] for r in _table(anomalies, "kind")[1:]} == {"explosion": "2", "non_finite": "1"}
    assert {r[0]: r[1] for r in _table(anomalies, "layer")[1:]} == {"model.conv1": "2", "<loss>": "1"}
    ev = _table(anomalies, "step")
    assert ev[0] == ["step", "phase", "layer", "kind", "value", "source", "detail"]
    assert [r[0] for r in ev[1:]] == ["7", "8", "9"]
    assert ev[1][4] == "9.5" and ev[2][4] == "nan" and ev[3][4] == "inf"
    assert ev[2][6] == "loss \\| nan"  # the pipe in `detail` is escaped, the table keeps 7 cells
    assert NOT_RECORDED not in report


def test_report_shows_first_20_events_but_counts_all(tmp_path):
    _write_run(tmp_path, extra_events=30)
    anomalies = _section(build_report(tmp_path), "Anomalies")
    assert "33 event(s)" in anomalies
    assert "### First 20 events" in anomalies
    assert len(_table(anomalies, "step")) == 1 + 20
    assert {r[0]: r[1] for r in _table(anomalies, "kind")[1:]}["collapse"] == "30"


def test_report_says_not_recorded_for_missing_sections(tmp_path):
    with SummaryWriter(str(tmp_path)) as w:
        w.add_scalar("train_loss", 0.5, 3)
    report = build_report(str(tmp_path))
    for title in ("Band powers per layer", "State accuracy", "Zeta per layer", "Tractography", "Cross-modal consistency",
                  "Anomalies"):
        assert _section(report, title).strip() == NOT_RECORDED + ".", title
    summary = {r[0]: r[1] for r in _table(_section(report, "Run summary"), "measure")[1:]}
    assert summary["train_loss"] == "0.5"
    assert summary["val_loss"] == NOT_RECORDED


def test_cli_report_prints_markdown(tmp_path, capsys):
    _write_run(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Run report:")
    cells = _as_dict(_table(_section(out, "Band powers per layer"), "layer"))
    assert float(cells["model.conv1"]["delta"]) == pytest.approx(0.5)
    assert math.isclose(float(cells["fc"]["alpha"]), 0.3125, rel_tol=1e-4)


def test_report_errors_for_missing_or_empty_run(tmp_path, capsys):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"nope.*does not exist.*events\.out\.tfevents"):
        build_report(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["report", str(missing)])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "events.jsonl").write_text(json.dumps(EVENTS[0]) + "\n")
    with pytest.raises(FileNotFoundError, match=r"holds no TensorBoard event file \(events\.out\.tfevents\.\*\)"):
        build_report(empty)
    # a log root: the error points at the run below it
    nested = tmp_path / "root" / "demo" / "version_0"
    with SummaryWriter(str(nested)) as w:
        w.add_scalar("train_loss", 1.0, 0)
    with pytest.raises(FileNotFoundError, match=r"Runs found below it: .*version_0"):
        build_report(tmp_path / "root")
    with pytest.raises(NotADirectoryError, match="is a file"):
        build_report(empty / "events.jsonl")
    with pytest.raises(TypeError, match="`run_dir` must be a path"):
        build_report(42)


def test_report_reads_a_lightning_run(tmp_path):
    """Tags as Lightning's TensorBoardLogger writes them (`_step`/`_epoch` suffixes, `epoch`)."""
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.loggers import TensorBoardLogger

    class Logged(BoringModel):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            # step-dependent values; the epoch mean of epoch 1 over batch_idx 0..3 is 0.1 * 1.5 + 0.25
            self.log("nn_eeg/layer.0/band/gamma", 0.1 * batch_idx + 0.25 * self.current_epoch, on_step=True, on_epoch=True)
            self.log("cross_modal/consistency", 0.5 + 0.125 * self.current_epoch, on_step=False, on_epoch=True)
            return out

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="demo")
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, logger=logger, log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Logged())
    report = build_report(logger.log_dir)
    bands = _as_dict(_table(_section(report, "Band powers per layer"), "layer"))
    assert list(bands) == ["layer.0"]
    # the epoch-end value is logged at the last step (7) after the step value, so it is the latest
    assert float(bands["layer.0"]["gamma"]) == pytest.approx(0.1 * 1.5 + 0.25, rel=1e-4)
    cm = _as_dict(_table(_section(report, "Cross-modal consistency"), "measure"))["consistency"]
    assert (float(cm["latest"]), float(cm["min"]), float(cm["max"])) == pytest.approx((0.625, 0.5, 0.625))
    summary = {r[0]: r[1] for r in _table(_section(report, "Run summary"), "measure")[1:]}
    assert summary["epochs"] == "2"
    assert summary["last step"] == "7"


# ------------------------------------------------------------------ 0 events, exceptions


def test_a_monitored_run_without_events_file_had_0_events(tmp_path):
    with SummaryWriter(str(tmp_path)) as w:
        w.add_scalar("nn_eeg/model.conv1/band/gamma", 0.25, 10)  # monitored: a callback tag
    report = build_report(tmp_path)
    assert _section(report, "Anomalies").strip().startswith("0 events (no events.jsonl in the run directory")
    summary = {r[0]: r[1] for r in _table(_section(report, "Run summary"), "measure")[1:]}
    assert summary["anomaly events"] == "0"
    (tmp_path / "events.jsonl").write_text("")
    assert _section(build_report(tmp_path), "Anomalies").strip() == "0 events in events.jsonl."


def test_a_run_that_ended_in_an_exception_is_marked(tmp_path):
    crash = {"step": 42, "phase": "error", "layer": "<model>", "kind": "exception", "value": "nan", "source": "nn_eeg",
             "detail": "RuntimeError: injected failure", "time": 4.0}
    _write_run(tmp_path, events=EVENTS + [crash])
    summary = _section(build_report(tmp_path), "Run summary")
    assert summary.lstrip().startswith(
        "**This run ended in an exception at step 42 (phase error): RuntimeError: injected failure**")
    assert {r[0]: r[1] for r in _table(summary, "measure")[1:]}["ended by"] == "exception at step 42"
    _write_run(tmp_path / "healthy")
    assert "exception" not in _section(build_report(tmp_path / "healthy"), "Run summary")


def test_a_real_crash_is_marked_in_both_reports(tmp_path):
    """NN-EEG records the exception in `on_exception`; the reports read it from events.jsonl."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from helpers import MLPModule, fast_trainer
    from nn_neuroimaging_lightning import NNEEGCallback
    from nn_neuroimaging_lightning.report import build_html_report

    model = MLPModule(n=8 * 40)
    model.fail_at = 30
    logger = TensorBoardLogger(str(tmp_path), name="crash")
    with pytest.raises(RuntimeError, match="injected failure"):
        fast_trainer(tmp_path, [NNEEGCallback(analysis_every_n_steps=10)], logger=logger, max_epochs=1,
                     log_every_n_steps=10, limit_val_batches=0).fit(model)
    summary = _section(build_report(logger.log_dir), "Run summary")
    assert "**This run ended in an exception at step 30 (phase error): RuntimeError: injected failure**" in summary
    page = build_html_report(logger.log_dir)
    assert '<p class="alert">This run ended in an exception at step 30 (phase error): RuntimeError: injected failure</p>' in page


# ------------------------------------------------------------------ the HTML page of a demo run

_HTML_TAGS = ("nn_eeg/spectrum", "nn_eeg/phase_timeline", "nn_eeg/model.conv1/spectrogram", "nn_fmri/model.conv2/zeta",
              "nn_fmri/model.conv2/density", "cross_modal/consistency_history")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A short demo-model run with all three callbacks, figures, tractography and collapse events."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from demo_fits import fit_demo
    from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback

    root = tmp_path_factory.mktemp("demo_run")
    logger = TensorBoardLogger(str(root), name="demo")
    fmri = NNfMRICallback(layers=["model.conv2", "model.fc1", "model.fc2"], grid=(2, 2, 2), zeta_budget=32,
                          zeta_time_fraction=None, probe_size=8)
    fit_demo(root, [logger], [NNEEGCallback(), fmri, CrossModalCallback()])
    return logger.log_dir


def _img_sources(page: str) -> dict:
    return dict((alt, src) for src, alt in re.findall(r'<img src="(data:image/png;base64,[^"]+)"[^>]* alt="([^"]+)"', page))


def test_html_report_of_a_demo_run_holds_the_figures_and_the_events_table(demo_run, tmp_path, capsys):
    import base64

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "share" / "report.html"
    assert main(["report", demo_run, "--html", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"HTML report: {out}"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # self-contained: no script, no stylesheet link, no URL outside the page (links are #anchors)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r'(src|href)="(?!data:image/png;base64,|#)', page)
    assert "http://" not in page and "https://" not in page
    images = _img_sources(page)
    acc = EventAccumulator(demo_run, size_guidance={"images": 0}).Reload()
    assert set(images) == set(acc.Tags()["images"]) and set(_HTML_TAGS) <= set(images)
    assert any(t.startswith("nn_fmri/tract/") for t in images)
    for tag in _HTML_TAGS:  # the latest image of each tag, byte for byte
        latest = max(acc.Images(tag), key=lambda e: e.step).encoded_image_string
        assert base64.b64decode(images[tag].split(",", 1)[1]) == latest, tag
    events = re.search(r"<h3>Events</h3>\s*<table><thead><tr>(.*?)</tr></thead><tbody>(.*?)</tbody></table>", page, re.S)
    assert events, "events table missing"
    assert re.findall(r"<th>(.*?)</th>", events.group(1)) == ["step", "phase", "layer", "kind", "value", "source", "detail"]
    rows = re.findall(r"<tr>(.*?)</tr>", events.group(2))
    recorded = [json.loads(line) for line in open(f"{demo_run}/events.jsonl", encoding="utf-8")]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    assert [(c[0], c[2], c[3]) for c in cells] == [(str(e["step"]), e["layer"], e["kind"]) for e in recorded]
    assert ("collapse", "model.fc1") in {(c[3], c[2]) for c in cells}
    for title in ("Run summary", "Band powers per layer", "Zeta per layer (nn_fmri)", "Tractography (nn_fmri/tract)",
                  "Cross-modal consistency", "Anomalies"):
        assert f"<h2>{title}</h2>" in page
    assert "<h3>Top regions: model.conv2</h3>" in page and "<th>grid cell</th>" in page  # zeta tables as HTML


def _chromium():
    import os
    import shutil

    return next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and os.path.isfile(p)), None)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt-get install -y chromium); "
                                                "the page's self-containedness is checked without it above")
def test_html_report_opens_in_headless_chromium_without_network(demo_run, tmp_path):
    import subprocess

    import numpy as np
    from PIL import Image

    from nn_neuroimaging_lightning.report import write_html_report

    page = write_html_report(demo_run, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    # no network: every host name fails to resolve and any proxied request goes to a closed port
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND",
             "--proxy-server=127.0.0.1:9", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", f"file://{page}"], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img ") >= len(_HTML_TAGS) and "<h3>Events</h3>" in dom.stdout
    run = subprocess.run([_chromium(), *flags, "--window-size=1400,2600", f"--screenshot={shot}", f"file://{page}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    # the figures were decoded and drawn: the page itself is black, grey and link blue, the spectrum's
    # Okabe-Ito orange line and the spectrograms' magma map are warm colours
    warm = (rgb[..., 0] > 180) & (rgb[..., 1] > 60) & (rgb[..., 1] < 210) & (rgb[..., 2] < 110)
    assert warm.sum() > 2000
