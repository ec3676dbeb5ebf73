"""Cross-modal agreement between NN-EEG (temporal) and NN-fMRI (spatial) findings.

Four measures, each a pure tensor function (SPEC §4):

- :func:`spearman` — rank correlation across layers between EEG gamma power and fMRI max zeta;
- :func:`agreement` — share of recent windows in which the two modalities' anomaly flags agree;
- :func:`coherence` — Jaccard overlap of the layers each modality flags;
- :func:`consistency` — the three combined into one score in ``[0, 1]``;

plus :func:`joint_anomalies`, the layers both modalities flag (the strongest stop signal).

Accumulating measures follow the torchmetrics pattern: a private ``_x_update`` returns the
sufficient statistics of one batch (sums and counts, so that DDP reduction is a plain ``sum``) and
``_x_compute`` turns accumulated statistics into the value. Everything here is device-agnostic and
free of host synchronisation (no ``.item()``, no data-dependent Python branching).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

__all__ = ["agreement", "coherence", "consistency", "joint_anomalies", "spearman"]

_Number = Union[float, int, Tensor]


# --------------------------------------------------------------------------------------------
# argument checks (shapes and dtypes only: metadata, never tensor values, so no host sync)
# --------------------------------------------------------------------------------------------


def _check_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    return x


def _check_bool_pair(name_a: str, a: object, name_b: str, b: object) -> tuple[Tensor, Tensor]:
    a = _check_tensor(name_a, a)
    b = _check_tensor(name_b, b)
    for name, t in ((name_a, a), (name_b, b)):
        if t.dtype != torch.bool:
            raise TypeError(f"`{name}` must be a bool tensor (True = flagged), got dtype {t.dtype}.")
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    return a, b


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


# --------------------------------------------------------------------------------------------
# Spearman rank correlation
# --------------------------------------------------------------------------------------------


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks along the last dim, ties sharing their average rank.

    For a handful of layers the pairwise comparison is cheaper than a sort and handles ties exactly:
    ``rank_i = #{j: x_j < x_i} + (#{j: x_j == x_i} + 1) / 2``.
    """
    xi = x.unsqueeze(-1)  # (..., L, 1)
    xj = x.unsqueeze(-2)  # (..., 1, L)
    less = (xj < xi).sum(-1)  # (..., L)
    equal = (xj == xi).sum(-1)  # (..., L), includes self
    return less.to(x.dtype) + (equal.to(x.dtype) + 1.0) / 2.0


