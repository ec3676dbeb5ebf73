"""Extra peak memory of a demo run with the three callbacks (SPEC §8: ≤ 10 MB, nothing growing with steps).

Each measurement is a FRESH Python process (so imports, allocator pools and caches start from
scratch) that runs the demo (``DemoClassifier`` on ``DemoDataModule`` synthetic images, a
``TensorBoardLogger`` in every variant) and reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux) plus the bytes of the callbacks' state
(tensors, numpy rings, bounded deques; see ``tests/e2e/test_memory.py``). Variants:

* ``none``: no callback;
* ``callbacks``: ``NNEEGCallback``, ``NNfMRICallback``, ``CrossModalCallback`` at their defaults
  (panels on: matplotlib figures are drawn at epoch ends);
* ``callbacks_no_panels``: the same with ``panels=False`` (separates the figure code's cost).

Figures are drawn by a renderer process (``panels/worker.py``), whose peak resident memory is not
in the training process's: it is reported in its own column (its ``VmHWM`` from
``/proc/<pid>/status`` before it exits, Linux; 0 elsewhere; ``RUSAGE_CHILDREN`` would also count the
training process's pages the child held between fork and exec, ~540 MiB here), and ``extra_mib`` in
``--out`` is the training process's extra peak.

The budget (SPEC §8) counts the callbacks' state, buffers and per-evaluation peaks, not the one-time
caches of the plotting library (matplotlib's loaded fonts, glyph and text-layout caches, the Agg
renderer's first allocations). So every process, ``none`` included, first draws and renders one
figure of each kind the callbacks draw (at their sizes), before the fit: the caches are then in
every variant's peak and cancel out of "extra vs none", and the resident memory that warm-up added
(``/proc/self/statm`` before and after, after ``gc.collect()``) is reported on its own line.
``--cold`` skips the warm-up (the callbacks' line then includes the caches, as a user's first epoch
does).

The variants run interleaved, ``--repeats`` times each; the table reports medians and the extra
peak memory = median(variant) − median(none). Usage::

    .venv/bin/python benchmarks/memory.py              # 3 repeats, about 2-3 minutes on 2 cores
    .venv/bin/python benchmarks/memory.py --repeats 5 --epochs 3
    .venv/bin/python benchmarks/memory.py --attribution   # + EEG alone, uncapped lesion forwards, no tractography
    .venv/bin/python benchmarks/memory.py --cold          # no plotting warm-up: caches counted in the extra
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

VARIANTS = ("none", "callbacks", "callbacks_no_panels")
#: attribution runs (``--attribution``): the EEG callback alone; no panels with the lesion forwards
#: uncapped (``zeta_max_bytes=None``, the behaviour before the byte cap); no panels, no tractography.
ATTRIBUTION = ("eeg_only_no_panels", "no_panels_zeta_max_bytes_none", "no_panels_no_tractography")

CHILD = r"""
import gc, json, os, resource, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np
import torch
torch.set_num_threads(1)
import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from nn_neuroimaging_lightning.demo import DemoClassifier, DemoDataModule
variant, root, epochs, n_train, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"

def rss_kib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

plot_cache_kib = 0
if warm:  # the plotting library's one-time caches, in every variant (none included)
    from nn_neuroimaging_lightning.panels import figures as PF
    from nn_neuroimaging_lightning.panels.rendering import release, render
    gc.collect()
    start = rss_kib()
    f = np.arange(33) * 3.125
    bands = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 100.0)}
    g = np.random.default_rng(0).normal(size=(8, 8, 4))
    m = np.random.default_rng(1).random((64, 64)); m[0, 0] = np.nan
    for fig in (PF.spectrum_figure(f, {"a": 1 / (1 + f), "b": 2 / (1 + f)}, bands),
                PF.spectrogram_figure(np.arange(8), f, np.ones((8, 33)), title="Spectrogram a"),
                PF.phase_timeline_figure(["train"] * 50 + ["validate"] * 10, np.arange(60.0), {"train": 1.0, "validate": 0.2}),
                PF.heatmap_figure(g, "a: zeta", "RdBu_r", g > 1, symmetric=True, colorbar_label="zeta"),
                PF.heatmap_figure(np.ones(4), "b: density phi", colorbar_label="phi"),
                PF.matrix_figure(m, "a region (source)", "b region (target)", "C(a -> b)"),
                PF.consistency_figure({"consistency": [0.5, 0.6], "rho": [0.1, 0.2]}, steps=[1, 2])):
        render(fig)
        release(fig)
    del fig
    gc.collect()
    plot_cache_kib = rss_kib() - start
