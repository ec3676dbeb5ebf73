"""NNEEGCallback inside real Trainer runs: phases, anomalies, stopping, syncs, panels, checkpoints."""

from __future__ import annotations

import json
import math
import os
from typing import List

import numpy as np
import pytest
import torch
from helpers import (
    AtStep,
    CloseSyncCounter,
    MLPModule,
    OpCounter,
    StallAt,
    SyncCounterCallback,
    fast_trainer,
    forward_hook_count,
    nan_output_hook,
    zero_output_hook,
)
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
from nn_neuroimaging_lightning.eeg import StepDetector
from nn_neuroimaging_lightning.phases import Phase
from nn_neuroimaging_lightning.functional import anomalies as FA

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "eeg.yaml")
LAYERS = ["net.0", "net.2", "net.4"]


def _events(eeg: NNEEGCallback, kind: str) -> list:
    return [e for e in eeg.events if e.kind == kind]


# ---------------------------------------------------------------------------------------- phases
def test_phases_from_fit_validate_test_predict_and_idle(tmp_path):
    model = MLPModule(n=96, batch_size=8)  # 12 batches per loop
    eeg = NNEEGCallback(idle_threshold=0.1, state_window=8, min_history=8)
    trainer = fast_trainer(tmp_path, [eeg, StallAt([9], 0.3)], max_epochs=1, num_sanity_val_steps=2)
    trainer.fit(model)
    phases = eeg.phases
    # sanity check (2 batches) comes first, then training with an idle stretch after batch 9
    assert phases[:2] == [Phase.SANITY_CHECK] * 2
    assert phases[2:12] == [Phase.TRAIN] * 10
    n_idle = sum(p is Phase.IDLE for p in phases)
    assert 1 <= n_idle <= eeg.idle_max_samples
    assert phases[12:12 + n_idle] == [Phase.IDLE] * n_idle
    assert phases.count(Phase.TRAIN) == 12 and phases.count(Phase.VALIDATE) == 12
    assert phases[-12:] == [Phase.VALIDATE] * 12
    idle_at = 12
    assert float(eeg.signal("net.0")[idle_at:idle_at + n_idle].abs().sum()) == 0.0
    assert eeg.tracker.durations[Phase.IDLE] >= 0.3
    # complete single-phase windows were learned: training, inference (12 >= 8) and idle ones
    assert eeg._states.label_counts[0] >= 1 and eeg._states.label_counts[1] >= 1 and eeg._states.label_counts[2] >= n_idle // 8
    trainer.test(model, verbose=False)
    assert eeg.phases[-12:] == [Phase.TEST] * 12
    trainer.predict(model)
    assert eeg.phases[-12:] == [Phase.PREDICT] * 12
    assert eeg.layers == LAYERS
    assert len(eeg.signal("net.2")) == len(eeg.phases) == len(eeg.steps)
    assert forward_hook_count(model) == 0


def test_error_phase_and_non_finite_event_from_a_nan(tmp_path):
    model = MLPModule()
    eeg = NNEEGCallback(min_history=8)
    ref: List = [None]
    trainer = fast_trainer(tmp_path, [eeg], max_steps=12)
    ref[0] = trainer
    handle = nan_output_hook(model.net[2], ref, step=9)
    try:
        trainer.fit(model)
    finally:
        handle.remove()
    nf = _events(eeg, "non_finite")
    assert {e.layer for e in nf if e.step == 9} >= {"net.2", "net.4", "<loss>"}
    assert all(e.phase == "error" for e in nf)
    assert min(e.step for e in nf) == 9 and "net.0" not in {e.layer for e in nf}
    phases = eeg.phases
    assert phases[:9] == [Phase.TRAIN] * 9 and phases[9] is Phase.ERROR
    assert phases[9:12] == [Phase.ERROR] * 3  # every non-finite step is an error sample
    assert eeg.flagged_layers >= {"net.2", "net.4"}


# ---------------------------------------------------------------------------------------- anomalies
K = 30  # injection step: after min_history (16) training samples and a baseline refresh


