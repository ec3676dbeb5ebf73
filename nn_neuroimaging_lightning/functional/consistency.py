r"""Cross-modal agreement between NN-EEG (temporal) and NN-fMRI (spatial) findings.

Four measures, each a pure tensor function (SPEC §4):

- :func:`spearman` — rank correlation across layers between EEG gamma power and fMRI max zeta;
- :func:`agreement` — share of recent windows in which the two modalities' anomaly flags agree;
- :func:`coherence` — Jaccard overlap of the layers each modality flags;
- :func:`consistency` — the three combined into one score in ``[0, 1]``;

plus :func:`joint_anomalies`, the layers both modalities flag (the strongest stop signal).

**Undefined is NaN.** A term that cannot be computed is NaN, never a stand-in number, and
:func:`consistency` is NaN whenever one of its terms is:

========================  ===================================================================
term                      NaN when
========================  ===================================================================
``rho``                   fewer than 3 layers (two points are always perfectly correlated, so
                          they carry no information); either series constant across the layers
                          (no ranking); a NaN in either series
``agreement``             no window to compare (``N = 0``: the share of zero windows is 0/0)
``coherence``             no layer compared (``L = 0``); 1 when layers were compared and
                          neither modality flagged one
``consistency``           any of the three is NaN
========================  ===================================================================

:func:`spearman_undefined` says which rule applies, in words. Which windows and layers count as
compared is the caller's decision (the cross-modal callback compares only windows for which both
modalities have a verdict, see :class:`~nn_neuroimaging_lightning.CrossModalCallback`).

Accumulating measures follow the torchmetrics pattern: a private ``_x_update`` returns the
sufficient statistics of one batch (sums and counts, so that DDP reduction is a plain ``sum``) and
``_x_compute`` turns accumulated statistics into the value; the metric classes in
:mod:`nn_neuroimaging_lightning.metrics.cross_modal` only hold those sums. Agreement, coherence and
the combination are free of host synchronisation; the ranking of :func:`spearman` is not
(``torch.unique`` has a data-dependent size), which is fine for what it serves: one series of a few
layers per zeta evaluation.
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import torch
from torch import Tensor
from torchmetrics.functional import pearson_corrcoef

__all__ = ["agreement", "coherence", "consistency", "joint_anomalies", "spearman", "spearman_undefined"]

_Number = Union[float, int, Tensor]

#: The fewest layers over which rho is defined.
MIN_LAYERS = 3


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


def _check_series(x: object, y: object) -> tuple[Tensor, Tensor]:
    """``x``, ``y`` as real tensors of one shape ``(..., L)``, in float64 if either is, else float32."""
    x = _check_tensor("x", x)
    y = _check_tensor("y", y)
    if x.dtype == torch.bool or y.dtype == torch.bool or x.is_complex() or y.is_complex():
        raise TypeError(f"`x` and `y` must be real-valued tensors, got dtypes {x.dtype} and {y.dtype}.")
    if x.ndim == 0 or x.shape != y.shape:
        raise ValueError(
            "`x` and `y` must have the same shape (..., L) with at least one dim, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    return x.to(dtype), y.to(dtype)


def _ratio(num: Tensor, den: Tensor, empty: float) -> Tensor:
    """``num / den``, and ``empty`` where ``den`` is 0 (float, in ``num``'s float dtype or the default)."""
    dtype = num.dtype if num.is_floating_point() else torch.get_default_dtype()
    n, d = num.to(dtype), den.to(dtype)
    return torch.where(d > 0, n / d.clamp(min=1.0), torch.full_like(d, empty))


# --------------------------------------------------------------------------------------------
# Spearman rank correlation
# --------------------------------------------------------------------------------------------


def _undefined_masks(x: Tensor, y: Tensor) -> Dict[str, Tensor]:
    """The rules that make rho undefined, each a ``(...)`` bool mask over ``(..., L)`` series."""
    n_layers = x.shape[-1]
    batch = x.shape[:-1]
    few = torch.full(batch, n_layers < MIN_LAYERS, dtype=torch.bool, device=x.device)
    nan = torch.isnan(x).any(-1) | torch.isnan(y).any(-1)
    if n_layers == 0:
        constant = torch.zeros(batch, dtype=torch.bool, device=x.device)
    else:
        constant = (x == x[..., :1]).all(-1) | (y == y[..., :1]).all(-1)
    return {
        f"fewer than {MIN_LAYERS} layers": few,
        "a series holds NaN": nan,
        "a series is constant across the layers": constant,
    }


def _average_ranks(rows: Tensor) -> Tensor:
    """1-based ranks along the last dim, ties given their average rank (scipy's ``rankdata``). (B, L) -> (B, L)."""
    below = (rows.unsqueeze(-2) < rows.unsqueeze(-1)).sum(-1)  # (B, L): how many are smaller
    equal = (rows.unsqueeze(-2) == rows.unsqueeze(-1)).sum(-1)  # (B, L): ties, itself included
    return below.to(rows.dtype) + (equal.to(rows.dtype) + 1.0) / 2.0


def _spearman_rho(x: Tensor, y: Tensor) -> Tensor:
    """Spearman's rho along the last dim; NaN where undefined. Shapes (..., L) -> (...)."""
    x, y = _check_series(x, y)
    batch, n_layers = x.shape[:-1], x.shape[-1]
    undefined = torch.stack(list(_undefined_masks(x, y).values())).any(0)  # (...)
    if n_layers < MIN_LAYERS:
        return torch.full(batch, float("nan"), dtype=x.dtype, device=x.device)
    rows_x, rows_y = x.reshape(-1, n_layers), y.reshape(-1, n_layers)  # (B, L)
    # Undefined rows get a stand-in series so that torchmetrics never sees a NaN or a zero
    # variance (it would warn); their rho is replaced by NaN below.
    stand_in = torch.arange(n_layers, dtype=x.dtype, device=x.device).expand_as(rows_x)
    bad = undefined.reshape(-1, 1)
    rows_x = torch.where(bad, stand_in, rows_x)
    rows_y = torch.where(bad, stand_in, rows_y)
    # Spearman = Pearson (torchmetrics) of tie-averaged ranks, in the inputs' dtype. torchmetrics'
    # own `spearman_corrcoef` ranks in float32 and adds 1e-6 to the denominator (a perfect
    # agreement comes out 0.9999992), and its ranking helper is private, so the ranks are taken
    # here: rank_i = #{j: v_j < v_i} + (#{j: v_j = v_i} + 1) / 2, batched, O(L^2) for L layers.
    rho = pearson_corrcoef(_average_ranks(rows_x).T, _average_ranks(rows_y).T).reshape(batch)
    return torch.where(undefined, torch.full_like(rho, float("nan")), rho.clamp(-1.0, 1.0))


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
    return _ratio(rho_sum, n_defined, float("nan"))


def spearman(x: Tensor, y: Tensor) -> Tensor:
    r"""Spearman rank correlation across layers, ties sharing their average rank.

    .. math:: \rho = \frac{\sum_l (r_l - \bar r)(s_l - \bar s)}
        {\sqrt{\sum_l (r_l - \bar r)^2 \, \sum_l (s_l - \bar s)^2}}

    with :math:`r, s` the (average) ranks of ``x`` and ``y`` along the last dim: torchmetrics'
    ranking and Pearson correlation, in the inputs' dtype; this equals ``scipy.stats.spearmanr``
    including ties (to 1e-12 in float64).

    rho is undefined — returned as NaN, never raised — when there are fewer than three layers,
    when either series is constant, or when either holds a NaN (:func:`spearman_undefined` says
    which). ``±inf`` are ordinary, orderable values.

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


def spearman_undefined(x: Tensor, y: Tensor) -> Optional[str]:
    """Why :func:`spearman` of one pair of ``(L,)`` series is undefined, or ``None`` if it is defined.

    Args:
        x: ``(L,)`` real tensor.
        y: ``(L,)`` real tensor.

    Returns:
        The first rule that applies, in words (``"fewer than 3 layers"``, ``"a series holds NaN"``,
        ``"a series is constant across the layers"``), or ``None``.

    Raises:
        TypeError: If ``x`` or ``y`` is not a real-valued tensor.
        ValueError: If the shapes differ or are not ``(L,)``.

    Example::

        >>> spearman_undefined(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0]))
        'fewer than 3 layers'
        >>> spearman_undefined(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 1.0, 0.0])) is None
        True
    """
    x, y = _check_series(x, y)
    if x.ndim != 1:
        raise ValueError(f"`x` and `y` must be one series each, shape (L,), got {tuple(x.shape)}.")
    return next((rule for rule, mask in _undefined_masks(x, y).items() if bool(mask)), None)


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
    """``n_agree / n_windows``, and NaN when there was no window (undefined).

    Example::

        >>> _agreement_compute(torch.tensor(3), torch.tensor(4))
        tensor(0.7500)
        >>> _agreement_compute(torch.tensor(0), torch.tensor(0))
        tensor(nan)
    """
    return _ratio(n_agree, n_windows, float("nan"))


def agreement(eeg_flags: Tensor, fmri_flags: Tensor) -> Tensor:
    r"""Share of windows in which the EEG and fMRI anomaly flags agree.

    A window agrees when both modalities flag it (EEG anomaly or abnormal state, fMRI spatial
    anomaly) or neither does.

    .. math:: \mathrm{agreement} = \frac{1}{N} \sum_{n=1}^{N} [e_n = f_n]

    With no window (``N = 0``) the share is undefined: NaN.

    Args:
        eeg_flags: ``(N,)`` (or any shape) bool tensor, True where EEG flagged the window.
        fmri_flags: bool tensor of the same shape, True where fMRI flagged the window.

    Returns:
        Scalar float tensor in ``[0, 1]`` (NaN without windows) on the inputs' device.

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


