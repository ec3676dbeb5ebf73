"""Plumbing shared by the three callbacks: anomaly events, the events file, logger lookup, logging."""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Deque, Dict, Iterable, List, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

EVENTS_FILENAME = "events.jsonl"


@dataclass
class AnomalyEvent:
    """One anomaly: what happened, where and when.

    Attributes:
        step: ``trainer.global_step`` when it was detected.
        phase: the lifecycle phase of the sample (``train``, ``validate``, ...).
        layer: the tapped module's name (``"<loss>"``/``"<model>"`` for whole-model events).
        kind: ``non_finite``, ``explosion``, ``collapse``, ``spectral_shift``, ``state_mismatch``,
            ``exception``, ``dead_region``, ``saturated_region``, ``zeta_concentration``, ``joint``.
        value: the measure that crossed its threshold (z-score, distance, ...).
        source: ``nn_eeg``, ``nn_fmri`` or ``cross_modal``.
        detail: free text (e.g. the exception message).
    """

    step: int
    phase: str
    layer: str
    kind: str
    value: float
    source: str = "nn_eeg"
    detail: str = ""
    time: float = field(default_factory=time.time)

    def to_json(self) -> str:
        d = asdict(self)
        if not math.isfinite(d["value"]):
            d["value"] = str(d["value"])  # JSON has no NaN/Infinity literals
        return json.dumps(d, sort_keys=True)


def log_dir(trainer: Trainer) -> str:
    """The directory of the run: the first logger's ``log_dir`` or the trainer's root dir."""
    for logger in trainer.loggers:
        path = getattr(logger, "log_dir", None)
        if path:
            return str(path)
    return str(trainer.default_root_dir)


def append_events(directory: str, events: Iterable[AnomalyEvent]) -> Optional[str]:
    """Append events to ``<directory>/events.jsonl`` (one JSON object per line) and flush."""
    events = list(events)
    if not events:
        return None
    os.makedirs(directory, exist_ok=True)
    # The file name is fixed; user-controlled strings (module names) only go inside the JSON.
    path = os.path.join(os.path.realpath(directory), EVENTS_FILENAME)
    with open(path, "a", encoding="utf-8") as fh:
        for event in events:
            fh.write(event.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


class MonitorCallback(Callback):
    """Base of the three callbacks: bounded event list, events file, TensorBoard lookup, logging."""

    source = "nn_monitor"

    def __init__(self, max_events: int = 1000) -> None:
        super().__init__()
        self._events: Deque[AnomalyEvent] = deque(maxlen=max_events)
        self._noticed_no_tensorboard = False
        self._log_dir: Optional[str] = None
        self._is_global_zero = True

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "MonitorCallback":
        """Build the callback from a YAML file, a mapping or a DictConfig.

        Keys map one-to-one to the constructor's keyword arguments (see
        :mod:`nn_neuroimaging_lightning.config`); ``overrides`` win, e.g. callables.
        """
        from nn_neuroimaging_lightning import config as C

        return C.build(cls, config, **overrides)

    @property
    def events(self) -> List[AnomalyEvent]:
        """The most recent anomaly events (bounded by ``max_events``), oldest first."""
        return list(self._events)

    def _remember_trainer(self, trainer: Trainer) -> None:
        self._log_dir = log_dir(trainer)
        self._is_global_zero = trainer.is_global_zero

    def _record(self, events: List[AnomalyEvent]) -> None:
        """Keep the events and append them to the events file (global rank zero only)."""
        if not events:
            return
        self._events.extend(events)
        if self._is_global_zero and self._log_dir is not None:
            append_events(self._log_dir, events)

    def _tensorboard(self, trainer: Trainer) -> Optional[Any]:
        """The ``SummaryWriter`` of the first ``TensorBoardLogger`` on rank zero, else ``None``."""
        if not trainer.is_global_zero:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        if not self._noticed_no_tensorboard:
            self._noticed_no_tensorboard = True
            rank_zero_info(
                f"{type(self).__name__}: no TensorBoardLogger in `trainer.loggers`; logging scalars only, "
                "skipping the rich panels (spectra, heatmaps, timelines)."
            )
        return None

    @staticmethod
    def _log(pl_module: LightningModule, name: str, value: Any, **kwargs: Any) -> None:
        """``pl_module.log`` with the defaults our scalars need (one value per step, batch size 1).

        Under DDP nothing is synced (``sync_dist`` stays False unless a caller sets it): a synced
        log is a collective that every rank must make with the same names at the same point, and
        which names a rank logs can depend on what it saw (an undefined ``rho`` after a NaN on one
        rank, a state accuracy not computed yet). A mismatched collective hangs or aborts the run
        (a version that synced epoch-only scalars had a rank abort once in CI, in the DDP NaN
        test; not reproduced in 14 reruns, and this is the likely cause). The values
        that must agree are made equal before logging instead (zeta permutations are merged across
        ranks, the stop decision is reduced), the rest are the rank's own, and only rank 0's
        logger writes.
        """
        kwargs.setdefault("on_step", True)
        kwargs.setdefault("on_epoch", False)
        kwargs.setdefault("batch_size", 1)
        kwargs.setdefault("add_dataloader_idx", False)
        if isinstance(value, torch.Tensor) and value.dtype not in (torch.float32, torch.float64):
            value = value.float()
        pl_module.log(name, value, **kwargs)

    @staticmethod
    def _reduce_decision(trainer: Trainer, decision: bool) -> bool:
        """True on every rank if any rank decided True (a collective: call it on all ranks)."""
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(decision, all=False))
        return decision

    def state_dict(self) -> Dict[str, Any]:
        return {"events": [asdict(e) for e in self._events]}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the events; the rest of the state when the layers are known, else in ``setup``.

        Lightning restores callback state before ``setup`` when resuming, while the layers (and so
        the buffers the state fills) are only known in ``setup``: a subclass with layer-bound
        state implements ``_apply_state`` and ``_layers_ready`` and calls
        :meth:`_apply_pending_state` once its buffers exist.
        """
        self._events.clear()
        for e in state_dict.get("events", []):
            self._events.append(AnomalyEvent(**e))
        if type(self)._apply_state is MonitorCallback._apply_state:
            return
        if self._layers_ready():
            self._apply_state(state_dict)
        else:
            self._pending_state = dict(state_dict)

    def _layers_ready(self) -> bool:
        """Whether the layer-bound buffers exist (the state can be applied now)."""
        return True

    def _apply_state(self, state: Dict[str, Any]) -> None:
        """Restore the layer-bound state (subclasses)."""

    def _apply_pending_state(self) -> None:
        """Apply a state loaded before ``setup`` (call once the buffers exist)."""
        pending, self._pending_state = getattr(self, "_pending_state", None), None
        if pending is not None:
            self._apply_state(pending)

