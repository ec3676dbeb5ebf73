"""NN-fMRI: micro-region densities, Shapley "zeta" impact of region lesions, tractography, anomalies."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Deque, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning.callbacks._base import AnomalyEvent, MonitorCallback
from nn_neuroimaging_lightning.config import FMRIConfig
from nn_neuroimaging_lightning.functional.grid import DEFAULT_EPS, DEFAULT_LAMBDA, _as_grid_tuple, _check_lam_eps
from nn_neuroimaging_lightning.functional.shapley import ZetaResult, _zeta_from_stats, shapley_zeta
from nn_neuroimaging_lightning.batches import Batch, BatchSplit, split_batch
from nn_neuroimaging_lightning.fmri.density import _ROWS_MAX_BYTES, _ROWS_MAX_CALLS, RegionDensities, region_coords  # noqa: F401 (tests read _ROWS_MAX_*)
from nn_neuroimaging_lightning.fmri.tracts import TractInfo, Tractography
from nn_neuroimaging_lightning.lesion import BASELINES, METRICS, LesionGame
from nn_neuroimaging_lightning.taps import LayerSelector, LayerTaps, select_layers

#: Anomaly kinds NN-fMRI can raise; ``stop_on`` takes any of them.
FMRI_ANOMALY_KINDS: Tuple[str, ...] = ("dead_region", "saturated_region", "zeta_concentration")
#: Fewest regions a zeta map needs for ``zeta_concentration`` to be judged. With R regions an even
#: map gives each 1/R; on a 2-region map (a linear layer's feature groups under the default zeta
#: grid) one region holding 90 % is ordinary (the healthy demo's ``fc2``: 0.97), not a shortcut.
MIN_CONCENTRATION_REGIONS: int = 4
#: Default zeta budget: value rows (probe forwards) per layer and evaluation. It is raised, per
#: layer, to the minimum that gives two samples (``2 + 4 (R - 1)`` rows with antithetic pairs), so
#: that a confidence interval exists; see the class docstring for the cost.
DEFAULT_ZETA_BUDGET: int = 256
#: Most zeta samples (antithetic pairs) one layer receives in one time-budgeted or counted evaluation.
MAX_SAMPLES_PER_EVALUATION: int = 128
#: Default zeta grid when neither ``zeta_grid`` nor ``grid`` is given: 8 regions on a conv map,
#: ``(2, 2)`` over tokens x hidden, 2 over features (see the class docstring for the cost).
DEFAULT_ZETA_GRID: Tuple[int, int, int] = (2, 2, 2)
#: Default probe: samples of the first validation batch on which every coalition is judged.
DEFAULT_PROBE_SIZE: int = 8
#: Samples per layer at an evaluation below which its 95 % interval is not finite (Student-t, n - 1 df).
MIN_SAMPLES_FOR_INTERVAL: int = 2


def _engine_view(engine: str, attr: str) -> property:
    """Read-only view of an engine's attribute under the callback's pre-engine private name (tests, benchmarks)."""
    return property(lambda self: getattr(getattr(self, engine), attr))


class NNfMRICallback(MonitorCallback):
    r"""Watch where in each layer activity and impact live, like fMRI voxels in a brain.

    **Densities (every training step).** Each tapped layer's output is split into micro-regions
    (grid ``(g_h, g_w, g_c)`` over ``(H, W, C)``, ``(g_t, g_d)`` over tokens × hidden, ``(g_c,)`` over
    features). Per step, one forward hook copies the first ``density_samples`` samples of the
    output (default 4; ``None``: the hook reduces the whole batch itself) and ``on_train_batch_end``
    adds their per-unit sums of ``|a|``, ``a`` and ``a^2`` into the window on the device (no host
    sync; ``abs``, ``mul`` and three ``addmm_`` per layer); the ``(3, units)`` sums are scattered
    into per-region sums once per window. The hook has no region index, no data-dependent shape
    and reads the clock only outside ``torch.compile`` tracing, so a compiled model keeps one graph
    per mode (no graph break, no recompile). Decision: the density is a statistic of
    the layer's activity *distribution*, not of one batch, so a fixed subsample of every batch
    gives unbiased sums per sample (``E[|a|]``, ``E[a]``, ``E[a^2]``; the variance is then
    consistent) and the window still pools ``4 x check_every_n_steps`` samples (200 at the default
    50 steps). With shuffled loaders the first samples are a random subsample; with unshuffled
    ones each batch still contributes different samples. On the reference CNN (batch 64, one CPU
    thread) the densities' self-time is about 2.3-3.1 % of the step time on a loaded shared CPU
    (12-22 % with full-batch reductions; see ``benchmarks/README.md``, ``fmri_overhead``). Every
    ``check_every_n_steps`` steps (default: the trainer's ``log_every_n_steps``) the window's
    density :math:`\phi(g) = \overline{|a|}_g + \lambda \log(\sigma^2_g + \epsilon)` is available
    as :attr:`density`, and each region's mean ``|a|`` is compared with its running baseline (an
    exponential average over earlier windows): a region that had been active and falls below
    ``dead_ratio`` × baseline is a ``dead_region``, one above ``saturation_ratio`` × baseline a
    ``saturated_region``.

    **Zeta (on a schedule).** At the end of every ``zeta_every_n_epochs``-th validation epoch of a
    fit (never in the sanity check; and at the end of ``trainer.validate``), or, when the trainer
    has no validation loop, at the end of every ``zeta_every_n_epochs``-th training epoch, the
    Shapley value of every region of each ``zeta_layers`` layer is estimated on a fixed probe batch
    (the first ``probe_size`` samples of the first validation batch seen, else of the first training
    batch; cloned once to CPU, re-taken after a resume): the value of a coalition is the model's
    performance with every other region lesioned (see :mod:`nn_neuroimaging_lightning.lesion`).
    Permutations come from a ``torch.Generator`` seeded with ``seed``, the epoch and the evaluation
    count (so no two evaluations repeat permutations); under DDP every rank evaluates its share and
    the sufficient statistics are summed across ranks, so every rank holds the same scores.

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
    forward); ``value_fn`` overrides all (see :class:`~nn_neuroimaging_lightning.lesion.LesionGame`).

    *Failures.* A layer whose game fails (an output without the batch axis, a target that fits no
    metric, ...) is skipped with one warning naming the layer, the cause and the argument that
    fixes it; the other layers and the fit go on. The same for tractography (per pair) and for a
    batch the rule cannot split. ``strict=True`` raises instead.

    *Cost and the schedule.* A permutation sample costs ``2 (R - 1)`` value rows (an antithetic
    pair), each a forward of the ``probe_size`` probe samples. Three schedules:

    * **counted** (default; ``zeta_budget`` and ``zeta_time_fraction`` both ``None``): an
      evaluation may spend ``zeta_fraction`` (5 %) of the training *sample-forwards* since the
      previous evaluation (each training batch counts its batch size; a lesion row counts
      ``probe_size``, also when its upstream runs once), shared equally by the zeta layers,
      cheapest sample first, whole samples only, at most :data:`MAX_SAMPLES_PER_EVALUATION` per
      layer; a layer that cannot afford a sample saves its share (up to one sample's cost) for the
      next evaluation. **Floor:** a layer whose window would hold fewer than two samples gets two
      (:data:`MIN_SAMPLES_FOR_INTERVAL`) whatever the share, so every zeta layer has a map with
      finite 95 % intervals from the first validation epoch on (and in ``trainer.validate``, where
      there is no training to count). Integer counting only, no clock: with ``seed_everything``
      two runs give bitwise-identical maps on CPU. Under DDP the count is rank 0's times the
      world size (broadcast) and the ranks split the samples.
    * **fixed** (``zeta_budget=N``): ``N`` value rows per layer and evaluation (at least two samples).
    * **timed** (``zeta_time_fraction=f``): ``f`` times the training wall time since the previous
      evaluation (``on_train_epoch_start`` to the start of validation / the end of the training
      epoch, ``perf_counter``), minus the overhead (probe transfer, tractography) the previous
      evaluation spent outside the layers. The layers are served cheapest-sample-first; each gets
      an equal share of what is left, and draws as many whole samples as its cost estimate
      (seconds per row, measured on the previous evaluation, or calibrated on ``f(none)``/``f(all)``
      the first time) affords, at most :data:`MAX_SAMPLES_PER_EVALUATION`; in one process the
      samples run in chunks of about four forwards with the clock checked before each, so a slower
      machine stops early instead of overrunning. A layer that cannot afford one sample *banks*
      its share, up to the cost of one sample; a layer that overran carries the debt. Not
      reproducible run to run (it reads the clock). Under DDP rank 0's ledger decides (broadcast).

    A layer left without a map after an evaluation is said once, with the reason.

    *Default grid and probe.* Decision: zeta has its own grid, ``zeta_grid`` (default
    :data:`DEFAULT_ZETA_GRID` ``(2, 2, 2)``: 8 regions on a conv map, ``2 x 2`` over tokens x
    hidden, 2 over features; a ``grid`` you set applies to zeta too unless ``zeta_grid`` is given)
    and a probe of :data:`DEFAULT_PROBE_SIZE` (8) samples, because the floor is paid at the first
    evaluation of every run: two antithetic samples of an 8-region layer are ``2 + 4 x 7 = 30``
    rows of 8 samples (240 sample-forwards, the upstream run once per forward). The densities keep
    the finer ``grid`` (8, 8, 4). Measured (``python benchmarks/fmri_clients.py --steps 25 100
    --pairs 1``, one torch thread on a 2-core machine shared with other jobs, so noisy): a zeta +
    tractography evaluation at the floor costs about 0.5 s on the ``cnn`` client (4 layers),
    1.4 s on ``resnet`` (5 layers), 0.6-0.8 s on ``gpt2`` (4 layers); the whole fit of one epoch
    was 1.10x / 0.96x (cnn, 25 / 100 steps), 1.18x / 1.17x (resnet), 1.34x / 1.04x (gpt2) the fit
    without the callback. The resnet and the 25-step gpt2 miss the 1.15x / 1.05x targets: lower
    ``probe_size``, name fewer ``zeta_layers`` or raise ``zeta_every_n_epochs`` there.

    *Running estimate.* Each layer keeps the sufficient statistics (sum, sum of squares and count
    of the per-sample marginals) of its last ``zeta_window`` evaluations (one entry per
    evaluation, empty when the layer got no sample) and :attr:`zeta` reports their pooled mean,
    Student-t interval and ``n_permutations``/``stat_count`` (how many samples back it). Decision:
    a sliding window rather than an exponential decay, because it keeps the counts integer and the
    interval exact in its own terms: the samples are independent and each is unbiased for the
    Shapley value of the game of its own evaluation, so the interval covers the *average* of the
    games (weights) of the window's evaluations, not the latest weights alone; the window bounds
    that staleness to ``zeta_window`` evaluations and the memory to ``zeta_window x 2R`` numbers
    per layer. A layer whose window holds no sample has no entry in :attr:`zeta` and
    :attr:`zeta_max` (it is never reported as zero); one with a single sample has an infinite
    interval. Consequence on the demo (``benchmarks/fmri_overhead.py``): at 5 % of 100-step
    epochs the fully connected layers get several samples per epoch, while ``conv2`` (R = 256)
    gets one every few epochs and ``conv1`` (its downstream forwards cost ~15x more) far fewer,
    so their windows are mostly empty. For conv layers raise ``zeta_time_fraction``, coarsen the
    grid, lower ``probe_size`` or name fewer ``zeta_layers``.

    *Upstream saving.* The lesion forwards run the model on the ``B`` probe samples and expand the
    target's output to ``K x B`` inside its forward hook (:class:`~nn_neuroimaging_lightning.lesion.LesionGame`,
    checked against the plain path once, falling back to repeated inputs when the downstream
    fails on the shape); everything upstream of the target runs once per forward instead of ``K``
    times.

    A layer whose zeta mass concentrates (``max|zeta| / sum|zeta|`` above
    ``zeta_concentration``) raises ``zeta_concentration``; only maps of at least
    :data:`MIN_CONCENTRATION_REGIONS` (4) regions are judged.

    **Tractography (same schedule).** One forward on the probe captures each tapped module's input
    and output; for consecutive tapped layers ``A -> B`` with ``B`` an ``nn.Linear``/``nn.Conv2d``
    the connection strengths between ``A``'s regions and ``B``'s regions are computed
    (:func:`~nn_neuroimaging_lightning.functional.tractography.tractography`). ``A``'s grid meets
    ``B``'s input exactly when the shapes agree or when only a reshape separates them; across a
    pooling the same grid is laid proportionally over the pooled map (``mapping="proportional"``,
    an approximation, said so in the panel); anything else is reported as not traced.

    Every evaluation runs in eval mode under ``no_grad`` with silenced taps and forked RNG
    streams, and restores the modules' modes and buffers: a run's losses and weights are the same
    with and without this callback.


    Args:
        layers: modules to tap (see :func:`~nn_neuroimaging_lightning.taps.select_layers`).
        grid: ``(g_h, g_w, g_c)`` of the densities and tractography (``None``: ``(8, 8, 4)``); see
            :func:`~nn_neuroimaging_lightning.functional.grid.resolve_grid`. A grid larger than a
            layer is clamped, with one warning.
        lam: ``lambda`` of the density's log-variance term.
        eps: variance floor of the density.
        check_every_n_steps: training steps per density window / anomaly check (``None``: the
            trainer's ``log_every_n_steps``).
        density_samples: samples of each training batch reduced for the densities (the first
            ones; ``None``: the whole batch).
        min_history: density windows in a region's baseline before it is judged.
        zeta_every_n_epochs: epochs between zeta evaluations.
        zeta_layers: layers whose regions are scored (``None``: the tapped layers; same forms as
            ``layers``).
        zeta_grid: the grid of the zeta regions (``None``: ``grid`` when given, else
            :data:`DEFAULT_ZETA_GRID`).
        zeta_fraction: counted mode (the default): share of the training sample-forwards since
            the previous evaluation that an evaluation may spend (``0``: the floor only).
        zeta_budget: fixed mode: value rows (probe forwards) per layer and evaluation (raised to
            two samples); ``None``: not this mode.
        zeta_time_fraction: timed mode: share of the training wall time since the previous
            evaluation that an evaluation may spend; ``None``: not this mode. At most one of
            ``zeta_budget`` and ``zeta_time_fraction``.
        zeta_window: evaluations whose samples make up each layer's running estimate.
        probe_size: samples of the probe batch.
        baseline: lesion baseline, ``"zero"`` or ``"mean"`` (the region's mean over the probe).
        metric: ``"auto"`` (minus cross-entropy for integer labels, per sample or per token, else
            minus MSE), ``"cross_entropy"``, ``"mse"`` or ``"accuracy"``.
        value_fn: ``value_fn(module, batch) -> per-sample values`` overriding ``metric``
            (Python only; ``batch`` is ``(inputs, targets)`` for tensor inputs, else the
            :class:`~nn_neuroimaging_lightning.batches.Batch`, repeated once per coalition).
        antithetic: pair each permutation with its reverse.
        truncation_tol: relative truncation band of the estimator (``None``: none).
        confidence: level of the zeta intervals.
        zeta_max_batch: most samples in one lesion forward (memory cap), and
            ``zeta_max_batch // probe_size`` the coalitions per value call of the estimator.
        zeta_max_bytes: most bytes of the largest activation of one lesion forward (``None``: no
            cap): the coalitions per forward are capped so that their expanded activations
            (coalitions x ``probe_size`` x the largest activation bytes per sample downstream of
            the layer) stay within it, at least one coalition per forward (see
            :attr:`~nn_neuroimaging_lightning.lesion.LesionGame.rows_per_forward`). Only the
            grouping of coalitions into forwards changes, not the estimates. The default, 4 MiB,
            keeps the lesion forwards below a demo training step's activations; on a time
            budget, fewer coalitions per forward also means fewer samples in the budget on small
            models (``benchmarks/fmri_localisation.py``: 17/20 at 4 MiB, 20/20 uncapped), so
            raise it when memory allows.
        tractography: compute tractography at each zeta evaluation.
        top_k: critical pathways and top regions reported.
        dead_ratio: a region below this fraction of its baseline mean ``|a|`` is dead.
        saturation_ratio: a region above this multiple of its baseline is saturated.
        zeta_concentration: ``max|zeta| / sum|zeta|`` above which a layer is flagged.
        stop_on: anomaly kinds that set ``trainer.should_stop`` when they occur.
        output_selector: picks the tensor from tuple/dict outputs (Python only).
        label_selector: ``label_selector(batch) -> targets`` for the probe (Python only).
        batch_split: ``batch_split(batch) -> (args, kwargs, target)`` replacing the rule of
            :func:`~nn_neuroimaging_lightning.batches.split_batch` (Python only).
        strict: raise a zeta / tractography / probe failure instead of warning and skipping.
        panels: write TensorBoard panels when a ``TensorBoardLogger`` is present.
        max_events: anomaly events kept in memory.
        flag_history: checks kept in :attr:`flag_history`.
        seed: seed of the zeta permutations (plus the epoch).

    Raises:
        ValueError: an argument is out of range or not one of the allowed values.
        TypeError: an argument has the wrong type.

    Example::

        >>> fmri = NNfMRICallback(grid=(4, 4, 2), zeta_budget=64)
        >>> fmri.grid, fmri.zeta_grid, fmri.zeta_budget, fmri.zeta_time_fraction, fmri.density_samples
        ((4, 4, 2), (4, 4, 2), 64, None, 4)
        >>> NNfMRICallback().zeta_grid, NNfMRICallback().probe_size
        ((2, 2, 2), 8)
    """

    source = "nn_fmri"
    config_class = FMRIConfig

    def __init__(
        self,
        layers: LayerSelector = None,
        *,
        grid: Optional[Sequence[int]] = None,
        lam: float = DEFAULT_LAMBDA,
        eps: float = DEFAULT_EPS,
        check_every_n_steps: Optional[int] = None,
        density_samples: Optional[int] = 4,
        min_history: int = 2,
        zeta_every_n_epochs: int = 1,
        zeta_layers: LayerSelector = None,
        zeta_grid: Optional[Sequence[int]] = None,
        zeta_fraction: float = 0.05,
        zeta_budget: Optional[int] = None,
        zeta_time_fraction: Optional[float] = None,
        zeta_window: int = 8,
        probe_size: int = DEFAULT_PROBE_SIZE,
        baseline: str = "zero",
        metric: str = "auto",
        value_fn: Optional[Callable[[nn.Module, Any], Tensor]] = None,
        antithetic: bool = True,
        truncation_tol: Optional[float] = None,
        confidence: float = 0.95,
        zeta_max_batch: int = 1024,
        zeta_max_bytes: Optional[int] = 4 * 2**20,
        tractography: bool = True,
        top_k: int = 5,
        dead_ratio: float = 0.05,
        saturation_ratio: float = 20.0,
        zeta_concentration: float = 0.9,
        stop_on: Sequence[str] = (),
        output_selector: Optional[Callable[[Any], Tensor]] = None,
        label_selector: Optional[Callable[[Any], Tensor]] = None,
        batch_split: Optional[BatchSplit] = None,
        strict: bool = False,
        panels: bool = True,
        max_events: int = 1000,
        flag_history: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__(max_events=V.check_int("max_events", max_events, 1))
        self.layer_selection = V.check_layer_selector("layers", layers)
        self.grid = _as_grid_tuple(list(grid) if isinstance(grid, (list, tuple)) else grid)
        if zeta_grid is not None:
            try:
                self.zeta_grid = _as_grid_tuple(list(zeta_grid) if isinstance(zeta_grid, (list, tuple)) else zeta_grid)
            except ValueError as err:
                raise ValueError(str(err).replace("`grid`", "`zeta_grid`", 1)) from None
        else:
            self.zeta_grid = self.grid if grid is not None else DEFAULT_ZETA_GRID
        _check_lam_eps(lam, eps)
        self.lam, self.eps = float(lam), float(eps)
        if check_every_n_steps is not None:
            V.check_int("check_every_n_steps", check_every_n_steps, 1)
        self.check_every_n_steps = check_every_n_steps
        if density_samples is not None:
            V.check_int("density_samples", density_samples, 1)
        self.density_samples = density_samples
        self.min_history = V.check_int("min_history", min_history, 1)
        self.zeta_every_n_epochs = V.check_int("zeta_every_n_epochs", zeta_every_n_epochs, 1)
        self.zeta_selection = V.check_layer_selector("zeta_layers", zeta_layers)
        self.zeta_fraction = V.check_float("zeta_fraction", zeta_fraction, 0.0, 1.0)
        self.zeta_budget = None if zeta_budget is None else V.check_int("zeta_budget", zeta_budget, 4)
        if zeta_time_fraction is not None:
            V.check_float("zeta_time_fraction", zeta_time_fraction, 0.0, 1.0, strict_min=True)
        self.zeta_time_fraction = zeta_time_fraction
        if zeta_budget is not None and zeta_time_fraction is not None:
            raise ValueError(f"`zeta_budget`={zeta_budget!r} (fixed rows per layer) and `zeta_time_fraction`={zeta_time_fraction!r}"
                             " (a share of wall time) are two schedules: give at most one (neither: the counted default).")
        self.zeta_window = V.check_int("zeta_window", zeta_window, 1)
        self.probe_size = V.check_int("probe_size", probe_size, 1)
        self.baseline = V.check_choice("baseline", baseline, BASELINES)
        self.metric = V.check_choice("metric", metric, METRICS)
        if value_fn is not None and not callable(value_fn):
            raise TypeError(f"`value_fn` must be callable(module, batch) -> per-sample values or None, got {value_fn!r}.")
        self.value_fn = value_fn
        if not isinstance(antithetic, bool):
            raise TypeError(f"`antithetic` must be a bool, got {antithetic!r}.")
        self.antithetic = antithetic
        if truncation_tol is not None:
            V.check_float("truncation_tol", truncation_tol, 0.0)
        self.truncation_tol = truncation_tol
        self.confidence = V.check_float("confidence", confidence, 0.0, 1.0, strict_min=True)
        if self.confidence >= 1.0:
            raise ValueError(f"`confidence` must be a number in (0, 1), got {confidence!r}.")
        self.zeta_max_batch = V.check_int("zeta_max_batch", zeta_max_batch, 1)
        self.zeta_max_bytes = None if zeta_max_bytes is None else V.check_int("zeta_max_bytes", zeta_max_bytes, 1)
        self.tractography = V.check_bool("tractography", tractography)
        self.top_k = V.check_int("top_k", top_k, 1)
        self.dead_ratio = V.check_float("dead_ratio", dead_ratio, 0.0, 1.0)
        self.saturation_ratio = V.check_float("saturation_ratio", saturation_ratio, 1.0, strict_min=True)
        self.zeta_concentration = V.check_float("zeta_concentration", zeta_concentration, 0.0, 1.0, strict_min=True)
        self.stop_on = V.check_choices("stop_on", stop_on, FMRI_ANOMALY_KINDS)
        for name, fn in (("output_selector", output_selector), ("label_selector", label_selector), ("batch_split", batch_split)):
            if fn is not None and not callable(fn):
                raise TypeError(f"`{name}` must be callable or None, got {fn!r}.")
        self.output_selector = output_selector
        self.label_selector = label_selector
        self.batch_split = batch_split
        self.strict = V.check_bool("strict", strict)
        self.panels = V.check_bool("panels", panels)
        self.flag_history: Deque[Tuple[int, FrozenSet[str]]] = deque(maxlen=V.check_int("flag_history", flag_history, 1))
        self.seed = V.check_int("seed", seed, 0)

        self._taps: Optional[LayerTaps] = None
        self._modules: Dict[str, nn.Module] = {}
        self._zeta_names: List[str] = []
        self._density: Optional[RegionDensities] = None  # built in `setup`
        self._warned_clamp: set = set()
        self._warned_budget: set = set()
        self._zeta: Dict[str, ZetaResult] = {}
        # per zeta layer: sufficient statistics of the last `zeta_window` evaluations (None = no samples)
        self._zeta_stats: Dict[str, Deque[Optional[Tuple[Tensor, Tensor, int, int, int]]]] = {}
        self._zeta_grid: Dict[str, Tuple[int, ...]] = {}
        # time-budget ledger (seconds): per-layer savings, per-row and set-up costs, overhead debt
        self._zeta_bank: Dict[str, float] = {}
        self._row_cost: Dict[str, float] = {}
        self._setup_cost: Dict[str, float] = {}
        self._rows_per_sample: Dict[str, int] = {}
        self._overhead_debt = 0.0
        self._train_elapsed = 0.0  # training wall time since the previous zeta evaluation
        self._train_t0: Optional[float] = None
        self.last_zeta_plan: Dict[str, Dict[str, float]] = {}
        self.zeta_max: Dict[str, float] = {}
        self._zeta_flagged: FrozenSet[str] = frozenset()
        self._density_flagged: FrozenSet[str] = frozenset()
        self._tractography = Tractography(self.grid, self.top_k, self.output_selector, fail=self._fail)
        self._probe: Optional[Batch] = None
        self._train_samples = 0  # training sample-forwards since the previous zeta evaluation (counted schedule)
        self._zeta_credit: Dict[str, int] = {}  # counted schedule: sample-forwards a layer has saved
        self._warned_fail: set = set()
        self._warned_no_map: set = set()
        self._probe_from_val = False
        self._listeners: List[Callable[[Trainer, LightningModule], None]] = []
        self._pending_state: Optional[Dict[str, Any]] = None
        self._train_batches = 0
        self._zeta_epoch: Optional[int] = None
        self.zeta_evaluations = 0
        self._self_time_steps = 0
        self._zeta_time_s = 0.0

    # ------------------------------------------------------------------ public read-only surface
    _acc_n, _rows, _base = (_engine_view("_density", a) for a in ("acc_n", "rows", "base"))

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=repr(self.layer_selection), grid=self.grid)

    def _layer_taps(self) -> Optional[LayerTaps]:
        return self._taps

    @property
    def zeta_layers(self) -> List[str]:
        """Names of the layers whose regions are scored."""
        return list(self._zeta_names)

    @property
    def density(self) -> Dict[str, Tensor]:
        """Grid-shaped ``phi`` per layer over the current window (or the last one if it is empty)."""
        return {} if self._density is None else self._density.density()

    @property
    def zeta(self) -> Dict[str, ZetaResult]:
        """Latest zeta per layer: ``.scores .ci_low .ci_high .significant`` grid-shaped (CPU)."""
        return dict(self._zeta)

    @property
    def flagged_layers(self) -> FrozenSet[str]:
        """Layers flagged by the latest check (spatial density anomalies or zeta concentration)."""
        return self._density_flagged | self._zeta_flagged

    @property
    def _self_time_ns(self) -> int:
        return 0 if self._density is None else self._density.self_time_ns

    @property
    def self_time(self) -> Dict[str, float]:
        """Time spent in this callback: per-step hooks (ns per training step) and zeta (s in total)."""
        steps = max(self._self_time_steps, 1)
        return {"self_time_ns_per_step": self._self_time_ns / steps, "steps": self._self_time_steps,
                "zeta_seconds": self._zeta_time_s, "zeta_evaluations": self.zeta_evaluations}

    def add_listener(self, fn: Callable[[Trainer, LightningModule], None]) -> None:
        """Call ``fn(trainer, pl_module)`` after each zeta evaluation (e.g. the cross-modal callback)."""
        if not callable(fn):
            raise TypeError(f"`fn` must be callable(trainer, pl_module), got {fn!r}.")
        if fn not in self._listeners:
            self._listeners.append(fn)

    # ------------------------------------------------------------------ set-up and teardown
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remember_trainer(trainer)
        if self._taps is None:
            self._modules = select_layers(pl_module, self.layer_selection)
            zeta = self._modules if self.zeta_selection is None else select_layers(pl_module, self.zeta_selection, argument="zeta_layers")
            self._zeta_names = list(zeta)
            self._modules_all = {**self._modules, **zeta}
            self._density = RegionDensities(list(self._modules), self.grid, self.lam, self.eps, self.density_samples, self.min_history,
                                            self.dead_ratio, self.saturation_ratio, on_clamped=self._warn_clamped, source=self.source)
            self._taps = LayerTaps(self._modules, reduce=self._density.reduce, selector=self.output_selector)
        self._apply_pending_state()
        self._taps.enabled = False  # densities are taken on training batches only
        self._taps.attach()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._finish(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._finish(trainer)

    def _finish(self, trainer: Trainer) -> None:
        if self._taps is not None:
            self._taps.detach()
            self._taps.discard()
            self._taps.enabled = False
        sink = self._panels(trainer)
        if sink is not None:
            sink.flush()

    # ------------------------------------------------------------------ per step
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._probe is None:
            self._take_probe(batch, from_val=False)
        if self._taps is not None:
            self._taps.enabled = True

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._probe_from_val:
            self._take_probe(batch, from_val=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter_ns()
        if self._taps is None:
            return
        self._taps.enabled = False
        self._train_batches += 1
        self._train_samples += self._batch_size(batch)
        self._density.add(self._taps.take())
        every = self.check_every_n_steps or max(trainer.log_every_n_steps, 1)
        if self._train_batches % every == 0:
            self._check(trainer, pl_module)
        self._density.self_time_ns += time.perf_counter_ns() - t0
        self._self_time_steps += 1

    def _batch_size(self, batch: Any) -> int:
        """Samples of a training batch (its sample-forwards for the counted zeta schedule); 0 if not understood."""
        if isinstance(batch, Tensor):
            return int(batch.shape[0]) if batch.dim() else 0
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor) and batch[0].dim():
            return int(batch[0].shape[0])
        try:
            return split_batch(batch, None, self.batch_split).size
        except (TypeError, ValueError):
            return 0

    def _warn_clamped(self, items: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]) -> None:
        items = [item for item in items if item[0] not in self._warned_clamp]
        if not items:
            return
        for name, _, _ in items:
            self._warned_clamp.add(name)
        listing = "; ".join(f"`{n}` output {s} -> grid {g}" for n, s, g in items)
        rank_zero_warn(f"NNfMRICallback: `grid`={self.grid} is larger than some layers and was clamped: {listing}.")

    # ------------------------------------------------------------------ spatial anomalies
    def _check(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the density window: judge every region against its baseline (host sync here only)."""
        step = trainer.global_step
        events, self._density_flagged = self._density.check(step)
        self._push_flags(step)
        self._log(pl_module, "nn_fmri/anomaly", float(bool(self.flagged_layers)))
        self._record(events)
        self._maybe_stop(trainer, events)

    def _push_flags(self, step: int) -> None:
        self.flag_history.append((step, self.flagged_layers))

    # ------------------------------------------------------------------ probe batch
    def _split(self, batch: Any) -> Optional[Batch]:
        """The batch split by :func:`~nn_neuroimaging_lightning.batches.split_batch`; ``None`` (one warning) if it cannot be."""
        try:
            return split_batch(batch, self.label_selector, self.batch_split)
        except (TypeError, ValueError) as err:
            if self.strict:
                raise
            if "probe" not in self._warned_fail:
                self._warned_fail.add("probe")
                rank_zero_warn(f"NNfMRICallback: no probe for zeta and tractography: {err} (the argument that fixes it:"
                               " `batch_split(batch) -> (args, kwargs, target)`).")
            return None

    def _take_probe(self, batch: Any, from_val: bool) -> None:
        split = self._split(batch)
        if split is None or split.size == 0:
            return
        self._probe = split.take(self.probe_size)
        self._probe_from_val = from_val

    def _shared_probe(self, trainer: Trainer, pl_module: LightningModule) -> Optional[Batch]:
        probe = self._probe
        if trainer.world_size > 1:
            # Every rank must play the same game: rank 0's probe wins.
            probe = trainer.strategy.broadcast(probe, src=0)
        if probe is None:
            return None
        return probe.to(pl_module.device)

    # ------------------------------------------------------------------ zeta schedule
    def _pause_train_clock(self) -> None:
        if self._train_t0 is not None:
            self._train_elapsed += time.perf_counter() - self._train_t0
            self._train_t0 = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_t0 = time.perf_counter()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._pause_train_clock()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._taps is None:
            return
        if not (trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.zeta_every_n_epochs):
            self._evaluate(trainer, pl_module)
        if trainer.state.fn == "fit":
            self._train_t0 = time.perf_counter()  # training may go on in this epoch (val_check_interval < 1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pause_train_clock()
        if self._taps is None:
            return
        has_val = bool(trainer.num_val_batches) and sum(trainer.num_val_batches) > 0
        if not has_val and self._zeta_epoch != trainer.current_epoch and (trainer.current_epoch + 1) % self.zeta_every_n_epochs == 0:
            self._evaluate(trainer, pl_module)
        self._write_density_panels(trainer)

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        t0 = time.perf_counter()
        probe = self._shared_probe(trainer, pl_module)
        if probe is None:
            rank_zero_warn("NNfMRICallback: no probe batch has been seen yet (no training or validation batch could be split"
                           " into inputs and target; see `batch_split`); zeta skipped.")
            return
        self._zeta_epoch = trainer.current_epoch
        allowance = forwards = None
        if self.zeta_time_fraction is not None and self._train_elapsed > 0:
            allowance = self.zeta_time_fraction * self._train_elapsed - self._overhead_debt
        elif self.zeta_time_fraction is None and self.zeta_budget is None:
            forwards = int(self.zeta_fraction * self._train_samples) * trainer.world_size
            if trainer.world_size > 1:
                forwards = int(trainer.strategy.broadcast(forwards, src=0))  # every rank plays rank 0's plan
        self._train_elapsed = 0.0
        self._train_samples = 0
        events = self.compute_zeta(pl_module, probe, epoch=trainer.current_epoch, trainer=trainer, time_budget_s=allowance,
                                   forward_budget=forwards)
        if self.tractography:
            self.compute_tractography(pl_module, probe)
        self.zeta_evaluations += 1
        elapsed = time.perf_counter() - t0
        self._zeta_time_s += elapsed
        if allowance is not None:
            # what the layers' ledgers did not account for (probe transfer, tractography, bookkeeping)
            layer_spent = sum(p["spent_s"] for p in self.last_zeta_plan.values())
            self._overhead_debt = max(elapsed - layer_spent, 0.0)
        on_step = False
        from nn_neuroimaging_lightning.panels.tensorboard import safe_tag  # the layout's tags: no path-like keys

        for name in self._zeta_names:
            if name in self.zeta_max:
                self._log(pl_module, safe_tag("nn_fmri", name, "zeta_max"), self.zeta_max[name], on_step=on_step, on_epoch=True)
        self._push_flags(trainer.global_step)
        self._log(pl_module, "nn_fmri/anomaly", float(bool(self.flagged_layers)), on_step=on_step, on_epoch=True)
        self._record(events)
        self._write_zeta_panels(trainer)
        for fn in list(self._listeners):
            fn(trainer, pl_module)
        self._maybe_stop(trainer, events)

    def _fail(self, what: str, err: BaseException, fix: str) -> None:
        """One warning per layer (or pair): what failed, the cause, the argument that fixes it; ``strict`` raises."""
        if self.strict:
            raise err
        if what not in self._warned_fail:
            self._warned_fail.add(what)
            rank_zero_warn(f"NNfMRICallback: {what} skipped: {type(err).__name__}: {err} (the argument that fixes it: {fix});"
                           " the other layers go on.")

    @staticmethod
    def _zeta_fix(err: BaseException) -> str:
        text = str(err)
        if "first axis" in text or "no tensor output" in text or "used in forward" in text:
            return "leave the layer out of `zeta_layers`, or pick its tensor with `output_selector`"
        if any(k in text for k in ("metric", "targets", "MSE", "label", "cross-entropy", "loss")):
            return "`value_fn(module, batch) -> per-sample values`, `metric`, or `batch_split` / `label_selector`"
        return "leave the layer out of `zeta_layers`, or pass `value_fn`"

    def _no_map(self, name: str, reason: str) -> None:
        """Say once per layer why it has no zeta map after an evaluation."""
        if name not in self._warned_no_map and name not in self._zeta:
            self._warned_no_map.add(name)
            rank_zero_warn(f"NNfMRICallback: layer `{name}` has no zeta map after this evaluation: {reason}.")

    def _window_samples(self, name: str) -> int:
        """Samples the layer's window keeps once this evaluation's entry is pushed (the oldest falls out)."""
        window = self._zeta_stats.get(name)
        if not window:
            return 0
        kept = list(window)[-(self.zeta_window - 1):] if self.zeta_window > 1 else []
        return sum(e[2] for e in kept if e is not None)

    def compute_zeta(self, pl_module: nn.Module, probe: Union[Batch, Tuple[Tensor, Optional[Tensor]]], epoch: int = 0,
                     trainer: Optional[Trainer] = None, time_budget_s: Optional[float] = None,
                     forward_budget: Optional[int] = None) -> List[AnomalyEvent]:
        """Estimate zeta for every zeta layer on ``probe``; fills :attr:`zeta`.

        Three schedules (see the class docstring): ``forward_budget`` sample-forwards shared by the
        layers (counted, the default in a fit); ``time_budget_s`` seconds (timed); neither:
        ``zeta_budget`` value rows per layer (fixed; without ``zeta_budget`` the two samples that
        give a finite interval). The new samples join each layer's window of the last
        ``zeta_window`` evaluations. A layer whose game fails is skipped with one warning
        (``strict=True`` raises). Returns the ``zeta_concentration`` events (not yet recorded).
        """
        if not isinstance(probe, Batch):
            x, y = probe
            probe = Batch((x,), {}, y, int(x.shape[0]))
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        step = trainer.global_step if trainer is not None else 0
        p_size = probe.size
        events: List[AnomalyEvent] = []
        flagged = set()
        group = 2 if self.antithetic else 1
        timed = time_budget_s is not None
        counted = not timed and forward_budget is not None
        pool = float(time_budget_s) if timed else 0.0
        fpool = int(forward_budget) if counted else 0
        # cheapest known sample first, so that unspent shares of satisfied layers flow to dearer ones
        order = sorted(self._zeta_names, key=lambda n: (self._rows_per_sample.get(n, 0), self._zeta_names.index(n)) if counted
                       else self._sample_cost(n))
        base_seed = (self.seed * 1_000_003 + int(epoch) * 1009 + self.zeta_evaluations) % (2**62)
        self.last_zeta_plan = {}
        for pos, name in enumerate(order):
            t_layer = time.perf_counter()
            share = pool / (len(order) - pos) if timed else 0.0
            avail = self._zeta_bank.get(name, 0.0) + share
            fshare = fpool // (len(order) - pos) if counted else 0
            favail = self._zeta_credit.get(name, 0) + fshare
            need = max(0, MIN_SAMPLES_FOR_INTERVAL - self._window_samples(name))
            skip = timed and name in self._rows_per_sample and self._sample_cost(name) > avail
            if counted and name in self._rows_per_sample and not need:
                skip = (favail - 3 * p_size) // (self._rows_per_sample[name] * p_size) < 1
            if timed and world > 1:
                skip = bool(trainer.strategy.broadcast(skip, src=0))  # rank 0's ledger decides for all
            n_samples, game, res, fspent = 0, None, None, 0
            if not skip:
                try:
                    n_samples, game, res = self._zeta_layer(pl_module, name, probe, t_layer, avail, favail, need, timed, counted,
                                                            group, world, rank, trainer, base_seed)
                except Exception as err:  # one layer's failure never ends the fit (strict=True raises)
                    self._fail(f"zeta for layer `{name}`", err, self._zeta_fix(err))
                    n_samples, game, res = 0, None, None
                if game is not None and n_samples:
                    fspent = (3 + n_samples * self._rows_per_sample[name]) * p_size
            spent = time.perf_counter() - t_layer
            if timed:
                remaining = avail - spent
                satisfied = n_samples >= MAX_SAMPLES_PER_EVALUATION
                keep = min(remaining, 0.0 if satisfied else self._sample_cost(name))  # savings, or a debt
                self._zeta_bank[name] = keep
                pool = pool - share + (remaining - keep)
            if counted:
                left = max(favail - fspent, 0)  # a floor the share did not cover is not carried as debt
                sample = (self._rows_per_sample.get(name, 0) + 3) * p_size
                keep_f = 0 if n_samples >= MAX_SAMPLES_PER_EVALUATION else min(left, sample)
                self._zeta_credit[name] = keep_f
                fpool = fpool - fshare + (left - keep_f)
            self.last_zeta_plan[name] = {"samples": n_samples, "spent_s": spent, "allowance_s": avail,
                                         "bank_s": self._zeta_bank.get(name, 0.0), "sample_forwards": fspent,
                                         "allowance_forwards": favail}
            self._push_zeta_stats(name, res, game, trainer, world, pl_module)
            merged = self._zeta.get(name)
            if merged is None:
                why = ("its game failed (see the warning above)" if any(name in w for w in self._warned_fail)
                       else "its share of the budget is below one sample, and its window holds none")
                self._no_map(name, why)
                continue
            if self._zeta_stats[name][-1] is None:
                continue
            scores = merged.scores.reshape(-1)
            total = float(scores.abs().sum())
            r = scores.numel()
            if r >= MIN_CONCENTRATION_REGIONS and total > 0:
                conc = float(scores.abs().max()) / total
                if conc > self.zeta_concentration:
                    flagged.add(name)
                    top = int(scores.abs().argmax())
                    events.append(AnomalyEvent(step, "validate", name, "zeta_concentration", conc, self.source,
                                               detail=f"max|zeta|/sum|zeta| = {conc:.3g} at region {region_coords(tuple(merged.scores.shape), top)}"))
        self._zeta_flagged = frozenset(flagged)
        return events

    def _zeta_layer(self, pl_module: nn.Module, name: str, probe: Batch, t_layer: float, avail: float, favail: int, need: int,
                    timed: bool, counted: bool, group: int, world: int, rank: int, trainer: Optional[Trainer],
                    base_seed: int) -> Tuple[int, LesionGame, Optional[ZetaResult]]:
        """One layer's game and its samples on the schedule in force; returns ``(samples, game, result)``."""
        module = self._modules_all[name]
        game = LesionGame(pl_module, module, probe, None, self.zeta_grid, self.baseline, self.metric, self.value_fn,
                          self.output_selector, self.zeta_max_batch, max_bytes=self.zeta_max_bytes)
        setup = time.perf_counter() - t_layer
        if game.clamped and name not in self._warned_clamp:
            self._warn_clamped([(name, (probe.size,) + game.unit_shape, game.grid)])
        r = game.n_regions
        rows = group * max(r - 1, 1)
        self._rows_per_sample[name] = rows
        self._setup_cost[name] = setup
        if timed and name not in self._row_cost:
            # first evaluation of this layer: calibrate the cost of a row on f(none), f(all) (the
            # first call settles the game's upstream expansion, so time the second). A 2-row call
            # over-estimates a row (the upstream runs once per call); the anytime loop re-measures.
            ends = (torch.arange(2) == 1)[:, None].expand(2, r)
            with game.session():
                game(ends)
                t_cal = time.perf_counter()
                game(ends)
            self._row_cost[name] = (time.perf_counter() - t_cal) / 2
        self._row_cost.setdefault(name, setup)
        if counted:
            # whole samples the share affords (probe forward, f(none), f(all) and `rows` rows of `B` samples each)
            afford = max(favail - 3 * probe.size, 0) // (rows * probe.size)
            n_samples = min(max(int(afford), need), MAX_SAMPLES_PER_EVALUATION)
        elif timed:
            per_row = self._row_cost[name]
            spent_so_far = time.perf_counter() - t_layer  # set-up and calibration
            n_samples = int(max(avail - spent_so_far - 2 * per_row, 0.0) // (rows * per_row)) * world
            n_samples = min(n_samples, MAX_SAMPLES_PER_EVALUATION)
            if world > 1:
                n_samples = int(trainer.strategy.broadcast(n_samples, src=0))  # every rank plays the same plan
        elif self.zeta_budget is None:
            n_samples = MIN_SAMPLES_FOR_INTERVAL
        else:
            budget = self.zeta_budget
            need_rows = 2 + 2 * rows
            if budget < need_rows:
                if name not in self._warned_budget:
                    self._warned_budget.add(name)
                    rank_zero_warn(f"NNfMRICallback: `zeta_budget`={self.zeta_budget} gives fewer than 2 samples for `{name}` ({r} regions); using {need_rows} rows.")
                budget = need_rows
            n_samples = ((budget - 2) // max(r - 1, 1)) // group
        res = None
        generator = torch.Generator().manual_seed(base_seed + 7919 * self._zeta_names.index(name))
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
                    left = avail - (time.perf_counter() - t_layer) - 2 * self._row_cost[name]
                    k = min(chunk, MAX_SAMPLES_PER_EVALUATION - done, int(max(left, 0.0) // (rows * self._row_cost[name])))
                    if k < 1:
                        break
                    t_run = time.perf_counter()
                    part = shapley_zeta(game, r, n_permutations=k * group, **run)
                    self._row_cost[name] = (time.perf_counter() - t_run) / part.n_evaluations
                    parts.append(part)
                    done += k
            n_samples = done
            if parts:
                res = _zeta_from_stats(torch.stack([q.stat_sum for q in parts]).sum(0),
                                       torch.stack([q.stat_sum_sq for q in parts]).sum(0),
                                       sum(q.stat_count for q in parts), self.confidence,
                                       sum(q.n_permutations for q in parts), sum(q.n_evaluations for q in parts))
        elif n_samples > 0:
            t_run = time.perf_counter()
            with game.session():
                res = shapley_zeta(game, r, n_permutations=n_samples * group, rank=rank, world_size=world, **run)
            if res.n_evaluations > 0:
                self._row_cost[name] = (time.perf_counter() - t_run) / res.n_evaluations
        return n_samples, game, res

    def _sample_cost(self, name: str) -> float:
        """Estimated seconds for one zeta sample of ``name`` (set-up and ``f(all)``/``f(none)`` included); 0 if unknown."""
        if name not in self._rows_per_sample:
            return 0.0
        per_row = self._row_cost.get(name, 0.0)
        return self._setup_cost.get(name, 0.0) + (self._rows_per_sample[name] + 2) * per_row

    def _push_zeta_stats(self, name: str, res: Optional[ZetaResult], game: Optional[LesionGame],
                         trainer: Optional[Trainer], world: int, pl_module: nn.Module) -> None:
        """Add this evaluation's samples (merged across ranks) to the layer's window and refresh :attr:`zeta`."""
        window = self._zeta_stats.get(name)
        if game is not None and self._zeta_grid.get(name) != game.grid:
            window = None  # a new grid: earlier statistics are about other players
            self._zeta_grid[name] = game.grid
        if window is None or window.maxlen != self.zeta_window:
            window = deque(window or (), maxlen=self.zeta_window)
            self._zeta_stats[name] = window
        entry = None
        if res is not None:
            r = res.stat_sum.numel()
            stats = torch.cat([res.stat_sum, res.stat_sum_sq,
                               torch.tensor([res.stat_count, res.n_permutations, res.n_evaluations], dtype=res.stat_sum.dtype)])
            if world > 1:
                dev = pl_module.device if hasattr(pl_module, "device") else torch.device("cpu")
                stats = trainer.strategy.reduce(stats.to(dev), reduce_op="sum").cpu()
            count, n_perm, n_eval = (int(round(float(v))) for v in stats[2 * r:])
            entry = (stats[:r].clone(), stats[r:2 * r].clone(), count, n_perm, n_eval)
        window.append(entry)
        self._refresh_zeta(name)

    def _refresh_zeta(self, name: str) -> None:
        entries = [e for e in self._zeta_stats.get(name, ()) if e is not None]
        if not entries or name not in self._zeta_grid:
            self._zeta.pop(name, None)
            self.zeta_max.pop(name, None)
            return
        stat_sum = torch.stack([e[0] for e in entries]).sum(0)
        stat_sum_sq = torch.stack([e[1] for e in entries]).sum(0)
        merged = _zeta_from_stats(stat_sum, stat_sum_sq, sum(e[2] for e in entries), self.confidence,
                                  sum(e[3] for e in entries), sum(e[4] for e in entries))
        self._zeta[name] = merged.reshape(self._zeta_grid[name])
        self.zeta_max[name] = float(merged.scores.max())

    # ------------------------------------------------------------------ tractography
    @property
    def tracts(self) -> Dict[Tuple[str, str], TractInfo]:
        """Latest tractography per consecutive tapped pair ``(source, target)`` (see :class:`~nn_neuroimaging_lightning.fmri.tracts.Tractography`)."""
        return self._tractography.tracts

    @property
    def path_strength(self) -> Dict[Tuple[str, ...], Tuple[float, List[int]]]:
        """Strongest path ``(strength, regions)`` along each chain of exactly meeting pairs."""
        return self._tractography.path_strength

    def compute_tractography(self, pl_module: nn.Module, inputs: Union[Tensor, Batch]) -> Dict[Tuple[str, str], TractInfo]:
        """One isolated forward on ``inputs`` (a tensor or a split batch); connection matrices between consecutive tapped layers.

        A failure of the forward skips tractography for this evaluation, one of a pair skips that
        pair (``traced=False`` with the reason), each with one warning (``strict=True`` raises).
        """
        return self._tractography.compute(pl_module, inputs, {n: self._modules[n] for n in self._taps.names}, self._trace)

    def _trace(self, *args: Any) -> TractInfo:
        return self._tractography.trace(*args)

    # ------------------------------------------------------------------ panels
    def _write_density_panels(self, trainer: Trainer) -> None:
        sink = self._panels(trainer)
        if sink is None:
            return
        from nn_neuroimaging_lightning.panels import figures as PF
        from nn_neuroimaging_lightning.panels import tensorboard as P

        step = trainer.global_step
        for name, phi in self.density.items():
            sink.figure(P.safe_tag("nn_fmri", name, "density"),
                           PF.heatmap_figure(phi.detach().cpu().numpy(), f"{name}: density phi", colorbar_label="phi"), step)
        sink.flush()

    def _write_zeta_panels(self, trainer: Trainer) -> None:
        sink = self._panels(trainer)
        if sink is None:
            return
        from nn_neuroimaging_lightning.panels import figures as PF
        from nn_neuroimaging_lightning.panels import tensorboard as P

        step = trainer.global_step
        for name, res in self._zeta.items():
            scores = res.scores.numpy()
            sig = res.significant.numpy()
            sink.figure(P.safe_tag("nn_fmri", name, "zeta"),
                           PF.heatmap_figure(scores, f"{name}: zeta (impact of each region)", "RdBu_r", sig, symmetric=True, colorbar_label="zeta"), step)
            header, rows = self.zeta_rows(name)
            sink.table(P.safe_tag("nn_fmri", name, "zeta_top"), header, rows, step)
        for (a, b), t in self.tracts.items():
            tag = P.safe_tag("nn_fmri", "tract", f"{a}__{b}")
            if t.traced:
                title = f"C({a} -> {b})" + (" [proportional grid across pooling]" if t.mapping == "proportional" else "")
                sink.figure(tag, PF.matrix_figure(t.matrix.numpy(), f"{a} region (source)", f"{b} region (target)", title), step)
                sink.table(tag + "/pathways", ("source region", "target region", "strength"), [(s, d, v) for s, d, v in t.pathways], step,
                           note=f"mapping: {t.mapping}; sigma: {t.activation}; efficiency: {t.efficiency:.4g}")
            else:
                sink.text(tag + "/pathways", f"not traced: {t.reason}", step)
        if self.path_strength:
            rows = [(" -> ".join(k), v[0], str(v[1])) for k, v in self.path_strength.items()]
            sink.table("nn_fmri/path_strength", ("layers", "strength", "regions"), rows, step)
        if trainer.state.fn != "fit":  # in a fit, on_train_epoch_end draws them (once per epoch, same step)
            self._write_density_panels(trainer)

    def zeta_table(self, name: str) -> str:
        """Markdown table of the ``top_k`` regions of a layer by zeta, with grid coordinates."""
        from nn_neuroimaging_lightning.panels import tensorboard as P

        header, rows = self.zeta_rows(name)
        return P.table_text(rows, header)

    def zeta_rows(self, name: str) -> Tuple[Tuple[str, ...], List[Tuple[Any, ...]]]:
        """Header and rows of the ``top_k`` regions of a layer by zeta, with grid coordinates."""
        res = self._zeta[name]
        grid = tuple(res.scores.shape)
        flat = res.scores.reshape(-1)
        order = torch.argsort(flat, descending=True, stable=True)[: self.top_k].tolist()
        lo, hi, sig = res.ci_low.reshape(-1), res.ci_high.reshape(-1), res.significant.reshape(-1)
        rows = [(r, region_coords(grid, r), float(flat[r]), float(lo[r]), float(hi[r]), bool(sig[r])) for r in order]
        return ("region", "grid cell", "zeta", "ci low", "ci high", "significant"), rows

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()

        def cpu(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.detach().cpu().clone()

        state.update(self._density.state_dict() if self._density is not None else {"layers": None})
        state.update({
            "zeta_stats": {k: {"grid": tuple(self._zeta_grid[k]),
                               "window": [None if e is None else (cpu(e[0]), cpu(e[1]), e[2], e[3], e[4]) for e in w]}
                           for k, w in self._zeta_stats.items() if k in self._zeta_grid},
            "zeta_ledger": {"bank": dict(self._zeta_bank), "row_cost": dict(self._row_cost), "setup_cost": dict(self._setup_cost),
                            "rows_per_sample": dict(self._rows_per_sample), "overhead_debt": self._overhead_debt,
                            "credit": dict(self._zeta_credit), "train_samples": self._train_samples},
            "zeta_max": dict(self.zeta_max),
            "train_batches": self._train_batches,
            "zeta_evaluations": self.zeta_evaluations,
            "flag_history": [(s, sorted(f)) for s, f in self.flag_history],
        })
        return state

    def _layers_ready(self) -> bool:
        return self._taps is not None


    def _apply_state(self, state: Mapping[str, Any]) -> None:
        saved = state.get("layers")
        if saved is not None and not self._density.load_state_dict(state):
            rank_zero_warn(f"NNfMRICallback: checkpoint layers {saved} differ from the tapped layers {self._taps.names}; density baselines not restored.")
        for name, z in dict(state.get("zeta_stats", {})).items():
            self._zeta_grid[name] = tuple(z["grid"])
            self._zeta_stats[name] = deque([None if e is None else (e[0], e[1], int(e[2]), int(e[3]), int(e[4])) for e in z["window"]],
                                           maxlen=self.zeta_window)
            self._refresh_zeta(name)
        ledger = dict(state.get("zeta_ledger", {}))
        self._zeta_bank = dict(ledger.get("bank", {}))
        self._row_cost = dict(ledger.get("row_cost", {}))
        self._setup_cost = dict(ledger.get("setup_cost", {}))
        self._rows_per_sample = dict(ledger.get("rows_per_sample", {}))
        self._overhead_debt = float(ledger.get("overhead_debt", 0.0))
        self._zeta_credit = {k: int(v) for k, v in dict(ledger.get("credit", {})).items()}
        self._train_samples = int(ledger.get("train_samples", 0))
        self._train_batches = int(state.get("train_batches", 0))
        self.zeta_evaluations = int(state.get("zeta_evaluations", 0))
        self.flag_history.clear()
        for s, f in state.get("flag_history", []):
            self.flag_history.append((int(s), frozenset(f)))
