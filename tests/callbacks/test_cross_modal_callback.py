"""CrossModalCallback inside real Trainer runs: consistency, the joint gate, the missing-callback error."""

import json
import math
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback


class Net(pl.LightningModule):
    """A small MLP: fc1 -> ReLU -> fc2 -> ReLU -> fc3, on 8 features, 3 classes."""

    def __init__(self, kill_fc2_at: int = -1):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 32)
        self.fc2 = torch.nn.Linear(32, 32)
        self.fc3 = torch.nn.Linear(32, 3)
        self.kill_fc2_at = kill_fc2_at

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == self.kill_fc2_at:
            # The whole layer dies (output exactly 0, and ReLU'(0) = 0 keeps it dead).
            with torch.no_grad():
                self.fc2.weight.zero_()
                self.fc2.bias.zero_()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loaders(n_train=1024, n_val=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=16)
    return train, val


def _trainer(tmp_path, callbacks, **kw):
    kw.setdefault("max_epochs", 2)
    return pl.Trainer(
        callbacks=callbacks,
        logger=TensorBoardLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=8,
        **kw,
    )


def _callbacks(**xm):
    return [NNEEGCallback(), NNfMRICallback(grid=(1, 1, 4), zeta_budget=64, probe_size=32, zeta_time_fraction=None), CrossModalCallback(**xm)]


@pytest.mark.parametrize("missing", ["NNEEGCallback", "NNfMRICallback"])
def test_missing_modality_is_named_with_the_line_to_add(tmp_path, missing):
    cbs = [cb for cb in _callbacks() if type(cb).__name__ != missing]
    train, val = _loaders(64, 32)
    with pytest.raises(MisconfigurationException, match=rf"{missing} is not in `trainer.callbacks`. Add {missing}\(\).*CrossModalCallback\(\)\]\)"):
        _trainer(tmp_path, cbs, max_epochs=1).fit(Net(), train, val)


def test_consistency_logged_at_each_zeta_evaluation_and_in_unit_range(tmp_path):
    train, val = _loaders()
    eeg, fmri, xm = _callbacks()
    trainer = _trainer(tmp_path, [eeg, fmri, xm], max_epochs=3)
    trainer.fit(Net(), train, val)
    assert fmri.zeta_evaluations == 3
    assert len(xm.scores) == 3
    for s in xm.scores:
        rho = s["rho"]
        # Issue 13 changed the rule: an undefined term makes consistency NaN (it used to count
        # as the neutral rho' = 0.5).
        if any(math.isnan(s[k]) for k in ("rho", "agreement", "coherence")):
            assert math.isnan(s["consistency"]) and s["undefined"]
            continue
        assert 0.0 <= s["consistency"] <= 1.0 and not s["undefined"]
        expected = ((rho + 1) / 2 + s["agreement"] + s["coherence"]) / 3
        assert s["consistency"] == pytest.approx(expected, abs=1e-6)
        # Layers with both measures, in forward order (zeta may still be missing for some early on).
        assert s["layers"] == [n for n in ["fc1", "fc2", "fc3"] if n in s["layers"]]
    assert xm.scores[-1]["layers"] == ["fc1", "fc2", "fc3"]
    assert xm.consistency == xm.scores[-1]["consistency"]
    # rho is Spearman between the logged gamma powers and max zetas of the last evaluation.
    from scipy.stats import spearmanr

    last = xm.scores[-1]
    ref = spearmanr(last["gamma"], last["zeta_max"]).statistic
    assert (math.isnan(ref) and math.isnan(last["rho"])) or last["rho"] == pytest.approx(ref, abs=1e-9)
    ea = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    scalars = ea.Tags()["scalars"]
    for key in ("consistency", "rho", "agreement", "coherence"):
        assert any(t.startswith(f"cross_modal/{key}") for t in scalars), key
    assert "cross_modal/consistency_history" in ea.Tags()["images"]
    assert any("cross_modal/gamma_vs_zeta" in t for t in ea.Tags()["tensors"])
    assert not xm.events  # a healthy run has no joint anomaly


