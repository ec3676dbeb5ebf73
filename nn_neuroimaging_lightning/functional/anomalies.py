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

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "ABS_FLOOR",
    "ANOMALY_KINDS",
    "COLLAPSE_RATIO",
    "EXPLOSION_Z",
    "MAD_SCALE",
    "MIN_HISTORY",
    "MIN_SCALE",
    "SHIFT_THRESHOLD",
    "baseline_coefficients",
    "collapse",
    "judge",
    "judge_score_host",
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
_TINY = 1e-30

# ---- The one set of defaults of the judgement (NNEEGCallback, Monitor, detect and every function here).
#: Robust z-score of log-activity above which a layer explodes.
EXPLOSION_Z: float = 8.0
#: Scale floor of the robust z-score, in log units. With ``EXPLOSION_Z = 8`` a layer explodes when its
#: activity exceeds ``exp(8 * 0.5) = 55x`` the median of its baseline (more when the baseline is
#: noisier): early-training rises (up to ~10x in 20 steps at a healthy learning rate) and the healthy
#: BERT's attention output (an ``explosion`` with the former 0.05) stay quiet, while weights x1e3 give
#: z ~ 14 and NaN is ``non_finite``.
MIN_SCALE: float = 0.5
#: Activity at or below this fraction of the baseline median is a collapse (dead layer).
COLLAPSE_RATIO: float = 1e-3
#: Activity at or below which a layer is dead whatever its baseline.
ABS_FLOOR: float = 1e-8
#: Hellinger distance of relative band powers from the baseline above which the spectrum shifted
#: (healthy 500-step client runs reach 0.71: BERT seed 101; 0.65: the CNN and BERT, seed 100).
SHIFT_THRESHOLD: float = 0.8
#: Finite baseline samples a layer needs before it is judged.
MIN_HISTORY: int = 16


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
    min_scale: float = MIN_SCALE,
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
        ([1.0], [3], [0.5])
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
    min_scale: float = MIN_SCALE,
) -> Tensor:
    """Robust z-score of log-activity against the median/MAD of each layer's valid history.

    The scale is ``1.4826 * MAD`` (a normal-consistent standard deviation) floored at
    ``min_scale`` log units, so a constant history does not make every change infinite: with the
    default :data:`MIN_SCALE` = 0.5, a 2x jump over a flat baseline gives ``z = log 2 / 0.5 ≈ 1.39``.

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
        >>> robust_zscore(torch.tensor([1.0, 2.0]), h, min_scale=0.05)
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
    threshold: float = EXPLOSION_Z,
    min_scale: float = MIN_SCALE,
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
        >>> explosion(torch.tensor([1.01, 100.0]), h)
        (tensor([False,  True]), tensor([0.0199, 9.2103]))
    """
    z = robust_zscore(values, history, valid, min_scale=min_scale)
    return z > threshold, z


def collapse(
    values: Tensor,
    baseline: Tensor,
    abs_floor: float = ABS_FLOOR,
    rel_floor: float = COLLAPSE_RATIO,
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
    threshold: float = SHIFT_THRESHOLD,
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

        >>> spectral_shift(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5, 0.5]), threshold=0.3)
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
    explosion_threshold: float = EXPLOSION_Z,
    min_scale: float = MIN_SCALE,
    abs_floor: float = ABS_FLOOR,
    rel_floor: float = COLLAPSE_RATIO,
    shift_threshold: float = SHIFT_THRESHOLD,
    min_count: int = 1,
) -> tuple[Tensor, Tensor]:
    """All per-layer anomaly measures at once, stacked in :data:`ANOMALY_KINDS` order.

    Explosion and collapse are judged by :func:`baseline_coefficients` and :func:`judge` (the
    judgement NNEEGCallback and Monitor make): the collapse baseline is the median of the valid
    history; a layer with fewer than ``min_count`` valid history samples is not judged. Without
    ``powers``/``baseline_powers`` the spectral-shift row is all False / 0.

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
        min_count: valid history samples a layer needs to be judged for explosion/collapse.

    Returns:
        ``(flags, values)``: ``(4, L)`` bool and ``(4, L)`` float.

    Raises:
        ValueError: for mismatched shapes or invalid thresholds.

    Example::

        >>> h = torch.ones(3, 16)
        >>> flags, vals = detect(torch.tensor([1.0, 100.0, 0.0]), h)
        >>> flags.int()
        tensor([[0, 0, 0],
                [0, 1, 0],
                [0, 0, 1],
                [0, 0, 0]], dtype=torch.int32)
    """
    nf_flag, nf_val = non_finite(values, nonfinite_flags)
    values = _as_float(values, "values")
    hist = _as_float(history, "history")
    if values.ndim != 1 or hist.ndim != 2 or hist.shape[0] != values.shape[0]:
        raise ValueError(
            f"`values` must be (L,) and `history` (L, W), got {tuple(values.shape)} and {tuple(hist.shape)}."
        )
    if valid is not None and (not isinstance(valid, Tensor) or valid.shape != hist.shape):
        raise ValueError(f"`valid` must be a bool tensor of shape {tuple(hist.shape)}, got {getattr(valid, 'shape', valid)!r}.")
    neg_med, inv, floor, level = baseline_coefficients(
        hist, valid, explosion_z=explosion_threshold, collapse_ratio=rel_floor, min_scale=min_scale,
        abs_floor=abs_floor, min_count=min_count,
    )
    ex_flag, co_flag, e, _ = judge(values, (neg_med, inv, floor))
    fin = torch.isfinite(values)
    z = torch.where(fin, e * explosion_threshold, torch.zeros_like(e))
    v = torch.where(fin, values, torch.zeros_like(values))
    base_ok = torch.isfinite(level) & (level > 0)
    ratio = torch.where(base_ok, v / torch.where(base_ok, level, torch.ones_like(level)), v)
    if powers is not None and baseline_powers is not None:
        sh_flag, dist = spectral_shift(powers, baseline_powers, shift_threshold)
    else:
        dist = torch.zeros_like(nf_val)
        sh_flag = torch.zeros_like(nf_flag)
    flags = torch.stack([nf_flag, ex_flag, co_flag, sh_flag.to(nf_flag.device)])
    vals = torch.stack([nf_val, z.to(nf_val.dtype), ratio.to(nf_val.dtype), dist.to(nf_val.dtype)])
    return flags, vals


