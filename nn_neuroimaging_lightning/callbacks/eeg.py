"""NN-EEG: per-layer activity as time series, spectra, band powers, operational states, anomalies."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning.callbacks._base import AnomalyEvent, MonitorCallback
from nn_neuroimaging_lightning.config import EEGConfig
from nn_neuroimaging_lightning.eeg import EEGEngine, StateWindows
from nn_neuroimaging_lightning.eeg.engine import check_signal_args, empty_state
from nn_neuroimaging_lightning.phases import Phase, PhaseTracker
from nn_neuroimaging_lightning.functional import anomalies as FA
from nn_neuroimaging_lightning.functional import spectral as FS
from nn_neuroimaging_lightning.functional import states as FST
from nn_neuroimaging_lightning.metrics.eeg import StateAccuracy
from nn_neuroimaging_lightning.panels.eeg import write_eeg_epoch_panels, write_eeg_step_panels
from nn_neuroimaging_lightning.panels.tensorboard import safe_tag
from nn_neuroimaging_lightning.taps import LayerSelector, select_layers

#: Anomaly kinds NN-EEG can raise; ``stop_on`` takes any of them.
EEG_ANOMALY_KINDS: Tuple[str, ...] = ("non_finite", "explosion", "collapse", "spectral_shift", "state_mismatch", "exception")


class NNEEGCallback(MonitorCallback):
    r"""Watch each tapped layer's activity as a time series, like EEG electrodes on a brain.

    One sample per model forward and layer, :math:`s_t = \frac{1}{N}\sum_i |a_{i,t}|`, kept on the device. Every
    training step is judged (non-finite, explosion, collapse; before its optimizer update, so
    ``stop_on`` stops the run in that step); every ``analysis_every_n_steps`` steps the window's Welch
    spectrum and band powers are logged and checked for a spectral shift (their mean over a training epoch at its end,
    ``nn_eeg/<layer>/band_epoch/<band>``, a :class:`~nn_neuroimaging_lightning.metrics.eeg.BandPower`); windows of ``state_window``
    samples are classified into training / inference / idle / error from the signal alone and the
    accuracy against the Lightning lifecycle is logged as ``nn_eeg/state_accuracy``. :attr:`flag_history`
    and :meth:`band_power` feed the cross-modal callback. The measuring is done by the plain-PyTorch
    :class:`~nn_neuroimaging_lightning.eeg.engine.EEGEngine` (its docstring holds the details); this class
    maps the Lightning hooks onto it and logs what it returns.

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
        log_anomaly_every_step: call ``pl_module.log`` for ``nn_eeg/anomaly`` and ``nn_eeg/anomaly_score``
            on every training step. Default ``False``: every step is judged and folded into a running
            max, logged on the trainer's logging steps, at once on a step with an anomaly and on the
            epoch's last batch: the same epoch value for ``EarlyStopping``, no anomalous step missing
            from the curve, and Lightning's ~0.15-0.3 ms per skipped call saved (``benchmarks/eeg_overhead.py``).

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
        super().__init__(max_events=V.check_int("max_events", max_events, 1), flag_history=V.check_int("flag_history", flag_history, 1))
        self.layer_selection = V.check_layer_selector("layers", layers)
        for name, value in check_signal_args(window, fs, nperseg, bands, explosion_z, collapse_ratio, spectral_shift_threshold,
                                             min_history).items():
            setattr(self, name, value)  # window, fs, nperseg, bands, explosion_z, collapse_ratio, spectral_shift_threshold, min_history
        self.noverlap = V.check_int("noverlap", noverlap, 0, self.nperseg - 1, optional=True)
        self.state_window = V.check_int("state_window", state_window, 4, self.window)
        self.stop_on = V.check_choices("stop_on", stop_on, EEG_ANOMALY_KINDS)
        self.state_confidence = V.check_float("state_confidence", state_confidence, 0.0, 1.0)
        self.idle_threshold = V.check_float("idle_threshold", idle_threshold, 0.0, strict_min=True)
        self.idle_max_samples = V.check_int("idle_max_samples", idle_max_samples, 0, self.window)
        self.analysis_every_n_steps = V.check_int("analysis_every_n_steps", analysis_every_n_steps, 1, optional=True)
        self.output_selector = V.check_callable("output_selector", output_selector)
        self.panels = V.check_bool("panels", panels)
        self.log_anomaly_every_step = V.check_bool("log_anomaly_every_step", log_anomaly_every_step)

        self.tracker = PhaseTracker(idle_threshold=self.idle_threshold)
        # Built here, not in `setup`: it depends on the arguments only (and `classifier` is reachable before a fit).
        self._states = StateWindows(self.window, self.state_window, self.fs, self.nperseg, self.bands,
                                    confidence=self.state_confidence, source=self.source)
        self._judge_args = dict(explosion_z=self.explosion_z, collapse_ratio=self.collapse_ratio, min_history=self.min_history)
        self._engine: Optional[EEGEngine] = None  # taps, samples, judge, spectra: built in `setup`
        self._trainer_ref: Optional[Trainer] = None
        self._judged: Optional[Tuple[Any, bool]] = None  # (score, flagged) of a step judged in on_before_backward
        self._band_tags: Dict[str, List[str]] = {}  # kind -> (layers * bands,) scalar keys (`_tags`)
        self._self_time_ns, self._self_time_steps = 0, 0  # ns in the training hooks, training steps timed (`self_time`)

    # ------------------------------------------------------------------ public read-only surface
    def _state_key_fields(self) -> Dict[str, Any]:
        return {"layers": repr(self.layer_selection), "window": self.window}

    def signal(self, name: str) -> Tensor:
        """The layer's recent activity series, oldest sample first (1-D, at most ``window`` long).

        Raises:
            RuntimeError: before a Trainer has set the callback up.
            ValueError: ``name`` is not a tapped layer.
        """
        if self._engine is None:
            raise RuntimeError("`signal()` has no data yet: the callback has not been set up by a Trainer.")
        return self._engine.signal(name)

    @property
    def phases(self) -> List[Phase]:
        """The recent samples' phase labels, aligned with :meth:`signal`."""
        return [] if self._engine is None else [Phase.from_code(c) for c in self._ring.phases()]

    @property
    def steps(self) -> np.ndarray:
        """The recent samples' global steps, aligned with :meth:`signal`."""
        return np.zeros(0, dtype=np.int64) if self._engine is None else self._ring.steps()

    @property
    def band_powers(self) -> Dict[str, Dict[str, float]]:
        """Relative band powers of the latest analysis: ``{layer: {band: fraction}}`` (host copy)."""
        return {} if self._engine is None else self._engine.spectra.band_powers

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
        return {} if self._engine is None else self._engine.spectra.band_power(self._ring, band, relative)

    @property
    def flagged_layers(self) -> FrozenSet[str]:
        """Layers flagged by any EEG anomaly in the latest entry of :attr:`flag_history`."""
        return self.flag_history[-1][1] if self.flag_history else frozenset()

    @property
    def self_time(self) -> Dict[str, float]:
        """Time in this callback's training hooks: ``self_time_ns_per_step`` (mean ns per training step), ``steps``."""
        steps = max(self._self_time_steps, 1)
        return {"self_time_ns_per_step": self._self_time_ns / steps, "steps": self._self_time_steps}

    @property
    def silent_layers(self) -> List[str]:
        """Tapped modules that have never fired: reported, never flagged."""
        return [] if self._taps is None else self._taps.silent()

    @property
    def classifier(self) -> FST.StateClassifier:
        """The online state classifier."""
        return self._states.classifier

    @property
    def state_accuracy(self) -> StateAccuracy:
        """Balanced accuracy of the classifier's predictions against the Lightning lifecycle."""
        return self._states.accuracy

    # the engine's taps and ring (the base, tests and benchmarks read them)
    _taps = property(lambda self: None if self._engine is None else self._engine.taps)
    _ring = property(lambda self: None if self._engine is None else self._engine.ring)

    # ------------------------------------------------------------------ set-up and teardown
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remember_trainer(trainer)
        self._trainer_ref = trainer
        if self._engine is None:
            self._engine = EEGEngine(
                select_layers(pl_module, self.layer_selection), self._states, self.tracker, window=self.window, fs=self.fs,
                nperseg=self.nperseg, noverlap=self.noverlap, bands=self.bands, shift_threshold=self.spectral_shift_threshold,
                idle_threshold=self.idle_threshold, idle_max_samples=self.idle_max_samples, judge_args=self._judge_args,
                output_selector=self.output_selector, source=self.source)
        self._apply_pending_state()
        self._engine.watch_modes(pl_module)
        self._taps.attach(root=pl_module, on_forward_end=self._commit)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.tracker.mark_error()
        self._record([AnomalyEvent(trainer.global_step, Phase.ERROR.value, "<model>", "exception", float("nan"), self.source,
                                   detail=f"{type(exception).__name__}: {exception}"[:500])])
        self._finish(trainer)

    def _finish(self, trainer: Trainer) -> None:
        if self._engine is not None:
            self._record(self._engine.collect())  # a lagged accelerator verdict
        self.tracker.close()
        super()._finish(trainer)

    # ------------------------------------------------------------------ lifecycle → phases
    def _loop_start(self, trainer: Trainer, phase: Phase) -> None:
        if phase is Phase.VALIDATE and trainer.sanity_checking:
            phase = Phase.SANITY_CHECK
        self._states.loop_start()
        self.tracker.loop_start(phase)

    def _loop_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tracker.loop_end()

    on_train_end = on_test_end = on_predict_end = _loop_end
    on_train_start, on_test_start, on_predict_start = (
        lambda self, trainer, pl_module, _phase=phase: self._loop_start(trainer, _phase) for phase in (Phase.TRAIN, Phase.TEST, Phase.PREDICT))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.VALIDATE)
        self._engine.recorder.val_samples = 0  # forwards of this validation loop

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Validation inside fit returns to the training loop; the sanity check precedes it.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.tracker.loop_start(Phase.TRAIN)
        else:
            self.tracker.loop_end()

    # ------------------------------------------------------------------ batches
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter_ns()
        self._batch_start(trainer)
        self._self_time_ns += time.perf_counter_ns() - t0

    on_validation_batch_start = on_test_batch_start = on_predict_batch_start = lambda self, trainer, *args, **kwargs: self._batch_start(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter_ns()
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        self._batch_end(trainer, pl_module, loss if isinstance(loss, Tensor) else None, batch_idx)
        if self._engine is not None:
            self._engine.train_batches += 1
            if self._engine.train_batches % (self.analysis_every_n_steps or max(trainer.log_every_n_steps, 1)) == 0:
                self._analyse(trainer, pl_module, log=True)
        self._self_time_ns += time.perf_counter_ns() - t0
        self._self_time_steps += 1

    on_validation_batch_end = on_test_batch_end = on_predict_batch_end = (
        lambda self, trainer, pl_module, *args, **kwargs: self._batch_end(trainer, pl_module, None, None))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush_windows(trainer)
        if self._engine is not None and (mean := self._engine.spectra.epoch_band_powers()) is not None:  # all ranks
            self._log_plot_scalars(trainer, pl_module, self._tags("band_epoch"), mean.reshape(-1), on_step=False, on_epoch=True)
        self._write_epoch_panels(trainer, pl_module)
        if silent := self.silent_layers:
            self._warn_once("silent", f"NNEEGCallback: tapped module(s) {silent} never ran a forward in a whole epoch (their"
                            " weights may be used without calling them, e.g. MultiheadAttention.out_proj); they are not judged."
                            " Pass `layers=` to leave them out.")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush_windows(trainer)
        if trainer.sanity_checking:
            return
        if self.state_accuracy.update_count:
            self._log(pl_module, "nn_eeg/state_accuracy", self.state_accuracy.compute(), on_step=False, on_epoch=True, sync_dist=False)
        else:  # one notice, the first time, saying why
            self._warn_once("state_accuracy", lambda: "NNEEGCallback: `nn_eeg/state_accuracy` not logged at this validation end"
                            f" (undefined): {self._states.why_no_accuracy(self._engine.recorder.val_samples)}.")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush_windows(trainer)
        self._write_epoch_panels(trainer, pl_module)

    on_predict_epoch_end = lambda self, trainer, pl_module: self._flush_windows(trainer)

    def _flush_windows(self, trainer: Trainer) -> None:
        events = [] if self._engine is None else self._engine.classify(trainer.global_step)
        self._record(events)
        self._maybe_stop(trainer, events)

    def _batch_start(self, trainer: Trainer) -> None:
        if self._engine is not None:
            self._engine.batch_start(time.perf_counter(), trainer.global_step)  # a long gap is written as idle samples

    def _commit(self, step: Optional[int] = None) -> None:
        """Write one sample of ``step`` (default: ``trainer.global_step`` now, right at the root forward's end
        and in ``on_before_backward``): a root forward ended, or a batch ended with pending calls."""
        t0 = time.perf_counter_ns()
        self._engine.commit((0 if self._trainer_ref is None else self._trainer_ref.global_step) if step is None else step)
        self._self_time_ns += time.perf_counter_ns() - t0

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        """Judge the training step's forward and loss before its backward and optimizer update: the step is
        still the forward's (a ``training_step`` calling ``self.model(...)`` never ends the root forward),
        and a stop decided here vetoes the update (:meth:`MonitorCallback.on_before_optimizer_step`). With
        ``stop_on`` on an accelerator the verdict is read at once (one host sync per step); else one step late."""
        if self._engine is None or self._judged is not None:
            return
        if self._taps.dirty:
            self._commit()
        if not self._engine.recorder.fresh:
            return
        t0 = time.perf_counter_ns()
        score, events = self._engine.judge(loss, sync=bool(self.stop_on))
        self._judged = (score, bool(events))
        if events:
            self._record(events)
        if events or (bool(self.stop_on) and trainer.world_size > 1):
            self._maybe_stop(trainer, events)
        self._self_time_ns += time.perf_counter_ns() - t0

    def _batch_end(self, trainer: Trainer, pl_module: LightningModule, loss: Optional[Tensor], batch_idx: Optional[int]) -> None:
        """A batch's end; a training batch (``batch_idx`` given) logs the anomaly keys."""
        if self._engine is None:
            return
        judged, self._judged = self._judged, None
        if self._taps.dirty:
            self._commit(self._event_step(trainer))
        out = self._engine.end_batch(time.perf_counter(), loss, judged, lambda: trainer.global_step)
        # Under DDP with `stop_on`, the stop decision is a collective: every rank must take part on
        # every batch, whether or not it found an event itself (else a NaN on one rank hangs the run).
        collective = bool(self.stop_on) and trainer.world_size > 1
        score, flagged, events = (None, False, []) if out is None else out
        if batch_idx is not None and out is not None:
            self._log_anomaly(trainer, pl_module, score, flagged, batch_idx + 1)
        if events:
            self._record(events)
        if events or collective:
            self._maybe_stop(trainer, events)

    def _log_anomaly(self, trainer: Trainer, pl_module: LightningModule, score: Any, flagged: bool, epoch_batches: int) -> None:
        """``nn_eeg/anomaly`` (0/1) and ``nn_eeg/anomaly_score``, epoch-reduced by max: every step with
        ``log_anomaly_every_step``, else the running max (:meth:`MonitorCallback._running_max`)."""
        if not self.log_anomaly_every_step:
            score = self._running_max("nn_eeg/anomaly_score", score, flagged, trainer, epoch_batches)
            if score is None:
                return
        anomaly = float(score >= 1.0) if isinstance(score, float) else (score >= 1.0).float()
        self._log(pl_module, "nn_eeg/anomaly", anomaly, on_epoch=True, reduce_fx="max")
        self._log(pl_module, "nn_eeg/anomaly_score", score, on_epoch=True, reduce_fx="max")

    # ------------------------------------------------------------------ spectra
    def _analyse(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> None:
        self._flush_windows(trainer)
        events = self._engine.analyse(trainer.global_step)
        if events is None:  # fewer than `nperseg` samples of this phase
            return
        spectra = self._engine.spectra
        relative, (freqs, psd) = spectra.latest_bands, spectra.latest_psd  # (layers, bands); (F,), (layers, F)
        if log:
            # `band_power()` / `band_powers` give them in Python
            self._log_plot_scalars(trainer, pl_module, self._tags("band"), relative.reshape(-1))  # (layers * bands,)
            if self.state_accuracy.update_count:
                self._log(pl_module, "nn_eeg/state_accuracy", self.state_accuracy.compute())
        sink = self._panels(trainer)
        if sink is not None:
            write_eeg_step_panels(sink, self._taps.names, self.bands, freqs, psd, trainer.global_step)
        self._record(events)
        self._maybe_stop(trainer, events)
        if self.tracker.loop is Phase.TRAIN:
            # One entry per training analysis window: every layer flagged since the previous one.
            self.flag_history.append((trainer.global_step, self._engine.take_window_flags()))

    def _tags(self, kind: str) -> List[str]:
        """``nn_eeg/<layer>/<kind>/<band>`` for every layer and band, row-major (built once per kind). Module names
        may hold any character but "." (e.g. "/", spaces): the custom-scalars layout's safe tags, never a path."""
        if kind not in self._band_tags:
            self._band_tags[kind] = [safe_tag("nn_eeg", name, kind, band) for name in self._taps.names for band in self.bands]
        return self._band_tags[kind]

    def _record(self, events: List[AnomalyEvent]) -> None:
        """Keep and write the events; layers they flag go to :attr:`flag_history`."""
        if not events:
            return
        super()._record(events)
        flagged = frozenset() if self._engine is None else self._engine.note_flags(events)
        self.flag_history.append((events[-1].step, flagged))

    def _write_epoch_panels(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sink = self._panels(trainer)
        if sink is None or self._engine is None:
            return
        spectra, full = self._engine.spectra, self._ring.count >= self.nperseg  # else too few samples: the events table only
        write_eeg_epoch_panels(sink, trainer.global_step, self._events, self._taps.names, self.bands,
                               *((spectra.latest_psd, spectra.spectrogram(self._ring), self._engine.timeline()) if full else ()))

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), **(empty_state(self._states, self.tracker) if self._engine is None else self._engine.state_dict())}

    def _layers_ready(self) -> bool:
        return self._engine is not None

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        for why in self._engine.load_state_dict(state):
            rank_zero_warn(f"NNEEGCallback: {why}")
