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
        assert 0.0 <= s["consistency"] <= 1.0
        rho = s["rho"]
        expected = ((0.5 if math.isnan(rho) else (rho + 1) / 2) + s["agreement"] + s["coherence"]) / 3
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
