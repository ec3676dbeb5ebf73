"""torchmetrics classes for NN-fMRI measures: region densities and merged zeta statistics.

State and reduction only; the formulas live in :mod:`nn_neuroimaging_lightning.functional.grid`
and :mod:`nn_neuroimaging_lightning.functional.shapley`.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from nn_neuroimaging_lightning._validation import check_int
from nn_neuroimaging_lightning.functional.grid import (
    DEFAULT_EPS,
    DEFAULT_GRID,
    DEFAULT_LAMBDA,
    _as_grid_tuple,
    _check_lam_eps,
    _partition,
    _region_density_compute,
    _region_density_update,
    resolve_grid,
)
from nn_neuroimaging_lightning.functional.shapley import ZetaResult, _check_confidence, _zeta_from_stats

__all__ = ["RegionDensity", "ZetaAggregate"]


class RegionDensity(Metric):
    r"""Density ``phi`` of each micro-region, accumulated over batches (and processes).

    .. math:: \phi(g) = \frac{1}{|g|}\sum_{u \in g} |a_u| + \lambda \log(\sigma_g^2 + \epsilon)

    The state is the per-region sums of ``|a|``, ``a``, ``a^2`` and the element counts (reduced by
    ``sum`` across processes), so ``compute`` gives the density over every element seen since the
    last ``reset``, with the population variance. The state has ``prod(grid)`` slots; a layer smaller
    than the grid uses the first ``prod(clamped grid)`` of them (and warns once). Every update must
    come from activations with the same non-batch shape.

    Args:
        grid: ``(g_h, g_w, g_c)`` etc., see :func:`~nn_neuroimaging_lightning.functional.grid.resolve_grid`.
        lam: weight of the log-variance term.
        eps: variance floor.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: for a bad ``grid``, ``lam`` or ``eps`` (at construction), or an activation whose
            unit shape differs from the first one seen (at update).

    Example::

        >>> metric = RegionDensity(grid=(2, 2, 1), lam=0.0)
        >>> metric.update(torch.ones(4, 1, 4, 4))
        >>> metric.compute()
        tensor([[[1.],
                 [1.]],
        <BLANKLINE>
                [[1.],
                 [1.]]])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    sums: Tensor
    counts: Tensor

    def __init__(
        self, grid=DEFAULT_GRID, lam: float = DEFAULT_LAMBDA, eps: float = DEFAULT_EPS, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.grid = _as_grid_tuple(grid)
        _check_lam_eps(lam, eps)
        self.lam = lam
        self.eps = eps
        slots = math.prod(self.grid)
        self.add_state("sums", default=torch.zeros(slots, 3), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(slots, dtype=torch.long), dist_reduce_fx="sum")
        self._unit_shape: Optional[tuple[int, ...]] = None
        self._grid_shape: Optional[tuple[int, ...]] = None
        self._warned = False

    def update(self, activation: Optional[Tensor] = None, *, sums: Optional[Tensor] = None,
               samples: int = 0, unit_shape: Optional[Sequence[int]] = None) -> None:
        """Add one activation ``(B, ...)`` to the per-region sums.

        Or, for a caller that reduced the activations itself (the NN-fMRI engine sums per unit in
        its hook and scatters into regions once per window, :func:`~nn_neuroimaging_lightning.functional.grid.scatter_unit_sums`):
        ``sums``, the ``(R, 3)`` sums of ``|a|``, ``a``, ``a^2`` per region of ``samples``
        activations of non-batch shape ``unit_shape``, ``R`` the regions of the grid resolved for it.
        """
        if (activation is None) == (sums is None):
            raise ValueError("`RegionDensity.update` takes one of `activation` or `sums`, got "
                             f"{'neither' if activation is None else 'both'}.")
        if activation is not None:
            self._unit_shape_is(tuple(activation.shape[1:]), shown=tuple(activation.shape))
            sums, counts, _ = _region_density_update(activation, self.grid)
        else:
            g = self._unit_shape_is(tuple(unit_shape))
            if not isinstance(sums, Tensor) or tuple(sums.shape) != (math.prod(g), 3):
                raise ValueError(f"`sums` must be ({math.prod(g)}, 3) for the grid {g} of unit shape {tuple(unit_shape)},"
                                 f" got {getattr(sums, 'shape', sums)!r}.")
            counts = _partition((1,) + tuple(unit_shape), self.grid, sums.device)[1] * check_int("samples", samples, 0)
        r = sums.shape[0]
        self.sums[:r] += sums
        self.counts[:r] += counts

    def _unit_shape_is(self, unit_shape: tuple[int, ...], shown: Optional[tuple[int, ...]] = None) -> tuple[int, ...]:
        """Fix the unit shape at the first update (resolving the grid), check it at the next; the resolved grid.
        A clamped grid warns once when the activation's shape is ``shown`` (a caller of ``sums`` says so itself)."""
        if self._unit_shape is None:
            g, clamped = resolve_grid((1,) + unit_shape, self.grid)
            if clamped and shown is not None and not self._warned:
                rank_zero_warn(
                    f"RegionDensity: grid {self.grid} is larger than the activation {shown}; clamped to {g}."
                )
                self._warned = True
            self._unit_shape, self._grid_shape = unit_shape, g
        elif unit_shape != self._unit_shape:
            raise ValueError(
                f"`activation` must keep the unit shape {self._unit_shape} between updates, got {unit_shape}."
            )
        return self._grid_shape

    def compute(self) -> Tensor:
        """Grid-shaped ``phi``."""
        if self._grid_shape is None:
            raise RuntimeError("RegionDensity.compute() called before any update(); no grid shape is known.")
        r = math.prod(self._grid_shape)
        return _region_density_compute(self.sums[:r], self.counts[:r], self._grid_shape, self.lam, self.eps)


class ZetaAggregate(Metric):
    r"""Sufficient statistics of permutation-sampled Shapley values, merged by torchmetrics.

    Each process calls ``update`` with its :class:`~nn_neuroimaging_lightning.functional.shapley.ZetaResult`
    (e.g. from ``shapley_zeta(..., rank=r, world_size=w)``); ``compute`` sums the states across
    processes (``dist_reduce_fx="sum"``) and returns the merged result, like
    :func:`~nn_neuroimaging_lightning.functional.shapley.merge_zeta`.

    .. math:: \hat\zeta = \frac{\sum_r S_r}{\sum_r N_r}

    Like every torchmetrics ``compute``, the result's one-element tensors come back squeezed to 0-d
    (a one-player game): ``.reshape(n_players)`` restores the per-player shape.

    Args:
        n_players: number of players (regions).
        confidence: interval level in (0, 1).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: for a bad ``n_players`` or ``confidence``, or a result with another player count.

    Example::

        >>> from nn_neuroimaging_lightning.functional.shapley import shapley_zeta
        >>> w = torch.tensor([1.0, 3.0], dtype=torch.float64)
        >>> agg = ZetaAggregate(2)
        >>> agg.update(shapley_zeta(lambda m: m.double() @ w, 2, n_permutations=4))
        >>> agg.compute().scores
        tensor([1., 3.], dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, n_players: int, confidence: float = 0.95, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(n_players, bool) or not isinstance(n_players, int) or n_players < 1:
            raise ValueError(f"`n_players` must be a positive int, got {n_players!r}.")
        self.n_players = n_players
        self.confidence = _check_confidence(confidence)
        self.add_state("stat_sum", default=torch.zeros(n_players, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("stat_sum_sq", default=torch.zeros(n_players, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("stat_count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_permutations", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_evaluations", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, result: ZetaResult) -> None:
        """Add one (partial) result's statistics."""
        if tuple(result.stat_sum.shape) != (self.n_players,):
            raise ValueError(
                f"`result` must have {self.n_players} players, got stat_sum of shape {tuple(result.stat_sum.shape)}."
            )
        self.stat_sum += result.stat_sum.to(self.stat_sum)
        self.stat_sum_sq += result.stat_sum_sq.to(self.stat_sum_sq)
        self.stat_count += int(result.stat_count)
        self.n_permutations += int(result.n_permutations)
        self.n_evaluations += int(result.n_evaluations)

    def compute(self) -> ZetaResult:
        """Merged scores, intervals and significance."""
        return _zeta_from_stats(
            self.stat_sum,
            self.stat_sum_sq,
            int(self.stat_count),
            self.confidence,
            int(self.n_permutations),
            int(self.n_evaluations),
        )
