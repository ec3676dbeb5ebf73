"""NN-EEG: per-layer activity as time series, spectra, band powers, operational states, anomalies."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Deque, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning.callbacks._base import AnomalyEvent, MonitorCallback
from nn_neuroimaging_lightning.config import EEGConfig
from nn_neuroimaging_lightning.eeg import ShiftBaseline, Spectra, StepDetector, TrainingHistory, Verdict
from nn_neuroimaging_lightning.eeg.states import PHASE_TO_STATE, StateWindows
from nn_neuroimaging_lightning.phases import Phase, PhaseTracker
from nn_neuroimaging_lightning.functional import anomalies as FA
from nn_neuroimaging_lightning.functional import spectral as FS
from nn_neuroimaging_lightning.functional import states as FST
from nn_neuroimaging_lightning.metrics.eeg import StateAccuracy
from nn_neuroimaging_lightning.taps import ActivityTaps, LayerSelector, RingBuffer, select_layers

#: Anomaly kinds NN-EEG can raise; ``stop_on`` takes any of them.
EEG_ANOMALY_KINDS: Tuple[str, ...] = (
    "non_finite",
    "explosion",
    "collapse",
    "spectral_shift",
    "state_mismatch",
    "exception",
)
_LOOP_PHASE = {"train": Phase.TRAIN, "validation": Phase.VALIDATE, "test": Phase.TEST, "predict": Phase.PREDICT}


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
    callback.

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
        self._val_samples = 0  # forwards of the current validation loop
        self._taps: Optional[ActivityTaps] = None
        self._ring: Optional[RingBuffer] = None
        self._judge_args = dict(explosion_z=self.explosion_z, collapse_ratio=self.collapse_ratio, min_history=self.min_history)
        self._detector: Optional[StepDetector] = None  # the per-step judgement and its training baseline
        self._score_max: Any = None  # running max of the anomaly score between logs
        self._error_run = 0  # consecutive non-finite samples
        self._last_error_total = -1
        self._epoch_batches = 0
        self._latest: Optional[Tensor] = None  # (layers,) newest sample
        self._latest_step = 0
        self._fresh = False  # a sample arrived since the last judgement
        self._judged: Optional[Tuple[Any, bool]] = None  # (score, flagged) of a step judged in on_before_backward
        self._spectra: Optional[Spectra] = None  # Welch analysis, band powers and the spectral-shift baseline
        self._mode_modules: List[torch.nn.Module] = []
        self._mode_names: Dict[int, str] = {}
        self._pending_state: Optional[Dict[str, Any]] = None
        self._train_batches = 0
        self._run_code = -1  # phase code of the current contiguous run of samples
        self._run_len = 0
        self._last_batch_end: Optional[float] = None
        self._interval_ema: Optional[float] = None
        self._band_tags: Optional[List[List[str]]] = None  # (layers, bands) sanitised scalar keys
        self._window_flags: set = set()  # layers flagged since the last analysis
        self.flag_history: Deque[Tuple[int, FrozenSet[str]]] = deque(maxlen=self.flag_history_size)
        self._self_time_ns = 0
        self._self_time_steps = 0

    # ------------------------------------------------------------------ public read-only surface
    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=repr(self.layer_selection), window=self.window)

    def _layer_taps(self) -> Optional[ActivityTaps]:
        return self._taps

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
    def self_time_fraction(self) -> Dict[str, float]:
        """Nanoseconds spent inside this callback's training hooks per step (for the overhead benchmark)."""
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
            self._ring = RingBuffer(len(modules), self.window)
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

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.TRAIN)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tracker.loop_end()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.VALIDATE)
        self._val_samples = 0

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Validation inside fit returns to the training loop; the sanity check precedes it.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.tracker.loop_start(Phase.TRAIN)
        else:
            self.tracker.loop_end()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.TEST)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tracker.loop_end()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.PREDICT)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tracker.loop_end()

    # ------------------------------------------------------------------ batches
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter_ns()
        self._batch_start(trainer)
        self._self_time_ns += time.perf_counter_ns() - t0

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start(trainer)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start(trainer)

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start(trainer)

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

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(trainer, pl_module, None, log=False)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(trainer, pl_module, None, log=False)

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(trainer, pl_module, None, log=False)

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
        else:
            self._notice_no_state_accuracy()

    def _notice_no_state_accuracy(self) -> None:
        """One notice, the first time a validation loop ends without ``nn_eeg/state_accuracy``, saying why.

        The accuracy is defined once the classifier has predicted a window, i.e. once it is
        calibrated (``min_count`` complete windows of ``state_window`` same-phase samples of two
        states, training and inference): a validation loop shorter than ``state_window`` forwards
        never gives an inference window, so the accuracy stays undefined for the whole run.
        """
        if self._noticed_state_accuracy:
            return
        self._noticed_state_accuracy = True
        training, inference = int(FST.OperationalState.TRAINING), int(FST.OperationalState.INFERENCE)
        counts = self._states.label_counts
        if self._val_samples < self.state_window:
            why = (f"this validation loop made {self._val_samples} forward(s), fewer than `state_window`={self.state_window}, "
                   "so it gave no inference window to classify")
            fix = "pass a smaller `state_window`, or run more validation batches (`limit_val_batches`, a larger validation set)"
        else:
            why = (f"the state classifier is not calibrated yet: it needs {self.classifier.min_count} windows of two states "
                   f"(so far {int(counts[training])} training, {int(counts[inference])} inference)")
            fix = "it is logged from the first validation loop after calibration"
        rank_zero_warn(f"NNEEGCallback: `nn_eeg/state_accuracy` not logged at this validation end (undefined): {why}. Fix: {fix}.")

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
        if self._last_batch_end is not None and self._ring is not None and self._ring.values is not None:
            gap = now - self._last_batch_end
            if gap > self.idle_threshold and self.idle_max_samples:
                self._push_idle(gap, trainer.global_step)

    def _push_idle(self, gap: float, step: int) -> None:
        """Write a silent stretch: zero activity, phase ``idle``, one sample per typical step interval."""
        interval = self._interval_ema or self.idle_threshold
        n = int(min(self.idle_max_samples, max(1, round(gap / max(interval, 1e-6)))))
        zeros = torch.zeros(self._ring.rows, device=self._ring.values.device)
        t_end = time.time()
        for k in range(n):
            self._push(zeros, Phase.IDLE, step, t_end - gap + (k + 1) * gap / n)

    def _commit(self, step: Optional[int] = None) -> None:
        """Root-module forward finished (or a batch ended with pending calls): write one sample.

        ``step``: the global step of the forward that made it (default: ``trainer.global_step``
        now, right for a commit at the root forward's end or in ``on_before_backward``).
        """
        t0 = time.perf_counter_ns()
        sample = self._taps.sample()
        if sample is not None:
            self._latest_step = self._current_step if step is None else step  # the step whose forward made the sample
            self._push(sample, self.tracker.current, self._latest_step)
            self._latest = sample
            self._fresh = True
        self._self_time_ns += time.perf_counter_ns() - t0

    def _push(self, sample: Tensor, phase: Phase, step: int, wall_time: Optional[float] = None) -> None:
        """Write one sample; windows of ``state_window`` samples of one phase become due for states."""
        self._ring.push(sample, phase.code, step, wall_time)
        if phase is Phase.VALIDATE:
            self._val_samples += 1
        self._states.stamp(self._ring)
        if phase.code != self._run_code:
            self._run_code, self._run_len = phase.code, 0
        self._run_len += 1
        if self._run_len % self.state_window == 0:
            # a complete window of one phase: queued, classified in a batch later
            self._states.queue(self._ring.total, int(PHASE_TO_STATE[phase]))

    @property
    def _history(self) -> Optional[TrainingHistory]:
        """The training-sample history of the detector (the explosion/collapse baseline)."""
        return None if self._detector is None else self._detector.history

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
        if self._latest is None or not self._fresh:
            return
        t0 = time.perf_counter_ns()
        self._fresh = False
        phase = self.tracker.current
        training = phase is Phase.TRAIN or (phase is Phase.ERROR and self.tracker.loop is Phase.TRAIN)
        score, events = self._step_anomalies(loss, phase, training, sync=bool(self.stop_on))
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
        if self._last_batch_end is not None:
            interval = now - self._last_batch_end
            if interval < self.idle_threshold:
                self._interval_ema = interval if self._interval_ema is None else 0.9 * self._interval_ema + 0.1 * interval
        self._last_batch_end = now
        self.tracker.batch_end(now)
        # Under DDP with `stop_on`, the stop decision is a collective: every rank must take part on
        # every batch, whether or not it found an event itself (else a NaN on one rank hangs the run).
        collective = bool(self.stop_on) and trainer.world_size > 1
        phase = self.tracker.current
        if judged is not None and not self._fresh:  # judged in `on_before_backward`
            score, flagged = judged
            events: List[AnomalyEvent] = []
        elif self._latest is None or not self._fresh:
            if collective:
                self._maybe_stop(trainer, [])
            return
        else:
            self._fresh = False
            training = phase is Phase.TRAIN or (phase is Phase.ERROR and self.tracker.loop is Phase.TRAIN)
            score, events = self._step_anomalies(loss, phase, training)
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
    def _step_anomalies(self, loss: Optional[Tensor], phase: Phase, training: bool, sync: bool = False) -> Tuple[Any, List[AnomalyEvent]]:
        """Judge the newest sample with the detector; returns the anomaly score and the events (no host sync).

        The baseline of a training sample is the recent training samples (their own small ring, so
        validation loops do not flush it); that of an inference sample the samples of the same
        loop run before it (:class:`~nn_neuroimaging_lightning.eeg.detector.StepDetector`).
        """
        x, det, fired = self._latest, self._detector, self._taps.fire_counts  # (layers,)
        if training:
            base = det.train_baseline(x.device, fired)
        else:
            run = (self._run_code, self._ring.total - self._run_len)  # identity of this loop run
            base = det.run_baseline(x, run, self._run_len, min(self._run_len, self._ring.count), self._ring.ordered, fired)
        score, verdict = det.judge(x, base, loss, tag=(self._latest_step, phase, self._ring.total), learn=phase is Phase.TRAIN, sync=sync)
        return score, ([] if verdict is None else self._step_events(verdict))

    def _log_anomaly(self, trainer: Trainer, pl_module: LightningModule, score: Any, flagged: bool) -> None:
        """``nn_eeg/anomaly`` (0/1) and ``nn_eeg/anomaly_score``, epoch-reduced by max.

        By default the running max since the last log is logged on the trainer's logging steps, on
        steps with an anomaly event and on the epoch's last batch: the epoch value that
        ``EarlyStopping`` reads is the same as with per-step logging, for 2 instead of
        ``2 * log_every_n_steps`` ``pl_module.log`` calls. With ``log_anomaly_every_step`` both are
        logged on every training step.
        """
        if not self.log_anomaly_every_step:
            if self._score_max is None:
                self._score_max = score
            elif isinstance(score, float):
                self._score_max = max(self._score_max, score)
            else:
                self._score_max = torch.maximum(self._score_max, score)
            n_batches = trainer.num_training_batches
            last = n_batches != float("inf") and self._epoch_batches >= n_batches
            if not (flagged or last or (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0):
                return
            score, self._score_max = self._score_max, None
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
            self._ring.relabel(self._ring.total - total, Phase.ERROR.code)
            self.tracker.mark_error()
            self._error_run = self._error_run + 1 if self._last_error_total == total - 1 else 1
            self._last_error_total = total
            if self._error_run % self.state_window == 0:
                self._states.queue(total, int(FST.OperationalState.ERROR))
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

    @property
    def _label_counts(self) -> np.ndarray:
        return self._states.label_counts

    @property
    def _cadence_ref(self) -> Deque[float]:
        return self._states.cadence_ref

    @_cadence_ref.setter
    def _cadence_ref(self, value: Deque[float]) -> None:  # tests shrink it
        self._states.cadence_ref = value

    @property
    def _cpu_time(self) -> np.ndarray:
        return self._states.cpu_time

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
                self._band_tags = [[safe_tag("nn_eeg", name, "band", band) for band in self.bands] for name in self._taps.names]
            # The layers × bands scalars go straight to the loggers in one `log_metrics` call (a
            # logging step: the host copy is allowed): 20 `pl_module.log` calls cost Lightning ~6 ms
            # per analysis on CPU, `log_metrics` ~2.4 ms in a training step. A TensorBoardLogger
            # without a prefix gets them as one event (`write_scalars`, ~8x cheaper), the same
            # tags. They are plots, not values to monitor (`band_power()` / `band_powers` give them
            # in Python); with no logger at all they go through `pl_module.log`, so
            # `trainer.callback_metrics` is where they can be read.
            if trainer.loggers:
                from nn_neuroimaging_lightning.panels.tensorboard import write_scalars

                values = relative.detach().float().cpu().numpy()  # (layers, bands)
                metrics = {tag: float(values[i, j]) for i, tags in enumerate(self._band_tags) for j, tag in enumerate(tags)}
                for logger in trainer.loggers:
                    if isinstance(logger, TensorBoardLogger) and not getattr(logger, "_prefix", "") and trainer.is_global_zero:
                        write_scalars(logger.experiment, metrics, trainer.global_step)
                    else:
                        logger.log_metrics(metrics, step=trainer.global_step)
            else:
                for i, tags in enumerate(self._band_tags):
                    for j, tag in enumerate(tags):
                        self._log(pl_module, tag, relative[i, j])
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
        if sink is None:
            return
        from nn_neuroimaging_lightning.panels import tensorboard as P

        sink.layout(P.band_layout(self._taps.names, list(self.bands)))
        f = freqs.detach().cpu().numpy()
        p = psd.detach().cpu().numpy()
        for i, name in enumerate(self._taps.names):
            sink.spectrum(P.safe_tag("nn_eeg", name, "spectrum"), f, p[i], trainer.global_step)

    def _write_epoch_panels(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sink = self._panels(trainer)
        if sink is None or self._ring is None:
            return
        from nn_neuroimaging_lightning.panels import figures as PF
        from nn_neuroimaging_lightning.panels import tensorboard as P

        step = trainer.global_step
        if self._events:  # written even when the run stopped before a spectrum was possible
            rows = [(e.step, e.phase, e.layer, e.kind, f"{e.value:.4g}") for e in list(self._events)[-50:]]
            sink.table("nn_eeg/events", ("step", "phase", "layer", "kind", "value"), rows, step)
        if self._ring.count < self.nperseg:  # too few samples for a spectrum yet
            sink.flush()
            return
        if self._spectra.latest_psd is not None:
            freqs, psd = (t.detach().cpu().numpy() for t in self._spectra.latest_psd)
            sink.figure("nn_eeg/spectrum", PF.spectrum_figure(freqs, {n: psd[i] for i, n in enumerate(self._taps.names)}, self.bands), step)
        data = self._ring.ordered()
        seg_f, seg_p = FS.segment_psd(data, fs=self.fs, nperseg=self.nperseg, noverlap=self.noverlap)  # (F,), (layers, S, F)
        seg_p = seg_p.detach().cpu().numpy()
        hop = self.nperseg - (self.nperseg // 2 if self.noverlap is None else self.noverlap)
        steps = self._ring.steps()
        seg_t = steps[np.minimum(np.arange(seg_p.shape[1]) * hop + self.nperseg // 2, len(steps) - 1)]  # centre step of each segment
        for i, name in enumerate(self._taps.names):
            sink.figure(P.safe_tag("nn_eeg", name, "spectrogram"), PF.spectrogram_figure(seg_t, seg_f.cpu().numpy(), seg_p[i], title=f"Spectrogram {name}"), step)
        self.tracker.close()
        sink.figure("nn_eeg/phase_timeline", PF.phase_timeline_figure([p.value for p in self.phases], times=_since_first(self._ring.times()), durations=self.tracker.summary()), step)
        sink.flush()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.update(
            {
                "ring": None if self._ring is None else self._ring.state_dict(),
                **self._states.state_dict(),  # "classifier", "cadence_ref", "cpu_time", "state_accuracy", "label_counts"
                **(ShiftBaseline() if self._spectra is None else self._spectra).state_dict(),  # "band_baseline", "baseline_windows"
                "tracker": self.tracker.state_dict(),
                "train_batches": self._train_batches,
                "layers": None if self._taps is None else list(self._taps.names),
                **({"train_history": None} if self._detector is None else self._detector.state_dict()),
                "run": (self._run_code, self._run_len),
                "flag_history": [(step, sorted(layers)) for step, layers in self.flag_history],
            }
        )
        return state

    def _layers_ready(self) -> bool:
        return self._ring is not None


    def _apply_state(self, state: Mapping[str, Any]) -> None:
        saved_layers = state.get("layers")
        if saved_layers is not None and list(saved_layers) != list(self._taps.names):
            rank_zero_warn(f"NNEEGCallback: checkpoint layers {saved_layers} differ from the tapped layers {self._taps.names}; signal history not restored.")
        else:
            if state.get("ring") is not None:
                self._ring.load_state_dict(state["ring"])
                self._latest = self._ring.ordered(1)[:, 0].clone() if self._ring.count else None
            self._detector.load_state_dict(state)
            run_code, run_len = state.get("run", (-1, 0))
            self._run_code, self._run_len = int(run_code), int(run_len)
        refused = self._states.load_state_dict(state, self._ring)
        if refused is not None:
            rank_zero_warn(f"NNEEGCallback: state classifier not restored ({refused}); it recalibrates.")
        self._spectra.load_state_dict(state)
        self.tracker.load_state_dict(state.get("tracker", {}))
        self._train_batches = int(state.get("train_batches", 0))
        self.flag_history.clear()
        for step, layers in state.get("flag_history", []):
            self.flag_history.append((int(step), frozenset(layers)))
