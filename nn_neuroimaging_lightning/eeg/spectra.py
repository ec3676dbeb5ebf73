"""NN-EEG spectral engine (plain PyTorch, no Lightning): Welch analysis of the ring and the spectral-shift baseline.

:class:`Spectra` computes the Welch spectrum and relative band powers of the newest same-phase
samples of a :class:`~nn_neuroimaging_lightning.taps.RingBuffer`
(:func:`~nn_neuroimaging_lightning.functional.spectral.welch_psd`,
:func:`~nn_neuroimaging_lightning.functional.spectral.band_powers`) and judges training windows
against the :class:`ShiftBaseline`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from nn_neuroimaging_lightning.events import AnomalyEvent
from nn_neuroimaging_lightning.functional import anomalies as FA
from nn_neuroimaging_lightning.functional import spectral as FS
from nn_neuroimaging_lightning.metrics.eeg import BandPower
from nn_neuroimaging_lightning.phases import Phase
from nn_neuroimaging_lightning.taps import RingBuffer

__all__ = ["ShiftBaseline", "Spectra"]


class ShiftBaseline:
    """EMA baseline of relative band powers, and the spectral-shift judgement against it.

    The first window becomes the baseline; from the fourth window on, a layer whose relative band
    powers are at Hellinger distance above ``threshold`` from it is flagged
    (:func:`~nn_neuroimaging_lightning.functional.anomalies.spectral_shift`). The baseline keeps
    adapting (``0.9 * baseline + 0.1 * window``) with every finite window.

    Example::

        >>> sb = ShiftBaseline(threshold=0.3)
        >>> p = torch.tensor([[0.5, 0.5]])
        >>> [sb.update(p) for _ in range(4)][-1][0].tolist()
        [0.0]
        >>> flags, dist = sb.update(torch.tensor([[1.0, 0.0]]))
        >>> flags.tolist(), round(float(dist[0]), 4)
        ([1.0], 0.5412)
    """

    def __init__(self, threshold: float = FA.SHIFT_THRESHOLD) -> None:
        self.threshold = threshold
        self.baseline: Optional[Tensor] = None  # (layers, bands) relative powers, EMA
        self.windows = 0

    def update(self, relative: Tensor) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Judge ``(layers, bands)`` relative powers, then fold them in; host ``(flags, distance)`` or ``None`` while warming up."""
        finite = torch.isfinite(relative).all(dim=1, keepdim=True)
        if self.baseline is None:
            self.baseline = torch.where(finite, relative, torch.zeros_like(relative)).clone()
            self.windows = 1
            return None
        flagged, distance = FA.spectral_shift(relative, self.baseline, self.threshold)  # (layers,)
        # The baseline needs a few windows before it is judged; it keeps adapting slowly afterwards.
        host = torch.stack([(flagged & finite.squeeze(1)).float(), distance]).cpu().numpy() if self.windows >= 3 else None
        self.baseline = torch.where(finite, 0.9 * self.baseline + 0.1 * relative, self.baseline)
        self.windows += 1
        return None if host is None else (host[0], host[1])

    def state_dict(self) -> Dict[str, Any]:
        return {"band_baseline": None if self.baseline is None else self.baseline.detach().cpu(), "baseline_windows": self.windows}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.baseline = state.get("band_baseline")
        self.windows = int(state.get("baseline_windows", 0))


