"""NN-fMRI overhead on the reference CNN (SPEC §8): densities every step, and zeta at its default schedule.

Three measures:

1. Interleaved A/B blocks of training steps without (A) and with (B) ``NNfMRICallback`` (zeta and
   tractography off, densities every step): the median of the per-pair ratios of median step times,
   with a bootstrap 95 % interval over the pairs.
2. The callback's own self-time (``time.perf_counter_ns`` inside its hooks, the density reduction
   included) against the median step time: its mean per step (``self_time``, which counts every
   preemption of the process inside a hook on a loaded machine) and its median per step.
3. Zeta + tractography at the default schedule (once per validation epoch, default time budget
   ``zeta_time_fraction=0.05``) over several epochs of the demo (100 steps per epoch) and of a
   4x larger epoch, as a share of the fit's wall time (validation included), with the zeta samples
   each layer's window holds at the end; and, for comparison, the fixed-budget mode.
4. The cost of one lesion value row with the inputs repeated ``K`` times against the upstream run
   once and the target's output expanded (:class:`~nn_neuroimaging_lightning.lesion.LesionGame`).

Usage::

    .venv/bin/python benchmarks/fmri_overhead.py            # full, 1 torch thread
    .venv/bin/python benchmarks/fmri_overhead.py --threads 2
    .venv/bin/python benchmarks/fmri_overhead.py --quick    # a minute or so
    .venv/bin/python benchmarks/fmri_overhead.py --densities-only  # measures 1-2 only
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning.pytorch as pl
import numpy as np
import torch

from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback
from nn_neuroimaging_lightning.demo import DemoClassifier, DemoDataModule


class StepTimer(pl.Callback):
    """Wall time from ``on_train_batch_start`` to ``on_train_batch_end`` (put it last in the list)."""

    def __init__(self, fmri=None) -> None:
        self.times = []
        self.self_ns = []  # the fMRI callback's self-time in each step (hooks + on_train_batch_end)
        self._fmri = fmri
        self._last_ns = 0
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t0)
        if self._fmri is not None:
            self.self_ns.append(self._fmri._self_time_ns - self._last_ns)
            self._last_ns = self._fmri._self_time_ns


def _trainer(callbacks, **kw):
    return pl.Trainer(logger=False, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", devices=1, **kw)


def ab_blocks(pairs: int, steps: int, warmup: int = 3):
    dm = DemoDataModule(batch_size=64, n_train=64 * steps * 2, n_val=64)
    model = DemoClassifier()
    ratios, self_fracs, self_med_fracs, a_med, b_med = [], [], [], [], []
    _trainer([StepTimer()], max_steps=steps, limit_val_batches=0).fit(model, dm)  # warm-up block, discarded
    for p in range(pairs):
        order = ("A", "B") if p % 2 == 0 else ("B", "A")
        med = {}
        for arm in order:
            timer = StepTimer()
            cbs = [timer]
            fmri = None
            if arm == "B":
                fmri = NNfMRICallback(zeta_every_n_epochs=10**6, tractography=False, panels=False)
                timer = StepTimer(fmri)
                cbs = [fmri, timer]
            _trainer(cbs, max_steps=steps + warmup, limit_val_batches=0).fit(model, dm)
            med[arm] = statistics.median(timer.times[warmup:])
            if fmri is not None:
                self_fracs.append(fmri.self_time["self_time_ns_per_step"] * 1e-9 / med[arm])
                self_med_fracs.append(statistics.median(timer.self_ns[warmup:]) * 1e-9 / med[arm])
        ratios.append(med["B"] / med["A"])
        a_med.append(med["A"])
        b_med.append(med["B"])
    rng = np.random.default_rng(0)
    boot = [np.median(rng.choice(ratios, len(ratios))) for _ in range(2000)]
    return {
        "ratio": float(np.median(ratios)),
        "ci": (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))),
        "step_a_ms": 1e3 * statistics.median(a_med),
        "step_b_ms": 1e3 * statistics.median(b_med),
        "self_frac": float(np.median(self_fracs)),
        "self_med_frac": float(np.median(self_med_fracs)),
    }


def zeta_share(n_train: int, n_val: int, epochs: int, **fmri_kw):
    """Zeta + tractography at the default schedule over ``epochs`` epochs: share of the fit's wall time."""
    dm = DemoDataModule(batch_size=64, n_train=n_train, n_val=n_val)
    fmri = NNfMRICallback(panels=False, **fmri_kw)
    t0 = time.perf_counter()
    _trainer([fmri], max_epochs=epochs, num_sanity_val_steps=0).fit(DemoClassifier(), dm)
    total = time.perf_counter() - t0
    st = fmri.self_time
    samples = {k: int(v.stat_count) for k, v in fmri.zeta.items()}
    return {"total_s": total, "zeta_s": st["zeta_seconds"], "share": st["zeta_seconds"] / total,
            "evaluations": st["zeta_evaluations"], "samples": samples,
            "layers": list(fmri.zeta_layers)}