pl.seed_everything(0, verbose=False)
callbacks = []
if variant != "none":
    from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback
    panels = variant == "callbacks"
    if variant == "eeg_only_no_panels":
        callbacks = [NNEEGCallback(panels=False)]
    else:
        kw = {"zeta_max_bytes": None} if variant.endswith("_none") else {}
        if variant.endswith("no_tractography"):
            kw["tractography"] = False
        callbacks = [NNEEGCallback(panels=panels), NNfMRICallback(panels=panels, **kw), CrossModalCallback(panels=panels)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, callbacks=callbacks, default_root_dir=root,
                     logger=TensorBoardLogger(root, name="mem"), enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, log_every_n_steps=10)
trainer.fit(DemoClassifier(), DemoDataModule(n_train=n_train, n_val=512, batch_size=64))
from nn_neuroimaging_lightning.panels import worker as W
renderer_kib = 0
proc = getattr(W._shared, "_proc", None) if W._shared is not None else None
if proc is not None:  # its own high-water mark (VmHWM), read before it exits: RUSAGE_CHILDREN would
    try:             # also count the training process's pages the child held between fork and exec
        with open(f"/proc/{proc.pid}/status") as fh:
            renderer_kib = next((int(l.split()[1]) for l in fh if l.startswith("VmHWM:")), 0)
    except OSError:
        pass
W.shutdown()  # the figure renderer process exits
state = 0
if callbacks:
    sys.path.insert(0, "tests/e2e")
    from test_memory import state_bytes
    state = sum(state_bytes(cb) for cb in callbacks)
print("RESULT " + json.dumps({"variant": variant, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                              "after_imports_kib": before, "state_bytes": state, "steps": trainer.global_step,
                              "plot_cache_kib": plot_cache_kib,
                              "renderer_peak_kib": renderer_kib}))
"""


def run_child(variant: str, epochs: int, n_train: int, warm: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as root:
        out = subprocess.run([sys.executable, "-c", CHILD, variant, root, str(epochs), str(n_train), "1" if warm else "0"],
                             capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=3200)
    parser.add_argument("--attribution", action="store_true", help="also run " + ", ".join(ATTRIBUTION))
    parser.add_argument("--cold", action="store_true", help="no plotting warm-up: the library's caches count in the extra")
    parser.add_argument("--out", default="", help="write the results as JSON here (seed_claims reads extra_mib)")
    args = parser.parse_args(argv)
    variants = VARIANTS + (ATTRIBUTION if args.attribution else ())
    results = {v: [] for v in variants}
    for r in range(args.repeats):
        order = variants if r % 2 == 0 else tuple(reversed(variants))
        for v in order:
            res = run_child(v, args.epochs, args.n_train, warm=not args.cold)
            results[v].append(res)
            print(f"repeat {r} {v:20s} peak {res['peak_kib'] / 1024:7.1f} MiB  state {res['state_bytes'] / 1024:7.1f} KiB", flush=True)
    base = statistics.median(r["peak_kib"] for r in results["none"]) / 1024
    print(f"\n{args.epochs} epochs x {args.n_train // 64} steps (batch 64), {args.repeats} fresh processes per variant"
          + (", no plotting warm-up\n" if args.cold else ", plotting library warmed up first in every process\n"))
    print("| variant | peak RSS, median (MiB) | runs (MiB) | extra vs none (MiB) | callback state (KiB) | renderer process peak (MiB) |")
    print("|---|---:|---|---:|---:|---:|")
    summary = {}
    for v in variants:
        peaks = [r["peak_kib"] / 1024 for r in results[v]]
        med = statistics.median(peaks)
        state = statistics.median(r["state_bytes"] for r in results[v]) / 1024
        renderer = statistics.median(r.get("renderer_peak_kib", 0) for r in results[v]) / 1024
        summary[v] = {"peak_mib": med, "extra_mib": med - base, "state_kib": state, "renderer_peak_mib": renderer, "runs_mib": peaks}
        print(f"| {v} | {med:.1f} | {', '.join(f'{p:.1f}' for p in peaks)} | {med - base:+.1f} | {state:.1f} | {renderer:.1f} |")
    if not args.cold:
        caches = sorted(r["plot_cache_kib"] / 1024 for runs in results.values() for r in runs)
        print(f"\nplotting library one-time caches (fonts, glyphs, text layouts, renderer; in every variant, "
              f"excluded from 'extra vs none'): median {statistics.median(caches):.1f} MiB resident "
              f"(range {caches[0]:.1f} to {caches[-1]:.1f}, {len(caches)} processes)")
    if args.out:
        out = {"benchmark": "memory", "epochs": args.epochs, "n_train": args.n_train, "repeats": args.repeats,
               "cold": args.cold, "extra_mib": summary["callbacks"]["extra_mib"],
               "renderer_peak_mib": summary["callbacks"]["renderer_peak_mib"], "variants": summary}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
