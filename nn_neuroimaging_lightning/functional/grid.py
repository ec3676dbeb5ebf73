"""Micro-region grids over layer activations and their densities (NN-fMRI, SPEC §3).

A layer output is split into micro-regions along its non-batch axes:

* ``(B, C, H, W)``: grid ``(g_h, g_w, g_c)`` over ``(H, W, C)`` (default ``(8, 8, 4)``);
  region ``r = (i_h * g_w + i_w) * g_c + i_c``.
* ``(B, T, D)``: grid ``(g_t, g_d)`` over (time/token, hidden); from a 3-entry grid the first two
  entries are used, so the default gives ``(8, 8)``; region ``r = i_t * g_d + i_d``.
  A ``Conv1d`` output ``(B, C, L)`` has the same rank and is treated the same way: ``C`` is split
  by the first entry and ``L`` by the second (the shape alone cannot tell the two apart).
* ``(B, F)``: grid ``(g_c,)`` over the features; from a 3-entry grid the last entry is used.

Every axis is split like :func:`torch.tensor_split` with an int (the first ``n % g`` parts are
one unit larger), so every unit belongs to exactly one region. A grid entry larger than its axis is
clamped to the axis size; :func:`resolve_grid` reports it so the caller can warn once.

Densities are computed from per-region sums of ``|a|``, ``a`` and ``a^2`` (:func:`unit_sums` reduces
the batch first, :func:`scatter_unit_sums` then scatters units into regions), which is much cheaper on CPU than
``torch.var_mean`` and lets a metric accumulate over steps and processes by plain summation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

from nn_neuroimaging_lightning._validation import check_index

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_LAMBDA",
    "DEFAULT_EPS",
    "resolve_grid",
    "grid_partition",
    "grid_region_sizes",
    "region_sums",
    "unit_sums",
    "add_unit_sums_",
    "scatter_unit_sums",
    "region_density",
    "region_density_from_activation",
]

#: Default grid ``(g_h, g_w, g_c)`` (SPEC §3).
DEFAULT_GRID: tuple[int, int, int] = (8, 8, 4)
#: Default weight of the log-variance term in ``phi``. The seed leaves it unspecified; 0.1 keeps the
#: variance term a correction (``0.1 * log(1e-6) ~ -1.4`` for a dead region) to the mean activity.
DEFAULT_LAMBDA: float = 0.1
#: Default variance floor inside the logarithm.
DEFAULT_EPS: float = 1e-6

_GridLike = Union[int, Sequence[int], None]
_CACHE_SIZE = 64
# (unit_shape, grid, device) -> (region index (unit_shape) int64, region sizes (R,) int64).
# Bounded LRU: a pure cache of shape-only data, it does not change any result.
_PARTITION_CACHE: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()
# (shape, dtype, device) -> ones (3, 1, B) or (1, B) for the batch sums of `unit_sums`/`add_unit_sums_`
# (bounded, shape-only).
_ONES_CACHE: dict = {}


def _as_grid_tuple(grid: _GridLike, name: str = "grid") -> tuple[int, ...]:
    """``grid`` as a tuple of 1-3 positive ints (``None``: :data:`DEFAULT_GRID`); errors name the argument ``name``."""
    if grid is None:
        return DEFAULT_GRID
    if isinstance(grid, bool):
        raise ValueError(f"`{name}` must be positive ints, got {grid!r}.")
    if isinstance(grid, int):
        grid = (grid,)
    if isinstance(grid, Tensor) or not isinstance(grid, Sequence) or isinstance(grid, str):
        raise ValueError(
            f"`{name}` must be a tuple of 1, 2 or 3 positive ints such as (8, 8, 4), got {grid!r}."
        )
    out = []
    for g in grid:
        out.append(check_index(name, g, 1, shown=grid, must="contain positive ints"))  # every entry a positive int
    if not 1 <= len(out) <= 3:
        raise ValueError(
            f"`{name}` must have 1, 2 or 3 entries ((g_c,), (g_t, g_d) or (g_h, g_w, g_c)), got {grid!r}."
        )
    return tuple(out)


def _unit_axes(shape: Sequence[int]) -> tuple[int, ...]:
    """Axis sizes in grid order: (H, W, C), (T, D) or (F,)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        _, c, h, w = shape
        axes = (h, w, c)
    elif len(shape) == 3:
        axes = shape[1:]
    elif len(shape) == 2:
        axes = shape[1:]
    else:
        raise ValueError(
            f"`shape` must be an activation shape (B, F), (B, T, D) or (B, C, H, W), got {shape!r}"
            f" (rank {len(shape)}); flatten or select a tensor of rank 2 to 4."
        )
    if any(a <= 0 for a in axes):
        raise ValueError(f"`shape` must have non-empty non-batch axes, got {shape!r}.")
    return axes


