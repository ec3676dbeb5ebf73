r"""Overhead of :class:`NNEEGCallback` on CPU training (SPEC §8), measured three ways.

Targets: self-time <= 1 % of the step, end-to-end <= 2 % (CPU eager), 0 host syncs in a
non-logging step, <= 2 aten ops per tapped layer (<= 1.5x one ``sum()`` read of the activation),
analysis (spectra + states + anomalies, 10 layers x 128 samples) <= 5 ms.

1. **Interleaved A/B.** One ``Trainer.fit`` run; a switch callback turns the EEG callback on and off
   in blocks of ``--block`` training steps (its hooks return at once and its taps are detached while
   off), the on/off order of each pair of blocks drawn at random. Same model, same optimizer path,
   same data: machine-load drift hits both arms alike. Per pair, ``median(on) / median(off)`` step
   time (the first step of each block dropped); the median over pairs with a bootstrap 95 % interval.
   The same A/B with bare forward hooks on the same layers (:class:`FloorHooks`) gives two floors:
   ``abs().sum()`` alone (the SPEC's signal, nothing else) and ``sum()`` alone (a fused kernel at best).
2. **Self-time.** ``time.perf_counter_ns`` inside the callback's training hooks and the root-forward
   hook (accumulated by the callback), plus the per-layer tap hooks (wrapped here), against the
   median step time of the ``on`` blocks.
3. **Counters.** Host syncs (``aten._local_scalar_dense``) per non-logging step and aten ops per
   tapped layer, with a ``TorchDispatchMode``; the tap reduction's cost against ``sum()`` on the
   model's real activations.

Models: the reference CNN (33,194 parameters) and the same layout 4x wider, batch 64 of synthetic
32x32x3 images. Both ``log_anomaly_every_step=True`` (default: two ``pl_module.log`` calls every step)
and ``False`` (running max, logged on logging steps / anomalies / epoch end) are measured.

Run::

    python benchmarks/eeg_overhead.py                # ~2 minutes on 2 CPU cores
    python benchmarks/eeg_overhead.py --quick        # smoke run
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import warnings
from collections import Counter
from typing import Any, Dict, List

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
from nn_neuroimaging_lightning.demo.data import DemoDataModule
from nn_neuroimaging_lightning.eeg import StepDetector
from nn_neuroimaging_lightning.demo.model import DemoClassifier, ReferenceCNN
from nn_neuroimaging_lightning.functional import anomalies as FA
from nn_neuroimaging_lightning.functional import spectral as FS
from nn_neuroimaging_lightning.functional import states as FST
from nn_neuroimaging_lightning.taps import select_layers


class WideCNN(nn.Module):
    """The reference layout with 4x the channels/units (conv 3→64→128, fc 1152→256→10)."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16 * k, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16 * k, 32 * k, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(3)
        self.fc1 = nn.Linear(32 * k * 9, 64 * k)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64 * k, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(x.flatten(1))))


class Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


class Switchable(NNEEGCallback):
    """The EEG callback with an off switch (hooks return at once, taps detached) and timed tap hooks."""

    on = True
    tap_ns = 0

    def setup(self, trainer, pl_module, stage):  # noqa: ANN001
        if self._taps is None:
            super().setup(trainer, pl_module, stage)
            self._taps.detach()
            original = self._taps._make_hook

            def timed(index):  # noqa: ANN001
                hook = original(index)

                def wrapper(*args):  # noqa: ANN002
                    t0 = time.perf_counter_ns()
                    hook(*args)
                    Switchable.tap_ns += time.perf_counter_ns() - t0

                return wrapper

            self._taps._make_hook = timed
            self._root = pl_module
        self._taps.attach(root=pl_module, on_forward_end=self._commit)

    def switch(self, on: bool) -> None:
        self.on = on
        if on:
            self._taps.attach(root=self._root, on_forward_end=self._commit)
            self._last_batch_end = None  # the off block is not an idle stall
        else:
            self._taps.detach()

    def on_train_batch_start(self, *args):  # noqa: ANN002
        if self.on:
            super().on_train_batch_start(*args)

    def on_train_batch_end(self, *args):  # noqa: ANN002
        if self.on:
            super().on_train_batch_end(*args)


