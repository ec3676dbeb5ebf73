"""Panels in the loggers Lightning users use, in real fits of the demo model (no network).

TensorBoard + CSV together (each gets its share), W&B offline (``WANDB_MODE=offline``), MLflow on a
local file store under ``tmp_path``; a logger without a panel writer gets the scalars and one
notice; no matplotlib figure outlives the fit. The fits are :func:`demo_fits.fit_demo` (a dead
layer, so there are events and an events table).
"""

from __future__ import annotations

import csv
import gc
import glob
import io
import json
import logging
import os
import weakref
from typing import List

import pytest
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from demo_fits import EEG_IMAGES, EVENT_COLUMNS, fit_demo as _fit
from helpers import MLPModule, fast_trainer
from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback

def _png_size(data: bytes) -> tuple:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("render", ["inline", "process"])
def test_tensorboard_and_csv_each_get_their_share_and_no_figure_is_left_open(tmp_path, monkeypatch, render):
    # "process": the figures are drawn by the renderer process (panels.worker), none in this one
    # while training (at teardown, `PanelSink.wait` draws those not sent to the renderer yet);
    # "inline": drawn here; every figure made here is released
    if render == "inline":
        monkeypatch.setenv("NN_NEUROIMAGING_RENDER", "inline")
    import matplotlib.figure
    import matplotlib.pyplot as plt  # Lightning imports it anyway; here to read its registry

    from nn_neuroimaging_lightning.panels.worker import FigureWorker

    made: List[weakref.ref] = []
    outside_wait: List[str] = []
    waiting = [0]
    init, help_ = matplotlib.figure.Figure.__init__, FigureWorker.help

    def tracking_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))
        if not waiting[0]:
            outside_wait.append(repr(self))

    def tracking_help(self):
        waiting[0] += 1
        try:
            return help_(self)
        finally:
            waiting[0] -= 1

    monkeypatch.setattr(matplotlib.figure.Figure, "__init__", tracking_init)
    monkeypatch.setattr(FigureWorker, "help", tracking_help)
    open_before = plt.get_fignums()
    tb, csv_logger = TensorBoardLogger(str(tmp_path), name="tb"), CSVLogger(str(tmp_path), name="csv")
    fmri = NNfMRICallback(layers=["model.conv2", "model.fc2"], grid=(2, 2, 2), zeta_budget=32, zeta_time_fraction=None,
                          probe_size=8)
    _fit(tmp_path, [tb, csv_logger], [NNEEGCallback(), fmri, CrossModalCallback()])
    gc.collect()
    if render == "inline":
        assert len(made) >= 10  # the panels were drawn with matplotlib ...
    else:
        assert outside_wait == []  # ... in the renderer process, not in the training one while it trains
    assert [r for r in made if r() is not None] == []  # ... and every figure made here was released
    assert plt.get_fignums() == open_before  # none ever entered pyplot's registry

    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "tensors": 0}).Reload()
    images = set(acc.Tags()["images"])
    expected = EEG_IMAGES | {"nn_fmri/model.conv2/zeta", "nn_fmri/model.fc2/density", "cross_modal/consistency_history"}
    assert expected <= images
    assert "nn_eeg/events/text_summary" in acc.Tags()["tensors"]
    panels = os.path.join(csv_logger.log_dir, "panels")
    pngs = {os.path.relpath(os.path.dirname(p), panels) for p in glob.glob(os.path.join(panels, "**", "*.png"), recursive=True)}
    assert pngs == images  # the CSV run directory has every figure TensorBoard has
    step = acc.Images("nn_eeg/spectrum")[-1].step
    png = open(os.path.join(panels, "nn_eeg", "spectrum", f"step_{step:06d}.png"), "rb").read()
    assert png == acc.Images("nn_eeg/spectrum")[-1].encoded_image_string and _png_size(png) == (640, 480)
    with open(glob.glob(os.path.join(panels, "nn_eeg", "events", "step_*.csv"))[0], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == EVENT_COLUMNS and {r[2] for r in rows[1:]} == {"model.fc1"} and {r[3] for r in rows[1:]} == {"collapse"}
    assert os.path.isfile(os.path.join(csv_logger.log_dir, "metrics.csv"))  # the scalars, as before
    assert os.path.isfile(os.path.join(tb.log_dir, "events.jsonl"))  # the first logger's run directory


def test_wandb_offline_run_has_the_images_and_the_events_table(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path),
                       "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_CONFIG_DIR": str(tmp_path / "config"),
                       "WANDB_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="nn_neuroimaging")
    try:
        _fit(tmp_path, [logger])
    finally:
        wandb.finish()
    (run,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    media = os.path.join(run, "files", "media")
    images = glob.glob(os.path.join(media, "images", "**", "*.png"), recursive=True)
    keys = {os.path.relpath(p, os.path.join(media, "images")).rsplit("_", 2)[0] for p in images}  # <key>_<n>_<hash>.png
    assert EEG_IMAGES <= keys
    spectrum = next(p for p in images if os.path.relpath(p, os.path.join(media, "images")).startswith("nn_eeg/spectrum_"))
    assert _png_size(open(spectrum, "rb").read()) == (640, 480)
    (table,) = glob.glob(os.path.join(media, "table", "nn_eeg", "events_*.table.json"))
    content = json.load(open(table))
    assert content["columns"] == EVENT_COLUMNS
    assert content["data"] and {row[2] for row in content["data"]} == {"model.fc1"}
    assert {row[3] for row in content["data"]} == {"collapse"}


def test_mlflow_file_store_run_has_the_images_and_the_events_table(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    logger = MLFlowLogger(experiment_name="nn_neuroimaging", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    _fit(tmp_path, [logger])
    client, run_id = logger.experiment, logger.run_id
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    for tag in EEG_IMAGES:  # MLflow names an image logged with key=tag, step=... "<tag with / as ~>+step+<n>+..."
        assert any(os.path.basename(p).startswith(tag.replace("/", "~") + "+step+") and p.endswith(".png") for p in images), tag
    root = client.get_run(run_id).info.artifact_uri.replace("file://", "")
    root = root[len("file:"):] if root.startswith("file:") else root
    spectrum = next(p for p in images if os.path.basename(p).startswith("nn_eeg~spectrum+") and p.endswith(".png"))
    assert _png_size(open(os.path.join(root, spectrum), "rb").read()) == (640, 480)
    tables = [a.path for a in client.list_artifacts(run_id, "panels/nn_eeg/events")]
    assert tables and all(p.endswith(".csv") for p in tables)
    with open(os.path.join(root, tables[-1]), newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == EVENT_COLUMNS and {r[3] for r in rows[1:]} == {"collapse"}


class _ScalarsOnly(Logger):
    """A logger without a panel writer: keeps what Lightning sends it."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: List[dict] = []

    name, version = "scalars_only", 0

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_a_logger_without_a_writer_gets_the_scalars_and_one_notice(tmp_path, caplog):
    from nn_neuroimaging_lightning.panels import sink

    sink._noticed_skipped.discard("_ScalarsOnly")
    alone = _ScalarsOnly()
    eeg = NNEEGCallback(analysis_every_n_steps=35)
    with caplog.at_level(logging.INFO):
        fast_trainer(tmp_path, [eeg], logger=alone, max_steps=70, limit_val_batches=0, log_every_n_steps=35).fit(
            MLPModule(n=8 * 70))
    assert eeg._noticed_no_panels
    assert any("nn_eeg/net.0/band/delta" in m for m in alone.metrics)  # the scalars reached it
    assert sum("no logger in `trainer.loggers` takes panels" in r.getMessage() for r in caplog.records) == 1

    caplog.clear()
    both = [TensorBoardLogger(str(tmp_path), name="tb"), _ScalarsOnly()]
    eeg = NNEEGCallback(analysis_every_n_steps=35)
    with caplog.at_level(logging.INFO):
        fast_trainer(tmp_path, [eeg], logger=both, max_steps=70, limit_val_batches=0,
                     log_every_n_steps=35).fit(MLPModule(n=8 * 70))
    assert not eeg._noticed_no_panels
    notices = [r.getMessage() for r in caplog.records if "gets the scalars only" in r.getMessage()]
    assert notices == ["_ScalarsOnly gets the scalars only: rich panels go to TensorBoardLogger, WandbLogger, "
                       "MLFlowLogger, CSVLogger."]
    assert any("nn_eeg/net.0/band/delta" in m for m in both[1].metrics)
