"""NN-EEG recording engine (plain PyTorch, no Lightning): the sample stream and the training-sample history.

:class:`SampleRecorder` writes the samples of :class:`~nn_neuroimaging_lightning.taps.ActivityTaps` into a
:class:`~nn_neuroimaging_lightning.taps.RingBuffer` (with idle gaps and error relabelling);
:class:`TrainingHistory` is the explosion/collapse baseline of :class:`~nn_neuroimaging_lightning.NNEEGCallback`
(training samples only, so validation loops do not flush it).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from nn_neuroimaging_lightning.eeg.states import PHASE_TO_STATE
from nn_neuroimaging_lightning.functional import states as FST
from nn_neuroimaging_lightning.phases import Phase
from nn_neuroimaging_lightning.taps import NumpyViewState, RingBuffer

__all__ = ["SampleRecorder", "TrainingHistory"]


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


class SampleRecorder:
    """The sample stream of the tapped layers: a ring buffer, runs of one phase, idle gaps and error relabelling.

    One ``(layers,)`` sample per model forward goes into a :class:`~nn_neuroimaging_lightning.taps.RingBuffer`
    with its phase, step and time, and is time-stamped for the state windows; each complete run of
    ``state_window`` samples of one phase is queued on ``states``
    (:class:`~nn_neuroimaging_lightning.eeg.states.StateWindows`). A gap between batches longer than
    ``idle_threshold`` seconds becomes zero-activity ``idle`` samples, one per typical batch interval (at
    most ``idle_max_samples``); a non-finite sample is relabelled ``error``, and runs of them make error windows.

    Args:
        rows: layers.
        window: ring length (samples).
        states: the state-window engine the completed windows go to.
        idle_threshold: seconds between batches after which the gap is idle time.
        idle_max_samples: idle samples written for one gap, at most.

    Example::

        >>> from nn_neuroimaging_lightning.eeg.states import StateWindows
        >>> states = StateWindows(window=32, state_window=4, fs=100.0, nperseg=4, bands={"all": (0.0, 50.0)})
        >>> rec = SampleRecorder(2, 32, states, idle_threshold=0.25, idle_max_samples=8)
        >>> for t in range(8):
        ...     rec.push(torch.ones(2), Phase.TRAIN, t)
        >>> rec.ring.count, len(states.pending)
        (8, 2)
    """

    def __init__(self, rows: int, window: int, states: Any, idle_threshold: float, idle_max_samples: int) -> None:
        self.ring = RingBuffer(rows, window)
        self.states = states
        self.state_window = states.state_window
        self.idle_threshold, self.idle_max_samples = idle_threshold, idle_max_samples
        self.latest: Optional[Tensor] = None  # (rows,) newest forward's sample
        self.latest_step = 0  # the step whose forward made it
        self.fresh = False  # a sample arrived since the last judgement
        self.val_samples = 0  # validation samples since the caller last reset it
        self.run_code, self.run_len = -1, 0  # phase code and length of the current contiguous run of samples
        self._error_run, self._last_error_total = 0, -1  # consecutive non-finite samples
        self._last_batch_end: Optional[float] = None
        self._interval_ema: Optional[float] = None

    @property
    def run(self) -> Tuple[int, int]:
        """The current run's identity: its phase code and the ring total at its start."""
        return self.run_code, self.ring.total - self.run_len

    def push(self, sample: Tensor, phase: Phase, step: int, wall_time: Optional[float] = None) -> None:
        """Write one sample; a complete window of ``state_window`` samples of one phase is queued for states."""
        self.ring.push(sample, phase.code, step, wall_time)
        if phase is Phase.VALIDATE:
            self.val_samples += 1
        self.states.stamp(self.ring)
        if phase.code != self.run_code:
            self.run_code, self.run_len = phase.code, 0
        self.run_len += 1
        if self.run_len % self.state_window == 0:
            self.states.queue(self.ring.total, int(PHASE_TO_STATE[phase]))

    def commit(self, sample: Tensor, phase: Phase, step: int) -> None:
        """A forward's sample: written, and the newest to judge."""
        self.latest_step = step
        self.push(sample, phase, step)
        self.latest, self.fresh = sample, True

    def mark_error(self, total: int) -> None:
        """The ``total``-th sample was non-finite: relabelled ``error``; consecutive ones make error windows."""
        self.ring.relabel(self.ring.total - total, Phase.ERROR.code)
        self._error_run = self._error_run + 1 if self._last_error_total == total - 1 else 1
        self._last_error_total = total
        if self._error_run % self.state_window == 0:
            self.states.queue(total, int(FST.OperationalState.ERROR))

    def batch_start(self, now: float, step: int) -> None:
        """A batch starts at ``now`` (``time.perf_counter()``): a long gap since the last one is written as idle."""
        if self._last_batch_end is None or self.ring.values is None or not self.idle_max_samples:
            return
        gap = now - self._last_batch_end
        if gap <= self.idle_threshold:
            return
        # a silent stretch: zero activity, phase `idle`, one sample per typical step interval
        interval = self._interval_ema or self.idle_threshold
        n = int(min(self.idle_max_samples, max(1, round(gap / max(interval, 1e-6)))))
        zeros = torch.zeros(self.ring.rows, device=self.ring.values.device)
        t_end = time.time()
        for k in range(n):
            self.push(zeros, Phase.IDLE, step, t_end - gap + (k + 1) * gap / n)

    def batch_end(self, now: float) -> None:
        """A batch ended at ``now``: the typical interval between batches (EMA of the non-idle ones)."""
        if self._last_batch_end is not None:
            interval = now - self._last_batch_end
            if interval < self.idle_threshold:
                self._interval_ema = interval if self._interval_ema is None else 0.9 * self._interval_ema + 0.1 * interval
        self._last_batch_end = now

    def state_dict(self) -> Dict[str, Any]:
        return {"ring": self.ring.state_dict(), "run": (self.run_code, self.run_len)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("ring") is not None:
            self.ring.load_state_dict(state["ring"])
            self.latest = self.ring.ordered(1)[:, 0].clone() if self.ring.count else None
        run_code, run_len = state.get("run", (-1, 0))
        self.run_code, self.run_len = int(run_code), int(run_len)