def test_joint_anomaly_names_the_layer_and_stops_the_run(tmp_path):
    train, val = _loaders()
    kill = 40
    eeg, fmri, xm = _callbacks(stop_on=("joint",))
    trainer = _trainer(tmp_path, [eeg, fmri, xm], max_epochs=5)
    trainer.fit(Net(kill_fc2_at=kill), train, val)
    joint = [e for e in xm.events if e.kind == "joint"]
    assert joint and {e.layer for e in joint} == {"fc2"}
    assert any(e.layer == "fc2" and e.kind == "collapse" for e in eeg.events)
    assert any(e.layer == "fc2" and e.kind == "dead_region" for e in fmri.events)
    assert trainer.should_stop and trainer.global_step < 5 * 64
    assert kill <= joint[0].step <= trainer.global_step
    lines = [json.loads(l) for l in open(os.path.join(trainer.logger.log_dir, "events.jsonl"))]
    assert any(l["kind"] == "joint" and l["layer"] == "fc2" and l["source"] == "cross_modal" for l in lines)


class _CountedLogs(Net):
    """Net that records the global step of every ``log`` call of ``cross_modal/anomaly``."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.anomaly_logs = []

    def log(self, name, value, *args, **kwargs):
        if name == "cross_modal/anomaly":
            self.anomaly_logs.append((self.trainer.global_step, float(value)))
        return super().log(name, value, *args, **kwargs)


def test_joint_flag_logged_on_logging_and_joint_steps_only_and_the_curve_holds_it(tmp_path):
    """``cross_modal/anomaly`` is a running max: ``pl_module.log`` on the trainer's logging steps,
    the epoch's last batch and joint steps, not on every step; the written curve and the epoch
    value have the joint flag."""
    train, val = _loaders()
    eeg, fmri, xm = _callbacks()
    trainer = _trainer(tmp_path, [eeg, fmri, xm], max_epochs=2)
    model = _CountedLogs(kill_fc2_at=40)
    trainer.fit(model, train, val)
    joint = [e for e in xm.events if e.kind == "joint"]
    assert joint
    healthy = [s for s, _ in model.anomaly_logs if s < joint[0].step]
    assert healthy == [s for s in range(joint[0].step) if (s + 1) % 8 == 0]  # log_every_n_steps=8
    assert all(v == 0.0 for s, v in model.anomaly_logs if s < joint[0].step)
    # the first joint step itself (a log call sees trainer.global_step after the batch's update, an event the forward's step)
    assert (joint[0].step + 1, 1.0) in model.anomaly_logs
    ea = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0})
    ea.Reload()
    points = {e.step: e.value for e in ea.Scalars("cross_modal/anomaly_step")}
    assert any(v == 1.0 for s, v in points.items() if s >= joint[0].step)
    assert float(trainer.callback_metrics["cross_modal/anomaly"]) == 1.0  # the last epoch's max


# ---------------------------------------------------------------------------------- undefined is NaN
def _scalars(trainer):
    ea = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea, {t: [e.value for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def _undefined_warnings(caught, what):
    return [str(w.message) for w in caught if "CrossModalCallback" in str(w.message) and f"{what} undefined" in str(w.message)]


def test_rho_over_fewer_than_three_zeta_layers_is_nan_said_once_and_not_logged(tmp_path):
    """Issue 13 item 5: zeta for 2 of 3 layers gave consistency 0.833 from an undefined rho."""
    import warnings

    train, val = _loaders()
    eeg = NNEEGCallback()
    fmri = NNfMRICallback(grid=(1, 1, 4), zeta_budget=64, probe_size=32, zeta_time_fraction=None, zeta_layers=["fc1", "fc2"])
    xm = CrossModalCallback()
    trainer = _trainer(tmp_path, [eeg, fmri, xm], max_epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Net(), train, val)
    assert fmri.zeta_evaluations == 3 and len(xm.scores) == 3
    for s in xm.scores:
        assert s["layers"] == ["fc1", "fc2"]
        assert math.isnan(s["rho"]) and math.isnan(s["consistency"])
        assert s["undefined"]["rho"].startswith("fewer than 3 layers (2 layer(s)")
        assert "rho" in s["undefined"]["consistency"]
        # the other terms are still computed: the windows have both verdicts
        assert 0.0 <= s["agreement"] <= 1.0 and 0.0 <= s["coherence"] <= 1.0
    assert math.isnan(xm.consistency) and math.isnan(xm.components["rho"])
    notices = _undefined_warnings(caught, "`rho`")
    assert len(notices) == 1, notices  # once per cause, not once per evaluation
    assert "fewer than 3 layers" in notices[0] and "fc1, fc2" in notices[0] and "`zeta_layers`" in notices[0]
    ea, scalars = _scalars(trainer)
    # An undefined number is never logged as a value: the keys are absent, not NaN.
    assert not [t for t in scalars if t.startswith(("cross_modal/consistency", "cross_modal/rho"))], sorted(scalars)
    assert "cross_modal/consistency" not in trainer.callback_metrics
    assert len(scalars["cross_modal/agreement"]) == 3 and len(scalars["cross_modal/coherence"]) == 3
    assert scalars["cross_modal/agreement"][-1] == pytest.approx(xm.scores[-1]["agreement"])
    # the table says why, under the layers it compared
    table = ea.Tensors("cross_modal/gamma_vs_zeta/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "fc1" in table and "fc2" in table and "Undefined (NaN, not logged): `rho`: fewer than 3 layers" in table


def test_no_eeg_window_makes_agreement_and_coherence_nan(tmp_path):
    import warnings

    train, val = _loaders()
    eeg = NNEEGCallback(analysis_every_n_steps=10_000)  # no EEG analysis window during the run
    fmri = NNfMRICallback(grid=(1, 1, 4), zeta_budget=64, probe_size=32, zeta_time_fraction=None)
    xm = CrossModalCallback()
    trainer = _trainer(tmp_path, [eeg, fmri, xm], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Net(), train, val)
    assert len(xm.scores) == 2 and not eeg.flag_history
    for s in xm.scores:
        assert math.isnan(s["agreement"]) and math.isnan(s["coherence"]) and math.isnan(s["consistency"])
        assert s["undefined"]["agreement"] == "NN-EEG has no analysis window yet"
        assert s["layers"] == ["fc1", "fc2", "fc3"] and not math.isnan(s["rho"])  # rho has what it needs
    notices = _undefined_warnings(caught, "`agreement` and `coherence`")
    assert len(notices) == 1 and "no analysis window" in notices[0], notices
    _, scalars = _scalars(trainer)
    assert "cross_modal/rho" in scalars and not [t for t in scalars if t.startswith(("cross_modal/agreement", "cross_modal/consistency"))]


class RefNet(pl.LightningModule):
    """The demo's reference CNN (4 tapped layers: conv1, conv2, fc1, fc2) on small 32x32x3 images."""

    def __init__(self):
        super().__init__()
        from nn_neuroimaging_lightning.demo.model import ReferenceCNN

        self.model = ReferenceCNN(num_classes=3)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _image_loaders(n_train=1024, n_val=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, 3, 32, 32, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0.05).long()
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    return train, DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=16)


