"""Anomaly events: what happened, where and when, and the ``events.jsonl`` file they are appended to.

Plain Python (no Lightning, no torch): the engines, :class:`~nn_neuroimaging_lightning.Monitor`
and the callbacks all produce :class:`AnomalyEvent`; the callbacks append them to the run's events
file with :func:`append_events`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

__all__ = ["EVENTS_FILENAME", "AnomalyEvent", "append_events"]

EVENTS_FILENAME = "events.jsonl"


@dataclass
class AnomalyEvent:
    """One anomaly: what happened, where and when.

    Attributes:
        step: ``trainer.global_step`` during the forward that produced it (the step Lightning logs
            that batch's ``training_step`` metrics under).
        phase: the lifecycle phase of the sample (``train``, ``validate``, ...).
        layer: the tapped module's name (``"<loss>"``/``"<model>"`` for whole-model events).
        kind: ``non_finite``, ``explosion``, ``collapse``, ``spectral_shift``, ``state_mismatch``,
            ``exception``, ``dead_region``, ``saturated_region``, ``zeta_concentration``, ``joint``.
        value: the measure that crossed its threshold (z-score, distance, ...).
        source: ``nn_eeg``, ``nn_fmri`` or ``cross_modal``.
        detail: free text (e.g. the exception message).
        after_stop: recorded after the callback stopped the run (e.g. in the validation loop
            Lightning runs on stopping); such an event did not stop anything.
    """

    step: int
    phase: str
    layer: str
    kind: str
    value: float
    source: str = "nn_eeg"
    detail: str = ""
    time: float = field(default_factory=time.time)
    after_stop: bool = False

    def to_json(self) -> str:
        d = asdict(self)
        if not math.isfinite(d["value"]):
            d["value"] = str(d["value"])  # JSON has no NaN/Infinity literals
        return json.dumps(d, sort_keys=True)


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