def resolve_grid(shape: Sequence[int], grid: _GridLike = DEFAULT_GRID) -> tuple[tuple[int, ...], bool]:
    r"""Turn a user grid into the grid for one activation shape, clamping oversize entries.

    Args:
        shape: activation shape including the batch axis: ``(B, F)``, ``(B, T, D)`` or ``(B, C, H, W)``.
        grid: ``(g_h, g_w, g_c)`` (used whole for rank 4, first two entries for rank 3, last entry for
            rank 2), ``(g_t, g_d)`` (rank 3 only), ``(g_c,)`` or an int (rank 2 only). ``None`` means
            :data:`DEFAULT_GRID`.

    Returns:
        ``(grid_tuple, clamped)``: the grid in axis order ``(g_h, g_w, g_c)``, ``(g_t, g_d)`` or
        ``(g_c,)`` with every entry at most its axis size, and whether any entry was clamped.

    Raises:
        ValueError: if ``grid`` is not 1 to 3 positive ints, does not fit the rank of ``shape``, or
            ``shape`` is not of rank 2, 3 or 4.

    Example::

        >>> resolve_grid((64, 16, 28, 28), (8, 8, 4))
        ((8, 8, 4), False)
        >>> resolve_grid((64, 3, 5, 5), (8, 8, 4))
        ((5, 5, 3), True)
        >>> resolve_grid((64, 10), (8, 8, 4))
        ((4,), False)
    """
    g = _as_grid_tuple(grid)
    axes = _unit_axes(shape)
    rank = len(axes)
    if rank == 3:
        if len(g) != 3:
            raise ValueError(f"`grid` must be (g_h, g_w, g_c) for a (B, C, H, W) activation, got {grid!r}.")
    elif rank == 2:
        if len(g) == 3:
            g = g[:2]
        elif len(g) != 2:
            raise ValueError(
                f"`grid` must be (g_t, g_d) or (g_h, g_w, g_c) for a (B, T, D) activation, got {grid!r}."
            )
    else:
        if len(g) == 3:
            g = g[2:]
        elif len(g) != 1:
            raise ValueError(f"`grid` must be (g_c,), an int or (g_h, g_w, g_c) for a (B, F) activation, got {grid!r}.")
    clamped_grid = tuple(min(gi, n) for gi, n in zip(g, axes))
    return clamped_grid, clamped_grid != g


def _axis_index(n: int, g: int) -> Tensor:
    """Part index of each of ``n`` positions split into ``g`` parts like ``tensor_split``."""
    q, r = divmod(n, g)
    sizes = torch.tensor([q + 1] * r + [q] * (g - r), dtype=torch.long)
    return torch.repeat_interleave(torch.arange(g), sizes), sizes


