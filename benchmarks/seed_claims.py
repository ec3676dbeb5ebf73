r"""The seed documents' claims, measured on the client zoo: one table, one command.

Every row is a claim of ``../shared/seeds/`` (the paper, the framework overview, the NN-fMRI
methodology) with the seed's figure, our measurement over real ``Trainer.fit`` runs (mean ± sd over
runs and the range, from :func:`_clientfit.mean_sd_range`) and a one-line reading. Statistics come
from scipy (``scipy.stats.kruskal``, ``spearmanr``, ``pearsonr``); the numbers from the callbacks'
public attributes after each fit (``NNEEGCallback.band_power``/``band_powers``/``state_accuracy``/
``classifier``, ``NNfMRICallback.zeta``/``zeta_max``/``density``/``lam``/``eps``,
``CrossModalCallback.consistency``/``components``/``scores``).

Runs, per architecture of :func:`~nn_neuroimaging_lightning.demo.clients.make_client` (``--archs``,
default ``cnn resnet lstm gpt2 bert``: the reference CNN, the ResNet with BatchNorm, the LSTM, the
tiny GPT-2 and the tiny BERT) and seed (``--seeds``, default ``0,1,2``; ``seed_everything(seed)``):

* **plain**: the three callbacks at their defaults, ``--epochs`` x ``--steps`` training batches
  (default 3 x 96) with a validation loop of ``--val-steps`` batches (default 48, i.e. three
  16-sample inference windows) every epoch; no stalls, no faults. ``Trainer(log_every_n_steps=5)``
  (the trainer's argument, not a callback's: NN-EEG analyses every 5 steps once its 128-sample ring
  holds ``nperseg`` = 64 training samples, i.e. from the 64th step of an epoch after the validation
  loop and its idle gap have filled the ring: ~20 band-power spectra per layer and run; they overlap). Gives the state rows (ordinary runs), the spectral rows and the
  "zeta maps at the defaults" row.
* **zeta**: the same fit with ``NNfMRICallback(grid=(4, 4, 4), zeta_time_fraction=None,
  zeta_budget=--zeta-budget, probe_size=32, zeta_every_n_epochs=--zeta-epochs)``, ``--zeta-epochs``
  (default 2) epochs: one fixed-budget zeta evaluation at the end of the fit. Decision: at the defaults (8x8x4 grid, 5 % of the training
  time) a 200-300-step fit buys no lesion sample for any conv or transformer block (the "zeta maps at
  the defaults" row says how many layers got one), so every zeta row would be empty; the coarser
  grid is the demo's (``configs/demo.yaml``), the fixed budget (1024 value rows: 8 antithetic
  pairs, 16 permutations, for a 64-region layer) makes every layer's map comparable. A separate fit, because a
  long zeta evaluation inside the plain fit would be an idle gap to NN-EEG. Gives the zeta rows,
  corr(gamma, max zeta) and the cross-modal consistency.
* **faults** (state rows on stalls and faults): the runs of ``benchmarks/eeg_states.py``, its own
  code (``eeg_states.run``: its three architectures, data-loader stalls of ``--stall`` s after every
  ``--stall-every``-th batch, NaN activations in the last 40 training steps), shortened to
  ``--fault-epochs`` x ``--fault-batches``. Its recorded windows are replayed one window at a time
  (``eeg_states.replay``) with and without the cadence.

**The state features** (:mod:`~nn_neuroimaging_lightning.functional.states`), what each measures:
per layer and 16-sample window of ``s_t = mean |a|`` (one sample per forward): ``level`` (log mean
activity), ``log_cv`` (its variability), ``lag1`` (lag-1 autocorrelation: slow drift while the
weights move), ``trend`` (R² of a straight line in time, ditto), ``non_finite`` (share of NaN/Inf
samples: the error state, by rule), ``silent`` (share of exact zeros: the idle gaps the callback
writes, by rule), ``rel_<band>`` (relative Welch band powers, five); per window, ``cadence``: the
median CPU time of the main thread between consecutive samples relative to recent training
windows. The cadence is a property of the **loop**, not of the activity signal: a training forward
is followed by a backward pass and an optimizer step, an inference forward is not, so training
samples arrive 2-3x further apart. "Without the timing feature" = the same recorded windows with
the cadence column set to 0 in every window: a constant column carries no information to the
classifier (equal class means, zero within-class variance; the cold-start cadence rule never fires
since ``0 > log 0.7``), so this equals a classifier without the column up to the shrinkage
constant, which depends on the column count.

**Held-out windows.** *same run, after calibration*: ``eeg_states.replay``, the callback's
prequential loop replayed (each window predicted before the classifier learns it), counting only
windows of states with ``min_count`` earlier windows. *other seeds' runs*: a classifier calibrated
on all windows of one seed's run predicts every window of the other seeds' runs of the same
architecture. Balanced accuracy = mean recall over the states present (``eeg_states.balanced``);
plain runs have two states (training, inference), fault runs four.

**Spectral rows** (plain runs): after each NN-EEG analysis, the absolute band power of every band
and layer (``band_power(band)``). Kruskal-Wallis across layers (groups = layers, observations =
the analyses of the architecture's runs, all seeds pooled) on ``log10`` total power (sum of the bands) and, per band, on relative band power
(the spectrum's shape, free of the layers' scale); attenuation = ``log10(P_first / P_last)``
(first and last tapped layer in forward order, median over the analyses; positive = power falls
with depth), and Spearman's rho between depth and ``log10 P``. **Zeta rows** (zeta runs): critical
share = significant regions (interval excludes 0) over all regions of the layers with a map; zeta
range = min and max over those regions (our zeta is in loss units, minus cross-entropy, not the
seed's unitless z-score); grid coverage = share of regions whose density is above the floor a
silent region has, ``phi - lam log(eps) > 1 %`` of the layer's largest such margin (``phi = mean|a|
+ lam log(var + eps)``, so a region with no activity sits at ``lam log eps``). corr(gamma, max zeta)
= Spearman (the cross-modal callback's definition) and Pearson (the seed's ``corr``) across the
layers that have both, per run (undefined below 3 layers: the LSTM has 2).

**Rows from other benchmarks** (not measured twice): JSON files in ``--results`` (default
``build/benchmarks``): ``alarms.json`` (``benchmarks/alarms.py --out``: steps from an injected
NaN / x1e3 / dead layer to its event), ``eeg_overhead.json`` (keys ``analysis_latency_ms``,
``ab_ratio``), ``memory.json`` (key ``extra_mib``), ``overhead_clients.json`` (key ``ratio`` per
record, or ``overhead_pct``). A missing file or key gives ``not measured: run ...``.

Run::

    python benchmarks/seed_claims.py --jobs 2 --out build/seed_claims.json   # 5 archs x 3 seeds
    python benchmarks/seed_claims.py --smoke                                 # 1 arch, 1 seed (tests)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _clientfit as CF  # noqa: E402

ARCHS: Tuple[str, ...] = ("cnn", "resnet", "lstm", "gpt2", "bert")
#: eeg_states.py's architectures (its own models; the fault rows).
FAULT_ARCHS: Tuple[str, ...] = ("reference_cnn", "dropout_mlp", "tiny_transformer")
ZETA_GRID = (4, 4, 4)
RESULTS_DIR = Path("build/benchmarks")
_FLOOR_SHARE = 0.01  # grid coverage: density margin over the silent floor, share of the layer's largest


# ------------------------------------------------------------------ recording inside a fit
def _record_updates(eeg: Any) -> List[Tuple[Any, Any]]:
    """Record every batch of windows the callback's classifier learns from (as eeg_states.run does)."""
    seen: List[Tuple[Any, Any]] = []
    update = eeg.classifier.update

    def recording_update(features, labels):  # noqa: ANN001
        seen.append((features.detach().clone(), labels.detach().clone()))
        update(features, labels)

    eeg.classifier.update = recording_update
    return seen