def _coherence_update(eeg_layers: Tensor, fmri_layers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sizes of the intersection and of the union of the flagged layers, and how many layers were compared."""
    eeg_layers, fmri_layers = _check_bool_pair("eeg_layers", eeg_layers, "fmri_layers", fmri_layers)
    n_layers = torch.tensor(eeg_layers.numel(), dtype=torch.int64, device=eeg_layers.device)
    return (eeg_layers & fmri_layers).sum(), (eeg_layers | fmri_layers).sum(), n_layers


def _coherence_compute(intersection: Tensor, union: Tensor, n_layers: Tensor) -> Tensor:
    """``intersection / union``; 1.0 when the union is empty (both flag nothing); NaN when no layer was compared.

    Example::

        >>> _coherence_compute(torch.tensor(1), torch.tensor(3), torch.tensor(4))
        tensor(0.3333)
        >>> _coherence_compute(torch.tensor(0), torch.tensor(0), torch.tensor(0))
        tensor(nan)
    """
    jaccard = _ratio(intersection, union, 1.0)
    return torch.where(n_layers > 0, jaccard, torch.full_like(jaccard, float("nan")))


def coherence(eeg_layers: Tensor, fmri_layers: Tensor) -> Tensor:
    r"""Jaccard overlap between the layers flagged by each modality.

    .. math:: \mathrm{coherence} = \frac{|E \cap F|}{|E \cup F|}, \quad 1 \text{ if } E \cup F = \emptyset

    Over zero layers (``L = 0``) nothing was compared: NaN.

    Args:
        eeg_layers: ``(L,)`` bool tensor, True for layers NN-EEG flags.
        fmri_layers: ``(L,)`` bool tensor, True for layers NN-fMRI flags (same layer order).
            Any matching shape is accepted; all elements are pooled.

    Returns:
        Scalar float tensor in ``[0, 1]`` (NaN over zero layers) on the inputs' device.

    Raises:
        TypeError, ValueError: As :func:`agreement` (a flag tensor not bool, shapes that differ).

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
    r"""Cross-modal consistency score in ``[0, 1]``, NaN when a term is undefined.

    .. math:: \mathrm{consistency} = \frac{1}{3}\left(\frac{\rho + 1}{2} + \mathrm{agreement}
        + \mathrm{coherence}\right)

    The seed averages rho itself, which lies in ``[-1, 1]``; here ``rho' = (rho + 1) / 2`` so that
    every term, and the score, lies in ``[0, 1]``. A NaN term (undefined: see the module
    docstring) makes the score NaN: there is no neutral stand-in. Out-of-range values (including
    ``±inf``) are clamped: rho to ``[-1, 1]``, the others to ``[0, 1]``.

    Args:
        rho: Spearman rho (tensor of any shape, or a Python number), e.g. from :func:`spearman`.
        agreement: flag agreement in ``[0, 1]``, e.g. from :func:`agreement`.
        coherence: layer coherence in ``[0, 1]``, e.g. from :func:`coherence`.

    Returns:
        Float tensor of the broadcast shape, in ``[0, 1]`` or NaN, on the device of the tensor inputs.

    Raises:
        TypeError: If an argument is neither a tensor nor a real number.

    Example::

        >>> consistency(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))
        tensor(1.)
        >>> consistency(torch.tensor(float("nan")), 0.5, 1 / 3)  # rho undefined
        tensor(nan)
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
    # clamp keeps NaN, so an undefined term stays NaN through the sum
    return (((r.clamp(-1.0, 1.0) + 1.0) / 2.0 + a.clamp(0.0, 1.0) + c.clamp(0.0, 1.0)) / 3.0).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# one evaluation: the three terms' sufficient statistics together
# --------------------------------------------------------------------------------------------


def _consistency_update(
    gamma: Tensor, zeta_max: Tensor, eeg_flags: Tensor, fmri_flags: Tensor, eeg_layers: Tensor, fmri_layers: Tensor
) -> tuple[Tensor, ...]:
    """The sums of :func:`_spearman_update`, :func:`_agreement_update` and :func:`_coherence_update`, in that order."""
    return (
        *_spearman_update(gamma, zeta_max),
        *_agreement_update(eeg_flags, fmri_flags),
        *_coherence_update(eeg_layers, fmri_layers),
    )


def _consistency_compute(
    rho_sum: Tensor, n_defined: Tensor, n_agree: Tensor, n_windows: Tensor, intersection: Tensor, union: Tensor, n_layers: Tensor
) -> Dict[str, Tensor]:
    """``{"consistency", "rho", "agreement", "coherence"}`` from the sums of :func:`_consistency_update`.

    Example::

        >>> sums = _consistency_update(torch.tensor([1., 2., 3.]), torch.tensor([1., 3., 2.]),
        ...                            torch.tensor([True]), torch.tensor([True]),
        ...                            torch.tensor([True, False]), torch.tensor([True, True]))
        >>> {k: round(float(v), 4) for k, v in _consistency_compute(*sums).items()}
        {'consistency': 0.75, 'rho': 0.5, 'agreement': 1.0, 'coherence': 0.5}
    """
    rho = _spearman_compute(rho_sum, n_defined).to(torch.get_default_dtype())
    agree = _agreement_compute(n_agree, n_windows)
    coh = _coherence_compute(intersection, union, n_layers)
    return {"consistency": consistency(rho, agree, coh), "rho": rho, "agreement": agree, "coherence": coh}
