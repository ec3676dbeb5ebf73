"""Batched Welch spectra and EEG band powers of per-layer activity series (pure torch).

One sample of a layer's activity series is one model forward. Spectra are expressed at a *nominal*
sampling rate ``fs`` (default 200 Hz: one forward = 5 ms of virtual time), so the seed's band edges
in Hz keep their names and the gamma band ends at the Nyquist frequency.

The Welch estimate is computed for every leading dimension at once (``unfold`` + ``rfft``) and
matches :func:`scipy.signal.welch` (periodic Hann window, constant detrend, density scaling,
one-sided, mean over segments).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_BANDS",
    "DEFAULT_FS",
    "DEFAULT_NPERSEG",
    "band_mask",
    "band_powers",
    "check_bands",
    "segment_psd",
    "welch_psd",
]

#: Seed band names and edges in Hz at the nominal sampling rate, ``name -> (lo_hz, hi_hz)``.
DEFAULT_BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 100.0),
}
#: Nominal sampling rate: one model forward is ``1 / DEFAULT_FS`` seconds of virtual time.
DEFAULT_FS: float = 200.0
#: Default Welch segment length: resolution ``200 / 64 = 3.125`` Hz gives every default band a bin.
DEFAULT_NPERSEG: int = 64

BandSpec = Mapping[str, tuple[float, float]]


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value


def _check_fs(fs: object) -> float:
    if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not math.isfinite(fs) or fs <= 0:
        raise ValueError(f"`fs` must be a positive finite number, got {fs!r}.")
    return float(fs)


def _resolve_segments(
    n: int, nperseg: int, noverlap: Optional[int], nfft: Optional[int]
) -> tuple[int, int, int]:
    """Validate the Welch segmentation against a series of length ``n``; return (nperseg, step, nfft)."""
    _check_positive_int("nperseg", nperseg)
    if nperseg > n:
        raise ValueError(
            f"`nperseg` must not exceed the series length {n}, got {nperseg!r}; use a shorter segment."
        )
    if noverlap is None:
        noverlap = nperseg // 2
    if isinstance(noverlap, bool) or not isinstance(noverlap, int) or not 0 <= noverlap < nperseg:
        raise ValueError(f"`noverlap` must be an int in [0, nperseg={nperseg}), got {noverlap!r}.")
    if nfft is None:
        nfft = nperseg
    _check_positive_int("nfft", nfft)
    if nfft < nperseg:
        raise ValueError(f"`nfft` must be >= `nperseg`={nperseg}, got {nfft!r}.")
    return nperseg, nperseg - noverlap, nfft


def _window(window: Union[str, Tensor], nperseg: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    if isinstance(window, Tensor):
        if window.shape != (nperseg,):
            raise ValueError(
                f"`window` tensor must have shape ({nperseg},), got {tuple(window.shape)}."
            )
        return window.to(device=device, dtype=dtype)
    if window == "hann":
        # periodic ("DFT-even") Hann, as scipy.signal.get_window("hann", n) returns
        return torch.hann_window(nperseg, periodic=True, device=device, dtype=dtype)
    if window in ("boxcar", "rectangular", "ones"):
        return torch.ones(nperseg, device=device, dtype=dtype)
    raise ValueError(f"`window` must be 'hann', 'boxcar' or a 1-D tensor, got {window!r}.")


def segment_psd(
    x: Tensor,
    fs: float = DEFAULT_FS,
    nperseg: int = DEFAULT_NPERSEG,
    noverlap: Optional[int] = None,
    detrend: Union[str, bool, None] = "constant",
    window: Union[str, Tensor] = "hann",
    nfft: Optional[int] = None,
) -> tuple[Tensor, Tensor]:
    """One-sided power spectral density of every Welch segment (a spectrogram), batched.

    This is the single copy of the Welch formula; :func:`welch_psd` averages its segments.

    .. math::
        P_s(f_k) = c_k \\frac{|\\sum_n w_n (x_{s,n} - \\bar x_s) e^{-2\\pi i k n / N_{fft}}|^2}
        {f_s \\sum_n w_n^2},\\quad c_k = 2 \\text{ except at DC and Nyquist}

    Args:
        x: real series ``(..., N)``; leading dimensions are batch dimensions.
        fs: nominal sampling rate in Hz.
        nperseg: samples per segment, ``1 <= nperseg <= N``.
        noverlap: samples shared by consecutive segments; default ``nperseg // 2``.
        detrend: ``"constant"`` (subtract each segment's mean) or ``None``/``False`` (none).
        window: ``"hann"`` (periodic), ``"boxcar"`` or a ``(nperseg,)`` tensor.
        nfft: FFT length (zero padding), ``>= nperseg``; default ``nperseg``.

    Returns:
        ``(freqs, psd)``: ``freqs`` ``(nfft // 2 + 1,)`` in Hz and ``psd`` ``(..., S, nfft // 2 + 1)``
        with ``S = (N - noverlap) // (nperseg - noverlap)`` segments, on ``x``'s device.

    Raises:
        TypeError: if ``x`` is not a tensor or is complex.
        ValueError: for an invalid ``fs``, ``nperseg``, ``noverlap``, ``nfft``, ``detrend`` or ``window``.

    Example::

        >>> x = torch.arange(8, dtype=torch.float64)
        >>> f, p = segment_psd(x, fs=8.0, nperseg=4, noverlap=0, detrend=None, window="boxcar")
        >>> f
        tensor([0., 2., 4.], dtype=torch.float64)
        >>> p.shape
        torch.Size([2, 3])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}.")
    if x.is_complex():
        raise TypeError(f"`x` must be real, got dtype {x.dtype}.")
    if x.ndim == 0:
        raise ValueError("`x` must have at least one dimension (time last), got a 0-d tensor.")
    fs = _check_fs(fs)
    if detrend not in ("constant", None, False):
        raise ValueError(f"`detrend` must be 'constant', None or False, got {detrend!r}.")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    nperseg, step, nfft = _resolve_segments(x.shape[-1], nperseg, noverlap, nfft)
    win = _window(window, nperseg, x.device, x.dtype)  # (nperseg,)

    seg = x.unfold(-1, nperseg, step)  # (..., S, nperseg)
    if detrend == "constant":
        seg = seg - seg.mean(dim=-1, keepdim=True)
    if seg.numel() == 0:
        # An empty batch: MKL's FFT refuses zero-sized transforms; the result is empty anyway.
        power = seg.new_zeros(*seg.shape[:-1], nfft // 2 + 1)
    else:
        spec = torch.fft.rfft(seg * win, n=nfft, dim=-1)  # (..., S, nfft//2+1)
        power = spec.real.square() + spec.imag.square()
    # one-sided doubling: every bin except DC and (for even nfft) Nyquist
    n_bins = nfft // 2 + 1
    scale = torch.full((n_bins,), 2.0, device=x.device, dtype=x.dtype)
    scale[0] = 1.0
    if nfft % 2 == 0:
        scale[-1] = 1.0
    scale = scale / (fs * win.square().sum())
    psd = power * scale
    freqs = torch.fft.rfftfreq(nfft, d=1.0 / fs, device=x.device, dtype=x.dtype)
    return freqs, psd


def welch_psd(
    x: Tensor,
    fs: float = DEFAULT_FS,
    nperseg: int = DEFAULT_NPERSEG,
    noverlap: Optional[int] = None,
    detrend: Union[str, bool, None] = "constant",
    window: Union[str, Tensor] = "hann",
    nfft: Optional[int] = None,
) -> tuple[Tensor, Tensor]:
    """Welch power spectral density of every series in a batch, like :func:`scipy.signal.welch`.

    Equals ``scipy.signal.welch(x, fs, window, nperseg, noverlap, nfft, detrend, scaling="density")``
    (mean averaging, one-sided) to floating-point precision.

    .. math::
        \\hat P(f_k) = \\frac{1}{S} \\sum_{s=1}^{S} P_s(f_k)

    Args:
        x: real series ``(..., N)``.
        fs: nominal sampling rate in Hz.
        nperseg: samples per segment, ``1 <= nperseg <= N``.
        noverlap: overlap between segments, ``0 <= noverlap < nperseg``; default ``nperseg // 2``.
        detrend: ``"constant"`` or ``None``/``False``.
        window: ``"hann"`` (periodic), ``"boxcar"`` or a ``(nperseg,)`` tensor.
        nfft: FFT length (zero padding), default ``nperseg``.

    Returns:
        ``(freqs, psd)``: ``(F,)`` frequencies in Hz and ``(..., F)`` density, ``F = nfft // 2 + 1``.

    Raises:
        TypeError: if ``x`` is not a real tensor.
        ValueError: for invalid segmentation arguments (e.g. ``nperseg`` longer than the series).

    Example::

        >>> x = torch.sin(2 * math.pi * 25.0 * torch.arange(128) / 200.0)
        >>> f, p = welch_psd(x, fs=200.0, nperseg=64)
        >>> float(f[p.argmax()])
        25.0
    """
    freqs, psd = segment_psd(x, fs, nperseg, noverlap, detrend, window, nfft)
    return freqs, psd.mean(dim=-2)


def _check_band_spec(bands: object) -> dict[str, tuple[float, float]]:
    if not isinstance(bands, Mapping) or len(bands) == 0:
        raise ValueError(f"`bands` must be a non-empty mapping name -> (lo_hz, hi_hz), got {bands!r}.")
    out: dict[str, tuple[float, float]] = {}
    for name, edges in bands.items():
        try:
            lo, hi = (float(e) for e in edges)
        except (TypeError, ValueError):
            raise ValueError(
                f"`bands` entry `{name}` must be two numbers (lo_hz, hi_hz), got {edges!r}."
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0:
            raise ValueError(f"band `{name}` must have finite edges with lo >= 0, got {edges!r}.")
        if lo >= hi:
            raise ValueError(f"band `{name}` must have lo < hi, got ({lo:g}, {hi:g}) Hz.")
        out[str(name)] = (lo, hi)
    return out


def _top_edge(bands: Mapping[str, tuple[float, float]]) -> float:
    return max(hi for _, hi in bands.values())


def check_bands(
    bands: BandSpec = DEFAULT_BANDS,
    fs: float = DEFAULT_FS,
    nperseg: int = DEFAULT_NPERSEG,
    nfft: Optional[int] = None,
) -> dict[str, int]:
    """Check at construction time that every band gets at least one frequency bin.

    Bins are ``f_k = k fs / nfft`` for ``k = 0 .. nfft // 2``; the inclusion rule is the one of
    :func:`band_mask` (``lo <= f < hi``, the top band also includes ``f == hi``).

    .. math::
        n_b = \\#\\{k : lo_b \\le f_k < hi_b\\}\\; (\\le hi_b \\text{ for the top band}) \\ge 1

    Args:
        bands: ``name -> (lo_hz, hi_hz)``.
        fs: nominal sampling rate in Hz.
        nperseg: Welch segment length.
        nfft: FFT length, default ``nperseg``.

    Returns:
        The number of bins of each band, ``name -> n_bins``.

    Raises:
        ValueError: naming the band and the resolution, when a band has ``lo >= hi``, starts at or
            above the Nyquist frequency, or contains no bin.

    Example::

        >>> check_bands(DEFAULT_BANDS, fs=200.0, nperseg=64)
        {'delta': 1, 'theta': 1, 'alpha': 2, 'beta': 5, 'gamma': 23}
        >>> check_bands(DEFAULT_BANDS, fs=200.0, nperseg=16)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: band `delta` (0.5–4 Hz) has no frequency bin at resolution 12.5 Hz (fs=200, nperseg=16); ...
    """
    fs = _check_fs(fs)
    _check_positive_int("nperseg", nperseg)
    nfft = nperseg if nfft is None else _check_positive_int("nfft", nfft)
    spec = _check_band_spec(bands)
    res = fs / nfft
    nyquist = fs / 2.0
    top = _top_edge(spec)
    freqs = [k * res for k in range(nfft // 2 + 1)]
    where = f"(fs={fs:g}, nperseg={nperseg}" + (f", nfft={nfft})" if nfft != nperseg else ")")
    counts: dict[str, int] = {}
    for name, (lo, hi) in spec.items():
        if lo >= nyquist:
            raise ValueError(
                f"band `{name}` ({lo:g}–{hi:g} Hz) lies at or above the Nyquist frequency "
                f"{nyquist:g} Hz {where}; raise `fs` or drop the band."
            )
        n = sum(1 for f in freqs if lo <= f < hi or (hi == top and f == hi))
        if n == 0:
            raise ValueError(
                f"band `{name}` ({lo:g}–{hi:g} Hz) has no frequency bin at resolution {res:g} Hz "
                f"{where}; increase `nperseg` (or `nfft`) or widen the band."
            )
        counts[name] = n
    return counts


def band_mask(freqs: Tensor, bands: BandSpec = DEFAULT_BANDS) -> Tensor:
    """Bin-to-band assignment matrix, so that all band powers are one matmul.

    Bin-inclusion rule: bin ``f`` belongs to band ``(lo, hi)`` when ``lo <= f < hi``; the band(s)
    with the highest upper edge also include ``f == hi`` (so gamma's 100 Hz Nyquist bin counts at
    ``fs = 200``). Adjacent bands therefore never share a bin.

    .. math::
        M_{kb} = [lo_b \\le f_k < hi_b] \\lor [hi_b = \\max_j hi_j \\land f_k = hi_b]

    Args:
        freqs: ``(F,)`` bin frequencies in Hz.
        bands: ``name -> (lo_hz, hi_hz)``.

    Returns:
        ``(F, n_bands)`` tensor of 0/1 in ``freqs``' dtype and device.

    Raises:
        ValueError: if ``bands`` is malformed or ``freqs`` is not 1-D.

    Example::

        >>> band_mask(torch.tensor([0.0, 25.0, 50.0, 75.0, 100.0]), {"lo": (0, 50), "hi": (50, 100)})
        tensor([[1., 0.],
                [1., 0.],
                [0., 1.],
                [0., 1.],
                [0., 1.]])
    """
    if not isinstance(freqs, Tensor) or freqs.ndim != 1:
        raise ValueError(f"`freqs` must be a 1-D tensor, got {getattr(freqs, 'shape', freqs)!r}.")
    spec = _check_band_spec(bands)
    top = _top_edge(spec)
    dtype = freqs.dtype if freqs.is_floating_point() else torch.get_default_dtype()
    edges = torch.tensor(list(spec.values()), dtype=dtype, device=freqs.device)  # (B, 2)
    f = freqs.to(dtype).unsqueeze(-1)  # (F, 1)
    lo, hi = edges[:, 0], edges[:, 1]
    inside = (f >= lo) & (f < hi)
    closed_top = (hi == top) & (f == hi)
    return (inside | closed_top).to(dtype)


def band_powers(
    freqs: Tensor,
    psd: Tensor,
    bands: BandSpec = DEFAULT_BANDS,
    relative: bool = False,
) -> Tensor:
    """Absolute or relative power in each band, for every series at once.

    The band power is the rectangle-rule integral of the density over the band's bins (see
    :func:`band_mask` for the inclusion rule), ``df = freqs[1] - freqs[0]``. Relative powers divide
    by the total over all bands; a series whose total band power is 0 (e.g. a constant or silent
    series) gets relative powers of 0, never NaN.

    .. math::
        P_b = \\Delta f \\sum_k M_{kb} \\hat P(f_k), \\qquad
        R_b = P_b / \\sum_j P_j \\;(0 \\text{ if } \\sum_j P_j = 0)

    Args:
        freqs: ``(F,)`` bin frequencies (evenly spaced, as returned by :func:`welch_psd`).
        psd: ``(..., F)`` density.
        bands: ``name -> (lo_hz, hi_hz)``.
        relative: divide by the total in-band power.

    Returns:
        ``(..., n_bands)`` band powers in ``bands`` order.

    Raises:
        ValueError: if shapes disagree or ``freqs`` has fewer than two bins.

    Example::

        >>> f = torch.tensor([0.0, 50.0, 100.0])
        >>> p = torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 0.0]])
        >>> band_powers(f, p, {"lo": (0, 50), "hi": (50, 100)})
        tensor([[ 50., 300.],
                [  0.,   0.]])
        >>> band_powers(f, p, {"lo": (0, 50), "hi": (50, 100)}, relative=True)
        tensor([[0.1429, 0.8571],
                [0.0000, 0.0000]])
    """
    if not isinstance(psd, Tensor) or psd.ndim < 1:
        raise ValueError(f"`psd` must be a tensor (..., F), got {getattr(psd, 'shape', psd)!r}.")
    if not isinstance(freqs, Tensor) or freqs.ndim != 1 or freqs.shape[0] != psd.shape[-1]:
        raise ValueError(
            f"`freqs` must be 1-D with {psd.shape[-1]} bins to match `psd`, "
            f"got {getattr(freqs, 'shape', freqs)!r}."
        )
    if freqs.shape[0] < 2:
        raise ValueError(f"`freqs` must have at least 2 bins, got {freqs.shape[0]}.")
    mask = band_mask(freqs, bands).to(psd.dtype)  # (F, B)
    df = freqs[1] - freqs[0]
    powers = (psd @ mask) * df  # (..., B)
    if relative:
        powers = _relative(powers)
    return powers


def _relative(powers: Tensor) -> Tensor:
    total = powers.sum(dim=-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, powers / safe, torch.zeros_like(powers))


def _band_power_update(
    signal: Tensor,
    fs: float = DEFAULT_FS,
    nperseg: int = DEFAULT_NPERSEG,
    noverlap: Optional[int] = None,
    bands: BandSpec = DEFAULT_BANDS,
    relative: bool = False,
) -> tuple[Tensor, int]:
    """Band powers of a signal window, summed over any leading batch dims.

    Args:
        signal: ``(layers, W)`` window or a batch of windows ``(N, layers, W)``.
        fs: nominal sampling rate.
        nperseg: Welch segment length.
        noverlap: Welch overlap.
        bands: ``name -> (lo_hz, hi_hz)``.
        relative: relative instead of absolute powers.

    Returns:
        ``(sum over windows (layers, n_bands), number of windows)``.

    Raises:
        ValueError: if ``signal`` is not 2-D or 3-D, or the segmentation is invalid.
    """
    if not isinstance(signal, Tensor) or signal.ndim not in (2, 3):
        raise ValueError(
            f"`signal` must be (layers, W) or (N, layers, W), got {getattr(signal, 'shape', signal)!r}."
        )
    freqs, psd = welch_psd(signal, fs=fs, nperseg=nperseg, noverlap=noverlap)
    powers = band_powers(freqs, psd, bands, relative=relative)  # (..., layers, B)
    if powers.ndim == 2:
        return powers, 1
    return powers.sum(dim=0), powers.shape[0]


def _band_power_compute(sum_powers: Tensor, count: Union[int, Tensor]) -> Tensor:
    """Mean band powers over the windows seen: ``sum_powers / count`` (NaN, undefined, when nothing was seen).

    Args:
        sum_powers: ``(layers, n_bands)`` summed band powers.
        count: number of windows.

    Returns:
        ``(layers, n_bands)`` mean band powers.
    """
    count = torch.as_tensor(count, dtype=sum_powers.dtype, device=sum_powers.device)
    return torch.where(count > 0, sum_powers / count.clamp_min(1), torch.nan)