class Spectra:
    r"""Welch analysis of a ring buffer's newest same-phase window, its band powers and spectral shift.

    .. math::
        P_b = \Delta f \sum_{f_k \in b} \hat P(f_k), \qquad R_b = P_b / \sum_j P_j

    Args:
        names: the layers' names, in the ring's row order.
        fs: sampling rate in Hz.
        nperseg: Welch segment length.
        noverlap: Welch overlap (``None``: ``nperseg // 2``).
        bands: ``{name: (lo_hz, hi_hz)}``.
        shift_threshold: Hellinger distance from the baseline above which a training window shifted.
        source: the ``source`` of the events.

    :attr:`epoch` is a :class:`~nn_neuroimaging_lightning.metrics.eeg.BandPower` of the relative
    band powers of the training windows analysed since it was last reset (the mean over an epoch;
    a window with a non-finite power is left out, it has no spectrum). Its state is torchmetrics'
    (summed across processes by ``compute``) and goes into :meth:`state_dict`.

    Example::

        >>> ring = RingBuffer(1, 64)
        >>> for t in range(64):
        ...     ring.push(torch.tensor([1.0 + 0.5 * (t % 2)]), Phase.TRAIN.code, t)
        >>> sp = Spectra(["a"], fs=100.0, nperseg=32, noverlap=None, bands={"low": (0.0, 25.0), "high": (25.0, 50.0)})
        >>> sp.analyse(ring, judge=True, step=64)
        []
        >>> round(sp.band_powers["a"]["high"], 2)
        1.0
    """

    def __init__(self, names: Sequence[str], fs: float, nperseg: int, noverlap: Optional[int],
                 bands: Mapping[str, Tuple[float, float]], shift_threshold: float = FA.SHIFT_THRESHOLD, source: str = "nn_eeg") -> None:
        self.names = list(names)
        self.fs, self.nperseg, self.noverlap = fs, nperseg, noverlap
        self.bands = dict(bands)
        self.source = source
        self.shift = ShiftBaseline(shift_threshold)
        self.latest_bands: Optional[Tensor] = None  # (layers, bands) relative, newest analysis
        self.latest_psd: Optional[Tuple[Tensor, Tensor]] = None  # (F,), (layers, F)
        self.epoch = BandPower(fs, nperseg, noverlap, self.bands, relative=True, num_layers=len(self.names))
        self.epoch.persistent(True)  # its state goes into `state_dict`

    def phase_window(self, ring: RingBuffer) -> Optional[Tensor]:
        """The newest samples of the ring's current phase (up to ``window``), oldest first, or ``None`` (fewer than ``nperseg``)."""
        phases = ring.phases()
        if not len(phases):
            return None
        idx = np.nonzero(phases == phases[-1])[0]
        if len(idx) < self.nperseg:
            return None
        data = ring.ordered()
        return data.index_select(1, torch.from_numpy(idx).to(data.device))

    def welch(self, window: Tensor) -> Tuple[Tensor, Tensor]:
        """``(freqs (F,), psd (layers, F))`` of a ``(layers, n)`` window."""
        return FS.welch_psd(window, fs=self.fs, nperseg=self.nperseg, noverlap=self.noverlap)

    def analyse(self, ring: RingBuffer, judge: bool, step: int) -> Optional[List[AnomalyEvent]]:
        """Analyse the ring's current-phase window; ``None`` when it is too short.

        With ``judge`` (a training window) its relative band powers are judged against the shift
        baseline and folded into it; returns the ``spectral_shift`` events.
        """
        window = self.phase_window(ring)
        if window is None:
            return None
        freqs, psd = self.welch(window)
        relative = FS.band_powers(freqs, psd, self.bands, relative=True)  # (layers, bands)
        self.latest_bands, self.latest_psd = relative, (freqs, psd)
        if judge and bool(torch.isfinite(relative).all()):  # a host read; `shift.update` makes one anyway
            self.epoch.to(relative.device).update(powers=relative)
        host = self.shift.update(relative) if judge else None
        if host is None:
            return []
        flags, distance = host
        return [AnomalyEvent(step, Phase.TRAIN.value, self.names[i], "spectral_shift", float(distance[i]), self.source)
                for i in np.nonzero(flags > 0.5)[0]]

    @property
    def band_powers(self) -> Dict[str, Dict[str, float]]:
        """Relative band powers of the latest analysis: ``{layer: {band: fraction}}`` (host copy)."""
        if self.latest_bands is None:
            return {}
        values = self.latest_bands.detach().cpu().numpy()
        return {n: dict(zip(self.bands, map(float, values[i]))) for i, n in enumerate(self.names)}

    def band_power(self, ring: RingBuffer, band: str, relative: bool = False) -> Dict[str, float]:
        """One band's power per layer from the latest analysis's spectrum; before the first analysis, from the ring.

        Before an analysis the newest same-phase samples are used, else the whole ring once it holds
        ``nperseg`` samples (``{}`` while it holds fewer).
        """
        if self.latest_psd is None:
            window = self.phase_window(ring)
            if window is None and ring.count >= self.nperseg:
                window = ring.ordered()
            if window is None:
                return {}
            self.latest_psd = self.welch(window)
        freqs, psd = self.latest_psd
        powers = FS.band_powers(freqs, psd, self.bands, relative=bool(relative))  # (layers, bands)
        column = powers[:, list(self.bands).index(band)].detach().cpu().numpy()
        return {n: float(column[i]) for i, n in enumerate(self.names)}

    def spectrogram(self, ring: RingBuffer) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Welch segments of the whole ring on the host: the centre step of each segment ``(S,)``,
        the frequencies ``(F,)`` and the powers ``(layers, S, F)``."""
        seg_f, seg_p = FS.segment_psd(ring.ordered(), fs=self.fs, nperseg=self.nperseg, noverlap=self.noverlap)  # (F,), (layers, S, F)
        seg_p = seg_p.detach().cpu().numpy()
        hop = self.nperseg - (self.nperseg // 2 if self.noverlap is None else self.noverlap)
        steps = ring.steps()
        seg_t = steps[np.minimum(np.arange(seg_p.shape[1]) * hop + self.nperseg // 2, len(steps) - 1)]
        return seg_t, seg_f.cpu().numpy(), seg_p

    def epoch_band_powers(self) -> Optional[Tensor]:
        """The mean ``(layers, bands)`` relative powers of :attr:`epoch` (a collective under DDP: call on every
        rank), or ``None`` while no process has analysed a training window; then :attr:`epoch` is reset."""
        m = self.epoch
        # torchmetrics' state sync, as in `compute`, without its warning for a rank with no update
        with m.sync_context(dist_sync_fn=m.dist_sync_fn, process_group=m.process_group):
            mean = FS._band_power_compute(m.sum_power, m.count)
        m.reset()
        return None if bool(mean.isnan().all()) else mean

    def state_dict(self) -> Dict[str, Any]:
        return {**self.shift.state_dict(), "band_epoch": {k: v.detach().cpu() for k, v in self.epoch.state_dict().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.shift.load_state_dict(state)
        if state.get("band_epoch"):
            self.epoch.load_state_dict(state["band_epoch"])
