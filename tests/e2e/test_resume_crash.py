"""SPEC §6 "State survives" and "a crash in training still flushes logs": resume and crash, end to end.

Resume: one epoch with the three callbacks and a ``ModelCheckpoint``, then a NEW Trainer with NEW
callbacks resumes from the checkpoint; every piece of state (EEG calibration, baselines, ring buffer,
fMRI density baselines and zeta windows, cross-modal scores) is back, and the resumed signal continues
the saved one. Crash: an exception in ``training_step`` at step k leaves a complete events file, the
error phase, flushed TensorBoard scalars, no hooks, and the caller gets the original exception object.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from helpers import MLPModule, fast_trainer
from nn_neuroimaging_lightning.callbacks.cross_modal import CrossModalCallback
from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback
from nn_neuroimaging_lightning.phases import Phase

N_TRAIN = 512  # 64 training steps of 8 samples per epoch, and 64 validation forwards


def _callbacks() -> List[Callback]:
    # no idle samples: this test counts the ring's samples exactly, and on a loaded machine a stall
    # between two batches (a checkpoint save, another process) is longer than the default 0.25 s
    eeg = NNEEGCallback(analysis_every_n_steps=16, idle_threshold=3600.0)
    fmri = NNfMRICallback(grid=(2, 2, 4), zeta_time_fraction=None, zeta_budget=16, probe_size=16, check_every_n_steps=8)
    return [eeg, fmri, CrossModalCallback()]


def _assert_same(a: Any, b: Any, path: str = "state") -> None:
    """Deep equality of nested state (tensors bitwise, NaN == NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{path}: {type(a)} vs {type(b)}"
        assert a.shape == b.shape and a.dtype == b.dtype, f"{path}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
        assert torch.equal(torch.nan_to_num(a.cpu(), nan=-7.0), torch.nan_to_num(b.cpu(), nan=-7.0)), f"{path} differs"
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: nan vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


class _Snapshot(Callback):
    """First in the list: copies the monitors' state when training starts and after ``after`` batches."""

    def __init__(self, monitors: List[Callback], after: int) -> None:
        self.monitors, self.after = monitors, after
        self.at_start: Dict[str, Any] = {}
        self.later: Dict[str, Any] = {}

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        eeg, fmri, xm = self.monitors
        self.at_start = {
            "states": [copy.deepcopy(cb.state_dict()) for cb in self.monitors],  # state_dict may hold live tensors
            "signal": {n: eeg.signal(n).clone() for n in eeg.layers},
            "steps": eeg.steps.copy(),
            "density": {k: v.clone() for k, v in fmri.density.items()},
            "zeta": {k: v.scores.clone() for k, v in fmri.zeta.items()},
            "consistency": xm.consistency,
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        eeg = self.monitors[0]
        if batch_idx == self.after - 1:
            self.later = {"signal": {n: eeg.signal(n).clone() for n in eeg.layers}, "steps": eeg.steps.copy(),
                          "phases": list(eeg.phases)}


def test_resume_restores_every_state_and_the_signal_continues(tmp_path) -> None:
    torch.manual_seed(0)
    ckpt_dir = tmp_path / "ckpt"
    first = _callbacks()
    ckpt = ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True)
    model = MLPModule(n=N_TRAIN)
    fast_trainer(tmp_path, first + [ckpt], max_epochs=1, enable_checkpointing=True).fit(model)
    eeg1, fmri1, xm1 = first
    # Sanity of the first run: the things we want restored exist.
    assert eeg1.layers == ["net.0", "net.2", "net.4"]
    assert eeg1._ring.count == 128 and eeg1._ring.total == 128  # 64 train + 64 validation forwards
    assert eeg1.classifier.state_dict()["count"].sum() > 0, "the state classifier saw no window"
    assert fmri1.zeta and fmri1.density and fmri1.zeta_evaluations == 1
    assert any(b is not None for b in fmri1._base), "no fMRI density baseline after one epoch"
    assert len(xm1.scores) == 1 and xm1.consistency is not None and 0.0 <= xm1.consistency <= 1.0

    path = ckpt_dir / "last.ckpt"
    saved = torch.load(path, weights_only=False)["callbacks"]
    by_key = {cb.state_key: saved[cb.state_key] for cb in first}
    # The checkpoint holds exactly what the live callbacks held at the end of the run.
    for cb in first:
        assert cb.state_key in saved, f"{type(cb).__name__} state missing from the checkpoint"
    _assert_same(by_key[eeg1.state_key]["ring"]["values"], eeg1._ring.state_dict()["values"], "saved ring")
    _assert_same(by_key[eeg1.state_key]["classifier"], eeg1.classifier.state_dict(), "saved classifier")

    # A new Trainer and new callbacks resume.
    second = _callbacks()
    snap = _Snapshot(second, after=6)
    model2 = MLPModule(n=N_TRAIN)
    trainer2 = fast_trainer(tmp_path, [snap] + second + [ModelCheckpoint(dirpath=str(ckpt_dir))], max_epochs=2,
                            enable_checkpointing=True)
    trainer2.fit(model2, ckpt_path=str(path))
    eeg2, fmri2, xm2 = second

    # 1. Right after the restore, every callback's state equals the saved state.
    for cb, state in zip(second, snap.at_start["states"]):
        _assert_same(state, by_key[cb.state_key], type(cb).__name__)
    # ... and the public views agree with the first run's.
    for name in eeg1.layers:
        _assert_same(snap.at_start["signal"][name], eeg1.signal(name), f"signal {name}")
    np.testing.assert_array_equal(snap.at_start["steps"], eeg1.steps)
    assert set(snap.at_start["density"]) == set(fmri1.density)
    for k, v in fmri1.density.items():
        _assert_same(snap.at_start["density"][k], v, f"density {k}")
    assert set(snap.at_start["zeta"]) == set(fmri1.zeta)
    for k, v in fmri1.zeta.items():
        _assert_same(snap.at_start["zeta"][k], v.scores, f"zeta {k}")
    assert snap.at_start["consistency"] == xm1.consistency

    # 2. The resumed signal continues the saved one: the oldest samples after 6 new forwards are the
    #    saved ones shifted by 6, the newest 6 are training samples of steps 64..69.
    k = 6
    saved_steps = eeg1.steps
    for name in eeg1.layers:
        old, new = eeg1.signal(name), snap.later["signal"][name]
        assert new.shape == old.shape == (128,)
        _assert_same(new[: 128 - k], old[k:], f"continued signal {name}")
        assert torch.isfinite(new[-k:]).all() and (new[-k:] > 0).all()
    steps = snap.later["steps"]
    np.testing.assert_array_equal(steps[: 128 - k], saved_steps[k:])
    np.testing.assert_array_equal(steps[-k:], np.arange(64, 64 + k))
    assert np.all(np.diff(steps) >= 0), "global steps must not go back after a resume"
    assert snap.later["phases"][-k:] == [Phase.TRAIN] * k

    # 3. The resumed run went on from there: a second zeta evaluation, a second score.
    assert trainer2.global_step == 128
    assert fmri2.zeta_evaluations == 2
    assert len(xm2.scores) == 2 and xm2.scores[0]["step"] == xm1.scores[0]["step"]
    assert eeg2._ring.total == 128 + 128
    assert eeg2.classifier.state_dict()["count"].sum() > eeg1.classifier.state_dict()["count"].sum()


class _Boom(RuntimeError):
    pass


class _FailingModule(MLPModule):
    def __init__(self, fail_at: int) -> None:
        super().__init__(n=512)
        self.fail_at_step = fail_at
        self.raised: BaseException | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.fail_at_step:
            self.raised = _Boom(f"injected failure at step {self.global_step}")
            raise self.raised
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss, on_step=True)
        return loss


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_forward_hooks_with_kwargs", {})) for m in model.modules())


