"""Exact step numbers and the update gate, in real Trainer runs (issue 14 items 1-2).

* Every event carries ``trainer.global_step`` during the forward that produced it, however
  ``training_step`` calls the model (``self(x)``, ``self.model(x)``, ``self.model(**batch)``,
  Lightning's demo ``Transformer``); the stop message names the same step.
* With ``stop_on``, a step whose forward or loss is flagged never reaches the weights: the run ends
  with the parameters and buffers of the last healthy step, with or without ``ModelCheckpoint``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any, Dict, List

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.transformer import Transformer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback

K = 9  # the step the fault is injected at


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: Tensor, labels: Tensor = None) -> Any:
        out = self.fc2(torch.relu(self.bn(self.fc1(x))))
        if labels is None:
            return out
        return {"loss": nn.functional.cross_entropy(out, labels), "logits": out}


class _Dicts(Dataset):
    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Styles(LightningModule):
    """One module, three ways of calling the model in ``training_step``."""

    def __init__(self, style: str, n: int = 160) -> None:
        super().__init__()
        self.style = style
        self.model = _Net()
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.style == "self":
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
        elif self.style == "model":
            x, y = batch
            loss = nn.functional.cross_entropy(self.model(x), y)
        else:  # "kwargs": the Hugging Face idiom
            loss = self.model(**batch)["loss"]
        self.log("train_loss", loss, on_step=True, logger=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = (batch["x"], batch["labels"]) if isinstance(batch, dict) else batch
        self.log("val_loss", nn.functional.cross_entropy(self.model(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def _loader(self) -> DataLoader:
        ds = _Dicts(self.x, self.y) if self.style == "kwargs" else TensorDataset(self.x, self.y)
        return DataLoader(ds, batch_size=8)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


class DemoTransformer(LightningModule):
    """Lightning's demo ``Transformer`` (tiny), called as ``self.model(inputs, target)``."""

    def __init__(self, n: int = 160) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=16, ninp=16, nhead=2, nhid=16, nlayers=1, dropout=0.0)
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, 16, (n, 6), generator=g)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs, target = batch
        return nn.functional.nll_loss(self.model(inputs, target), target.view(-1))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.tokens, self.tokens.roll(1, dims=1)), batch_size=8)


class NaNAt(Callback):
    """The output of ``module`` is NaN in the forward made while ``trainer.global_step == step``."""

    def __init__(self, get_module: Any, step: int) -> None:
        self.get_module, self.step = get_module, step
        self.injected: List[int] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        def hook(mod: nn.Module, inputs: Any, output: Tensor) -> Any:
            if trainer.training and trainer.global_step == self.step:
                self.injected.append(trainer.global_step)
                return output * float("nan")  # keeps the graph: the loss still has a grad_fn
            return None

        self.get_module(pl_module).register_forward_hook(hook)


class Snapshots(Callback):
    """State dict of the module at the start of every training batch (the weights the step starts from)."""

    def __init__(self) -> None:
        self.at: Dict[int, Dict[str, Tensor]] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.at[trainer.global_step] = copy.deepcopy(pl_module.state_dict())


def _trainer(tmp_path: Any, callbacks: List[Callback], **kw: Any) -> Trainer:
    defaults = dict(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, max_epochs=1,
                    limit_val_batches=2, log_every_n_steps=1)
    defaults.update(kw)
    return Trainer(callbacks=callbacks, **defaults)


def _fit(tmp_path: Any, model: LightningModule, callbacks: List[Callback], **kw: Any) -> List[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, callbacks, **kw).fit(model)
    return [str(w.message) for w in caught if "stopped the run" in str(w.message)]