def _scale_weights(layer: str, factor: float):
    def action(pl_module):
        with torch.no_grad():
            pl_module.get_submodule(layer).weight.mul_(factor)
    return action


@pytest.mark.parametrize(
    ("kind", "layer", "stop"),
    [("non_finite", "net.2", False), ("non_finite", "net.2", True),
     ("explosion", "net.2", False), ("explosion", "net.2", True),
     ("collapse", "net.2", False), ("collapse", "net.2", True)],
)
def test_injected_anomaly_detected_at_step_k_for_the_right_layer(tmp_path, kind, layer, stop):
    model = MLPModule(n=8 * 64)
    eeg = NNEEGCallback(stop_on=(kind,) if stop else ())
    ref: List = [None]
    extra = [AtStep(K, _scale_weights(layer, 1e3))] if kind == "explosion" else []
    trainer = fast_trainer(tmp_path, [eeg] + extra, max_steps=K + 8)
    ref[0] = trainer
    handle = None
    if kind == "non_finite":
        handle = nan_output_hook(model.get_submodule(layer), ref, K)
    elif kind == "collapse":
        handle = zero_output_hook(model.get_submodule(layer), ref, K)
    try:
        trainer.fit(model)
    finally:
        if handle is not None:
            handle.remove()
    found = _events(eeg, kind)
    assert found, f"no {kind} event"
    first = min(e.step for e in found)
    assert first == K
    assert layer in {e.layer for e in found if e.step == K}
    assert "net.0" not in {e.layer for e in found if e.step == K}  # upstream of the fault: quiet
    assert not [e for e in eeg.events if e.step < K]  # nothing before the fault
    assert layer in eeg.flagged_layers or any(layer in s for _, s in eeg.flag_history)
    if stop:
        # the stop decision is taken in step K: batch K is the last one (its optimizer step ran)
        assert trainer.global_step == K + 1
        assert eeg._stopped_by == kind
    else:
        assert trainer.global_step == K + 8


def test_step_judgement_equals_functional_robust_zscore():
    eeg = NNEEGCallback(min_history=4)
    torch.manual_seed(0)
    history = torch.rand(3, 20) + 0.5
    history[1, 3] = float("nan")
    x = torch.tensor([0.7, 1000.0, 1e-7])
    neg_med, inv, floor = StepDetector([""] * 3, **eeg._judge_args).baseline(history).coefficients  # the callback's judge
    e = torch.log(x) * inv + neg_med
    _MIN_SCALE = FA.MIN_SCALE

    z = FA.robust_zscore(x, history, min_scale=_MIN_SCALE)
    torch.testing.assert_close(e * eeg.explosion_z, z, rtol=1e-4, atol=1e-5)
    flags, _ = FA.detect(x, history, explosion_threshold=eeg.explosion_z, rel_floor=eeg.collapse_ratio, min_scale=_MIN_SCALE)
    assert ((e > 1) == flags[1]).all() and ((floor / x >= 1) == flags[2]).all()
    assert flags[1].tolist() == [False, True, False] and flags[2].tolist() == [False, False, True]


def test_early_stopping_on_nn_eeg_anomaly_ends_the_run(tmp_path):
    model = MLPModule(n=8 * 40)  # 40 batches per epoch
    eeg = NNEEGCallback()
    stopper = EarlyStopping(monitor="nn_eeg/anomaly", mode="min", divergence_threshold=0.5,
                            check_on_train_epoch_end=True, patience=100)
    ref: List = [None]
    trainer = fast_trainer(tmp_path, [eeg, stopper], max_epochs=5)
    ref[0] = trainer
    handle = zero_output_hook(model.net[2], ref, 60)  # epoch 1, batch 20
    try:
        trainer.fit(model)
    finally:
        handle.remove()
    assert trainer.current_epoch == 2 and trainer.global_step == 80  # stopped after epoch 1, not 5
    assert float(trainer.callback_metrics["nn_eeg/anomaly"]) == 1.0
    assert float(trainer.callback_metrics["nn_eeg/anomaly_score"]) >= 1.0


