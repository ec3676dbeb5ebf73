r"""Whole-fit overhead of the three callbacks at their defaults on the client zoo (issue 17).

**Interleaved A/B of whole fits.** For each client (``demo/clients.py``) and each epoch length,
``--repeats`` rounds; in every round each arm fits the same seeded client once, in an order drawn
at random per round, so machine-load drift hits every arm alike. Arms:

- ``plain``: no callback (a ``TensorBoardLogger``, as a user has);
- ``all``: ``NNEEGCallback()``, ``NNfMRICallback()``, ``CrossModalCallback()`` at their defaults
  (figures drawn by the renderer process, ``panels/worker.py``; each fit that draws gets a new
  renderer, started and warmed up before its timed fit, so that no figure kept from an earlier
  fit is drawn in place: as in a user's process, the first epoch's figures are built anew);
- ``all_inline``: the same with ``NN_NEUROIMAGING_RENDER=inline`` (figures drawn in the training
  thread, as before the renderer process): what the renderer saves;
- ``all_nopanels``: the three with ``panels=False`` (no figure, table or spectrum): what the
  panels cost, against ``all``;
- ``eeg``, ``fmri``: one callback alone; ``eeg+fmri``: both (``CrossModalCallback`` needs them,
  so its share is ``all`` against ``eeg+fmri``);
- ``floor``: bare forward hooks on the same layers computing only ``abs().sum()``
  (:class:`benchmarks.eeg_overhead.FloorHooks`): the least any hook-based signal costs.

The ratio of a round is ``fit time(arm) / fit time(plain)`` of that round; the table gives the
median over rounds and its percentile-bootstrap 95 % interval (``_clientfit.median_ci``).

**Where the time goes** (``all`` arm), measured from the outside by wrapping, per fit:

- ``zeta`` / ``tract``: ``NNfMRICallback.compute_zeta`` / ``compute_tractography``;
- ``figures``: building the matplotlib figures (``panels.figures.*_figure``) plus everything the
  ``PanelSink`` does in the training thread (handing a drawing to the renderer, or rendering it
  inline; writing tables, texts, spectra; flush);
- ``figure wait``: ms per fit that ``teardown`` waited for figures still in the renderer process
  (the last validation's; earlier ones are drawn while training goes on), drawing those not sent to
  the renderer yet itself (``FigureWorker.help``: not counted under ``figures``);
- ``renderer CPU``: the renderer process's user + system CPU time (``/proc/<pid>/stat``) during
  the ``all`` fits, per epoch: what the figures cost on the other core (NaN off Linux);
- ``analysis``: the rest of the callbacks' epoch hooks (``on_train_epoch_*``,
  ``on_validation_*``, ``on_validation_epoch_*``);

each in ms per epoch. The per-step cost in µs is what is left of the fit-time difference:
``(T(all) - T(plain) - epoch hooks) / training steps`` (the median over rounds; validation
batches' share included, so it is an upper bound of the training step's own cost); of it, the
callbacks' own time in their batch hooks (those they override) and in their forward hooks
(``LayerTaps`` hooks and the EEG's per-forward commit), training and validation batches together,
per training step.

One torch thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``). The machine may be
shared: read the ratios, which are measured side by side, not the absolute times.

``--figures``: the cost of each panel figure kind alone (build, draw on Agg, PNG encode,
release), the median of ``--repeats`` in ms; the figures are those of ``tests/panels``-like
inputs of the sizes the callbacks draw (a 9-layer spectrum, an 8x8x4 zeta map, ...).
"Drawn again in place": the kinds the renderer process keeps per tag (``panels.worker.Kept``),
the median ms of the next epoch's figure of the same tag (new values put into the kept figure,
drawn, PNG-encoded). ``--baseline REF`` times the same figures with the panels code of git ``REF``
interleaved with the current code (before/after on a loaded machine).

Usage::

    python benchmarks/overhead_clients.py                       # every client, 3 rounds, ~1 hour loaded
    python benchmarks/overhead_clients.py --clients resnet --repeats 5 --out overhead.json
    python benchmarks/overhead_clients.py --figures --repeats 9  # per figure kind, ms
    python benchmarks/overhead_clients.py --figures --repeats 9 --baseline 583db8c  # before/after A/B
    python benchmarks/overhead_clients.py --smoke               # < 30 s: one tiny round
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _clientfit import fit_client, median_ci, quiet, set_threads  # noqa: E402

ARMS = ("plain", "all", "all_inline", "all_nopanels", "eeg", "fmri", "eeg+fmri", "floor")
CLIENTS = ("cnn", "resnet", "gpt2", "bert", "lstm")  # the default set
#: more rows of the README's "Works with" table: name -> (client of demo.clients, its kwargs, Trainer kwargs)
VARIANTS: Dict[str, tuple] = {
    "resnet_bf16": ("resnet", {}, {"precision": "bf16-mixed"}),
    "kwargs": ("kwargs", {}, {}),
    "mlp_dropout": ("mlp_dropout", {}, {}),
}
RENDER_ENV = "NN_NEUROIMAGING_RENDER"
#: epoch hooks whose time counts as per-epoch fixed cost
EPOCH_HOOKS = ("on_train_epoch_start", "on_train_epoch_end", "on_validation_start", "on_validation_end",
               "on_validation_epoch_start", "on_validation_epoch_end")
#: once-per-fit hooks (their time, the teardown's figure wait included, is the per-fit fixed cost)
FIT_HOOKS = ("setup", "on_fit_start", "on_train_start", "on_train_end", "on_fit_end", "teardown",
             "on_sanity_check_start", "on_sanity_check_end")
#: per-batch hooks (training and validation); timed where a callback overrides them (self time per step)
BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
               "on_before_optimizer_step", "on_before_zero_grad", "on_validation_batch_start", "on_validation_batch_end")
SINK_METHODS = ("figure", "table", "text", "spectrum", "layout", "flush")
FIGURE_BUILDERS = ("spectrum_figure", "spectrogram_figure", "heatmap_figure", "matrix_figure",
                   "phase_timeline_figure", "consistency_figure")


class Clock:
    """Named wall-time accumulators; ``wrap`` nests: an inner timer's time stays in the outer's too."""

    def __init__(self) -> None:
        self.s: Dict[str, float] = defaultdict(float)
        self.n: Dict[str, int] = defaultdict(int)
        self.depth: Dict[str, int] = defaultdict(int)  # calls of each key running now (any thread)

    def wrap(self, key: str, fn: Callable[..., Any], not_inside: str = "") -> Callable[..., Any]:
        """``fn`` timed under ``key``; a call made while a ``not_inside`` one runs is not counted under ``key``."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            counted = not (not_inside and self.depth[not_inside])
            t0 = time.perf_counter()
            self.depth[key] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth[key] -= 1
                if counted:
                    self.s[key] += time.perf_counter() - t0
                    self.n[key] += 1

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