def _partition(shape: Sequence[int], grid: _GridLike, device) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    g, _ = resolve_grid(shape, grid)
    axes = _unit_axes(shape)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (tuple(int(s) for s in shape[1:]), g, dev)
    hit = _PARTITION_CACHE.get(key)
    if hit is not None:
        _PARTITION_CACHE.move_to_end(key)
        return hit[0], hit[1], g
    parts = [_axis_index(n, gi) for n, gi in zip(axes, g)]
    if len(axes) == 3:
        (ih, sh), (iw, sw), (ic, sc) = parts
        gh, gw, gc = g
        # (C, H, W): r = (i_h * g_w + i_w) * g_c + i_c
        index = (ih[None, :, None] * gw + iw[None, None, :]) * gc + ic[:, None, None]
        sizes = (sh[:, None, None] * sw[None, :, None] * sc[None, None, :]).reshape(-1)
    elif len(axes) == 2:
        (it, st), (id_, sd) = parts
        index = it[:, None] * g[1] + id_[None, :]  # (T, D)
        sizes = (st[:, None] * sd[None, :]).reshape(-1)
    else:
        index, sizes = parts[0]  # (F,)
    index = index.contiguous().to(dev)
    sizes = sizes.to(dev)
    _PARTITION_CACHE[key] = (index, sizes)
    while len(_PARTITION_CACHE) > _CACHE_SIZE:
        _PARTITION_CACHE.popitem(last=False)
    return index, sizes, g


def grid_partition(
    shape: Sequence[int], grid: _GridLike = DEFAULT_GRID, device: Optional[Union[str, torch.device]] = None
) -> Tensor:
    r"""Region index of every unit of an activation (cached per shape, grid and device).

    Splits follow :func:`torch.tensor_split` per axis; the grid is clamped as in :func:`resolve_grid`.
    The returned tensor is cached and shared: do not modify it in place.

    .. math:: r(h, w, c) = (i_h(h) \, g_w + i_w(w)) \, g_c + i_c(c)

    Args:
        shape: activation shape including the batch axis.
        grid: the grid, see :func:`resolve_grid`.
        device: device of the returned index (default CPU).

    Returns:
        int64 tensor of shape ``shape[1:]`` with values in ``[0, prod(grid))``.

    Raises:
        ValueError: as :func:`resolve_grid`.

    Example::

        >>> grid_partition((1, 5), (2,))
        tensor([0, 0, 0, 1, 1])
        >>> grid_partition((1, 1, 3, 2), (2, 2, 1))
        tensor([[[0, 1],
                 [0, 1],
                 [2, 3]]])
    """
    return _partition(shape, grid, device)[0]


def grid_region_sizes(
    shape: Sequence[int], grid: _GridLike = DEFAULT_GRID, device: Optional[Union[str, torch.device]] = None
) -> Tensor:
    r"""Number of units (per sample) in each region, in region order.

    Args:
        shape: activation shape including the batch axis.
        grid: the grid, see :func:`resolve_grid`.
        device: device of the result (default CPU).

    Returns:
        int64 tensor ``(n_regions,)``; multiply by the batch size for element counts.

    Example::

        >>> grid_region_sizes((1, 5), (2,))
        tensor([3, 2])
    """
    return _partition(shape, grid, device)[1]


def _ones_for_batch(n: int, dtype: torch.dtype, device: torch.device, stacked: bool = True) -> Tensor:
    """Ones that sum a batch of ``n``: ``(3, 1, n)`` for one ``bmm`` over three stacked quantities, else ``(1, n)``."""
    shape = (3, 1, n) if stacked else (1, n)
    if torch.compiler.is_compiling():
        return torch.ones(shape, dtype=dtype, device=device)  # a constant of the graph
    key = (shape, dtype, device)
    hit = _ONES_CACHE.get(key)
    if hit is None:
        if len(_ONES_CACHE) >= _CACHE_SIZE:
            _ONES_CACHE.clear()
        hit = _ONES_CACHE[key] = torch.ones(shape, dtype=dtype, device=device)
    return hit