def test_anomaly_running_max_mode_gives_the_same_epoch_value(tmp_path):
    values = {}
    for every in (True, False):
        model = MLPModule(n=8 * 40)
        eeg = NNEEGCallback(log_anomaly_every_step=every)
        ref: List = [None]
        trainer = fast_trainer(tmp_path, [eeg], max_epochs=1, log_every_n_steps=10)
        ref[0] = trainer
        handle = zero_output_hook(model.net[2], ref, 25)
        try:
            trainer.fit(model)
        finally:
            handle.remove()
        values[every] = {k: float(trainer.callback_metrics[k]) for k in ("nn_eeg/anomaly", "nn_eeg/anomaly_score")}
    assert values[True] == values[False] and values[True]["nn_eeg/anomaly"] == 1.0


@pytest.mark.parametrize("log_every_n_steps", [1, 7])
def test_default_logs_every_step_with_log_every_n_steps_1_and_misses_no_anomaly(tmp_path, log_every_n_steps):
    """Default (running max): with ``log_every_n_steps=1`` the logged curve has every training step;
    with 7 it has every 7th step plus the anomalous step itself, whose value is 1."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = MLPModule(n=8 * 30)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    eeg = NNEEGCallback(panels=False)
    ref: List = [None]
    trainer = fast_trainer(tmp_path, [eeg], logger=logger, max_epochs=1, log_every_n_steps=log_every_n_steps)
    ref[0] = trainer
    handle = zero_output_hook(model.net[2], ref, 20)
    try:
        trainer.fit(model)
    finally:
        handle.remove()
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("nn_eeg/anomaly_step")
    steps = {e.step: e.value for e in events}
    if log_every_n_steps == 1:
        assert sorted(steps) == list(range(30))
    else:
        assert {6, 13, 27} <= set(steps) and len(steps) < 30
    assert steps[20] == 1.0 and max(v for k, v in steps.items() if k < 20) == 0.0


class _Probed(MLPModule):
    """An MLP with a side ``probe`` (its output unused): an anomaly there does not change training."""

    def __init__(self, spike_at: int, **kw):
        super().__init__(**kw)
        self.probe = nn.Linear(32, 8)
        self.spike_at = spike_at
        self.probe.register_forward_hook(self._spike)  # before the callback's tap: the tap sees the spike

    def _spike(self, module, inputs, output):
        if self.training and self.global_step == self.spike_at:
            return output * 1e6  # this one step only
        return None

    def forward(self, x):
        h = self.net[1](self.net[0](x))
        self.probe(h)  # unused
        return self.net[4](self.net[3](self.net[2](h)))


@pytest.mark.parametrize("spike_at", [22, 24, 26, 27])
def test_a_one_step_anomaly_between_logging_steps_reaches_the_logged_curve(tmp_path, spike_at):
    """A flag raised on a step that is not a logging step is logged at the next logging step (the
    running max is not reset by logging the flagged step at once, which Lightning does not write)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _Probed(spike_at=spike_at, n=8 * 30)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    eeg = NNEEGCallback(layers=["net.0", "probe"], panels=False)
    trainer = fast_trainer(tmp_path, [eeg], logger=logger, max_epochs=1, log_every_n_steps=7)
    trainer.fit(model)
    assert {e.step for e in eeg.events} == {spike_at}  # one anomalous step; the logging steps are 6, 13, 20, 27
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    steps = {e.step: e.value for e in acc.Scalars("nn_eeg/anomaly_step")}
    assert steps[20] == 0.0 and steps[27] == 1.0
    assert float(trainer.callback_metrics["nn_eeg/anomaly"]) == 1.0


# ---------------------------------------------------------------------------------------- mode mismatch
class _LeftInTrainMode(MLPModule):
    def on_validation_epoch_start(self):
        self.net[4].train()  # a submodule left in training mode during validation


