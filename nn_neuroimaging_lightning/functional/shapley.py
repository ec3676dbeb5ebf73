r"""Shapley "zeta" impact scores of micro-regions (NN-fMRI, SPEC §3).

The game is given as ``value_fn(masks) -> values`` with ``masks`` a ``(K, R)`` bool tensor
(True = region kept) and one value per row, so that many coalitions are evaluated in one batched
forward. Two estimators:

* :func:`exact_shapley` enumerates all ``2^R`` coalitions (``R <= 20``).
* :func:`shapley_zeta` samples permutations on a budget of value_fn rows, with antithetic pairs,
  optional truncation, confidence intervals and a significance flag. Partial results from several
  processes (DDP ranks) combine with :func:`merge_zeta` into the same result as one process.

.. math:: \zeta(g) = \mathbb{E}_{S \subseteq G \setminus \{g\}} [f(S \cup \{g\}) - f(S)]
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from scipy.stats import t as student_t
from torch import Tensor

from nn_neuroimaging_lightning._validation import check_index

__all__ = [
    "ZetaResult",
    "exact_shapley",
    "shapley_zeta",
    "merge_zeta",
    "t_quantile",
    "DEFAULT_PERMUTATIONS",
]

ValueFn = Callable[[Tensor], Tensor]

#: Default number of permutations when neither ``budget`` nor ``n_permutations`` is given
#: (128 antithetic pairs; the budget is then ``2 + 256 * (n_players - 1)`` value_fn rows).
DEFAULT_PERMUTATIONS: int = 256
#: Largest game :func:`exact_shapley` enumerates (``2^20`` coalitions).
MAX_EXACT_PLAYERS: int = 20


class ZetaResult(NamedTuple):
    """Estimated Shapley values with their uncertainty and the sufficient statistics to merge.

    Attributes:
        scores: ``(R,)`` mean marginal contribution of each player (``zeta``).
        ci_low: ``(R,)`` lower end of the confidence interval.
        ci_high: ``(R,)`` upper end.
        significant: ``(R,)`` bool, the interval excludes 0.
        n_permutations: permutations evaluated (each antithetic pair counts 2).
        n_evaluations: value_fn rows evaluated (forward passes), ``f(all)`` and ``f(none)`` included.
        stat_sum: ``(R,)`` float64 sum of the per-sample marginals (a sample is one permutation, or
            the average of an antithetic pair).
        stat_sum_sq: ``(R,)`` float64 sum of their squares.
        stat_count: number of samples.
        std_err: ``(R,)`` standard error of ``scores``.
        confidence: the confidence level of the interval.
        marginals: ``(P, R)`` per-permutation marginals when requested, else ``None``.
    """

    scores: Tensor
    ci_low: Tensor
    ci_high: Tensor
    significant: Tensor
    n_permutations: int
    n_evaluations: int
    stat_sum: Tensor
    stat_sum_sq: Tensor
    stat_count: int
    std_err: Tensor
    confidence: float = 0.95
    marginals: Optional[Tensor] = None

    def reshape(self, *shape: int) -> "ZetaResult":
        """Same result with every per-player tensor reshaped (e.g. to the grid shape)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        return self._replace(
            scores=self.scores.reshape(shape),
            ci_low=self.ci_low.reshape(shape),
            ci_high=self.ci_high.reshape(shape),
            significant=self.significant.reshape(shape),
            std_err=self.std_err.reshape(shape),
        )


# --------------------------------------------------------------------------------------------
# argument checks and evaluation


_check_int = check_index


def _check_confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be a number in (0, 1), got {confidence!r}.")
    return float(confidence)