def _band_recorder(eeg: Any) -> Any:
    from lightning.pytorch import Callback

    class BandRecorder(Callback):
        """After each NN-EEG analysis (its relative band powers changed), the absolute band powers."""

        def __init__(self) -> None:
            self.analyses: List[Dict[str, Dict[str, float]]] = []
            self._last: Any = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            rel = eeg.band_powers
            if rel and rel != self._last:
                self._last = rel
                per_band = {b: eeg.band_power(b) for b in eeg.bands}
                self.analyses.append({layer: {b: per_band[b][layer] for b in eeg.bands} for layer in rel})

    return BandRecorder()


def _zeroed(seen: Sequence[Tuple[Any, Any]]) -> List[Tuple[Any, Any]]:
    """The windows with the cadence (the last, window-level column) set to 0: no timing information."""
    out = []
    for f, y in seen:
        g = f.clone()
        g[:, -1] = 0.0
        out.append((g, y))
    return out


def _singles(features: Any, labels: Any) -> List[Tuple[Any, Any]]:
    return [(features[i : i + 1], labels[i : i + 1]) for i in range(features.shape[0])]


def _ba(conf: Any) -> float:
    """Balanced accuracy of a confusion matrix (``eeg_states.balanced``); NaN when no window was counted."""
    import eeg_states as ES

    return ES.balanced(conf) if int(conf.sum()) > 0 else float("nan")


