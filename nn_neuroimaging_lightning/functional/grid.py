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

Densities are computed from per-region sums of ``|a|``, ``a`` and ``a^2`` (one pass that reduces
the batch first, then scatters units into regions), which is much cheaper on CPU than
``torch.var_mean`` and lets a metric accumulate over steps and processes by plain summation.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_LAMBDA",
    "DEFAULT_EPS",
    "resolve_grid",
    "grid_partition",
    "grid_region_sizes",
    "region_sums",
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


def _as_grid_tuple(grid: _GridLike) -> tuple[int, ...]:
    if grid is None:
        return DEFAULT_GRID
    if isinstance(grid, bool):
        raise ValueError(f"`grid` must be positive ints, got {grid!r}.")
    if isinstance(grid, int):
        grid = (grid,)
    if isinstance(grid, Tensor) or not isinstance(grid, Sequence) or isinstance(grid, str):
        raise ValueError(
            f"`grid` must be a tuple of 1, 2 or 3 positive ints such as (8, 8, 4), got {grid!r}."
        )
    out = []
    for g in grid:
        if isinstance(g, bool):
            raise ValueError(f"`grid` must contain positive ints, got {grid!r}.")
        try:
            gi = operator.index(g)
        except TypeError:
            raise ValueError(f"`grid` must contain positive ints, got {grid!r}.") from None
        if gi <= 0:
            raise ValueError(f"`grid` must contain positive ints, got {grid!r}.")
        out.append(gi)
    if not 1 <= len(out) <= 3:
        raise ValueError(
            f"`grid` must have 1, 2 or 3 entries ((g_c,), (g_t, g_d) or (g_h, g_w, g_c)), got {grid!r}."
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


def region_sums(activation: Tensor, region_index: Tensor, n_regions: int) -> Tensor:
    r"""Per-region sums of ``|a|``, ``a`` and ``a^2`` over the batch and the region's units.

    The batch is reduced first (three reductions of the activation), then the ``(3, units)``
    partial sums are scattered into regions with one ``scatter_add_``. Half-precision inputs are
    summed in float32.

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
    x = activation.detach()
    if x.dtype != torch.float32 and x.dtype != torch.float64:
        x = x.float()
    x = x.flatten(1)  # (B, U); also for an empty batch, where reshape(0, -1) is ambiguous
    per_unit = torch.empty(3, x.shape[1], dtype=x.dtype, device=x.device)  # (3, U), written in place
    torch.sum(x.abs(), 0, out=per_unit[0])
    torch.sum(x, 0, out=per_unit[1])
    torch.sum(x.square(), 0, out=per_unit[2])
    per_unit = per_unit.float()  # no-op for float32
    idx = region_index.reshape(1, -1).expand(3, -1)
    out = torch.zeros(3, n_regions, dtype=torch.float32, device=x.device)
    out.scatter_add_(1, idx, per_unit)
    return out.t()  # (R, 3)


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
