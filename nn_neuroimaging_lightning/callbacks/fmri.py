"""NN-fMRI: micro-region densities, Shapley "zeta" impact of region lesions, tractography, anomalies."""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning.callbacks._base import AnomalyEvent, MonitorCallback
from nn_neuroimaging_lightning.config import FMRIConfig
from nn_neuroimaging_lightning.functional.grid import DEFAULT_EPS, DEFAULT_LAMBDA, _as_grid_tuple, _check_lam_eps
from nn_neuroimaging_lightning.functional.shapley import ZetaResult
from nn_neuroimaging_lightning.batches import Batch, BatchSplit
from nn_neuroimaging_lightning.fmri import Collectives, ProbeBatch, RegionDensities, TractInfo, Tractography, ZetaScheduler
from nn_neuroimaging_lightning.fmri.zeta import DEFAULT_PROBE_SIZE, DEFAULT_ZETA_GRID, batch_samples, zeta_top_rows
from nn_neuroimaging_lightning.lesion import BASELINES, METRICS
from nn_neuroimaging_lightning.panels.fmri import write_density_panels, write_zeta_panels
from nn_neuroimaging_lightning.panels.tensorboard import safe_tag, table_text
from nn_neuroimaging_lightning.taps import LayerSelector, LayerTaps, select_layers

#: Anomaly kinds NN-fMRI can raise; ``stop_on`` takes any of them.
FMRI_ANOMALY_KINDS: Tuple[str, ...] = ("dead_region", "saturated_region", "zeta_concentration")


def _engine_view(engine: str, attr: str, doc: Optional[str] = None, empty: Optional[Callable[[], Any]] = None) -> property:
    """Read-only view of an engine's attribute (``empty()`` while the engine is not built, when given)."""

    def get(self: "NNfMRICallback") -> Any:
        obj = getattr(self, engine)
        return empty() if obj is None and empty is not None else getattr(obj, attr)

    return property(get, doc=doc)