def _state_block(seen: List[Tuple[Any, Any]]) -> Dict[str, Any]:
    """Same-run accuracies after calibration, with and without the cadence, plus the raw windows."""
    import torch

    import eeg_states as ES

    if not seen:
        return {"windows": [0, 0, 0, 0]}
    features = torch.cat([f for f, _ in seen])
    labels = torch.cat([y for _, y in seen])
    return {
        "same_run_cadence": _ba(ES.replay(seen)),
        "same_run_no_cadence": _ba(ES.replay(_zeroed(seen))),
        "windows": [int(c) for c in torch.bincount(labels, minlength=4)],
        "_features": features,
        "_labels": labels,
    }


# ------------------------------------------------------------------ per-run measurements
def _spectral(analyses: List[Dict[str, Dict[str, float]]], order: List[str]) -> Dict[str, Any]:
    import numpy as np
    from scipy import stats

    out: Dict[str, Any] = {"analyses": len(analyses)}
    layers = [n for n in order if analyses and all(n in a for a in analyses)]
    if len(analyses) < 2 or len(layers) < 2:
        out["undefined"] = f"{len(analyses)} analyses, {len(layers)} layers"
        return out
    bands = list(analyses[0][layers[0]])
    absp = np.array([[[a[n][b] for b in bands] for n in layers] for a in analyses], dtype=float)  # (A, L, B)
    total = absp.sum(-1)  # (A, L)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log10(total)
        rel = absp / total[..., None]
    ok = np.isfinite(logp).all(1) & np.isfinite(rel).all((1, 2))
    logp, rel = logp[ok], rel[ok]
    out["layers"] = layers
    if len(logp) < 2:
        out["undefined"] = "fewer than 2 finite analyses"
        return out
    out["log10_total_power"] = np.median(logp, 0).tolist()
    out["log10_total"], out["rel"], out["bands"] = logp.tolist(), rel.tolist(), bands  # (A, L), (A, L, B)
    out["kw_total"] = _kruskal([logp[:, i] for i in range(len(layers))])
    out["kw_rel"] = {b: _kruskal([rel[:, i, j] for i in range(len(layers))]) for j, b in enumerate(bands)}
    out["orders_first_last"] = float(np.median(logp[:, 0] - logp[:, -1]))
    if len(layers) >= 3:
        rho = stats.spearmanr(np.arange(len(layers)), np.median(logp, 0)).statistic
        out["depth_spearman"] = float(rho)
    return out


def _kruskal(groups: List[Any]) -> Dict[str, float]:
    from scipy import stats

    try:
        res = stats.kruskal(*groups)
        return {"H": float(res.statistic), "p": float(res.pvalue)}
    except ValueError:  # all observations identical
        return {"H": float("nan"), "p": float("nan")}


def _zeta_measures(fmri: Any, eeg: Any, xm: Any, arch: str) -> Dict[str, Any]:
    import numpy as np
    from scipy import stats

    out: Dict[str, Any] = {"layers": list(fmri.layers), "zeta_layers": sorted(fmri.zeta)}
    zeta = fmri.zeta
    if zeta:
        scores = np.concatenate([z.scores.reshape(-1).numpy() for z in zeta.values()])
        sig = np.concatenate([z.significant.reshape(-1).numpy() for z in zeta.values()])
        out["critical_share"] = float(sig.mean())
        out["zeta_min"], out["zeta_max"] = float(scores.min()), float(scores.max())
        out["permutations"] = {n: int(z.n_permutations) for n, z in zeta.items()}
    else:
        out["undefined_zeta"] = f"no zeta map on {arch}"
    floor = fmri.lam * math.log(fmri.eps)
    covered, regions = 0, 0
    for phi in fmri.density.values():
        margin = phi.reshape(-1).double().numpy() - floor
        margin = margin[np.isfinite(margin)]
        if not len(margin) or margin.max() <= 0:
            regions += len(margin)
            continue
        covered += int((margin > _FLOOR_SHARE * margin.max()).sum())
        regions += len(margin)
    out["coverage"] = covered / regions if regions else float("nan")
    gamma = eeg.band_power("gamma")
    both = [n for n in eeg.layers if n in gamma and n in fmri.zeta_max]
    out["corr_layers"] = both
    if len(both) >= 3:
        g = np.array([gamma[n] for n in both])
        z = np.array([fmri.zeta_max[n] for n in both])
        if np.ptp(g) > 0 and np.ptp(z) > 0:
            out["corr_spearman"] = float(stats.spearmanr(g, z).statistic)
            out["corr_pearson"] = float(stats.pearsonr(g, z).statistic)
        else:
            out["undefined_corr"] = "a constant series"
    else:
        out["undefined_corr"] = f"{len(both)} layer(s) with both a gamma power and a zeta map" + (
            f" ({arch}: no zeta map)" if not zeta else "")
    c = xm.consistency
    out["consistency"] = float(c) if c is not None else float("nan")
    out["consistency_components"] = {k: float(v) for k, v in xm.components.items()}
    if c is None or not math.isfinite(c):
        und = xm.scores[-1]["undefined"] if xm.scores else {"consistency": "no zeta evaluation"}
        out["undefined_consistency"] = und.get("consistency", "") + "; " + "; ".join(
            f"{k}: {v}" for k, v in und.items() if k != "consistency")
    return out