def test_crash_flushes_events_and_tensorboard_removes_hooks_and_reraises(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    k = 20
    model = _FailingModule(fail_at=k)
    assert _hook_count(model) == 0
    eeg, fmri, xm = _callbacks()
    logger = TensorBoardLogger(str(tmp_path), name="crash", version=0)
    trainer = fast_trainer(tmp_path, [eeg, fmri, xm], logger=logger, max_epochs=2, log_every_n_steps=1)

    with pytest.raises(_Boom) as info:
        trainer.fit(model)
    # The ORIGINAL exception object reaches the caller, unchanged.
    assert info.value is model.raised
    assert type(info.value) is _Boom and str(info.value) == f"injected failure at step {k}"

    # No hook of ours is left on the model (forward, pre-forward, backward).
    assert _hook_count(model) == 0

    # events.jsonl: complete (every line parses), ends with the exception event.
    log_dir = tmp_path / "crash" / "version_0"
    lines = (log_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    assert events and all(line.endswith("}") for line in lines)
    exceptions = [e for e in events if e["kind"] == "exception"]
    assert len(exceptions) == 1
    exc = exceptions[0]
    assert exc["phase"] == "error" and exc["step"] == k and exc["source"] == "nn_eeg"
    assert exc["detail"] == f"_Boom: injected failure at step {k}"
    assert exc["value"] == "nan"
    assert events[-1] == exc
    assert eeg.events[-1].kind == "exception" and eeg.events[-1].phase == "error"

    # The error phase is recorded in the phase tracker.
    assert eeg.tracker.current is Phase.ERROR
    assert eeg.tracker.transitions.get(("train", "error"), 0) == 1
    assert eeg.tracker.segments[-1][0] == "error"
    assert "error" in eeg.tracker.summary() and eeg.tracker.summary()["train"] > 0

    # TensorBoard files are flushed: scalars of every completed step 0..k-1 are readable.
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "nn_eeg/anomaly_step" in tags and "train_loss" in tags
    for tag in ("nn_eeg/anomaly_step", "train_loss"):
        steps = [s.step for s in acc.Scalars(tag)]
        assert steps == list(range(k)), f"{tag}: {steps}"
    assert all(s.value == 0.0 for s in acc.Scalars("nn_eeg/anomaly_step"))
