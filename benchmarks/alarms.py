r"""Anomaly alarms on the client zoo: false positives in healthy runs, detection of injected faults.

SPEC §8 target, at default arguments: **0 false positives in every healthy run of >= 500 training
steps** (also with the README's ``stop_on`` settings), and **>= 99 % of NaN / explosion / dead-layer
faults detected within 1 step**.

Runs, per client (``cnn resnet lstm gpt2 bert mlp_dropout`` by default) and seed (``seed_everything``):

* **healthy**: all three callbacks at their defaults (``NNEEGCallback(), NNfMRICallback(),
  CrossModalCallback()``), ``--epochs`` x ``--steps-per-epoch`` training steps (default 5 x 100)
  with a validation loop every epoch. Every event of any of the three is a false positive. The
  README's ``stop_on`` settings (``("non_finite", "explosion")`` and ``("joint",)``) stop a run at
  its first event of those kinds and change nothing before it (the callbacks never change what the
  model learns), so a healthy run with 0 events is also 0 with them; the table says which kinds
  would have stopped a run.
* **one fault each** (:data:`_clientfit.FAULTS`) at training step ``k = --fault-step + 13 * seed``,
  injected into the middle tapped layer of NN-EEG's default selection: ``nan`` (its output is NaN
  in that step's forward), ``weights_x1e3`` (its parameters x 1000 before that step), ``dead_layer``
  (its output is 0 from that step on), ``lr_x100`` (every learning rate x 100 from that step on),
  ``val_train_mode`` (validation runs with the model in training mode from then on). The callbacks
  run with ``NNEEGCallback(stop_on=("non_finite", "explosion", "collapse", "state_mismatch"))``, the
  other two at defaults with ``CrossModalCallback(stop_on=("joint",))``, until the stop or the end of
  the epoch that holds ``k`` (its validation loop included). Detected = an event of the fault's kinds
  at a step >= k; latency = event step - k; stop latency = the step whose batch set
  ``trainer.should_stop`` - k; weights finite = every parameter finite at the end of the run.

Thresholds are the library defaults. Tuning seeds and reported seeds are kept apart: the defaults
were set looking at ``--seeds 100,101``; the reported table uses ``--seeds 0,1,2``.

Run::

    python benchmarks/alarms.py                        # 6 clients x 3 seeds x 6 runs, ~30-60 min on 2 cores
    python benchmarks/alarms.py --jobs 2 --out build/alarms.json
    python benchmarks/alarms.py --smoke                # 1 client, 1 seed, short runs (the test suite runs this)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _clientfit as CF  # noqa: E402

DEFAULT_CLIENTS = ("cnn", "resnet", "lstm", "gpt2", "bert", "mlp_dropout")
README_STOP_ON = ("non_finite", "explosion")
FAULT_STOP_ON = ("non_finite", "explosion", "collapse", "state_mismatch")


def _callbacks(stop_on: Sequence[str], joint: bool) -> List[Any]:
    from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback

    return [NNEEGCallback(stop_on=tuple(stop_on)), NNfMRICallback(), CrossModalCallback(stop_on=("joint",) if joint else ())]


def _middle_layer(client: str, seed: int, steps_per_epoch: int) -> str:
    from nn_neuroimaging_lightning.demo.clients import make_client
    from nn_neuroimaging_lightning.taps import select_layers

    module, _, _ = make_client(client, seed=seed, steps_per_epoch=1)
    names = list(select_layers(module, None))
    return names[len(names) // 2]


def _fault_step(task: Dict[str, Any]) -> int:
    """k of a fault run: ``--fault-step`` shifted by 13 steps per seed."""
    return task["fault_step"] + 13 * task["seed"]


def run_one(task: Dict[str, Any]) -> Dict[str, Any]:
    """One fit of the benchmark (runs in a worker process with one thread); a failed fit is a record with its error."""
    try:
        return _run_one(task)
    except Exception as exc:  # one broken run must not lose the others' records
        return {"client": task["client"], "seed": task["seed"], "fault": task["fault"], "steps": 0, "events": [],
                "stop_step": None, "weights_finite": False, "fault_step": _fault_step(task),
                "error": f"{type(exc).__name__}: {exc}"[:300]}


def _run_one(task: Dict[str, Any]) -> Dict[str, Any]:
    CF.quiet()
    CF.set_threads(1)
    import torch

    client, seed, fault = task["client"], task["seed"], task["fault"]
    spe, epochs = task["steps_per_epoch"], task["epochs"]
    t0 = time.perf_counter()
    stop = CF.StopRecorder()
    out: Dict[str, Any] = {"client": client, "seed": seed, "fault": fault}
    if fault is None:
        cbs = _callbacks((), joint=False)
        trainer, module, _ = CF.fit_client(client, seed, [*cbs, stop], steps_per_epoch=spe, epochs=epochs)
    else:
        k = _fault_step(task)
        layer = _middle_layer(client, seed, spe)
        injector = CF.FaultInjector(fault, k, layer)
        cbs = _callbacks(FAULT_STOP_ON, joint=True)
        last = (k // spe + 1) * spe
        trainer, module, _ = CF.fit_client(client, seed, [injector, *cbs, stop], steps_per_epoch=spe, epochs=last // spe + 1,
                                           max_steps=last)
        out.update(fault_step=k, layer=layer, injected=injector.injected_at is not None)
    events = [e for cb in cbs for e in cb.events]
    out["steps"] = stop.steps
    out["events"] = [{"step": e.step, "kind": e.kind, "layer": e.layer, "phase": e.phase, "source": e.source,
                      "detail": e.detail[:200]} for e in events]
    out["stop_step"] = stop.stop_step
    out["weights_finite"] = bool(all(torch.isfinite(p).all() for p in module.parameters()))
    out["seconds"] = time.perf_counter() - t0
    return out


def summarise(results: List[Dict[str, Any]]) -> str:
    """The Markdown tables of the README (per kind of run)."""
    lines: List[str] = []
    failed = [r for r in results if r.get("error")]
    results = [r for r in results if not r.get("error")]
    healthy = [r for r in results if r["fault"] is None]
    steps = sum(r["steps"] for r in healthy)
    kinds = Counter(e["kind"] for r in healthy for e in r["events"])
    fp = sum(kinds.values())
    lines.append(f"Healthy runs: {len(healthy)} ({', '.join(sorted({r['client'] for r in healthy}))}; seeds "
                 f"{', '.join(str(s) for s in sorted({r['seed'] for r in healthy}))}), {steps} training steps, "
                 f"**{fp} false positive event(s)** = {1000 * fp / max(steps, 1):.2f} per 1,000 steps"
                 + (f" ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})" if fp else "") + ".")
    stopping = sum(1 for r in healthy if any(e["kind"] in README_STOP_ON or e["kind"] == "joint" for e in r["events"]))
    lines.append(f"Healthy runs the README's `stop_on` settings would have stopped: {stopping} of {len(healthy)}.")
    lines.append("")
    lines.append("| client | healthy runs | steps | false positives (kinds) |")
    lines.append("|---|---:|---:|---|")
    for client in sorted({r["client"] for r in healthy}, key=list(DEFAULT_CLIENTS + ("kwargs",)).index):
        rs = [r for r in healthy if r["client"] == client]
        ks = Counter(e["kind"] for r in rs for e in r["events"])
        lines.append(f"| {client} | {len(rs)} | {sum(r['steps'] for r in rs)} | {sum(ks.values())}"
                     + (f" ({', '.join(f'{k} {n}' for k, n in sorted(ks.items()))})" if ks else "") + " |")
    lines.append("")
    lines.append("| fault | runs | detected | within 1 step | steps to event | steps to stop | weights finite after the run | target |")
    lines.append("|---|---:|---:|---:|---|---|---:|---|")
    for fault, expected in CF.FAULTS.items():
        rs = [r for r in results if r["fault"] == fault]
        if not rs:
            continue
        lat, stop_lat, within, det, finite = [], [], 0, 0, 0
        for r in rs:
            k = r["fault_step"]
            hits = [e["step"] - k for e in r["events"] if e["kind"] in expected and e["step"] >= k]
            if hits:
                det += 1
                lat.append(min(hits))
                within += min(hits) <= 1
            if r["stop_step"] is not None and r["stop_step"] >= k:
                stop_lat.append(r["stop_step"] - k)
            finite += r["weights_finite"]
        target = ">= 99 % within 1 step" if fault in CF.TARGET_FAULTS else "(reported)"
        lines.append(f"| {fault} | {len(rs)} | {det}/{len(rs)} | {within}/{len(rs)} | {CF.mean_sd_range(lat)} | "
                     f"{CF.mean_sd_range(stop_lat)} | {finite}/{len(rs)} | {target} |")
    early = [(r["client"], r["seed"], r["fault"], e["kind"], e["step"]) for r in results if r["fault"] is not None
             for e in r["events"] if e["step"] < r["fault_step"]]
    if failed:
        lines.append("")
        lines.append(f"Runs that failed (left out above): {len(failed)}: "
                     + "; ".join(f"{r['client']} seed {r['seed']} {r['fault'] or 'healthy'}: {r['error']}" for r in failed))
    lines.append("")
    lines.append(f"Events before the fault in fault runs (false positives too): {len(early)}"
                 + (f": {early[:10]}" if early else "."))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default=",".join(DEFAULT_CLIENTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--faults", default=",".join(CF.FAULTS))
    parser.add_argument("--epochs", type=int, default=5, help="epochs of a healthy run")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--fault-step", type=int, default=250, help="k for seed 0 (k = this + 13 * seed)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None, help="write every run's record as JSON here")
    parser.add_argument("--smoke", action="store_true", help="1 client (mlp_dropout), 1 seed, 2 x 20 steps, NaN fault only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.seeds, args.faults = "mlp_dropout", "0", "nan"
        args.epochs, args.steps_per_epoch, args.fault_step, args.jobs = 2, 20, 25, 1
    clients, seeds, faults = CF._list(args.clients), [int(s) for s in CF._list(args.seeds)], CF._list(args.faults)
    bad = [f for f in faults if f not in CF.FAULTS]
    if bad:
        parser.error(f"unknown fault(s) {bad}; allowed: {list(CF.FAULTS)}")
    tasks = [dict(client=c, seed=s, fault=f, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs, fault_step=args.fault_step)
             for c in clients for s in seeds for f in [None, *faults]]
    t0 = time.perf_counter()
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            results = pool.map(run_one, tasks, chunksize=1)
    else:
        results = [run_one(t) for t in tasks]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"# alarms: {len(tasks)} runs in {time.perf_counter() - t0:.0f} s "
          f"(`python benchmarks/alarms.py {' '.join(argv if argv is not None else sys.argv[1:])}`)\n")
    print(summarise(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