class _Patched:
    """Module / class attributes replaced by timed wrappers for one fit, restored afterwards."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.saved: List[tuple] = []

    def __enter__(self) -> "_Patched":
        from nn_neuroimaging_lightning.panels import figures as PF
        from nn_neuroimaging_lightning.panels import sink as PS

        for name in FIGURE_BUILDERS:
            if hasattr(PF, name):
                # the figures `PanelSink.wait` draws itself at teardown are its per-fit time, not an epoch's
                self._set(PF, name, self.clock.wrap("figures", getattr(PF, name), not_inside="figure_wait"))
        for name in SINK_METHODS:
            if hasattr(PS.PanelSink, name):
                fn = getattr(PS.PanelSink, name)
                if name == "figure":  # counted apart: figures written per epoch
                    fn = self.clock.wrap("figure_writes", fn)
                self._set(PS.PanelSink, name, self.clock.wrap("figures", fn))
        # the wait at teardown for figures still in the renderer process (not in an epoch hook)
        self._set(PS.PanelSink, "wait", self.clock.wrap("figure_wait", PS.PanelSink.wait))
        # the forward hooks of every LayerTaps (EEG, fMRI), and the EEG's per-forward commit, timed
        from nn_neuroimaging_lightning.taps import LayerTaps

        clock, make_hook, attach = self.clock, LayerTaps._make_hook, LayerTaps.attach
        self._set(LayerTaps, "_make_hook", lambda taps, index: clock.wrap("forward_hooks", make_hook(taps, index)))
        self._set(LayerTaps, "attach", lambda taps, root=None, on_forward_end=None: attach(
            taps, root, None if on_forward_end is None else clock.wrap("forward_hooks", on_forward_end)))
        return self

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __exit__(self, *exc: Any) -> None:
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)


def _floor() -> Any:
    """``eeg_overhead.FloorHooks("abs+sum")`` on the clients' outputs: the tapped layer's tensor as
    NN-EEG takes it (``taps.first_tensor``: an LSTM's tuple, a Hugging Face output), then ``abs().sum()``."""
    from eeg_overhead import FloorHooks

    from nn_neuroimaging_lightning.taps import first_tensor

    class ClientFloor(FloorHooks):
        def _hook(self, i: int):  # noqa: ANN202
            inner = super()._hook(i)

            def hook(module, inputs, output):  # noqa: ANN001
                t = first_tensor(output)
                if t is not None:
                    inner(module, inputs, t)

            return hook

    return ClientFloor("abs+sum")


def _timed_callbacks(arm: str, clock: Clock) -> List[Any]:
    from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback

    if arm == "plain":
        return []
    if arm == "floor":
        return [_floor()]
    cbs: List[Any] = []
    three = ("all", "all_inline", "all_nopanels")
    kw = {"panels": False} if arm == "all_nopanels" else {}
    if arm in three + ("eeg", "eeg+fmri"):
        cbs.append(NNEEGCallback(**kw))
    if arm in three + ("fmri", "eeg+fmri"):
        fmri = NNfMRICallback(**kw)
        for name, key in (("compute_zeta", "zeta"), ("compute_tractography", "tract")):
            if hasattr(fmri, name):  # instance attributes: the callback's own calls go through them
                setattr(fmri, name, clock.wrap(key, getattr(fmri, name)))
        cbs.append(fmri)
    if arm in three:
        cbs.append(CrossModalCallback(**kw))
    from lightning.pytorch import Callback

    for cb in cbs:  # Lightning calls hooks as getattr(callback, name): instance wrappers are seen
        for hook in BATCH_HOOKS:
            if getattr(type(cb), hook) is not getattr(Callback, hook):  # the base's no-ops: not timed (no wrapper cost)
                setattr(cb, hook, clock.wrap("batch_hooks", getattr(cb, hook)))
        for hook in EPOCH_HOOKS:
            setattr(cb, hook, clock.wrap("epoch_hooks", getattr(cb, hook)))
        for hook in FIT_HOOKS:
            setattr(cb, hook, clock.wrap("fit_hooks", getattr(cb, hook)))
    return cbs


def _start_renderer() -> None:
    """Start this process's figure renderer and wait for its first figure (imports, fonts)."""
    import threading

    from nn_neuroimaging_lightning.panels import figures as PF
    from nn_neuroimaging_lightning.panels.worker import Drawing, shared_worker

    done = threading.Event()
    if shared_worker().submit(Drawing.of(PF.heatmap_figure, np.zeros((2, 2)), "warm-up"), lambda *_: done.set()):
        done.wait(120)


def _renderer_cpu_s() -> float:
    """CPU seconds (user + system) the renderer process of this one has used so far; NaN where unknown."""
    from nn_neuroimaging_lightning.panels.worker import shared_worker

    proc = shared_worker()._proc
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (proc(5))
    except (AttributeError, OSError, ValueError, IndexError):
        return float("nan")


#: arms whose figures the renderer process draws
RENDERED = ("all", "eeg", "fmri", "eeg+fmri")


def fit_arm(client: str, arm: str, steps: int, epochs: int, seed: int) -> Dict[str, Any]:
    clock = Clock()
    if arm in RENDERED:  # a renderer of its own, as in a user's process: nothing kept from an earlier fit (panels.worker.Kept)
        from nn_neuroimaging_lightning.panels.worker import shutdown

        shutdown()
        _start_renderer()  # started and warm before the fit: its start-up is not timed
    cpu0 = _renderer_cpu_s()
    inline = arm == "all_inline"  # figures drawn in the training thread (panels.worker's opt-out)
    before = os.environ.get(RENDER_ENV)
    if inline:
        os.environ[RENDER_ENV] = "inline"
    try:
        with _Patched(clock):
            name, client_kwargs, trainer_kwargs = VARIANTS.get(client, (client, {}, {}))
            trainer, _, seconds = fit_client(name, seed, _timed_callbacks(arm, clock), steps_per_epoch=steps, epochs=epochs,
                                             client_kwargs=client_kwargs, trainer_kwargs=trainer_kwargs)
    finally:
        if inline:
            os.environ.pop(RENDER_ENV) if before is None else os.environ.__setitem__(RENDER_ENV, before)
    out = {"seconds": seconds, "steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
           "renderer_cpu": _renderer_cpu_s() - cpu0}
    out.update({k: v for k, v in clock.s.items()})
    out["figure_calls"] = clock.n.get("figure_writes", 0)
    return out


def run_case(client: str, steps: int, epochs: int, repeats: int, arms: Sequence[str], seed: int) -> Dict[str, Any]:
    rng = random.Random(f"{client}-{steps}-{seed}")
    fit_arm(client, "plain", steps, 1, seed)  # warm-up (imports, allocator, first-use costs), discarded
    rounds: List[Dict[str, Dict[str, Any]]] = []
    for r in range(repeats):
        order = list(arms)
        rng.shuffle(order)
        rounds.append({arm: fit_arm(client, arm, steps, epochs, seed) for arm in order})
        print(f"  {client} {steps}x{epochs} round {r + 1}/{repeats}: "
              + " ".join(f"{a}={rounds[-1][a]['seconds']:.2f}s" for a in arms), file=sys.stderr, flush=True)
    res: Dict[str, Any] = {"client": client, "steps_per_epoch": steps, "epochs": epochs, "repeats": repeats,
                           "rounds": rounds, "ratio": {}}
    for arm in arms:
        if arm != "plain":
            res["ratio"][arm] = median_ci([rd[arm]["seconds"] / rd["plain"]["seconds"] for rd in rounds])
    res["ratio"]["cross"] = median_ci([rd["all"]["seconds"] / rd["eeg+fmri"]["seconds"] for rd in rounds]) \
        if {"all", "eeg+fmri"} <= set(arms) else None
    if "all" in arms:
        a = [rd["all"] for rd in rounds]
        n_ep = max(a[0]["epochs"], 1)
        per_epoch = {}
        for key in ("zeta", "tract", "figures"):
            per_epoch[key] = float(np.median([x.get(key, 0.0) for x in a])) * 1e3 / n_ep
        hooks = float(np.median([x.get("epoch_hooks", 0.0) for x in a])) * 1e3 / n_ep
        per_epoch["analysis"] = max(hooks - per_epoch["zeta"] - per_epoch["tract"] - per_epoch["figures"], 0.0)
        per_epoch["epoch_hooks"] = hooks
        res["per_epoch_ms"] = per_epoch
        res["figures_per_epoch"] = float(np.median([x["figure_calls"] for x in a])) / n_ep
        res["figure_wait_ms"] = float(np.median([x.get("figure_wait", 0.0) for x in a])) * 1e3  # per fit, at teardown
        res["renderer_cpu_ms"] = float(np.median([x.get("renderer_cpu", float("nan")) for x in a])) * 1e3 / n_ep
        res["per_fit_ms"] = float(np.median([x.get("fit_hooks", 0.0) for x in a])) * 1e3  # setup .. teardown
        steps_all = [max(x["steps"], 1) for x in a]
        res["batch_hooks_us"] = float(np.median([x.get("batch_hooks", 0.0) / n for x, n in zip(a, steps_all)])) * 1e6
        res["forward_hooks_us"] = float(np.median([x.get("forward_hooks", 0.0) / n for x, n in zip(a, steps_all)])) * 1e6
        res["per_step_us"] = float(np.median([
            (rd["all"]["seconds"] - rd["plain"]["seconds"] - rd["all"].get("epoch_hooks", 0.0) - rd["all"].get("fit_hooks", 0.0))
            / max(rd["all"]["steps"], 1) for rd in rounds])) * 1e6
        res["plain_step_ms"] = float(np.median([rd["plain"]["seconds"] / max(rd["plain"]["steps"], 1) for rd in rounds])) * 1e3
    return res


def _ci(t: Any) -> str:
    if not t:
        return "—"
    m, lo, hi = t
    return f"{m:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else f"{m:.2f}"


def table(results: Sequence[Dict[str, Any]], command: str) -> str:
    lines = [f"`{command}`", "",
             "| client | steps × epochs | plain step (ms) | all three | all three, figures inline | all three, no panels | EEG | fMRI | "
             "cross-modal (vs EEG+fMRI) | EEG floor `abs().sum()` | zeta | tract | figures (n/epoch) | analysis | "
             "renderer CPU (ms/epoch) | per fit (ms) | of which figure wait | per step (µs) | "
             "of which batch hooks | forward hooks |",
             "|---|---|---:|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        pe = r.get("per_epoch_ms", {})
        ms = lambda k: f"{pe[k]:.0f}" if k in pe else "—"  # noqa: E731
        lines.append(
            f"| {r['client']} | {r['steps_per_epoch']} × {r['epochs']} | {r.get('plain_step_ms', float('nan')):.1f} | "
            f"{_ci(r['ratio'].get('all'))} | {_ci(r['ratio'].get('all_inline'))} | {_ci(r['ratio'].get('all_nopanels'))} | "
            f"{_ci(r['ratio'].get('eeg'))} | "
            f"{_ci(r['ratio'].get('fmri'))} | {_ci(r['ratio'].get('cross'))} | {_ci(r['ratio'].get('floor'))} | "
            f"{ms('zeta')} | {ms('tract')} | {ms('figures')} ({r.get('figures_per_epoch', 0):.0f}) | "
            f"{ms('analysis')} | {r.get('renderer_cpu_ms', float('nan')):.0f} | "
            f"{r.get('per_fit_ms', float('nan')):.0f} | {r.get('figure_wait_ms', float('nan')):.0f} | "
            f"{r.get('per_step_us', float('nan')):.0f} | {r.get('batch_hooks_us', float('nan')):.0f} | "
            f"{r.get('forward_hooks_us', float('nan')):.0f} |")
    lines += ["", "Ratios: fit time / plain fit time in the same round, median [bootstrap 95 % CI] over rounds. "
              "zeta / tract / figures / analysis: ms per epoch in the `all` arm (figures: build + render + write of "
              "every panel in the training thread, n = figures per epoch); per fit: the once-per-fit hooks (setup to teardown), "
              "of which figure wait: teardown waiting for the figures still in the renderer process. "
              "Renderer CPU: the renderer process's user + system CPU time during the `all` fits, per epoch. "
              "Per step: (T(all) − T(plain) − epoch hooks − per-fit hooks) / training steps; of which the "
              "callbacks' own time in their batch hooks and in their forward hooks (the taps' reductions and "
              "the EEG's per-forward commit), training and validation batches, per training step: the rest is "
              "Lightning's calls of the hooks, the validation loop's share and the renderer's competition."]
    return "\n".join(lines)


# ------------------------------------------------------------------ --figures


#: kinds :func:`again_cases` leaves out: the phase timeline is always built anew, the trivial figure is a reference
_NOT_AGAIN = ("phase timeline", "trivial (one line)")


def _cases(i: int = 0) -> Dict[str, tuple]:
    """Per figure kind ``(builder name, args, kwargs)`` with inputs of the sizes the callbacks draw;
    ``i`` > 0: the ``i``-th later epoch's (values scaled by ``1 + i``, the same structure; a
    spectrogram's segments at later steps; the consistency chart with ``i`` more evaluations)."""
    rng = np.random.default_rng(0)
    freqs = np.arange(33) * 3.125
    bands = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 100.0)}
    psd = {f"layer{k}.conv": (1 + i) / (1.0 + freqs) ** (1 + k / 8) for k in range(9)}
    zeta = rng.normal(size=(8, 8, 4))
    power = rng.random((32, 33)) + 0.01
    m = rng.random((8, 8))
    m[0, 1] = np.nan
    phases = ["train"] * 40 + ["validate"] * 10 + ["train"] * 40
    scores = {"consistency": [0.5, 0.6, 0.7], "rho": [0.1, 0.2, 0.3], "agreement": [0.4, 0.5, 0.6], "coherence": [0.2, 0.3, 0.2]}
    return {
        "spectrum (9 layers)": ("spectrum_figure", (freqs, psd, bands), {}),
        "spectrogram (32 x 33)": ("spectrogram_figure", (np.arange(32) * 4 + 128 * i, freqs, power * (1 + i)),
                                  {"title": "Spectrogram layer1.conv"}),
        "heatmap zeta 8x8x4": ("heatmap_figure", (zeta * (1 + i), "layer1: zeta (impact of each region)", "RdBu_r",
                                                  np.abs(zeta) > 1.5), {"symmetric": True, "colorbar_label": "zeta"}),
        "heatmap significance 8x8x4": ("heatmap_figure", ((np.abs(zeta) > 1.5).astype(float),
                                                          "layer1: significant regions (95 % CI excludes 0)", "Greys"),
                                       {"colorbar_label": "significant"}),
        "heatmap density (4,)": ("heatmap_figure", (power[0, :4] * (1 + i), "fc1: density phi"), {"colorbar_label": "phi"}),
        "matrix 8x8": ("matrix_figure", (m * (1 + i), "layer1 region (source)", "layer2 region (target)", "C(layer1 -> layer2)"),
                       {}),
        "phase timeline": ("phase_timeline_figure", (phases, np.arange(90) * 0.1, {"train": 8.0, "validate": 1.0}), {}),
        "consistency": ("consistency_figure", ({k: v + [0.5] * i for k, v in scores.items()},),
                        {"steps": [10 * (j + 1) for j in range(3 + i)]}),
        "trivial (one line)": ("consistency_figure", ({"consistency": [0.5, 0.6]},), {}),
    }