def lesion_rows(reps: int = 5):
    """Seconds per value row (64-sample probe, 16 rows per forward) with and without the upstream expansion."""
    from nn_neuroimaging_lightning.demo import ReferenceCNN
    from nn_neuroimaging_lightning.lesion import LesionGame

    torch.manual_seed(0)
    net = ReferenceCNN()
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    masks = torch.rand(32, 256) > 0.5
    out = {}
    for name in ("conv1", "conv2", "fc1"):
        row = {}
        for expand in (False, True):
            game = LesionGame(net, getattr(net, name), x, y, grid=(8, 8, 4), expand=expand)
            with game.session():
                game(masks[:, : game.n_regions])  # warm-up (and the one-time check of the expansion)
                ts = []
                for _ in range(reps):
                    t = time.perf_counter()
                    game(masks[:, : game.n_regions])
                    ts.append((time.perf_counter() - t) / masks.shape[0])
            row[expand] = statistics.median(ts)
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs and a smaller epoch")
    parser.add_argument("--densities-only", action="store_true",
                        help="only the A/B blocks and the self-time of the densities (measures 1-2, about 1 min)")
    parser.add_argument("--pairs", type=int, default=None, help="A/B pairs (default 10; 4 with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine, 2-thread OpenMP regions "
                             "spin-wait for descheduled threads and single ops take 10-100x longer at random)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    pairs, steps = (4, 15) if args.quick else (10, 40)
    pairs = args.pairs or pairs
    ab = ab_blocks(pairs, steps)
    print(f"\nNN-fMRI overhead, reference CNN, batch 64, CPU ({torch.get_num_threads()} threads)\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| step time without / with densities (median) | {ab['step_a_ms']:.2f} ms / {ab['step_b_ms']:.2f} ms | |")
    print(f"| A/B ratio, median of {pairs} interleaved pairs (95 % bootstrap CI) | {ab['ratio']:.4f} ({ab['ci'][0]:.4f}–{ab['ci'][1]:.4f}) | ≤ 1.03 |")
    print(f"| densities self-time, mean per step / step time, median | {100 * ab['self_frac']:.2f} % | ≤ 3 % |")
    print(f"| densities self-time per step, median / step time, median | {100 * ab['self_med_frac']:.2f} % | |")
    if args.densities_only:
        return
    rows = lesion_rows()
    epochs = 2 if args.quick else 5
    demo = zeta_share(6400, 2048, epochs)
    large = None if args.quick else zeta_share(25600, 2048, 2)
    fixed = zeta_share(1280, 256, 1, zeta_budget=256)
    for label, z in (("demo epoch (6400 train = 100 steps, 2048 val)", demo), ("larger epoch (25600 train = 400 steps, 2048 val)", large)):
        if z is None:
            continue
        print(f"| zeta + tractography, default schedule (counted, 5 % of training sample-forwards), {label}, {z['evaluations']} epochs "
              f"| {100 * z['share']:.2f} % of the fit ({z['zeta_s']:.2f} s of {z['total_s']:.1f} s) | ≤ 5 % |")
        print(f"| zeta samples in each layer's window after the fit ({label}) | {z['samples']} (layers {z['layers']}) | |")
    print(f"| for comparison: fixed budget (`zeta_budget=256` rows), 20-step epoch "
          f"| {100 * fixed['share']:.1f} % ({fixed['zeta_s']:.2f} s of {fixed['total_s']:.1f} s) | |")
    print("\nLesion value rows (64-sample probe, grid 8x8x4, 16 rows per forward): ms per row\n")
    print("| layer | inputs repeated K times | upstream once, output expanded | speed-up |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {1e3 * row[False]:.2f} | {1e3 * row[True]:.2f} | {row[False] / row[True]:.1f}× |")

if __name__ == "__main__":
    main()
