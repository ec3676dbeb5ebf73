r"""Cost of Shapley zeta: our estimator against Captum's ``ShapleyValueSampling`` (SPEC §8).

Target: at equal error against an exact or long-run reference, :func:`shapley_zeta` needs at least
3x fewer seconds than Captum.

Set-up (seeded, CPU, a fixed number of torch threads):

* The :class:`~nn_neuroimaging_lightning.demo.model.ReferenceCNN` is trained briefly on
  :class:`~nn_neuroimaging_lightning.demo.data.SyntheticImages` with a plain torch loop.
* Layer: the output of ``relu2`` (``(B, 32, 10, 10)``), split into micro-regions by
  :func:`~nn_neuroimaging_lightning.functional.grid.grid_partition`.
* Probe batch: 64 validation images. Game: ``f(S) = -mean CE`` on the probe batch with the units of
  the regions outside ``S`` set to 0 at that layer.

  .. math:: f(S) = -\frac{1}{B}\sum_{b} \mathrm{CE}\big(h(a_b \odot m_S), y_b\big)

* Both sides start from the cached activation ``a`` and run the same head ``h`` (``pool2`` ...
  ``fc2``) and the same loss; neither pays for the layers before.

Methods timed (wall clock, including each method's own bookkeeping):

* ``ours``: ``shapley_zeta`` (antithetic pairs, ``batch_size`` coalitions per forward).
* ``ours (no antithetic)``: the same without antithetic pairs (isolates batching from variance
  reduction).
* ``captum (batch scalar)``: ``ShapleyValueSampling`` with a forward that returns one scalar for the
  batch (the batch-level game directly); Captum then requires ``perturbations_per_eval=1``.
* ``captum (per-sample, ppe=R)``: the per-sample game ``-CE_b`` with all ``R`` perturbations of a
  permutation in one forward (``perturbations_per_eval=R``), attributions averaged over the batch.
  Shapley values are linear in the game and Captum uses one permutation for the whole batch, so this
  is the same estimator of the same batch-level values, batched R perturbations per forward (on a
  1-thread CPU it turned out slower than the batch-scalar set-up: Captum's per-feature bookkeeping
  over the full activation dominates, not the number of forward calls).

Error: ``max |err| / range(reference)`` (headline) and RMSE, median over repeats (seeds) per budget.
Time at equal error: both curves are interpolated on log-log axes (piecewise linear in
``log t`` vs ``log err``; a power-law fit extrapolates outside the measured range and is marked so).

Run::

    python benchmarks/zeta_cost.py            # full run (several minutes)
    python benchmarks/zeta_cost.py --quick    # < 2 min smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nn_neuroimaging_lightning.demo.data import SyntheticImages
from nn_neuroimaging_lightning.demo.model import ReferenceCNN
from nn_neuroimaging_lightning.functional.grid import grid_partition, resolve_grid
from nn_neuroimaging_lightning.functional.shapley import exact_shapley, shapley_zeta

try:
    from captum.attr import ShapleyValueSampling
    from captum.attr._core.shapley_value import _all_perm_generator
except ImportError:  # pragma: no cover - the benchmark needs the `bench` extra
    ShapleyValueSampling = None


# --------------------------------------------------------------------------------------------
# model, data, game


def train_model(n_train: int, epochs: int, seed: int) -> tuple[nn.Module, float]:
    """Train the ReferenceCNN briefly (Adam, batch 64); returns the eval-mode model and val accuracy."""
    torch.manual_seed(seed)
    train = SyntheticImages(n_train, seed=2 * seed, prototype_seed=seed)
    val = SyntheticImages(1024, seed=2 * seed + 1, prototype_seed=seed)
    model = ReferenceCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        for start in range(0, n_train, 64):
            idx = order[start : start + 64]
            loss = F.cross_entropy(model(train.images[idx]), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(val.images).argmax(1) == val.labels).float().mean().item()
    return model, acc


class Head(nn.Module):
    """The ReferenceCNN from the output of ``relu2`` on: ``(N, 32, 10, 10) -> (N, classes)``."""

    def __init__(self, model: ReferenceCNN) -> None:
        super().__init__()
        self.m = model

    def forward(self, a: Tensor) -> Tensor:
        m = self.m
        return m.fc2(m.relu3(m.fc1(m.flatten(m.pool2(a)))))


def probe_activation(model: ReferenceCNN, probe: Tensor) -> Tensor:
    """Activation at ``relu2`` for the probe batch: ``(B, 32, 10, 10)``."""
    with torch.no_grad():
        return model.relu2(model.conv2(model.pool1(model.relu1(model.conv1(probe)))))


@dataclass
class Game:
    """The batch-level lesion game on one layer, in the forms each method wants."""

    act: Tensor  # (B, C, H, W)
    labels: Tensor  # (B,)
    head: nn.Module
    region_index: Tensor  # (C, H, W) int64
    n_regions: int

    def value_fn(self, masks: Tensor) -> Tensor:
        """Ours: ``(K, R)`` bool coalitions -> ``(K,)`` values, one batched forward of ``K * B`` rows."""
        k = masks.shape[0]
        b = self.act.shape[0]
        keep = masks[:, self.region_index].to(self.act.dtype)  # (K, C, H, W)
        x = (self.act[None] * keep[:, None]).reshape(k * b, *self.act.shape[1:])  # (K*B, C, H, W)
        with torch.no_grad():
            ce = F.cross_entropy(self.head(x), self.labels.repeat(k), reduction="none")  # (K*B,)
        return -ce.view(k, b).mean(1)  # (K,)

    def captum_scalar(self, a: Tensor) -> Tensor:
        """Captum, batch-level: ``(B, C, H, W)`` -> one scalar (minus the mean CE)."""
        return -F.cross_entropy(self.head(a), self.labels)

    def captum_per_sample(self, a: Tensor) -> Tensor:
        """Captum, per sample: ``(n * B, C, H, W)`` -> ``(n * B,)`` minus the CE of each row."""
        reps = a.shape[0] // self.labels.shape[0]
        return -F.cross_entropy(self.head(a), self.labels.repeat(reps), reduction="none")

    def captum_regions(self, attr: Tensor) -> Tensor:
        """Per-region values from a Captum attribution map (every unit of a region carries the region's
        value; the mean over the region's units is taken)."""
        attr = attr.reshape(-1, *self.region_index.shape)  # (n, C, H, W)
        attr = attr.mean(0).reshape(-1).double()  # (C*H*W,)
        idx = self.region_index.reshape(-1)
        sums = torch.zeros(self.n_regions, dtype=torch.float64).index_add_(0, idx, attr)
        counts = torch.zeros(self.n_regions, dtype=torch.float64).index_add_(0, idx, torch.ones_like(attr))
        return sums / counts


# --------------------------------------------------------------------------------------------
# the methods, timed


def run_ours(game: Game, n_perm: int, seed: int, batch_size: int, antithetic: bool = True) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return shapley_zeta(
        game.value_fn, game.n_regions, n_permutations=n_perm, batch_size=batch_size, antithetic=antithetic,
        generator=gen,
    ).scores


def run_captum_scalar(game: Game, n_perm: int, seed: int) -> Tensor:
    torch.manual_seed(seed)  # Captum draws its permutations from the global RNG
    svs = ShapleyValueSampling(game.captum_scalar)
    attr = svs.attribute(
        game.act, baselines=0.0, feature_mask=game.region_index[None], n_samples=n_perm, perturbations_per_eval=1
    )
    return game.captum_regions(attr)


def run_captum_per_sample(game: Game, n_perm: int, seed: int) -> Tensor:
    torch.manual_seed(seed)
    svs = ShapleyValueSampling(game.captum_per_sample)
    attr = svs.attribute(
        game.act, baselines=0.0, feature_mask=game.region_index[None], n_samples=n_perm,
        perturbations_per_eval=game.n_regions,
    )  # (B, C, H, W): per-sample attributions, the same permutations for every sample
    return game.captum_regions(attr)


# --------------------------------------------------------------------------------------------
# checks of the Captum wiring


def check_captum_wiring(game: Game) -> list[str]:
    """Verify on tiny games that the per-region numbers read from Captum are Shapley values."""
    lines = []
    torch.manual_seed(0)
    # 1) additive game over 4 regions of a (B=3, 2, 2, 2) input: every permutation gives the exact values
    region_index = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [3, 3]]])  # (2, 2, 2)
    x = torch.rand(3, 2, 2, 2) + 0.5
    w = torch.randn(2, 2, 2)

    def additive(a: Tensor) -> Tensor:
        return (a * w).sum()  # one scalar for the batch

    tiny = Game(x, torch.zeros(3, dtype=torch.long), nn.Identity(), region_index, 4)
    attr = ShapleyValueSampling(additive).attribute(x, baselines=0.0, feature_mask=region_index[None], n_samples=1)
    got = tiny.captum_regions(attr)
    want = torch.zeros(4, dtype=torch.float64).index_add_(
        0, region_index.reshape(-1), (x.sum(0) * w).reshape(-1).double()
    )
    err = (got - want).abs().max().item()
    lines.append(f"additive 4-region game, captum vs exact: max |err| = {err:.2e}")
    if err > 1e-5:
        raise RuntimeError(f"Captum wiring check failed on the additive game (max err {err:.3g}).")

    # 2) non-additive game (products of region sums), all 24 permutations -> exact Shapley
    def nonadd(a: Tensor) -> Tensor:
        s = torch.zeros(a.shape[0], 4).index_add_(1, region_index.reshape(-1), a.reshape(a.shape[0], -1))  # (N, 4)
        return (s[:, 0] * s[:, 1] + s[:, 2] * s[:, 3] * s[:, 0] + s[:, 3].square()).mean()

    svs = ShapleyValueSampling(nonadd)
    svs.permutation_generator = _all_perm_generator
    attr = svs.attribute(x, baselines=0.0, feature_mask=region_index[None], n_samples=24)
    got = tiny.captum_regions(attr)

    def nonadd_masks(masks: Tensor) -> Tensor:
        keep = masks[:, region_index].float()  # (K, 2, 2, 2)
        return torch.stack([nonadd(x * k) for k in keep]).double()

    want = exact_shapley(nonadd_masks, 4)
    err = ((got - want).abs().max() / (want.max() - want.min())).item()
    lines.append(f"non-additive 4-region game, captum (all 24 perms) vs exact_shapley: max |err|/range = {err:.2e}")
    if err > 1e-5:
        raise RuntimeError(f"Captum wiring check failed on the non-additive game (rel err {err:.3g}).")

    # 3) on the real game: per-sample mode averaged over the batch == batch-scalar mode, same permutations
    a = run_captum_scalar(game, 2, seed=123)
    b = run_captum_per_sample(game, 2, seed=123)
    err = ((a - b).abs().max() / (a.max() - a.min())).item()
    lines.append(f"real game, captum per-sample (averaged) vs batch-scalar, same permutations: max |diff|/range = {err:.2e}")
    if err > 1e-4:
        raise RuntimeError(f"Captum per-sample and batch-scalar modes disagree (rel diff {err:.3g}).")

    return lines