def figure_cases(PF: Any = None) -> Dict[str, Callable[[], Any]]:
    """One builder per figure kind, with inputs of the sizes the callbacks draw (``PF``: the figures module)."""
    if PF is None:
        from nn_neuroimaging_lightning.panels import figures as PF

    return {name: (lambda b=b, a=a, k=k: getattr(PF, b)(*a, **k)) for name, (b, a, k) in _cases().items()}


def again_cases() -> Dict[str, Callable[[int], Any]]:
    """The kinds the renderer draws again in place (``panels.worker.Kept``): repeat ``i``'s drawing,
    the case of :func:`figure_cases` of the ``i``-th later epoch (:func:`_cases`)."""
    from nn_neuroimaging_lightning.panels import figures as PF
    from nn_neuroimaging_lightning.panels.worker import Drawing

    def drawing(name: str, i: int) -> Any:
        b, a, k = _cases(i)[name]
        return Drawing.of(getattr(PF, b), *a, **k)

    return {name: (lambda i, name=name: drawing(name, i)) for name in _cases() if name not in _NOT_AGAIN}


def again_costs(repeats: int) -> Dict[str, float]:
    """Median ms of a figure drawn again in place by the renderer's ``Kept`` (refill, draw, PNG), per kind."""
    from nn_neuroimaging_lightning.panels.worker import Kept

    out: Dict[str, float] = {}
    for name, drawing in again_cases().items():
        kept = Kept()
        kept.draw(name, drawing(0))  # built and kept: the first epoch's figure
        t = []
        for i in range(1, repeats + 1):
            d = drawing(i)  # its inputs made outside the timing
            t0 = time.perf_counter()
            kept.draw(name, d)
            t.append(time.perf_counter() - t0)
        kept.clear()
        out[name] = float(np.median(t)) * 1e3
    return out