def unit_sums(activation: Tensor) -> Tensor:
    r"""Per-unit sums over the batch of ``|a|``, ``a`` and ``a^2``: the part of :func:`region_sums` that needs no grid.

    Four aten ops on the activation (``abs``, ``mul``, ``cat``, one ``bmm`` with ones that sums the
    batch of all three quantities at once); no region index, no data-dependent shape and no host
    sync, so it is what a forward hook runs inside a ``torch.compile``'d model. The batch sum is a
    product with ones only (never with zeros), so an infinite activation stays infinite.
    Half-precision inputs are summed in float32, float64 in float64; the result is float32.

    .. math:: s_u = \Big(\sum_b |a_{bu}|,\ \sum_b a_{bu},\ \sum_b a_{bu}^2\Big)

    Args:
        activation: ``(B, *unit_shape)``.

    Returns:
        float32 ``(3, U)`` on the activation's device, ``U = prod(unit_shape)`` in memory order.

    Example::

        >>> unit_sums(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        tensor([[ 4.0000,  2.5000],
                [ 4.0000, -1.5000],
                [10.0000,  4.2500]])
    """
    x = activation.detach()
    if x.dtype != torch.float32 and x.dtype != torch.float64:
        x = x.float()
    n = x.shape[0]
    x = x.flatten(1)  # (B, U); also for an empty batch, where reshape(0, -1) is ambiguous
    stacked = torch.cat((x.abs(), x, x * x)).view(3, n, x.shape[1])  # (3, B, U)
    per_unit = torch.bmm(_ones_for_batch(n, x.dtype, x.device), stacked)  # (3, 1, U)
    return per_unit.view(3, -1).float()  # no-op for float32


def add_unit_sums_(out: Tensor, activation: Tensor) -> Tensor:
    r"""Add the per-unit batch sums of ``|a|``, ``a`` and ``a^2`` (see :func:`unit_sums`) into ``out`` in place.

    For float32 (and half-precision, summed in float32) activations this is ``abs``, ``mul`` and
    three ``addmm_`` with a ``(1, B)`` row of ones straight into the rows of ``out``: no
    ``(3, B, U)`` stack and no separate add, about half the memory traffic of
    ``out += unit_sums(a)``. float64 activations are summed in float64 by :func:`unit_sums`.

    .. math:: \mathrm{out}_u \mathrel{+}= \Big(\sum_b |a_{bu}|,\ \sum_b a_{bu},\ \sum_b a_{bu}^2\Big)

    Args:
        out: float32 ``(3, U)`` accumulator, ``U = prod(unit_shape)``, on the activation's device.
        activation: ``(B, *unit_shape)``.

    Returns:
        ``out``.

    Raises:
        ValueError: if ``out`` is not a float32 ``(3, U)`` tensor.

    Example::

        >>> acc = torch.zeros(3, 2)
        >>> _ = add_unit_sums_(acc, torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        >>> add_unit_sums_(acc, torch.tensor([[1.0, 1.0]]))
        tensor([[ 5.0000,  3.5000],
                [ 5.0000, -0.5000],
                [11.0000,  5.2500]])
    """
    x = activation.detach()
    n_units = math.prod(x.shape[1:])
    if tuple(out.shape) != (3, n_units) or out.dtype != torch.float32:
        raise ValueError(f"`out` must be a float32 (3, {n_units}) tensor, got {out.dtype} {tuple(out.shape)}.")
    if x.dtype == torch.float64:
        return out.add_(unit_sums(x))
    x = x.float().flatten(1)  # (B, U); float() is a no-op for float32
    ones = _ones_for_batch(x.shape[0], x.dtype, x.device, stacked=False)  # (1, B)
    ab = x.abs()
    out[0:1].addmm_(ones, ab)
    out[1:2].addmm_(ones, x)
    out[2:3].addmm_(ones, ab * ab)
    return out


