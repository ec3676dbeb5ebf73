"""Lifecycle phases: which Lightning loop ran a forward, and where the wall-clock time went."""

from __future__ import annotations

import time
from collections import deque
from enum import Enum
from typing import Deque, Dict, List, Optional, Tuple


class Phase(str, Enum):
    """The label of a sample or a stretch of wall-clock time.

    ``train``, ``validate``, ``test``, ``predict`` and ``sanity_check`` are the Lightning loop that
    ran the forward; ``idle`` is time with no tapped forward (gaps between batches longer than the
    idle threshold, and time between loops); ``error`` is ``on_exception`` or a step whose
    activations or loss are non-finite.
    """

    TRAIN = "train"
    VALIDATE = "validate"
    TEST = "test"
    PREDICT = "predict"
    SANITY_CHECK = "sanity_check"
    IDLE = "idle"
    ERROR = "error"

    @property
    def code(self) -> int:
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> "Phase":
        return _PHASES[int(code)]

    @property
    def is_inference(self) -> bool:
        return self in (Phase.VALIDATE, Phase.TEST, Phase.PREDICT, Phase.SANITY_CHECK)


_PHASES: Tuple[Phase, ...] = tuple(Phase)
_CODES: Dict[Phase, int] = {p: i for i, p in enumerate(_PHASES)}


class PhaseTracker:
    """Accumulates the time spent per phase and the transitions between phases.

    The callbacks call :meth:`loop_start` / :meth:`loop_end` from Lightning's ``on_*_start`` /
    ``on_*_end`` hooks and :meth:`batch_start` / :meth:`batch_end` around each batch. A gap
    between the end of one batch and the start of the next longer than ``idle_threshold`` seconds
    (data-loader stalls, checkpointing, logging) is idle time; so is all time between loops. Shorter
    gaps are counted to the loop they fall in.

    Args:
        idle_threshold: seconds without a batch after which the gap counts as idle.
        max_segments: length of the bounded timeline kept for the phase-timeline panel.

    Example::

        >>> tr = PhaseTracker(idle_threshold=0.5)
        >>> tr.loop_start(Phase.TRAIN, now=0.0)
        >>> tr.batch_start(now=0.0); tr.batch_end(now=1.0)
        >>> tr.batch_start(now=3.0)   # a 2 s stall
        2.0
        >>> tr.batch_end(now=4.0); tr.loop_end(now=4.0)
        >>> tr.durations[Phase.TRAIN], tr.durations[Phase.IDLE]
        (2.0, 2.0)
    """

    def __init__(self, idle_threshold: float = 0.25, max_segments: int = 512) -> None:
        self.idle_threshold = idle_threshold
        self.loop: Optional[Phase] = None
        self.durations: Dict[Phase, float] = {p: 0.0 for p in Phase}
        self.transitions: Dict[Tuple[str, str], int] = {}
        self.segments: Deque[Tuple[str, float, float]] = deque(maxlen=max_segments)
        self._open: Optional[Tuple[Phase, float]] = None  # the segment being accrued
        self._last_batch_end: Optional[float] = None
        self._origin: Optional[float] = None

    @property
    def current(self) -> Phase:
        """The phase a forward happening now belongs to."""
        if self._open is not None and self._open[0] is Phase.ERROR:
            return Phase.ERROR
        return self.loop if self.loop is not None else Phase.IDLE

    def _switch(self, phase: Phase, now: float) -> None:
        if self._origin is None:
            self._origin = now
        if self._open is not None:
            previous, since = self._open
            if previous is phase:
                return
            self.durations[previous] += max(now - since, 0.0)
            self.segments.append((previous.value, since - self._origin, now - self._origin))
            key = (previous.value, phase.value)
            self.transitions[key] = self.transitions.get(key, 0) + 1
        self._open = (phase, now)

    def loop_start(self, phase: Phase, now: Optional[float] = None) -> None:
        now = time.perf_counter() if now is None else now
        self.loop = phase
        self._last_batch_end = now
        self._switch(phase, now)

    def loop_end(self, now: Optional[float] = None) -> None:
        now = time.perf_counter() if now is None else now
        self.loop = None
        self._last_batch_end = None
        self._switch(Phase.IDLE, now)

    def batch_start(self, now: Optional[float] = None) -> Optional[float]:
        """Open a batch; returns the length of the idle gap before it, if it was one."""
        now = time.perf_counter() if now is None else now
        loop = self.loop if self.loop is not None else Phase.IDLE
        gap = None if self._last_batch_end is None else now - self._last_batch_end
        if gap is not None and gap > self.idle_threshold and self._open is not None:
            # Re-attribute the stall, which started at the previous batch's end, to idle.
            phase, since = self._open
            self.durations[phase] += max(self._last_batch_end - since, 0.0)
            self._open = (phase, self._last_batch_end)
            self._switch(Phase.IDLE, self._last_batch_end)
            self._switch(loop, now)
            return gap
        self._switch(loop, now)
        return None

    def batch_end(self, now: Optional[float] = None) -> None:
        self._last_batch_end = time.perf_counter() if now is None else now

    def mark_error(self, now: Optional[float] = None) -> None:
        """Record an error (an exception or a non-finite step) from now on."""
        self._switch(Phase.ERROR, time.perf_counter() if now is None else now)

    def clear_error(self, now: Optional[float] = None) -> None:
        if self._open is not None and self._open[0] is Phase.ERROR:
            self._switch(self.loop if self.loop is not None else Phase.IDLE, time.perf_counter() if now is None else now)

    def close(self, now: Optional[float] = None) -> None:
        """Account the open segment up to ``now`` (before reporting)."""
        now = time.perf_counter() if now is None else now
        if self._open is not None:
            phase, since = self._open
            self.durations[phase] += max(now - since, 0.0)
            self.segments.append((phase.value, since - (self._origin or since), now - (self._origin or since)))
            self._open = (phase, now)

    def summary(self) -> Dict[str, float]:
        """Seconds spent per phase, by phase name."""
        return {p.value: round(d, 6) for p, d in self.durations.items()}

    def timeline(self) -> List[Tuple[str, float, float]]:
        return list(self.segments)

    def state_dict(self) -> Dict[str, object]:
        return {"durations": self.summary(), "transitions": {f"{a}->{b}": n for (a, b), n in self.transitions.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        for name, seconds in dict(state.get("durations", {})).items():
            self.durations[Phase(name)] = float(seconds)
        for key, n in dict(state.get("transitions", {})).items():
            a, b = key.split("->")
            self.transitions[(a, b)] = int(n)