def _module_at(ref: str, relpath: str, name: str) -> Any:
    """The module ``relpath`` as it was at git ``ref`` of this repository (for a before/after A/B)."""
    import subprocess
    import types

    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "-C", str(root), "show", f"{ref}:{relpath}"], capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType(name)
    mod.__file__ = f"<{ref}:{relpath}>"
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def _time_once(build: Callable[[], Any], R: Any) -> Dict[str, Any]:
    t0 = time.perf_counter()
    fig = build()
    t1 = time.perf_counter()
    image = R.render(fig)
    t2 = time.perf_counter()
    R.release(fig)
    t3 = time.perf_counter()
    R.encode_png(image.rgb)
    t4 = time.perf_counter()
    return {"build": t1 - t0, "render": t2 - t1, "release": t3 - t2, "encode": t4 - t3, "total": t3 - t0,
            "px": list(image.size)}


def figure_costs(repeats: int, baseline: str = "") -> Dict[str, Dict[str, Any]]:
    """Median ms per figure kind (build, render = draw + PNG, release, PNG alone, total); with
    ``baseline`` a git ref, the same figures with ``panels/figures.py`` and ``panels/rendering.py``
    of that ref, interleaved with the current ones (order alternating per repeat), and the median of
    the per-repeat ratios current / baseline."""
    from nn_neuroimaging_lightning.panels import figures as PF
    from nn_neuroimaging_lightning.panels import rendering as R

    variants = {"now": (figure_cases(PF), R)}
    if baseline:
        PFb = _module_at(baseline, "nn_neuroimaging_lightning/panels/figures.py", "_baseline_figures")
        Rb = _module_at(baseline, "nn_neuroimaging_lightning/panels/rendering.py", "_baseline_rendering")
        variants["base"] = (figure_cases(PFb), Rb)
    out: Dict[str, Dict[str, Any]] = {}
    again = again_costs(repeats)
    for name in variants["now"][0]:
        for cases, R_ in variants.values():
            R_.release(cases[name]())  # warm-up: font cache, first-use costs
        t: Dict[str, Dict[str, List[float]]] = {v: defaultdict(list) for v in variants}
        px: Dict[str, Any] = {}
        for r in range(repeats):
            for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                cases, R_ = variants[v]
                once = _time_once(cases[name], R_)
                px[v] = once.pop("px")
                for k, x in once.items():
                    t[v][k].append(x)
        row: Dict[str, Any] = {k: float(np.median(x)) * 1e3 for k, x in t["now"].items()}
        row["px"] = px["now"]
        if baseline:
            row["base"] = {k: float(np.median(x)) * 1e3 for k, x in t["base"].items()}
            row["base"]["px"] = px["base"]
            row["ratio"] = median_ci([a / b for a, b in zip(t["now"]["total"], t["base"]["total"])])
        out[name] = row
        if name in again:
            row["again"] = again[name]
        print(f"  {name}: " + " ".join(f"{k}={v:.1f}" for k, v in row.items() if isinstance(v, float)), file=sys.stderr, flush=True)
    return out


