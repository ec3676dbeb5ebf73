"""NN-EEG: per-layer activity as time series, spectra, band powers, operational states, anomalies."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Deque, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning.callbacks._base import AnomalyEvent, MonitorCallback
from nn_neuroimaging_lightning.config import EEGConfig
from nn_neuroimaging_lightning.eeg import SampleRecorder, ShiftBaseline, Spectra, StateWindows, StepDetector, Verdict
from nn_neuroimaging_lightning.phases import Phase, PhaseTracker
from nn_neuroimaging_lightning.functional import anomalies as FA
from nn_neuroimaging_lightning.functional import spectral as FS
from nn_neuroimaging_lightning.functional import states as FST
from nn_neuroimaging_lightning.metrics.eeg import StateAccuracy
from nn_neuroimaging_lightning.panels.eeg import write_eeg_epoch_panels, write_eeg_step_panels
from nn_neuroimaging_lightning.taps import ActivityTaps, LayerSelector, select_layers

#: Anomaly kinds NN-EEG can raise; ``stop_on`` takes any of them.
EEG_ANOMALY_KINDS: Tuple[str, ...] = (
    "non_finite",
    "explosion",
    "collapse",
    "spectral_shift",
    "state_mismatch",
    "exception",
)


def _since_first(times: np.ndarray) -> np.ndarray:
    """Wall-clock times as seconds since the first one (the timeline's axis starts at 0)."""
    return times - times[0] if len(times) else times


class NNEEGCallback(MonitorCallback):
    r"""Watch each tapped layer's activity as a time series, like EEG electrodes on a brain.

    One sample per model forward and layer, :math:`s_t = \frac{1}{N}\sum_i |a_{i,t}|`, goes into a
    ring buffer on the activation's device (no host synchronisation per step). On every step the
    newest sample is checked for non-finite values, explosion (robust z-score of log-activity
    against a baseline of recent training samples, refreshed every 16 of them) and collapse
    (activity ~0 against that baseline); on CPU that judgement is a loop over host floats read
    through numpy views of the tensors, on an accelerator a few device ops plus a lagged
    non-blocking copy.
    Every ``analysis_every_n_steps`` training steps (default: the trainer's
    ``log_every_n_steps``) the window's Welch spectrum and band powers are computed and logged,
    and checked for a spectral shift against the calibrated baseline. Every complete window of
    ``state_window`` samples of one phase is queued and classified (four windows at once, and
    whatever is queued at each analysis step and loop end) into
    training / inference / idle / error by an online classifier that sees only signal features
    (per layer: level, variability, drift, spectrum; per window: the sampling cadence, i.e. the
    main thread's CPU time between samples relative to recent training windows, see
    :mod:`~nn_neuroimaging_lightning.functional.states`), prequentially (predict, then learn); its accuracy against the Lightning lifecycle is logged as
    ``nn_eeg/state_accuracy``. :attr:`flag_history` and :meth:`band_power` feed the cross-modal
    callback. The work is done by the plain-PyTorch engines of :mod:`nn_neuroimaging_lightning.eeg`
    (SampleRecorder, StepDetector, StateWindows, Spectra); this class maps the Lightning hooks onto them.

    Args:
        layers: which modules to tap: ``None`` (:func:`~nn_neuroimaging_lightning.taps.default_layers`:
            the blocks of a block model plus its stem and head, else every leaf owning parameters,
            norm layers and embedding tables excluded), a name glob, a ``"re:"`` regex, a module
            type, or a list of these.
        window: ring-buffer length in samples (forwards) per layer.
        fs: nominal sampling rate in Hz (one forward = ``1/fs`` s of virtual time).
        nperseg: Welch segment length (samples).
        noverlap: Welch overlap (default ``nperseg // 2``).
        bands: ``{name: (lo_hz, hi_hz)}`` (default: delta, theta, alpha, beta, gamma).
        state_window: samples per window classified into an operational state.
        stop_on: anomaly kinds that set ``trainer.should_stop`` in the step they are detected.
        explosion_z: robust z-score of log-activity above which a layer explodes. This and the next
            three thresholds default to the one set of :mod:`~nn_neuroimaging_lightning.functional.anomalies`
            (``EXPLOSION_Z``, ``COLLAPSE_RATIO``, ``SHIFT_THRESHOLD``, ``MIN_HISTORY``), shared with ``Monitor``.
        collapse_ratio: activity below ``collapse_ratio`` times the recent median is a collapse.
        spectral_shift_threshold: Hellinger distance of relative band powers from the baseline
            (0.8: healthy 500-step client runs reach 0.71 as training moves on; a real shift goes higher).
        state_confidence: classifier probability above which a disagreement with the lifecycle
            is a ``state_mismatch``.
        min_history: same-phase samples needed before explosion/collapse are judged.
        idle_threshold: seconds between batches after which the gap is idle time.
        idle_max_samples: zero-activity samples written for one idle gap, at most.
        analysis_every_n_steps: training steps between spectral analyses (``None``: the trainer's
            ``log_every_n_steps``).
        output_selector: picks the tensor from tuple/dict module outputs (default: first tensor).
        panels: write TensorBoard panels when a ``TensorBoardLogger`` is present.
        max_events: anomaly events kept in memory (all are appended to ``events.jsonl``).
        flag_history: entries kept in :attr:`flag_history` (``(step, flagged layers)`` per analysis
            window and per recorded batch of events), for the cross-modal callback.
        log_anomaly_every_step: call ``pl_module.log`` for ``nn_eeg/anomaly`` and
            ``nn_eeg/anomaly_score`` on every training step. Default ``False``: every step is judged
            and folded into a running max, which is logged on the trainer's logging steps (every
            step with ``log_every_n_steps=1``), at once on a step with an anomaly, and on the
            epoch's last batch. ``EarlyStopping`` reads the same epoch value either way, the logged
            curve misses no anomalous step between logging steps, and each skipped
            ``pl_module.log`` saves Lightning's ~0.15-0.3 ms per call on CPU (5-8 % of a 9 ms step
            for the two keys; ``benchmarks/eeg_overhead.py``). ``True`` also refreshes
            ``trainer.callback_metrics`` on healthy steps between logging steps.

    Raises:
        ValueError: an argument is out of range, or a band has no frequency bin at the
            resolution ``fs / nperseg``.

    Example::

        >>> eeg = NNEEGCallback(stop_on=("non_finite", "explosion"))
        >>> eeg.stop_on
        ('non_finite', 'explosion')
    """

    source = "nn_eeg"
    config_class = EEGConfig
    judges_before_update = True

    def __init__(
        self,
        layers: LayerSelector = None,
        *,
        window: int = 128,
        fs: float = FS.DEFAULT_FS,
        nperseg: int = FS.DEFAULT_NPERSEG,
        noverlap: Optional[int] = None,
        bands: Optional[Mapping[str, Sequence[float]]] = None,
        state_window: int = 16,
        stop_on: Sequence[str] = (),
        explosion_z: float = FA.EXPLOSION_Z,
        collapse_ratio: float = FA.COLLAPSE_RATIO,
        spectral_shift_threshold: float = FA.SHIFT_THRESHOLD,
        state_confidence: float = 0.95,
        min_history: int = FA.MIN_HISTORY,
        idle_threshold: float = 0.25,
        idle_max_samples: int = 32,
        analysis_every_n_steps: Optional[int] = None,
        output_selector: Optional[Callable[[Any], Tensor]] = None,
        panels: bool = True,
        max_events: int = 1000,
        flag_history: int = 128,
        log_anomaly_every_step: bool = False,
    ) -> None:
        super().__init__(max_events=V.check_int("max_events", max_events, 1))
        self.layer_selection = V.check_layer_selector("layers", layers)
        self.window = V.check_int("window", window, 2)
        self.fs = V.check_float("fs", fs, 0.0, strict_min=True)
        self.nperseg = V.check_int("nperseg", nperseg, 2)
        if self.nperseg > self.window:
            raise ValueError(f"`nperseg` ({nperseg}) must not exceed `window` ({window}): a Welch segment must fit in the window.")
        if noverlap is not None:
            V.check_int("noverlap", noverlap, 0, self.nperseg - 1)
        self.noverlap = noverlap
        # `_check_band_spec` refuses a non-mapping or a malformed entry with the band's name and value.
        self.bands: Dict[str, Tuple[float, float]] = dict(FS.DEFAULT_BANDS if bands is None else FS._check_band_spec(bands))
        FS.check_bands(self.bands, fs=self.fs, nperseg=self.nperseg)
        self.state_window = V.check_int("state_window", state_window, 4, self.window)
        self.stop_on = V.check_choices("stop_on", stop_on, EEG_ANOMALY_KINDS)
        self.explosion_z = V.check_float("explosion_z", explosion_z, 0.0, strict_min=True)
        self.collapse_ratio = V.check_float("collapse_ratio", collapse_ratio, 0.0, 1.0)
        self.spectral_shift_threshold = V.check_float("spectral_shift_threshold", spectral_shift_threshold, 0.0, 1.0, strict_min=True)
        self.state_confidence = V.check_float("state_confidence", state_confidence, 0.0, 1.0)
        self.min_history = V.check_int("min_history", min_history, 2, self.window - 1)
        self.idle_threshold = V.check_float("idle_threshold", idle_threshold, 0.0, strict_min=True)
        self.idle_max_samples = V.check_int("idle_max_samples", idle_max_samples, 0, self.window)
        if analysis_every_n_steps is not None:
            V.check_int("analysis_every_n_steps", analysis_every_n_steps, 1)
        self.analysis_every_n_steps = analysis_every_n_steps
        if output_selector is not None and not callable(output_selector):
            raise TypeError(f"`output_selector` must be callable or None, got {output_selector!r}.")
        self.output_selector = output_selector
        self.panels = V.check_bool("panels", panels)

        self.flag_history_size = V.check_int("flag_history", flag_history, 1)
        if not isinstance(log_anomaly_every_step, bool):
            raise TypeError(f"`log_anomaly_every_step` must be a bool, got {log_anomaly_every_step!r}.")
        self.log_anomaly_every_step = log_anomaly_every_step

        self.tracker = PhaseTracker(idle_threshold=self.idle_threshold)
        # Built here, not in `setup`: it depends on the arguments only (and `classifier` is reachable before a fit).
        self._states = StateWindows(self.window, self.state_window, self.fs, self.nperseg, self.bands,
                                    confidence=self.state_confidence, source=self.source)
        self._trainer_ref: Optional[Trainer] = None
        self._warned_silent = False
        self._noticed_state_accuracy = False
        self._taps: Optional[ActivityTaps] = None
        self._recorder: Optional[SampleRecorder] = None  # the ring buffer of samples, runs of one phase, idle gaps
        self._judge_args = dict(explosion_z=self.explosion_z, collapse_ratio=self.collapse_ratio, min_history=self.min_history)
        self._detector: Optional[StepDetector] = None  # the per-step judgement and its training baseline
        self._epoch_batches = 0
        self._judged: Optional[Tuple[Any, bool]] = None  # (score, flagged) of a step judged in on_before_backward
        self._spectra: Optional[Spectra] = None  # Welch analysis, band powers and the spectral-shift baseline
        self._mode_modules: List[torch.nn.Module] = []
        self._mode_names: Dict[int, str] = {}
        self._train_batches = 0
        self._band_tags: Optional[List[str]] = None  # (layers * bands,) sanitised scalar keys, row-major
        self._window_flags: set = set()  # layers flagged since the last analysis
        self.flag_history: Deque[Tuple[int, FrozenSet[str]]] = deque(maxlen=self.flag_history_size)
        self._self_time_ns = 0
        self._self_time_steps = 0

    # ------------------------------------------------------------------ public read-only surface
    def _state_key_fields(self) -> Dict[str, Any]:
        return {"layers": repr(self.layer_selection), "window": self.window}

    def signal(self, name: str) -> Tensor:
        """The layer's recent activity series, oldest sample first (1-D, at most ``window`` long).

        Raises:
            RuntimeError: before a Trainer has set the callback up.
            ValueError: ``name`` is not a tapped layer.
        """
        row = self._row(name)
        return self._ring.ordered()[row]

    @property
    def phases(self) -> List[Phase]:
        """The recent samples' phase labels, aligned with :meth:`signal`."""
        if self._ring is None:
            return []
        return [Phase.from_code(c) for c in self._ring.phases()]

    @property
    def steps(self) -> np.ndarray:
        """The recent samples' global steps, aligned with :meth:`signal`."""
        return np.zeros(0, dtype=np.int64) if self._ring is None else self._ring.steps()

    @property
    def band_powers(self) -> Dict[str, Dict[str, float]]:
        """Relative band powers of the latest analysis: ``{layer: {band: fraction}}`` (host copy)."""
        return {} if self._spectra is None else self._spectra.band_powers

    def band_power(self, band: str, relative: bool = False) -> Dict[str, float]:
        r"""One band's power per layer from the latest analysis's Welch spectrum (host floats).

        .. math::
            P_b = \Delta f \sum_{f_k \in b} \hat P(f_k), \qquad R_b = P_b / \sum_j P_j

        Args:
            band: a band name of ``bands`` (default: delta, theta, alpha, beta, gamma).
            relative: the fraction of the total in-band power instead of the absolute power.

        Returns:
            ``{layer: power}``; before the first analysis, computed from the newest samples
            (empty while fewer than ``nperseg`` are held).

        Raises:
            ValueError: ``band`` is not one of the configured bands.
        """
        if band not in self.bands:
            raise ValueError(f"`band` must be one of {list(self.bands)}, got {band!r}.")
        return {} if self._spectra is None else self._spectra.band_power(self._ring, band, relative)

    @property
    def flagged_layers(self) -> FrozenSet[str]:
        """Layers flagged by any EEG anomaly in the latest entry of :attr:`flag_history`."""
        return self.flag_history[-1][1] if self.flag_history else frozenset()

    @property
    def self_time(self) -> Dict[str, float]:
        """Time inside this callback's training hooks: ``self_time_ns_per_step`` (mean nanoseconds
        per training step) and ``steps`` (how many were timed), like ``NNfMRICallback.self_time``."""
        steps = max(self._self_time_steps, 1)
        return {"self_time_ns_per_step": self._self_time_ns / steps, "steps": self._self_time_steps}

    def _row(self, name: str) -> int:
        if self._taps is None or self._ring is None:
            raise RuntimeError("`signal()` has no data yet: the callback has not been set up by a Trainer.")
        try:
            return self._taps.names.index(name)
        except ValueError:
            raise ValueError(f"`name`={name!r} is not a tapped layer; tapped layers: {self._taps.names}.") from None

    # ------------------------------------------------------------------ set-up and teardown
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remember_trainer(trainer)
        self._trainer_ref = trainer
        if self._taps is None:
            modules = select_layers(pl_module, self.layer_selection)
            self._taps = ActivityTaps(modules, selector=self.output_selector)
            self._recorder = SampleRecorder(len(modules), self.window, self._states, self.idle_threshold, self.idle_max_samples)
            self._spectra = Spectra(self._taps.names, self.fs, self.nperseg, self.noverlap, self.bands,
                                    self.spectral_shift_threshold, source=self.source)
            self._detector = StepDetector(self._taps.names, history_size=max(2 * self.min_history, 32), source=self.source, **self._judge_args)
        self._apply_pending_state()
        self._mode_modules = [pl_module] + [m for m in pl_module.modules() if m is not pl_module]
        self._mode_names = {id(m): (n or "<model>") for n, m in pl_module.named_modules()}
        self._taps.attach(root=pl_module, on_forward_end=self._commit)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._finish(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.tracker.mark_error()
        self._record([
            AnomalyEvent(trainer.global_step, Phase.ERROR.value, "<model>", "exception", float("nan"), self.source,
                         detail=f"{type(exception).__name__}: {exception}"[:500])
        ])
        self._finish(trainer)

    def _finish(self, trainer: Trainer) -> None:
        if self._taps is not None:
            self._taps.detach()
            self._taps.discard()
        verdict = None if self._detector is None else self._detector.collect(wait=True)  # a lagged accelerator copy
        if verdict is not None:
            self._record(self._step_events(verdict))
        self.tracker.close()
        sink = self._panels(trainer)
        if sink is not None:
            sink.flush()

    # ------------------------------------------------------------------ lifecycle → phases
    def _loop_start(self, trainer: Trainer, phase: Phase) -> None:
        if phase is Phase.VALIDATE and trainer.sanity_checking:
            phase = Phase.SANITY_CHECK
        self._states.loop_start()
        self.tracker.loop_start(phase)

    def _loop_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tracker.loop_end()

    on_train_end = on_test_end = on_predict_end = _loop_end

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.TRAIN)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.VALIDATE)
        self._recorder.val_samples = 0  # forwards of this validation loop

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Validation inside fit returns to the training loop; the sanity check precedes it.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.tracker.loop_start(Phase.TRAIN)
        else:
            self.tracker.loop_end()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.TEST)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.PREDICT)

    # ------------------------------------------------------------------ batches
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter_ns()
        self._batch_start(trainer)
        self._self_time_ns += time.perf_counter_ns() - t0

    def _inference_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start(trainer)

    on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _inference_batch_start

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter_ns()
        self._train_batches += 1
        self._epoch_batches += 1
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        self._batch_end(trainer, pl_module, loss if isinstance(loss, Tensor) else None, log=True)
        every = self.analysis_every_n_steps or max(trainer.log_every_n_steps, 1)
        if self._train_batches % every == 0:
            self._analyse(trainer, pl_module, log=True)
        self._self_time_ns += time.perf_counter_ns() - t0
        self._self_time_steps += 1

    def _inference_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(trainer, pl_module, None, log=False)

    on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _inference_batch_end

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_batches = 0

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush_windows(trainer)
        self._write_epoch_panels(trainer, pl_module)
        silent = self.silent_layers
        if silent and not self._warned_silent:
            self._warned_silent = True
            rank_zero_warn(
                f"NNEEGCallback: tapped module(s) {silent} never ran a forward in a whole epoch (their weights may be "
                "used without calling them, e.g. MultiheadAttention.out_proj); they are not judged. Pass `layers=` to leave them out."
            )

    @property
    def silent_layers(self) -> List[str]:
        """Tapped modules that have never fired: reported, never flagged."""
        return [] if self._taps is None else self._taps.silent()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush_windows(trainer)
        if trainer.sanity_checking:
            return
        if self.state_accuracy.update_count:
            self._log(pl_module, "nn_eeg/state_accuracy", self.state_accuracy.compute(), on_step=False, on_epoch=True, sync_dist=False)
        elif not self._noticed_state_accuracy:  # one notice, the first time, saying why
            self._noticed_state_accuracy = True
            why = self._states.why_no_accuracy(self._recorder.val_samples)
            rank_zero_warn(f"NNEEGCallback: `nn_eeg/state_accuracy` not logged at this validation end (undefined): {why}.")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush_windows(trainer)
        self._write_epoch_panels(trainer, pl_module)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush_windows(trainer)

    def _flush_windows(self, trainer: Trainer) -> None:
        events = self._classify_pending(trainer)
        self._record(events)
        self._maybe_stop(trainer, events)

    def _batch_start(self, trainer: Trainer) -> None:
        now = time.perf_counter()
        self.tracker.batch_start(now)
        if self._recorder is not None:
            self._recorder.batch_start(now, trainer.global_step)  # a long gap is written as idle samples

    def _commit(self, step: Optional[int] = None) -> None:
        """Root-module forward finished (or a batch ended with pending calls): write one sample.

        ``step``: the global step of the forward that made it (default: ``trainer.global_step``
        now, right for a commit at the root forward's end or in ``on_before_backward``).
        """
        t0 = time.perf_counter_ns()
        sample = self._taps.sample()
        if sample is not None:
            self._recorder.commit(sample, self.tracker.current, self._current_step if step is None else step)
        self._self_time_ns += time.perf_counter_ns() - t0

    @property
    def _current_step(self) -> int:
        return 0 if self._trainer_ref is None else self._trainer_ref.global_step

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        """Judge the training step's forward and loss before its backward and optimizer update.

        Here, not in ``on_train_batch_end``: the step is still the forward's ``global_step``
        (a ``training_step`` that calls ``self.model(...)`` never ends the root forward, whose
        hook would write the sample), and a stop decided here vetoes the update
        (:meth:`~nn_neuroimaging_lightning.callbacks._base.MonitorCallback.on_before_optimizer_step`).
        With ``stop_on`` on an accelerator the verdict is read at once (one host sync per training
        step, the price of stopping before the update); without it, one step late as before.
        """
        if self._taps is None or self._judged is not None:
            return
        if self._taps.dirty:
            self._commit()
        if not self._recorder.fresh:
            return
        t0 = time.perf_counter_ns()
        score, events = self._step_anomalies(loss, sync=bool(self.stop_on))
        self._judged = (score, bool(events))
        if events:
            self._record(events)
        if events or (bool(self.stop_on) and trainer.world_size > 1):
            self._maybe_stop(trainer, events)
        self._self_time_ns += time.perf_counter_ns() - t0

    def _batch_end(self, trainer: Trainer, pl_module: LightningModule, loss: Optional[Tensor], log: bool) -> None:
        if self._taps is None:
            return
        judged, self._judged = self._judged, None
        if self._taps.dirty:
            self._commit(self._event_step(trainer))
        now = time.perf_counter()
        self._recorder.batch_end(now)
        self.tracker.batch_end(now)
        # Under DDP with `stop_on`, the stop decision is a collective: every rank must take part on
        # every batch, whether or not it found an event itself (else a NaN on one rank hangs the run).
        collective = bool(self.stop_on) and trainer.world_size > 1
        phase = self.tracker.current
        if judged is not None and not self._recorder.fresh:  # judged in `on_before_backward`
            score, flagged = judged
            events: List[AnomalyEvent] = []
        elif not self._recorder.fresh:
            if collective:
                self._maybe_stop(trainer, [])
            return
        else:
            score, events = self._step_anomalies(loss)
            flagged = bool(events)
        if log:
            self._log_anomaly(trainer, pl_module, score, flagged)
        if phase.is_inference and not self._states.reported:
            events += self._states.mode_mismatch(self._mode_modules, self._mode_names, trainer.global_step, phase)
        if self._states.due():
            events += self._classify_pending(trainer)
        if events:
            self._record(events)
        if events or collective:
            self._maybe_stop(trainer, events)

    # ------------------------------------------------------------------ per-step anomalies
    def _step_anomalies(self, loss: Optional[Tensor], sync: bool = False) -> Tuple[Any, List[AnomalyEvent]]:
        """Judge the newest sample with the detector; returns the anomaly score and the events (no host sync).

        The baseline of a training sample is the recent training samples (their own small ring, so
        validation loops do not flush it); that of an inference sample the samples of the same
        loop run before it (:class:`~nn_neuroimaging_lightning.eeg.detector.StepDetector`).
        """
        rec, det, fired = self._recorder, self._detector, self._taps.fire_counts
        x, phase = rec.latest, self.tracker.current  # (layers,)
        rec.fresh = False
        if phase is Phase.TRAIN or (phase is Phase.ERROR and self.tracker.loop is Phase.TRAIN):
            base = det.train_baseline(x.device, fired)
        else:
            base = det.run_baseline(x, rec.run, rec.run_len, rec.ring, fired)
        score, verdict = det.judge(x, base, loss, tag=(rec.latest_step, phase, rec.ring.total), learn=phase is Phase.TRAIN, sync=sync)
        return score, ([] if verdict is None else self._step_events(verdict))

    def _log_anomaly(self, trainer: Trainer, pl_module: LightningModule, score: Any, flagged: bool) -> None:
        """``nn_eeg/anomaly`` (0/1) and ``nn_eeg/anomaly_score``, epoch-reduced by max.

        By default the running max since the last logging step is logged on the trainer's logging
        steps, on steps with an anomaly event and on the epoch's last batch
        (:meth:`~nn_neuroimaging_lightning.callbacks._base.MonitorCallback._running_max`): the epoch value that
        ``EarlyStopping`` reads is the same as with per-step logging, for 2 instead of
        ``2 * log_every_n_steps`` ``pl_module.log`` calls. With ``log_anomaly_every_step`` both are
        logged on every training step.
        """
        if not self.log_anomaly_every_step:
            score = self._running_max("nn_eeg/anomaly_score", score, flagged, trainer, self._epoch_batches)
            if score is None:
                return
        anomaly = float(score >= 1.0) if isinstance(score, float) else (score >= 1.0).float()
        self._log(pl_module, "nn_eeg/anomaly", anomaly, on_epoch=True, reduce_fx="max")
        self._log(pl_module, "nn_eeg/anomaly_score", score, on_epoch=True, reduce_fx="max")

    def _baseline_stats(self, history: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(neg_med, inv, floor)``, each ``(layers,)``, of ``(layers, n)`` history samples: the detector's baseline."""
        if self._detector is not None:
            return self._detector.baseline(history, fired=self._taps.fire_counts).coefficients
        return StepDetector([""] * history.shape[0], **self._judge_args).baseline(history).coefficients

    def _step_events(self, verdict: Verdict) -> List[AnomalyEvent]:
        """Events of a judged sample; a non-finite one relabels the sample ``error`` (error windows)."""
        if not verdict.any():
            return []
        step, phase, total = verdict.tag
        if verdict.loss_bad or verdict.non_finite.any():
            # A non-finite step belongs to the error phase; consecutive ones form error windows.
            self._recorder.mark_error(total)
            self.tracker.mark_error()
        return self._detector.events(verdict, phase.value, Phase.ERROR.value, step=step)

    # ------------------------------------------------------------------ states
    def _classify_pending(self, trainer: Trainer) -> List[AnomalyEvent]:
        """Classify the queued state windows (predict, then learn); a ``state_mismatch`` belongs to the inference loop."""
        loop = self.tracker.loop
        return self._states.classify(self._ring, trainer.global_step, loop if loop is not None and loop.is_inference else Phase.VALIDATE)

    @property
    def classifier(self) -> FST.StateClassifier:
        """The online state classifier."""
        return self._states.classifier

    @property
    def state_accuracy(self) -> StateAccuracy:
        """Balanced accuracy of the classifier's predictions against the Lightning lifecycle."""
        return self._states.accuracy

    # the engines' buffers under their former names (tests and benchmarks read them)
    _label_counts = property(lambda self: self._states.label_counts)
    _cpu_time = property(lambda self: self._states.cpu_time)
    _cadence_ref = property(lambda self: self._states.cadence_ref, lambda self, value: setattr(self._states, "cadence_ref", value))
    _ring = property(lambda self: None if self._recorder is None else self._recorder.ring)
    _history = property(lambda self: None if self._detector is None else self._detector.history)

    # ------------------------------------------------------------------ spectra
    def _analyse(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> None:
        self._flush_windows(trainer)
        events = self._spectra.analyse(self._ring, judge=self.tracker.current is Phase.TRAIN, step=trainer.global_step)
        if events is None:  # fewer than `nperseg` samples of this phase
            return
        relative, (freqs, psd) = self._spectra.latest_bands, self._spectra.latest_psd  # (layers, bands); (F,), (layers, F)
        if log:
            if self._band_tags is None:
                from nn_neuroimaging_lightning.panels.tensorboard import safe_tag

                # Module names may hold any character but "." (e.g. "/", spaces): the same safe tags
                # as the custom-scalars layout, so no logger sees a path-like key.
                self._band_tags = [safe_tag("nn_eeg", name, "band", band) for name in self._taps.names for band in self.bands]
            # `band_power()` / `band_powers` give them in Python
            self._log_plot_scalars(trainer, pl_module, self._band_tags, relative.reshape(-1))  # (layers * bands,)
            if self.state_accuracy.update_count:
                self._log(pl_module, "nn_eeg/state_accuracy", self.state_accuracy.compute())
        self._write_step_panels(trainer, freqs, psd)
        self._record(events)
        self._maybe_stop(trainer, events)
        if self.tracker.loop is Phase.TRAIN:
            # One entry per training analysis window: every layer flagged since the previous one.
            self.flag_history.append((trainer.global_step, frozenset(self._window_flags)))
            self._window_flags = set()

    def _record(self, events: List[AnomalyEvent]) -> None:
        """Keep and write the events; layers they flag go to :attr:`flag_history`."""
        if not events:
            return
        super()._record(events)
        names = set(self._taps.names) if self._taps is not None else set()
        flagged = frozenset(e.layer for e in events if e.layer in names)
        self._window_flags |= flagged
        self.flag_history.append((events[-1].step, flagged))

    # ------------------------------------------------------------------ panels
    def _write_step_panels(self, trainer: Trainer, freqs: Tensor, psd: Tensor) -> None:
        sink = self._panels(trainer)
        if sink is not None:
            write_eeg_step_panels(sink, self._taps.names, self.bands, freqs, psd, trainer.global_step)

    def _write_epoch_panels(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sink = self._panels(trainer)
        if sink is None or self._ring is None:
            return
        step, names = trainer.global_step, self._taps.names
        if self._ring.count < self.nperseg:  # too few samples for a spectrum yet: the events table only
            write_eeg_epoch_panels(sink, step, self._events, names, self.bands)
            return
        self.tracker.close()
        timeline = {"phases": [p.value for p in self.phases], "times": _since_first(self._ring.times()),
                    "durations": self.tracker.summary()}
        write_eeg_epoch_panels(sink, step, self._events, names, self.bands, self._spectra.latest_psd,
                               self._spectra.spectrogram(self._ring), timeline)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.update(
            {
                **({"ring": None, "run": (-1, 0)} if self._recorder is None else self._recorder.state_dict()),
                **self._states.state_dict(),  # "classifier", "cadence_ref", "cpu_time", "state_accuracy", "label_counts"
                **(ShiftBaseline() if self._spectra is None else self._spectra).state_dict(),  # "band_baseline", "baseline_windows"
                "tracker": self.tracker.state_dict(),
                "train_batches": self._train_batches,
                "layers": None if self._taps is None else list(self._taps.names),
                **({"train_history": None} if self._detector is None else self._detector.state_dict()),
                "flag_history": [(step, sorted(layers)) for step, layers in self.flag_history],
            }
        )
        return state

    def _layers_ready(self) -> bool:
        return self._recorder is not None

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        saved_layers = state.get("layers")
        if saved_layers is not None and list(saved_layers) != list(self._taps.names):
            rank_zero_warn(f"NNEEGCallback: checkpoint layers {saved_layers} differ from the tapped layers {self._taps.names}; signal history not restored.")
        else:
            self._recorder.load_state_dict(state)
            self._detector.load_state_dict(state)
        refused = self._states.load_state_dict(state, self._ring)
        if refused is not None:
            rank_zero_warn(f"NNEEGCallback: state classifier not restored ({refused}); it recalibrates.")
        self._spectra.load_state_dict(state)
        self.tracker.load_state_dict(state.get("tracker", {}))
        self._train_batches = int(state.get("train_batches", 0))
        self.flag_history.clear()
        for step, layers in state.get("flag_history", []):
            self.flag_history.append((int(step), frozenset(layers)))