class NNfMRICallback(MonitorCallback):
    r"""Watch where in each layer activity and impact live, like fMRI voxels in a brain.

    Thin Lightning glue over the plain-PyTorch engines of :mod:`nn_neuroimaging_lightning.fmri` (their
    docstrings hold the measures, decisions and costs). Every training step: the **densities** of each tapped
    layer's micro-regions (:class:`~nn_neuroimaging_lightning.fmri.density.RegionDensities`; ``dead_region`` /
    ``saturated_region``). At the end of every ``zeta_every_n_epochs``-th validation epoch of a fit (training
    epoch without a validation loop) and of ``trainer.validate``, never in the sanity check: the **zeta** of the
    ``zeta_layers``' regions (:class:`~nn_neuroimaging_lightning.fmri.zeta.ZetaScheduler`) and **tractography**
    (:class:`~nn_neuroimaging_lightning.fmri.tracts.Tractography`) on the probe batch
    (:class:`~nn_neuroimaging_lightning.fmri.probe.ProbeBatch`). A failure warns once and is skipped
    (``strict=True`` raises); evaluations leave the run's losses and weights unchanged.

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
            cap): it caps the coalitions per forward, not the estimates (see
            :attr:`~nn_neuroimaging_lightning.lesion.LesionGame.rows_per_forward`). Raise it when
            memory allows: on a time budget, fewer coalitions per forward mean fewer samples.
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
        grid: Optional[Sequence[int]] = None, lam: float = DEFAULT_LAMBDA, eps: float = DEFAULT_EPS,
        check_every_n_steps: Optional[int] = None, density_samples: Optional[int] = 4, min_history: int = 2,
        zeta_every_n_epochs: int = 1, zeta_layers: LayerSelector = None, zeta_grid: Optional[Sequence[int]] = None,
        zeta_fraction: float = 0.05, zeta_budget: Optional[int] = None, zeta_time_fraction: Optional[float] = None,
        zeta_window: int = 8, probe_size: int = DEFAULT_PROBE_SIZE, baseline: str = "zero", metric: str = "auto",
        value_fn: Optional[Callable[[nn.Module, Any], Tensor]] = None, antithetic: bool = True,
        truncation_tol: Optional[float] = None, confidence: float = 0.95, zeta_max_batch: int = 1024,
        zeta_max_bytes: Optional[int] = 4 * 2**20, tractography: bool = True, top_k: int = 5, dead_ratio: float = 0.05,
        saturation_ratio: float = 20.0, zeta_concentration: float = 0.9, stop_on: Sequence[str] = (),
        output_selector: Optional[Callable[[Any], Tensor]] = None, label_selector: Optional[Callable[[Any], Tensor]] = None,
        batch_split: Optional[BatchSplit] = None, strict: bool = False, panels: bool = True,
        max_events: int = 1000, flag_history: int = 128, seed: int = 0) -> None:
        super().__init__(max_events=V.check_int("max_events", max_events, 1),
                         flag_history=V.check_int("flag_history", flag_history, 1))
        self.layer_selection = V.check_layer_selector("layers", layers)
        self.grid = _as_grid_tuple(list(grid) if isinstance(grid, (list, tuple)) else grid)
        if zeta_grid is None:
            self.zeta_grid = self.grid if grid is not None else DEFAULT_ZETA_GRID
        else:
            self.zeta_grid = _as_grid_tuple(list(zeta_grid) if isinstance(zeta_grid, (list, tuple)) else zeta_grid, "zeta_grid")
        _check_lam_eps(lam, eps)
        self.lam, self.eps = float(lam), float(eps)
        self.check_every_n_steps = None if check_every_n_steps is None else V.check_int("check_every_n_steps", check_every_n_steps, 1)
        self.density_samples = None if density_samples is None else V.check_int("density_samples", density_samples, 1)
        self.min_history = V.check_int("min_history", min_history, 1)
        self.zeta_every_n_epochs = V.check_int("zeta_every_n_epochs", zeta_every_n_epochs, 1)
        self.zeta_selection = V.check_layer_selector("zeta_layers", zeta_layers)
        self.zeta_fraction, self.zeta_budget, self.zeta_time_fraction = ZetaScheduler.check_schedule(zeta_fraction, zeta_budget,
                                                                                                     zeta_time_fraction)
        self.zeta_window = V.check_int("zeta_window", zeta_window, 1)
        self.probe_size = V.check_int("probe_size", probe_size, 1)
        self.baseline = V.check_choice("baseline", baseline, BASELINES)
        self.metric = V.check_choice("metric", metric, METRICS)
        self.value_fn = V.check_callable("value_fn", value_fn, "callable(module, batch) -> per-sample values")
        self.antithetic = V.check_bool("antithetic", antithetic)
        self.truncation_tol = V.check_float("truncation_tol", truncation_tol, 0.0, optional=True)
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
        self.output_selector = V.check_callable("output_selector", output_selector)
        self.label_selector = V.check_callable("label_selector", label_selector)
        self.batch_split = V.check_callable("batch_split", batch_split)
        self.strict = V.check_bool("strict", strict)
        self.panels = V.check_bool("panels", panels)
        self.seed = V.check_int("seed", seed, 0)

        self._taps: Optional[LayerTaps] = None
        self._modules: Dict[str, nn.Module] = {}
        self._density: Optional[RegionDensities] = None  # built in `setup`
        self._scheduler: Optional[ZetaScheduler] = None  # built in `setup`
        self._density_flagged: FrozenSet[str] = frozenset()
        self._tractography = Tractography(self.grid, self.top_k, self.output_selector, fail=self._fail)
        self._probes = ProbeBatch(self.probe_size, self.label_selector, self.batch_split, self.strict,
                                  warn=functools.partial(self._warn_once, "probe"), missing=rank_zero_warn)
        self._listeners: List[Callable[[Trainer, LightningModule], None]] = []
        self._train_batches = 0
        self._zeta_epoch: Optional[int] = None
        self.zeta_evaluations = 0
        self._self_time_steps, self._zeta_time_s = 0, 0.0  # training steps timed, seconds in evaluations (`self_time`)

    # ------------------------------------------------------------------ public read-only surface
    _acc_n, _rows, _base = (_engine_view("_density", a) for a in ("acc_n", "rows", "base"))
    _probe = _engine_view("_probes", "batch")  # the probe batch (CPU), `None` until one is taken
    _zeta_stats, _row_cost, _rows_per_sample, _sample_cost = (
        _engine_view("_scheduler", a) for a in ("stats", "row_cost", "rows_per_sample", "sample_cost"))

    def _state_key_fields(self) -> Dict[str, Any]:
        return {"layers": repr(self.layer_selection), "grid": self.grid}

    @property
    def zeta_layers(self) -> List[str]:
        """Names of the layers whose regions are scored."""
        return [] if self._scheduler is None else list(self._scheduler.names)

    @property
    def density(self) -> Dict[str, Tensor]:
        """Grid-shaped ``phi`` per layer over the current window (or the last one if it is empty)."""
        return {} if self._density is None else self._density.density()

    @property
    def zeta(self) -> Dict[str, ZetaResult]:
        """Latest zeta per layer: ``.scores .ci_low .ci_high .significant`` grid-shaped (CPU)."""
        return {} if self._scheduler is None else dict(self._scheduler.zeta)

    zeta_max = _engine_view("_scheduler", "zeta_max", "Largest zeta of each layer's latest map (the cross-modal callback's"
                                                      " ``zeta_max``; ``Dict[str, float]``).", dict)
    last_zeta_plan = _engine_view("_scheduler", "last_plan", "The latest evaluation's ledger per layer: samples, seconds /"
                                  " sample-forwards spent and allowed, savings (``Dict[str, Dict[str, float]]``).", dict)

    @property
    def flagged_layers(self) -> FrozenSet[str]:
        """Layers flagged by the latest check (spatial density anomalies or zeta concentration)."""
        return self._density_flagged | (self._scheduler.flagged if self._scheduler is not None else frozenset())

    _self_time_ns = _engine_view("_density", "self_time_ns", empty=int)

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
            self._scheduler = ZetaScheduler(
                zeta, self.zeta_grid, fraction=self.zeta_fraction, budget=self.zeta_budget, time_fraction=self.zeta_time_fraction,
                window=self.zeta_window, baseline=self.baseline, metric=self.metric, value_fn=self.value_fn,
                output_selector=self.output_selector, max_batch=self.zeta_max_batch, max_bytes=self.zeta_max_bytes,
                antithetic=self.antithetic, truncation_tol=self.truncation_tol, confidence=self.confidence,
                concentration=self.zeta_concentration, seed=self.seed, fail=self._fail, warn=rank_zero_warn,
                on_clamped=self._warn_clamped, source=self.source)
            self._density = RegionDensities(list(self._modules), self.grid, self.lam, self.eps, self.density_samples, self.min_history,
                                            self.dead_ratio, self.saturation_ratio, on_clamped=self._warn_clamped, source=self.source)
            self._taps = LayerTaps(self._modules, reduce=self._density.reduce, selector=self.output_selector)
        self._apply_pending_state()
        self._taps.enabled = False  # densities are taken on training batches only
        self._taps.attach()

    def _finish(self, trainer: Trainer) -> None:  # teardown, on_exception (the base's)
        super()._finish(trainer)
        if self._taps is not None:
            self._taps.enabled = False

    # ------------------------------------------------------------------ per step
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._probes.offer(batch, from_val=False)
        if self._taps is not None:
            self._taps.enabled = True

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._probes.offer(batch, from_val=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        t0 = time.perf_counter_ns()
        if self._taps is None:
            return
        self._taps.enabled = False
        self._train_batches += 1
        self._scheduler.note_training(samples=batch_samples(batch, self.batch_split))
        self._density.add(self._taps.take())
        if self._train_batches % (self.check_every_n_steps or max(trainer.log_every_n_steps, 1)) == 0:
            self._check(trainer, pl_module)
        self._density.self_time_ns += time.perf_counter_ns() - t0
        self._self_time_steps += 1

    def _warn_clamped(self, items: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]) -> None:
        """One warning listing the layers the grid was clamped for that no earlier warning named."""
        items = [item for item in items if ("clamped", item[0]) not in self._warned]
        if items:
            self._warned.update(("clamped", n) for n, _, _ in items)
            listing = "; ".join(f"`{n}` output {s} -> grid {g}" for n, s, g in items)
            rank_zero_warn(f"NNfMRICallback: `grid`={self.grid} is larger than some layers and was clamped: {listing}.")

    def _check(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the density window: judge every region against its baseline (host sync here only)."""
        events, self._density_flagged = self._density.check(trainer.global_step)
        self.flag_history.append((trainer.global_step, self.flagged_layers))
        self._log(pl_module, "nn_fmri/anomaly", float(bool(self.flagged_layers)))
        self._record(events)
        self._maybe_stop(trainer, events)

    # ------------------------------------------------------------------ zeta schedule
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._scheduler.clock_start()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and self._scheduler is not None:
            self._scheduler.clock_pause()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._taps is None:
            return
        if not (trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.zeta_every_n_epochs):
            self._evaluate(trainer, pl_module)
        if trainer.state.fn == "fit":
            self._scheduler.clock_start()  # training may go on in this epoch (val_check_interval < 1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._taps is None:
            return
        self._scheduler.clock_pause()
        has_val = bool(trainer.num_val_batches) and sum(trainer.num_val_batches) > 0
        if not has_val and self._zeta_epoch != trainer.current_epoch and (trainer.current_epoch + 1) % self.zeta_every_n_epochs == 0:
            self._evaluate(trainer, pl_module)
        self._write_density_panels(trainer)

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        t0, coll = time.perf_counter(), self._collectives(trainer, pl_module)
        probe = self._probes.shared(pl_module.device, coll.broadcast)  # rank 0's
        if probe is None:
            return
        self._zeta_epoch = trainer.current_epoch
        allowance, forwards = self._scheduler.plan(coll)
        # through the public methods: a subclass (or a benchmark's timer) that wraps them is honoured
        events = self.compute_zeta(pl_module, probe, epoch=trainer.current_epoch, trainer=trainer, time_budget_s=allowance,
                                   forward_budget=forwards)
        if self.tractography:
            self.compute_tractography(pl_module, probe)
        seconds = self._scheduler.settle(time.perf_counter() - t0)
        self.zeta_evaluations += 1
        self._zeta_time_s += seconds
        for name in self.zeta_layers:
            if name in self.zeta_max:
                self._log(pl_module, safe_tag("nn_fmri", name, "zeta_max"), self.zeta_max[name], on_step=False, on_epoch=True)
        self.flag_history.append((trainer.global_step, self.flagged_layers))
        self._log(pl_module, "nn_fmri/anomaly", float(bool(self.flagged_layers)), on_step=False, on_epoch=True)
        self._record(events)
        self._write_zeta_panels(trainer)
        for fn in list(self._listeners):
            fn(trainer, pl_module)
        self._maybe_stop(trainer, events)

    def _fail(self, what: str, err: BaseException, fix: str) -> None:
        """One warning per layer (or pair): what failed, the cause, the argument that fixes it; ``strict`` raises."""
        if self.strict:
            raise err
        self._warn_once(what, f"NNfMRICallback: {what} skipped: {type(err).__name__}: {err} (the argument that fixes it: {fix});"
                              " the other layers go on.")

    def compute_zeta(self, pl_module: nn.Module, probe: Union[Batch, Tuple[Tensor, Optional[Tensor]]], epoch: int = 0,
                     trainer: Optional[Trainer] = None, time_budget_s: Optional[float] = None,
                     forward_budget: Optional[int] = None) -> List[AnomalyEvent]:
        """Estimate zeta for every zeta layer on ``probe`` (a split batch or ``(inputs, targets)``); fills :attr:`zeta`.

        On ``forward_budget`` sample-forwards (counted), ``time_budget_s`` seconds (timed) or neither
        (fixed: ``zeta_budget``), see :meth:`~nn_neuroimaging_lightning.fmri.zeta.ZetaScheduler.compute`;
        a failing layer warns once (``strict=True`` raises). Returns the ``zeta_concentration`` events (not recorded).
        """
        step = trainer.global_step if trainer is not None else 0
        return self._scheduler.compute(pl_module, probe, epoch, self.zeta_evaluations, step, self._collectives(trainer, pl_module),
                                       time_budget_s, forward_budget)

    @staticmethod
    def _collectives(trainer: Optional[Trainer], pl_module: nn.Module) -> Collectives:
        """The trainer's process group for the zeta engine: rank 0's broadcast, a sum over the ranks."""
        if trainer is None or trainer.world_size == 1:
            return Collectives(1, 0 if trainer is None else trainer.global_rank)
        dev = pl_module.device if hasattr(pl_module, "device") else torch.device("cpu")
        return Collectives(trainer.world_size, trainer.global_rank, lambda obj: trainer.strategy.broadcast(obj, src=0),
                           lambda t: trainer.strategy.reduce(t.to(dev), reduce_op="sum").cpu())

    # ------------------------------------------------------------------ tractography
    tracts = _engine_view("_tractography", "tracts", "Latest tractography per consecutive tapped pair ``(source, target)``,"
                          " ``Dict[Tuple[str, str], TractInfo]`` (see :class:`~nn_neuroimaging_lightning.fmri.Tractography`).")
    path_strength = _engine_view("_tractography", "path_strength", "Strongest path ``(strength, regions)`` along each chain of"
                                 " exactly meeting pairs (``Dict[Tuple[str, ...], Tuple[float, List[int]]]``).")

    _trace: Optional[Callable[..., TractInfo]] = None  # a stand-in for `Tractography.trace` (tests); None: the engine's

    def compute_tractography(self, pl_module: nn.Module, inputs: Union[Tensor, Batch]) -> Dict[Tuple[str, str], TractInfo]:
        """One isolated forward on ``inputs`` (a tensor or a split batch); connection matrices between consecutive tapped layers.

        A failure skips this evaluation's (or a pair's: ``traced=False``) with one warning (``strict=True`` raises).
        """
        return self._tractography.compute(pl_module, inputs, {n: self._modules[n] for n in self._taps.names}, self._trace)

    # ------------------------------------------------------------------ panels
    def _write_density_panels(self, trainer: Trainer) -> None:
        sink = self._panels(trainer)
        if sink is not None:
            write_density_panels(sink, self.density, trainer.global_step)

    def _write_zeta_panels(self, trainer: Trainer) -> None:
        sink = self._panels(trainer)
        if sink is None:
            return
        write_zeta_panels(sink, trainer.global_step, self.zeta, self.zeta_rows, self.tracts, self.path_strength)
        if trainer.state.fn != "fit":  # in a fit, on_train_epoch_end draws them (once per epoch, same step)
            self._write_density_panels(trainer)

    def zeta_table(self, name: str) -> str:
        """Markdown table of the ``top_k`` regions of a layer by zeta, with grid coordinates."""
        header, rows = self.zeta_rows(name)
        return table_text(rows, header)

    def zeta_rows(self, name: str) -> Tuple[Tuple[str, ...], List[Tuple[Any, ...]]]:
        """Header and rows of the ``top_k`` regions of a layer by zeta, with grid coordinates."""
        return zeta_top_rows(self.zeta[name], self.top_k)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), **(self._density.state_dict() if self._density is not None else {"layers": None}),
                **(self._scheduler.state_dict() if self._scheduler is not None else {}),
                "train_batches": self._train_batches, "zeta_evaluations": self.zeta_evaluations}

    def _layers_ready(self) -> bool:
        return self._taps is not None

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        saved = state.get("layers")
        if saved is not None and not self._density.load_state_dict(state):
            rank_zero_warn(f"NNfMRICallback: checkpoint layers {saved} differ from the tapped layers {self._taps.names}; density baselines not restored.")
        self._scheduler.load_state_dict(state)
        self._train_batches = int(state.get("train_batches", 0))
        self.zeta_evaluations = int(state.get("zeta_evaluations", 0))
