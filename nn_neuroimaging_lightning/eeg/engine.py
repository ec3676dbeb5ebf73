"""NN-EEG on one module (plain PyTorch, no Lightning): the engines wired together, fed by the callback's hooks.

:class:`EEGEngine` owns the taps and the four engines of this package for one model and exposes the
operations a training loop calls: :meth:`~EEGEngine.commit` a sample at a forward's end, mark
batch starts and ends (idle gaps), :meth:`~EEGEngine.judge` the newest sample,
:meth:`~EEGEngine.classify` the queued state windows and :meth:`~EEGEngine.analyse` the spectra.
:class:`~nn_neuroimaging_lightning.NNEEGCallback` maps Lightning's hooks onto these calls and logs
what they return; the engine never logs, never stops a run and never reads a trainer.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from torch import Tensor, nn

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning.eeg.detector import StepDetector, Verdict
from nn_neuroimaging_lightning.eeg.recorder import SampleRecorder
from nn_neuroimaging_lightning.eeg.spectra import Spectra
from nn_neuroimaging_lightning.eeg.states import StateWindows
from nn_neuroimaging_lightning.events import AnomalyEvent
from nn_neuroimaging_lightning.functional import spectral as FS
from nn_neuroimaging_lightning.phases import Phase, PhaseTracker
from nn_neuroimaging_lightning.taps import ActivityTaps

__all__ = ["EEGEngine", "check_signal_args"]


def check_signal_args(window: Any, fs: Any, nperseg: Any, bands: Any, explosion_z: Any, collapse_ratio: Any,
                      spectral_shift_threshold: Any, min_history: Any, history_below_window: bool = True) -> Dict[str, Any]:
    """The arguments NN-EEG's callback and :class:`~nn_neuroimaging_lightning.Monitor` share, checked once.

    Returns them validated (``bands``: ``None`` gives the defaults), or raises naming the argument,
    the value and what is allowed. ``history_below_window``: ``min_history`` must leave room in the ring
    (the callback judges against ring samples; the Monitor against its calibration).
    """
    window = V.check_int("window", window, 2)
    fs = V.check_float("fs", fs, 0.0, strict_min=True)
    nperseg = V.check_int("nperseg", nperseg, 2)
    if nperseg > window:
        raise ValueError(f"`nperseg` must be at most `window`={window}, got {nperseg!r}: a Welch segment must not exceed the window.")
    # `_check_band_spec` refuses a non-mapping or a malformed entry with the band's name and value.
    bands = dict(FS.DEFAULT_BANDS if bands is None else FS._check_band_spec(bands))
    FS.check_bands(bands, fs=fs, nperseg=nperseg)
    return {"window": window, "fs": fs, "nperseg": nperseg, "bands": bands,
            "explosion_z": V.check_float("explosion_z", explosion_z, 0.0, strict_min=True),
            "collapse_ratio": V.check_float("collapse_ratio", collapse_ratio, 0.0, 1.0),
            "spectral_shift_threshold": V.check_float("spectral_shift_threshold", spectral_shift_threshold, 0.0, 1.0, strict_min=True),
            "min_history": V.check_int("min_history", min_history, 2, window - 1 if history_below_window else None)}


class EEGEngine:
    r"""The taps, the sample ring, the per-step judge, the state windows and the spectra of one model.

    One sample per model forward and layer, :math:`s_t = \frac{1}{N}\sum_i |a_{i,t}|`, goes into a
    ring buffer on the activation's device (no host synchronisation per step). On every step the
    newest sample is checked (:meth:`judge`) for non-finite values, explosion (robust z-score of
    log-activity against a baseline of recent training samples, refreshed every 16 of them) and
    collapse (activity ~0 against that baseline); on CPU that judgement is a loop over host floats
    read through numpy views of the tensors, on an accelerator a few device ops plus a lagged
    non-blocking copy. :meth:`analyse` computes the window's Welch spectrum and band powers and
    checks them for a spectral shift against the calibrated baseline. Every complete window of
    ``state_window`` samples of one phase is queued and classified (:meth:`classify`: four windows at
    once, and whatever is queued at each analysis step and loop end) into training / inference /
    idle / error by an online classifier that sees only signal features (per layer: level,
    variability, drift, spectrum; per window: the sampling cadence, i.e. the main thread's CPU time
    between samples relative to recent training windows, see
    :mod:`~nn_neuroimaging_lightning.functional.states`), prequentially (predict, then learn).

    Args:
        modules: the tapped modules by name (tap order).
        states: the state windows and classifier (:class:`~nn_neuroimaging_lightning.eeg.states.StateWindows`,
            built by the caller before any model is known).
        tracker: the phase labels of the samples (:class:`~nn_neuroimaging_lightning.phases.PhaseTracker`).
        window: ring length in samples; ``fs``, ``nperseg``, ``noverlap``, ``bands``,
            ``shift_threshold``: the spectra (:class:`~nn_neuroimaging_lightning.eeg.spectra.Spectra`).
        idle_threshold: seconds between batches after which the gap is idle; ``idle_max_samples``:
            idle samples written for one gap, at most.
        judge_args: ``explosion_z``, ``collapse_ratio``, ``min_history`` of the
            :class:`~nn_neuroimaging_lightning.eeg.detector.StepDetector`.
        output_selector: picks the tensor of a tuple / dict output (default: the first tensor).
        source: the events' ``source``.

    Example::

        >>> import torch
        >>> from nn_neuroimaging_lightning.functional.spectral import DEFAULT_BANDS
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> tracker = PhaseTracker()
        >>> states = StateWindows(128, 8, 200.0, 64, DEFAULT_BANDS)
        >>> eng = EEGEngine({"0": net[0], "2": net[2]}, states, tracker, window=128, fs=200.0, nperseg=64,
        ...                 noverlap=None, bands=DEFAULT_BANDS, shift_threshold=0.8, idle_threshold=0.25,
        ...                 idle_max_samples=0, judge_args={"min_history": 8})
        >>> eng.taps.attach(root=net, on_forward_end=lambda: eng.commit(step=0))
        >>> tracker.loop_start(Phase.TRAIN)
        >>> for _ in range(3):
        ...     _ = net(torch.randn(2, 4))
        >>> eng.signal("2").shape
        torch.Size([3])
    """

    def __init__(self, modules: Mapping[str, nn.Module], states: StateWindows, tracker: PhaseTracker, *, window: int,
                 fs: float, nperseg: int, noverlap: Optional[int], bands: Mapping[str, Tuple[float, float]],
                 shift_threshold: float, idle_threshold: float, idle_max_samples: int, judge_args: Mapping[str, Any],
                 output_selector: Optional[Callable[[Any], Tensor]] = None, source: str = "nn_eeg") -> None:
        self.states, self.tracker, self.source = states, tracker, source
        self.taps = ActivityTaps(modules, selector=output_selector)
        self.names: List[str] = self.taps.names
        self.recorder = SampleRecorder(len(self.names), window, states, idle_threshold, idle_max_samples)
        self.spectra = Spectra(self.names, fs, nperseg, noverlap, bands, shift_threshold, source=source)
        self.detector = StepDetector(self.names, history_size=max(2 * int(judge_args["min_history"]), 32),
                                     source=source, **judge_args)
        self.window_flags: Set[str] = set()  # layers flagged since the last training analysis
        self.mode_modules: List[nn.Module] = []  # see `watch_modes`
        self.mode_names: Dict[int, str] = {}
        self.train_batches = 0

    @property
    def ring(self) -> Any:
        """The :class:`~nn_neuroimaging_lightning.taps.RingBuffer` of samples."""
        return self.recorder.ring

    def row(self, name: str) -> int:
        """The ring row of a tapped layer (ValueError naming the tapped layers otherwise)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"`name`={name!r} is not a tapped layer; tapped layers: {self.names}.") from None

    def signal(self, name: str) -> Tensor:
        """The layer's recent samples, oldest first."""
        return self.ring.ordered()[self.row(name)]

    # ------------------------------------------------------------------ the sample stream
    def commit(self, step: int) -> None:
        """Write the taps' pending sample (if any) as one sample of ``step`` in the current phase."""
        sample = self.taps.sample()
        if sample is not None:
            self.recorder.commit(sample, self.tracker.current, step)

    def batch_start(self, now: float, step: int) -> None:
        """A batch starts at ``now``: a long gap since the previous one is written as idle samples."""
        self.tracker.batch_start(now)
        self.recorder.batch_start(now, step)

    def watch_modes(self, root: nn.Module) -> None:
        """Check the train/eval mode of ``root``'s modules in inference loops (``state_mismatch``)."""
        self.mode_modules = [root] + [m for m in root.modules() if m is not root]
        self.mode_names = {id(m): (n or "<model>") for n, m in root.named_modules()}

    def end_batch(self, now: float, loss: Optional[Tensor], judged: Optional[Tuple[Any, bool]],
                  step: Callable[[], int]) -> Optional[Tuple[Any, bool, List[AnomalyEvent]]]:
        """A batch ended at ``now`` (its pending sample committed by the caller): judge the sample unless it
        was ``judged`` already (``(score, flagged)``), then the mode check of an inference loop and the state
        windows that are due, dated ``step()`` (read only then). Returns ``(score, flagged, events)``, ``None``
        if the batch wrote no sample."""
        self.recorder.batch_end(now)
        self.tracker.batch_end(now)
        phase, fresh = self.tracker.current, self.recorder.fresh
        if not fresh and judged is None:
            return None
        if fresh:
            score, events = self.judge(loss)
            flagged = bool(events)
        else:  # judged before the backward
            (score, flagged), events = judged, []
        if phase.is_inference and not self.states.reported:
            events += self.states.mode_mismatch(self.mode_modules, self.mode_names, step(), phase)
        if self.states.due():
            events += self.classify(step())
        return score, flagged, events

    # ------------------------------------------------------------------ the per-step judgement
    def judge(self, loss: Optional[Tensor], sync: bool = False) -> Tuple[Any, List[AnomalyEvent]]:
        """Judge the newest sample; returns the anomaly score and the events (no host sync unless ``sync``).

        The baseline of a training sample is the recent training samples (their own small ring, so
        validation loops do not flush it); that of an inference sample the samples of the same
        loop run before it (:class:`~nn_neuroimaging_lightning.eeg.detector.StepDetector`).
        """
        rec, det, fired = self.recorder, self.detector, self.taps.fire_counts
        x, phase = rec.latest, self.tracker.current  # (layers,)
        rec.fresh = False
        if phase is Phase.TRAIN or (phase is Phase.ERROR and self.tracker.loop is Phase.TRAIN):
            base = det.train_baseline(x.device, fired)
        else:
            base = det.run_baseline(x, rec.run, rec.run_len, rec.ring, fired)
        score, verdict = det.judge(x, base, loss, tag=(rec.latest_step, phase, rec.ring.total), learn=phase is Phase.TRAIN, sync=sync)
        return score, ([] if verdict is None else self.events(verdict))

    def events(self, verdict: Verdict) -> List[AnomalyEvent]:
        """Events of a judged sample; a non-finite one relabels the sample ``error`` (error windows)."""
        if not verdict.any():
            return []
        step, phase, total = verdict.tag
        if verdict.loss_bad or verdict.non_finite.any():
            # A non-finite step belongs to the error phase; consecutive ones form error windows.
            self.recorder.mark_error(total)
            self.tracker.mark_error()
        return self.detector.events(verdict, phase.value, Phase.ERROR.value, step=step)

    def collect(self) -> List[AnomalyEvent]:
        """The events of a lagged accelerator verdict still in flight (waits for it)."""
        verdict = self.detector.collect(wait=True)
        return [] if verdict is None else self.events(verdict)

    # ------------------------------------------------------------------ states and spectra
    def classify(self, step: int) -> List[AnomalyEvent]:
        """Classify the queued state windows (predict, then learn); a ``state_mismatch`` belongs to the inference loop."""
        loop = self.tracker.loop
        return self.states.classify(self.ring, step, loop if loop is not None and loop.is_inference else Phase.VALIDATE)

    def note_flags(self, events: Sequence[AnomalyEvent]) -> frozenset:
        """The tapped layers the events flag (also kept for the current analysis window)."""
        flagged = frozenset(e.layer for e in events if e.layer in self.names)
        self.window_flags |= flagged
        return flagged

    def take_window_flags(self) -> frozenset:
        """Every layer flagged since the previous call (one training analysis window)."""
        flags, self.window_flags = frozenset(self.window_flags), set()
        return flags

    def analyse(self, step: int) -> Optional[List[AnomalyEvent]]:
        """Welch analysis of the current phase's window (judged for a spectral shift in training);
        ``None`` while fewer than ``nperseg`` samples of the phase are held."""
        return self.spectra.analyse(self.ring, judge=self.tracker.current is Phase.TRAIN, step=step)

    def timeline(self) -> Dict[str, Any]:
        """The phase-timeline figure's arrays: the samples' phases, their seconds since the first, the phase durations."""
        self.tracker.close()
        times = self.ring.times()
        return {"phases": [Phase.from_code(c).value for c in self.ring.phases()],
                "times": times - times[0] if len(times) else times, "durations": self.tracker.summary()}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        """The engines' states, keyed as the callback's checkpoints always were."""
        return {**self.recorder.state_dict(), **self.states.state_dict(), **self.spectra.state_dict(),
                "tracker": self.tracker.state_dict(), "train_batches": self.train_batches, "layers": list(self.names),
                **self.detector.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> List[str]:
        """Restore :meth:`state_dict`'s output; returns what could not be restored and why (to warn about)."""
        refused: List[str] = []
        saved = state.get("layers")
        if saved is not None and list(saved) != self.names:
            refused.append(f"checkpoint layers {saved} differ from the tapped layers {self.names}; signal history not restored.")
        else:
            self.recorder.load_state_dict(state)
            self.detector.load_state_dict(state)
        why = self.states.load_state_dict(state, self.ring)
        if why is not None:
            refused.append(f"state classifier not restored ({why}); it recalibrates.")
        self.spectra.load_state_dict(state)
        self.tracker.load_state_dict(state.get("tracker", {}))
        self.train_batches = int(state.get("train_batches", 0))
        return refused


def empty_state(states: StateWindows, tracker: PhaseTracker) -> Dict[str, Any]:
    """The checkpoint of a callback that was never set up (same keys as :meth:`EEGEngine.state_dict`)."""
    from nn_neuroimaging_lightning.eeg.spectra import ShiftBaseline

    return {"ring": None, "run": (-1, 0), **states.state_dict(), **ShiftBaseline().state_dict(), "band_epoch": None,
            "tracker": tracker.state_dict(), "train_batches": 0, "layers": None, "train_history": None}

