"""NN-EEG operational states (plain PyTorch, no Lightning): state windows and the online classifier loop.

:class:`StateWindows` queues complete windows of ``state_window`` same-phase samples of a
:class:`~nn_neuroimaging_lightning.taps.RingBuffer`, computes their features
(:func:`~nn_neuroimaging_lightning.functional.states.window_features`, with the ``cadence`` of the main
thread's CPU time between samples) and runs the prequential loop of
:class:`~nn_neuroimaging_lightning.functional.states.StateClassifier`: predict, score against the
lifecycle label (:class:`~nn_neuroimaging_lightning.metrics.eeg.StateAccuracy`), then learn. Inference
windows that the calibrated classifier confidently calls training raise ``state_mismatch``, once the
classifier has shown it tells this run's inference apart (see :class:`StateWindows`).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from nn_neuroimaging_lightning._host import HostMirror
from nn_neuroimaging_lightning.events import AnomalyEvent
from nn_neuroimaging_lightning.functional import states as FST
from nn_neuroimaging_lightning.metrics.eeg import StateAccuracy
from nn_neuroimaging_lightning.phases import Phase
from nn_neuroimaging_lightning.taps import RingBuffer

__all__ = ["PHASE_TO_STATE", "StateWindows"]

#: The lifecycle label of each phase's windows.
PHASE_TO_STATE = {
    Phase.TRAIN: FST.OperationalState.TRAINING,
    Phase.VALIDATE: FST.OperationalState.INFERENCE,
    Phase.TEST: FST.OperationalState.INFERENCE,
    Phase.PREDICT: FST.OperationalState.INFERENCE,
    Phase.SANITY_CHECK: FST.OperationalState.INFERENCE,
    Phase.IDLE: FST.OperationalState.IDLE,
    Phase.ERROR: FST.OperationalState.ERROR,
}
# Complete state windows queued before they are classified together (one batched feature
# computation and one classifier solve).
_MAX_PENDING_WINDOWS = 4
# Consecutive inference windows of one loop that the classifier must confidently call training
# before that disagreement is a `state_mismatch`.
_MISMATCH_WINDOWS = 3
# The classifier's own record on the inference windows of earlier loops, before a confident call of
# `training` counts: at least this many predicted, at least this share of them called inference.
_TRUST_WINDOWS = 8
_TRUST_SHARE = 0.9
# Recent training windows whose median sample interval makes the cadence reference (their median):
# the `cadence` state feature is a window's median interval relative to it.
_CADENCE_REF_WINDOWS = 32


class StateWindows:
    """Queue state windows of a ring buffer and classify them prequentially (predict, then learn).

    A ``state_mismatch`` from the classifier takes ``3`` consecutive inference windows of one loop
    that it calls training with probability ``>= confidence``, and a classifier that has earned
    trust on this run: of the inference windows it predicted in earlier loops (loops that raised no
    mismatch), at least 8, and at least 90 % of them called inference. Decision: a Gaussian model fitted
    to a dozen windows of 30-odd features is confident whether or not it is right (on a toy MLP whose
    steps cost about Lightning's per-hook overhead, it called 3 healthy validation windows training
    with p >= 0.95 in about 1 run in 20); its record on the run's own healthy loops is the evidence
    that its call is worth an alarm. A module left in training mode is found without the classifier
    (:meth:`mode_mismatch`).

    Args:
        window: the ring buffer's length (samples).
        state_window: samples per window.
        fs: sampling rate (Hz) of the window features.
        nperseg: Welch segment length of the window features.
        bands: ``{name: (lo_hz, hi_hz)}`` of the window features.
        confidence: classifier probability above which an inference window called training counts
            towards a ``state_mismatch``.
        source: the ``source`` of the events.

    Example::

        >>> sw = StateWindows(window=64, state_window=8, fs=100.0, nperseg=8, bands={"low": (0.0, 50.0)})
        >>> sw.calibrated, sw.due()
        (False, False)
    """

    def __init__(self, window: int, state_window: int, fs: float, nperseg: int, bands: Mapping[str, Tuple[float, float]],
                 confidence: float = 0.95, source: str = "nn_eeg") -> None:
        self.window, self.state_window, self.fs, self.nperseg = window, state_window, fs, nperseg
        self.bands = dict(bands)
        self.confidence, self.source = confidence, source
        self.classifier = FST.StateClassifier(num_bands=len(self.bands), window_features=len(FST.WINDOW_FEATURES))
        # Each rank's classifier is calibrated on its own windows and its windows may differ in
        # number: its accuracy is the rank's own (a synced compute is a collective that a rank with
        # no window yet would skip, hanging the others).
        self.accuracy = StateAccuracy(sync_on_compute=False)
        # CPU time (s) of the main thread at each ring sample, aligned with the ring's slots: the clock of
        # the `cadence` state feature (immune to other processes on the machine, unlike wall-clock time,
        # and to OpenMP workers spin-waiting, unlike process CPU time).
        self.cpu_time = np.zeros(window, dtype=np.float64)
        self._cpu_offset = 0.0  # added to `time.thread_time()`: continues a restored checkpoint's clock
        # median CPU interval (s) of recent training windows: the cadence feature's reference
        self.cadence_ref: Deque[float] = deque(maxlen=_CADENCE_REF_WINDOWS)
        self.label_counts = np.zeros(len(FST.OperationalState), dtype=np.int64)  # host mirror of calibration
        self.pending: List[Tuple[int, int]] = []  # (ring.total at the window's end, state label)
        self.reported = False  # one state_mismatch per inference loop
        self._streak = 0  # consecutive inference windows the classifier confidently calls training
        # inference windows predicted, and called inference, in this loop and in earlier loops (trust)
        self._loop_record = [0, 0]
        self.record = [0, 0]
        self._mirror = HostMirror()

    @property
    def calibrated(self) -> bool:
        """Host-side twin of ``classifier.calibrated`` (labels are known on the host: no sync)."""
        return int((self.label_counts >= self.classifier.min_count).sum()) >= 2

    def loop_start(self) -> None:
        """A new loop: its mismatch streak starts at 0 and it may report once.

        The loop before it adds its record on inference windows to the classifier's trust, unless it
        raised a mismatch (a loop the classifier flagged is no evidence of its accuracy either way).
        """
        if not self.reported:
            self.record = [a + b for a, b in zip(self.record, self._loop_record)]
        self._loop_record = [0, 0]
        self.reported = False
        self._streak = 0

    @property
    def trusted(self) -> bool:
        """Whether the classifier's calls of earlier inference windows earn its mismatch calls a hearing."""
        seen, right = self.record
        return seen >= _TRUST_WINDOWS and right >= _TRUST_SHARE * seen

    def stamp(self, ring: RingBuffer) -> None:
        """Time-stamp the ring's newest sample with the main thread's CPU clock."""
        self.cpu_time[(ring.pos - 1) % ring.window] = time.thread_time() + self._cpu_offset

    def queue(self, total: int, label: int) -> None:
        """Queue the window that ends at the ring's ``total``-th sample, labelled ``label``."""
        self.pending.append((total, label))

    def due(self) -> bool:
        """Whether the queue is full: at most what the ring still holds (an overwritten window is lost)."""
        return len(self.pending) >= max(1, min(_MAX_PENDING_WINDOWS, self.window // self.state_window))

    def why_no_accuracy(self, loop_samples: int) -> str:
        """Why the accuracy is undefined at the end of an inference loop of ``loop_samples`` forwards, and the fix.

        The accuracy is defined once the classifier has predicted a window, i.e. once it is
        calibrated (``min_count`` complete windows of ``state_window`` same-phase samples of two
        states, training and inference): a loop shorter than ``state_window`` forwards never gives
        an inference window, so the accuracy stays undefined for the whole run.
        """
        training, inference = int(FST.OperationalState.TRAINING), int(FST.OperationalState.INFERENCE)
        if loop_samples < self.state_window:
            why = (f"this validation loop made {loop_samples} forward(s), fewer than `state_window`={self.state_window}, "
                   "so it gave no inference window to classify")
            fix = "pass a smaller `state_window`, or run more validation batches (`limit_val_batches`, a larger validation set)"
        else:
            why = (f"the state classifier is not calibrated yet: it needs {self.classifier.min_count} windows of two states "
                   f"(so far {int(self.label_counts[training])} training, {int(self.label_counts[inference])} inference)")
            fix = "it is logged from the first validation loop after calibration"
        return f"{why}. Fix: {fix}"

    # ------------------------------------------------------------------ the prequential loop
    def classify(self, ring: Optional[RingBuffer], step: int, phase: Phase) -> List[AnomalyEvent]:
        """Classify the queued windows at once (predict, then update) and learn from them.

        ``step`` dates a ``state_mismatch`` event; ``phase`` is the inference loop it belongs to.
        """
        pending, self.pending = self.pending, []
        w = self.state_window
        if not pending or ring is None or ring.values is None:
            return []
        order = ring.slots()  # ring slots of the held samples, oldest first
        starts, labels = [], []
        for end_total, label in pending:
            back = ring.total - end_total  # samples pushed after the window's end
            start = ring.count - back - w
            if start < 0:
                continue  # overwritten already
            codes = ring.phase[order[start:start + w]]
            if label != int(PHASE_TO_STATE[Phase.from_code(codes[-1])]) or not (codes == codes[0]).all():
                continue  # relabelled (e.g. a non-finite sample became `error`) or straddles phases
            starts.append(start)
            labels.append(label)
        if not starts:
            return []
        idx = np.concatenate([order[s:s + w] for s in starts])  # (N * w,)
        data = ring.values.index_select(1, torch.from_numpy(idx).to(ring.values.device))  # (layers, N * w)
        windows = data.view(ring.rows, len(starts), w).transpose(0, 1)  # (N, layers, w)
        times = self.cpu_time[idx].reshape(len(starts), w)  # (N, w) host thread CPU seconds
        # Cadence reference: the median interval of earlier training windows (none yet: each
        # window is its own reference, cadence 0). Computed on the host, no device access.
        own = np.median(np.diff(times, axis=1), axis=1)  # (N,)
        ref = float(np.median(self.cadence_ref)) if self.cadence_ref else torch.from_numpy(np.where(own > 0, own, 1.0))
        features = FST.window_features(windows, fs=self.fs, nperseg=self.nperseg, bands=self.bands,
                                       times=torch.from_numpy(times), reference_interval=ref)  # (N, F)
        training = int(FST.OperationalState.TRAINING)
        self.cadence_ref.extend(float(v) for v, label in zip(own, labels) if label == training and v > 0)
        target = torch.tensor(labels, dtype=torch.long).to(features.device, non_blocking=True)
        events: List[AnomalyEvent] = []
        if self.calibrated:
            proba = self.classifier.predict_proba(features)  # (N, 4)
            self.accuracy.to(features.device)
            self.accuracy.update(proba.argmax(dim=1), target)
            self._mirror.push(proba, tag=(step, labels))
            events = self._mismatch_events(phase)
        self.classifier.update(features, target)
        for label in labels:
            self.label_counts[label] += 1
        return events

    def _mismatch_events(self, phase: Phase) -> List[AnomalyEvent]:
        host, tag = self._mirror.read()
        if host is None:
            return []
        self._mirror.clear()
        step, labels = tag
        training, inference = int(FST.OperationalState.TRAINING), int(FST.OperationalState.INFERENCE)
        for proba, label in zip(host, labels):
            if label != inference:
                continue
            pred = int(proba.argmax())
            self._loop_record[0] += 1
            self._loop_record[1] += int(pred == inference)
            if pred == training and proba[pred] >= self.confidence:
                self._streak += 1
            else:
                self._streak = 0
            # One confident window is not enough (a normal run must give none): it takes
            # `_MISMATCH_WINDOWS` consecutive inference windows of one loop, reported once per loop.
            if self._streak == _MISMATCH_WINDOWS and not self.reported and self.trusted:
                self.reported = True
                return [AnomalyEvent(step, phase.value, "<model>", "state_mismatch", float(proba[pred]), self.source,
                                     detail=f"classifier sees training activity in {_MISMATCH_WINDOWS} consecutive inference windows")]
        return []

    def mode_mismatch(self, modules: Sequence[torch.nn.Module], names: Mapping[int, str], step: int, phase: Phase) -> List[AnomalyEvent]:
        """The model or a submodule in training mode while an inference loop runs (once per loop)."""
        offenders = [m for m in modules if m.training]
        if not offenders:
            return []
        self.reported = True
        first = names.get(id(offenders[0]), "<model>")
        return [AnomalyEvent(step, phase.value, first, "state_mismatch", float(len(offenders)), self.source,
                             detail=f"{len(offenders)} module(s) in training mode during {phase.value}")]

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        return {
            "classifier": self.classifier.state_dict(),
            "cadence_ref": list(self.cadence_ref),
            "cpu_time": torch.from_numpy(self.cpu_time.copy()),
            "state_accuracy": {k: v.detach().cpu() for k, v in self.accuracy.metric_state.items()},
            "label_counts": self.label_counts.tolist(),
            "record": list(self.record),
        }

    def load_state_dict(self, state: Mapping[str, Any], ring: Optional[RingBuffer] = None) -> Optional[str]:
        """Restore from :meth:`state_dict`; ``ring``: the restored ring, whose newest sample the clock continues from.

        Returns:
            Why the classifier was not restored (saved with another feature layout: it recalibrates), else ``None``.
        """
        refused = None
        if state.get("classifier") is not None:
            try:
                self.classifier.load_state_dict(state["classifier"])
                self.label_counts[:] = np.asarray(state.get("label_counts", self.label_counts))
            except ValueError as err:  # a checkpoint from another feature layout: recalibrate
                refused = str(err)
                self.label_counts[:] = 0
        self.record = [0, 0] if refused else [int(v) for v in state.get("record", (0, 0))]
        self.cadence_ref.clear()
        self.cadence_ref.extend(float(v) for v in state.get("cadence_ref", []))
        cpu = state.get("cpu_time")
        if cpu is not None and len(cpu) == len(self.cpu_time):
            # another thread's clock: kept as saved, new stamps continue it from the newest sample
            self.cpu_time[:] = np.asarray(cpu, dtype=np.float64)
            newest = self.cpu_time[(ring.pos - 1) % ring.window] if ring is not None and ring.count else 0.0
            self._cpu_offset = float(newest) - time.thread_time()
        for k, v in dict(state.get("state_accuracy", {})).items():
            setattr(self.accuracy, k, v.clone())
        return refused