def _value_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _evaluate(value_fn: ValueFn, masks: Tensor, batch_size: int) -> Tensor:
    """Evaluate ``value_fn`` on ``masks`` (K, R) in calls of at most ``batch_size`` rows -> (K,)."""
    outs = []
    for start in range(0, masks.shape[0], batch_size):
        chunk = masks[start : start + batch_size]
        out = value_fn(chunk)
        if not isinstance(out, Tensor):
            raise TypeError(f"`value_fn` must return a torch.Tensor, got {type(out).__name__}.")
        if out.shape != (chunk.shape[0],):
            raise ValueError(
                f"`value_fn` must return one value per mask row, shape ({chunk.shape[0]},), got {tuple(out.shape)}."
            )
        outs.append(out.detach().to(_value_dtype(out.device)))
    return torch.cat(outs)


def _all_masks(n: int, device: torch.device) -> Tensor:
    """Every coalition of ``n`` players as a (2^n, n) bool tensor; row ``i`` has player ``j`` iff bit ``j``."""
    ids = torch.arange(1 << n, device=device)
    bits = 1 << torch.arange(n, device=device)
    return (ids[:, None] & bits[None, :]) != 0


# --------------------------------------------------------------------------------------------
# exact


def exact_shapley(
    value_fn: ValueFn,
    n_players: int,
    batch_size: int = 4096,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    r"""Exact Shapley values by enumerating all ``2^n`` coalitions.

    .. math:: \phi_i = \sum_{S \subseteq N \setminus \{i\}} \frac{|S|!\,(n-|S|-1)!}{n!}\,[f(S \cup \{i\}) - f(S)]

    Args:
        value_fn: ``masks (K, n) bool -> values (K,)``; True = player present.
        n_players: number of players ``n`` (1 to 20).
        batch_size: most rows per ``value_fn`` call.
        device: device of the masks passed to ``value_fn`` (default CPU).

    Returns:
        ``(n,)`` Shapley values (float64, float32 on MPS) on the device of ``value_fn``'s output.

    Raises:
        ValueError: if ``n_players`` is not in [1, 20], ``batch_size`` not positive, or ``value_fn``
            returns the wrong shape.
        TypeError: if ``value_fn`` does not return a tensor.

    Example::

        >>> w = torch.tensor([1.0, 2.0, 3.0])
        >>> exact_shapley(lambda m: m.double() @ w.double() + 10 * m.all(1), 3)
        tensor([4.3333, 5.3333, 6.3333], dtype=torch.float64)
    """
    n = _check_int("n_players", n_players, 1, MAX_EXACT_PLAYERS)
    batch_size = _check_int("batch_size", batch_size, 1)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    masks = _all_masks(n, dev)  # (2^n, n)
    values = _evaluate(value_fn, masks, batch_size)  # (2^n,)
    dtype = values.dtype
    vdev = values.device
    ids = torch.arange(1 << n, device=vdev)
    size = masks.to(vdev).sum(1)  # (2^n,) |S|
    # weight |S|! (n-|S|-1)! / n! for |S| in [0, n-1]
    s = torch.arange(n, dtype=torch.float64)
    w_by_size = torch.exp(torch.lgamma(s + 1) + torch.lgamma(n - s) - math.lgamma(n + 1)).to(vdev, dtype)
    phi = torch.empty(n, dtype=dtype, device=vdev)
    for i in range(n):  # n <= 20 host-side loop over players, each fully vectorised over 2^n coalitions
        without = ids[(ids >> i) & 1 == 0]  # coalitions S not containing i
        gain = values[without | (1 << i)] - values[without]
        phi[i] = (w_by_size[size[without]] * gain).sum()
    return phi


# --------------------------------------------------------------------------------------------
# Student-t quantile


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom (df >= 1, integer): ``scipy.stats.t.ppf``.

    Example::

        >>> round(t_quantile(0.975, 10), 4)
        2.2281
    """
    df = _check_int("df", df, 1)
    if not 0.0 < p < 1.0:
        raise ValueError(f"`p` must be in (0, 1), got {p!r}.")
    return float(student_t.ppf(p, df))


# --------------------------------------------------------------------------------------------
# permutation sampling


def _zeta_from_stats(
    stat_sum: Tensor,
    stat_sum_sq: Tensor,
    stat_count: int,
    confidence: float,
    n_permutations: int,
    n_evaluations: int,
    marginals: Optional[Tensor] = None,
) -> ZetaResult:
    """Scores, t-intervals and significance from the sufficient statistics of the samples."""
    n = stat_count
    if n == 0:
        nan = torch.full_like(stat_sum, float("nan"))
        return ZetaResult(
            nan, nan.clone(), nan.clone(), torch.zeros_like(stat_sum, dtype=torch.bool), n_permutations,
            n_evaluations, stat_sum, stat_sum_sq, n, nan.clone(), confidence, marginals,
        )
    mean = stat_sum / n
    if n >= 2:
        var = ((stat_sum_sq - stat_sum * mean) / (n - 1)).clamp_min(0.0)  # unbiased sample variance
        std_err = (var / n).sqrt()
        half = t_quantile(0.5 + confidence / 2.0, n - 1) * std_err
    else:
        std_err = torch.full_like(mean, float("inf"))
        half = std_err
    ci_low = mean - half
    ci_high = mean + half
    significant = (ci_low > 0) | (ci_high < 0)
    return ZetaResult(
        mean, ci_low, ci_high, significant, n_permutations, n_evaluations, stat_sum, stat_sum_sq, n,
        std_err, confidence, marginals,
    )


def _make_permutations(
    n: int,
    n_perm: int,
    antithetic: bool,
    generator: Optional[torch.Generator],
    permutations: Optional[Tensor],
) -> Tensor:
    """All permutations (P, n) int64 on CPU, antithetic pairs adjacent (rows 2k, 2k+1)."""
    if permutations is not None:
        if not isinstance(permutations, Tensor) or permutations.dim() != 2 or permutations.shape[1] != n:
            got = tuple(permutations.shape) if isinstance(permutations, Tensor) else type(permutations).__name__
            raise ValueError(f"`permutations` must be a (P, {n}) integer tensor, got {got}.")
        base = permutations.detach().to("cpu", torch.long)
        if not torch.equal(base.sort(1).values, torch.arange(n).expand_as(base)):
            raise ValueError("`permutations` rows must each be a permutation of range(n_players).")
    else:
        n_base = n_perm // 2 if antithetic else n_perm
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        keys = torch.rand(n_base, n, generator=generator, device=generator.device)
        base = keys.argsort(1).cpu()
    if antithetic:
        return torch.stack([base, base.flip(1)], 1).reshape(-1, n)
    return base


def _run_chunk(
    value_fn: ValueFn,
    perms: Tensor,
    f_none: Tensor,
    f_all: Tensor,
    threshold: Optional[Tensor],
    batch_size: int,
    mask_device: torch.device,
) -> tuple[Tensor, int]:
    """Marginals (P, n) for a chunk of permutations, and the number of value_fn rows used."""
    p_count, n = perms.shape
    vdev, dtype = f_all.device, f_all.dtype
    perms_d = perms.to(mask_device)
    # pos[p, player] = position of the player in permutation p; prefix_j = {pos < j}
    pos = torch.empty_like(perms_d).scatter_(1, perms_d, torch.arange(n, device=mask_device).expand(p_count, n))
    vals = torch.full((p_count, n + 1), float("nan"), dtype=dtype, device=vdev)  # f(prefix_j), j = 0..n
    vals[:, 0] = f_none
    vals[:, n] = f_all
    active = torch.arange(p_count)
    used = 0
    j = 1
    while j <= n - 1 and active.numel() > 0:
        n_active = active.numel()
        m = min(max(1, batch_size // n_active), n - j)  # positions per wave: fill the batch
        sizes = torch.arange(j, j + m, device=mask_device)
        act_d = active.to(mask_device)
        masks = (pos[act_d][:, None, :] < sizes[None, :, None]).reshape(n_active * m, n)  # (A*m, n)
        v = _evaluate(value_fn, masks, batch_size).view(n_active, m)
        used += n_active * m
        act_v = active.to(vdev)
        vals[act_v, j : j + m] = v
        if threshold is not None:
            block = vals[act_v, j - 1 : j + m]  # (A, m+1)
            within = (block - f_all).abs() <= threshold
            entered = (within[:, 1:] & ~within[:, :-1]).any(1)  # (A,)
            active = active[~entered.cpu()]  # one host sync per wave; zeta is not on the per-step path
        j += m
    if threshold is not None:
        # Truncate at the first j >= 1 where the prefix ENTERS the band |f - f(all)| <= tol: from there on
        # f(prefix) is taken as f(all). The entering player gets f(all) - f(prefix_{j-1}) (nonzero, so a
        # null player never receives a residual), later players 0, and each permutation's marginals
        # still telescope to f(all) - f(none) exactly.
        within = (vals[:, :n] - f_all).abs() <= threshold  # NaN (never evaluated) -> False
        entered = torch.zeros(p_count, n + 1, dtype=torch.bool, device=vdev)
        entered[:, 1:n] = within[:, 1:] & ~within[:, :-1]
        entered[:, n] = True
        k = entered.to(torch.int8).argmax(1)  # first entry, n if none
        cols = torch.arange(n + 1, device=vdev)
        vals = torch.where(cols[None, :] >= k[:, None], f_all, vals)
    diffs = vals[:, 1:] - vals[:, :-1]  # (P, n) by position
    marg = torch.zeros(p_count, n, dtype=dtype, device=vdev).scatter_(1, perms.to(vdev), diffs)  # by player
    return marg, used


def shapley_zeta(
    value_fn: ValueFn,
    n_players: int,
    budget: Optional[int] = None,
    batch_size: int = 256,
    antithetic: bool = True,
    truncation_tol: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    confidence: float = 0.95,
    *,
    n_permutations: Optional[int] = None,
    permutations: Optional[Tensor] = None,
    rank: int = 0,
    world_size: int = 1,
    device: Optional[Union[str, torch.device]] = None,
    return_marginals: bool = False,
) -> ZetaResult:
    r"""Shapley values ("zeta" scores) by permutation sampling, with confidence intervals.

    Each permutation adds the players one by one; player ``p``'s marginal is
    ``f(prefix + {p}) - f(prefix)``, so each permutation's marginals sum to ``f(all) - f(none)``.
    ``f(none)`` and ``f(all)`` are evaluated once; a permutation then costs ``n - 1`` rows at most.
    Coalitions of many permutations are stacked into calls of up to ``batch_size`` rows.

    * **Antithetic pairs** (default): every sampled permutation is followed by its reverse and the
      pair's marginals are averaged into one sample, which keeps the samples independent so the
      variance estimate (and the interval) stays valid.
    * **Truncation** (``truncation_tol``, relative to ``|f(all) - f(none)|``, off by default): once a
      prefix enters the band ``|f(prefix) - f(all)| <= tol * |f(all) - f(none)|`` the rest of that
      permutation is not evaluated and taken as ``f(all)``; the player who entered receives
      ``f(all) - f(previous prefix)``, the remaining players 0. Efficiency stays exact per
      permutation, null players stay exactly 0, and the bias per permutation is at most the band.
      Saved rows are not spent on more permutations (the permutation set is fixed up front, which
      is what lets DDP ranks split it).
    * **Interval**: Student-t with ``samples - 1`` degrees of freedom on the per-sample marginals
      (a sample is one antithetic pair, or one permutation); ``significant`` = interval excludes 0.
    * **Randomness**: permutations come from ``generator`` only (default: a fresh
      ``torch.Generator`` seeded with 0); the global RNG is never touched.
    * **DDP**: every rank draws the same permutation set and keeps samples ``rank::world_size``;
      :func:`merge_zeta` of the ranks' results equals the single-process result.

    .. math:: \hat\zeta(g) = \frac{1}{M}\sum_{m=1}^{M} [f(\mathrm{Pre}_{\pi_m}(g) \cup \{g\}) - f(\mathrm{Pre}_{\pi_m}(g))]

    Args:
        value_fn: ``masks (K, n) bool -> values (K,)``, True = region kept. Must be deterministic per
            row for the null-player guarantee.
        n_players: number of players ``n`` (regions).
        budget: most value_fn rows (forward passes), ``f(all)``/``f(none)`` included; sets the number
            of permutations to ``(budget - 2) // (n - 1)`` (rounded down to even when antithetic).
            Default: :data:`DEFAULT_PERMUTATIONS` permutations.
        batch_size: most rows per value_fn call.
        antithetic: pair each permutation with its reverse.
        truncation_tol: relative truncation band, ``None`` (default) for none.
        generator: source of the permutations.
        confidence: interval level in (0, 1).
        n_permutations: number of permutations (overrides ``budget``; even when antithetic).
        permutations: explicit ``(P, n)`` permutations (overrides both; with ``antithetic`` each is
            followed by its reverse).
        rank: this process' index in ``[0, world_size)``.
        world_size: number of processes sharing the permutations.
        device: device of the masks passed to value_fn (default CPU).
        return_marginals: keep the ``(P, n)`` per-permutation marginals in the result.

    Returns:
        :class:`ZetaResult` with tensors on the device of value_fn's output.

    Raises:
        ValueError: for a bad argument (named in the message), a budget too small for one sample,
            or value_fn returning the wrong shape.
        TypeError: if value_fn does not return a tensor.

    Example::

        >>> w = torch.tensor([1.0, 2.0, 0.0, 4.0], dtype=torch.float64)
        >>> res = shapley_zeta(lambda m: m.double() @ w, 4, n_permutations=8)
        >>> res.scores
        tensor([1., 2., 0., 4.], dtype=torch.float64)
        >>> res.significant
        tensor([ True,  True, False,  True])
    """
    n = _check_int("n_players", n_players, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0, world_size - 1)
    confidence = _check_confidence(confidence)
    if not isinstance(antithetic, bool):
        raise ValueError(f"`antithetic` must be a bool, got {antithetic!r}.")
    if truncation_tol is not None and (
        isinstance(truncation_tol, bool) or not isinstance(truncation_tol, (int, float)) or not truncation_tol >= 0
        or not math.isfinite(truncation_tol)
    ):
        raise ValueError(f"`truncation_tol` must be None or a finite number >= 0, got {truncation_tol!r}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")
    group = 2 if antithetic else 1
    cost = max(n - 1, 0)
    if permutations is None:
        if n_permutations is not None:
            n_perm = _check_int("n_permutations", n_permutations, group)
            if n_perm % group:
                raise ValueError(f"`n_permutations` must be even when `antithetic=True`, got {n_permutations!r}.")
        elif budget is not None:
            budget = _check_int("budget", budget, 1)
            n_perm = (budget - 2) // cost if cost else group
            n_perm -= n_perm % group
            if n_perm < group:
                raise ValueError(
                    f"`budget` must be at least {2 + group * cost} value_fn rows for {n} players"
                    f" (f(all), f(none) and {group} permutation(s)), got {budget!r}."
                )
        else:
            n_perm = DEFAULT_PERMUTATIONS
    else:
        n_perm = 0  # taken from the tensor
    perms = _make_permutations(n, n_perm, antithetic, generator, permutations)  # (P, n) CPU
    n_groups = perms.shape[0] // group
    mine = torch.arange(n_groups)[rank::world_size]  # this rank's samples
    perms = perms.view(n_groups, group, n)[mine].reshape(-1, n)

    mask_dev = torch.device(device) if device is not None else torch.device("cpu")
    ends = torch.zeros(2, n, dtype=torch.bool, device=mask_dev)
    ends[1] = True
    f_ends = _evaluate(value_fn, ends, batch_size)  # (2,): f(none), f(all)
    f_none, f_all = f_ends[0], f_ends[1]
    vdev, dtype = f_ends.device, f_ends.dtype
    threshold = None if truncation_tol is None else truncation_tol * (f_all - f_none).abs()
    used = 2
    stat_sum = torch.zeros(n, dtype=dtype, device=vdev)
    stat_sum_sq = torch.zeros(n, dtype=dtype, device=vdev)
    kept = []
    # chunks of about batch_size permutations: one position per permutation fills a call
    chunk = max(group, (batch_size // group) * group)
    for start in range(0, perms.shape[0], chunk):
        marg, rows = _run_chunk(value_fn, perms[start : start + chunk], f_none, f_all, threshold, batch_size, mask_dev)
        used += rows
        samples = marg.view(-1, group, n).mean(1)  # antithetic pair -> one sample
        stat_sum += samples.sum(0)
        stat_sum_sq += samples.square().sum(0)
        if return_marginals:
            kept.append(marg)
    marginals = None
    if return_marginals:
        marginals = torch.cat(kept) if kept else torch.zeros(0, n, dtype=dtype, device=vdev)
    return _zeta_from_stats(stat_sum, stat_sum_sq, mine.numel(), confidence, perms.shape[0], used, marginals)


def merge_zeta(partials: Sequence[ZetaResult], confidence: Optional[float] = None) -> ZetaResult:
    r"""Combine results computed on disjoint permutation shares (e.g. DDP ranks) into one.

    Sums the sufficient statistics (sum, sum of squares, count of samples), then recomputes the
    scores and intervals. With the ranks of one :func:`shapley_zeta` call (same generator seed,
    ``rank = 0..world_size-1``) this equals the single-process result up to summation order;
    ``n_evaluations`` counts ``f(all)``/``f(none)`` once per partial.

    .. math:: \hat\zeta = \frac{\sum_r S_r}{\sum_r N_r}

    Args:
        partials: results to merge (at least one, same number of players).
        confidence: interval level; default that of the first partial.

    Returns:
        The merged :class:`ZetaResult` (marginals concatenated when every partial has them).

    Raises:
        ValueError: if ``partials`` is empty or the partials have different numbers of players.

    Example::

        >>> w = torch.tensor([1.0, 3.0], dtype=torch.float64)
        >>> parts = [shapley_zeta(lambda m: m.double() @ w, 2, n_permutations=4, rank=r, world_size=2) for r in (0, 1)]
        >>> merge_zeta(parts).scores
        tensor([1., 3.], dtype=torch.float64)
    """
    partials = list(partials)
    if not partials:
        raise ValueError("`partials` must hold at least one ZetaResult, got an empty sequence.")
    n = partials[0].stat_sum.shape
    if any(p.stat_sum.shape != n for p in partials):
        raise ValueError(f"`partials` must all have the same number of players, got {[tuple(p.stat_sum.shape) for p in partials]}.")
    conf = partials[0].confidence if confidence is None else _check_confidence(confidence)
    dev = partials[0].stat_sum.device
    stat_sum = sum(p.stat_sum.to(dev) for p in partials)
    stat_sum_sq = sum(p.stat_sum_sq.to(dev) for p in partials)
    marginals = None
    if all(p.marginals is not None for p in partials):
        marginals = torch.cat([p.marginals.to(dev) for p in partials])
    return _zeta_from_stats(
        stat_sum,
        stat_sum_sq,
        sum(int(p.stat_count) for p in partials),
        conf,
        sum(p.n_permutations for p in partials),
        sum(p.n_evaluations for p in partials),
        marginals,
    )