def _rows(tmp_path: Any) -> List[dict]:
    path = os.path.join(str(tmp_path), "events.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


CASES = {
    "self": (lambda: Styles("self"), lambda m: m.model.fc1),
    "model": (lambda: Styles("model"), lambda m: m.model.fc1),
    "kwargs": (lambda: Styles("kwargs"), lambda m: m.model.fc1),
    "demo_transformer": (lambda: DemoTransformer(), lambda m: m.model.decoder),
}


@pytest.mark.parametrize("style", list(CASES))
def test_nan_reported_and_stopped_at_the_injected_step(tmp_path, style):
    make, module = CASES[style]
    model = make()
    eeg = NNEEGCallback(stop_on=("non_finite",), min_history=4)
    nan = NaNAt(module, K)
    stops = _fit(tmp_path, model, [nan, eeg])
    assert nan.injected == [K]
    bad = [e for e in eeg.events if e.kind == "non_finite"]
    assert bad and {e.step for e in bad} == {K}, [(e.step, e.layer) for e in bad]
    assert len(stops) == 1 and f"at step {K}:" in stops[0], stops


@pytest.mark.parametrize("style", ["self", "model"])
def test_all_three_callbacks_date_events_with_the_forward_step(tmp_path, style):
    """Every event of any callback at or after the fault carries a step the run actually had (no K+1)."""
    make, module = CASES[style]
    model = make()
    eeg = NNEEGCallback(stop_on=("non_finite",), min_history=4)
    cbs = [NaNAt(module, K), eeg, NNfMRICallback(), CrossModalCallback()]
    stops = _fit(tmp_path, model, cbs)
    rows = _rows(tmp_path)
    # every event before the stop is dated with its forward's step (no K+1); what Lightning's
    # end-of-run work still finds after the stop (fMRI's evaluation in the last validation, at the
    # global step Lightning logs it at) is marked after_stop, whichever callback it comes from
    assert rows and all(r["step"] <= K for r in rows if not r["after_stop"]), [(r["step"], r["source"], r["kind"]) for r in rows]
    assert all(r["after_stop"] for r in rows if r["step"] > K), [(r["step"], r["source"], r["after_stop"]) for r in rows]
    assert [r["step"] for r in rows if r["kind"] == "non_finite" and not r["after_stop"]] == [K] * 3  # fc1, fc2, <loss>
    assert len(stops) == 1 and f"at step {K}:" in stops[0]


# ---------------------------------------------------------------------------------------- the gate
@pytest.mark.parametrize("style", ["self", "model", "kwargs"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_flagged_step_never_reaches_the_weights(tmp_path, style, checkpoint):
    make, module = CASES[style]
    model = make()
    snaps = Snapshots()
    cbs: List[Callback] = [NaNAt(module, K), snaps, NNEEGCallback(stop_on=("non_finite",), min_history=4)]
    if checkpoint:
        cbs.append(ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True))
    _fit(tmp_path, model, cbs, enable_checkpointing=checkpoint)
    final = model.state_dict()
    healthy = snaps.at[K]  # the weights and buffers step K started from
    assert max(snaps.at) == K  # the run stopped in step K
    for name, value in final.items():
        assert torch.isfinite(value.float()).all(), name
        assert torch.equal(value, healthy[name]), name  # BatchNorm running stats restored too
    rows = [r for r in _rows(tmp_path) if r["kind"] == "non_finite"]
    assert len(rows) == 3 and {r["layer"] for r in rows} == {"model.fc1", "model.fc2", "<loss>"}  # one row per anomaly
    if checkpoint:
        saved = torch.load(str(tmp_path / "ckpt" / "last.ckpt"), weights_only=False)["state_dict"]
        for name, value in saved.items():
            assert torch.equal(value, healthy[name]), name


def test_without_stop_on_the_update_is_the_users(tmp_path):
    """No gate without ``stop_on``: the callback never changes what the model learns."""
    model = Styles("model")
    _fit(tmp_path, model, [NaNAt(lambda m: m.model.fc1, K), NNEEGCallback(min_history=4)], max_steps=K + 1)
    assert not torch.isfinite(model.model.fc1.weight).all()  # the NaN step's update went through
