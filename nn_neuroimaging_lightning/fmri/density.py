r"""NN-fMRI density engine (plain PyTorch, no Lightning): per-unit / per-region sums and the spatial anomaly check.

The formula of the density is :func:`~nn_neuroimaging_lightning.functional.grid.region_density`,
computed by :class:`~nn_neuroimaging_lightning.metrics.fmri.RegionDensity`, which holds the window's
statistics; this engine only accumulates them (sums of ``|a|``, ``a``, ``a^2`` per region)
cheaply during training and judges each region's mean ``|a|`` against its running baseline.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from nn_neuroimaging_lightning.events import AnomalyEvent
from nn_neuroimaging_lightning.functional.grid import _partition, add_unit_sums_, resolve_grid, scatter_unit_sums, unit_sums
from nn_neuroimaging_lightning.metrics.fmri import RegionDensity

__all__ = ["RegionDensities", "region_coords"]

#: The hook's density-sample copies of a layer are summed per unit once this many steps' copies,
#: or this many bytes of them, are pending (fewer dispatched ops per step; a bounded buffer).
_ROWS_MAX_CALLS = 16
_ROWS_MAX_BYTES = 1 << 20
#: ``(layer, activation shape, clamped grid)`` of the layers a grid was clamped for.
Clamped = List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]
#: What the forward hook returns per call: ``(sums or sample copy, activation shape, samples, reduced)``.
HookOutput = Optional[Tuple[Tensor, Tuple[int, ...], int, bool]]


def _ignore(*args: Any) -> None:
    """The default of an injected notice (a plain function, so an engine pickles)."""


def region_coords(grid: Tuple[int, ...], region: int) -> str:
    """Grid coordinates of a flat region index, e.g. ``"(h=0, w=1, c=0)"``.

    Example::

        >>> region_coords((2, 2, 2), 3), region_coords((4,), 2)
        ('(h=0, w=1, c=1)', '(c=2)')
    """
    axes = {3: ("h", "w", "c"), 2: ("t", "d"), 1: ("c",)}[len(grid)]
    idx = np.unravel_index(region, grid)
    return "(" + ", ".join(f"{a}={int(v)}" for a, v in zip(axes, idx)) + ")"


class RegionDensities:
    r"""Window sums of ``|a|``, ``a``, ``a^2`` per micro-region of each layer, and the dead / saturated check.

    A layer's output is split into micro-regions by the grid: ``(g_h, g_w, g_c)`` over ``(H, W, C)``
    of a conv map, ``(g_t, g_d)`` over tokens x hidden, ``(g_c,)`` over features. The window sums
    stay on the device, as the state of one :class:`~nn_neuroimaging_lightning.metrics.fmri.RegionDensity`
    per layer and window (the density formula is its ``compute``; its sums are each rank's own, judged on that
    rank's batches: ``sync_on_compute=False``). Per step, the forward hook (:meth:`reduce`) copies the first ``density_samples`` samples of the
    output (``None``: it reduces the whole batch itself) and :meth:`add` sums them per unit
    (``abs``, ``mul`` and three ``addmm_``, several steps at a time); the ``(3, units)`` sums are
    scattered into per-region sums once per window. The hook has no region index, no
    data-dependent shape and reads the clock only outside ``torch.compile`` tracing. The density
    of the window (or of the last one if it is empty) is

    .. math:: \phi(g) = \overline{|a|}_g + \lambda \log(\sigma^2_g + \epsilon)

    :meth:`check` closes the window and compares each region's mean ``|a|`` with its running
    baseline (an exponential average over earlier windows): a region that had been active and falls
    below ``dead_ratio`` × baseline is a ``dead_region``, one above ``saturation_ratio`` × baseline
    a ``saturated_region``.

    Decision: the density is a statistic of the layer's activity *distribution*, not of one
    batch, so a fixed subsample of every batch gives unbiased sums per sample (``E[|a|]``,
    ``E[a]``, ``E[a^2]``; the variance is then consistent) and the window still pools
    ``4 x check_every_n_steps`` samples (200 at the default 50 steps). With shuffled loaders the
    first samples are a random subsample; with unshuffled ones each batch still contributes
    different samples. On the reference CNN (batch 64, one CPU thread) the densities' self-time is
    about 2.3-3.1 % of the step time on a loaded shared CPU (12-22 % with full-batch reductions;
    see ``benchmarks/README.md``, ``fmri_overhead``). The hook keeps a compiled model at one graph
    per mode (no graph break, no recompile).

    Args:
        names: the tapped layers, in tap order.
        grid: the density grid (clamped per layer, see
            :func:`~nn_neuroimaging_lightning.functional.grid.resolve_grid`).
        lam: ``lambda`` of the log-variance term.
        eps: variance floor.
        density_samples: samples of each batch reduced (``None``: the whole batch).
        min_history: windows in a region's baseline before it is judged.
        dead_ratio: below this fraction of the baseline a region is dead.
        saturation_ratio: above this multiple of the baseline a region is saturated.
        on_clamped: ``on_clamped([(layer, shape, grid), ...])`` for layers the grid was clamped for.
        source: the ``source`` of the events.

    Example::

        >>> dens = RegionDensities(["fc"], grid=(2,), lam=0.0, eps=1e-6, density_samples=None)
        >>> dens.add([[dens.reduce(torch.ones(4, 6))]])
        >>> dens.density()["fc"]
        tensor([1., 1.])
    """

    def __init__(self, names: Sequence[str], grid: Optional[Sequence[int]], lam: float, eps: float,
                 density_samples: Optional[int] = 4, min_history: int = 2, dead_ratio: float = 0.05,
                 saturation_ratio: float = 20.0, on_clamped: Callable[[Clamped], None] = _ignore,
                 source: str = "nn_fmri") -> None:
        self.names = list(names)
        self.grid, self.lam, self.eps = grid, lam, eps
        self.density_samples, self.min_history = density_samples, min_history
        self.dead_ratio, self.saturation_ratio = dead_ratio, saturation_ratio
        self.on_clamped, self.source = on_clamped, source
        n = len(self.names)
        self.acc: List[Optional[RegionDensity]] = [None] * n  # the window's sums of |a|, a, a^2 per region
        # (3, U) per-unit sums added since the last scatter into `acc` (see `_flush_units`)
        self.units: List[Optional[Tensor]] = [None] * n
        # the hook's sample copies not yet summed into `units` (see `_sum_rows`), and their bytes
        self.rows: List[List[Tensor]] = [[] for _ in range(n)]
        self.rows_bytes: List[int] = [0] * n
        self.acc_n: List[int] = [0] * n  # samples in the window
        self.pending_n: List[int] = [0] * n  # of which not yet in `acc` (in `units` or `rows`)
        self.shape: List[Optional[Tuple[int, ...]]] = [None] * n  # unit shape
        self.grid_of: List[Optional[Tuple[int, ...]]] = [None] * n  # resolved grid
        self.last: List[Optional[Tuple[RegionDensity, int]]] = [None] * n  # latest completed window, its samples
        self.base: List[Optional[Tensor]] = [None] * n  # (R,) baseline mean |a|
        self.windows: List[int] = [0] * n
        self.flag_state: List[Optional[np.ndarray]] = [None] * n  # (2, R) bool host: dead, saturated
        self.unsupported: set = set()
        self.self_time_ns = 0
        self._index_cache: Dict[Tuple[Tuple[int, ...], torch.device], Tuple[Tensor, int]] = {}

    # ------------------------------------------------------------------ per step
    def reduce(self, t: Tensor) -> HookOutput:
        """The forward hook's reduction of one output (``None`` for an unsupported one)."""
        # Runs in the forward hook, inside the graph of a `torch.compile`d model: tensor ops without
        # a region index or a data-dependent shape only, no Python side effect that dynamo cannot
        # trace (the clock is read in eager mode only). With a subsample (the default) the hook only
        # copies the first `density_samples` samples (one op; a copy because a later in-place op,
        # e.g. `ReLU(inplace=True)`, may overwrite the output); the sums (`add_unit_sums_`) and the
        # scatter into regions run in `add`, outside the graph (on the reference CNN 15-25 % less
        # self-time than reducing in the hook). With the whole batch (`density_samples=None`) the
        # hook reduces it to (3, U) at once instead of copying it.
        timed = not torch.compiler.is_compiling()
        t0 = time.perf_counter_ns() if timed else 0
        if not 2 <= t.dim() <= 4 or t.is_complex():
            return None
        if self.density_samples is None:
            out, n, reduced = unit_sums(t), t.shape[0], True  # (3, U)
        else:
            n = min(self.density_samples, t.shape[0])
            out, reduced = t[:n].clone(memory_format=torch.contiguous_format), False  # (n, *unit_shape); the hook runs under no_grad
        if timed:
            self.self_time_ns += time.perf_counter_ns() - t0
        return out, tuple(t.shape), n, reduced

    def add(self, calls_per_layer: Sequence[Sequence[HookOutput]]) -> None:
        """Add one training step's hook outputs (per layer, per call) to the window."""
        new_clamped: Clamped = []
        for i, calls in enumerate(calls_per_layer):
            for call in calls:
                if call is None:
                    self.unsupported.add(self.names[i])
                    continue
                out, shape, n_used, reduced = call
                if self.shape[i] != shape[1:]:
                    g, clamped = resolve_grid(shape, self.grid)
                    if clamped:
                        new_clamped.append((self.names[i], shape, g))
                    self.shape[i], self.grid_of[i] = shape[1:], g
                    self.acc[i], self.acc_n[i], self.pending_n[i], self.units[i] = None, 0, 0, None
                    self.rows[i], self.rows_bytes[i] = [], 0
                    self.base[i], self.windows[i], self.flag_state[i] = None, 0, None
                # The hook's copies of the first samples are summed per unit several steps at a time
                # (`_sum_rows`: one `cat`, then `add_unit_sums_`'s abs, mul and three addmm_, for up
                # to `_ROWS_MAX_CALLS` steps or `_ROWS_MAX_BYTES` of copies); the scatter into
                # regions waits for the window's end (`_flush_units`): one op per window.
                if reduced:
                    self._unit_acc(i, out).add_(out)  # (3, U) reduced in the hook (whole batch)
                else:
                    self.rows[i].append(out)  # (n, *unit_shape), the hook's own copy
                    self.rows_bytes[i] += out.numel() * out.element_size()
                    if len(self.rows[i]) >= _ROWS_MAX_CALLS or self.rows_bytes[i] >= _ROWS_MAX_BYTES:
                        self._sum_rows(i)
                self.acc_n[i] += n_used
                self.pending_n[i] += n_used
        if new_clamped:
            self.on_clamped(new_clamped)

    def _region_index(self, unit_shape: Tuple[int, ...], device: torch.device) -> Tuple[Tensor, int]:
        """Flat region index ``(U,)`` and region count of a unit shape (cached; eager code only)."""
        key = (unit_shape, device)
        hit = self._index_cache.get(key)
        if hit is None:
            index, _, g = _partition((1,) + unit_shape, self.grid, device)
            if len(self._index_cache) >= 64:
                self._index_cache.clear()
            hit = self._index_cache[key] = (index.reshape(-1), math.prod(g))
        return hit

    def _unit_acc(self, i: int, like: Tensor) -> Tensor:
        """Layer ``i``'s ``(3, U)`` per-unit accumulator (created on ``like``'s device)."""
        if self.units[i] is None:
            self.units[i] = torch.zeros(3, math.prod(self.shape[i]), dtype=torch.float32, device=like.device)
        return self.units[i]

    def _sum_rows(self, i: int) -> None:
        """Add layer ``i``'s pending sample copies to its per-unit sums (one ``cat`` for all)."""
        rows = self.rows[i] if i < len(self.rows) else None
        if not rows:
            return
        x = rows[0] if len(rows) == 1 else torch.cat(rows)  # (sum n, *unit_shape)
        self.rows[i], self.rows_bytes[i] = [], 0
        add_unit_sums_(self._unit_acc(i, x), x)

    def _metric(self, device: torch.device) -> RegionDensity:
        return RegionDensity(self.grid, self.lam, self.eps, sync_on_compute=False).to(device)

    def _flush_units(self, i: int) -> None:
        """Scatter layer ``i``'s pending per-unit sums into its window's region sums (one op)."""
        self._sum_rows(i)
        units = self.units[i] if i < len(self.units) else None
        if units is None:
            return
        self.units[i] = None
        index, n_regions = self._region_index(tuple(self.shape[i]), units.device)
        if self.acc[i] is None:
            self.acc[i] = self._metric(units.device)
        elif self.acc[i].device != units.device:
            self.acc[i] = self.acc[i].to(units.device)  # e.g. restored on CPU, now on an accelerator
        self.acc[i].update(sums=scatter_unit_sums(units, index, n_regions), samples=self.pending_n[i], unit_shape=self.shape[i])
        self.pending_n[i] = 0

    def density(self) -> Dict[str, Tensor]:
        """Grid-shaped ``phi`` per layer over the current window (or the last one if it is empty)."""
        out: Dict[str, Tensor] = {}
        for i, name in enumerate(self.names):
            self._flush_units(i)
            if self.acc[i] is not None and self.acc_n[i] > 0:
                window = self.acc[i]
            else:
                window = None if self.last[i] is None else self.last[i][0]
            if window is not None:
                out[name] = window.compute()
        return out

    # ------------------------------------------------------------------ spatial anomalies
    def check(self, step: int) -> Tuple[List[AnomalyEvent], FrozenSet[str]]:
        """Close the window: judge every region against its baseline (host sync here only).

        Returns the new events and the layers flagged now.
        """
        events: List[AnomalyEvent] = []
        flagged = set()
        for i, name in enumerate(self.names):
            self._flush_units(i)
            if self.acc[i] is None or self.acc_n[i] == 0:
                if self.flag_state[i] is not None and self.flag_state[i].any():
                    flagged.add(name)
                continue
            window, r = self.acc[i], math.prod(self.grid_of[i])
            mean_abs = window.sums[:r, 0] / window.counts[:r]  # (R,)
            base = self.base[i]
            if base is None:
                self.base[i], self.windows[i] = mean_abs.clone(), 1
            else:
                if self.windows[i] >= self.min_history:
                    floor = torch.clamp(base.max() * 1e-6, min=1e-30)
                    active = base > floor
                    ratio = mean_abs / torch.where(active, base, torch.ones_like(base))
                    dead = active & (ratio < self.dead_ratio)
                    sat = active & (ratio > self.saturation_ratio)
                    host = torch.stack([dead.float(), sat.float(), ratio, mean_abs, base]).cpu().numpy()
                    state = host[:2] > 0.5  # (2, R)
                    prev = self.flag_state[i] if self.flag_state[i] is not None else np.zeros_like(state)
                    events += self._region_events(step, name, i, state & ~prev, host)
                    self.flag_state[i] = state
                    if state.any():
                        flagged.add(name)
                    keep = ~(dead | sat)
                    self.base[i] = torch.where(keep, 0.9 * base + 0.1 * mean_abs, base)
                else:
                    self.base[i] = 0.5 * base + 0.5 * mean_abs
                self.windows[i] += 1
            self.last[i] = (window, self.acc_n[i])
            self.acc[i], self.acc_n[i] = None, 0
        return events, frozenset(flagged)

    def _region_events(self, step: int, name: str, i: int, new: np.ndarray, host: np.ndarray) -> List[AnomalyEvent]:
        out = []
        for row, kind in ((0, "dead_region"), (1, "saturated_region")):
            regions = np.nonzero(new[row])[0]
            if not len(regions):
                continue
            ratios = host[2, regions]
            worst = regions[int(np.argmin(ratios) if row == 0 else np.argmax(ratios))]
            coords = ", ".join(region_coords(self.grid_of[i], int(r)) for r in regions[:10])
            more = f" (+{len(regions) - 10} more)" if len(regions) > 10 else ""
            out.append(AnomalyEvent(step, "train", name, kind, float(host[2, worst]), self.source,
                                    detail=f"{len(regions)} region(s) {coords}{more}; mean|a| / baseline of the worst = {host[2, worst]:.3g}"))
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        """The windows, baselines and flags (CPU copies), keyed as the callback's checkpoints always were."""
        for i in range(len(self.units)):
            self._flush_units(i)

        def cpu(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.detach().cpu().clone()

        # the metrics' `sums` state over the layer's regions (their counts follow from the samples)
        return {
            "layers": list(self.names),
            "acc": [None if m is None else cpu(self._sums_of(i, m)) for i, m in enumerate(self.acc)],
            "acc_n": list(self.acc_n),
            "shape": list(self.shape),
            "grid_of": list(self.grid_of),
            "last": [None if w is None else (cpu(self._sums_of(i, w[0])), w[1]) for i, w in enumerate(self.last)],
            "base": [cpu(t) for t in self.base],
            "windows": list(self.windows),
            "flag_state": [None if f is None else torch.from_numpy(f.copy()) for f in self.flag_state],
        }

    def _sums_of(self, i: int, window: RegionDensity) -> Tensor:
        return window.sums[:math.prod(self.grid_of[i])]

    def _restored(self, i: int, sums: Optional[Tensor], samples: int) -> Optional[RegionDensity]:
        if sums is None:
            return None
        window = self._metric(sums.device)
        window.update(sums=sums.to(torch.float32), samples=samples, unit_shape=self.shape[i])
        return window

    def load_state_dict(self, state: Mapping[str, Any]) -> bool:
        """Restore :meth:`state_dict`'s output; ``False`` (nothing restored) when its layers differ from :attr:`names`."""
        saved = state.get("layers")
        if saved is None or list(saved) != self.names:
            return False
        n = len(saved)
        self.units = [None] * n
        self.rows, self.rows_bytes = [[] for _ in range(n)], [0] * n
        self.acc_n, self.pending_n = list(state.get("acc_n", [0] * n)), [0] * n
        self.shape = [None if s is None else tuple(s) for s in state.get("shape", [None] * n)]
        self.grid_of = [None if g is None else tuple(g) for g in state.get("grid_of", [None] * n)]
        self.acc = [self._restored(i, t, self.acc_n[i]) for i, t in enumerate(state.get("acc", [None] * n))]
        self.last = [None if w is None else (self._restored(i, w[0], int(w[1])), int(w[1])) for i, w in enumerate(state.get("last", [None] * n))]
        self.base = list(state.get("base", [None] * n))
        self.windows = list(state.get("windows", [0] * n))
        self.flag_state = [None if f is None else f.numpy().astype(bool) for f in state.get("flag_state", [None] * n)]
        return True
