"""Operational-state classification from signal features of a window (pure torch).

A window is ``(layers, W)`` per-layer activity samples ``s_t = mean |a|`` (one sample per model
forward; idle wall-clock gaps are written as exact zeros by the callback). :func:`window_features`
turns it into a flat feature vector; :class:`StateClassifier` is calibrated online from
lifecycle-labelled windows and then predicts :class:`OperationalState` on its own.

Feature set (per layer, in this order, ``FEATURES_PER_LAYER = 6 + n_bands``):

============== ======================================================================
``level``      ``log(mean_t s_t + 1e-8)`` over finite samples
``log_cv``     ``log(std_t / mean_t + 1e-6)``, coefficient of variation
``lag1``       lag-1 autocorrelation of the finite samples (0 for a constant window)
``trend``      share of variance explained by a straight line in time (R², in [0, 1])
``non_finite`` share of non-finite samples (NaN/Inf or flagged by ``nonfinite``)
``silent``     share of samples with ``|s_t| <= silent_atol`` (idle gaps are zeros)
``rel_<band>`` relative Welch band power, one per band
============== ======================================================================

Window-level features (``WINDOW_FEATURES``), appended once after the per-layer block only when the
samples' ``times`` are given:

============== ======================================================================
``cadence``    ``log(median_k Δt_k / reference_interval)``: the sampling cadence, the median
               interval between consecutive samples (intervals touching a silent sample,
               i.e. an idle gap written as zeros, or not positive are left out; 0 when
               none is left), relative to a reference interval (the callback passes the
               median cadence of the run's recent training windows, so the feature is a
               ratio that transfers across machines and models)
============== ======================================================================

The cadence is a property of how the signal was sampled: a training forward is followed by the
backward pass and the optimizer step before the next forward, an inference forward only by the next
batch, so training samples arrive 2-3x further apart than inference samples on the same machine.
The clock is the caller's: :class:`~nn_neuroimaging_lightning.callbacks.eeg.NNEEGCallback` stamps
each sample with the CPU time of the main thread (``time.thread_time``): on a shared machine
wall-clock intervals are dominated by other processes (measured: training windows' median
wall-clock interval 20-570 ms and inference windows' 60-220 ms in one run on a loaded 2-core
host, overlapping), and process CPU time by intra-op worker threads spin-waiting; thread CPU time
gave training 3.7-5.7 ms and inference 2.5-3.2 ms in the same setting (see ``benchmarks/README.md``).

Short windows: the segment length is ``min(nperseg, W)`` and the FFT is zero-padded to the
configured ``nperseg``, so every band keeps a (interpolated) bin at the nominal resolution even for
``W = 16``. Those interpolated powers are smooth but consistent from window to window, which is all
a classifier calibrated on the same ``W`` needs. Non-finite samples are excluded from every
statistic and replaced by the window mean before the FFT (they add no power after detrending).

The hard distinction is training vs inference: during training the weights move every step, so a
layer's level carries a low-frequency drift (``lag1``, ``trend``, ``rel_delta`` high) and dropout or
batch-norm in train mode change ``level``/``log_cv``; inference on fixed weights varies only with
the data (near-white). ``lag1``/``trend`` carry most of that signal without time stamps; with them,
the ``cadence`` separates the two on its own in the benchmark (``benchmarks/README.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Optional

import torch
from torch import Tensor

from nn_neuroimaging_lightning.functional.spectral import (
    DEFAULT_BANDS,
    DEFAULT_FS,
    DEFAULT_NPERSEG,
    BandSpec,
    band_powers,
    check_bands,
    welch_psd,
)

__all__ = [
    "BASE_FEATURES",
    "OperationalState",
    "WINDOW_FEATURES",
    "StateClassifier",
    "balanced_accuracy_from_confusion",
    "feature_names",
    "state_accuracy",
    "state_confusion_matrix",
    "window_features",
]


class OperationalState(IntEnum):
    """Operational states predicted from a window of activity."""

    TRAINING = 0
    INFERENCE = 1
    IDLE = 2
    ERROR = 3


#: Per-layer features before the relative band powers, in output order.
BASE_FEATURES: tuple[str, ...] = ("level", "log_cv", "lag1", "trend", "non_finite", "silent")
#: Window-level features appended after the per-layer block when ``times`` are given.
WINDOW_FEATURES: tuple[str, ...] = ("cadence",)
_I_NONFINITE = BASE_FEATURES.index("non_finite")
_I_SILENT = BASE_FEATURES.index("silent")
_LEVEL_EPS = 1e-8
_CV_EPS = 1e-6


def feature_names(layers: Any, bands: BandSpec = DEFAULT_BANDS, timed: bool = False) -> list[str]:
    """Names of the flat feature vector of :func:`window_features`, ``"<layer>/<feature>"``.

    Args:
        layers: number of layers or a sequence of layer names.
        bands: the bands used for the ``rel_<band>`` features.
        timed: whether the features were computed with ``times`` (adds ``WINDOW_FEATURES`` last).

    Returns:
        ``layers * (6 + n_bands)`` names, layer-major, then ``"cadence"`` when ``timed``.

    Example::

        >>> feature_names(1, {"lo": (0, 50), "hi": (50, 100)})
        ['0/level', '0/log_cv', '0/lag1', '0/trend', '0/non_finite', '0/silent', '0/rel_lo', '0/rel_hi']
    """
    names = [str(i) for i in range(layers)] if isinstance(layers, int) else [str(n) for n in layers]
    per = list(BASE_FEATURES) + [f"rel_{b}" for b in bands]
    return [f"{layer}/{f}" for layer in names for f in per] + (list(WINDOW_FEATURES) if timed else [])


def window_features(
    signal: Tensor,
    nonfinite: Optional[Tensor] = None,
    fs: float = DEFAULT_FS,
    nperseg: int = DEFAULT_NPERSEG,
    bands: BandSpec = DEFAULT_BANDS,
    silent_atol: float = 0.0,
    times: Optional[Tensor] = None,
    reference_interval: Any = None,
) -> Tensor:
    """Flat feature vector of a window of per-layer activity (see the module docstring).

    .. math::
        \\text{lag1} = \\frac{\\sum_t d_t d_{t+1}}{\\sum_t d_t^2},\\quad
        \\text{trend} = \\frac{(\\sum_t \\tilde t\\, d_t)^2}{\\sum_t \\tilde t^2 \\sum_t d_t^2},\\quad
        d_t = s_t - \\bar s,\\ \\tilde t = t - \\bar t,\\quad
        \\text{cadence} = \\log \\frac{\\operatorname{median}_k (\\tau_{k+1} - \\tau_k)}{\\tau_{\\text{ref}}}

    Args:
        signal: ``(layers, W)`` window, or a batch ``(N, layers, W)``; ``W >= 4``.
        nonfinite: optional bool mask like ``signal`` marking samples whose activation had a
            non-finite element (counted as non-finite even if the stored sample is finite).
        fs: nominal sampling rate in Hz.
        nperseg: Welch segment length (and FFT length); windows shorter than it use ``W``.
        bands: ``name -> (lo_hz, hi_hz)``; checked against ``fs``/``nperseg``.
        silent_atol: a sample with ``|s_t| <= silent_atol`` counts as silent (idle writes 0).
        times: optional time stamp of each sample in seconds (wall-clock or CPU time), ``(W,)``
            or ``(N, W)`` (float64 recommended); adds the window-level ``cadence`` feature. An interval touching
            a sample silent in every layer, or a non-positive or non-finite one, is left out.
        reference_interval: positive interval in seconds the cadence is relative to: a number
            or a tensor broadcastable to the batch shape ``(N,)``; ``None`` gives the absolute
            ``log`` median interval in seconds.

    Returns:
        ``(layers * F,)`` or ``(N, layers * F)`` float features, ``F = 6 + n_bands``, with one more
        column (``cadence``) at the end when ``times`` is given; finite for any input (NaN/Inf
        samples are excluded; an all-non-finite layer gives level ``log(1e-8)``, zeros elsewhere
        and ``non_finite = 1``; a window without a usable interval has cadence 0).

    Raises:
        ValueError: for a bad shape, a window shorter than 4 samples, a ``nonfinite`` mask or
            ``times`` of another shape, a non-positive ``reference_interval``, or bands without a bin.

    Example::

        >>> x = torch.ones(2, 32)
        >>> x[1, :4] = float("nan")
        >>> f = window_features(x).view(2, -1)
        >>> f[:, 4]  # non-finite share per layer
        tensor([0.0000, 0.1250])
        >>> t = torch.arange(32, dtype=torch.float64) * 0.05  # one sample every 50 ms
        >>> window_features(x, times=t, reference_interval=0.025)[-1]  # twice the reference
        tensor(0.6931)
    """
    if not isinstance(signal, Tensor) or signal.ndim not in (2, 3):
        raise ValueError(
            f"`signal` must be (layers, W) or (N, layers, W), got {getattr(signal, 'shape', signal)!r}."
        )
    w = signal.shape[-1]
    if w < 4:
        raise ValueError(f"`signal` windows must have at least 4 samples, got W={w}.")
    if nonfinite is not None and (not isinstance(nonfinite, Tensor) or nonfinite.shape != signal.shape):
        raise ValueError(
            f"`nonfinite` must be a bool tensor of shape {tuple(signal.shape)}, "
            f"got {getattr(nonfinite, 'shape', nonfinite)!r}."
        )
    if times is not None and (not isinstance(times, Tensor) or times.shape != signal.shape[:-2] + (w,)):
        raise ValueError(
            f"`times` must be a tensor of shape {tuple(signal.shape[:-2]) + (w,)}, "
            f"got {getattr(times, 'shape', times)!r}."
        )
    if reference_interval is not None and not isinstance(reference_interval, Tensor):
        if isinstance(reference_interval, bool) or not isinstance(reference_interval, (int, float)) or not (
            math.isfinite(reference_interval) and reference_interval > 0
        ):
            raise ValueError(
                f"`reference_interval` must be a positive number of seconds or a tensor, got {reference_interval!r}."
            )
    check_bands(bands, fs, nperseg)
    x = signal if signal.is_floating_point() else signal.to(torch.get_default_dtype())
    fin = torch.isfinite(x)  # (..., L, W)
    if nonfinite is not None:
        fin = fin & ~nonfinite.to(torch.bool)
    finf = fin.to(x.dtype)
    xz = torch.where(fin, x, torch.zeros_like(x))
    n = finf.sum(-1)  # (..., L)
    n_safe = n.clamp_min(1.0)
    mean = xz.sum(-1) / n_safe  # (..., L)
    d = (xz - mean.unsqueeze(-1)) * finf  # centred, 0 where missing
    ss = d.square().sum(-1)  # (..., L)
    std = (ss / n_safe).sqrt()
    level = torch.log(mean.clamp_min(0.0) + _LEVEL_EPS)
    log_cv = torch.log(std / (mean.abs() + _LEVEL_EPS) + _CV_EPS)
    ss_pos = ss > 0
    ss_safe = torch.where(ss_pos, ss, torch.ones_like(ss))
    lag1 = torch.where(ss_pos, (d[..., 1:] * d[..., :-1]).sum(-1) / ss_safe, torch.zeros_like(ss))
    t = torch.arange(w, device=x.device, dtype=x.dtype)
    t_mean = (finf * t).sum(-1, keepdim=True) / n_safe.unsqueeze(-1)
    tc = (t - t_mean) * finf  # (..., L, W)
    stt = tc.square().sum(-1)
    std_ = torch.where(stt > 0, stt, torch.ones_like(stt))
    trend = torch.where(ss_pos & (stt > 0), (tc * d).sum(-1).square() / (std_ * ss_safe), torch.zeros_like(ss))
    non_finite = 1.0 - n / w
    silent = (fin & (x.abs() <= silent_atol)).to(x.dtype).sum(-1) / w

    seg = min(nperseg, w)
    filled = torch.where(fin, x, mean.unsqueeze(-1))  # missing -> mean: no power after detrend
    freqs, psd = welch_psd(filled, fs=fs, nperseg=seg, noverlap=seg // 2, nfft=nperseg)
    rel = band_powers(freqs, psd, bands, relative=True)  # (..., L, B)

    feats = torch.cat(
        [torch.stack([level, log_cv, lag1, trend, non_finite, silent], dim=-1), rel], dim=-1
    )  # (..., L, F)
    feats = torch.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0).flatten(-2)  # (..., L * F)
    if times is None:
        return feats
    silent_sample = (fin & (x.abs() <= silent_atol)).all(-2)  # (..., W) idle gap: every layer silent
    cad = _cadence(times, silent_sample.to(times.device), reference_interval).to(device=x.device, dtype=x.dtype)
    return torch.cat([feats, cad.unsqueeze(-1)], dim=-1)


def _cadence(times: Tensor, silent: Tensor, reference: Any) -> Tensor:
    """``log(median interval / reference)`` per window, ``(...,)``; 0 without a usable interval."""
    tt = times.to(torch.float64)
    dt = tt[..., 1:] - tt[..., :-1]  # (..., W - 1)
    ok = torch.isfinite(dt) & (dt > 0) & ~silent[..., 1:] & ~silent[..., :-1]
    k = ok.sum(-1)  # (...,)
    srt = torch.where(ok, dt, torch.full_like(dt, math.inf)).sort(-1).values
    mid = ((k - 1).clamp_min(0) // 2).unsqueeze(-1)  # lower median
    med = srt.gather(-1, mid).squeeze(-1)  # (...,)
    med = torch.where(k > 0, med, torch.ones_like(med))
    if reference is None:
        ref = torch.ones_like(med)
    else:
        ref = torch.as_tensor(reference, dtype=torch.float64, device=med.device)
        ref = torch.where(torch.isfinite(ref) & (ref > 0), ref, torch.ones_like(ref)).expand_as(med)
        ref = torch.where(k > 0, ref, torch.ones_like(ref))
    return torch.log(med) - torch.log(ref)


class StateClassifier:
    """Online Gaussian class-conditional (diagonal covariance) state classifier with rules on top.

    Sufficient statistics per class (count, feature sums and sums of squares, ``float64``) are
    updated from lifecycle-labelled windows, optionally with exponential forgetting, so memory is
    ``O(classes × features)`` whatever the run length. Prediction is Bayes' rule with equal class
    priors over the calibrated classes (those with at least ``min_count`` windows) and a Gaussian
    covariance that is, by ``covariance``: ``"full"`` (default) the pooled within-class covariance
    shrunk towards its diagonal (linear discriminant analysis; it sees contrasts between layers, e.g.
    the level of a layer after dropout relative to one before it, which a diagonal model cannot),
    ``"pooled"`` a shared diagonal, ``"class"`` one diagonal per class. The full form keeps an
    ``(F, F)`` scatter matrix (``F = layers × (6 + bands) + window_features``, 111 for 10 layers
    with the cadence).

    Deterministic rules, applied on top of the probabilities (one-hot), in this order:

    1. ERROR whenever any layer's ``non_finite`` share is > 0.
    2. IDLE whenever the mean ``silent`` share over layers is >= ``idle_share`` (default 0.5).
    3. Cold start only (INFERENCE has fewer than ``min_count`` windows, so the model cannot predict
       it yet): INFERENCE when the window's ``cadence`` (first window-level feature) is below
       ``inference_cadence`` (default ``log 0.7``: samples at least 1.43x closer together than in
       recent training windows, which an inference forward without backward pass and optimizer step
       is; measured ratios 1.4-1.8x on CPU for the benchmark's small models).

    .. math::
        \\log p(c \\mid x) \\propto -\\tfrac12 \\sum_j \\Big[\\frac{(x_j - \\mu_{cj})^2}{\\sigma_{cj}^2}
        + \\log \\sigma_{cj}^2\\Big]

    Args:
        num_bands: number of relative band-power features per layer (to locate the rule columns).
        window_features: number of window-level features after the per-layer block (1 for
            features computed with ``times``: the ``cadence``; 0 without).
        num_states: number of classes (4: :class:`OperationalState`).
        covariance: ``"full"``, ``"pooled"`` (shared diagonal) or ``"class"`` (diagonal per class).
        shrinkage: weight of the diagonal in the ``"full"`` covariance, in ``[0, 1]``, or ``"auto"``:
            ``F / (F + n)`` clamped to ``[0.1, 0.5]``, for ``F`` features and ``n`` labelled windows
            (few windows per feature: more weight on the diagonal).
        decay: multiplier applied to the statistics before each update, in ``(0, 1]``; 1 keeps all.
        min_count: windows a class needs before it is predicted.
        var_floor: added to every variance (features are O(1)).
        idle_share: mean silent share that makes a window IDLE.
        inference_cadence: cadence (log ratio) below which a window is INFERENCE while that state is
            not calibrated; ``None`` disables the rule (it needs ``window_features >= 1``).

    Raises:
        ValueError: for invalid arguments.

    Example::

        >>> clf = StateClassifier(num_bands=0, min_count=2)
        >>> x = torch.tensor([[0.0, 0, 0, 0, 0, 0], [0.1, 0, 0, 0, 0, 0],
        ...                   [1.0, 0, 0, 0, 0, 0], [1.1, 0, 0, 0, 0, 0]])
        >>> clf.update(x, torch.tensor([0, 0, 1, 1]))
        >>> clf.predict(torch.tensor([[0.05, 0, 0, 0, 0, 0], [0.9, 0, 0, 0, 0, 0], [0.5, 0, 0, 0, 1, 0]]))
        tensor([0, 1, 3])
    """

    def __init__(
        self,
        num_bands: int = len(DEFAULT_BANDS),
        num_states: int = len(OperationalState),
        covariance: str = "full",
        shrinkage: Any = "auto",
        decay: float = 1.0,
        min_count: int = 4,
        var_floor: float = 1e-3,
        idle_share: float = 0.5,
        window_features: int = 0,
        inference_cadence: Optional[float] = math.log(0.7),
    ) -> None:
        if isinstance(window_features, bool) or not isinstance(window_features, int) or window_features < 0:
            raise ValueError(f"`window_features` must be a non-negative int, got {window_features!r}.")
        if inference_cadence is not None and (
            isinstance(inference_cadence, bool) or not isinstance(inference_cadence, (int, float))
            or not math.isfinite(inference_cadence)
        ):
            raise ValueError(f"`inference_cadence` must be a finite number or None, got {inference_cadence!r}.")
        if isinstance(num_bands, bool) or not isinstance(num_bands, int) or num_bands < 0:
            raise ValueError(f"`num_bands` must be a non-negative int, got {num_bands!r}.")
        if isinstance(num_states, bool) or not isinstance(num_states, int) or num_states < 2:
            raise ValueError(f"`num_states` must be an int >= 2, got {num_states!r}.")
        if covariance not in ("full", "pooled", "class"):
            raise ValueError(f"`covariance` must be 'full', 'pooled' or 'class', got {covariance!r}.")
        if shrinkage != "auto" and (
            isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0.0 <= shrinkage <= 1.0
        ):
            raise ValueError(f"`shrinkage` must be in [0, 1] or 'auto', got {shrinkage!r}.")
        if not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
            raise ValueError(f"`decay` must be in (0, 1], got {decay!r}.")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"`min_count` must be a positive int, got {min_count!r}.")
        if not isinstance(var_floor, (int, float)) or not var_floor > 0:
            raise ValueError(f"`var_floor` must be a positive number, got {var_floor!r}.")
        if not isinstance(idle_share, (int, float)) or not 0.0 < idle_share <= 1.0:
            raise ValueError(f"`idle_share` must be in (0, 1], got {idle_share!r}.")
        self.num_bands = num_bands
        self.num_states = num_states
        self.covariance = covariance
        self.shrinkage = shrinkage if shrinkage == "auto" else float(shrinkage)
        self.decay = float(decay)
        self.min_count = min_count
        self.var_floor = float(var_floor)
        self.idle_share = float(idle_share)
        self.per_layer = len(BASE_FEATURES) + num_bands
        self.window_features = window_features
        self.inference_cadence = None if inference_cadence is None else float(inference_cadence)
        self.count: Optional[Tensor] = None  # (C,) float64
        self.sum: Optional[Tensor] = None  # (C, F) float64
        self.sumsq: Optional[Tensor] = None  # (C, F) float64
        self.scatter: Optional[Tensor] = None  # (F, F) float64, sum of x x^T over labelled windows

    # ----------------------------------------------------------------- state
    def _check_features(self, features: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.ndim != 2:
            raise ValueError(
                f"`features` must be a (N, F) tensor, got {getattr(features, 'shape', features)!r}."
            )
        nf = features.shape[1]
        nl = nf - self.window_features
        if nl <= 0 or nl % self.per_layer != 0:
            raise ValueError(
                f"`features` must have a multiple of {self.per_layer} columns (6 + num_bands per "
                f"layer) plus {self.window_features} window-level, got {nf}."
            )
        if self.sum is not None and self.sum.shape[1] != nf:
            raise ValueError(f"`features` must have {self.sum.shape[1]} columns as before, got {nf}.")
        return features

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add lifecycle-labelled windows to the per-class statistics (no host sync).

        Labels outside ``[0, num_states)`` (e.g. -1 for unlabelled windows) are ignored.

        Args:
            features: ``(N, F)`` from :func:`window_features`.
            labels: ``(N,)`` integer states.

        Raises:
            ValueError: for mismatched shapes.
        """
        features = self._check_features(features)
        if not isinstance(labels, Tensor) or labels.shape != features.shape[:1]:
            raise ValueError(
                f"`labels` must be a ({features.shape[0]},) tensor, got {getattr(labels, 'shape', labels)!r}."
            )
        x = torch.nan_to_num(features.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lab = labels.to(device=x.device, dtype=torch.long)
        ok = (lab >= 0) & (lab < self.num_states)
        classes = torch.arange(self.num_states, device=x.device)
        # comparison instead of F.one_hot, which range-checks its input with a host sync
        onehot = ((lab.unsqueeze(-1) == classes) & ok.unsqueeze(-1)).to(torch.float64)  # (N, C)
        if self.sum is None:
            c, f = self.num_states, x.shape[1]
            self.count = torch.zeros(c, dtype=torch.float64, device=x.device)
            self.sum = torch.zeros(c, f, dtype=torch.float64, device=x.device)
            self.sumsq = torch.zeros(c, f, dtype=torch.float64, device=x.device)
            self.scatter = torch.zeros(f, f, dtype=torch.float64, device=x.device)
        if self.decay < 1.0:
            for t in (self.count, self.sum, self.sumsq, self.scatter):
                t.mul_(self.decay)
        self.count.add_(onehot.sum(0))
        self.sum.add_(onehot.T @ x)
        self.sumsq.add_(onehot.T @ x.square())
        xl = x * ok.unsqueeze(-1)
        self.scatter.add_(xl.T @ xl)

    @property
    def calibrated(self) -> Tensor:
        """0-d bool tensor: at least two classes have ``min_count`` windows (``bool()`` it to branch)."""
        if self.count is None:
            return torch.tensor(False)
        return (self.count >= self.min_count).sum() >= 2

    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        count = self.count.clamp_min(1.0).unsqueeze(-1)  # (C, 1)
        mu = self.sum / count  # (C, F)
        var_c = (self.sumsq / count - mu.square()).clamp_min(0.0)  # (C, F)
        ready = self.count >= self.min_count  # (C,)
        if self.covariance == "pooled":
            w = (self.count * ready).unsqueeze(-1)
            pooled = (var_c * w).sum(0) / w.sum().clamp_min(1.0)  # (F,)
            var = pooled.expand_as(var_c)
        else:
            var = var_c
        return mu, var + self.var_floor, ready

    def predict_proba(self, features: Tensor) -> Tensor:
        """State probabilities ``(N, num_states)``, rules applied (see the class docstring).

        Before calibration, the calibrated classes (or all, if none) share the probability
        uniformly; rule hits are one-hot either way.

        Args:
            features: ``(N, F)`` from :func:`window_features`.

        Returns:
            ``(N, num_states)`` probabilities (rows sum to 1) on ``features``' device.

        Raises:
            ValueError: for a bad feature shape.
        """
        features = self._check_features(features)
        x = torch.nan_to_num(features.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
        n = x.shape[0]
        c = self.num_states
        if self.sum is None:
            logp = torch.zeros(n, c, dtype=torch.float64, device=x.device)
        else:
            mu, var, ready = self._params()
            diff = x.unsqueeze(1) - mu.unsqueeze(0)  # (N, C, F)
            if self.covariance == "full":
                chol = self._full_cholesky(mu)  # (F, F) lower
                z = torch.linalg.solve_triangular(chol, diff.reshape(-1, diff.shape[-1]).T, upper=False)
                logp = -0.5 * z.square().sum(0).view(n, c)  # shared covariance: no log-det term
            else:
                logp = -0.5 * (diff.square() / var + var.log()).sum(-1)  # (N, C)
            logp = torch.where(ready, logp, torch.full_like(logp, -math.inf))
            none = ~ready.any()
            logp = torch.where(none, torch.zeros_like(logp), logp)
        proba = torch.softmax(logp, dim=-1)
        inf = int(OperationalState.INFERENCE)
        if self.inference_cadence is not None and self.window_features > 0 and c > inf:
            # cold start: inference not calibrated yet, but sampled clearly faster than training
            cold = torch.ones((), dtype=torch.bool, device=x.device) if self.count is None else self.count[inf] < self.min_count
            fast = cold & (x[:, x.shape[1] - self.window_features] < self.inference_cadence)  # (N,)
            proba = torch.where(fast.unsqueeze(-1), (torch.arange(c, device=x.device) == inf).to(proba.dtype), proba)
        rules = self._rules(x)  # (N,) long, -1 for none
        hit = rules >= 0
        onehot = (rules.unsqueeze(-1) == torch.arange(c, device=x.device)).to(proba.dtype)  # (N, C)
        proba = torch.where(hit.unsqueeze(-1), onehot, proba)
        return proba.to(features.dtype if features.is_floating_point() else torch.float32)

    def _full_cholesky(self, mu: Tensor) -> Tensor:
        # pooled within-class covariance: (sum x x^T - sum_c n_c mu_c mu_c^T) / n, shrunk to its diagonal
        n = self.count.sum().clamp_min(1.0)
        within = (self.scatter - (mu.T * self.count) @ mu) / n  # (F, F)
        within = 0.5 * (within + within.T)
        diag = torch.diag(torch.diagonal(within).clamp_min(0.0))
        if self.shrinkage == "auto":
            f = float(within.shape[0])
            lam = (f / (f + n)).clamp(0.1, 0.5)  # 0-d tensor: no host sync
        else:
            lam = self.shrinkage
        cov = (1.0 - lam) * within + lam * diag
        cov = cov + self.var_floor * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        chol, _ = torch.linalg.cholesky_ex(cov)
        return chol

    def _rules(self, x: Tensor) -> Tensor:
        per = x[:, : x.shape[1] - self.window_features].reshape(x.shape[0], -1, self.per_layer)  # (N, L, per_layer)
        err = (per[..., _I_NONFINITE] > 0).any(-1)
        idle = per[..., _I_SILENT].mean(-1) >= self.idle_share
        out = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        if self.num_states > OperationalState.IDLE:
            out = torch.where(idle, torch.full_like(out, int(OperationalState.IDLE)), out)
        if self.num_states > OperationalState.ERROR:
            out = torch.where(err, torch.full_like(out, int(OperationalState.ERROR)), out)
        return out

    def predict(self, features: Tensor) -> Tensor:
        """Most probable state per window, ``(N,)`` long.

        Args:
            features: ``(N, F)``.

        Returns:
            ``(N,)`` state indices.
        """
        return self.predict_proba(features).argmax(-1)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and settings needed to resume (statistics are ``None`` before the first update)."""
        return {
            "num_bands": self.num_bands,
            "num_states": self.num_states,
            "window_features": self.window_features,
            "count": self.count,
            "sum": self.sum,
            "sumsq": self.sumsq,
            "scatter": self.scatter,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore statistics from :meth:`state_dict` (missing keys leave the classifier empty).

        Args:
            state: mapping from :meth:`state_dict`.

        Raises:
            ValueError: if the saved ``num_bands``/``num_states``/``window_features`` differ from this
                classifier's (a state without ``window_features`` was saved without the cadence: 0).
        """
        checks = (("num_bands", self.num_bands, self.num_bands), ("num_states", self.num_states, self.num_states),
                  ("window_features", self.window_features, 0 if state.get("sum") is not None else self.window_features))
        for key, mine, default in checks:
            theirs = state.get(key, default)
            if theirs != mine:
                raise ValueError(f"`state['{key}']` must be {mine} for this classifier, got {theirs!r}.")
        # copies: the statistics are updated in place, the caller's state must stay as saved
        for key in ("count", "sum", "sumsq", "scatter"):
            value = state.get(key)
            setattr(self, key, None if value is None else value.detach().clone())


# --------------------------------------------------------------------- accuracy (metric core)
def _state_confusion_update(preds: Tensor, target: Tensor, num_states: int) -> Tensor:
    """Confusion counts ``(num_states, num_states)`` (rows: target, columns: prediction).

    ``preds`` may be ``(N,)`` indices or ``(N, num_states)`` scores (argmax). Pairs whose target or
    prediction lies outside ``[0, num_states)`` are ignored (e.g. -1 for unlabelled windows).
    """
    if not isinstance(preds, Tensor) or not isinstance(target, Tensor):
        raise TypeError("`preds` and `target` must be tensors.")
    if preds.ndim == 2 and preds.shape[1] == num_states and target.ndim == 1:
        preds = preds.argmax(-1)
    if preds.shape != target.shape or preds.ndim != 1:
        raise ValueError(
            f"`preds` must be (N,) or (N, {num_states}) and `target` (N,), got "
            f"{tuple(preds.shape)} and {tuple(target.shape)}."
        )
    p = preds.to(torch.long)
    t = target.to(device=p.device, dtype=torch.long)
    ok = (p >= 0) & (p < num_states) & (t >= 0) & (t < num_states)
    idx = torch.where(ok, t * num_states + p, torch.full_like(p, num_states * num_states))
    counts = torch.bincount(idx, minlength=num_states * num_states + 1)[: num_states * num_states]
    return counts.view(num_states, num_states)


def _state_accuracy_compute(confmat: Tensor) -> Tensor:
    """Accuracy ``trace / total`` from confusion counts (0 when empty)."""
    total = confmat.sum()
    return confmat.diagonal().sum().to(torch.float32) / total.clamp_min(1).to(torch.float32)


def balanced_accuracy_from_confusion(confmat: Tensor) -> Tensor:
    """Mean per-class recall over the classes that occur in the targets (0 when empty).

    .. math::
        \\mathrm{BA} = \\frac{1}{|\\{c: n_c > 0\\}|} \\sum_{c: n_c > 0} \\frac{M_{cc}}{n_c},
        \\quad n_c = \\sum_k M_{ck}

    Args:
        confmat: ``(C, C)`` counts, rows are targets.

    Returns:
        0-d float tensor.

    Example::

        >>> balanced_accuracy_from_confusion(torch.tensor([[3, 1], [0, 0]]))
        tensor(0.7500)
    """
    cm = confmat.to(torch.float32)
    support = cm.sum(-1)  # (C,)
    present = support > 0
    recall = torch.where(present, cm.diagonal() / support.clamp_min(1), torch.zeros_like(support))
    return recall.sum() / present.sum().clamp_min(1)


def state_confusion_matrix(preds: Tensor, target: Tensor, num_states: int = len(OperationalState)) -> Tensor:
    """Confusion matrix of predicted vs lifecycle states, rows = target, columns = prediction.

    .. math::
        M_{ck} = \\#\\{i : y_i = c, \\hat y_i = k\\}

    Args:
        preds: ``(N,)`` predicted states or ``(N, num_states)`` scores.
        target: ``(N,)`` lifecycle states; entries outside ``[0, num_states)`` are ignored.
        num_states: number of classes.

    Returns:
        ``(num_states, num_states)`` long counts.

    Raises:
        ValueError: for mismatched shapes.

    Example::

        >>> state_confusion_matrix(torch.tensor([0, 1, 1, 3]), torch.tensor([0, 1, 0, -1]))
        tensor([[1, 1, 0, 0],
                [0, 1, 0, 0],
                [0, 0, 0, 0],
                [0, 0, 0, 0]])
    """
    return _state_confusion_update(preds, target, num_states)


def state_accuracy(preds: Tensor, target: Tensor, num_states: int = len(OperationalState)) -> Tensor:
    """Share of windows whose predicted state equals the lifecycle state.

    .. math::
        \\mathrm{acc} = \\frac{1}{N} \\sum_i [\\hat y_i = y_i]

    Args:
        preds: ``(N,)`` predicted states or ``(N, num_states)`` scores.
        target: ``(N,)`` lifecycle states; entries outside ``[0, num_states)`` are ignored.
        num_states: number of classes.

    Returns:
        0-d float tensor (0 when no valid pair).

    Example::

        >>> state_accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 0, 2]))
        tensor(0.7500)
    """
    return _state_accuracy_compute(_state_confusion_update(preds, target, num_states))
