"""Per-layer, per-step anomaly measures, vectorised over layers (pure torch, no host sync).

Every function takes ``(L,)`` current values (one per tapped layer) and returns ``(flag, value)``:
a ``(L,)`` bool tensor and the ``(L,)`` float value the decision was made on, so that events can
carry the value. Conventions shared by all of them, so that bad input never crashes:

- a non-finite current value is reported by :func:`non_finite` only: the other detectors give
  ``flag = False`` and ``value = 0`` for it;
- history entries that are non-finite or marked invalid are ignored; a layer with no valid history
  gives ``z = 0`` (no explosion);
- an empty layer axis (``L = 0``) gives empty outputs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "ANOMALY_KINDS",
    "MAD_SCALE",
    "collapse",
    "detect",
    "explosion",
    "non_finite",
    "robust_baseline",
    "robust_zscore",
    "spectral_distance",
    "spectral_shift",
]

#: Consistency constant: ``1.4826 * MAD`` estimates the standard deviation of a normal sample.
MAD_SCALE: float = 1.4826
#: Kinds returned by :func:`detect`, in row order.
ANOMALY_KINDS: tuple[str, ...] = ("non_finite", "explosion", "collapse", "spectral_shift")
_LOG_EPS = 1e-12


def _as_float(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _masked_median(x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Row medians of ``x`` over ``valid`` entries ``(L, W) -> (L,)`` and the valid counts."""
    k = valid.sum(-1)  # (L,)
    if x.shape[-1] == 0:  # static shape: no history at all
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device), k
    big = torch.finfo(x.dtype).max
    srt = torch.where(valid, x, torch.full_like(x, big)).sort(dim=-1).values  # valid first
    lo = ((k - 1).clamp_min(0) // 2).unsqueeze(-1)
    hi = (k // 2).clamp_max(x.shape[-1] - 1).unsqueeze(-1)
    med = 0.5 * (srt.gather(-1, lo) + srt.gather(-1, hi)).squeeze(-1)
    return torch.where(k > 0, med, torch.zeros_like(med)), k


def robust_baseline(
    history: Tensor,
    valid: Optional[Tensor] = None,
    min_scale: float = 0.05,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-layer robust baseline of activity: median and scale of log-activity, median level.

    .. math::
        m_l = \\mathrm{med}_t \\log(h_{lt} + \\epsilon), \\quad
        s_l = \\max(1.4826\\, \\mathrm{MAD}_t \\log(h_{lt} + \\epsilon),\\ s_{min}), \\quad
        b_l = \\mathrm{med}_t\\, h_{lt}

    Args:
        history: ``(L, W)`` activity samples.
        valid: optional ``(L, W)`` mask of usable entries (non-finite entries are never used).
        min_scale: floor of the scale, in log units.

    Returns:
        ``(log_median, scale, level, count)``, each ``(L,)``; ``count`` is the number of usable
        samples (0 gives median 0, level 0).

    Example::

        >>> m, s, b, k = robust_baseline(torch.tensor([[1.0, 1.0, 4.0]]))
        >>> b.tolist(), k.tolist(), [round(v, 6) for v in s.tolist()]
        ([1.0], [3], [0.05])
    """
    history = _as_float(history, "history")
    ok = torch.isfinite(history)
    if valid is not None:
        ok = ok & valid.to(torch.bool)
    k = ok.sum(-1)  # (L,)
    if history.shape[-1] == 0:  # static shape: no history at all
        zero = torch.zeros(history.shape[:-1], dtype=history.dtype, device=history.device)
        return zero, zero.clamp_min(min_scale), zero, k
    # One rank pair for all three medians (same mask); `log(max(h, 0) + eps)` is monotone in h, so
    # the sorted history gives both the level's and the log-level's median: two sorts, not three
    # (each op on these tiny tensors costs several microseconds inside a training step).
    lo = ((k - 1).clamp_min(0) // 2).unsqueeze(-1)
    hi = (k // 2).clamp_max(history.shape[-1] - 1).unsqueeze(-1)
    srt = torch.where(ok, history, torch.inf).sort(dim=-1).values  # valid first
    h_lo, h_hi = srt.gather(-1, lo), srt.gather(-1, hi)  # (L, 1)
    level = 0.5 * (h_lo + h_hi)
    med = 0.5 * (torch.log(h_lo.clamp_min(0.0) + _LOG_EPS) + torch.log(h_hi.clamp_min(0.0) + _LOG_EPS))
    dev = torch.where(ok, (torch.log(history.clamp_min(0.0) + _LOG_EPS) - med).abs(), torch.inf).sort(dim=-1).values
    mad = 0.5 * (dev.gather(-1, lo) + dev.gather(-1, hi))
    stats = torch.where(k.unsqueeze(-1) > 0, torch.cat([med, mad, level], dim=-1), 0.0)  # (L, 3)
    med, mad, level = stats.unbind(-1)
    return med, (MAD_SCALE * mad).clamp_min(min_scale), level, k


def robust_zscore(
    values: Tensor,
    history: Tensor,
    valid: Optional[Tensor] = None,
    min_scale: float = 0.05,
) -> Tensor:
    """Robust z-score of log-activity against the median/MAD of each layer's valid history.

    The scale is ``1.4826 * MAD`` (a normal-consistent standard deviation) floored at
    ``min_scale`` log units, so a constant history does not make every change infinite: with the
    default 0.05, a 2x jump over a flat baseline gives ``z = log 2 / 0.05 ≈ 13.9``.

    .. math::
        z_l = \\frac{\\log(v_l + \\epsilon) - \\mathrm{med}_t \\log(h_{lt} + \\epsilon)}
        {\\max(1.4826\\, \\mathrm{MAD}_t \\log(h_{lt} + \\epsilon),\\ s_{min})}

    Args:
        values: ``(L,)`` current activity (``mean |a|``, >= 0).
        history: ``(L, W)`` past activity; ``W`` may be 0.
        valid: optional ``(L, W)`` bool mask of usable history entries (e.g. excluding idle zeros
            and unwritten ring slots); non-finite entries are always excluded.
        min_scale: floor of the scale in log units, > 0.

    Returns:
        ``(L,)`` z-scores; 0 where the value is non-finite or the layer has no valid history.

    Raises:
        TypeError: for non-tensor input.
        ValueError: for mismatched shapes or a non-positive ``min_scale``.

    Example::

        >>> h = torch.tensor([[1.0, 1.1, 0.9, 1.0], [1.0, 1.0, 1.0, 1.0]])
        >>> robust_zscore(torch.tensor([1.0, 2.0]), h)
        tensor([ 0.0000, 13.8629])
    """
    values = _as_float(values, "values")
    history = _as_float(history, "history")
    if values.ndim != 1 or history.ndim != 2 or history.shape[0] != values.shape[0]:
        raise ValueError(
            f"`values` must be (L,) and `history` (L, W), got {tuple(values.shape)} and "
            f"{tuple(history.shape)}."
        )
    if valid is not None and (not isinstance(valid, Tensor) or valid.shape != history.shape):
        raise ValueError(
            f"`valid` must be a bool tensor of shape {tuple(history.shape)}, "
            f"got {getattr(valid, 'shape', valid)!r}."
        )
    if not isinstance(min_scale, (int, float)) or not min_scale > 0:
        raise ValueError(f"`min_scale` must be a positive number, got {min_scale!r}.")
    med, scale, _, k = robust_baseline(history, valid, min_scale)
    fin = torch.isfinite(values)
    logv = torch.log(torch.where(fin, values, torch.ones_like(values)).clamp_min(0.0) + _LOG_EPS)
    z = (logv - med) / scale
    return torch.where(fin & (k > 0), z, torch.zeros_like(z))


def non_finite(values: Tensor, flags: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Layers whose current sample is NaN/Inf (or whose activation had a non-finite element).

    .. math::
        \\text{flag}_l = \\lnot \\mathrm{isfinite}(v_l) \\lor f_l

    Args:
        values: ``(L,)`` current activity.
        flags: optional ``(L,)`` bool, True where any element of the activation was non-finite.

    Returns:
        ``(flag, value)``: ``(L,)`` bool and ``(L,)`` float (1.0 where flagged, else 0.0).

    Raises:
        TypeError: for non-tensor input.
        ValueError: if ``flags`` has another shape.

    Example::

        >>> non_finite(torch.tensor([1.0, float("nan"), float("inf")]))[0]
        tensor([False,  True,  True])
    """
    values = _as_float(values, "values")
    flag = ~torch.isfinite(values)
    if flags is not None:
        if not isinstance(flags, Tensor) or flags.shape != values.shape:
            raise ValueError(
                f"`flags` must be a bool tensor of shape {tuple(values.shape)}, "
                f"got {getattr(flags, 'shape', flags)!r}."
            )
        flag = flag | flags.to(torch.bool)
    return flag, flag.to(values.dtype)


def explosion(
    values: Tensor,
    history: Tensor,
    valid: Optional[Tensor] = None,
    threshold: float = 6.0,
    min_scale: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """Activity far above its running baseline: robust z-score of log-activity above a threshold.

    .. math::
        \\text{flag}_l = z_l > \\tau  \\quad (z \\text{ from } \\mathtt{robust\\_zscore})

    Args:
        values: ``(L,)`` current activity.
        history: ``(L, W)`` baseline samples.
        valid: optional ``(L, W)`` mask of usable history entries.
        threshold: z above which a layer explodes.
        min_scale: see :func:`robust_zscore`.

    Returns:
        ``(flag, z)``, both ``(L,)``.

    Raises:
        ValueError: see :func:`robust_zscore`.

    Example::

        >>> h = torch.ones(2, 8)
        >>> explosion(torch.tensor([1.01, 10.0]), h)
        (tensor([False,  True]), tensor([ 0.1990, 46.0517]))
    """
    z = robust_zscore(values, history, valid, min_scale=min_scale)
    return z > threshold, z


def collapse(
    values: Tensor,
    baseline: Tensor,
    abs_floor: float = 1e-8,
    rel_floor: float = 1e-2,
) -> tuple[Tensor, Tensor]:
    """Dead layers: activity at ~0 in absolute terms or far below the layer's baseline level.

    .. math::
        \\text{flag}_l = v_l \\le a \\;\\lor\\; v_l \\le r\\, b_l, \\qquad \\text{value}_l = v_l / b_l

    A baseline that is non-finite or ``<= 0`` is not used (only the absolute floor applies and the
    value is ``v_l`` itself).

    Args:
        values: ``(L,)`` current activity.
        baseline: ``(L,)`` baseline activity level (e.g. the history median).
        abs_floor: absolute activity at or below which a layer is dead.
        rel_floor: fraction of the baseline at or below which a layer is dead.

    Returns:
        ``(flag, ratio)``: ``(L,)`` bool and ``(L,)`` activity relative to the baseline; non-finite
        values give ``(False, 0)``.

    Raises:
        TypeError: for non-tensor input.
        ValueError: for mismatched shapes or negative floors.

    Example::

        >>> collapse(torch.tensor([1.0, 0.001, 0.0]), torch.tensor([1.0, 1.0, 0.0]))
        (tensor([False,  True,  True]), tensor([1.0000, 0.0010, 0.0000]))
    """
    values = _as_float(values, "values")
    baseline = _as_float(baseline, "baseline").to(values.dtype)
    if values.ndim != 1 or baseline.shape != values.shape:
        raise ValueError(
            f"`values` and `baseline` must both be (L,), got {tuple(values.shape)} and "
            f"{tuple(baseline.shape)}."
        )
    for name, v in (("abs_floor", abs_floor), ("rel_floor", rel_floor)):
        if not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"`{name}` must be a non-negative number, got {v!r}.")
    fin = torch.isfinite(values)
    v = torch.where(fin, values, torch.zeros_like(values))
    base_ok = torch.isfinite(baseline) & (baseline > 0)
    b = torch.where(base_ok, baseline, torch.ones_like(baseline))
    ratio = v / b
    flag = fin & ((v <= abs_floor) | (base_ok & (ratio <= rel_floor)))
    return flag, torch.where(fin, ratio, torch.zeros_like(ratio))


def spectral_distance(powers: Tensor, baseline: Tensor) -> Tensor:
    """Hellinger distance between band-power distributions, row-wise, in ``[0, 1]``.

    Rows are normalised to sum to 1 first (absolute or relative powers both work). A row with a
    zero or non-finite total, on either side, gives distance 0.

    .. math::
        H(p, q) = \\sqrt{1 - \\sum_b \\sqrt{p_b q_b}}

    Args:
        powers: ``(L, B)`` band powers.
        baseline: ``(L, B)`` (or ``(B,)``) baseline band powers.

    Returns:
        ``(L,)`` distances.

    Raises:
        TypeError: for non-tensor input.
        ValueError: for mismatched shapes.

    Example::

        >>> spectral_distance(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
        tensor([1., 0.])
    """
    powers = _as_float(powers, "powers")
    baseline = _as_float(baseline, "baseline").to(powers.dtype)
    if powers.ndim != 2 or baseline.shape[-1] != powers.shape[-1] or baseline.ndim > 2:
        raise ValueError(
            f"`powers` must be (L, B) and `baseline` (L, B) or (B,), got {tuple(powers.shape)} and "
            f"{tuple(baseline.shape)}."
        )
    baseline = baseline.expand_as(powers)

    def _norm(p: Tensor) -> tuple[Tensor, Tensor]:
        p = p.clamp_min(0.0)
        tot = p.sum(-1, keepdim=True)
        ok = torch.isfinite(tot) & (tot > 0)
        safe = torch.where(ok, tot, torch.ones_like(tot))
        return torch.where(ok, p / safe, torch.zeros_like(p)), ok.squeeze(-1)

    p, okp = _norm(powers)
    q, okq = _norm(baseline)
    bc = (p * q).sqrt().sum(-1)
    h = (1.0 - bc).clamp(0.0, 1.0).sqrt()
    return torch.where(okp & okq, h, torch.zeros_like(h))


def spectral_shift(
    powers: Tensor,
    baseline: Tensor,
    threshold: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """Band-power vector far from the calibrated baseline (Hellinger distance above a threshold).

    .. math::
        \\text{flag}_l = H(p_l, q_l) > \\tau

    Args:
        powers: ``(L, B)`` current band powers.
        baseline: ``(L, B)`` or ``(B,)`` calibrated band powers.
        threshold: distance in ``[0, 1]`` above which the spectrum has shifted.

    Returns:
        ``(flag, distance)``, both ``(L,)``.

    Raises:
        ValueError: for mismatched shapes or a threshold outside ``[0, 1]``.

    Example::

        >>> spectral_shift(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5, 0.5]))
        (tensor([True]), tensor([0.5412]))
    """
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must be in [0, 1], got {threshold!r}.")
    d = spectral_distance(powers, baseline)
    return d > threshold, d


def detect(
    values: Tensor,
    history: Tensor,
    valid: Optional[Tensor] = None,
    powers: Optional[Tensor] = None,
    baseline_powers: Optional[Tensor] = None,
    nonfinite_flags: Optional[Tensor] = None,
    explosion_threshold: float = 6.0,
    min_scale: float = 0.05,
    abs_floor: float = 1e-8,
    rel_floor: float = 1e-2,
    shift_threshold: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """All per-layer anomaly measures at once, stacked in :data:`ANOMALY_KINDS` order.

    The collapse baseline is the median of the valid history (a layer without valid history only
    gets the absolute floor). Without ``powers``/``baseline_powers`` the spectral-shift row is
    all False / 0.

    .. math::
        F_{kl} = \\text{flag of kind } k \\text{ for layer } l

    Args:
        values: ``(L,)`` current activity.
        history: ``(L, W)`` baseline activity samples.
        valid: optional ``(L, W)`` usable-history mask.
        powers: optional ``(L, B)`` current band powers.
        baseline_powers: optional ``(L, B)`` or ``(B,)`` calibrated band powers.
        nonfinite_flags: optional ``(L,)`` bool, non-finite elements seen in the activation.
        explosion_threshold: z threshold of :func:`explosion`.
        min_scale: scale floor of :func:`robust_zscore`.
        abs_floor: absolute floor of :func:`collapse`.
        rel_floor: relative floor of :func:`collapse`.
        shift_threshold: distance threshold of :func:`spectral_shift`.

    Returns:
        ``(flags, values)``: ``(4, L)`` bool and ``(4, L)`` float.

    Raises:
        ValueError: for mismatched shapes or invalid thresholds.

    Example::

        >>> h = torch.ones(3, 16)
        >>> flags, vals = detect(torch.tensor([1.0, 50.0, 0.0]), h)
        >>> flags.int()
        tensor([[0, 0, 0],
                [0, 1, 0],
                [0, 0, 1],
                [0, 0, 0]], dtype=torch.int32)
    """
    nf_flag, nf_val = non_finite(values, nonfinite_flags)
    ex_flag, z = explosion(values, history, valid, explosion_threshold, min_scale)
    hist = _as_float(history, "history")
    ok = torch.isfinite(hist)
    if valid is not None:
        ok = ok & valid.to(torch.bool)
    base, _ = _masked_median(torch.where(ok, hist, torch.zeros_like(hist)), ok)
    co_flag, ratio = collapse(values, base, abs_floor, rel_floor)
    if powers is not None and baseline_powers is not None:
        sh_flag, dist = spectral_shift(powers, baseline_powers, shift_threshold)
    else:
        dist = torch.zeros_like(nf_val)
        sh_flag = torch.zeros_like(nf_flag)
    flags = torch.stack([nf_flag, ex_flag, co_flag, sh_flag.to(nf_flag.device)])
    vals = torch.stack([nf_val, z.to(nf_val.dtype), ratio.to(nf_val.dtype), dist.to(nf_val.dtype)])
    return flags, vals
