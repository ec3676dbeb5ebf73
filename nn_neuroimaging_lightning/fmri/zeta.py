r"""NN-fMRI zeta engine (plain PyTorch, no Lightning): the zeta schedule, its budget ledger and per-layer statistics.

The estimator is :func:`~nn_neuroimaging_lightning.functional.shapley.shapley_zeta`, the game
:class:`~nn_neuroimaging_lightning.lesion.LesionGame`; this engine decides how many samples each
layer gets at an evaluation, keeps each layer's sufficient statistics over a sliding window of
evaluations and merges them with :class:`~nn_neuroimaging_lightning.metrics.fmri.ZetaAggregate` (across
processes by torchmetrics' state reduction over an injected ``reduce_sum``).
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import Tensor, nn

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning.batches import Batch, BatchSplit, split_batch
from nn_neuroimaging_lightning.events import AnomalyEvent
from nn_neuroimaging_lightning.fmri.density import Clamped, _ignore, region_coords
from nn_neuroimaging_lightning.functional.shapley import ZetaResult, _zeta_from_stats, shapley_zeta
from nn_neuroimaging_lightning.metrics.fmri import ZetaAggregate
from nn_neuroimaging_lightning.lesion import LesionGame

__all__ = ["Collectives", "ZetaScheduler", "batch_samples", "zeta_top_rows", "DEFAULT_PROBE_SIZE", "DEFAULT_ZETA_BUDGET", "DEFAULT_ZETA_GRID",
           "MAX_SAMPLES_PER_EVALUATION", "MIN_CONCENTRATION_REGIONS", "MIN_SAMPLES_FOR_INTERVAL"]

#: Fewest regions a zeta map needs for ``zeta_concentration`` to be judged. With R regions an even
#: map gives each 1/R; on a 2-region map (a linear layer's feature groups under the default zeta
#: grid) one region holding 90 % is ordinary (the healthy demo's ``fc2``: 0.97), not a shortcut.
MIN_CONCENTRATION_REGIONS: int = 4
#: Most zeta samples (antithetic pairs) one layer receives in one time-budgeted or counted evaluation.
MAX_SAMPLES_PER_EVALUATION: int = 128
#: Samples per layer at an evaluation below which its 95 % interval is not finite (Student-t, n - 1 df).
MIN_SAMPLES_FOR_INTERVAL: int = 2
#: Default zeta budget: value rows (probe forwards) per layer and evaluation. It is raised, per
#: layer, to the minimum that gives two samples (``2 + 4 (R - 1)`` rows with antithetic pairs), so
#: that a confidence interval exists; see :class:`ZetaScheduler` for the cost.
DEFAULT_ZETA_BUDGET: int = 256
#: Default zeta grid when neither ``zeta_grid`` nor ``grid`` is given: 8 regions on a conv map,
#: ``(2, 2)`` over tokens x hidden, 2 over features (see :class:`ZetaScheduler` for the cost).
DEFAULT_ZETA_GRID: Tuple[int, int, int] = (2, 2, 2)
#: Default probe: samples of the first validation batch on which every coalition is judged.
DEFAULT_PROBE_SIZE: int = 8


def _identity(x: Any) -> Any:
    return x


@dataclass(frozen=True)
class Collectives:
    """The process group as the zeta engine needs it, injected by the caller (e.g. a Lightning strategy).

    Attributes:
        world_size: processes playing the game.
        rank: this process.
        broadcast: ``broadcast(obj) -> obj`` of rank 0 (every rank plays rank 0's plan).
        reduce_sum: ``reduce_sum(tensor) -> tensor`` summed over the processes (a CPU tensor in and out);
            torchmetrics' sync of :class:`~nn_neuroimaging_lightning.metrics.fmri.ZetaAggregate` calls it once per state.
    """

    world_size: int = 1
    rank: int = 0
    broadcast: Callable[[Any], Any] = _identity
    reduce_sum: Callable[[Tensor], Tensor] = _identity


def _raise(what: str, err: BaseException, fix: str) -> None:
    raise err


def batch_samples(batch: Any, batch_split: Optional[BatchSplit] = None) -> int:
    """Samples of a training batch (its sample-forwards for the counted schedule); 0 if not understood.

    Example::

        >>> batch_samples((torch.zeros(16, 3), torch.zeros(16))), batch_samples({"input_ids": torch.zeros(4, 7)})
        (16, 4)
    """
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() else 0
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor) and batch[0].dim():
        return int(batch[0].shape[0])
    try:
        return split_batch(batch, None, batch_split).size
    except (TypeError, ValueError):
        return 0


def zeta_top_rows(res: ZetaResult, top_k: int) -> Tuple[Tuple[str, ...], List[Tuple[Any, ...]]]:
    """Header and rows of the ``top_k`` regions of a (grid-shaped) result by zeta, with grid coordinates.

    Example::

        >>> w = torch.tensor([1.0, 3.0], dtype=torch.float64)
        >>> res = shapley_zeta(lambda m: m.double() @ w, 2, n_permutations=4).reshape((1, 2))
        >>> zeta_top_rows(res, 1)[1]
        [(1, '(t=0, d=1)', 3.0, 3.0, 3.0, True)]
    """
    grid = tuple(res.scores.shape)
    flat = res.scores.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)[:top_k].tolist()
    lo, hi, sig = res.ci_low.reshape(-1), res.ci_high.reshape(-1), res.significant.reshape(-1)
    rows = [(r, region_coords(grid, r), float(flat[r]), float(lo[r]), float(hi[r]), bool(sig[r])) for r in order]
    return ("region", "grid cell", "zeta", "ci low", "ci high", "significant"), rows


def _zeta_fix(err: BaseException) -> str:
    text = str(err)
    if "first axis" in text or "no tensor output" in text or "used in forward" in text:
        return "leave the layer out of `zeta_layers`, or pick its tensor with `output_selector`"
    if any(k in text for k in ("metric", "targets", "MSE", "label", "cross-entropy", "loss")):
        return "`value_fn(module, batch) -> per-sample values`, `metric`, or `batch_split` / `label_selector`"
    return "leave the layer out of `zeta_layers`, or pass `value_fn`"


class ZetaScheduler:
    r"""Shapley "zeta" of every region of each zeta layer, on a budget, pooled over a window of evaluations.

    The value of a coalition is the model's performance on the probe with every other region
    lesioned (:class:`~nn_neuroimaging_lightning.lesion.LesionGame`), and the zeta of region ``r`` is
    its Shapley value, estimated over sampled permutations ``pi``
    (:func:`~nn_neuroimaging_lightning.functional.shapley.shapley_zeta`):

    .. math:: \zeta_r = \mathbb{E}_{\pi}\left[v(P^{\pi}_r \cup \{r\}) - v(P^{\pi}_r)\right]

    with :math:`P^{\pi}_r` the regions before ``r`` in ``pi``. Permutations come from a
    ``torch.Generator`` seeded with ``seed``, the epoch and the evaluation count (so no two
    evaluations repeat permutations); with ``world_size > 1`` every rank evaluates its share and the
    sufficient statistics are summed (``Collectives.reduce_sum``), so every rank holds the same scores.
    The argument names below are the engine's; :class:`~nn_neuroimaging_lightning.NNfMRICallback`
    passes its ``zeta_*`` arguments, ``probe_size`` is the probe's ``B``.

    *Batches and outputs.* The probe is split into inputs and target by one rule
    (:mod:`nn_neuroimaging_lightning.batches`): a mapping batch (dict, ``BatchEncoding``) is
    forwarded as ``model(**inputs)`` without its label keys (``labels``, ``label``, ``targets``,
    ``target``), whose value is the target; ``(x, y, ...)`` gives ``model(x)`` and ``y``; a tensor is
    the input. ``batch_split(batch) -> (args, kwargs, target)`` replaces the rule. A
    ``LightningModule`` without a ``forward`` of its own (``self.model(**batch).loss`` in the steps)
    has its ``model`` attribute called. The value of a coalition is minus the cross-entropy for
    integer labels (``(B,)`` with logits ``(B, C)``, or per token: ``(B, T)`` with ``(B, T, V)``,
    label -100 ignored, shifted by one token when the model's own ``.loss`` shows that it shifts),
    minus the MSE for float targets, else minus the model's own ``.loss`` (one coalition per
    forward); ``value_fn`` overrides all.

    *Cost and the schedule.* A permutation sample costs ``2 (R - 1)`` value rows (an antithetic
    pair), each a forward of the ``B`` probe samples. Three schedules:

    * **counted** (default; ``budget`` and ``time_fraction`` both ``None``): an evaluation may
      spend ``fraction`` (5 %) of the training *sample-forwards* since the previous evaluation
      (:meth:`note_training`: each training batch counts its batch size; a lesion row counts ``B``,
      also when its upstream runs once), shared equally by the layers, cheapest sample first, whole
      samples only, at most :data:`MAX_SAMPLES_PER_EVALUATION` per layer; a layer that cannot afford
      a sample saves its share (up to one sample's cost) for the next evaluation. **Floor:** a layer
      whose window would hold fewer than two samples gets two (:data:`MIN_SAMPLES_FOR_INTERVAL`)
      whatever the share, so every layer has a map with finite 95 % intervals from the first
      evaluation on (also in ``trainer.validate``, where there is no training to count). Integer
      counting only, no clock: with ``seed_everything`` two runs give bitwise-identical maps on CPU.
      Under DDP the count is rank 0's times the world size (broadcast) and the ranks split the samples.
    * **fixed** (``budget=N``): ``N`` value rows per layer and evaluation (at least two samples).
    * **timed** (``time_fraction=f``): ``f`` times the training wall time since the previous
      evaluation (:meth:`note_training`, or :meth:`clock_start` / :meth:`clock_pause`: the callback
      counts from ``on_train_epoch_start``, and from the end of a validation inside the epoch, to the
      start of validation / the end of the training epoch, ``perf_counter``), minus the overhead (probe
      transfer, tractography) the previous evaluation spent outside the layers (:meth:`settle`). The
      layers are served cheapest-sample-first; each gets an equal share of what is left, and draws
      as many whole samples as its cost estimate (seconds per row, measured on the previous
      evaluation, or calibrated on ``f(none)``/``f(all)`` the first time) affords, at most
      :data:`MAX_SAMPLES_PER_EVALUATION`; in one process the samples run in chunks of about four
      forwards with the clock checked before each, so a slower machine stops early instead of
      overrunning. A layer that cannot afford one sample *banks* its share, up to the cost of one
      sample; a layer that overran carries the debt. Not reproducible run to run (it reads the
      clock). Under DDP rank 0's ledger decides (broadcast).

    A layer whose game fails (an output without the batch axis, a target that fits no metric, ...)
    is skipped through ``fail`` (the callback: one warning naming the layer, the cause and the
    argument that fixes it, or a raise with ``strict=True``); the other layers go on. A layer left
    without a map after an evaluation is said once, with the reason.

    *Default grid and probe.* Decision: zeta has its own grid (the callback's ``zeta_grid``,
    default :data:`DEFAULT_ZETA_GRID` ``(2, 2, 2)``: 8 regions on a conv map, ``2 x 2`` over
    tokens x hidden, 2 over features; a ``grid`` set on the callback applies to zeta too unless
    ``zeta_grid`` is given) and a probe of :data:`DEFAULT_PROBE_SIZE` (8) samples, because the floor
    is paid at the first evaluation of every run: two antithetic samples of an 8-region layer are
    ``2 + 4 x 7 = 30`` rows of 8 samples (240 sample-forwards, the upstream run once per forward).
    The densities keep the finer ``grid`` (8, 8, 4). Measured (``python benchmarks/fmri_clients.py
    --steps 25 100 --pairs 1``, one torch thread on a 2-core machine shared with other jobs, so
    noisy): a zeta + tractography evaluation at the floor costs about 0.5 s on the ``cnn`` client
    (4 layers), 1.4 s on ``resnet`` (5 layers), 0.6-0.8 s on ``gpt2`` (4 layers); the whole fit of
    one epoch was 1.10x / 0.96x (cnn, 25 / 100 steps), 1.18x / 1.17x (resnet), 1.34x / 1.04x
    (gpt2) the fit without the callback. The resnet and the 25-step gpt2 miss the 1.15x / 1.05x
    targets: lower ``probe_size``, name fewer ``zeta_layers`` or raise ``zeta_every_n_epochs`` there.

    *Running estimate.* Each layer keeps the sufficient statistics (sum, sum of squares and count
    of the per-sample marginals) of its last ``window`` evaluations (one entry per evaluation,
    empty when the layer got no sample) and :attr:`zeta` reports their pooled mean, Student-t
    interval and ``n_permutations``/``stat_count`` (how many samples back it). Decision: a sliding
    window rather than an exponential decay, because it keeps the counts integer and the interval
    exact in its own terms: the samples are independent and each is unbiased for the Shapley value
    of the game of its own evaluation, so the interval covers the *average* of the games (weights)
    of the window's evaluations, not the latest weights alone; the window bounds that staleness to
    ``window`` evaluations and the memory to ``window x 2R`` numbers per layer. A layer whose window
    holds no sample has no entry in :attr:`zeta` and :attr:`zeta_max` (it is never reported as
    zero); one with a single sample has an infinite interval. Consequence on the demo
    (``benchmarks/fmri_overhead.py``): at 5 % of 100-step epochs the fully connected layers get
    several samples per epoch, while ``conv2`` (R = 256) gets one every few epochs and ``conv1``
    (its downstream forwards cost ~15x more) far fewer, so their windows are mostly empty. For conv
    layers raise ``time_fraction``, coarsen the grid, lower the probe size or name fewer layers.

    *Upstream saving.* The lesion forwards run the model on the ``B`` probe samples and expand the
    target's output to ``K x B`` inside its forward hook (checked against the plain path once,
    falling back to repeated inputs when the downstream fails on the shape); everything upstream of
    the target runs once per forward instead of ``K`` times.

    A layer whose zeta mass concentrates (``max|zeta| / sum|zeta|`` above ``concentration``)
    gives a ``zeta_concentration`` event; only maps of at least :data:`MIN_CONCENTRATION_REGIONS`
    (4) regions are judged.

    Args:
        modules: the zeta layers ``{name: module}``, in order.
        grid: the zeta grid.
        fraction: counted schedule: share of the training sample-forwards an evaluation may spend.
        budget: fixed schedule: value rows per layer and evaluation (``None``: not this mode).
        time_fraction: timed schedule: share of the training wall time (``None``: not this mode).
        window: evaluations pooled in each layer's estimate.
        baseline, metric, value_fn, output_selector: the lesion game's
            (:class:`~nn_neuroimaging_lightning.lesion.LesionGame`).
        max_batch: most samples in one lesion forward.
        max_bytes: most bytes of the largest activation of one lesion forward (``None``: no cap).
        antithetic: pair each permutation with its reverse.
        truncation_tol: relative truncation band of the estimator.
        confidence: level of the intervals.
        concentration: ``max|zeta| / sum|zeta|`` above which a layer is flagged.
        seed: seed of the permutations (with the epoch and the evaluation count).
        fail: ``fail(what, error, fix)`` for a layer whose game fails (default: raise).
        warn: ``warn(message)`` for the notices (a budget raised to the floor, a layer without a map);
            default :func:`warnings.warn`.
        on_clamped: ``on_clamped([(layer, shape, grid)])`` for layers the grid was clamped for.
        source: the ``source`` of the events.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> zs = ZetaScheduler({"0": net[0]}, grid=(2,), budget=8, metric="mse")
        >>> probe = Batch((torch.randn(8, 4),), {}, torch.randn(8, 1), 8)
        >>> zs.compute(net, probe)
        []
        >>> tuple(zs.zeta["0"].scores.shape), zs.zeta["0"].stat_count, zs.last_plan["0"]["samples"]
        ((2,), 3, 3)
    """

    @staticmethod
    def check_schedule(fraction: Any, budget: Any, time_fraction: Any) -> Tuple[float, Optional[int], Optional[float]]:
        """The schedule's arguments checked, named as the callback's (``zeta_fraction``, ``zeta_budget``, ...).

        Raises:
            ValueError, TypeError: an argument out of range or of the wrong type, or both ``budget`` and ``time_fraction``.
        """
        fraction = V.check_float("zeta_fraction", fraction, 0.0, 1.0)
        if budget is not None:
            V.check_int("zeta_budget", budget, 4)
        if time_fraction is not None:
            V.check_float("zeta_time_fraction", time_fraction, 0.0, 1.0, strict_min=True)
        if budget is not None and time_fraction is not None:
            raise ValueError(f"`zeta_budget`={budget!r} (fixed rows per layer) and `zeta_time_fraction`={time_fraction!r}"
                             " (a share of wall time) are two schedules: give at most one (neither: the counted default).")
        return fraction, budget, time_fraction

    def __init__(self, modules: Mapping[str, nn.Module], grid: Sequence[int], *, fraction: float = 0.05,
                 budget: Optional[int] = None, time_fraction: Optional[float] = None, window: int = 8,
                 baseline: str = "zero", metric: str = "auto", value_fn: Optional[Callable[[nn.Module, Any], Tensor]] = None,
                 output_selector: Optional[Callable[[Any], Tensor]] = None, max_batch: int = 1024,
                 max_bytes: Optional[int] = 4 * 2**20, antithetic: bool = True, truncation_tol: Optional[float] = None,
                 confidence: float = 0.95, concentration: float = 0.9, seed: int = 0, fail: Callable[[str, BaseException, str], None] = _raise,
                 warn: Callable[[str], None] = warnings.warn, on_clamped: Callable[[Clamped], None] = _ignore,
                 source: str = "nn_fmri") -> None:
        self.modules = dict(modules)
        self.names = list(self.modules)
        self.grid = grid
        self.fraction, self.budget, self.time_fraction, self.window = fraction, budget, time_fraction, window
        self.baseline, self.metric, self.value_fn, self.output_selector = baseline, metric, value_fn, output_selector
        self.max_batch, self.max_bytes = max_batch, max_bytes
        self.antithetic, self.truncation_tol, self.confidence = antithetic, truncation_tol, confidence
        self.concentration, self.seed = concentration, seed
        self.fail, self.warn, self.on_clamped, self.source = fail, warn, on_clamped, source
        self.zeta: Dict[str, ZetaResult] = {}
        self.zeta_max: Dict[str, float] = {}
        # per layer: sufficient statistics of the last `window` evaluations (None = no samples)
        self.stats: Dict[str, Deque[Optional[ZetaResult]]] = {}  # per layer: each evaluation's samples, merged over the ranks
        self.grids: Dict[str, Tuple[int, ...]] = {}
        # time-budget ledger (seconds): per-layer savings, per-row and set-up costs, overhead debt
        self.bank: Dict[str, float] = {}
        self.row_cost: Dict[str, float] = {}
        self.setup_cost: Dict[str, float] = {}
        self.rows_per_sample: Dict[str, int] = {}
        self.overhead_debt = 0.0
        self.credit: Dict[str, int] = {}  # counted schedule: sample-forwards a layer has saved
        self.train_samples = 0  # training sample-forwards since the previous evaluation (counted schedule)
        self.train_elapsed = 0.0  # training wall time since the previous evaluation (timed schedule)
        self._train_t0: Optional[float] = None  # `perf_counter` at the training clock's start (`clock_start`)
        self._timed_plan = False  # the latest `plan` was a time allowance (`settle`)
        self.last_plan: Dict[str, Dict[str, float]] = {}
        self.flagged: FrozenSet[str] = frozenset()
        self.failed: Set[str] = set()
        self._warned_budget: Set[str] = set()
        self._warned_no_map: Set[str] = set()

    # ------------------------------------------------------------------ the budget ledger
    def note_training(self, samples: int = 0, seconds: float = 0.0) -> None:
        """Count training since the previous evaluation: sample-forwards (counted) and wall time (timed)."""
        self.train_samples += samples
        self.train_elapsed += seconds

    def clock_start(self) -> None:
        """Training wall time starts being counted (a training epoch starts, or goes on after a validation)."""
        self._train_t0 = time.perf_counter()

    def clock_pause(self) -> None:
        """Stop the training clock started by :meth:`clock_start` and note its time (:meth:`note_training`); once per start."""
        if self._train_t0 is not None:
            self.note_training(seconds=time.perf_counter() - self._train_t0)
            self._train_t0 = None

    def plan(self, coll: Collectives = Collectives()) -> Tuple[Optional[float], Optional[int]]:
        """This evaluation's ``(time_budget_s, forward_budget)`` from the training noted since the previous one (and reset it)."""
        allowance = forwards = None
        if self.time_fraction is not None and self.train_elapsed > 0:
            allowance = self.time_fraction * self.train_elapsed - self.overhead_debt
        elif self.time_fraction is None and self.budget is None:
            forwards = int(self.fraction * self.train_samples) * coll.world_size
            if coll.world_size > 1:
                forwards = int(coll.broadcast(forwards))  # every rank plays rank 0's plan
        self.train_elapsed = 0.0
        self.train_samples = 0
        self._timed_plan = allowance is not None
        return allowance, forwards

    def settle(self, elapsed: float) -> float:
        """After an evaluation of ``elapsed`` seconds planned by :meth:`plan`; returns ``elapsed``.

        When the plan was a time allowance, what the layers' ledgers did not account for (probe
        transfer, tractography, bookkeeping) is a debt of the next one.
        """
        if self._timed_plan:
            layer_spent = sum(p["spent_s"] for p in self.last_plan.values())
            self.overhead_debt = max(elapsed - layer_spent, 0.0)
        return elapsed

    def _no_map(self, name: str, reason: str) -> None:
        """Say once per layer why it has no zeta map after an evaluation."""
        if name not in self._warned_no_map and name not in self.zeta:
            self._warned_no_map.add(name)
            self.warn(f"NNfMRICallback: layer `{name}` has no zeta map after this evaluation: {reason}.")

    def _window_samples(self, name: str) -> int:
        """Samples the layer's window keeps once this evaluation's entry is pushed (the oldest falls out)."""
        window = self.stats.get(name)
        if not window:
            return 0
        kept = list(window)[-(self.window - 1):] if self.window > 1 else []
        return sum(e.stat_count for e in kept if e is not None)

    # ------------------------------------------------------------------ one evaluation
    def compute(self, model: nn.Module, probe: Union[Batch, Tuple[Tensor, Optional[Tensor]]], epoch: int = 0, evaluation: int = 0,
                step: int = 0, coll: Collectives = Collectives(), time_budget_s: Optional[float] = None,
                forward_budget: Optional[int] = None) -> List[AnomalyEvent]:
        """Estimate zeta for every layer on ``probe`` (a split batch or ``(inputs, targets)``); fills :attr:`zeta`.

        ``forward_budget`` sample-forwards shared by the layers (counted); ``time_budget_s`` seconds
        (timed); neither: ``budget`` value rows per layer (fixed; without ``budget`` the two samples
        that give a finite interval). ``evaluation`` (with ``epoch`` and ``seed``) seeds the
        permutations. The new samples join each layer's window of the last ``window`` evaluations.
        Returns the ``zeta_concentration`` events.
        """
        if not isinstance(probe, Batch):
            x, y = probe
            probe = Batch((x,), {}, y, int(x.shape[0]))
        world = coll.world_size
        p_size = probe.size
        events: List[AnomalyEvent] = []
        flagged = set()
        group = 2 if self.antithetic else 1
        timed = time_budget_s is not None
        counted = not timed and forward_budget is not None
        pool = float(time_budget_s) if timed else 0.0
        fpool = int(forward_budget) if counted else 0
        # cheapest known sample first, so that unspent shares of satisfied layers flow to dearer ones
        order = sorted(self.names, key=lambda n: (self.rows_per_sample.get(n, 0), self.names.index(n)) if counted
                       else self.sample_cost(n))
        if world > 1:
            # Every rank must visit the layers in one order: each layer's statistics are summed over the
            # ranks in its turn, and the costs behind the order are measured per rank (rank 0's wins).
            order = list(coll.broadcast(order))
        base_seed = (self.seed * 1_000_003 + int(epoch) * 1009 + evaluation) % (2**62)
        self.last_plan = {}
        for pos, name in enumerate(order):
            t_layer = time.perf_counter()
            share = pool / (len(order) - pos) if timed else 0.0
            avail = self.bank.get(name, 0.0) + share
            fshare = fpool // (len(order) - pos) if counted else 0
            favail = self.credit.get(name, 0) + fshare
            need = max(0, MIN_SAMPLES_FOR_INTERVAL - self._window_samples(name))
            skip = timed and name in self.rows_per_sample and self.sample_cost(name) > avail
            if counted and name in self.rows_per_sample and not need:
                skip = (favail - 3 * p_size) // (self.rows_per_sample[name] * p_size) < 1
            if timed and world > 1:
                skip = bool(coll.broadcast(skip))  # rank 0's ledger decides for all
            n_samples, game, res, fspent = 0, None, None, 0
            if not skip:
                try:
                    n_samples, game, res = self._layer(model, name, probe, t_layer, avail, favail, need, timed, counted,
                                                       group, coll, base_seed)
                except Exception as err:  # one layer's failure never ends the fit (strict=True raises)
                    self.failed.add(name)
                    self.fail(f"zeta for layer `{name}`", err, _zeta_fix(err))
                    n_samples, game, res = 0, None, None
                if game is not None and n_samples:
                    fspent = (3 + n_samples * self.rows_per_sample[name]) * p_size
            spent = time.perf_counter() - t_layer
            if timed:
                remaining = avail - spent
                satisfied = n_samples >= MAX_SAMPLES_PER_EVALUATION
                keep = min(remaining, 0.0 if satisfied else self.sample_cost(name))  # savings, or a debt
                self.bank[name] = keep
                pool = pool - share + (remaining - keep)
            if counted:
                left = max(favail - fspent, 0)  # a floor the share did not cover is not carried as debt
                sample = (self.rows_per_sample.get(name, 0) + 3) * p_size
                keep_f = 0 if n_samples >= MAX_SAMPLES_PER_EVALUATION else min(left, sample)
                self.credit[name] = keep_f
                fpool = fpool - fshare + (left - keep_f)
            self.last_plan[name] = {"samples": n_samples, "spent_s": spent, "allowance_s": avail,
                                    "bank_s": self.bank.get(name, 0.0), "sample_forwards": fspent,
                                    "allowance_forwards": favail}
            self._push(name, res, game, coll)
            merged = self.zeta.get(name)
            if merged is None:
                why = ("its game failed (see the warning above)" if name in self.failed
                       else "its share of the budget is below one sample, and its window holds none")
                self._no_map(name, why)
                continue
            if self.stats[name][-1] is None:
                continue
            scores = merged.scores.reshape(-1)
            total = float(scores.abs().sum())
            r = scores.numel()
            if r >= MIN_CONCENTRATION_REGIONS and total > 0:
                conc = float(scores.abs().max()) / total
                if conc > self.concentration:
                    flagged.add(name)
                    top = int(scores.abs().argmax())
                    events.append(AnomalyEvent(step, "validate", name, "zeta_concentration", conc, self.source,
                                               detail=f"max|zeta|/sum|zeta| = {conc:.3g} at region {region_coords(tuple(merged.scores.shape), top)}"))
        self.flagged = frozenset(flagged)
        return events

    def _layer(self, model: nn.Module, name: str, probe: Batch, t_layer: float, avail: float, favail: int, need: int,
               timed: bool, counted: bool, group: int, coll: Collectives, base_seed: int) -> Tuple[int, LesionGame, Optional[ZetaResult]]:
        """One layer's game and its samples on the schedule in force; returns ``(samples, game, result)``."""
        module = self.modules[name]
        game = LesionGame(model, module, probe, None, self.grid, self.baseline, self.metric, self.value_fn,
                          self.output_selector, self.max_batch, max_bytes=self.max_bytes)
        setup = time.perf_counter() - t_layer
        world, rank = coll.world_size, coll.rank
        if game.clamped:
            self.on_clamped([(name, (probe.size,) + game.unit_shape, game.grid)])
        r = game.n_regions
        rows = group * max(r - 1, 1)
        self.rows_per_sample[name] = rows
        self.setup_cost[name] = setup
        if timed and name not in self.row_cost:
            # first evaluation of this layer: calibrate the cost of a row on f(none), f(all) (the
            # first call settles the game's upstream expansion, so time the second). A 2-row call
            # over-estimates a row (the upstream runs once per call); the anytime loop re-measures.
            ends = (torch.arange(2) == 1)[:, None].expand(2, r)
            with game.session():
                game(ends)
                t_cal = time.perf_counter()
                game(ends)
            self.row_cost[name] = (time.perf_counter() - t_cal) / 2
        self.row_cost.setdefault(name, setup)
        if counted:
            # whole samples the share affords (probe forward, f(none), f(all) and `rows` rows of `B` samples each)
            afford = max(favail - 3 * probe.size, 0) // (rows * probe.size)
            n_samples = min(max(int(afford), need), MAX_SAMPLES_PER_EVALUATION)
        elif timed:
            per_row = self.row_cost[name]
            spent_so_far = time.perf_counter() - t_layer  # set-up and calibration
            n_samples = int(max(avail - spent_so_far - 2 * per_row, 0.0) // (rows * per_row)) * world
            n_samples = min(n_samples, MAX_SAMPLES_PER_EVALUATION)
            if world > 1:
                n_samples = int(coll.broadcast(n_samples))  # every rank plays the same plan
        elif self.budget is None:
            n_samples = MIN_SAMPLES_FOR_INTERVAL
        else:
            budget = self.budget
            need_rows = 2 + 2 * rows
            if budget < need_rows:
                if name not in self._warned_budget:
                    self._warned_budget.add(name)
                    self.warn(f"NNfMRICallback: `zeta_budget`={self.budget} gives fewer than 2 samples for `{name}` ({r} regions); using {need_rows} rows.")
                budget = need_rows
            n_samples = ((budget - 2) // max(r - 1, 1)) // group
        res = None
        generator = torch.Generator().manual_seed(base_seed + 7919 * self.names.index(name))
        run = dict(batch_size=game.rows_per_call, antithetic=self.antithetic, truncation_tol=self.truncation_tol,
                   generator=generator, confidence=self.confidence)
        if timed and world == 1 and n_samples > 0:
            # anytime: chunks of whole samples (about 4 forwards each), the clock checked before each
            # chunk against the measured cost per row, so a slow machine stops early rather than overrun
            chunk = max(1, (4 * game.rows_per_call) // rows)
            parts: List[ZetaResult] = []
            done = 0
            with game.session():
                while done < MAX_SAMPLES_PER_EVALUATION:
                    left = avail - (time.perf_counter() - t_layer) - 2 * self.row_cost[name]
                    k = min(chunk, MAX_SAMPLES_PER_EVALUATION - done, int(max(left, 0.0) // (rows * self.row_cost[name])))
                    if k < 1:
                        break
                    t_run = time.perf_counter()
                    part = shapley_zeta(game, r, n_permutations=k * group, **run)
                    self.row_cost[name] = (time.perf_counter() - t_run) / part.n_evaluations
                    parts.append(part)
                    done += k
            n_samples = done
            if parts:
                res = self.merge(parts)
        elif n_samples > 0:
            t_run = time.perf_counter()
            with game.session():
                res = shapley_zeta(game, r, n_permutations=n_samples * group, rank=rank, world_size=world, **run)
            if res.n_evaluations > 0:
                self.row_cost[name] = (time.perf_counter() - t_run) / res.n_evaluations
        return n_samples, game, res

    def sample_cost(self, name: str) -> float:
        """Estimated seconds for one zeta sample of ``name`` (set-up and ``f(all)``/``f(none)`` included); 0 if unknown."""
        if name not in self.rows_per_sample:
            return 0.0
        per_row = self.row_cost.get(name, 0.0)
        return self.setup_cost.get(name, 0.0) + (self.rows_per_sample[name] + 2) * per_row

    def _push(self, name: str, res: Optional[ZetaResult], game: Optional[LesionGame],
                         coll: Collectives) -> None:
        """Add this evaluation's samples (merged across ranks) to the layer's window and refresh :attr:`zeta`."""
        window = self.stats.get(name)
        if game is not None and self.grids.get(name) != game.grid:
            window = None  # a new grid: earlier statistics are about other players
            self.grids[name] = game.grid
        if window is None or window.maxlen != self.window:
            window = deque(window or (), maxlen=self.window)
            self.stats[name] = window
        window.append(None if res is None else self.merge([res], coll))
        self._refresh(name)

    def merge(self, parts: Sequence[ZetaResult], coll: Optional[Collectives] = None) -> ZetaResult:
        """``parts`` (of the same players) merged by :class:`~nn_neuroimaging_lightning.metrics.fmri.ZetaAggregate`;
        with ``coll`` of more than one process, its statistics are also summed over the ranks (torchmetrics'
        state reduction, through ``coll.reduce_sum``)."""
        sync, r = coll is not None and coll.world_size > 1, parts[0].stat_sum.numel()
        agg = ZetaAggregate(r, self.confidence, sync_on_compute=sync,
                            dist_sync_fn=(lambda t, group=None: [coll.reduce_sum(t)]) if sync else None,
                            distributed_available_fn=lambda: sync)
        for part in parts:
            agg.update(part)  # (R,) statistics: the estimator's, or an earlier merge's (reshaped below)
        out = agg.compute()  # torchmetrics squeezes one-element results (a one-region layer): back to (R,)
        return out.reshape(r)._replace(stat_sum=out.stat_sum.reshape(r), stat_sum_sq=out.stat_sum_sq.reshape(r))

    def _refresh(self, name: str) -> None:
        entries = [e for e in self.stats.get(name, ()) if e is not None]
        if not entries or name not in self.grids:
            self.zeta.pop(name, None)
            self.zeta_max.pop(name, None)
            return
        merged = self.merge(entries)
        self.zeta[name] = merged.reshape(self.grids[name])
        self.zeta_max[name] = float(merged.scores.max())


    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        """The windows (CPU copies) and the ledger, keyed as the callback's checkpoints always were."""

        def cpu(t: Tensor) -> Tensor:
            return t.detach().cpu().clone()

        return {
            "zeta_stats": {k: {"grid": tuple(self.grids[k]),
                               "window": [None if e is None else (cpu(e.stat_sum), cpu(e.stat_sum_sq), e.stat_count, e.n_permutations,
                                                                  e.n_evaluations) for e in w]}
                           for k, w in self.stats.items() if k in self.grids},
            "zeta_ledger": {"bank": dict(self.bank), "row_cost": dict(self.row_cost), "setup_cost": dict(self.setup_cost),
                            "rows_per_sample": dict(self.rows_per_sample), "overhead_debt": self.overhead_debt,
                            "credit": dict(self.credit), "train_samples": self.train_samples},
            "zeta_max": dict(self.zeta_max),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (missing keys: the defaults)."""
        for name, z in dict(state.get("zeta_stats", {})).items():
            self.grids[name] = tuple(z["grid"])
            self.stats[name] = deque([None if e is None else _zeta_from_stats(e[0], e[1], int(e[2]), self.confidence, int(e[3]), int(e[4]))
                                      for e in z["window"]],
                                     maxlen=self.window)
            self._refresh(name)
        ledger = dict(state.get("zeta_ledger", {}))
        self.bank = dict(ledger.get("bank", {}))
        self.row_cost = dict(ledger.get("row_cost", {}))
        self.setup_cost = dict(ledger.get("setup_cost", {}))
        self.rows_per_sample = dict(ledger.get("rows_per_sample", {}))
        self.overhead_debt = float(ledger.get("overhead_debt", 0.0))
        self.credit = {k: int(v) for k, v in dict(ledger.get("credit", {})).items()}
        self.train_samples = int(ledger.get("train_samples", 0))