@pytest.mark.parametrize(("model_cls", "expected"), [(MLPModule, 0), (_LeftInTrainMode, 1)])
def test_state_mismatch_only_when_a_module_is_in_train_mode_during_validation(tmp_path, model_cls, expected):
    model = model_cls(n=64, dropout=0.5)
    eeg = NNEEGCallback()
    trainer = fast_trainer(tmp_path, [eeg], max_epochs=2, num_sanity_val_steps=2)
    trainer.fit(model)
    mismatches = _events(eeg, "state_mismatch")
    if expected:
        assert [e.phase for e in mismatches] == ["sanity_check", "validate", "validate"]  # once per loop
        assert {e.layer for e in mismatches} == {"net.4"}
    else:
        assert mismatches == [] and eeg.events == []


# ---------------------------------------------------------------------------------------- host syncs
def test_zero_host_syncs_in_non_logging_steps(tmp_path):
    model = MLPModule(n=8 * 60)
    eeg = NNEEGCallback(analysis_every_n_steps=1000)
    opener = SyncCounterCallback(first=20, last=50)
    trainer = fast_trainer(tmp_path, [opener, eeg, CloseSyncCounter(opener)], max_epochs=1, log_every_n_steps=1000)
    trainer.fit(model)
    assert len(opener.per_step) == 30
    assert eeg._taps is not None and eeg.state_accuracy is not None
    syncs = [c["_local_scalar_dense"] for c in opener.per_step]
    assert syncs == [0] * 30
    assert eeg._ring.total >= 50  # the taps ran: one sample per training forward


def test_at_most_two_aten_ops_per_tapped_layer_in_the_hook():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    from nn_neuroimaging_lightning.taps import ActivityTaps, select_layers

    taps = ActivityTaps(select_layers(net))
    x = torch.randn(4, 8)
    with torch.no_grad():
        with OpCounter() as plain:
            net(x)
        taps.attach()
        with OpCounter() as tapped:
            net(x)
        taps.detach()
    per_layer = (tapped.total - plain.total) / 2
    assert per_layer == 2  # abs, sum
    net.to(torch.bfloat16)
    xh = x.to(torch.bfloat16)
    taps.attach()
    with torch.no_grad(), OpCounter() as half:
        net(xh)
    taps.detach()
    with torch.no_grad(), OpCounter() as half_plain:
        net(xh)
    assert (half.total - half_plain.total) / 2 == 2  # bf16 too: abs, sum (accumulated in float32)


# ---------------------------------------------------------------------------------------- panels and events file
def test_panels_in_event_files_and_events_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = MLPModule(n=8 * 80)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    eeg = NNEEGCallback(analysis_every_n_steps=40)
    ref: List = [None]
    trainer = fast_trainer(tmp_path, [eeg], logger=logger, max_epochs=1, log_every_n_steps=20)
    ref[0] = trainer
    handle = zero_output_hook(model.net[2], ref, 70)
    try:
        trainer.fit(model)
    finally:
        handle.remove()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "nn_eeg/net.0/band/gamma" in tags["scalars"] and "nn_eeg/anomaly_step" in tags["scalars"]
    gamma = acc.Scalars("nn_eeg/net.0/band/gamma")  # written as one event per analysis, all tags
    assert [e.step for e in gamma] == [e.step for e in acc.Scalars("nn_eeg/net.2/band/delta")] and gamma
    assert all(0.0 <= e.value <= 1.0 for e in gamma)
    assert any(t.startswith("nn_eeg/net.2/spectrum") for t in tags["histograms"])
    assert {"nn_eeg/spectrum", "nn_eeg/phase_timeline"} <= set(tags["images"])
    assert any("spectrogram" in t for t in tags["images"])
    assert any(t.startswith("nn_eeg/events") for t in tags["tensors"])
    layout = acc.Tensors("custom_scalars__config__") if "custom_scalars__config__" in tags["tensors"] else None
    assert layout, "custom scalars layout missing"
    lines = open(os.path.join(logger.log_dir, "events.jsonl"), encoding="utf-8").read().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert parsed and {p["kind"] for p in parsed} == {"collapse"} and parsed[0]["step"] == 70
    assert set(parsed[0]) >= {"step", "phase", "layer", "kind", "value", "source"}
    gamma = eeg.band_power("gamma")
    rel = eeg.band_power("gamma", relative=True)
    assert set(gamma) == set(LAYERS) and all(v >= 0 for v in gamma.values())
    assert all(0.0 <= v <= 1.0 for v in rel.values())
    assert sum(eeg.band_power(b, relative=True)["net.0"] for b in eeg.bands) == pytest.approx(1.0, abs=1e-5)
    assert rel["net.0"] == pytest.approx(eeg.band_powers["net.0"]["gamma"], rel=1e-5)