class FloorHooks(Callback):
    """The signal alone, as a lower bound: forward hooks on the same layers, nothing else.

    ``kind="abs+sum"``: each tapped output's ``abs().sum()`` kept in a Python list slot (the
    SPEC's ``mean |a|`` without the ring, judgement, states or logging); ``kind="sum"``: its
    ``sum()`` only (what a fused ``|a|`` kernel could at best cost). Switched like :class:`Switchable`.
    """

    on = True
    _self_time_ns = 0

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._handles: List[Any] = []
        self._modules: List[nn.Module] = []
        self._values: List[Any] = []

    def setup(self, trainer, pl_module, stage):  # noqa: ANN001
        self._modules = list(select_layers(pl_module).values())
        self._values = [None] * len(self._modules)
        self.switch(True)

    def switch(self, on: bool) -> None:
        self.on = on
        for h in self._handles:
            h.remove()
        self._handles = []
        if on:
            for i, m in enumerate(self._modules):
                self._handles.append(m.register_forward_hook(self._hook(i)))

    def _hook(self, i: int):  # noqa: ANN202
        values, absolute = self._values, self.kind == "abs+sum"

        def hook(module, inputs, output):  # noqa: ANN001
            with torch.no_grad():
                values[i] = (output.abs() if absolute else output).sum()  # no further aten op

        return hook


class ABDriver(Callback):
    """Alternates blocks on/off and times every step (batch end to batch end)."""

    def __init__(self, eeg: Switchable, block: int, seed: int = 0) -> None:
        self.eeg, self.block = eeg, block
        self.rng = random.Random(seed)
        self.times: Dict[str, List[List[float]]] = {"on": [], "off": []}
        self.pairs: List[tuple] = []
        self._plan: List[bool] = []
        self._step_in_block = 0
        self._last = None
        self._current: List[float] = []
        self.self_ns_on = 0
        self.tap_ns_on = 0
        self.on_steps = 0

    def _next_block(self) -> None:
        if not self._plan:
            first = self.rng.random() < 0.5
            self._plan = [first, not first]
        on = self._plan.pop(0)
        self.eeg.switch(on)
        self._current = []
        self.times["on" if on else "off"].append(self._current)
        self._step_in_block = 0

    def on_train_start(self, trainer, pl_module):  # noqa: ANN001
        self._next_block()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        self._self0, self._tap0 = self.eeg._self_time_ns, Switchable.tap_ns

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        now = time.perf_counter_ns()
        if self._last is not None and self._step_in_block > 0:
            self._current.append((now - self._last) / 1e6)
            if self.eeg.on:
                self.on_steps += 1
                self.self_ns_on += self.eeg._self_time_ns - self._self0
                self.tap_ns_on += Switchable.tap_ns - self._tap0
        self._last = now
        self._step_in_block += 1
        if self._step_in_block >= self.block:
            self._next_block()
            self._last = time.perf_counter_ns()  # switching cost is outside both arms


