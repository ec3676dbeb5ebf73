"""NN-EEG on a served model in plain PyTorch: no Trainer, the same taps and the same functional core.

:class:`Monitor` taps a model's layers like :class:`~nn_neuroimaging_lightning.NNEEGCallback`
(:class:`~nn_neuroimaging_lightning.taps.ActivityTaps` write one ``s_t = mean |a|`` sample per
root-model forward into a :class:`~nn_neuroimaging_lightning.taps.RingBuffer`). The first
``calibrate`` forwards are taken as a healthy stream and become the baseline; every later forward
is judged against it by :class:`~nn_neuroimaging_lightning.eeg.detector.StepDetector`
(``non_finite``, ``explosion``, ``collapse``: the engine NNEEGCallback judges its steps with, on
:func:`~nn_neuroimaging_lightning.functional.anomalies.baseline_coefficients` and
:func:`~nn_neuroimaging_lightning.functional.anomalies.judge`, with the same defaults), and :meth:`Monitor.check` compares the band powers
of the recent window with the calibration window's
(:func:`~nn_neuroimaging_lightning.functional.spectral.welch_psd`,
:func:`~nn_neuroimaging_lightning.functional.spectral.band_powers`,
:func:`~nn_neuroimaging_lightning.functional.anomalies.spectral_shift`). No formula is written here.

Host synchronisation: none inside a forward beyond reading the ``(3 * layers + 1,)`` judgement block.
On CPU the sample is read through ``Tensor.numpy()`` (shared memory, no dispatch), so the verdict
of a forward is known when the forward returns. On an accelerator it is copied to the host with a
non-blocking copy (:class:`~nn_neuroimaging_lightning._host.HostMirror`) and read at the next
forward, which first waits for that copy's event (the host runs at most one forward ahead of the
device): events arrive one forward late but carry the index of the forward that produced them;
:meth:`Monitor.flush` (called by :meth:`Monitor.detach`) collects the last one. :meth:`Monitor.check`
reads its distances on the host (call it between requests, not in the hot path).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning.eeg.detector import Baseline, StepDetector, Verdict
from nn_neuroimaging_lightning.eeg.engine import check_signal_args
from nn_neuroimaging_lightning.events import AnomalyEvent
from nn_neuroimaging_lightning.phases import Phase
from nn_neuroimaging_lightning.functional import anomalies as FA
from nn_neuroimaging_lightning.functional import spectral as FS
from nn_neuroimaging_lightning.taps import ActivityTaps, LayerSelector, RingBuffer, select_layers

__all__ = ["Monitor", "MONITOR_ANOMALY_KINDS"]

#: Kinds a :class:`Monitor` raises: the per-forward rows of ``detect`` plus the spectral check.
MONITOR_ANOMALY_KINDS: Tuple[str, ...] = FA.ANOMALY_KINDS  # non_finite, explosion, collapse, spectral_shift


class Monitor:
    r"""Watch a served model's layers as EEG channels and flag drifted or corrupted input streams.

    Each tapped layer gives one sample per forward of ``model``,
    :math:`s_t = \frac{1}{N}\sum_i |a_{i,t}|`. The first ``calibrate`` forwards fill the baseline;
    every later forward ``t`` is judged per layer against it:

    .. math::
        z_l = \frac{\log s_{l,t} - \mathrm{med}\log b_l}{\max(1.4826\,\mathrm{MAD}\log b_l,\ 0.5)} > z^*
        \;(\text{explosion}), \qquad
        s_{l,t} \le r\,\mathrm{med}\, b_l \;(\text{collapse}), \qquad
        s_{l,t} \notin \mathbb{R} \;(\text{non\_finite})

    (a tapped module that never runs, e.g. ``nn.MultiheadAttention.out_proj``, is listed in
    :attr:`silent_layers` and not judged), and :meth:`check` flags a layer whose relative band powers over the recent window are at
    Hellinger distance above ``spectral_shift_threshold`` from the calibration window's:

    .. math::
        H(p_l, q_l) = \sqrt{1 - \textstyle\sum_b \sqrt{p_{lb}\, q_{lb}}}

    Events are :class:`~nn_neuroimaging_lightning.callbacks._base.AnomalyEvent` with
    ``source="monitor"``, ``phase="predict"`` and ``step`` = the 0-based index of the forward
    (counted from the first forward seen by this monitor, calibration included).

    Args:
        model: the served ``nn.Module``.
        layers: modules to tap (see :func:`~nn_neuroimaging_lightning.taps.select_layers`);
            ``None`` taps :func:`~nn_neuroimaging_lightning.taps.default_layers` (the tap rule shared
            with the callbacks).
        window: ring-buffer length in forwards (for :meth:`signal` and :meth:`check`).
        fs: nominal sampling rate in Hz (one forward = ``1/fs`` s of virtual time).
        nperseg: Welch segment length.
        bands: ``{name: (lo_hz, hi_hz)}``; default delta, theta, alpha, beta, gamma.
        explosion_z: robust z-score of log-activity above which a layer explodes.
        collapse_ratio: activity at or below this fraction of the baseline median is a collapse.
        spectral_shift_threshold: Hellinger distance in ``(0, 1]`` flagged by :meth:`check`.
        min_history: finite calibration samples a layer needs before it is judged.
        calibrate: forwards of the healthy stream taken as the baseline (at least ``nperseg`` and
            ``min_history``).
        on_anomaly: ``on_anomaly(events)`` called with the new events of a forward or a check.
        check_every: run :meth:`check` every this many judged forwards (``None``: only on request).
        output_selector: picks the tensor from tuple/dict module outputs (default: the first).
        max_events: events kept in :attr:`events`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range, a band has no frequency bin at ``fs / nperseg``,
            or ``layers`` matches no module (the message lists the available ones).

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> g = torch.Generator().manual_seed(0)
        >>> with Monitor(net, calibrate=64) as mon:
        ...     for t in range(80):
        ...         x = torch.randn(16, 4, generator=g) * (200.0 if t >= 70 else 1.0)
        ...         _ = net(x)
        >>> mon.layers
        ['0', '2']
        >>> sorted({(e.step, e.layer, e.kind) for e in mon.events})[:2]
        [(70, '0', 'explosion'), (70, '2', 'explosion')]
        >>> mon.attached  # the hooks are removed on leaving the block
        False
    """

    source = "monitor"

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector = None,
        window: int = 128,
        fs: float = FS.DEFAULT_FS,
        nperseg: int = FS.DEFAULT_NPERSEG,
        bands: Optional[Mapping[str, Sequence[float]]] = None,
        explosion_z: float = FA.EXPLOSION_Z,
        collapse_ratio: float = FA.COLLAPSE_RATIO,
        spectral_shift_threshold: float = FA.SHIFT_THRESHOLD,
        min_history: int = FA.MIN_HISTORY,
        calibrate: int = 64,
        on_anomaly: Optional[Callable[[List[AnomalyEvent]], Any]] = None,
        check_every: Optional[int] = None,
        output_selector: Optional[Callable[[Any], Tensor]] = None,
        max_events: int = 1000,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {model!r} ({type(model).__name__}).")
        for name, value in check_signal_args(window, fs, nperseg, bands, explosion_z, collapse_ratio, spectral_shift_threshold,
                                             min_history, history_below_window=False).items():
            setattr(self, name, value)  # window, fs, nperseg, bands, explosion_z, collapse_ratio, spectral_shift_threshold, min_history
        self.calibrate = V.check_int("calibrate", calibrate, 2)
        if self.calibrate < max(self.min_history, self.nperseg):
            raise ValueError(
                f"`calibrate` must be at least `min_history`={min_history} and `nperseg`={nperseg} "
                f"(the baseline needs one Welch segment), got {calibrate!r}."
            )
        V.check_callable("on_anomaly", on_anomaly)
        V.check_int("check_every", check_every, 1, optional=True)
        V.check_callable("output_selector", output_selector)
        self.model = model
        self.on_anomaly = on_anomaly
        self.check_every = check_every
        modules = select_layers(model, layers)
        self._taps = ActivityTaps(modules, selector=output_selector)
        self._names: List[str] = list(modules)
        n = len(self._names)
        self._ring = RingBuffer(n, self.window)
        self._calib: Optional[Tensor] = None  # (layers, calibrate) healthy samples
        self._detector = StepDetector(self._names, explosion_z=self.explosion_z, collapse_ratio=self.collapse_ratio,
                                      min_history=self.min_history, source=self.source)
        self._baseline: Optional[Baseline] = None  # judgement coefficients of the calibration window
        self._baseline_powers: Optional[Tensor] = None  # (layers, bands) relative band powers
        self._healthy = np.zeros((3, n), dtype=bool)  # the flags of a forward judged healthy on CPU
        self._events: Deque[AnomalyEvent] = deque(maxlen=V.check_int("max_events", max_events, 1))
        self.forwards = 0  # forwards seen (calibration included)
        self._judged_since_check = 0
        self._latest_flags: Optional[np.ndarray] = None  # (3, layers) bool, newest judged forward
        self._latest_tag: int = -1
        self.spectral_distance: Dict[str, float] = {}  # newest check(): layer -> Hellinger distance

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> "Monitor":
        """Register the forward hooks (idempotent); returns ``self``."""
        self._taps.attach(root=self.model, on_forward_end=self._on_forward)
        return self

    def detach(self) -> None:
        """Remove every hook this monitor registered (idempotent) and collect a lagged verdict."""
        try:
            self._taps.detach()
            self._taps.discard()
        finally:
            self.flush()

    def __enter__(self) -> "Monitor":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # ------------------------------------------------------------------ public read-only surface
    @property
    def layers(self) -> List[str]:
        """Names of the tapped modules, in forward order (selection order before the first forward)."""
        return [self._names[i] for i in self._taps.forward_order()]

    @property
    def silent_layers(self) -> List[str]:
        """Tapped modules that have never run in a forward (never judged)."""
        return self._taps.silent()

    @property
    def attached(self) -> bool:
        return self._taps.attached_to

    @property
    def calibrated(self) -> bool:
        """Whether the baseline is complete (``calibrate`` forwards seen)."""
        return self._calib is not None and self.forwards >= self.calibrate

    @property
    def events(self) -> List[AnomalyEvent]:
        """The most recent anomaly events (bounded by ``max_events``), oldest first."""
        return list(self._events)

    @property
    def anomalous(self) -> bool:
        """Whether the newest judged forward was flagged (one forward late off-CPU)."""
        return self._latest_flags is not None and bool(self._latest_flags.any())

    @property
    def flagged_layers(self) -> List[str]:
        """Layers flagged by the newest judged forward."""
        if self._latest_flags is None:
            return []
        return [self._names[i] for i in np.nonzero(self._latest_flags.any(axis=0))[0]]

    def signal(self, name: str) -> Tensor:
        """The layer's recent activity series, oldest sample first (1-D, at most ``window`` long).

        Raises:
            ValueError: ``name`` is not a tapped layer.
        """
        try:
            row = self._names.index(name)
        except ValueError:
            raise ValueError(f"`name`={name!r} is not a tapped layer; tapped layers: {self._names}.") from None
        return self._ring.ordered()[row]

    # ------------------------------------------------------------------ per forward
    def _on_forward(self) -> None:
        sample = self._taps.sample()  # (layers,) on the activations' device
        if sample is None:
            return
        index = self.forwards
        self.forwards += 1
        self._ring.push(sample, Phase.PREDICT.code, index)
        if index < self.calibrate:
            self._calibrate(sample, index)
            return
        on_cpu = sample.device.type == "cpu"
        if not on_cpu:
            # HostMirror keeps one copy in flight; collect the previous forward's before it is
            # overwritten (waits on that copy's event only: the host runs at most one forward ahead).
            self.flush()
        _, verdict = self._detector.judge(sample, self._baseline, tag=index)
        if verdict is not None:
            self._judge(verdict)
        elif on_cpu:  # judged healthy in this forward
            self._latest_flags, self._latest_tag = self._healthy, index
        self._judged_since_check += 1
        if self.check_every is not None and self._judged_since_check >= self.check_every:
            self.check()

    def _calibrate(self, sample: Tensor, index: int) -> None:
        if self._calib is None:
            self._calib = torch.zeros(len(self._names), self.calibrate, dtype=torch.float32, device=sample.device)
        self._calib[:, index] = sample
        if index == self.calibrate - 1:
            ok = torch.isfinite(self._calib)  # (layers, calibrate); a layer needs `min_history` of them
            self._baseline = self._detector.baseline(self._calib, valid=ok)
            freqs, psd = FS.welch_psd(torch.where(ok, self._calib, torch.zeros_like(self._calib)), fs=self.fs, nperseg=self.nperseg)
            self._baseline_powers = FS.band_powers(freqs, psd, self.bands, relative=True)  # (layers, bands)

    def flush(self) -> None:
        """Wait for a lagged device copy in flight and record its events (never needed on CPU)."""
        verdict = self._detector.collect(wait=True)
        if verdict is not None:
            self._judge(verdict)

    def _judge(self, verdict: Verdict) -> None:
        flags = verdict.flags  # (3, layers)
        # A tapped module that never ran (e.g. MultiheadAttention.out_proj, whose weights are used
        # functionally) has a zero series: that is no collapse.
        silent = [i for i, c in enumerate(self._taps.fire_counts) if c == 0]
        flags[:, silent] = False
        self._latest_flags, self._latest_tag = flags, verdict.tag
        if flags.any():
            self._emit(self._detector.events(verdict, Phase.PREDICT.value, skip=silent))

    def _emit(self, events: List[AnomalyEvent]) -> None:
        self._events.extend(events)
        if self.on_anomaly is not None:
            self.on_anomaly(events)

    # ------------------------------------------------------------------ spectra
    def check(self) -> List[AnomalyEvent]:
        """Spectral check: band powers of the post-calibration window against the calibration's.

        Uses the newest ``min(window, forwards - calibrate)`` samples (needs at least ``nperseg``;
        before that nothing is judged and ``[]`` is returned). Reads the distances on the host.

        Returns:
            The new ``spectral_shift`` events (also appended to :attr:`events`).
        """
        self._judged_since_check = 0
        n = min(self._ring.count, self.forwards - self.calibrate)
        if self._baseline_powers is None or n < self.nperseg:
            return []
        data = self._ring.ordered(n)  # (layers, n)
        finite = torch.isfinite(data).all(dim=1)  # (layers,) a non-finite window is non_finite's business
        freqs, psd = FS.welch_psd(torch.where(torch.isfinite(data), data, torch.zeros_like(data)), fs=self.fs, nperseg=self.nperseg)
        powers = FS.band_powers(freqs, psd, self.bands, relative=True)  # (layers, bands)
        flag, dist = FA.spectral_shift(powers, self._baseline_powers, self.spectral_shift_threshold)  # (layers,)
        host = torch.stack([(flag & finite).to(dist.dtype), dist]).detach().cpu().numpy()  # (2, layers)
        self.spectral_distance = {name: float(host[1, i]) for i, name in enumerate(self._names)}
        step = self.forwards - 1
        silent = set(self._taps.silent())
        events = [
            AnomalyEvent(step, Phase.PREDICT.value, self._names[i], "spectral_shift", float(host[1, i]), self.source)
            for i in np.nonzero(host[0] > 0.5)[0]
            if self._names[i] not in silent
        ]
        if events:
            self._emit(events)
        return events
