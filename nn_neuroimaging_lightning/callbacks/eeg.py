"""NN-EEG: per-layer activity as time series, spectra, band powers, operational states, anomalies."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning._host import HostMirror
from nn_neuroimaging_lightning.callbacks._base import AnomalyEvent, MonitorCallback
from nn_neuroimaging_lightning.callbacks.phases import Phase, PhaseTracker
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
# Kinds evaluated on every step, in the column order of the packed per-step flag tensor.
_STEP_KINDS: Tuple[str, ...] = ("non_finite", "explosion", "collapse")

_PHASE_TO_STATE = {
    Phase.TRAIN: FST.OperationalState.TRAINING,
    Phase.VALIDATE: FST.OperationalState.INFERENCE,
    Phase.TEST: FST.OperationalState.INFERENCE,
    Phase.PREDICT: FST.OperationalState.INFERENCE,
    Phase.SANITY_CHECK: FST.OperationalState.INFERENCE,
    Phase.IDLE: FST.OperationalState.IDLE,
    Phase.ERROR: FST.OperationalState.ERROR,
}
_LOOP_PHASE = {"train": Phase.TRAIN, "validation": Phase.VALIDATE, "test": Phase.TEST, "predict": Phase.PREDICT}


class NNEEGCallback(MonitorCallback):
    r"""Watch each tapped layer's activity as a time series, like EEG electrodes on a brain.

    One sample per model forward and layer, :math:`s_t = \frac{1}{N}\sum_i |a_{i,t}|`, goes into a
    ring buffer on the activation's device (no host synchronisation per step). On every step the
    newest sample is checked for non-finite values, explosion (robust z-score of log-activity
    against the same phase's recent history) and collapse (activity ~0 against that history).
    Every ``analysis_every_n_steps`` training steps (default: the trainer's
    ``log_every_n_steps``) the window's Welch spectrum and band powers are computed and logged,
    and checked for a spectral shift against the calibrated baseline. Every ``state_window``
    samples, a window of one phase is classified into training / inference / idle / error by an
    online classifier that sees only signal features; its accuracy against the Lightning
    lifecycle is logged as ``nn_eeg/state_accuracy``.

    Args:
        layers: which modules to tap: ``None`` (every leaf module owning parameters, norm layers
            excluded), a name glob, a ``"re:"`` regex, a module type, or a list of these.
        window: ring-buffer length in samples (forwards) per layer.
        fs: nominal sampling rate in Hz (one forward = ``1/fs`` s of virtual time).
        nperseg: Welch segment length (samples).
        noverlap: Welch overlap (default ``nperseg // 2``).
        bands: ``{name: (lo_hz, hi_hz)}`` (default: delta, theta, alpha, beta, gamma).
        state_window: samples per window classified into an operational state.
        stop_on: anomaly kinds that set ``trainer.should_stop`` in the step they are detected.
        explosion_z: robust z-score of log-activity above which a layer explodes.
        collapse_ratio: activity below ``collapse_ratio`` times the recent median is a collapse.
        spectral_shift_threshold: Hellinger distance of relative band powers from the baseline.
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

    Raises:
        ValueError: an argument is out of range, or a band has no frequency bin at the
            resolution ``fs / nperseg``.

    Example::

        >>> eeg = NNEEGCallback(stop_on=("non_finite", "explosion"))
        >>> eeg.stop_on
        ('non_finite', 'explosion')
    """

    source = "nn_eeg"

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
        explosion_z: float = 8.0,
        collapse_ratio: float = 1e-3,
        spectral_shift_threshold: float = 0.5,
        state_confidence: float = 0.95,
        min_history: int = 16,
        idle_threshold: float = 0.25,
        idle_max_samples: int = 32,
        analysis_every_n_steps: Optional[int] = None,
        output_selector: Optional[Callable[[Any], Tensor]] = None,
        panels: bool = True,
        max_events: int = 1000,
    ) -> None:
        super().__init__(max_events=V.check_int("max_events", max_events, 1))
        self.layer_selection = layers
        self.window = V.check_int("window", window, 2)
        self.fs = V.check_float("fs", fs, 0.0, strict_min=True)
        self.nperseg = V.check_int("nperseg", nperseg, 2)
        if self.nperseg > self.window:
            raise ValueError(f"`nperseg` ({nperseg}) must not exceed `window` ({window}): a Welch segment must fit in the window.")
        if noverlap is not None:
            V.check_int("noverlap", noverlap, 0, self.nperseg - 1)
        self.noverlap = noverlap
        self.bands: Dict[str, Tuple[float, float]] = dict(FS.DEFAULT_BANDS if bands is None else {k: tuple(v) for k, v in dict(bands).items()})
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
        self.panels = bool(panels)

        self.tracker = PhaseTracker(idle_threshold=self.idle_threshold)
        self.classifier = FST.StateClassifier(num_bands=len(self.bands))
        self._label_counts = np.zeros(len(FST.OperationalState), dtype=np.int64)  # host mirror of calibration
        self._trainer_ref: Optional[Trainer] = None
        self.state_accuracy = StateAccuracy()
        self._taps: Optional[ActivityTaps] = None
        self._ring: Optional[RingBuffer] = None
        self._latest: Optional[Tensor] = None  # (layers,) newest sample
        self._step_mirror = HostMirror()
        self._state_mirror = HostMirror()
        self._band_baseline: Optional[Tensor] = None  # (layers, bands) relative powers, EMA
        self._baseline_windows = 0
        self._latest_bands: Optional[Tensor] = None  # (layers, bands) relative, newest analysis
        self._latest_psd: Optional[Tuple[Tensor, Tensor]] = None
        self._mode_modules: List[torch.nn.Module] = []
        self._pending_state: Optional[Dict[str, Any]] = None
        self._train_batches = 0
        self._run_code = -1  # phase code of the current contiguous run of samples
        self._run_len = 0
        self._classify_due = False
        self._train_history: Optional[RingBuffer] = None  # training samples only: the explosion baseline
        self._fresh = False  # a sample arrived since the last judgement
        self._last_batch_end: Optional[float] = None
        self._interval_ema: Optional[float] = None
        self._step_anomaly: Optional[Tensor] = None
        self._stopped_by: Optional[str] = None
        self._layout_written = False
        self._self_time_ns = 0
        self._self_time_steps = 0

    # ------------------------------------------------------------------ public read-only surface
    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=repr(self.layer_selection), window=self.window)

    @property
    def layers(self) -> List[str]:
        """Names of the tapped modules, in forward order (selection order before the first forward)."""
        if self._taps is None:
            return []
        return [self._taps.names[i] for i in self._taps.forward_order()]

    def signal(self, name: str) -> Tensor:
        """The layer's recent activity series, oldest sample first (1-D, at most ``window`` long)."""
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
        if self._latest_bands is None or self._taps is None:
            return {}
        values = self._latest_bands.detach().cpu().numpy()
        return {n: dict(zip(self.bands, map(float, values[i]))) for i, n in enumerate(self._taps.names)}

    @property
    def self_time_fraction(self) -> Dict[str, float]:
        """Seconds spent inside this callback's hooks per step (for the overhead benchmark)."""
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
            self._train_history = RingBuffer(len(modules), max(2 * self.min_history, 32))
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None
        self._mode_modules = [m for m in pl_module.modules() if m is not pl_module]
        self._taps.attach(root=pl_module, on_forward_end=self._commit)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._finish(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.tracker.mark_error()
        phase = Phase.ERROR.value
        self._record([
            AnomalyEvent(trainer.global_step, phase, "<model>", "exception", float("nan"), self.source,
                         detail=f"{type(exception).__name__}: {exception}"[:500])
        ])
        self._finish(trainer)

    def _finish(self, trainer: Trainer) -> None:
        if self._taps is not None:
            self._taps.detach()
            self._taps.discard()
        self.tracker.close()
        writer = self._tensorboard(trainer) if self.panels else None
        if writer is not None:
            writer.flush()

    # ------------------------------------------------------------------ lifecycle → phases
    def _loop_start(self, trainer: Trainer, phase: Phase) -> None:
        if phase is Phase.VALIDATE and trainer.sanity_checking:
            phase = Phase.SANITY_CHECK
        self.tracker.loop_start(phase)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.TRAIN)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tracker.loop_end()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loop_start(trainer, Phase.VALIDATE)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Validation inside fit returns to the training loop.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.tracker.loop_start(Phase.TRAIN)
        elif trainer.state.fn == "fit":
            self.tracker.loop_end()
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
        self._batch_start(trainer)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start(trainer)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start(trainer)

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter_ns()
        self._train_batches += 1
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

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write_epoch_panels(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.state_accuracy.update_count:
            self._log(pl_module, "nn_eeg/state_accuracy", self.state_accuracy.compute(), on_step=False, on_epoch=True)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write_epoch_panels(trainer, pl_module)

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

    def _commit(self) -> None:
        """Root-module forward finished (or a batch ended with pending calls): write one sample."""
        sample = self._taps.sample()
        if sample is None:
            return
        self._push(sample, self.tracker.current, self._current_step)
        self._latest = sample
        self._fresh = True

    def _push(self, sample: Tensor, phase: Phase, step: int, wall_time: Optional[float] = None) -> None:
        """Write one sample; windows of ``state_window`` samples of one phase become due for states."""
        self._ring.push(sample, phase.code, step, wall_time)
        if phase.code != self._run_code:
            self._run_code, self._run_len = phase.code, 0
        self._run_len += 1
        if self._run_len % self.state_window == 0:
            self._classify_due = True

    @property
    def _current_step(self) -> int:
        return 0 if self._trainer_ref is None else self._trainer_ref.global_step

    @property
    def _calibrated(self) -> bool:
        """Host-side twin of ``classifier.calibrated`` (labels are known on the host: no sync)."""
        return int((self._label_counts >= self.classifier.min_count).sum()) >= 2

    def _batch_end(self, trainer: Trainer, pl_module: LightningModule, loss: Optional[Tensor], log: bool) -> None:
        if self._taps is None:
            return
        if self._taps.dirty:
            self._commit()
        now = time.perf_counter()
        if self._last_batch_end is not None:
            interval = now - self._last_batch_end
            if interval < self.idle_threshold:
                self._interval_ema = interval if self._interval_ema is None else 0.9 * self._interval_ema + 0.1 * interval
        self._last_batch_end = now
        self.tracker.batch_end(now)
        if self._latest is None or not self._fresh:
            return
        self._fresh = False
        phase = self.tracker.current
        flags, values, score = self._step_anomalies(loss, phase)
        self._step_mirror.push(torch.cat([flags.float(), values], dim=1), tag=(trainer.global_step, phase, self._ring.total))
        if log:
            anomaly = flags.any().float()
            self._log(pl_module, "nn_eeg/anomaly", anomaly, on_epoch=True, reduce_fx="max")
            self._log(pl_module, "nn_eeg/anomaly_score", score, on_epoch=True, reduce_fx="max")
        mismatch_events = self._mode_mismatch(trainer, pl_module, phase)
        events = self._read_step_events() + mismatch_events
        if self._classify_due:
            self._classify_due = False
            self._classify_window(trainer)
        events += self._read_state_events()
        self._record(events)
        self._maybe_stop(trainer, events)

    # ------------------------------------------------------------------ per-step anomalies
    def _step_anomalies(self, loss: Optional[Tensor], phase: Phase) -> Tuple[Tensor, Tensor, Tensor]:
        """``flags (layers+1, 3)``, ``values (layers+1, 3)``, ``score ()``; the last row is the loss.

        The baseline of a training sample is the recent training samples (kept in their own small
        ring, so validation loops do not flush it); the baseline of an inference sample is the
        samples of the same loop run before it (weights change between runs, not within one).
        """
        x = self._latest  # (layers,)
        if phase is Phase.TRAIN:
            history = self._train_history.ordered()  # (layers, n), excludes x
        else:
            n_run = min(self._run_len, self._ring.count)
            history = self._ring.ordered(n_run)[:, :-1]  # this run's samples before x
        valid = None
        judged = history.shape[1] >= self.min_history
        kind_flags, kind_values = FA.detect(
            x, history, valid, explosion_threshold=self.explosion_z, rel_floor=self.collapse_ratio
        )  # (4, layers) each, rows in FA.ANOMALY_KINDS order
        flags, values = kind_flags[:3].T, kind_values[:3].T  # (layers, 3): non_finite, explosion, collapse
        if not judged:
            # Too little same-phase history for a baseline: only non-finite values are judged.
            flags = torch.cat([flags[:, :1], torch.zeros_like(flags[:, 1:])], dim=1)
        loss_flags = torch.zeros((1, 3), dtype=torch.bool, device=x.device)
        loss_values = torch.zeros((1, 3), dtype=torch.float32, device=x.device)
        if loss is not None:
            loss = loss.detach().float().reshape(1)
            loss_flags = torch.cat([~torch.isfinite(loss), torch.zeros(2, dtype=torch.bool, device=x.device)]).reshape(1, 3)
            loss_values = torch.cat([loss, torch.zeros(2, device=x.device)]).reshape(1, 3)
        if phase is Phase.TRAIN:
            self._train_history.push(x, phase.code, self._current_step)
        flags = torch.cat([flags, loss_flags])
        values = torch.cat([values, loss_values])
        # Score: 0 when quiet, >= 1 once any detector fires, 10 for non-finite values (capped).
        z = torch.nan_to_num(values[:-1, 1], nan=0.0, posinf=10.0 * self.explosion_z, neginf=0.0)
        score = torch.maximum((z.max() if z.numel() else z.new_zeros(())) / self.explosion_z, flags.any().float())
        score = torch.where(flags[:, 0].any(), torch.full_like(score, 10.0), score.clamp(0.0, 10.0))
        return flags, values, score

    def _read_step_events(self) -> List[AnomalyEvent]:
        host, tag = self._step_mirror.read()
        if host is None:
            return []
        self._step_mirror.clear()
        step, phase, total = tag
        n = host.shape[1] // 2
        flags, values = host[:, :n] > 0.5, host[:, n:]
        if not flags.any():
            return []
        names = self._taps.names + ["<loss>"]
        events = []
        if flags[:, 0].any():
            # A non-finite step belongs to the error phase.
            self._ring.relabel(self._ring.total - total, Phase.ERROR.code)
            self.tracker.mark_error()
        for row, col in zip(*np.nonzero(flags)):
            events.append(AnomalyEvent(step, Phase.ERROR.value if col == 0 else phase.value, names[row], _STEP_KINDS[col], float(values[row, col]), self.source))
        return events

    def _mode_mismatch(self, trainer: Trainer, pl_module: LightningModule, phase: Phase) -> List[AnomalyEvent]:
        """Any module in training mode while an inference loop runs (dropout / batch-norm left on)."""
        if not phase.is_inference:
            return []
        offenders = [m for m in ([pl_module] + self._mode_modules) if m.training]
        if not offenders:
            return []
        names = {id(m): n for n, m in pl_module.named_modules()}
        first = names.get(id(offenders[0]), "") or "<model>"
        return [AnomalyEvent(trainer.global_step, phase.value, first, "state_mismatch", float(len(offenders)), self.source,
                             detail=f"{len(offenders)} module(s) in training mode during {phase.value}")]

    # ------------------------------------------------------------------ states
    def _classify_window(self, trainer: Trainer) -> None:
        ring = self._ring
        if ring.count < self.state_window:
            return
        codes = ring.phases(self.state_window)
        if not (codes == codes[0]).all():
            return  # a window that straddles two phases has no single label
        phase = Phase.from_code(codes[0])
        label = int(_PHASE_TO_STATE[phase])
        window = ring.ordered(self.state_window)  # (layers, state_window)
        features = FST.window_features(window, fs=self.fs, nperseg=self.nperseg, bands=self.bands).unsqueeze(0)
        labels = torch.full((1,), label, dtype=torch.long, device=features.device)
        if self._calibrated:
            proba = self.classifier.predict_proba(features)  # (1, 4)
            pred = proba.argmax(dim=1)
            self.state_accuracy.to(features.device)
            self.state_accuracy.update(pred, labels)
            self._state_mirror.push(torch.cat([proba[0], labels.float()]), tag=(trainer.global_step, phase))
        self.classifier.update(features, labels)
        self._label_counts[label] += 1

    def _read_state_events(self) -> List[AnomalyEvent]:
        host, tag = self._state_mirror.read()
        if host is None:
            return []
        self._state_mirror.clear()
        step, phase = tag
        proba, label = host[:-1], int(host[-1])
        pred = int(proba.argmax())
        if pred != label and proba[pred] >= self.state_confidence and phase.is_inference and pred == int(FST.OperationalState.TRAINING):
            return [AnomalyEvent(step, phase.value, "<model>", "state_mismatch", float(proba[pred]), self.source,
                                 detail=f"classifier sees {FST.OperationalState(pred).name.lower()} during {phase.value}")]
        return []

    # ------------------------------------------------------------------ spectra
    def _phase_window(self) -> Optional[Tensor]:
        """The newest samples of the current phase (up to ``window``), oldest first, or ``None``."""
        ring = self._ring
        phases = ring.phases()
        if not len(phases):
            return None
        idx = np.nonzero(phases == phases[-1])[0]
        if len(idx) < self.nperseg:
            return None
        data = ring.ordered()
        return data.index_select(1, torch.from_numpy(idx).to(data.device))

    def _analyse(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> None:
        window = self._phase_window()
        if window is None:
            return
        freqs, psd = FS.welch_psd(window, fs=self.fs, nperseg=self.nperseg, noverlap=self.noverlap)
        absolute = FS.band_powers(freqs, psd, self.bands)  # (layers, bands)
        relative = FS.band_powers(freqs, psd, self.bands, relative=True)
        self._latest_bands, self._latest_psd = relative, (freqs, psd)
        events: List[AnomalyEvent] = []
        if self.tracker.current is Phase.TRAIN:
            events = self._spectral_shift(trainer, relative)
        if log:
            names = self._taps.names
            for i, name in enumerate(names):
                for j, band in enumerate(self.bands):
                    self._log(pl_module, f"nn_eeg/{name}/band/{band}", relative[i, j])
                    self._log(pl_module, f"nn_eeg/{name}/band_abs/{band}", absolute[i, j])
            if self.state_accuracy.update_count:
                self._log(pl_module, "nn_eeg/state_accuracy", self.state_accuracy.compute())
        self._write_step_panels(trainer, freqs, psd)
        self._record(events)
        self._maybe_stop(trainer, events)

    def _spectral_shift(self, trainer: Trainer, relative: Tensor) -> List[AnomalyEvent]:
        finite = torch.isfinite(relative).all(dim=1, keepdim=True)
        if self._band_baseline is None:
            self._band_baseline = torch.where(finite, relative, torch.zeros_like(relative)).clone()
            self._baseline_windows = 1
            return []
        flagged, distance = FA.spectral_shift(relative, self._band_baseline, self.spectral_shift_threshold)  # (layers,)
        # The baseline needs a few windows before it is judged; it keeps adapting slowly afterwards.
        if self._baseline_windows >= 3:
            host = torch.stack([(flagged & finite.squeeze(1)).float(), distance]).cpu().numpy()
        else:
            host = None
        self._band_baseline = torch.where(finite, 0.9 * self._band_baseline + 0.1 * relative, self._band_baseline)
        self._baseline_windows += 1
        if host is None:
            return []
        return [AnomalyEvent(trainer.global_step, Phase.TRAIN.value, self._taps.names[i], "spectral_shift", float(host[1, i]), self.source)
                for i in np.nonzero(host[0] > 0.5)[0]]

    # ------------------------------------------------------------------ stopping
    def _maybe_stop(self, trainer: Trainer, events: List[AnomalyEvent]) -> None:
        if not self.stop_on:
            return
        hit = next((e for e in events if e.kind in self.stop_on), None)
        if self._reduce_decision(trainer, hit is not None) and not trainer.should_stop:
            trainer.should_stop = True
            self._stopped_by = hit.kind if hit is not None else "another rank"
            rank_zero_warn(f"NNEEGCallback stopped the run at step {trainer.global_step}: {self._stopped_by}" + (f" in `{hit.layer}`." if hit else "."))

    # ------------------------------------------------------------------ panels
    def _write_step_panels(self, trainer: Trainer, freqs: Tensor, psd: Tensor) -> None:
        writer = self._tensorboard(trainer) if self.panels else None
        if writer is None:
            return
        from nn_neuroimaging_lightning.panels import tensorboard as P

        if not self._layout_written:
            P.write_custom_scalars(writer, P.band_layout(self._taps.names, list(self.bands)))
            self._layout_written = True
        f = freqs.detach().cpu().numpy()
        p = psd.detach().cpu().numpy()
        for i, name in enumerate(self._taps.names):
            P.write_stacked_spectrum(writer, P.safe_tag("nn_eeg", name, "spectrum"), f, p[i], trainer.global_step)

    def _write_epoch_panels(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer = self._tensorboard(trainer) if self.panels else None
        if writer is None or self._ring is None or self._ring.count < self.nperseg:
            return
        from nn_neuroimaging_lightning.panels import figures as PF
        from nn_neuroimaging_lightning.panels import tensorboard as P

        step = trainer.global_step
        if self._latest_psd is not None:
            freqs, psd = (t.detach().cpu().numpy() for t in self._latest_psd)
            writer.add_figure("nn_eeg/spectrum", PF.spectrum_figure(freqs, {n: psd[i] for i, n in enumerate(self._taps.names)}, self.bands), step, close=True)
        data = self._ring.ordered()
        seg_f, seg_p = FS.segment_psd(data, fs=self.fs, nperseg=self.nperseg, noverlap=self.noverlap)  # (F,), (layers, S, F)
        seg_p = seg_p.detach().cpu().numpy()
        hop = self.nperseg - (self.nperseg // 2 if self.noverlap is None else self.noverlap)
        steps = self._ring.steps()
        seg_t = steps[np.minimum(np.arange(seg_p.shape[1]) * hop + self.nperseg // 2, len(steps) - 1)]  # centre step of each segment
        for i, name in enumerate(self._taps.names):
            writer.add_figure(P.safe_tag("nn_eeg", name, "spectrogram"), PF.spectrogram_figure(seg_t, seg_f.cpu().numpy(), seg_p[i], title=f"Spectrogram {name}"), step, close=True)
        self.tracker.close()
        writer.add_figure("nn_eeg/phase_timeline", PF.phase_timeline_figure([p.value for p in self.phases], times=self._ring.times(), durations=self.tracker.summary()), step, close=True)
        if self._events:
            rows = [(e.step, e.phase, e.layer, e.kind, f"{e.value:.4g}") for e in list(self._events)[-50:]]
            writer.add_text("nn_eeg/events", P.table_text(rows, ("step", "phase", "layer", "kind", "value")), step)
        writer.flush()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.update(
            {
                "ring": None if self._ring is None else self._ring.state_dict(),
                "classifier": self.classifier.state_dict(),
                "state_accuracy": {k: v.detach().cpu() for k, v in self.state_accuracy.metric_state.items()},
                "band_baseline": None if self._band_baseline is None else self._band_baseline.detach().cpu(),
                "baseline_windows": self._baseline_windows,
                "tracker": self.tracker.state_dict(),
                "train_batches": self._train_batches,
                "label_counts": self._label_counts.tolist(),
                "layers": None if self._taps is None else list(self._taps.names),
            }
        )
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self._ring is None:
            self._pending_state = dict(state_dict)  # applied in `setup`, once the layers are known
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        saved_layers = state.get("layers")
        if saved_layers is not None and list(saved_layers) != list(self._taps.names):
            rank_zero_warn(f"NNEEGCallback: checkpoint layers {saved_layers} differ from the tapped layers {self._taps.names}; signal history not restored.")
        elif state.get("ring") is not None:
            self._ring.load_state_dict(state["ring"])
            self._latest = self._ring.ordered(1)[:, 0].clone() if self._ring.count else None
        if state.get("classifier") is not None:
            self.classifier.load_state_dict(state["classifier"])
        for k, v in dict(state.get("state_accuracy", {})).items():
            setattr(self.state_accuracy, k, v.clone())
        self._band_baseline = state.get("band_baseline")
        self._baseline_windows = int(state.get("baseline_windows", 0))
        self.tracker.load_state_dict(state.get("tracker", {}))
        self._train_batches = int(state.get("train_batches", 0))
        self._label_counts[:] = np.asarray(state.get("label_counts", self._label_counts))