def bootstrap_ci(values: List[float], n: int = 2000, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    arr = np.asarray(values)
    meds = np.median(rng.choice(arr, size=(n, len(arr)), replace=True), axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def ab_run(model_fn, steps: int, block: int, every_step: bool, batch: int = 64, floor: str = "") -> Dict[str, Any]:
    """One interleaved A/B fit: the EEG callback, or with ``floor`` a :class:`FloorHooks` of that kind."""
    torch.manual_seed(0)
    Switchable.tap_ns = 0
    eeg = FloorHooks(floor) if floor else Switchable(log_anomaly_every_step=every_step)
    driver = ABDriver(eeg, block)
    root = tempfile.mkdtemp(prefix="nn_eeg_bench_")
    # A TensorBoardLogger, as in real use: band powers and stacked spectra are written at each
    # analysis step (both arms log the model's own `train_loss`).
    trainer = Trainer(max_steps=steps, limit_val_batches=0, callbacks=[eeg, driver], logger=TensorBoardLogger(root, name="bench"), default_root_dir=root,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      log_every_n_steps=50, accelerator="cpu", devices=1)
    dm = DemoDataModule(n_train=batch * 64, n_val=batch, batch_size=batch)
    trainer.fit(DemoClassifier(model_fn()), dm)
    on, off = driver.times["on"], driver.times["off"]
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(on, off) if a and b]
    step_on = statistics.median([t for blk in on for t in blk])
    step_off = statistics.median([t for blk in off for t in blk])
    self_ms = driver.self_ns_on / max(driver.on_steps, 1) / 1e6
    tap_ms = driver.tap_ns_on / max(driver.on_steps, 1) / 1e6
    lo, hi = bootstrap_ci(ratios)
    return {
        "pairs": len(ratios), "ratio": statistics.median(ratios), "ci": (lo, hi),
        "step_off_ms": step_off, "step_on_ms": step_on,
        "self_pct": 100 * self_ms / step_off, "self_ms": self_ms,
        "tap_pct": 100 * tap_ms / step_off,
    }


class SyncWindow(Callback):
    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.counts, self.mode = first, last, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if self.first <= batch_idx < self.last:
            self.mode = Ops()
            self.mode.__enter__()


class SyncClose(Callback):
    def __init__(self, opener: SyncWindow) -> None:
        self.opener = opener

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
        if self.opener.mode is not None:
            self.opener.mode.__exit__(None, None, None)
            self.opener.counts.append(self.opener.mode.ops)
            self.opener.mode = None


def syncs_per_step(model_fn, with_eeg: bool) -> float:
    torch.manual_seed(0)
    opener = SyncWindow(20, 30)
    cbs = [opener] + ([NNEEGCallback()] if with_eeg else []) + [SyncClose(opener)]
    trainer = Trainer(max_steps=30, limit_val_batches=0, callbacks=cbs, logger=False, default_root_dir=tempfile.mkdtemp(prefix="nn_eeg_bench_"), enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1000)
    trainer.fit(DemoClassifier(model_fn()), DemoDataModule(n_train=64 * 30, n_val=64, batch_size=64))
    return sum(c["_local_scalar_dense"] for c in opener.counts) / len(opener.counts)


def ops_and_cost(model_fn) -> Dict[str, float]:
    """aten ops per tapped layer in the hooks; cost of the reduction against ``sum()`` on the real activations."""
    from nn_neuroimaging_lightning.taps import ActivityTaps, mean_abs_reduction

    torch.manual_seed(0)
    net = model_fn()
    x = torch.randn(64, 3, 32, 32)
    modules = select_layers(net)
    taps = ActivityTaps(modules)
    with torch.no_grad():
        with Ops() as plain:
            net(x)
        taps.attach()
        with Ops() as tapped:
            net(x)
        taps.detach()
        outs = {}
        hs = [m.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o)) for n, m in modules.items()]
        net(x)
        for h in hs:
            h.remove()

        def best(fn, reps=30):
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter_ns()
                fn()
                ts.append(time.perf_counter_ns() - t0)
            return sorted(ts)[len(ts) // 4]

        red = sum(best(lambda a=a: mean_abs_reduction(a)) for a in outs.values())
        ref = sum(best(lambda a=a: a.sum()) for a in outs.values())
    extra = Counter(tapped.ops)
    extra.subtract(plain.ops)
    return {"ops_per_layer": sum(extra.values()) / len(modules), "ops": dict(+extra), "cost_vs_sum": red / ref}


class _BatchTimer(Callback):
    """Per-batch wall time of a validation loop (batch start to batch end; put it last)."""

    def __init__(self) -> None:
        self.times: List[float] = []
        self._t0 = 0.0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001
        self._t0 = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001
        self.times.append(time.perf_counter() - self._t0)


def validation_ratio(model_fn, repeats: int = 8, batches: int = 64) -> Dict[str, Any]:
    """Validation batches with / without the callback: ``trainer.validate`` runs alternated.

    One model; each repeat validates it twice on the same ``batches`` batches, once with a fresh
    :class:`NNEEGCallback` and once without (order alternating). Per run the median batch time
    (first 3 batches dropped); ratio = median over repeats of ``with / without``. The callback's
    inference path: ring write, per-step judgement against this loop's own baseline, state windows.
    """
    torch.manual_seed(0)
    module = DemoClassifier(model_fn())
    dm = DemoDataModule(n_train=64, n_val=64 * batches, batch_size=64)
    ratios, with_ms, without_ms = [], [], []
    for r in range(repeats + 1):
        med = {}
        for arm in (("with", "without") if r % 2 == 0 else ("without", "with")):
            timer = _BatchTimer()
            cbs = ([NNEEGCallback()] if arm == "with" else []) + [timer]
            trainer = Trainer(callbacks=cbs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                              enable_checkpointing=False, accelerator="cpu", devices=1, default_root_dir=tempfile.mkdtemp(prefix="nn_eeg_bench_"))
            trainer.validate(module, datamodule=dm, verbose=False)
            med[arm] = statistics.median(timer.times[3:])
        if r == 0:
            continue  # warm-up pair
        ratios.append(med["with"] / med["without"])
        with_ms.append(1e3 * med["with"])
        without_ms.append(1e3 * med["without"])
    lo, hi = bootstrap_ci(ratios)
    return {"ratio": statistics.median(ratios), "ci": (lo, hi), "with_ms": statistics.median(with_ms), "without_ms": statistics.median(without_ms)}


def in_situ_cost(model_fn, steps: int = 60) -> Dict[str, float]:
    """The reduction's cost inside real training steps, against ``sum()`` of the same activation.

    Hooks on the tapped layers time one of three reductions of each output, the kind rotating from
    step to step (each meets the activation as fresh from the layer as the others): the taps' own
    (:meth:`ActivityTaps._reduce`, chunked above 4 MiB on CPU), plain ``abs().sum()``, and
    ``sum()``. Per step, the cost summed over layers; per kind, the median over its steps after 10
    warm-up steps.
    Unlike :func:`ops_and_cost` this sees the allocator as training leaves it (fresh pages for a
    large ``abs`` output).
    """
    from nn_neuroimaging_lightning.taps import ActivityTaps, mean_abs_reduction

    torch.manual_seed(0)
    net = model_fn()
    modules = select_layers(net)
    taps = ActivityTaps(modules)
    kinds = {"taps": taps._reduce, "abs+sum": mean_abs_reduction, "sum": lambda t: t.sum()}
    order = list(kinds)
    per_step: Dict[str, List[float]] = {k: [] for k in kinds}
    acc = {k: 0 for k in kinds}

    def hook(module, inputs, output):  # noqa: ANN001
        with torch.no_grad():
            k = order[0]
            t0 = time.perf_counter_ns()
            kinds[k](output)
            acc[k] += time.perf_counter_ns() - t0

    handles = [m.register_forward_hook(hook) for m in modules.values()]
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    for i in range(3 * steps + 10):
        acc[order[0]] = 0
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if i >= 10:
            per_step[order[0]].append(acc[order[0]] / 1e3)
        order.append(order.pop(0))
    for h in handles:
        h.remove()
    med = {k: statistics.median(v) for k, v in per_step.items()}
    return {"taps_us": med["taps"], "abs_sum_us": med["abs+sum"], "sum_us": med["sum"],
            "taps_vs_sum": med["taps"] / med["sum"], "abs_sum_vs_sum": med["abs+sum"] / med["sum"]}


def analysis_latency(layers: int = 10, n: int = 128, reps: int = 50) -> Dict[str, float]:
    """Spectra + band powers + spectral shift + state features/classification of 8 windows + baseline."""
    torch.manual_seed(0)
    eeg = NNEEGCallback()
    x = torch.rand(layers, n) + 0.5
    clf = FST.StateClassifier(num_bands=len(eeg.bands))
    judge = StepDetector([""] * layers, **eeg._judge_args)  # the callback's per-step judge
    feats = FST.window_features(torch.rand(32, layers, 16), fs=eeg.fs, nperseg=eeg.nperseg, bands=eeg.bands)
    clf.update(feats, torch.arange(32) % 2)
    base = torch.full((layers, len(eeg.bands)), 0.2)

    def once():
        freqs, psd = FS.welch_psd(x, fs=eeg.fs, nperseg=eeg.nperseg)
        rel = FS.band_powers(freqs, psd, eeg.bands, relative=True)
        FA.spectral_shift(rel, base, eeg.spectral_shift_threshold)
        windows = x.view(layers, 8, 16).transpose(0, 1)
        f = FST.window_features(windows, fs=eeg.fs, nperseg=eeg.nperseg, bands=eeg.bands)
        clf.predict_proba(f)
        clf.update(f, torch.zeros(8, dtype=torch.long))
        judge.baseline(x[:, :32])

    for _ in range(5):
        once()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        once()
        ts.append((time.perf_counter_ns() - t0) / 1e6)
    return {"median_ms": statistics.median(ts), "p90_ms": float(np.percentile(ts, 90))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="", help="write the results as JSON here (seed_claims reads "
                        "analysis_latency_ms and ab_ratio)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    models = {"reference CNN": ReferenceCNN, "wide CNN (x4)": WideCNN}
    steps = {"reference CNN": 200 if args.quick else 600, "wide CNN (x4)": 100 if args.quick else 300}
    rows = []
    for name, fn in models.items():
        for every in (True, False):
            r = ab_run(fn, steps[name], args.block, every)
            rows.append((name, "every step" if every else "running max", r))
            print(name, every, r, flush=True)
        for floor in ("abs+sum", "sum"):
            r = ab_run(fn, steps[name], args.block, False, floor=floor)
            label = "abs().sum()" if floor == "abs+sum" else "sum()"
            rows.append((name, f"floor: bare hooks, `{label}` only", r))
            print(name, floor, r, flush=True)
    counters = {name: (syncs_per_step(fn, True), syncs_per_step(fn, False), ops_and_cost(fn)) for name, fn in models.items()}
    in_situ = {name: in_situ_cost(fn, 30 if args.quick else 60) for name, fn in models.items()}
    val = validation_ratio(ReferenceCNN, 3 if args.quick else 8)
    lat = analysis_latency()

    print("\n| model | arm (anomaly logged) | step (ms) | self-time % (hooks + taps) | of which taps % | A/B ratio (95 % CI) | pairs |")
    print("|---|---|---|---|---|---|---|")
    for name, arm, r in rows:
        own = "—" if arm.startswith("floor") else f"{r['self_pct'] + r['tap_pct']:.2f}"
        taps = "—" if arm.startswith("floor") else f"{r['tap_pct']:.2f}"
        print(f"| {name} | {arm} | {r['step_off_ms']:.1f} | {own} | {taps} | {r['ratio']:.3f} ({r['ci'][0]:.3f}–{r['ci'][1]:.3f}) | {r['pairs']} |")
    print("\n| model | host syncs / non-logging step (with / without callback) | aten ops per tapped layer | tap reduction cost / `sum()` |")
    print("|---|---|---|---|")
    for name, (w, wo, oc) in counters.items():
        print(f"| {name} | {w:.0f} / {wo:.0f} | {oc['ops_per_layer']:.1f} ({', '.join(oc['ops'])}) | {oc['cost_vs_sum']:.1f}x |")
    print("\n| model | in a training step, per step: taps' reduction | `abs().sum()` | `sum()` | taps / `sum()` | `abs().sum()` / `sum()` |")
    print("|---|---|---|---|---|---|")
    for name, r in in_situ.items():
        print(f"| {name} | {r['taps_us']:.0f} us | {r['abs_sum_us']:.0f} us | {r['sum_us']:.0f} us | {r['taps_vs_sum']:.1f}x | {r['abs_sum_vs_sum']:.1f}x |")
    print(f"\nvalidation batches, reference CNN: {val['without_ms']:.2f} ms without / {val['with_ms']:.2f} ms with the callback, "
          f"ratio {val['ratio']:.3f} ({val['ci'][0]:.3f}–{val['ci'][1]:.3f})")
    print(f"\nanalysis latency, 10 layers x 128 samples: median {lat['median_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms")
    if args.out:
        import json
        import os

        # ab_ratio: NN-EEG's arms only (the floors are not the callback); the reference CNN first
        arms = [{"model": name, "arm": arm, "ratio": r["ratio"], "ci": list(r["ci"]), "step_off_ms": r["step_off_ms"],
                 "self_pct": r.get("self_pct"), "tap_pct": r.get("tap_pct")} for name, arm, r in rows]
        out = {"benchmark": "eeg_overhead", "quick": args.quick, "analysis_latency_ms": lat["median_ms"],
               "analysis_latency_p90_ms": lat["p90_ms"],
               "ab_ratio": [a["ratio"] for a in arms if not a["arm"].startswith("floor")], "arms": arms,
               "validation_ratio": val["ratio"]}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
