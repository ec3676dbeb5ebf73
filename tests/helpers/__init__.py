"""Shared test helpers: host-sync and op counters, tiny LightningModules, fault injection."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset


def forward_hook_count(model: nn.Module) -> int:
    """Forward hooks registered anywhere in ``model`` (torch has no public count: tests only)."""
    return sum(len(m._forward_hooks) for m in model.modules())


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside the mode, by overload packet name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def syncs(self) -> int:
        """``aten._local_scalar_dense`` calls: ``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``."""
        return self.ops["_local_scalar_dense"]

    @property
    def total(self) -> int:
        return sum(self.ops.values())


@contextmanager
def count_host_syncs() -> Iterator[OpCounter]:
    """``with count_host_syncs() as c: ...``; then ``c.syncs`` is the number of host syncs."""
    with OpCounter() as counter:
        yield counter


class SyncCounterCallback(Callback):
    """Counts host syncs inside training steps ``first <= batch_idx < last`` (mode entered/exited in hooks).

    Put it FIRST in ``callbacks`` so that the mode covers every other callback's batch hooks.
    """

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.per_step: List[Counter] = []
        self._mode: Optional[OpCounter] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if self.first <= batch_idx < self.last:
            self._mode = OpCounter()
            self._mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        pass

    def close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.per_step.append(self._mode.ops)
            self._mode = None


class CloseSyncCounter(Callback):
    """Put LAST in ``callbacks``: closes the mode opened by :class:`SyncCounterCallback`."""

    def __init__(self, opener: SyncCounterCallback) -> None:
        self.opener = opener

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        self.opener.close()


class MLPModule(LightningModule):
    """Three Linear layers on random data: ``net.0`` → ReLU → ``net.2`` → ReLU → ``net.4``."""

    def __init__(self, n: int = 256, batch_size: int = 8, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        layers: List[nn.Module] = [nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)]
        if dropout:
            layers.insert(4, nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 16, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.batch_size = batch_size
        self.fail_at: Optional[int] = None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("injected failure")
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.validation_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def _loader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()


def fast_trainer(tmp_path: Any, callbacks: List[Callback], logger: Any = False, **kwargs: Any) -> Trainer:
    """A quiet CPU Trainer for callback tests."""
    defaults = dict(
        default_root_dir=str(tmp_path), accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1000,
    )
    defaults.update(kwargs)
    return Trainer(callbacks=callbacks, **defaults)


class AtStep(Callback):
    """Runs ``action(pl_module)`` in ``on_train_batch_start`` when ``trainer.global_step == step``."""

    def __init__(self, step: int, action: Callable[[LightningModule], None]) -> None:
        self.step, self.action = step, action
        self.fired = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if trainer.global_step == self.step and not self.fired:
            self.fired = True
            self.action(pl_module)


def nan_output_hook(module: nn.Module, trainer_ref: List[Trainer], step: int) -> Any:
    """A forward hook on ``module`` that fills its output with NaN at training step ``step`` and after."""

    def hook(mod, inputs, output):  # noqa: ANN001
        trainer = trainer_ref[0]
        if trainer.training and trainer.global_step >= step:
            return torch.full_like(output, float("nan"))
        return None

    return module.register_forward_hook(hook)


def zero_output_hook(module: nn.Module, trainer_ref: List[Trainer], step: int) -> Any:
    """A forward hook that makes ``module`` output zeros from training step ``step`` on (a dead layer)."""

    def hook(mod, inputs, output):  # noqa: ANN001
        trainer = trainer_ref[0]
        if trainer.training and trainer.global_step >= step:
            return output * 0.0
        return None

    return module.register_forward_hook(hook)


class StallAt(Callback):
    """Sleeps ``seconds`` after the training batches whose index is in ``batches`` (an injected stall)."""

    def __init__(self, batches: Any, seconds: float) -> None:
        self.batches, self.seconds = set(batches), seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        if batch_idx in self.batches:
            time.sleep(self.seconds)