# --------------------------------------------------------------------------------------------
# measurement and analysis


@dataclass
class Curve:
    name: str
    unit: str  # what the budget counts
    points: list = field(default_factory=list)  # (budget, median s, median max-rel err, median rmse)


def measure(
    name: str, unit: str, fn: Callable[[int, int], Tensor], budgets: list[int], repeats: int, ref: Tensor,
    seed0: int,
) -> Curve:
    rng = float(ref.max() - ref.min())
    fn(budgets[0], 999_999)  # warm-up (allocator, lazy init)
    curve = Curve(name, unit)
    for b in budgets:
        ts, es, rs = [], [], []
        for r in range(repeats):
            t0 = time.perf_counter()
            est = fn(b, seed0 + 1000 * r + b)
            ts.append(time.perf_counter() - t0)
            err = (est.double() - ref).abs()
            es.append(float(err.max()) / rng)
            rs.append(float(err.square().mean().sqrt()))
        curve.points.append((b, statistics.median(ts), statistics.median(es), statistics.median(rs)))
        print(f"  {name:28s} {unit}={b:6d}  t={curve.points[-1][1]:8.4f} s  max|err|/range={curve.points[-1][2]:.4f}",
              flush=True)
    return curve


def _monotone(curve: Curve, col: int) -> tuple[list[float], list[float]]:
    """(log err, log t) sorted by decreasing error, keeping only points that improve the error."""
    pts = sorted(curve.points, key=lambda p: p[1])
    le, lt, best = [], [], math.inf
    for p in pts:
        if p[col] < best:
            best = p[col]
            le.append(math.log(p[col]))
            lt.append(math.log(p[1]))
    return le, lt