def test_no_tensorboard_logger_scalars_only(tmp_path):
    eeg = NNEEGCallback(analysis_every_n_steps=35)  # the first window of 64 samples is there at step 70
    trainer = fast_trainer(tmp_path, [eeg], max_steps=70, limit_val_batches=0)
    trainer.fit(MLPModule(n=8 * 70))
    assert eeg._noticed_no_panels
    assert "nn_eeg/net.0/band/delta" in trainer.callback_metrics  # no logger: callback_metrics


def test_band_scalars_reach_a_non_tensorboard_logger(tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    eeg = NNEEGCallback(analysis_every_n_steps=35)
    logger = CSVLogger(str(tmp_path), name="csv")
    trainer = fast_trainer(tmp_path, [eeg], logger=logger, max_steps=70, limit_val_batches=0, log_every_n_steps=35)
    trainer.fit(MLPModule(n=8 * 70))
    assert not eeg._noticed_no_panels  # CSVLogger takes panels (PNG / CSV files in its run directory)
    with open(f"{logger.log_dir}/metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    bands = [r for r in rows if r.get("nn_eeg/net.0/band/delta")]
    assert [int(r["step"]) for r in bands] == [70]
    total = sum(float(bands[0][f"nn_eeg/net.0/band/{b}"]) for b in ("delta", "theta", "alpha", "beta", "gamma"))
    assert total == pytest.approx(1.0, abs=1e-5)  # relative powers of one layer sum to 1


# ---------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_continues_the_signal(tmp_path):
    model = MLPModule(n=8 * 20)
    eeg = NNEEGCallback(state_window=4, min_history=4)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = fast_trainer(tmp_path, [eeg, ckpt], max_epochs=1, enable_checkpointing=True, limit_val_batches=0)
    trainer.fit(model)
    old_signal = eeg.signal("net.2").clone()
    old_hist = eeg._engine.detector.history.view(torch.device("cpu")).clone()
    old_counts = eeg._states.label_counts.copy()
    assert old_counts.sum() >= 4
    eeg2 = NNEEGCallback(state_window=4, min_history=4)
    trainer2 = fast_trainer(tmp_path, [eeg2, ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"))], max_epochs=2,
                            enable_checkpointing=True, limit_val_batches=0)
    trainer2.fit(MLPModule(n=8 * 20), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    new_signal = eeg2.signal("net.2")
    assert len(new_signal) == 40
    torch.testing.assert_close(new_signal[:20], old_signal)
    assert (eeg2._states.label_counts >= old_counts).all() and eeg2._states.label_counts.sum() > old_counts.sum()
    assert eeg2.classifier.count is not None and float(eeg2.classifier.count.sum()) == eeg2._states.label_counts.sum()
    assert eeg2._engine.detector.history.count == min(old_hist.shape[1] + 20, eeg2._engine.detector.history.size)
    assert eeg2.steps[:20].tolist() == list(range(20)) and eeg2.steps[20:].tolist() == list(range(20, 40))


# ---------------------------------------------------------------------------------------- hooks removed
def test_no_hook_left_after_each_entry_point_and_after_an_exception(tmp_path):
    model = MLPModule(n=32)
    eeg = NNEEGCallback()
    trainer = fast_trainer(tmp_path, [eeg], max_epochs=1)
    trainer.fit(model)
    assert forward_hook_count(model) == 0
    for run in (trainer.validate, trainer.test, trainer.predict):
        run(model)
        assert forward_hook_count(model) == 0
    model.fail_at = 2
    with pytest.raises(RuntimeError, match="injected failure"):
        fast_trainer(tmp_path, [eeg], max_epochs=1).fit(model)
    assert forward_hook_count(model) == 0
    exc = _events(eeg, "exception")
    assert len(exc) == 1 and exc[0].phase == "error" and "injected failure" in exc[0].detail
    lines = open(os.path.join(str(tmp_path), "events.jsonl"), encoding="utf-8").read().splitlines()
    assert json.loads(lines[-1])["kind"] == "exception"


def test_boring_model_runs_with_defaults(tmp_path):
    eeg = NNEEGCallback()
    trainer = fast_trainer(tmp_path, [eeg], max_steps=20, limit_val_batches=2)
    trainer.fit(BoringModel())
    assert eeg.layers == ["layer"] and len(eeg.signal("layer")) >= 20
    assert eeg.events == []


# ---------------------------------------------------------------------------------------- bad arguments and config
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"window": 1}, "window"), ({"nperseg": 256}, "nperseg"), ({"nperseg": 8}, "delta"),
     ({"noverlap": 64}, "noverlap"), ({"fs": 0.0}, "fs"), ({"state_window": 2}, "state_window"),
     ({"stop_on": ("nan",)}, "stop_on"), ({"explosion_z": -1.0}, "explosion_z"),
     ({"collapse_ratio": 2.0}, "collapse_ratio"), ({"spectral_shift_threshold": 0.0}, "spectral_shift_threshold"),
     ({"state_confidence": 1.5}, "state_confidence"), ({"min_history": 1}, "min_history"),
     ({"idle_threshold": 0.0}, "idle_threshold"), ({"idle_max_samples": -1}, "idle_max_samples"),
     ({"analysis_every_n_steps": 0}, "analysis_every_n_steps"), ({"output_selector": 3}, "output_selector"),
     ({"max_events": 0}, "max_events"), ({"flag_history": 0}, "flag_history"),
     ({"log_anomaly_every_step": "yes"}, "log_anomaly_every_step"), ({"bands": {"x": (150.0, 160.0)}}, "x")],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        NNEEGCallback(**kwargs)


def test_band_power_unknown_band_and_signal_errors():
    eeg = NNEEGCallback()
    with pytest.raises(ValueError, match="`band`"):
        eeg.band_power("omega")
    assert eeg.band_power("gamma") == {} and eeg.flagged_layers == frozenset()
    with pytest.raises(RuntimeError, match="signal"):
        eeg.signal("x")


def test_from_config_yaml_and_config_is_one_to_one():
    import dataclasses
    import inspect

    from nn_neuroimaging_lightning.config import EEGConfig, python_only

    eeg = NNEEGCallback.from_config(CONFIG)
    assert eeg.stop_on == ("non_finite", "explosion") and eeg.window == 128 and eeg.nperseg == 64
    params = [p for p in inspect.signature(NNEEGCallback.__init__).parameters if p != "self"]
    fields = [f.name for f in dataclasses.fields(EEGConfig)]
    assert sorted(fields + list(python_only(NNEEGCallback))) == sorted(params)
    defaults = {p: v.default for p, v in inspect.signature(NNEEGCallback.__init__).parameters.items() if p != "self"}
    for f in dataclasses.fields(EEGConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert (list(defaults[f.name]) if isinstance(defaults[f.name], tuple) else defaults[f.name]) == default, f.name
    import yaml  # noqa: F401  (pyyaml ships with omegaconf)

    keys = [line.split(":")[0] for line in open(CONFIG, encoding="utf-8") if line[:1].isalpha()]
    assert sorted(keys) == sorted(fields)


def test_module_that_never_fires_is_not_flagged(tmp_path):
    """A tapped module whose weights are used without calling it has no signal: never `collapse`."""
    model = MLPModule(n=8 * 40)
    model.unused = nn.Linear(4, 4)  # a leaf with parameters, never called
    eeg = NNEEGCallback()
    with pytest.warns(UserWarning, match=r"never ran a forward in a whole epoch"):
        fast_trainer(tmp_path, [eeg], max_epochs=2).fit(model)
    assert eeg.silent_layers == ["unused"]
    assert not [e for e in eeg.events if e.layer == "unused"]


def test_events_table_written_when_the_run_stops_before_a_spectrum(tmp_path):
    """A run stopped at step 6 (fewer samples than one Welch segment) still gets its events panel."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = MLPModule(n=8 * 40)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    eeg = NNEEGCallback(stop_on=("non_finite",))
    ref: List = [None]
    trainer = fast_trainer(tmp_path, [eeg], logger=logger, max_epochs=1)
    ref[0] = trainer
    handle = nan_output_hook(model.net[2], ref, 6)
    try:
        trainer.fit(model)
    finally:
        handle.remove()
    assert trainer.global_step == 7 and eeg._ring.count < eeg.nperseg
    acc = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    acc.Reload()
    assert "nn_eeg/events/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("nn_eeg/events/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "non_finite" in text and "net.2" in text


def test_step_score_equals_the_vectorised_form():
    """The CPU per-step score on host floats equals numpy's ``max(max(e, c))`` (independent form)."""
    _step_score = FA.judge_score_host

    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 12))
        x = rng.lognormal(0.0, 2.0, n).astype(np.float32)
        if trial % 5 == 0:
            x[rng.integers(n)] = 0.0
        neg_med = rng.normal(0.0, 1.0, n).astype(np.float32)
        inv = rng.uniform(1e-30, 3.0, n).astype(np.float32)
        floor = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.0, 2.0, n)).astype(np.float32)
        with np.errstate(divide="ignore"):
            # log(x + 1e-12), as the baseline's log-activity (functional.anomalies.judge)
            ref = float(np.max(np.maximum(np.log(x.astype(np.float64) + 1e-12) * inv + neg_med, floor / np.maximum(x, 1e-30))))
        got = _step_score(x.tolist(), neg_med.tolist(), inv.tolist(), floor.tolist())
        assert got == pytest.approx(ref, rel=1e-5, abs=1e-5)
    for bad, expect in ((float("nan"), math.isnan), (float("inf"), math.isinf)):
        assert expect(_step_score([1.0, bad, 2.0], [0.0] * 3, [1.0] * 3, [0.0] * 3))
    assert _step_score([], [], [], []) == 0.0


