"""SPEC §6 "No observer effect": losses, weights and buffers are bitwise equal with and without the callbacks.

A small CNN with batch-norm and dropout trains for 3 epochs with validation on a shuffled loader
(so the global RNG drives the batch order, dropout masks and the per-epoch sampler seed). The
same run is repeated with NNEEGCallback, NNfMRICallback (zeta and tractography at every
validation epoch) and CrossModalCallback attached, with a TensorBoardLogger so that the panels
are written too; every per-step training loss and every final parameter and buffer must be
``torch.equal`` to the run without callbacks.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest
import torch
from lightning.pytorch import LightningModule, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import fast_trainer
from nn_neuroimaging_lightning.callbacks.cross_modal import CrossModalCallback
from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback

SEED = 1234
EPOCHS = 3


class BNDropoutCNN(LightningModule):
    """conv(3→8) → BN → ReLU → conv(8→8) → BN → ReLU → pool → dropout → linear(8·4·4→4)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4),
        )
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(192, 3, 8, 8, generator=g)  # (N, C, H, W)
        self.y = torch.randint(0, 4, (192,), generator=g)
        self.losses: List[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(loss.detach().clone())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:128], self.y[:128]), batch_size=4, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[128:], self.y[128:]), batch_size=16)


def _run(tmp_path: Any, callbacks: List[Any]) -> Tuple[BNDropoutCNN, Any]:
    seed_everything(SEED, workers=True)
    module = BNDropoutCNN()
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = fast_trainer(tmp_path, callbacks, logger=logger, max_epochs=EPOCHS, log_every_n_steps=8)
    trainer.fit(module)
    return module, trainer


def _state(module: LightningModule) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k not in ("x", "y")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Tuple[List[Tensor], Dict[str, Tensor]]:
    module, trainer = _run(tmp_path_factory.mktemp("bare"), [])
    assert trainer.global_step == EPOCHS * 32
    return module.losses, _state(module)


def _callbacks(mode: str) -> Tuple[List[Any], NNEEGCallback, NNfMRICallback]:
    # window/nperseg keep the defaults: 96 training steps + 48 validation forwards fill a window
    eeg_kw: Dict[str, Any] = dict(analysis_every_n_steps=8)
    fmri_kw: Dict[str, Any] = dict(check_every_n_steps=8, probe_size=8)
    if mode == "fixed":
        fmri_kw.update(zeta_time_fraction=None, zeta_budget=16, grid=(2, 2, 2))
    elif mode == "stop_on":
        fmri_kw.update(zeta_time_fraction=None, zeta_budget=16, grid=(2, 2, 2), stop_on=("dead_region",))
        eeg_kw.update(stop_on=("non_finite", "explosion"))
    eeg, fmri = NNEEGCallback(**eeg_kw), NNfMRICallback(**fmri_kw)
    cross = CrossModalCallback(stop_on=("joint",) if mode == "stop_on" else ())
    return [eeg, fmri, cross], eeg, fmri


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("mode",), [("fixed",), ("time",), ("stop_on",)])
def test_losses_weights_and_buffers_bitwise_equal(tmp_path: Any, reference: Tuple[List[Tensor], Dict[str, Tensor]], mode: str) -> None:
    ref_losses, ref_state = reference
    callbacks, eeg, fmri = _callbacks(mode)
    module, trainer = _run(tmp_path, callbacks)

    # the observers really observed: signal, zeta at every validation epoch, tractography
    assert trainer.global_step == EPOCHS * 32 and not trainer.should_stop
    assert eeg._ring is not None and eeg._ring.total >= EPOCHS * (32 + 4)
    assert fmri.zeta_evaluations == EPOCHS
    if mode != "time":  # the fixed budget surely draws samples for every layer
        assert set(fmri.zeta) == set(fmri.zeta_layers) and len(fmri.zeta) == 3
        assert fmri.tracts, "tractography did not run"
    if mode == "stop_on":
        assert not [e for e in eeg.events + fmri.events if e.kind in ("non_finite", "explosion", "dead_region")]

    assert len(module.losses) == len(ref_losses) == EPOCHS * 32
    for i, (a, b) in enumerate(zip(module.losses, ref_losses)):
        assert torch.equal(a, b), f"training loss {i} differs: {a.item()!r} vs {b.item()!r}"
    state = _state(module)
    assert state.keys() == ref_state.keys()
    assert any("running_mean" in k for k in state) and any("num_batches_tracked" in k for k in state)
    for key, ref in ref_state.items():
        assert torch.equal(state[key], ref), f"final `{key}` differs with the callbacks attached"