def time_at_error(curve: Curve, err: float, col: int = 2) -> tuple[float, bool]:
    """Seconds to reach ``err`` (log-log interpolation; power-law extrapolation outside, flagged)."""
    le, lt = _monotone(curve, col)
    x = math.log(err)
    for i in range(len(le) - 1):
        if le[i] >= x >= le[i + 1]:
            w = (x - le[i]) / (le[i + 1] - le[i]) if le[i + 1] != le[i] else 0.0
            return math.exp(lt[i] + w * (lt[i + 1] - lt[i])), False
    # least-squares power law log t = a + b log e over all points
    n = len(le)
    mx, my = sum(le) / n, sum(lt) / n
    sxx = sum((v - mx) ** 2 for v in le)
    b = sum((u - mx) * (v - my) for u, v in zip(le, lt)) / sxx if sxx > 0 else -2.0
    return math.exp(my + b * (x - mx)), True


def compare(ours: Curve, other: Curve, col: int = 2, n_levels: int = 4) -> list[tuple[float, float, float, bool]]:
    """Ratios t_other / t_ours at error levels spread over the overlap of both curves' error ranges.

    Without an overlap, the levels are those of the end of ``other``'s range nearest to ``ours`` and
    ``ours`` is extrapolated (flagged).
    """
    e1 = [p[col] for p in ours.points]
    e2 = [p[col] for p in other.points]
    lo, hi = max(min(e1), min(e2)), min(max(e1), max(e2))
    extrap = lo >= hi
    if extrap:
        edge = min(e2) if min(e2) > max(e1) else max(e2)
        lo = hi = edge
        n_levels = 1
    levels = [math.exp(math.log(hi) + (math.log(lo) - math.log(hi)) * i / max(n_levels - 1, 1))
              for i in range(n_levels)]
    out = []
    for e in levels:
        t1, x1 = time_at_error(ours, e, col)
        t2, x2 = time_at_error(other, e, col)
        out.append((e, t1, t2, x1 or x2 or extrap))
    return out