def test_band_powers_honour_a_tensorboard_logger_prefix(tmp_path):
    """A ``TensorBoardLogger(prefix=...)`` gets the band powers through ``log_metrics``: prefixed tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb", prefix="run")
    trainer = fast_trainer(tmp_path, [NNEEGCallback(analysis_every_n_steps=40)], logger=logger, max_epochs=1, log_every_n_steps=20)
    trainer.fit(MLPModule(n=8 * 80))
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    bands = [t for t in acc.Tags()["scalars"] if "/band/" in t]
    assert bands and all(t.startswith("run-nn_eeg/") for t in bands)


def test_epoch_band_powers_are_the_mean_of_the_epoch_training_windows(tmp_path):
    """``nn_eeg/<layer>/band_epoch/<band>`` at a training epoch's end is the mean of that epoch's analysed
    training windows (``nn_eeg/<layer>/band/<band>``), read back with TensorBoard's own reader; the running
    mean is in the checkpointed state and is reset after it is logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    eeg = NNEEGCallback(analysis_every_n_steps=20)  # nperseg 64: the windows at 20, 40 and 60 are too short
    trainer = fast_trainer(tmp_path, [eeg], logger=logger, max_epochs=2, log_every_n_steps=20, limit_val_batches=0)
    trainer.fit(MLPModule(n=8 * 100))  # 100 batches an epoch: windows at 80, 100 | 120, ..., 200
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    epoch_tags = sorted(t for t in tags if "/band_epoch/" in t)
    assert len(epoch_tags) == len(LAYERS) * len(eeg.bands)
    for tag in epoch_tags:
        points = acc.Scalars(tag.replace("/band_epoch/", "/band/"))
        epoch_values = acc.Scalars(tag)
        assert [e.step for e in epoch_values] == [100, 200]
        for e, (lo, hi) in zip(epoch_values, ((0, 100), (100, 200))):
            window = [p.value for p in points if lo < p.step <= hi]
            assert len(window) == (2 if lo == 0 else 5)
            assert e.value == pytest.approx(float(np.mean(window)), rel=1e-5, abs=1e-7)
    state = eeg.state_dict()["band_epoch"]
    assert int(state["count"]) == 0 and state["sum_power"].shape == (len(LAYERS), len(eeg.bands))