def scatter_unit_sums(
    per_unit: Tensor, region_index: Tensor, n_regions: int, out: Optional[Tensor] = None
) -> Tensor:
    r"""Add per-unit sums (see :func:`unit_sums`) into per-region sums with one ``scatter_add_``.

    .. math:: S_g \mathrel{+}= \sum_{u \in g} s_u

    Args:
        per_unit: float32 ``(3, U)`` from :func:`unit_sums`.
        region_index: int64 index of ``U`` units (any shape, e.g. ``unit_shape`` from
            :func:`grid_partition`), on ``per_unit``'s device.
        n_regions: number of regions (``prod(grid)``).
        out: float32 ``(n_regions, 3)`` accumulator updated in place (``None``: a new zero one).

    Returns:
        ``out`` (or the new ``(n_regions, 3)`` tensor) holding the sums of ``|a|``, ``a``, ``a^2``.

    Raises:
        ValueError: if ``region_index`` does not have ``U`` entries or ``out`` is not ``(n_regions, 3)``.

    Example::

        >>> s = unit_sums(torch.tensor([[1.0, -2.0, 3.0]]))
        >>> scatter_unit_sums(s, torch.tensor([0, 0, 1]), 2)
        tensor([[ 3., -1.,  5.],
                [ 3.,  3.,  9.]])
    """
    if region_index.numel() != per_unit.shape[-1]:
        raise ValueError(
            f"`region_index` must index the {per_unit.shape[-1]} units of `per_unit`, got {region_index.numel()} entries."
        )
    if out is None:
        out = torch.zeros(n_regions, 3, dtype=torch.float32, device=per_unit.device)
    elif tuple(out.shape) != (n_regions, 3):
        raise ValueError(f"`out` must have shape ({n_regions}, 3), got {tuple(out.shape)}.")
    out.t().scatter_add_(1, region_index.reshape(1, -1).expand(3, -1), per_unit)  # (3, R) view of out
    return out


def region_sums(activation: Tensor, region_index: Tensor, n_regions: int) -> Tensor:
    r"""Per-region sums of ``|a|``, ``a`` and ``a^2`` over the batch and the region's units.

    The batch is reduced first (:func:`unit_sums`), then the ``(3, units)`` partial sums are
    scattered into regions with one ``scatter_add_`` (:func:`scatter_unit_sums`). Half-precision
    inputs are summed in float32.

    .. math:: S_g = \Big(\sum_{b, u \in g} |a_{bu}|,\ \sum_{b, u \in g} a_{bu},\ \sum_{b, u \in g} a_{bu}^2\Big)

    Args:
        activation: ``(B, *unit_shape)``.
        region_index: int64 ``unit_shape`` from :func:`grid_partition`, on the activation's device.
        n_regions: number of regions (``prod(grid)``).

    Returns:
        float32 ``(n_regions, 3)`` on the activation's device.

    Raises:
        ValueError: if ``region_index`` does not match the activation's unit shape.

    Example::

        >>> a = torch.tensor([[1.0, -2.0, 3.0], [0.0, 2.0, -1.0]])
        >>> region_sums(a, grid_partition(a.shape, (2,)), 2)
        tensor([[ 5.,  1.,  9.],
                [ 4.,  2., 10.]])
    """
    if tuple(region_index.shape) != tuple(activation.shape[1:]):
        raise ValueError(
            f"`region_index` must have the activation's unit shape {tuple(activation.shape[1:])},"
            f" got {tuple(region_index.shape)}."
        )
    return scatter_unit_sums(unit_sums(activation), region_index, n_regions)


