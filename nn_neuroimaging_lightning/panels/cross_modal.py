"""Cross-modal panels: the consistency chart and the gamma-vs-zeta table, from score snapshots.

The cross-modal callback keeps one snapshot per zeta evaluation (plain Python values: the step,
the four scores, NaN where undefined, why they are undefined, the compared layers with their EEG
band power and fMRI max zeta) and hands the recent ones here; nothing is computed here.

Example::

    >>> import tempfile
    >>> from lightning.pytorch.loggers import TensorBoardLogger
    >>> from nn_neuroimaging_lightning.panels.sink import PanelSink
    >>> sink = PanelSink([TensorBoardLogger(tempfile.mkdtemp(), name="")])
    >>> snap = {"step": 64, "consistency": float("nan"), "rho": float("nan"), "agreement": 1.0,
    ...         "coherence": 1.0, "joint_anomaly": False, "layers": ["fc1", "fc2"],
    ...         "gamma": [0.2, 0.1], "zeta_max": [0.05, 0.3], "undefined": {"rho": "fewer than 3 layers"}}
    >>> write_cross_modal_panels(sink, [snap], band="gamma")
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Sequence

from nn_neuroimaging_lightning.panels.figures import consistency_figure
from nn_neuroimaging_lightning.panels.sink import PanelSink
from nn_neuroimaging_lightning.panels.tensorboard import CROSS_MODAL_KEYS
from nn_neuroimaging_lightning.panels.worker import Drawing

__all__ = ["undefined_note", "write_cross_modal_panels"]


def undefined_note(undefined: Mapping[str, str]) -> str:
    """One line naming each undefined score and why (empty when all are defined).

    Example::

        >>> undefined_note({"rho": "fewer than 3 layers", "consistency": "rho is undefined"})
        'Undefined (NaN, not logged): `rho`: fewer than 3 layers; `consistency`: rho is undefined.'
    """
    if not undefined:
        return ""
    return "Undefined (NaN, not logged): " + "; ".join(f"`{k}`: {v}" for k, v in undefined.items()) + "."


def write_cross_modal_panels(sink: PanelSink, scores: Sequence[Mapping[str, Any]], band: str) -> None:
    """Write the consistency chart over ``scores`` and the latest snapshot's gamma-vs-zeta table.

    Args:
        sink: the panel sink of the trainer's loggers.
        scores: snapshots, oldest first (see the module docstring); the last one is the current.
        band: the EEG band correlated with max zeta (the table's column title).
    """
    if not scores:
        return
    latest = scores[-1]
    step = int(latest["step"])
    history = {k: [float(s.get(k, math.nan)) for s in scores] for k in CROSS_MODAL_KEYS}
    history["joint_anomaly"] = [bool(s.get("joint_anomaly")) for s in scores]
    steps: List[int] = [int(s["step"]) for s in scores]
    sink.figure("cross_modal/consistency_history", Drawing.of(consistency_figure, history, steps), step)
    rows = [(n, g, z) for n, g, z in zip(latest["layers"], latest["gamma"], latest["zeta_max"])]
    sink.table("cross_modal/gamma_vs_zeta", ("layer", f"EEG {band} power", "fMRI max zeta"), rows, step,
               note=undefined_note(latest.get("undefined", {})))
    sink.flush()