def test_epoch_band_powers_without_a_logger_are_in_callback_metrics(tmp_path):
    eeg = NNEEGCallback(analysis_every_n_steps=20)
    trainer = fast_trainer(tmp_path, [eeg], max_epochs=1, limit_val_batches=0)
    trainer.fit(MLPModule(n=8 * 100))
    got = {k: float(v) for k, v in trainer.callback_metrics.items() if "/band_epoch/" in k}
    assert len(got) == len(LAYERS) * len(eeg.bands)
    per_layer = {}
    for key, value in got.items():
        per_layer[key.split("/band_epoch/")[0]] = per_layer.get(key.split("/band_epoch/")[0], 0.0) + value
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in per_layer.values())  # relative powers: each layer sums to 1


@pytest.mark.parametrize("k", [18, 29])  # right after the first judging baseline, and between refreshes
def test_explosion_in_a_validation_loop_is_flagged_at_its_batch(tmp_path, k):
    """The inference baseline (this loop's earlier samples, refreshed every few) judges each batch."""
    model = MLPModule(n=8 * 40)
    eeg = NNEEGCallback()
    seen = {}

    class ValBatch(Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["idx"] = batch_idx

    class FirstFlag(Callback):  # after the EEG callback: the batch at whose end the events exist
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if "flagged_at" not in seen and any(e.kind == "explosion" for e in eeg.events):
                seen["flagged_at"] = batch_idx

    def blow_up(module, inputs, output):
        if not module.training and seen.get("idx") == k:
            return output * 1e3
        return None

    handle = model.net[2].register_forward_hook(blow_up)
    trainer = fast_trainer(tmp_path, [ValBatch(), eeg, FirstFlag()], max_epochs=1, limit_val_batches=40)
    try:
        trainer.validate(model, model.val_dataloader())
    finally:
        handle.remove()
    assert seen["flagged_at"] == k
    events = [(e.phase, e.layer, e.kind) for e in eeg.events if e.kind in ("explosion", "collapse", "non_finite")]
    assert events[0] == ("validate", "net.2", "explosion")  # and downstream layers, which it feeds
    assert {layer for _, layer, _ in events} <= {"net.2", "net.4"} and len(events) == len(set(events))


@pytest.mark.parametrize("state_window", [16, 32, 64])
def test_queued_windows_never_outlive_the_ring(tmp_path, state_window):
    """Windows wait to be classified together, but never longer than the ring holds them."""
    eeg = NNEEGCallback(window=64, state_window=state_window)
    trainer = fast_trainer(tmp_path, [eeg])
    model = MLPModule(n=256, batch_size=1)
    trainer.validate(model, model.val_dataloader(), verbose=False)
    assert int(eeg._states.label_counts.sum()) == 256 // state_window  # every complete window was learned


def test_a_copied_callback_writes_its_own_buffers(tmp_path):
    """deepcopy/pickle of a used callback: the CPU numpy views are rebuilt on the copy's tensors."""
    import copy
    import pickle

    eeg = NNEEGCallback()
    fast_trainer(tmp_path, [eeg], max_epochs=1).fit(MLPModule(n=8 * 40))
    for clone in (copy.deepcopy(eeg), pickle.loads(pickle.dumps(eeg))):
        for buf in (clone._ring, clone._engine.detector.history):
            assert np.shares_memory(buf._np, buf.values.numpy())