def print_results(title: str, ref_note: str, curves: list[Curve], pairs: list[tuple[Curve, Curve]]) -> dict:
    print(f"\n### {title}\n")
    print(ref_note + "\n")
    print("| method | budget | median s | median max\\|err\\|/range | median RMSE |")
    print("|---|---:|---:|---:|---:|")
    for c in curves:
        for b, t, e, r in c.points:
            print(f"| {c.name} | {b} {c.unit} | {t:.4f} | {e:.4f} | {r:.2e} |")
    summary = {}
    for ours, other in pairs:
        for col, label in ((2, "max|err|/range"), (3, "RMSE")):
            rows = compare(ours, other, col)
            print(f"\nSeconds at equal {label}, {ours.name} vs {other.name}:\n")
            print(f"| {label} | {ours.name} s | {other.name} s | ratio |")
            print("|---:|---:|---:|---:|")
            ratios = []
            for e, t1, t2, ex in rows:
                ratios.append(t2 / t1)
                mark = " (extrap.)" if ex else ""
                print(f"| {e:.3g} | {t1:.4f} | {t2:.4f} | {t2 / t1:.1f}x{mark} |")
            print(f"\nratio (geometric mean over levels) = {math.exp(sum(map(math.log, ratios)) / len(ratios)):.1f}x,"
                  f" min = {min(ratios):.1f}x")
            gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            summary[(ours.name, other.name, label)] = (gm, min(ratios))
    return summary


