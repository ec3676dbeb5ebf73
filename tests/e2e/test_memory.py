"""SPEC §6 "Bounded memory": the callbacks' state does not grow with the number of steps.

:func:`state_bytes` walks everything a callback holds (tensors, including those its ``state_dict``
returns, ring buffers, numpy rings, bounded deques and the objects inside them), skipping references
to the trainer, the model and the other callbacks. After 100 and after 1,000 training steps the
totals must be EQUAL, with every bounded deque full by step 100 (small ``max_events``,
``flag_history``, ``zeta_window``; a dead layer produces events every step).
"""

from __future__ import annotations

import types
from collections import deque
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

_SKIP = (nn.Module, Trainer, LightningModule, types.FunctionType, types.MethodType, types.BuiltinFunctionType, type)


def state_bytes(obj: Any, breakdown: Optional[Dict[str, int]] = None) -> int:
    """Bytes held by a callback's state: tensors and arrays by size, containers 8 bytes per slot.

    Strings, numbers and ``None`` count 8 bytes (a reference), so the total depends on how many
    things are held, not on their printed values. torchmetrics metrics count their state tensors.
    Other callbacks, modules, the trainer and functions are references, not state: skipped.
    """
    seen: set = set()

    def walk(x: Any, path: str) -> int:
        if isinstance(x, torch.Tensor):
            key = ("t", x.untyped_storage().data_ptr(), x.dtype, tuple(x.shape)) if x.numel() else ("t", id(x))
            if key in seen:
                return 0
            seen.add(key)
            return x.numel() * x.element_size()
        if isinstance(x, np.ndarray):
            return int(x.nbytes)
        if x is None or isinstance(x, (bool, int, float, str, bytes, np.generic, torch.device, torch.dtype)):
            return 8
        if id(x) in seen:
            return 0
        seen.add(id(x))
        try:
            from torchmetrics import Metric
        except ImportError:  # pragma: no cover
            Metric = ()  # type: ignore[assignment]
        if isinstance(x, Metric):
            return sum(walk(v, f"{path}.{k}") for k, v in x.metric_state.items())
        if isinstance(x, (Callback,) + _SKIP) and path != "":
            return 0
        if isinstance(x, dict):
            return sum(8 + walk(k, path) + walk(v, f"{path}[{k!r}]") for k, v in x.items())
        if isinstance(x, (list, tuple, set, frozenset, deque)):
            return sum(8 + walk(v, f"{path}[]") for v in x)
        if hasattr(x, "__dict__"):
            total = 0
            for k, v in vars(x).items():
                n = walk(v, f"{path}.{k}")
                if breakdown is not None and path == "":
                    breakdown[k] = n
                total += n
            return total
        return 8

    return walk(obj, "")


def unbounded_deques(obj: Any) -> List[str]:
    """Paths of deques without ``maxlen`` reachable from ``obj`` (first level of objects)."""
    out = []
    for k, v in vars(obj).items():
        if isinstance(v, deque) and v.maxlen is None:
            out.append(k)
        elif hasattr(v, "__dict__") and not isinstance(v, _SKIP + (Callback,)):
            out += [f"{k}.{kk}" for kk, vv in vars(v).items() if isinstance(vv, deque) and vv.maxlen is None]
    return out


class _Measure(Callback):
    """Last in the list: records ``state_bytes`` of the monitors after the given global steps."""

    def __init__(self, monitors: List[Callback], at: List[int]) -> None:
        self.monitors, self.at = monitors, at
        self.bytes: Dict[int, List[int]] = {}
        self.parts: Dict[int, List[Dict[str, int]]] = {}
        self.lens: Dict[int, Dict[str, int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step in self.at:
            parts = [{} for _ in self.monitors]
            self.bytes[trainer.global_step] = [state_bytes(cb, p) for cb, p in zip(self.monitors, parts)]
            self.parts[trainer.global_step] = parts
            eeg, fmri, xm = self.monitors
            self.lens[trainer.global_step] = {
                "eeg.events": len(eeg._events), "eeg.flag_history": len(eeg.flag_history), "eeg.ring": eeg._ring.count,
                "fmri.events": len(fmri._events), "fmri.flag_history": len(fmri.flag_history),
                "xm.scores": len(xm.scores), "eeg.segments": len(eeg.tracker.segments),
                "fmri.zeta_window": sum(len(w) for w in fmri._zeta_stats.values()),
            }


def test_state_bytes_are_equal_after_100_and_1000_steps(tmp_path) -> None:
    from helpers import MLPModule, fast_trainer, zero_output_hook

    from nn_neuroimaging_lightning.callbacks.cross_modal import CrossModalCallback
    from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
    from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback

    # idle_threshold 60 s: on a loaded machine a > 0.25 s gap between batches adds an `idle` key to the
    # phase tracker's per-phase totals between the two measurements (440 -> 536 bytes, seen under load
    # 10); that is one bounded key per phase, not growth with steps
    eeg = NNEEGCallback(window=96, state_window=8, min_history=8, analysis_every_n_steps=10, max_events=4, flag_history=4,
                        idle_threshold=60.0)
    fmri = NNfMRICallback(grid=(2, 2, 4), zeta_time_fraction=None, zeta_budget=8, probe_size=8, zeta_window=1,
                          check_every_n_steps=5, max_events=1, flag_history=4)
    xm = CrossModalCallback(history=4, max_events=4)
    # Three deques have fixed capacities with no constructor argument (512 cross-modal scores, one per
    # zeta evaluation; 512 phase-timeline segments; 32 training windows of the cadence reference):
    # shrink them so that they are full by step 100.
    xm.scores = deque(maxlen=1)
    eeg.tracker.segments = deque(maxlen=2)
    eeg._states.cadence_ref = deque(maxlen=2)
    monitors = [eeg, fmri, xm]
    for cb in monitors:
        assert unbounded_deques(cb) == [], f"{type(cb).__name__} holds unbounded deques"

    torch.manual_seed(0)
    model = MLPModule(n=320)  # 40 training steps per epoch, zeta at every validation epoch
    trainer_ref: List[Any] = [None]
    zero_output_hook(model.net[2], trainer_ref, step=20)  # a dead layer: collapse events every step
    measure = _Measure(monitors, at=[100, 1000])
    trainer = fast_trainer(tmp_path, monitors + [measure], max_steps=1000, limit_val_batches=4)
    trainer_ref[0] = trainer
    trainer.fit(model)

    assert trainer.global_step == 1000 and fmri.zeta_evaluations >= 24
    lens_100, lens_1000 = measure.lens[100], measure.lens[1000]
    # bounded deques are full by step 100 and stay full
    assert lens_100 == lens_1000, (lens_100, lens_1000)
    assert lens_100["eeg.events"] == 4 and lens_100["eeg.flag_history"] == 4 and lens_100["eeg.ring"] == 96
    assert lens_100["fmri.events"] == 1 and lens_100["xm.scores"] == 1 and lens_100["fmri.zeta_window"] >= 1
    b100, b1000 = measure.bytes[100], measure.bytes[1000]
    for cb, x, y, p, q in zip(monitors, b100, b1000, measure.parts[100], measure.parts[1000]):
        grew = {k: (p.get(k), q.get(k)) for k in set(p) | set(q) if p.get(k) != q.get(k)}
        assert x == y, f"{type(cb).__name__}: {x} bytes at step 100, {y} at step 1000; changed: {grew}"
    # the measure is not vacuous: the ring buffer alone is 3 layers x 96 float32 samples
    assert b100[0] > 3 * 96 * 4 and b100[1] > 0 and b100[2] > 0
