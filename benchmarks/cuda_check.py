r"""The CUDA path of the three callbacks (SPEC §6, §8), on a machine with a GPU.

CI machines have no GPU, so this is a script, not a test; it exits non-zero if a check fails.

1. **No host syncs in non-logging steps.** A real ``Trainer.fit`` on CUDA (``DemoClassifier``, all
   three callbacks). Every hook of our callbacks and every tap hook runs under
   ``torch.cuda.set_sync_debug_mode("error")`` except on logging/analysis steps, epoch ends and zeta
   evaluations (where values are meant to cross to the host). A synchronising call raises inside
   the hook; the wrapper records the hook, the step and the frame, then re-runs the hook unguarded
   so the run goes on. The model's own ``training_step`` is not guarded (Lightning and the user's
   code may sync; only ours must not).
2. **Steps from a NaN to the stop decision.** NaN written by a forward hook at step ``k``;
   ``stop_on=("non_finite",)`` must stop the run at step ``k`` or ``k + 1`` (one-step-lagged
   non-blocking copy).
3. **Tap reduction cost** against one ``sum()`` read of the activation, timed with CUDA events:
   ``abs`` + ``sum`` (what the taps run on CUDA) and ``linalg_vector_norm(ord=1)``.
4. **Step-time ratio** with / without ``NNEEGCallback``, interleaved fits, CUDA events around the
   training step (median over steps).

Run::

    python benchmarks/cuda_check.py            # ~1-2 minutes on one GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import traceback
import warnings
from typing import Any, Callable, Dict, List

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback
from nn_neuroimaging_lightning.demo.data import DemoDataModule
from nn_neuroimaging_lightning.demo.model import DemoClassifier
from nn_neuroimaging_lightning.taps import LayerTaps

PER_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
                  "on_before_optimizer_step", "on_before_zero_grad", "on_validation_batch_start",
                  "on_validation_batch_end")


class SyncGuard:
    """Runs wrapped calls under ``set_sync_debug_mode("error")`` on guarded steps; records violations."""

    def __init__(self, log_every_n_steps: int) -> None:
        self.every = log_every_n_steps
        self.trainer: Any = None
        self.guarded_calls = 0
        self.violations: List[Dict[str, Any]] = []

    def guarded_now(self) -> bool:
        t = self.trainer
        if t is None or t.sanity_checking:
            return False
        step = t.global_step
        if step < 2 * self.every:  # warm-up: first windows, calibration
            return False
        near_log = any((s + 1) % self.every == 0 or s % self.every == 0 for s in (step - 1, step, step + 1))
        last_batch = t.num_training_batches != float("inf") and t.fit_loop.epoch_loop.batch_progress.current.ready % t.num_training_batches in (0, t.num_training_batches - 1)
        return not (near_log or last_batch)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not self.guarded_now():
                return fn(*args, **kwargs)
            self.guarded_calls += 1
            torch.cuda.set_sync_debug_mode("error")
            try:
                return fn(*args, **kwargs)
            except RuntimeError as err:
                if "synchroniz" not in str(err):
                    raise
                frames = [f for f in traceback.extract_tb(err.__traceback__) if "nn_neuroimaging_lightning" in f.filename]
                where = f"{frames[-1].filename.split('nn_neuroimaging_lightning/')[-1]}:{frames[-1].lineno} {frames[-1].line}" if frames else "?"
                self.violations.append({"hook": name, "step": self.trainer.global_step, "where": where})
            finally:
                torch.cuda.set_sync_debug_mode(0)
            return fn(*args, **kwargs)  # unguarded re-run so the run goes on

        return guarded


def check_syncs(epochs: int, log_every: int) -> Dict[str, Any]:
    seed_everything(0, verbose=False)
    guard = SyncGuard(log_every)
    original = LayerTaps._make_hook

    def make_hook(self: LayerTaps, index: int) -> Callable[..., None]:
        return guard.wrap(f"tap[{self.names[index]}]", original(self, index))

    LayerTaps._make_hook = make_hook  # type: ignore[method-assign]
    try:
        callbacks = [NNEEGCallback(), NNfMRICallback(), CrossModalCallback()]
        for cb in callbacks:
            for hook in PER_STEP_HOOKS:
                setattr(cb, hook, guard.wrap(f"{type(cb).__name__}.{hook}", getattr(cb, hook)))

        class Bind(Callback):
            def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
                guard.trainer = trainer

        with tempfile.TemporaryDirectory() as root:
            trainer = Trainer(accelerator="cuda", devices=1, max_epochs=epochs, callbacks=[Bind(), *callbacks],
                              default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
                              enable_checkpointing=False, log_every_n_steps=log_every)
            trainer.fit(DemoClassifier(), DemoDataModule(n_train=3200, n_val=512, batch_size=64))
            consistency = callbacks[2].consistency
    finally:
        LayerTaps._make_hook = original  # type: ignore[method-assign]
    return {"guarded_calls": guard.guarded_calls, "violations": guard.violations, "steps": trainer.global_step,
            "zeta_layers": sorted(callbacks[1].zeta), "consistency": None if consistency is None else float(consistency)}


def check_stop_lag(k: int) -> Dict[str, Any]:
    seed_everything(0, verbose=False)
    eeg = NNEEGCallback(stop_on=("non_finite",), panels=False)
    model = DemoClassifier()
    state = {"trainer": None}

    def nan_hook(module: Any, inputs: Any, output: torch.Tensor) -> Any:
        t = state["trainer"]
        if t is not None and t.training and t.global_step >= k:
            return torch.full_like(output, float("nan"))
        return None

    handle = model.model.conv2.register_forward_hook(nan_hook)
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(accelerator="cuda", devices=1, max_epochs=3, callbacks=[eeg], default_root_dir=root,
                          logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        state["trainer"] = trainer
        trainer.fit(model, DemoDataModule(n_train=3200, n_val=256, batch_size=64))
    handle.remove()
    first = min((e.step for e in eeg.events if e.kind == "non_finite"), default=None)
    # global_step counts optimizer steps taken: the batch at step k ran the NaN; a same-step stop
    # leaves global_step == k + 1, a one-step-lagged one k + 2.
    return {"nan_at_step": k, "first_event_step": first, "global_step_at_stop": trainer.global_step,
            "lag_steps": trainer.global_step - (k + 1)}


def time_reductions() -> List[Dict[str, Any]]:
    rows = []
    for shape, dtype in [((64, 16, 28, 28), torch.float32), ((64, 32, 10, 10), torch.float32), ((256, 64, 32, 32), torch.float32),
                         ((256, 64, 32, 32), torch.bfloat16), ((64, 4096), torch.float32)]:
        x = torch.randn(shape, device="cuda").to(dtype)
        fns = {"sum": lambda: x.sum(dtype=torch.float32), "abs+sum": lambda: torch.abs(x).sum(dtype=torch.float32),
               "vector_norm_1": lambda: torch.linalg.vector_norm(x, 1, dtype=torch.float32)}
        row: Dict[str, Any] = {"shape": list(shape), "dtype": str(dtype)}
        for name, fn in fns.items():
            for _ in range(20):
                fn()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(200):
                fn()
            end.record()
            torch.cuda.synchronize()
            row[name + "_us"] = round(start.elapsed_time(end) / 200 * 1000, 2)
        row["abs+sum/sum"] = round(row["abs+sum_us"] / row["sum_us"], 2)
        row["vector_norm_1/sum"] = round(row["vector_norm_1_us"] / row["sum_us"], 2)
        rows.append(row)
    return rows


class StepTimer(Callback):
    def __init__(self) -> None:
        self.times: List[float] = []
        self._events: List[Any] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        self._events.append([ev, None])

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        self._events[-1][1] = ev

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        torch.cuda.synchronize()
        self.times = [a.elapsed_time(b) for a, b in self._events[20:] if b is not None]


def step_ratio(repeats: int) -> Dict[str, Any]:
    medians: Dict[str, List[float]] = {"off": [], "on": []}
    for r in range(repeats):
        for arm in (("off", "on") if r % 2 == 0 else ("on", "off")):
            seed_everything(0, verbose=False)
            timer = StepTimer()
            callbacks = [timer] + ([NNEEGCallback(panels=False)] if arm == "on" else [])
            with tempfile.TemporaryDirectory() as root:
                trainer = Trainer(accelerator="cuda", devices=1, max_epochs=2, callbacks=callbacks, default_root_dir=root,
                                  logger=False, enable_progress_bar=False, enable_model_summary=False,
                                  enable_checkpointing=False, limit_val_batches=0)
                trainer.fit(DemoClassifier(), DemoDataModule(n_train=6400, n_val=64, batch_size=64))
            medians[arm].append(statistics.median(timer.times))
    ratios = [on / off for on, off in zip(medians["on"], medians["off"])]
    return {"step_ms_off": [round(v, 3) for v in medians["off"]], "step_ms_on": [round(v, 3) for v in medians["on"]],
            "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    warnings.filterwarnings("ignore")
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    out["syncs"] = check_syncs(args.epochs, log_every=25)
    out["stop_lag"] = check_stop_lag(k=30)
    out["reductions"] = time_reductions()
    out["step_ratio"] = step_ratio(args.repeats)
    print(json.dumps(out, indent=1))
    ok = not out["syncs"]["violations"] and out["syncs"]["guarded_calls"] > 0 and 0 <= out["stop_lag"]["lag_steps"] <= 1
    print("CHECKS", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
