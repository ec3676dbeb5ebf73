"""NN-EEG recording engine pieces (plain PyTorch, no Lightning): the training-sample history.

:class:`TrainingHistory` is the explosion/collapse baseline of :class:`~nn_neuroimaging_lightning.NNEEGCallback`
(training samples only, so validation loops do not flush it). The taps and the ring buffer are
:class:`~nn_neuroimaging_lightning.taps.ActivityTaps` and :class:`~nn_neuroimaging_lightning.taps.RingBuffer`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from nn_neuroimaging_lightning.taps import NumpyViewState

__all__ = ["TrainingHistory"]


class TrainingHistory(NumpyViewState):
    """A small ``(layers, n)`` ring of training samples: the explosion/collapse baseline.

    Order does not matter to medians, so no re-ordering is ever done. On CPU a sample is written
    through a numpy view of the tensor (no aten dispatch); elsewhere with one ``copy_``.
    """

    def __init__(self, rows: int, size: int) -> None:
        self.rows, self.size = rows, size
        self.values: Optional[Tensor] = None  # (rows, size)
        self._np: Optional[np.ndarray] = None
        self.pos = 0
        self.count = 0

    def push(self, x: Tensor, host: Optional[np.ndarray]) -> None:
        if self.values is None or self.values.device != x.device:
            with torch.inference_mode(False):  # writable by later training steps (see RingBuffer)
                old = None if self.values is None else self.values.to(x.device)
                self.values = torch.zeros(self.rows, self.size, dtype=torch.float32, device=x.device)
                if old is not None:
                    self.values.copy_(old)
            self._np = self.values.numpy() if x.device.type == "cpu" else None
        if self._np is not None and host is not None:
            self._np[:, self.pos] = host
        else:
            self.values[:, self.pos].copy_(x)
        self.pos = (self.pos + 1) % self.size
        self.count = min(self.count + 1, self.size)

    def view(self, device: torch.device) -> Tensor:
        """The held samples ``(rows, count)`` (any order)."""
        if self.values is None:
            return torch.zeros(self.rows, 0, device=device)
        return self.values if self.count == self.size else self.values[:, : self.count]

    def state_dict(self) -> Dict[str, Any]:
        values = torch.zeros(self.rows, self.size) if self.values is None else self.values.detach().cpu().clone()
        return {"values": values, "pos": self.pos, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = state["values"]
        if tuple(values.shape) != (self.rows, self.size):
            return  # another configuration: start a fresh baseline
        self.values = values.clone().float()
        self._np = self.values.numpy()
        self.pos, self.count = int(state.get("pos", 0)) % self.size, int(state.get("count", 0))
