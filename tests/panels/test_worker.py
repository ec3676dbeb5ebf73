"""The renderer process: figures drawn off the training thread, written under their step, nothing lost."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing import event_accumulator as ea_mod

from nn_neuroimaging_lightning.panels import figures as PF
from nn_neuroimaging_lightning.panels import sink as sink_mod
from nn_neuroimaging_lightning.panels.rendering import render
from nn_neuroimaging_lightning.panels.sink import PanelSink
from nn_neuroimaging_lightning.panels.worker import Drawing, FigureWorker, draw


def _images(logdir):
    acc = ea_mod.EventAccumulator(str(logdir), size_guidance={ea_mod.IMAGES: 0}).Reload()
    return {tag: [(e.step, e.encoded_image_string) for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def _zeta(seed: int) -> Drawing:
    scores = np.random.default_rng(seed).normal(size=(2, 2, 2))
    return Drawing.of(PF.heatmap_figure, scores, f"zeta {seed}", "RdBu_r", scores > 1, symmetric=True, colorbar_label="zeta")


def test_drawing_only_takes_the_figure_builders():
    with pytest.raises(ValueError, match=r"`fn` must be a figure builder of panels.figures .*got render"):
        Drawing.of(render, np.zeros((2, 2)))


def test_drawings_come_back_as_the_pixels_drawn_here_under_their_own_steps(tmp_path):
    worker = FigureWorker()
    tb, csv_logger = TensorBoardLogger(str(tmp_path), name="tb"), CSVLogger(str(tmp_path), name="csv")
    sink = PanelSink([tb, csv_logger], worker=worker)
    drawings = {step: _zeta(step) for step in (3, 7, 11)}
    for step, d in drawings.items():
        sink.figure("nn_fmri/x/zeta", d, step)
    assert sink.wait(timeout=120) and sink.pending == 0 and worker.failed is None
    got = _images(tb.log_dir)["nn_fmri/x/zeta"]
    assert [s for s, _ in got] == [3, 7, 11]
    for step, png in got:
        assert png == draw(drawings[step]).png  # the same PNG as drawn in the training process
        assert open(f"{csv_logger.log_dir}/panels/nn_fmri/x/zeta/step_{step:06d}.png", "rb").read() == png


def test_a_builder_error_is_one_warning_and_later_figures_are_still_drawn(tmp_path):
    sink = PanelSink([TensorBoardLogger(str(tmp_path), name="tb")], worker=FigureWorker())
    bad = Drawing("heatmap_figure", (np.zeros(3),), {"no_such_argument": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink.figure("a/bad", bad, 1)
        sink.figure("a/bad", bad, 2)
        sink.figure("a/good", _zeta(0), 2)
        assert sink.wait(timeout=120)
    texts = [str(w.message) for w in caught if "was not drawn" in str(w.message)]
    assert len(texts) == 1 and "'a/bad' (step 1)" in texts[0] and "no_such_argument" in texts[0]
    assert set(_images(sink.writers[0].logger.log_dir)) == {"a/good"}


def test_figures_pending_when_the_renderer_dies_are_drawn_here(tmp_path):
    worker = FigureWorker()
    sink = PanelSink([TensorBoardLogger(str(tmp_path), name="tb")], worker=worker)
    sink.figure("a/first", _zeta(1), 1)
    assert sink.wait(timeout=120)
    for step in range(2, 6):
        sink.figure("a/later", _zeta(step), step)
    worker._proc.kill()  # a renderer killed from outside (OOM killer, a user's kill) while drawing
    worker._proc.wait()
    sink.figure("a/later", _zeta(6), 6)  # after its end: drawn here
    assert sink.wait(timeout=120) and "ended" in worker.failed
    images = _images(sink.writers[0].logger.log_dir)
    assert [s for s, _ in images["a/first"]] == [1]
    assert sorted(s for s, _ in images["a/later"]) == [2, 3, 4, 5, 6]  # none lost


def test_without_a_renderer_figures_are_drawn_inline_with_one_notice(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    monkeypatch.setattr(sink_mod, "_noticed_inline", set())
    worker = FigureWorker()
    sink = PanelSink([TensorBoardLogger(str(tmp_path), name="tb")], worker=worker)
    with caplog.at_level("INFO"):
        sink.figure("a/x", _zeta(0), 1)
        sink.figure("a/x", _zeta(1), 2)
    assert sink.pending == 0 and "did not start" in worker.failed
    assert sum("drawn in the training thread" in r.getMessage() for r in caplog.records) == 1
    sink.flush()
    assert [s for s, _ in _images(sink.writers[0].logger.log_dir)["a/x"]] == [1, 2]


def test_inline_rendering_can_be_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("NN_NEUROIMAGING_RENDER", "inline")
    worker = FigureWorker()
    sink = PanelSink([TensorBoardLogger(str(tmp_path), name="tb")], worker=worker)
    sink.figure("a/x", _zeta(0), 1)
    assert sink.pending == 0 and worker._proc is None


def test_the_renderer_imports_neither_torch_nor_lightning():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "nn_neuroimaging_lightning.panels.worker"],
                         input=b"", capture_output=True, timeout=120)
    assert out.returncode == 0
    modules = {line.split("|")[-1].strip() for line in out.stderr.decode().splitlines() if line.startswith("import time:")}
    assert "matplotlib" in modules and "nn_neuroimaging_lightning.panels.figures" in modules
    assert not {m for m in modules if m.split(".")[0] in ("torch", "lightning")}


@pytest.mark.timeout(120)
def test_drawings_larger_than_the_pipe_in_quick_succession_do_not_deadlock(tmp_path):
    # each drawing (1.3 MB of arguments) and each result (PNG and pixels, about 1 MB) is larger than
    # a pipe's buffer: a sender that held the worker's lock while writing deadlocked with the reader
    worker, tb = FigureWorker(), TensorBoardLogger(str(tmp_path), name="tb")
    sink = PanelSink([tb], worker=worker)
    grid = np.random.default_rng(0).normal(size=(400, 400))
    for step in range(6):
        sink.figure("a/big", Drawing.of(PF.heatmap_figure, grid + step, f"big {step}"), step)
    assert sink.wait(timeout=100) and worker.failed is None
    assert [s for s, _ in _images(tb.log_dir)["a/big"]] == list(range(6))
    worker.close()


def test_inline_asked_for_after_the_renderer_started_is_honoured(tmp_path, monkeypatch):
    worker = FigureWorker()
    sink = PanelSink([TensorBoardLogger(str(tmp_path), name="tb")], worker=worker)
    sink.figure("a/x", _zeta(0), 1)
    assert sink.wait(timeout=120)
    monkeypatch.setenv("NN_NEUROIMAGING_RENDER", "inline")
    drawn = []
    monkeypatch.setattr(sink_mod, "draw", lambda d: drawn.append(d) or draw(d))
    sink.figure("a/x", _zeta(1), 2)
    assert len(drawn) == 1 and sink.pending == 0  # drawn in this process, at once
    worker.close()


@contextlib.contextmanager
def _stopped_renderer(tmp_path, tag):
    """A sink whose renderer drew one figure (``tag``, step 0) and is then stopped (SIGSTOP) for the block."""
    worker, tb = FigureWorker(), TensorBoardLogger(str(tmp_path), name="tb")
    sink = PanelSink([tb], worker=worker)
    sink.figure(tag, _zeta(0), 0)
    assert sink.wait(timeout=100)
    os.kill(worker._proc.pid, signal.SIGSTOP)  # busy: it draws nothing until SIGCONT
    try:
        yield worker, tb, sink
    finally:
        os.kill(worker._proc.pid, signal.SIGCONT)
    assert sink.wait(timeout=100) and worker.failed is None
    worker.close()


_NEEDS_SIGSTOP = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP/SIGCONT")


@pytest.mark.timeout(120)
@_NEEDS_SIGSTOP
def test_the_training_thread_does_not_wait_for_a_busy_renderer(tmp_path):
    # a renderer that reads nothing (stopped) with drawings larger than the pipe's buffer queued:
    # `figure` returns at once (a sender thread writes the pipe); the figures come once it reads again
    grid = np.random.default_rng(0).normal(size=(400, 400))  # 1.3 MB of arguments per drawing
    with _stopped_renderer(tmp_path, "a/big") as (worker, tb, sink):
        for step in range(1, 4):
            sink.figure("a/big", Drawing.of(PF.heatmap_figure, grid + step, f"big {step}"), step)  # would block here
        assert sink.pending == 3
    assert [s for s, _ in _images(tb.log_dir)["a/big"]] == [0, 1, 2, 3]


@pytest.mark.timeout(120)
@_NEEDS_SIGSTOP
def test_a_waiting_thread_draws_the_figures_not_sent_yet_and_each_tag_stays_in_order(tmp_path):
    # the renderer gets at most IN_FLIGHT drawings at a time; `wait`'s thread draws the rest itself
    # (two processes drain the last epoch's figures), and a tag's figures are written in the order given
    from nn_neuroimaging_lightning.panels.worker import IN_FLIGHT

    with _stopped_renderer(tmp_path, "a/x") as (worker, tb, sink):
        for step in range(1, 7):
            sink.figure("a/x", _zeta(step), step)
        deadline = time.monotonic() + 30
        while worker._in_flight < IN_FLIGHT and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker._in_flight == IN_FLIGHT  # the sender stops there
        assert worker.help() == 6 - IN_FLIGHT  # drawn here, in this thread
        assert sink.pending == IN_FLIGHT
        # written only after steps 1 and 2, which the stopped renderer holds: nothing of the tag yet
        assert [s for s, _ in _images(tb.log_dir).get("a/x", [])] == [0]
    got = _images(tb.log_dir)["a/x"]
    assert [s for s, _ in got] == list(range(7))
    assert all(png == draw(_zeta(s)).png for s, png in got)  # the same pixels whoever drew them


def test_kept_figures_are_drawn_again_in_place_with_the_pixels_of_new_ones():
    from nn_neuroimaging_lightning.panels.worker import Kept

    kept = Kept(most=2)
    for step in range(4):
        for tag in ("a/zeta", "b/zeta", "c/zeta"):  # c comes third: not kept, built anew each time
            d = _zeta(step * 10 + len(tag))
            assert kept.draw(tag, d).png == draw(d).png
    assert len(kept) == 2 and set(kept._figs) == {"a/zeta", "b/zeta"}
    other = Drawing.of(PF.heatmap_figure, np.zeros((3, 3)), "density")  # another shape under a kept tag: built anew
    assert kept.draw("a/zeta", other).png == draw(other).png
    with pytest.raises(TypeError, match="no_such_argument"):  # a builder's error propagates; the tag's figure is dropped
        kept.draw("b/zeta", Drawing("heatmap_figure", (np.zeros(3),), {"no_such_argument": 1}))
    assert set(kept._figs) == {"a/zeta"}
    kept.clear()
    assert len(kept) == 0


def test_the_renderer_draws_a_tags_later_figures_in_place_with_the_same_pngs(tmp_path):
    worker = FigureWorker()
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    sink = PanelSink([tb], worker=worker)
    drawings = {step: _zeta(step) for step in range(1, 6)}
    for step, d in drawings.items():
        sink.figure("nn_fmri/x/zeta", d, step)
        assert sink.wait(timeout=120)  # one at a time: every one is drawn by the renderer, the later ones in place
    assert worker.failed is None
    got = _images(tb.log_dir)["nn_fmri/x/zeta"]
    assert [s for s, _ in got] == list(drawings)
    for step, png in got:
        assert png == draw(drawings[step]).png
    worker.close()
