"""Shared by the client benchmarks (alarms, overhead_clients, seed_claims): fits of the client zoo.

One place for: building a client's ``Trainer`` the way a user would (TensorBoardLogger in a
temporary directory, no progress bar), the faults the alarms benchmark injects, a callback that
records the step a stop was decided in, and a bootstrap interval of a median (scipy).
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from nn_neuroimaging_lightning.demo.clients import make_client

#: Faults of the alarms benchmark: name -> EEG kinds that count as detecting it.
FAULTS: Dict[str, Tuple[str, ...]] = {
    "nan": ("non_finite",),
    "weights_x1e3": ("explosion", "non_finite"),
    "dead_layer": ("collapse",),
    "lr_x100": ("explosion", "non_finite", "collapse", "spectral_shift"),
    "val_train_mode": ("state_mismatch",),
}
#: Faults whose detection has a target (SPEC §8: >= 99 % within 1 step).
TARGET_FAULTS = ("nan", "weights_x1e3", "dead_layer")


def quiet() -> None:
    """Silence the warnings a benchmark's log should not be made of (Lightning's hints, transformers)."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def module_named(root: nn.Module, name: str) -> nn.Module:
    """The submodule of ``root`` a tapped-layer name refers to (names are the user's, no ``_orig_mod.``)."""
    for n, m in root.named_modules():
        if n.replace("._orig_mod", "").replace("_orig_mod.", "") == name:
            return m
    raise KeyError(f"no module named {name!r} in {type(root).__name__}")


def _replace_first(output: Any, fn) -> Any:
    if isinstance(output, Tensor):
        return fn(output)
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return (fn(output[0]),) + tuple(output[1:])
    return output


class FaultInjector(Callback):
    """Inject one fault at training step ``step`` into the tapped layer ``layer`` (resolved in setup).

    ``nan``: the layer's output is NaN in the forward of that step. ``weights_x1e3``: every floating
    parameter of the layer is multiplied by 1e3 before that step. ``dead_layer``: the layer's output
    is zero (``x * 0``, still in the autograd graph) from that step on (validation included). ``lr_x100``: every optimizer's learning rate is
    multiplied by 100 from that step on. ``val_train_mode``: from that step on, every validation loop
    runs with the model in training mode (dropout and batch norm on).
    """

    def __init__(self, fault: str, step: int, layer: Optional[str] = None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"`fault` must be one of {list(FAULTS)}, got {fault!r}.")
        self.fault, self.step, self.layer = fault, step, layer
        self.injected_at: Optional[int] = None
        self._handle = None
        self._trainer: Optional[Trainer] = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trainer = trainer
        if self.fault in ("nan", "dead_layer"):
            module = module_named(pl_module, self.layer)
            # prepend: the fault replaces the output before any other forward hook (the callbacks' taps,
            # registered earlier in setup) sees it, as a real fault in the layer would
            self._handle = module.register_forward_hook(self._hook, prepend=True)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        t = self._trainer
        if t is None or t.global_step < self.step:
            return None
        if self.fault == "nan":
            if not (t.training and t.global_step == self.step):
                return None
            self.injected_at = self.step
            return _replace_first(output, lambda x: x * float("nan"))
        self.injected_at = self.step if self.injected_at is None else self.injected_at
        # x * 0, not zeros_like: the output stays in the autograd graph (a dead head would otherwise
        # leave a loss without grad_fn, and backward would raise instead of the layer being dead)
        return _replace_first(output, lambda x: x * 0.0)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step or self.injected_at is not None:
            return
        if self.fault == "weights_x1e3":
            with torch.no_grad():
                for p in module_named(pl_module, self.layer).parameters():
                    if p.is_floating_point():
                        p.mul_(1e3)
            self.injected_at = self.step
        elif self.fault == "lr_x100":
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] *= 100.0
            self.injected_at = self.step
        elif self.fault == "val_train_mode":
            self.injected_at = self.step

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.fault == "val_train_mode" and self.injected_at is not None:
            pl_module.train()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class StopRecorder(Callback):
    """The training step in which ``trainer.should_stop`` was first set (the step of that batch)."""

    def __init__(self) -> None:
        self.stop_step: Optional[int] = None
        self._batch_step = 0
        self.steps = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_step = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps += 1
        if trainer.should_stop and self.stop_step is None:
            self.stop_step = self._batch_step


def fit_client(client: str, seed: int, callbacks: Sequence[Callback], *, steps_per_epoch: int, epochs: int,
               trainer_kwargs: Optional[Dict[str, Any]] = None, client_kwargs: Optional[Dict[str, Any]] = None,
               logger: bool = True, max_steps: int = -1) -> Tuple[Trainer, LightningModule, float]:
    """``seed_everything(seed)``, build the client, fit it; returns the trainer, module and fit seconds."""
    seed_everything(seed, workers=True, verbose=False)
    module, train, val = make_client(client, seed=seed, steps_per_epoch=steps_per_epoch, **dict(client_kwargs or {}))
    root = tempfile.mkdtemp(prefix=f"nnl_{client}_")
    kwargs = dict(max_epochs=epochs, max_steps=max_steps, accelerator="cpu", devices=1, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
                  logger=TensorBoardLogger(root, name="run") if logger else False, num_sanity_val_steps=0)
    kwargs.update(trainer_kwargs or {})
    trainer = Trainer(callbacks=list(callbacks), **kwargs)
    t0 = time.perf_counter()
    trainer.fit(module, train, val)
    return trainer, module, time.perf_counter() - t0


def median_ci(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> Tuple[float, float, float]:
    """Median and its percentile-bootstrap interval (``scipy.stats.bootstrap``); NaN interval for < 3 values."""
    from scipy.stats import bootstrap

    arr = np.asarray(values, dtype=float)
    med = float(np.median(arr)) if len(arr) else float("nan")
    if len(arr) < 3 or np.all(arr == arr[0]):
        return med, (med if len(arr) else float("nan")), (med if len(arr) else float("nan"))
    res = bootstrap((arr,), np.median, confidence_level=confidence, n_resamples=2000, method="percentile",
                    random_state=np.random.default_rng(seed))
    return med, float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_sd_range(values: Sequence[float]) -> str:
    """``mean ± sd (min–max)`` of finite values, or ``n/a``."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(arr):
        return "n/a"
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return f"{arr.mean():.3g} ± {sd:.2g} ({arr.min():.3g}–{arr.max():.3g})"


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


__all__ = ["FAULTS", "TARGET_FAULTS", "FaultInjector", "StopRecorder", "fit_client", "mean_sd_range", "median_ci",
           "module_named", "quiet", "set_threads"]


def _list(s: str) -> List[str]:
    return [x for x in s.split(",") if x]