def _spearman_rho(x: Tensor, y: Tensor) -> Tensor:
    """Spearman's rho along the last dim; NaN where undefined. Shapes (..., L) -> (...)."""
    x = _check_tensor("x", x)
    y = _check_tensor("y", y)
    if x.dtype == torch.bool or y.dtype == torch.bool or x.is_complex() or y.is_complex():
        raise TypeError(f"`x` and `y` must be real-valued tensors, got dtypes {x.dtype} and {y.dtype}.")
    if x.ndim == 0 or x.shape != y.shape:
        raise ValueError(
            "`x` and `y` must have the same shape (..., L) with at least one dim, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    dtype = _float_dtype(x, y)
    x = x.to(dtype)
    y = y.to(dtype)
    n_layers = x.shape[-1]
    if n_layers < 3:
        # Two points are always perfectly (anti-)correlated: no information, so undefined.
        return torch.full(x.shape[:-1], float("nan"), dtype=dtype, device=x.device)
    rx = _average_ranks(x)
    ry = _average_ranks(y)
    rx = rx - rx.mean(-1, keepdim=True)
    ry = ry - ry.mean(-1, keepdim=True)
    cov = (rx * ry).sum(-1)  # (...)
    var = (rx * rx).sum(-1) * (ry * ry).sum(-1)  # (...)
    # Ranks of a non-constant series differ by >= 0.5, so var is exactly 0 only for a constant one.
    defined = (var > 0) & ~(torch.isnan(x).any(-1) | torch.isnan(y).any(-1))
    rho = cov / torch.where(defined, var, torch.ones_like(var)).sqrt()
    rho = rho.clamp(-1.0, 1.0)
    return torch.where(defined, rho, torch.full_like(rho, float("nan")))


def _spearman_update(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of the defined rhos of a batch of (x, y) series and how many were defined.

    Args:
        x: ``(..., L)`` one series per leading index (e.g. EEG gamma power per layer).
        y: ``(..., L)`` the paired series (e.g. fMRI max zeta per layer).

    Returns:
        ``(rho_sum, n_defined)``: scalar tensors; undefined rhos (NaN) are left out of both.
    """
    rho = _spearman_rho(x, y)  # (...)
    defined = ~torch.isnan(rho)
    rho_sum = torch.where(defined, rho, torch.zeros_like(rho)).sum()
    return rho_sum, defined.sum()


def _spearman_compute(rho_sum: Tensor, n_defined: Tensor) -> Tensor:
    """Mean of the defined rhos; NaN when none was defined (rho undefined).

    Example::

        >>> rho_sum, n = _spearman_update(torch.tensor([1., 2., 3.]), torch.tensor([3., 2., 1.]))
        >>> _spearman_compute(rho_sum, n)
        tensor(-1.)
    """
    n = n_defined.to(rho_sum.dtype)
    return torch.where(n > 0, rho_sum / n.clamp(min=1.0), torch.full_like(rho_sum, float("nan")))


def spearman(x: Tensor, y: Tensor) -> Tensor:
    r"""Spearman rank correlation across layers, ties sharing their average rank.

    .. math:: \rho = \frac{\sum_l (r_l - \bar r)(s_l - \bar s)}
        {\sqrt{\sum_l (r_l - \bar r)^2 \, \sum_l (s_l - \bar s)^2}}

    with :math:`r, s` the (average) ranks of ``x`` and ``y`` along the last dim; this equals
    ``scipy.stats.spearmanr`` including ties.

    rho is undefined — returned as NaN, never raised — when there are fewer than three layers
    (two points are always perfectly correlated, so they carry no information), when either series
    is constant (no ranking), or when either holds a NaN. ``±inf`` are ordinary, orderable values.
    :func:`consistency` maps an undefined rho to the neutral ``rho' = 0.5``.

    Args:
        x: ``(..., L)`` real tensor, e.g. EEG gamma power per layer.
        y: ``(..., L)`` real tensor of the same shape, e.g. fMRI max zeta per layer.

    Returns:
        ``(...)`` tensor of rho in ``[-1, 1]`` (or NaN), float64 if an input is float64, else
        float32, on the inputs' device.

    Raises:
        TypeError: If ``x`` or ``y`` is not a real-valued tensor.
        ValueError: If the shapes differ or the inputs are 0-d.

    Example::

        >>> spearman(torch.tensor([0.1, 0.5, 0.3, 0.9]), torch.tensor([1.0, 3.0, 2.0, 8.0]))
        tensor(1.)
        >>> spearman(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0]))  # fewer than 3 layers
        tensor(nan)
    """
    return _spearman_rho(x, y)


# --------------------------------------------------------------------------------------------
# flag agreement over windows
# --------------------------------------------------------------------------------------------


def _agreement_update(eeg_flags: Tensor, fmri_flags: Tensor) -> tuple[Tensor, Tensor]:
    """Number of windows whose two flags agree, and the number of windows (int64 scalars)."""
    eeg_flags, fmri_flags = _check_bool_pair("eeg_flags", eeg_flags, "fmri_flags", fmri_flags)
    n_agree = (eeg_flags == fmri_flags).sum()
    n_windows = torch.tensor(eeg_flags.numel(), dtype=torch.int64, device=eeg_flags.device)
    return n_agree, n_windows


def _agreement_compute(n_agree: Tensor, n_windows: Tensor) -> Tensor:
    """``n_agree / n_windows``, and 1.0 when there were no windows (nothing disagrees).

    Example::

        >>> _agreement_compute(torch.tensor(3), torch.tensor(4))
        tensor(0.7500)
        >>> _agreement_compute(torch.tensor(0), torch.tensor(0))
        tensor(1.)
    """
    n = n_windows.to(torch.get_default_dtype() if not n_agree.is_floating_point() else n_agree.dtype)
    a = n_agree.to(n.dtype)
    return torch.where(n > 0, a / n.clamp(min=1.0), torch.ones_like(n))


def agreement(eeg_flags: Tensor, fmri_flags: Tensor) -> Tensor:
    r"""Share of windows in which the EEG and fMRI anomaly flags agree.

    A window agrees when both modalities flag it (EEG anomaly or abnormal state, fMRI spatial
    anomaly) or neither does.

    .. math:: \mathrm{agreement} = \frac{1}{N} \sum_{n=1}^{N} [e_n = f_n]

    With no window (``N = 0``) the result is 1.0: nothing disagrees, and a neutral-but-finite value
    keeps :func:`consistency` NaN-free at the start of a run.

    Args:
        eeg_flags: ``(N,)`` (or any shape) bool tensor, True where EEG flagged the window.
        fmri_flags: bool tensor of the same shape, True where fMRI flagged the window.

    Returns:
        Scalar float tensor in ``[0, 1]`` on the inputs' device.

    Raises:
        TypeError: If a flag tensor is not a bool tensor.
        ValueError: If the shapes differ.

    Example::

        >>> agreement(torch.tensor([True, False, False, True]), torch.tensor([True, False, True, False]))
        tensor(0.5000)
    """
    return _agreement_compute(*_agreement_update(eeg_flags, fmri_flags))


# --------------------------------------------------------------------------------------------
# layer coherence (Jaccard)
# --------------------------------------------------------------------------------------------


def _coherence_update(eeg_layers: Tensor, fmri_layers: Tensor) -> tuple[Tensor, Tensor]:
    """Size of the intersection and of the union of the flagged layers (int64 scalars)."""
    eeg_layers, fmri_layers = _check_bool_pair("eeg_layers", eeg_layers, "fmri_layers", fmri_layers)
    return (eeg_layers & fmri_layers).sum(), (eeg_layers | fmri_layers).sum()


def _coherence_compute(intersection: Tensor, union: Tensor) -> Tensor:
    """``intersection / union``, and 1.0 when the union is empty (both flag nothing).

    Example::

        >>> _coherence_compute(torch.tensor(1), torch.tensor(3))
        tensor(0.3333)
    """
    u = union.to(torch.get_default_dtype() if not union.is_floating_point() else union.dtype)
    i = intersection.to(u.dtype)
    return torch.where(u > 0, i / u.clamp(min=1.0), torch.ones_like(u))


def coherence(eeg_layers: Tensor, fmri_layers: Tensor) -> Tensor:
    r"""Jaccard overlap between the layers flagged by each modality.

    .. math:: \mathrm{coherence} = \frac{|E \cap F|}{|E \cup F|}, \quad 1 \text{ if } E \cup F = \emptyset

    Args:
        eeg_layers: ``(L,)`` bool tensor, True for layers NN-EEG flags.
        fmri_layers: ``(L,)`` bool tensor, True for layers NN-fMRI flags (same layer order).
            Any matching shape is accepted; all elements are pooled.

    Returns:
        Scalar float tensor in ``[0, 1]`` on the inputs' device.

    Raises:
        TypeError: If a flag tensor is not a bool tensor.
        ValueError: If the shapes differ.

    Example::

        >>> coherence(torch.tensor([True, True, False, True]), torch.tensor([False, True, False, False]))
        tensor(0.3333)
        >>> coherence(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))
        tensor(1.)
    """
    return _coherence_compute(*_coherence_update(eeg_layers, fmri_layers))


def joint_anomalies(eeg_layers: Tensor, fmri_layers: Tensor) -> Tensor:
    r"""Layers flagged by both modalities: the strongest early-stopping signal.

    .. math:: J_l = E_l \wedge F_l

    Args:
        eeg_layers: ``(L,)`` bool tensor, True for layers NN-EEG flags.
        fmri_layers: ``(L,)`` bool tensor of the same shape, True for layers NN-fMRI flags.

    Returns:
        ``(L,)`` bool tensor, True where both flag the layer.

    Raises:
        TypeError: If a flag tensor is not a bool tensor.
        ValueError: If the shapes differ.

    Example::

        >>> joint_anomalies(torch.tensor([True, True, False]), torch.tensor([False, True, True]))
        tensor([False,  True, False])
    """
    eeg_layers, fmri_layers = _check_bool_pair("eeg_layers", eeg_layers, "fmri_layers", fmri_layers)
    return eeg_layers & fmri_layers


# --------------------------------------------------------------------------------------------
# combined score
# --------------------------------------------------------------------------------------------


def consistency(rho: _Number, agreement: _Number, coherence: _Number) -> Tensor:
    r"""Cross-modal consistency score in ``[0, 1]``.

    .. math:: \mathrm{consistency} = \frac{1}{3}\left(\frac{\rho + 1}{2} + \mathrm{agreement}
        + \mathrm{coherence}\right)

    The seed averages rho itself, which lies in ``[-1, 1]``; here ``rho' = (rho + 1) / 2`` so that
    every term, and the score, lies in ``[0, 1]``. Robustness decisions (so the score is always a
    number in ``[0, 1]``):

    - an undefined rho (NaN: fewer than three layers, a constant series) counts as the neutral
      ``rho' = 0.5`` — neither agreement nor disagreement between the modalities;
    - a NaN ``agreement`` or ``coherence`` likewise counts as 0.5;
    - out-of-range values (including ``±inf``) are clamped: rho to ``[-1, 1]``, the others to
      ``[0, 1]``.

    Args:
        rho: Spearman rho (tensor of any shape, or a Python number), e.g. from :func:`spearman`.
        agreement: flag agreement in ``[0, 1]``, e.g. from :func:`agreement`.
        coherence: layer coherence in ``[0, 1]``, e.g. from :func:`coherence`.

    Returns:
        Float tensor of the broadcast shape, in ``[0, 1]``, on the device of the tensor inputs.

    Raises:
        TypeError: If an argument is neither a tensor nor a real number.

    Example::

        >>> consistency(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))
        tensor(1.)
        >>> consistency(torch.tensor(float("nan")), 0.5, 1 / 3)  # rho undefined -> rho' = 0.5
        tensor(0.4444)
    """
    args = {"rho": rho, "agreement": agreement, "coherence": coherence}
    device = None
    dtype = torch.float32
    for name, value in args.items():
        if isinstance(value, Tensor):
            if value.dtype == torch.bool or value.is_complex():
                raise TypeError(f"`{name}` must be a real-valued tensor or number, got dtype {value.dtype}.")
            device = value.device if device is None else device
            if value.dtype == torch.float64:
                dtype = torch.float64
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"`{name}` must be a tensor or a real number, got {type(value).__name__}.")
    r, a, c = (torch.as_tensor(v, device=device).to(dtype) for v in args.values())
    neutral = torch.tensor(0.5, dtype=dtype, device=device)
    r = torch.where(torch.isnan(r), neutral, (r.clamp(-1.0, 1.0) + 1.0) / 2.0)
    a = torch.where(torch.isnan(a), neutral, a.clamp(0.0, 1.0))
    c = torch.where(torch.isnan(c), neutral, c.clamp(0.0, 1.0))
    return ((r + a + c) / 3.0).clamp(0.0, 1.0)