def figure_table(costs: Dict[str, Dict[str, Any]], command: str) -> str:
    base = any("base" in c for c in costs.values())
    head = "| figure | size (px) | build | render (draw + PNG) | of which PNG | release | total (ms) | drawn again in place (ms) |"
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    if base:
        head += " baseline total (ms) | now / baseline |"
        rule += "---:|---|"
    lines = [f"`{command}`", "", head, rule]
    for name, c in costs.items():
        again = f"{c['again']:.1f}" if "again" in c else "—"
        line = (f"| {name} | {c['px'][0]}×{c['px'][1]} | {c['build']:.1f} | {c['render']:.1f} | {c['encode']:.1f} | "
                f"{c['release']:.1f} | {c['total']:.1f} | {again} |")
        if base:
            line += f" {c['base']['total']:.1f} | {_ci(c['ratio'])} |"
        lines.append(line)
    if base:
        lines += ["", "Now and baseline interleaved in one process; ratio: median of per-repeat total-time ratios "
                  "[bootstrap 95 % CI]."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated, of {', '.join(CLIENTS + tuple(VARIANTS))}")
    p.add_argument("--repeats", type=int, default=3, help="rounds of interleaved arms (figures: repeats per kind)")
    p.add_argument("--steps", default="100,25", help="steps per epoch, comma-separated (>= 100 and 25 by default)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per fit")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)} (plain is always run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures", action="store_true", help="cost of each panel figure kind instead of the fits")
    p.add_argument("--baseline", default="", help="with --figures: a git ref whose panels/figures.py and "
                   "rendering.py are timed interleaved with the current ones")
    p.add_argument("--smoke", action="store_true", help="< 30 s: cnn, 8-step epochs, 1 epoch, 1 round, arms plain,all,floor")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    command = "python benchmarks/overhead_clients.py " + " ".join(sys.argv[1:] if argv is None else argv)
    quiet()
    set_threads(1)
    if args.figures:
        costs = figure_costs(max(args.repeats, 1), args.baseline)
        print(figure_table(costs, command.strip()))
        if args.out:
            Path(args.out).write_text(json.dumps({"command": command, "figures": costs}, indent=1))
        return 0
    clients = [c for c in args.clients.split(",") if c]
    arms = [a for a in args.arms.split(",") if a]
    steps = [int(s) for s in args.steps.split(",") if s]
    epochs, repeats = args.epochs, args.repeats
    if args.smoke:
        clients, steps, epochs, repeats, arms = ["cnn"], [8], 1, 1, ["plain", "all", "floor"]
    bad = [c for c in clients if c not in CLIENTS and c not in VARIANTS] + [a for a in arms if a not in ARMS]
    if bad:
        p.error(f"unknown client(s) / arm(s) {bad}; clients: {list(CLIENTS) + list(VARIANTS)}, arms: {list(ARMS)}")
    if "plain" not in arms:
        arms.insert(0, "plain")
    results = []
    for c in clients:
        for s in steps:
            results.append(run_case(c, s, epochs, max(repeats, 1), arms, args.seed))
            if args.out:  # after every case: a long run stopped early keeps what it measured
                Path(args.out).write_text(json.dumps({"command": command, "results": results}, indent=1, default=float))
    print(table(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