@pytest.mark.parametrize("zeta_layers", [["model.fc1", "model.fc2"], None], ids=["fc-only", "all-four"])
def test_demo_cnn_consistency_is_nan_with_zeta_on_fc_only_and_defined_with_all_four(tmp_path, zeta_layers):
    """The issue's demo case: 4 tapped layers, zeta maps for `fc` only -> rho and consistency NaN."""
    from scipy.stats import spearmanr

    train, val = _image_loaders()
    eeg = NNEEGCallback()
    fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=32, probe_size=16, zeta_time_fraction=None, zeta_layers=zeta_layers)
    xm = CrossModalCallback()
    trainer = _trainer(tmp_path, [eeg, fmri, xm], max_epochs=2)
    trainer.fit(RefNet(), train, val)
    assert eeg.layers == ["model.conv1", "model.conv2", "model.fc1", "model.fc2"] and len(xm.scores) == 2
    _, scalars = _scalars(trainer)
    last = xm.scores[-1]
    if zeta_layers is not None:
        assert last["layers"] == ["model.fc1", "model.fc2"]
        assert math.isnan(last["rho"]) and math.isnan(last["consistency"]) and math.isnan(xm.consistency)
        assert not [t for t in scalars if t.startswith(("cross_modal/consistency", "cross_modal/rho"))]
        return
    assert last["layers"] == eeg.layers
    for s in xm.scores:
        assert s["rho"] == pytest.approx(spearmanr(s["gamma"], s["zeta_max"]).statistic, abs=1e-6)  # float32 score
        assert s["consistency"] == pytest.approx(((s["rho"] + 1) / 2 + s["agreement"] + s["coherence"]) / 3, abs=1e-6)
    assert scalars["cross_modal/consistency"] == pytest.approx([s["consistency"] for s in xm.scores], abs=1e-6)
    assert xm.consistency == last["consistency"] and 0.0 <= xm.consistency <= 1.0