def baseline_coefficients(
    history: Tensor,
    valid: Optional[Tensor] = None,
    *,
    explosion_z: float = EXPLOSION_Z,
    collapse_ratio: float = COLLAPSE_RATIO,
    min_scale: float = MIN_SCALE,
    abs_floor: float = ABS_FLOOR,
    min_count: int = 1,
    judged: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The explosion/collapse judgement of a baseline, as per-layer coefficients for :func:`judge`.

    .. math::
        e_l = \\frac{\\log(x_l + \\epsilon) - m_l}{s_l\\, z^*} = \\log(x_l + \\epsilon)\\,\\mathrm{inv}_l + \\mathrm{neg\\_med}_l,
        \\qquad c_l = \\frac{\\max(r\\, b_l,\\ a)}{x_l}

    with ``m, s, b`` of :func:`robust_baseline`: ``e > 1`` is an explosion (``z > z*``),
    ``c >= 1`` a collapse (``x <= max(r b, a)``). Computed once per baseline, so that judging a
    sample is two element-wise ops (NNEEGCallback refreshes its baseline every few samples,
    Monitor once after calibration). A layer with fewer than ``min_count`` valid samples, or
    ``False`` in ``judged`` (e.g. a module that never ran), is not judged: ``inv`` ~0, ``floor`` 0.

    Args:
        history: ``(L, W)`` baseline activity samples.
        valid: optional ``(L, W)`` usable-entry mask.
        explosion_z: z-score threshold ``z*``.
        collapse_ratio: ``r``.
        min_scale: scale floor of :func:`robust_baseline`.
        abs_floor: ``a``.
        min_count: valid samples needed to judge a layer.
        judged: optional ``(L,)`` bool, layers that may be judged at all.

    Returns:
        ``(neg_med, inv, floor, level)``, each ``(L,)`` (``level``: the baseline median ``b``).

    Example::

        >>> neg_med, inv, floor, level = baseline_coefficients(torch.ones(1, 16))
        >>> judge(torch.tensor([100.0]), (neg_med, inv, floor))[0]
        tensor([True])
    """
    med, scale, level, k = robust_baseline(history, valid, min_scale)
    ok = k >= min_count
    if judged is not None:
        ok = ok & judged.to(device=ok.device, dtype=torch.bool)
    inv = torch.where(ok, 1.0 / (scale * explosion_z), torch.full_like(scale, _TINY))
    neg_med = torch.where(ok, -med * inv, torch.zeros_like(med))
    floor = torch.where(ok, (collapse_ratio * level).clamp_min(abs_floor), torch.zeros_like(level))
    return neg_med, inv, floor, level


def judge(values: Tensor, coefficients: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Explosion and collapse of ``(L,)`` activity against :func:`baseline_coefficients`.

    Returns:
        ``(exploded, collapsed, e, c)``: ``(L,)`` bool flags (``False`` for a non-finite value,
        which is :func:`non_finite`'s) and the ``(L,)`` scores ``e`` (``z / z*``) and ``c``
        (``floor / x``); an anomaly when ``max(e, c) >= 1``.
    """
    neg_med, inv, floor = coefficients
    e = torch.addcmul(neg_med, torch.log(values.clamp_min(0.0) + _LOG_EPS), inv)
    c = floor / values.clamp_min(_TINY)
    fin = torch.isfinite(values)
    return fin & (e > 1.0), fin & (c >= 1.0), e, c


def judge_score_host(x: list, neg_med: list, inv: list, floor: list) -> float:
    """``max_l max(e_l, c_l)`` of :func:`judge` on host floats (lists of Python floats).

    The same formula, for the CPU path of a training step: for a handful of layers a loop of float
    ops costs less than dispatching tensor ops. NaN when any ``x`` is NaN, ``inf`` when any is
    infinite; ``0.0`` for no layers.

    Example::

        >>> round(judge_score_host([1.0, 4.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.0]), 9)
        1.386294361
        >>> judge_score_host([float("nan")], [0.0], [1.0], [0.0])
        nan
    """
    top = -math.inf if x else 0.0
    for v, m, a, f in zip(x, neg_med, inv, floor):
        if not v < math.inf:  # NaN or +inf
            return v
        e = math.log((v if v > 0.0 else 0.0) + _LOG_EPS) * a + m
        c = f / (v if v > _TINY else _TINY)
        if e > top:
            top = e
        if c > top:
            top = c
    return top