# --------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small run (< 2 min)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="seeds per budget (default 5, quick 3)")
    p.add_argument("--batch-size", type=int, default=32, help="coalitions per forward for ours (default 32)")
    p.add_argument("--ref-permutations", type=int, default=8000,
                   help="permutations of the long-run reference when the grid is too big for exact (default 8000)")
    p.add_argument("--grids", default=None,
                   help="grids to run, e.g. '2,2,3;4,4,2' (default: both, quick: 2,2,3 only)")
    args = p.parse_args(argv)
    if ShapleyValueSampling is None:
        print("captum is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.grids:
        grids = [tuple(int(v) for v in g.split(",")) for g in args.grids.split(";")]
    else:
        grids = [(2, 2, 3)] if args.quick else [(2, 2, 3), (4, 4, 2)]

    import captum

    print(f"torch {torch.__version__}, captum {captum.__version__}, threads={torch.get_num_threads()}, "
          f"repeats={repeats}, ours batch_size={args.batch_size}")
    t0 = time.perf_counter()
    model, acc = train_model(n_train=2048 if args.quick else 4096, epochs=2 if args.quick else 3, seed=0)
    print(f"trained ReferenceCNN in {time.perf_counter() - t0:.1f} s, val accuracy {acc:.3f}")
    probe_set = SyntheticImages(64, seed=7, prototype_seed=0)
    act = probe_activation(model, probe_set.images)  # (64, 32, 10, 10)
    head = Head(model).eval()
    for prm in head.parameters():
        prm.requires_grad_(False)

    all_summaries = {}
    for grid in grids:
        g, clamped = resolve_grid(act.shape, grid)
        region_index = grid_partition(act.shape, g)  # (C, H, W)
        n = math.prod(g)
        game = Game(act, probe_set.labels, head, region_index, n)
        print(f"\n== layer relu2 {tuple(act.shape)}, grid {g}{' (clamped)' if clamped else ''}: R = {n} regions ==")
        with torch.no_grad():
            f_all = float(game.value_fn(torch.ones(1, n, dtype=torch.bool)))
            f_none = float(game.value_fn(torch.zeros(1, n, dtype=torch.bool)))
        print(f"f(all) = {f_all:.4f}, f(none) = {f_none:.4f}")
        if grid == grids[0]:
            for line in check_captum_wiring(game):
                print("check:", line)

        t0 = time.perf_counter()
        if n <= 14:
            ref = exact_shapley(game.value_fn, n, batch_size=args.batch_size)
            ref_note = f"Reference: exact Shapley ({2 ** n} coalitions, {time.perf_counter() - t0:.1f} s)."
        else:
            n_ref = 2000 if args.quick else args.ref_permutations
            res = shapley_zeta(game.value_fn, n, n_permutations=n_ref, batch_size=args.batch_size,
                               generator=torch.Generator().manual_seed(424242))
            ref = res.scores
            rel_se = float(res.std_err.max()) / float(ref.max() - ref.min())
            ref_note = (f"Reference: our estimator, long run ({n_ref} antithetic permutations, independent seed, "
                        f"{time.perf_counter() - t0:.1f} s); its largest standard error is {rel_se:.4f} of the range.")
        print(ref_note)
        print(f"efficiency check: sum(ref) = {float(ref.sum()):.4f}, f(all) - f(none) = {f_all - f_none:.4f}")

        # Captum's error at a budget is far larger (no antithetic pairs), so its budgets reach higher
        # for the two error ranges to overlap.
        if args.quick:
            b_ours = [2, 4, 8, 16, 32]
            b_cap = [4, 16, 64]
        else:
            b_ours = [2, 4, 8, 16, 32, 64, 128]
            b_cap = [4, 16, 64, 256]
        bs = args.batch_size
        curves = [
            measure("ours", "perms", lambda b, s: run_ours(game, b, s, bs), b_ours, repeats, ref, 1),
            measure("ours (no antithetic)", "perms", lambda b, s: run_ours(game, b, s, bs, antithetic=False),
                    b_ours, repeats, ref, 2),
            measure("captum (batch scalar)", "perms", lambda b, s: run_captum_scalar(game, b, s),
                    b_cap, repeats, ref, 3),
            measure(f"captum (per-sample, ppe={n})", "perms", lambda b, s: run_captum_per_sample(game, b, s),
                    b_cap, repeats, ref, 4),
        ]
        pairs = [(curves[0], curves[2]), (curves[0], curves[3]), (curves[1], curves[2]), (curves[1], curves[3])]
        summ = print_results(f"grid {g}, R = {n}", ref_note, curves, pairs)
        all_summaries[n] = summ

    print("\n### Summary (ratio = Captum seconds / our seconds at equal error; target >= 3x)\n")
    print("| R | ours | Captum set-up | error measure | ratio (geo. mean) | ratio (min) |")
    print("|---:|---|---|---|---:|---:|")
    for n, summ in all_summaries.items():
        for (mine, name, label), (gm, mn) in summ.items():
            print(f"| {n} | {mine} | {name} | {label} | {gm:.1f}x | {mn:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
