"""Cross-modal: does what NN-EEG hears agree with what NN-fMRI sees?"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from nn_neuroimaging_lightning import _validation as V
from nn_neuroimaging_lightning.callbacks._base import AnomalyEvent, MonitorCallback
from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback
from nn_neuroimaging_lightning.config import CrossModalConfig
from nn_neuroimaging_lightning.functional.consistency import joint_anomalies, spearman_undefined
from nn_neuroimaging_lightning.metrics.cross_modal import Consistency
from nn_neuroimaging_lightning.panels.cross_modal import write_cross_modal_panels

CROSS_MODAL_ANOMALY_KINDS: Tuple[str, ...] = ("joint",)

_SETUP_LINE = "Trainer(callbacks=[NNEEGCallback(), NNfMRICallback(), CrossModalCallback()])"

#: ``(step, flagged layers)`` entries, oldest first: the shape of both modalities' ``flag_history``.
_History = Sequence[Tuple[int, FrozenSet[str]]]


def _recent_union(history: _History, since: int) -> FrozenSet[str]:
    """Layers flagged in the entries at or after step ``since``."""
    out: set = set()
    for step, layers in reversed(history):  # a deque: no copy (this runs after every training batch)
        if step < since:
            break
        out |= layers
    return frozenset(out)


def _paired_windows(eeg_windows: _History, fmri_checks: _History) -> List[Tuple[int, FrozenSet[str], FrozenSet[str]]]:
    """The EEG windows that have an fMRI verdict: ``(step, EEG flags, flags of fMRI's latest check at or before it)``.

    A window before fMRI's first spatial check has no fMRI verdict and is left out (it is not
    "fMRI flagged nothing"). Once a window is paired every later one is, so the result is a suffix.
    """
    out = []
    for step, flagged in eeg_windows:
        latest = next((f for s, f in reversed(fmri_checks) if s <= step), None)
        if latest is not None:
            out.append((step, flagged, latest))
    return out


class CrossModalCallback(MonitorCallback):
    r"""Agreement between NN-EEG and NN-fMRI, and the joint anomaly gate.

    At each zeta evaluation of :class:`NNfMRICallback` (it calls this callback back), over the
    layers both callbacks watch:

    - ``rho``: Spearman correlation across layers between the EEG band power (``band``, default
      gamma, absolute) of the latest analysis and the fMRI max zeta, over the layers that have both.
    - ``agreement``: over the last ``history`` EEG analysis windows that have an fMRI verdict (fMRI's
      latest spatial check at or before the window), the share in which "EEG flagged some layer"
      equals "fMRI flagged some layer".
    - ``coherence``: Jaccard overlap of the layers each modality flagged over that span (1 when
      both flag none).

    .. math::
        \mathrm{consistency} = \frac{(\rho + 1)/2 + \mathrm{agreement} + \mathrm{coherence}}{3}
        \in [0, 1]

    **Undefined is NaN, with a reason.** ``rho`` is undefined with fewer than three layers that
    have both an EEG band power and an fMRI zeta map, a constant series, or a NaN;
    ``agreement`` and ``coherence`` are undefined while no recent EEG window has an fMRI verdict
    (no EEG analysis window yet, or no fMRI spatial check at or before one); ``consistency`` is
    undefined when any of the three is. An undefined score is NaN in :attr:`consistency`,
    :attr:`components` and :attr:`scores` (with the reason under ``"undefined"``), a gap in the
    consistency chart, a note under the gamma-vs-zeta table, and is **not logged**: its
    ``cross_modal/<name>`` key is left out of that evaluation (a NaN logged as a value would read
    as a measurement, and would stop an ``EarlyStopping(check_finite=True)`` monitoring it). One
    warning per cause (rank zero) says which score is undefined and why. :attr:`consistency` is
    ``None`` before the first evaluation.

    A *joint anomaly* is a layer flagged by both modalities within ``joint_window`` training steps
    of each other; it is checked after every training batch (host-side set operations only), gives
    an event of kind ``joint`` and, with ``stop_on=("joint",)``, stops the run in that step.
    ``cross_modal/anomaly`` (0/1, epoch-reduced by max) is the flag's running max since the last
    logging step, logged on the trainer's logging steps, at once on a step with a joint anomaly, and on the
    epoch's last batch: the curve misses no joint step, ``EarlyStopping`` reads the same epoch value
    as with a log on every step, and Lightning's ~0.15-0.3 ms per ``pl_module.log`` call on CPU is
    saved on the other steps.

    Args:
        band: the EEG band correlated with max zeta.
        history: EEG analysis windows used for ``agreement`` and ``coherence``.
        joint_window: training steps within which both modalities' flags count as simultaneous.
        stop_on: ``("joint",)`` to stop the run on a joint anomaly.
        panels: write the consistency chart and the per-layer gamma-vs-zeta table.
        max_events: joint events kept in memory.

    Raises:
        ValueError: an argument is out of range.
        MisconfigurationException: in ``setup``, if ``NNEEGCallback`` or ``NNfMRICallback`` is not
            among ``trainer.callbacks``.

    Example::

        >>> xm = CrossModalCallback(stop_on="joint")
        >>> xm.consistency is None
        True
    """

    source = "cross_modal"
    config_class = CrossModalConfig

    def __init__(
        self,
        *,
        band: str = "gamma",
        history: int = 32,
        joint_window: int = 50,
        stop_on: Sequence[str] = (),
        panels: bool = True,
        max_events: int = 1000,
    ) -> None:
        super().__init__(max_events=V.check_int("max_events", max_events, 1))
        if not isinstance(band, str) or not band:
            raise ValueError(f"`band` must be the name of an EEG band, got {band!r}.")
        self.band = band
        self.history = V.check_int("history", history, 1)
        self.joint_window = V.check_int("joint_window", joint_window, 0)
        self.stop_on = V.check_choices("stop_on", stop_on, CROSS_MODAL_ANOMALY_KINDS)
        self.panels = V.check_bool("panels", panels)
        self.metric = Consistency()
        self.consistency: Optional[float] = None
        self.components: Dict[str, float] = {}
        self.scores: Deque[Dict[str, Any]] = deque(maxlen=512)
        self._eeg: Any = None
        self._fmri: Any = None
        self._joint_seen: set = set()

    def _state_key_fields(self) -> Dict[str, Any]:
        return {"band": self.band}

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remember_trainer(trainer)
        eeg = [cb for cb in trainer.callbacks if isinstance(cb, NNEEGCallback)]
        fmri = [cb for cb in trainer.callbacks if isinstance(cb, NNfMRICallback)]
        missing = [name for name, found in (("NNEEGCallback", eeg), ("NNfMRICallback", fmri)) if not found]
        if missing:
            raise MisconfigurationException(
                f"CrossModalCallback compares NN-EEG with NN-fMRI, but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not in `trainer.callbacks`. Add "
                f"{' and '.join(m + '()' for m in missing)}, e.g. `{_SETUP_LINE}`."
            )
        self._eeg, self._fmri = eeg[0], fmri[0]
        if self.band not in self._eeg.bands:
            raise ValueError(f"`band`={self.band!r} is not an NN-EEG band; the EEG callback has {list(self._eeg.bands)}.")
        self._fmri.add_listener(self._on_zeta)

    # ------------------------------------------------------------------ the joint gate
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._eeg is None:
            return
        since = trainer.global_step - self.joint_window
        joint = _recent_union(self._eeg.flag_history, since) & _recent_union(self._fmri.flag_history, since)
        new = sorted(joint - self._joint_seen)
        events = [AnomalyEvent(trainer.global_step, "train", layer, "joint", 1.0, self.source, detail="flagged by NN-EEG and NN-fMRI") for layer in new]
        self._joint_seen |= joint
        if not joint:
            self._joint_seen.clear()
        self._record(events)
        anomaly = self._running_max("cross_modal/anomaly", float(bool(joint)), bool(joint), trainer, batch_idx + 1)
        if anomaly is not None:
            self._log(pl_module, "cross_modal/anomaly", anomaly, on_epoch=True, reduce_fx="max")
        self._maybe_stop(trainer, events)

    # ------------------------------------------------------------------ at each zeta evaluation
    def _on_zeta(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = trainer.global_step
        power = self._eeg.band_power(self.band)
        layers = [n for n in self._eeg.layers if n in self._fmri.zeta_max and n in power]
        gamma = torch.tensor([power[n] for n in layers], dtype=torch.float64)  # (L,)
        zeta = torch.tensor([self._fmri.zeta_max[n] for n in layers], dtype=torch.float64)  # (L,)
        windows = list(self._eeg.flag_history)[-self.history :]
        checks = list(self._fmri.flag_history)
        paired = _paired_windows(windows, checks)
        if paired:
            eeg_layers = frozenset().union(*(flags for _, flags, _ in paired))
            fmri_layers = _recent_union(checks, paired[0][0])
            universe = sorted(set(self._eeg.layers) | eeg_layers | fmri_layers)
        else:  # no window with both verdicts: nothing compared
            eeg_layers = fmri_layers = frozenset()
            universe = []
        eeg_mask = torch.tensor([n in eeg_layers for n in universe], dtype=torch.bool)  # (L',)
        fmri_mask = torch.tensor([n in fmri_layers for n in universe], dtype=torch.bool)  # (L',)
        self.metric.reset()
        self.metric.update(
            gamma,
            zeta,
            torch.tensor([bool(e) for _, e, _ in paired], dtype=torch.bool),  # (N,)
            torch.tensor([bool(f) for _, _, f in paired], dtype=torch.bool),  # (N,)
            eeg_mask,
            fmri_mask,
        )
        parts = {k: float(v) for k, v in self.metric.compute_components().items()}
        undefined = self._undefined(parts, layers, gamma, zeta, windows, checks)
        self.consistency, self.components = parts["consistency"], parts
        joint = [n for n, j in zip(universe, joint_anomalies(eeg_mask, fmri_mask).tolist()) if j]
        self.scores.append({"step": step, **parts, "joint_anomaly": bool(joint), "layers": layers,
                            "gamma": gamma.tolist(), "zeta_max": zeta.tolist(), "undefined": undefined})
        for key, value in parts.items():
            if not math.isnan(value):  # an undefined score is not logged as a value (class docstring)
                self._log(pl_module, f"cross_modal/{key}", value, on_step=False, on_epoch=True)
        sink = self._panels(trainer)
        if sink is not None:
            write_cross_modal_panels(sink, list(self.scores), self.band)

    def _undefined(self, parts: Dict[str, float], layers: List[str], gamma: torch.Tensor, zeta: torch.Tensor,
                   windows: _History, checks: _History) -> Dict[str, str]:
        """``{score: why}`` for the NaN scores; one warning per cause."""
        out: Dict[str, str] = {}
        if math.isnan(parts["rho"]):
            rule = spearman_undefined(gamma, zeta) or "undefined on every process"
            out["rho"] = (f"{rule} ({len(layers)} layer(s) have both an NN-EEG `{self.band}` power and an NN-fMRI "
                          f"zeta map: {', '.join(layers) or 'none'})")
            self._notice(f"rho: {rule}", "`rho`", out["rho"], "more layers with a zeta map (NNfMRICallback "
                         "`zeta_layers`, its zeta budget), or later evaluations")
        if math.isnan(parts["agreement"]) or math.isnan(parts["coherence"]):
            if not windows:
                cause, why = "no EEG window", "NN-EEG has no analysis window yet"
            else:
                cause, why = "no fMRI check", (
                    f"NN-fMRI has no spatial check at or before NN-EEG's last {len(windows)} analysis window(s) "
                    f"(steps {windows[0][0]}-{windows[-1][0]}; fMRI checked at steps {[s for s, _ in checks][-5:]})")
            terms = [k for k in ("agreement", "coherence") if math.isnan(parts[k])]
            out.update({k: why for k in terms})
            self._notice(cause, " and ".join(f"`{k}`" for k in terms), why, "NNfMRICallback `check_every_n_steps` "
                         "no larger than NNEEGCallback `analysis_every_n_steps`, or later evaluations")
        if math.isnan(parts["consistency"]):
            out["consistency"] = "a term is undefined (" + ", ".join(out) + ")"
        return out

    def _notice(self, cause: str, what: str, why: str, fix: str) -> None:
        """Warn once per ``cause`` (rank zero) that ``what`` is undefined, why, and what would fix it."""
        self._warn_once(("undefined", cause), f"CrossModalCallback: {what} undefined (NaN): {why}. Until it is defined, "
                        f"`cross_modal/consistency` is NaN too, and neither is logged. Fix: {fix}.")

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["scores"] = [dict(s) for s in self.scores]
        state["consistency"] = self.consistency
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.scores.clear()
        self.scores.extend(state_dict.get("scores", []))
        self.consistency = state_dict.get("consistency")