def run_task(task: Dict[str, Any]) -> Dict[str, Any]:
    """One fit (in a worker process with one torch thread)."""
    CF.quiet()
    CF.set_threads(1)
    t0 = time.perf_counter()
    kind, arch, seed = task["kind"], task["arch"], task["seed"]
    out: Dict[str, Any] = {"kind": kind, "arch": arch, "seed": seed}
    if kind == "faults":
        import eeg_states as ES

        r = ES.run(arch, seed, task["epochs"], task["batches"], task["val_batches"], task["stall"],
                   stall_every=task["stall_every"])
        out.update(_state_block(_singles(r["features"], r["labels"])))
        out["callback_balanced"] = _ba(r["conf"])
        out["seconds"] = time.perf_counter() - t0
        return out

    from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback

    eeg = NNEEGCallback()
    if kind == "plain":
        fmri = NNfMRICallback()
    else:
        fmri = NNfMRICallback(grid=ZETA_GRID, zeta_time_fraction=None, zeta_budget=task["zeta_budget"], probe_size=32,
                              zeta_every_n_epochs=task["epochs"])
    xm = CrossModalCallback()
    seen = _record_updates(eeg) if kind == "plain" else []
    bands = _band_recorder(eeg)
    trainer, _, seconds = CF.fit_client(
        arch, seed, [eeg, bands, fmri, xm], steps_per_epoch=task["steps"], epochs=task["epochs"],
        trainer_kwargs={"log_every_n_steps": task["log_every"]}, client_kwargs={"val_steps": task["val_steps"]},
        logger=task.get("logger", True))
    if kind == "plain":
        del eeg.classifier.update  # back to the method
    out["fit_seconds"] = seconds
    if kind == "plain":
        out.update(_state_block(seen))
        out["callback_balanced"] = _ba(eeg.state_accuracy.confusion_matrix())
        logged = trainer.callback_metrics.get("nn_eeg/state_accuracy")
        out["logged_state_accuracy"] = float(logged) if logged is not None else float("nan")
        out["spectral"] = _spectral(bands.analyses, list(eeg.layers))
        out["default_zeta_layers"] = sorted(fmri.zeta)
        out["layers"] = list(fmri.layers)
    else:
        out.update(_zeta_measures(fmri, eeg, xm, arch))
    out["seconds"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------ across runs
def _cross_run(runs: List[Dict[str, Any]], cadence: bool) -> List[float]:
    """Per run: a classifier calibrated on all its windows predicts the other seeds' runs (same arch).

    Each run's figure is also kept in its record (``cross_cadence`` / ``cross_no_cadence``), so the
    table re-made from ``--out`` JSON (``--from-json``, which has no windows) has these rows too.
    """
    import torch

    from nn_neuroimaging_lightning import NNEEGCallback
    from nn_neuroimaging_lightning.functional import states as FST

    key = "cross_cadence" if cadence else "cross_no_cadence"
    out = []
    for arch in sorted({r["arch"] for r in runs}):
        rs = [r for r in runs if r["arch"] == arch and "_features" in r]
        if not rs:  # records read back from JSON: the figures computed when the windows were there
            out += _vals([r for r in runs if r["arch"] == arch], key)
            continue
        for r in rs:
            others = [o for o in rs if o is not r]
            if not others:
                continue
            f = r["_features"] if cadence else _zeroed([(r["_features"], None)])[0][0]
            ref = NNEEGCallback().classifier  # the callback's own classifier settings, as eeg_states.replay
            clf = FST.StateClassifier(num_bands=ref.num_bands, window_features=ref.window_features)
            clf.update(f, r["_labels"])
            conf = torch.zeros(4, 4, dtype=torch.long)
            for o in others:
                fo = o["_features"] if cadence else _zeroed([(o["_features"], None)])[0][0]
                conf += FST.state_confusion_matrix(clf.predict(fo), o["_labels"])
            r[key] = _ba(conf)
            out.append(r[key])
    return out


def _vals(runs: List[Dict[str, Any]], key: str) -> List[float]:
    return [float(r[key]) for r in runs if key in r and r[key] is not None and math.isfinite(float(r[key]))]


def _pct(values: Sequence[float]) -> str:
    return CF.mean_sd_range([100 * v for v in values]).replace(" (", " % (").replace(")", " %)") if values else "n/a"


def _p_summary(ps: List[float]) -> str:
    import numpy as np

    ps = [p for p in ps if math.isfinite(p)]
    if not ps:
        return "n/a"
    return f"median p = {np.median(ps):.2g} ({min(ps):.2g}–{max(ps):.2g}); p < 0.001 in {sum(p < 1e-3 for p in ps)}/{len(ps)}"


def _pooled_kw(plain: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Kruskal-Wallis across layers per architecture, the analyses of all its seeds' runs pooled."""
    import numpy as np

    out: Dict[str, Dict[str, Any]] = {}
    for arch in sorted({r["arch"] for r in plain}):
        specs = [r["spectral"] for r in plain if r["arch"] == arch]
        logp = np.concatenate([np.asarray(s["log10_total"]) for s in specs])  # (A, L)
        rel = np.concatenate([np.asarray(s["rel"]) for s in specs])  # (A, L, B)
        if len(logp) < 2:
            continue
        out[arch] = {"total": _kruskal(list(logp.T)),
                     "rel": {b: _kruskal(list(rel[:, :, j].T)) for j, b in enumerate(specs[0]["bands"])}}
    return out


def _external(results: Path) -> Dict[str, Tuple[str, str]]:
    """Rows taken from the other benchmarks' JSON outputs: ``{row: (measurement, reading)}``."""
    import numpy as np

    def load(name: str) -> Any:
        p = results / name
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def find(obj: Any, keys: Sequence[str]) -> List[float]:
        found: List[float] = []
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                    found.append(float(v))
                else:
                    found += find(v, keys)
        elif isinstance(obj, list):
            for v in obj:
                found += find(v, keys)
        return found

    out: Dict[str, Tuple[str, str]] = {}
    alarms = load("alarms.json")
    lat, ms = [], []
    for r in alarms or []:
        if isinstance(r, dict) and r.get("fault") in CF.TARGET_FAULTS and r.get("fault_step") is not None:
            k = r["fault_step"]
            hits = [e["step"] - k for e in r["events"] if e["kind"] in CF.FAULTS[r["fault"]] and e["step"] >= k]
            if hits:
                lat.append(min(hits))
                if r.get("steps"):
                    ms.append((min(hits) + 1) * 1000 * r["seconds"] / r["steps"])
    if lat:
        out["latency"] = (f"{CF.mean_sd_range(lat)} steps; ≤ {CF.mean_sd_range(ms)} ms (latency + 1 steps × the run's mean step time)",
                          f"{'holds' if max(ms) < 50 else 'does not hold in every run'}: detected in the step of the fault or the next ({len(lat)} runs, alarms.py)")
    else:
        out["latency"] = (f"not measured: run benchmarks/alarms.py --out {results / 'alarms.json'}", "")
    over = load("eeg_overhead.json")
    alat = find(over, ("analysis_latency_ms",))
    out["analysis_latency"] = ((f"{CF.mean_sd_range(alat)} ms", f"{'holds' if max(alat) < 50 else 'does not hold'} (eeg_overhead.py)")
                               if alat else (f"not measured: run benchmarks/eeg_overhead.py (writes {results / 'eeg_overhead.json'})", ""))
    mem_json = load("memory.json")
    # memory.py --out: the three callbacks' extra at the top level; its "variants" (no callback,
    # no panels) are not the claim's figure
    mem = [float(mem_json["extra_mib"])] if isinstance(mem_json, dict) and isinstance(mem_json.get("extra_mib"), (int, float)) \
        else find(mem_json, ("extra_mib",))
    renderer = mem_json.get("renderer_peak_mib") if isinstance(mem_json, dict) else None
    out["memory"] = ((f"+{CF.mean_sd_range(mem)} MiB extra peak RSS"
                      + (f" (+ the renderer process's own {renderer:.0f} MiB)" if isinstance(renderer, (int, float)) and renderer > 0 else ""),
                      "the seed's 15–25 MB is a footprint, ours the extra over a fit without callbacks (memory.py)")
                     if mem else (f"not measured: run benchmarks/memory.py (writes {results / 'memory.json'})", ""))
    oc = load("overhead_clients.json")
    # overhead_clients.py --out: {"results": [{"client", "steps_per_epoch", "ratio": {"all": [median, low, high]}}]}
    runs = [r for r in (oc or {}).get("results", []) if isinstance(r.get("ratio"), dict) and r["ratio"].get("all")] \
        if isinstance(oc, dict) else []
    # the seed's claim is a per-step overhead: the longest epochs measured (per-epoch costs amortised)
    longest = max((int(r.get("steps_per_epoch", 0)) for r in runs), default=0)
    ratios = [float(r["ratio"]["all"][0]) for r in runs if int(r.get("steps_per_epoch", 0)) == longest]
    ratios = ratios or find(oc, ("ratio", "ab_ratio"))
    pct = find(oc, ("overhead_pct",)) or [100 * (r - 1) for r in ratios]
    if not pct:
        pct = [100 * (r - 1) for r in find(over, ("ab_ratio",))]
        src = "eeg_overhead.py, reference CNN"
    else:
        src = f"overhead_clients.py, all three at defaults, {longest}-step epochs" if ratios else "overhead_clients.py"
    out["overhead"] = ((f"{CF.mean_sd_range(pct)} % of the step", f"{'holds' if np.max(pct) < 2.1 else 'does not hold'} ({src})")
                       if pct else (f"not measured: run benchmarks/overhead_clients.py (writes {results / 'overhead_clients.json'})", ""))
    return out


def table(records: List[Dict[str, Any]], results: Path = RESULTS_DIR,
          saved: Optional[Dict[str, Dict[str, str]]] = None) -> Tuple[str, List[Dict[str, str]]]:
    """The Markdown table and its rows (``claim``, ``seed``, ``measured``, ``reading``).

    ``saved``: the rows of an earlier ``--out`` JSON by claim; a row these records cannot make
    (0 runs: e.g. the other-seeds rows of a JSON written before their figures were kept per run)
    is taken from there.
    """
    import numpy as np

    plain = [r for r in records if r["kind"] == "plain"]
    zruns = [r for r in records if r["kind"] == "zeta"]
    faults = [r for r in records if r["kind"] == "faults"]
    rows: List[Dict[str, str]] = []

    def row(claim: str, seed: str, measured: str, reading: str, n: Any = "") -> None:
        old = (saved or {}).get(claim)
        if str(n) == "0" and old is not None and old.get("runs") not in (None, "", "0"):
            rows.append(dict(old))
            return
        rows.append({"claim": claim, "seed": seed, "measured": measured, "runs": str(n), "reading": reading})

    def archs(rs: List[Dict[str, Any]]) -> str:
        return ", ".join(sorted({r["arch"] for r in rs}, key=lambda a: (ARCHS + FAULT_ARCHS).index(a) if a in ARCHS + FAULT_ARCHS else 99))

    def verdict(values: List[float], ok, unit: str = "runs") -> str:  # noqa: ANN001
        if not values:
            return "n/a"
        hold = sum(bool(ok(v)) for v in values)
        return "holds" if hold == len(values) else ("does not hold" if hold == 0 else f"holds in {hold}/{len(values)} {unit}")

    def states(rs: List[Dict[str, Any]]) -> str:
        names = ("training", "inference", "idle", "error")
        total = np.sum([r["windows"] for r in rs], 0)
        return "windows " + ", ".join(f"{n} {int(c)}" for n, c in zip(names, total))

    seed_acc = "94.2 % ± 2.1 %"
    for label, rs in (("ordinary runs", plain), ("stall/fault runs (eeg_states.py)", faults)):
        if not rs:
            continue
        for cad, key in ((True, "same_run_cadence"), (False, "same_run_no_cadence")):
            v = _vals(rs, key)
            row(f"state balanced accuracy, {label}, same run after calibration, {'with' if cad else 'without'} the cadence",
                seed_acc, _pct(v), f"{verdict(v, lambda x: x >= 0.921)} (≥ 92.1 %); {states(rs)}; {archs(rs)}", len(v))
        for cad in (True, False):
            v = _cross_run(rs, cad)
            row(f"state balanced accuracy, {label}, other seeds' runs, {'with' if cad else 'without'} the cadence",
                seed_acc, _pct(v), f"{verdict(v, lambda x: x >= 0.921)} (≥ 92.1 %); calibrated on one seed, tested on the others", len(v))
        v = _vals(rs, "callback_balanced")
        row(f"state balanced accuracy, {label}, the callback's own prequential figure (from the first window)", seed_acc,
            _pct(v), f"{verdict(v, lambda x: x >= 0.921)}; cold-start windows included", len(v))
    if plain:
        v = _vals(plain, "logged_state_accuracy")
        row("logged `nn_eeg/state_accuracy` (plain accuracy, prequential), ordinary runs", seed_acc, _pct(v),
            "what a user sees in TensorBoard", len(v))
        spec = [r["spectral"] for r in plain if "kw_total" in r.get("spectral", {})]
        pooled = _pooled_kw([r for r in plain if "kw_total" in r.get("spectral", {})])
        ps = [k["total"]["p"] for k in pooled.values()]
        hs = [k["total"]["H"] for k in pooled.values()]
        n_an = sum(s["analyses"] for s in spec) / max(len(pooled), 1)
        row("layers differ: Kruskal–Wallis across layers, log10 total band power (per architecture, its seeds' analyses pooled)",
            "p < 0.001 (\"large effect sizes between layers\")", f"H = {CF.mean_sd_range(hs)}; {_p_summary(ps)}",
            f"{verdict(ps, lambda p: p < 1e-3, 'architectures')} at p < 0.001 (~{n_an:.0f} analyses per layer and architecture; "
            "consecutive analyses share samples, so p is optimistic)", f"{len(ps)} archs")
        prel = [p["p"] for k in pooled.values() for p in k["rel"].values()]
        row("layer spectra differ in shape: Kruskal–Wallis across layers, relative power, per band (per architecture, pooled)",
            "\"distinct frequency signatures\"", _p_summary(prel) + " (architecture × band)",
            f"{verdict(prel, lambda p: p < 1e-3, '(architecture, band) pairs')} at p < 0.001", f"{len(prel)} pairs")
        orders = [s["orders_first_last"] for s in spec]
        rho = [s["depth_spearman"] for s in spec if "depth_spearman" in s]
        row("total power attenuates with depth: orders of magnitude, first → last tapped layer", "~3 orders over 5 layers",
            f"{CF.mean_sd_range(orders)} orders; Spearman(depth, log10 power) {CF.mean_sd_range(rho)}",
            f"{verdict(orders, lambda o: o >= 2)} (≥ 2 orders)" + ("; the opposite: power grows with depth in every run"
                                                                if orders and max(orders) < 0 else "; negative = power grows with depth"), len(orders))
        dz = [len(r["default_zeta_layers"]) / max(len(r["layers"]), 1) for r in plain]
        row("layers with a zeta map at the library defaults (counted 5 % share since issue 13; the 8x8x4 time share before), this fit length", "(maps on every layer)",
            _pct(dz), "why the zeta rows use a fixed budget (see docstring)", len(dz))
    if zruns:
        missing = sorted({r["arch"] for r in zruns if not r["zeta_layers"]})
        note = f"; no zeta map on {', '.join(missing)}: n/a" if missing else ""
        for claim, seed, key, ok, fmt in (
            ("share of critical regions (zeta interval excludes 0)", "10–20 % of the grids", "critical_share", lambda x: 0.1 <= x <= 0.2, _pct),
            ("zeta range: smallest region score", "−2", "zeta_min", None, CF.mean_sd_range),
            ("zeta range: largest region score", "8", "zeta_max", None, CF.mean_sd_range),
            ("grid coverage: regions with meaningful activity (density above the silent floor)", "> 80 %", "coverage", lambda x: x > 0.8, _pct),
        ):
            v = _vals(zruns, key)
            reading = (verdict(v, ok) if ok else "loss units (−cross-entropy), not the seed's z-scores") + note
            if key == "coverage":
                reading = verdict(v, ok) + " (densities exist on every client)"
            row(claim, seed, fmt(v), reading, len(v))
        for key, name in (("corr_spearman", "Spearman"), ("corr_pearson", "Pearson")):
            v = _vals(zruns, key)
            und = sorted({f"{r['arch']}: {r['undefined_corr']}" for r in zruns if "undefined_corr" in r})
            row(f"corr(EEG gamma power, max zeta) across layers, {name}", "> 0.7", CF.mean_sd_range(v),
                f"{verdict(v, lambda x: x > 0.7)}" + (f"; undefined on {'; '.join(und)}" if und else ""), len(v))
        v = _vals(zruns, "consistency")
        und = sorted({r["arch"] for r in zruns if "undefined_consistency" in r})
        row("cross-modal consistency (CrossModalCallback.consistency)", "> 80 %", _pct(v),
            f"{verdict(v, lambda x: x > 0.8)}" + (f"; undefined (rho undefined) on {', '.join(und)}" if und else ""), len(v))
    ext = _external(results)
    row("NN-EEG detection latency (injected NaN / weights x1e3 / dead layer → event)", "< 50 ms", *ext["latency"])
    row("NN-EEG analysis latency per analysis", "< 50 ms per batch", *ext["analysis_latency"])
    row("memory", "15–25 MB", *ext["memory"])
    row("overhead (step time with / without the callbacks − 1)", "< 2.1 %", *ext["overhead"])
    lines = ["| claim | seed | measured: mean ± sd (range) | runs | reading |", "|---|---|---|---:|---|"]
    lines += [f"| {r['claim']} | {r['seed']} | {r['measured']} | {r['runs']} | {r['reading']} |" for r in rows]
    return "\n".join(lines), rows


# ------------------------------------------------------------------ command line
def tasks_for(args: argparse.Namespace) -> List[Dict[str, Any]]:
    common = dict(steps=args.steps, epochs=args.epochs, val_steps=args.val_steps, log_every=args.log_every,
                  zeta_budget=args.zeta_budget, logger=not args.smoke)
    out = [dict(common, kind="plain", arch=a, seed=s) for a in args.archs for s in args.seeds]
    out += [dict(common, kind="zeta", arch=a, seed=s, epochs=args.zeta_epochs) for a in args.archs for s in args.seeds]
    out.sort(key=lambda t: (t["arch"] != "resnet", t["kind"] != "zeta"))  # the longest fits first
    out += [dict(kind="faults", arch=a, seed=s, epochs=args.fault_epochs, batches=args.fault_batches,
                 val_batches=args.fault_val_batches, stall=args.stall, stall_every=args.stall_every)
            for a in args.fault_archs for s in args.seeds]
    return out


def _csv(s: str) -> List[str]:
    return [x for x in s.split(",") if x]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS), help=f"clients of make_client (default {','.join(ARCHS)})")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--fault-archs", default=",".join(FAULT_ARCHS), help="eeg_states.py architectures ('' for none)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--zeta-epochs", type=int, default=2, help="epochs of the zeta fits (one evaluation at the end)")
    parser.add_argument("--steps", type=int, default=96, help="training batches per epoch")
    parser.add_argument("--val-steps", type=int, default=48)
    parser.add_argument("--log-every", type=int, default=5, help="Trainer(log_every_n_steps): NN-EEG's analysis period")
    parser.add_argument("--zeta-budget", type=int, default=1024)
    parser.add_argument("--fault-epochs", type=int, default=4)
    parser.add_argument("--fault-batches", type=int, default=64)
    parser.add_argument("--fault-val-batches", type=int, default=32)
    parser.add_argument("--stall", type=float, default=0.6)
    parser.add_argument("--stall-every", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where the other benchmarks' JSON outputs are")
    parser.add_argument("--from-json", default=None, help="no fits: the table of an earlier --out JSON's runs")
    parser.add_argument("--out", default=None, help="write the raw per-run numbers and the rows as JSON here")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--smoke", action="store_true",
                        help="cnn and reference_cnn, seed 0, 2 x 80 steps, no logger (no panels to draw; the test suite)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.archs, args.seeds, args.fault_archs = "cnn", "0", "reference_cnn"
        args.epochs, args.zeta_epochs, args.steps, args.val_steps, args.log_every, args.zeta_budget = 2, 2, 80, 80, 4, 256
        args.fault_epochs, args.fault_batches, args.fault_val_batches, args.stall, args.stall_every = 2, 64, 64, 0.6, 32
        args.jobs = 1
    from nn_neuroimaging_lightning.demo.clients import CLIENTS

    args.archs, args.fault_archs = _csv(args.archs), _csv(args.fault_archs)
    bad = [a for a in args.archs if a not in CLIENTS] + [a for a in args.fault_archs if a not in FAULT_ARCHS]
    if bad:
        parser.error(f"unknown architecture(s) {bad}; --archs from {list(CLIENTS)}, --fault-archs from {list(FAULT_ARCHS)}")
    try:
        args.seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.from_json:  # re-make the table from an earlier run's records (e.g. with new JSON from the other benchmarks)
        data = json.loads(Path(args.from_json).read_text())
        records = data["runs"]
        md, _ = table(records, Path(args.results), saved={r["claim"]: r for r in data.get("rows", []) if "claim" in r})
        print(md)
        if args.markdown:
            Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
            Path(args.markdown).write_text(md + "\n")
        return 0
    CF.quiet()
    tasks = tasks_for(args)
    t0 = time.perf_counter()
    def done(r: Dict[str, Any]) -> Dict[str, Any]:
        print(f"{r['kind']:6s} {r['arch']:16s} seed {r['seed']}: {r['seconds']:.1f} s", flush=True)
        return r

    if args.jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_task, t) for t in tasks]
            for f in concurrent.futures.as_completed(futures):
                done(f.result())
            records = [f.result() for f in futures]
    else:
        records = [done(run_task(t)) for t in tasks]
    wall = time.perf_counter() - t0
    md, rows = table(records, Path(args.results))
    print()
    print(md)
    print(f"\n{len(records)} fits in {wall:.0f} s (--jobs {args.jobs})")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(md + "\n")
    if args.out:
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "wall_seconds": wall,
                                              "runs": clean, "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