def region_density(
    sums: Tensor, counts: Tensor, lam: float = DEFAULT_LAMBDA, eps: float = DEFAULT_EPS
) -> Tensor:
    r"""Density ``phi`` of each region from its sums (see :func:`region_sums`) and element counts.

    The variance is the population variance (``ddof = 0``, like ``torch.var(unbiased=False)``) over
    every element of the region and the batch, computed as ``E[a^2] - E[a]^2`` clamped at 0.
    A region with no element gives NaN.

    .. math:: \phi(g) = \frac{1}{|g|}\sum_{u \in g} |a_u| + \lambda \log(\sigma_g^2 + \epsilon)

    Args:
        sums: ``(..., 3)`` sums of ``|a|``, ``a``, ``a^2``.
        counts: ``(...)`` number of elements summed per region.
        lam: weight ``lambda`` of the log-variance term (default 0.1, see :data:`DEFAULT_LAMBDA`).
        eps: variance floor ``epsilon`` inside the logarithm (> 0).

    Returns:
        ``(...)`` float tensor of ``phi``.

    Raises:
        ValueError: if ``eps`` is not a positive number or ``lam`` not a finite number.

    Example::

        >>> a = torch.tensor([[1.0, -2.0, 3.0], [0.0, 2.0, -1.0]])
        >>> s = region_sums(a, grid_partition(a.shape, (1,)), 1)
        >>> region_density(s, torch.tensor([6]), lam=0.0)
        tensor([1.5000])
    """
    _check_lam_eps(lam, eps)
    n = counts.to(sums.dtype)
    mean_abs = sums[..., 0] / n
    mean = sums[..., 1] / n
    var = (sums[..., 2] / n - mean.square()).clamp_min(0.0)
    return mean_abs + lam * torch.log(var + eps)


def _check_lam_eps(lam: float, eps: float) -> None:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"`lam` must be a finite number, got {lam!r}.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"`eps` must be a positive finite number, got {eps!r}.")


def _region_density_update(activation: Tensor, grid: _GridLike = DEFAULT_GRID) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Sums ``(R, 3)``, element counts ``(R,)`` int64 and the resolved grid for one activation."""
    if not isinstance(activation, Tensor):
        raise TypeError(f"`activation` must be a torch.Tensor, got {type(activation).__name__}.")
    index, sizes, g = _partition(tuple(activation.shape), grid, activation.device)
    n_regions = math.prod(g)
    sums = region_sums(activation, index, n_regions)
    counts = sizes * activation.shape[0]
    return sums, counts, g


def _region_density_compute(
    sums: Tensor, counts: Tensor, grid_shape: Sequence[int], lam: float = DEFAULT_LAMBDA, eps: float = DEFAULT_EPS
) -> Tensor:
    """Grid-shaped ``phi`` from accumulated sums and counts."""
    return region_density(sums, counts, lam, eps).reshape(tuple(grid_shape))


def region_density_from_activation(
    activation: Tensor, grid: _GridLike = DEFAULT_GRID, lam: float = DEFAULT_LAMBDA, eps: float = DEFAULT_EPS
) -> Tensor:
    r"""Grid-shaped density ``phi`` of one activation (over its batch).

    .. math:: \phi(g) = \frac{1}{|g|}\sum_{u \in g} |a_u| + \lambda \log(\sigma_g^2 + \epsilon)

    Args:
        activation: ``(B, F)``, ``(B, T, D)`` or ``(B, C, H, W)``.
        grid: the grid, see :func:`resolve_grid` (clamped silently here; call :func:`resolve_grid`
            to know whether it was).
        lam: weight of the log-variance term.
        eps: variance floor.

    Returns:
        float32 tensor of shape ``grid`` (resolved), e.g. ``(g_h, g_w, g_c)``.

    Raises:
        TypeError: if ``activation`` is not a tensor.
        ValueError: for a bad ``grid``, ``lam``, ``eps`` or activation rank.

    Example::

        >>> a = torch.ones(4, 2, 4, 4)
        >>> region_density_from_activation(a, (2, 2, 2), lam=0.0).shape
        torch.Size([2, 2, 2])
    """
    _check_lam_eps(lam, eps)
    sums, counts, g = _region_density_update(activation, grid)
    return _region_density_compute(sums, counts, g, lam, eps)
