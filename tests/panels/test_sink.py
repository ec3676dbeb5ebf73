"""PanelSink and its writers without a fit: each logger's share, one render, notices, failures, bad input."""

from __future__ import annotations

import csv
import io
import logging

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea_mod

from nn_neuroimaging_lightning.panels import rendering as render_mod
from nn_neuroimaging_lightning.panels import sink as sink_mod
from nn_neuroimaging_lightning.panels.figures import consistency_figure
from nn_neuroimaging_lightning.panels.sink import CSVPanels, PanelSink, TensorBoardPanels, plain_cell

FREQS = np.arange(5) * 25.0


class _Quiet(Logger):
    """A logger with no panel writer (scalars only)."""

    name, version = "quiet", 0

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _accumulator(logdir):
    guidance = {ea_mod.IMAGES: 0, ea_mod.HISTOGRAMS: 0, ea_mod.TENSORS: 0}
    return ea_mod.EventAccumulator(str(logdir), size_guidance=guidance).Reload()


def test_tensorboard_and_csv_each_get_their_share(tmp_path, monkeypatch):
    renders = []
    real_render = render_mod.render
    monkeypatch.setattr(sink_mod, "render", lambda fig: renders.append(fig) or real_render(fig))
    tb, csv_logger = TensorBoardLogger(str(tmp_path), name="tb"), CSVLogger(str(tmp_path), name="csv")
    sink = PanelSink([tb, csv_logger, _Quiet()])
    assert sink.kinds == ["TensorBoardLogger", "CSVLogger"] and sink.skipped == ["_Quiet"]
    fig = consistency_figure({"consistency": [0.5, 0.75]}, steps=[10, 20])
    sink.figure("cross_modal/consistency_history", fig, step=20)
    assert len(renders) == 1 and fig.axes == []  # rendered once for both writers, then released
    sink.table("nn_eeg/events", ("step", "layer", "kind", "value"), [(7, "model.fc1", "collapse", np.float32(0.25))], 20,
               note="last 50 events")
    sink.text("nn_fmri/tract/a__b/pathways", "not traced: no weights", 20)
    for step in (10, 20):
        sink.spectrum("nn_eeg/model.fc1/spectrum", FREQS, np.array([0.0, 4.0, 2.0, 1.0, 0.5]) * step, step)
    sink.layout({"nn_eeg": {"fc1": ["Multiline", ["nn_eeg/fc1/band/.*"]]}})
    sink.layout({"nn_eeg": {"fc1": ["Multiline", ["nn_eeg/fc1/band/.*"]]}})
    sink.flush()

    acc = _accumulator(tb.log_dir)
    image = acc.Images("cross_modal/consistency_history")
    assert [(i.step, i.width, i.height) for i in image] == [(20, 640, 440)]
    assert "| 7 | model.fc1 | collapse | 0.25 |" in acc.Tensors("nn_eeg/events/text_summary")[0].tensor_proto.string_val[0].decode()
    assert [e.step for e in acc.Histograms("nn_eeg/model.fc1/spectrum")] == [10, 20]
    assert len(acc.Tensors("custom_scalars__config__")) == 1  # once per writer

    run = tmp_path / "csv" / "version_0" / "panels"
    png = (run / "cross_modal" / "consistency_history" / "step_000020.png").read_bytes()
    assert png == acc.Images("cross_modal/consistency_history")[0].encoded_image_string  # the same PNG bytes
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (640, 440)
    with open(run / "nn_eeg" / "events" / "step_000020.csv", newline="") as fh:
        assert list(csv.reader(fh)) == [["step", "layer", "kind", "value"], ["7", "model.fc1", "collapse", "0.25"]]
    assert (run / "nn_eeg" / "events" / "step_000020_note.md").read_text() == "last 50 events"
    assert (run / "nn_fmri" / "tract" / "a__b" / "pathways" / "step_000020.md").read_text() == "not traced: no weights"
    with open(run / "nn_eeg" / "model.fc1" / "spectrum.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["step", "0 Hz", "25 Hz", "50 Hz", "75 Hz", "100 Hz"]
    assert [r[0] for r in rows[1:]] == ["10", "20"] and float(rows[2][2]) == 80.0


def test_csv_paths_stay_in_the_run_directory(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    writer = CSVPanels(logger)
    writer.text("nn_fmri/../../escape", "x", 1)
    found = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.md")]
    assert found == ["csv/version_0/panels/nn_fmri/_/_/escape/step_000001.md"]


def test_loggers_without_a_writer_get_one_notice(tmp_path, caplog):
    sink_mod._noticed_skipped.discard("_Quiet")
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # three callbacks, one notice
            PanelSink([TensorBoardLogger(str(tmp_path), name="tb"), _Quiet()])
    notices = [r.getMessage() for r in caplog.records if "_Quiet gets the scalars only" in r.getMessage()]
    assert len(notices) == 1 and "TensorBoardLogger, WandbLogger, MLFlowLogger, CSVLogger" in notices[0]
    alone = PanelSink([_Quiet()])
    assert not alone and alone.kinds == []
    fig = consistency_figure({"consistency": [0.5]})
    alone.figure("x", fig, 0)  # nothing to write to: released without rendering
    assert fig.axes == []


def test_a_failing_writer_is_dropped_with_one_warning_and_the_others_continue(tmp_path):
    class Broken(TensorBoardPanels):
        def table(self, *args, **kwargs):
            raise OSError("disk full")

    good = CSVLogger(str(tmp_path), name="csv")
    sink = PanelSink([good])
    broken = Broken(TensorBoardLogger(str(tmp_path), name="tb"))
    sink.writers.insert(0, broken)
    with pytest.warns(UserWarning, match=r"Panels for TensorBoardLogger stopped after an error \(OSError: disk full\)"):
        sink.table("t", ("a",), [(1,)], 1)
    sink.table("t", ("a",), [(2,)], 2)  # no second warning: the broken writer is gone
    assert sink.writers and all(isinstance(w, CSVPanels) for w in sink.writers)
    assert sorted(p.name for p in (tmp_path / "csv" / "version_0" / "panels" / "t").iterdir()) == [
        "step_000001.csv", "step_000002.csv"]


def test_sink_bad_input_is_refused_before_any_writer(tmp_path):
    sink = PanelSink([CSVLogger(str(tmp_path), name="csv")])
    with pytest.raises(ValueError, match=r"`rows\[0\]` must have 2 cells like `header`, got 3"):
        sink.table("t", ("a", "b"), [(1, 2, 3)], 0)
    with pytest.raises(ValueError, match="`header` must be a non-empty sequence"):
        sink.table("t", (), [], 0)
    with pytest.raises(ValueError, match="`freqs` and `psd` must be 1-D with the same non-zero length"):
        sink.spectrum("s", FREQS, np.ones(3), 0)
    with pytest.raises(ValueError, match="`freqs` must be finite and strictly increasing"):
        sink.spectrum("s", [0.0, 0.0], [1.0, 1.0], 0)
    with pytest.raises(TypeError, match="`fig` must be a matplotlib Figure"):
        sink.figure("f", object(), 0)
    assert sink.writers  # bad input is the caller's error, not the logger's: the writer stays
    assert not (tmp_path / "csv" / "version_0" / "panels").exists()


def test_plain_cell():
    import enum

    import torch

    class Kind(enum.Enum):
        A = "a"

    assert [plain_cell(v) for v in (torch.tensor(2.5), torch.tensor([1, 2]), np.bool_(True), Kind.A, None, (1, 2))] == [
        2.5, "[1, 2]", True, "a", None, "(1, 2)"]
