"""NN-fMRI overhead on the reference CNN (SPEC §8): densities every step, and zeta at its default schedule.

Three measures:

1. Interleaved A/B blocks of training steps without (A) and with (B) ``NNfMRICallback`` (zeta and
   tractography off, densities every step): the median of the per-pair ratios of median step times,
   with a bootstrap 95 % interval over the pairs.
2. The callback's own self-time (``time.perf_counter_ns`` inside its hooks, the density reduction
   included) against the median step time.
3. Zeta + tractography at the default schedule (once per validation epoch, default budget) over a
   full training epoch of the demo, as a share of the epoch's wall time.

Usage::

    .venv/bin/python benchmarks/fmri_overhead.py            # full
    .venv/bin/python benchmarks/fmri_overhead.py --quick    # a minute or so
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

    def __init__(self) -> None:
        self.times = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t0)


def _trainer(callbacks, **kw):
    return pl.Trainer(logger=False, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", devices=1, **kw)


def ab_blocks(pairs: int, steps: int, warmup: int = 3):
    dm = DemoDataModule(batch_size=64, n_train=64 * steps * 2, n_val=64)
    model = DemoClassifier()
    ratios, self_fracs, a_med, b_med = [], [], [], []
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
                cbs = [fmri, timer]
            _trainer(cbs, max_steps=steps + warmup, limit_val_batches=0).fit(model, dm)
            med[arm] = statistics.median(timer.times[warmup:])
            if fmri is not None:
                self_fracs.append(fmri.self_time["self_time_ns_per_step"] * 1e-9 / med[arm])
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
    }


def zeta_share(n_train: int, n_val: int):
    dm = DemoDataModule(batch_size=64, n_train=n_train, n_val=n_val)
    fmri = NNfMRICallback(panels=False)
    t0 = time.perf_counter()
    _trainer([fmri], max_epochs=1, num_sanity_val_steps=0).fit(DemoClassifier(), dm)
    epoch = time.perf_counter() - t0
    st = fmri.self_time
    return {"epoch_s": epoch, "zeta_s": st["zeta_seconds"], "share": st["zeta_seconds"] / epoch,
            "evaluations": st["zeta_evaluations"],
            "rows": {k: v.n_evaluations for k, v in fmri.zeta.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs and a smaller epoch")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    pairs, steps = (4, 15) if args.quick else (10, 40)
    ab = ab_blocks(pairs, steps)
    n_train, n_val = (1280, 256) if args.quick else (6400, 2048)
    z = zeta_share(n_train, n_val)
    print(f"\nNN-fMRI overhead, reference CNN, batch 64, CPU ({torch.get_num_threads()} threads)\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| step time without / with densities (median) | {ab['step_a_ms']:.2f} ms / {ab['step_b_ms']:.2f} ms | |")
    print(f"| A/B ratio, median of {pairs} interleaved pairs (95 % bootstrap CI) | {ab['ratio']:.4f} ({ab['ci'][0]:.4f}–{ab['ci'][1]:.4f}) | ≤ 1.03 |")
    print(f"| densities self-time / step time | {100 * ab['self_frac']:.2f} % | ≤ 3 % |")
    print(f"| zeta + tractography at the default schedule / epoch ({n_train} train, {n_val} val samples) "
          f"| {100 * z['share']:.1f} % ({z['zeta_s']:.2f} s of {z['epoch_s']:.2f} s, {z['evaluations']} evaluation) | ≤ 5 % |")
    print(f"| value rows per layer (forwards of the 64-sample probe) | {z['rows']} | |")


if __name__ == "__main__":
    main()
