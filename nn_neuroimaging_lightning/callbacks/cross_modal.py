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
from nn_neuroimaging_lightning.functional.consistency import joint_anomalies
from nn_neuroimaging_lightning.metrics.cross_modal import Consistency

CROSS_MODAL_ANOMALY_KINDS: Tuple[str, ...] = ("joint",)

_SETUP_LINE = "Trainer(callbacks=[NNEEGCallback(), NNfMRICallback(), CrossModalCallback()])"


class CrossModalCallback(MonitorCallback):
    r"""Agreement between NN-EEG and NN-fMRI, and the joint anomaly gate.

    At each zeta evaluation of :class:`NNfMRICallback` (it calls this callback back), over the
    layers both callbacks watch:

    - ``rho``: Spearman correlation across layers between the EEG band power (``band``, default
      gamma, absolute) of the latest analysis and the fMRI max zeta. Undefined (NaN) with fewer
      than three common layers or a constant series; it then enters the score as the neutral 0.5.
    - ``agreement``: over the last ``history`` EEG analysis windows, the share in which "EEG
      flagged some layer" equals "fMRI flagged some layer in its latest check at or before that
      window" (1 when there are no windows yet).
    - ``coherence``: Jaccard overlap of the layers each modality flagged over that span (1 when
      both flag none).

    .. math::
        \mathrm{consistency} = \frac{(\rho + 1)/2 + \mathrm{agreement} + \mathrm{coherence}}{3}
        \in [0, 1]

    A *joint anomaly* is a layer flagged by both modalities within ``joint_window`` training steps
    of each other; it is checked after every training batch (host-side set operations only), gives
    an event of kind ``joint``, logs ``cross_modal/anomaly`` and, with ``stop_on=("joint",)``,
    stops the run in that step.

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
        self._layout_written = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(band=self.band)

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
        from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback

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
        joint = self._joint_layers(trainer.global_step)
        new = sorted(joint - self._joint_seen)
        events = [AnomalyEvent(trainer.global_step, "train", layer, "joint", 1.0, self.source, detail="flagged by NN-EEG and NN-fMRI") for layer in new]
        self._joint_seen |= joint
        if not joint:
            self._joint_seen.clear()
        self._record(events)
        self._log(pl_module, "cross_modal/anomaly", float(bool(joint)), on_epoch=True, reduce_fx="max")
        self._maybe_stop(trainer, events)

    def _joint_layers(self, step: int) -> FrozenSet[str]:
        eeg = self._recent_union(self._eeg.flag_history, step - self.joint_window)
        fmri = self._recent_union(self._fmri.flag_history, step - self.joint_window)
        return frozenset(eeg & fmri)

    @staticmethod
    def _recent_union(history: Any, since: int) -> FrozenSet[str]:
        out: set = set()
        for step, layers in reversed(history):
            if step < since:
                break
            out |= layers
        return frozenset(out)

    # ------------------------------------------------------------------ at each zeta evaluation
    def _on_zeta(self, trainer: Trainer, pl_module: LightningModule) -> None:
        layers = [n for n in self._eeg.layers if n in self._fmri.zeta_max]
        power = self._eeg.band_power(self.band)
        layers = [n for n in layers if n in power]
        gamma = torch.tensor([power[n] for n in layers], dtype=torch.float64)
        zeta = torch.tensor([self._fmri.zeta_max[n] for n in layers], dtype=torch.float64)
        eeg_windows = list(self._eeg.flag_history)[-self.history :]
        fmri_checks = list(self._fmri.flag_history)
        eeg_flags, fmri_flags = [], []
        for step, flagged in eeg_windows:
            latest = next((f for s, f in reversed(fmri_checks) if s <= step), frozenset())
            eeg_flags.append(bool(flagged))
            fmri_flags.append(bool(latest))
        since = eeg_windows[0][0] if eeg_windows else trainer.global_step
        eeg_layers = self._recent_union(eeg_windows, since)
        fmri_layers = self._recent_union(fmri_checks, since)
        universe = sorted(set(layers) | eeg_layers | fmri_layers)
        self.metric.reset()
        self.metric.update(
            gamma,
            zeta,
            torch.tensor(eeg_flags, dtype=torch.bool),
            torch.tensor(fmri_flags, dtype=torch.bool),
            torch.tensor([n in eeg_layers for n in universe], dtype=torch.bool),
            torch.tensor([n in fmri_layers for n in universe], dtype=torch.bool),
        )
        parts = {k: float(v) for k, v in self.metric.compute_components().items()}
        self.consistency = parts["consistency"]
        self.components = parts
        joint = joint_anomalies(
            torch.tensor([n in eeg_layers for n in universe], dtype=torch.bool),
            torch.tensor([n in fmri_layers for n in universe], dtype=torch.bool),
        )
        joint_names = [n for n, j in zip(universe, joint.tolist()) if j]
        self.scores.append({"step": trainer.global_step, **parts, "joint_anomaly": bool(joint_names), "layers": layers,
                            "gamma": gamma.tolist(), "zeta_max": zeta.tolist()})
        for key in ("consistency", "rho", "agreement", "coherence"):
            value = parts.get(key, math.nan)
            self._log(pl_module, f"cross_modal/{key}", value, on_step=False, on_epoch=True)
        self._write_panels(trainer)

    # ------------------------------------------------------------------ panels
    def _write_panels(self, trainer: Trainer) -> None:
        sink = self._panels(trainer)
        if sink is None or not self.scores:
            return
        from nn_neuroimaging_lightning.panels import figures as PF
        from nn_neuroimaging_lightning.panels import tensorboard as P

        keys = ("consistency", "rho", "agreement", "coherence")
        history = {k: [s.get(k, math.nan) for s in self.scores] for k in keys}
        history["joint_anomaly"] = [s["joint_anomaly"] for s in self.scores]
        step = trainer.global_step
        sink.figure("cross_modal/consistency_history", PF.consistency_figure(history, steps=[s["step"] for s in self.scores]), step)
        latest = self.scores[-1]
        rows = [(n, g, z) for n, g, z in zip(latest["layers"], latest["gamma"], latest["zeta_max"])]
        sink.table("cross_modal/gamma_vs_zeta", ("layer", f"EEG {self.band} power", "fMRI max zeta"), rows, step)
        sink.flush()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["scores"] = [{k: v for k, v in s.items()} for s in self.scores]
        state["consistency"] = self.consistency
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.scores.clear()
        self.scores.extend(state_dict.get("scores", []))
        self.consistency = state_dict.get("consistency")
