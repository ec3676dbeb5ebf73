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

The variants run interleaved, ``--repeats`` times each; the table reports medians and the extra
peak memory = median(variant) − median(none). Usage::

    .venv/bin/python benchmarks/memory.py              # 3 repeats, about 2-3 minutes on 2 cores
    .venv/bin/python benchmarks/memory.py --repeats 5 --epochs 3
    .venv/bin/python benchmarks/memory.py --attribution   # + EEG alone, uncapped lesion forwards, no tractography
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
import json, resource, sys, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from nn_neuroimaging_lightning.demo import DemoClassifier, DemoDataModule
variant, root, epochs, n_train = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
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
state = 0
if callbacks:
    sys.path.insert(0, "tests/e2e")
    from test_memory import state_bytes
    state = sum(state_bytes(cb) for cb in callbacks)
print("RESULT " + json.dumps({"variant": variant, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                              "after_imports_kib": before, "state_bytes": state, "steps": trainer.global_step}))
"""


def run_child(variant: str, epochs: int, n_train: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        out = subprocess.run([sys.executable, "-c", CHILD, variant, root, str(epochs), str(n_train)],
                             capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=3200)
    parser.add_argument("--attribution", action="store_true", help="also run " + ", ".join(ATTRIBUTION))
    args = parser.parse_args(argv)
    variants = VARIANTS + (ATTRIBUTION if args.attribution else ())
    results = {v: [] for v in variants}
    for r in range(args.repeats):
        order = variants if r % 2 == 0 else tuple(reversed(variants))
        for v in order:
            res = run_child(v, args.epochs, args.n_train)
            results[v].append(res)
            print(f"repeat {r} {v:20s} peak {res['peak_kib'] / 1024:7.1f} MiB  state {res['state_bytes'] / 1024:7.1f} KiB", flush=True)
    base = statistics.median(r["peak_kib"] for r in results["none"]) / 1024
    print(f"\n{args.epochs} epochs x {args.n_train // 64} steps (batch 64), {args.repeats} fresh processes per variant\n")
    print("| variant | peak RSS, median (MiB) | runs (MiB) | extra vs none (MiB) | callback state (KiB) |")
    print("|---|---:|---|---:|---:|")
    for v in variants:
        peaks = [r["peak_kib"] / 1024 for r in results[v]]
        med = statistics.median(peaks)
        state = statistics.median(r["state_bytes"] for r in results[v]) / 1024
        print(f"| {v} | {med:.1f} | {', '.join(f'{p:.1f}' for p in peaks)} | {med - base:+.1f} | {state:.1f} |")


if __name__ == "__main__":
    main()
