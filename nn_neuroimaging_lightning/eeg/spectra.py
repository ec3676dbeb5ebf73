"""NN-EEG spectral engine pieces (plain PyTorch, no Lightning): the spectral-shift baseline."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from nn_neuroimaging_lightning.functional import anomalies as FA

__all__ = ["ShiftBaseline"]


class ShiftBaseline:
    """EMA baseline of relative band powers, and the spectral-shift judgement against it.

    The first window becomes the baseline; from the fourth window on, a layer whose relative band
    powers are at Hellinger distance above ``threshold`` from it is flagged
    (:func:`~nn_neuroimaging_lightning.functional.anomalies.spectral_shift`). The baseline keeps
    adapting (``0.9 * baseline + 0.1 * window``) with every finite window.

    Example::

        >>> sb = ShiftBaseline(threshold=0.3)
        >>> p = torch.tensor([[0.5, 0.5]])
        >>> [sb.update(p) for _ in range(4)][-1][0].tolist()
        [0.0]
        >>> flags, dist = sb.update(torch.tensor([[1.0, 0.0]]))
        >>> flags.tolist(), round(float(dist[0]), 4)
        ([1.0], 0.5412)
    """

    def __init__(self, threshold: float = FA.SHIFT_THRESHOLD) -> None:
        self.threshold = threshold
        self.baseline: Optional[Tensor] = None  # (layers, bands) relative powers, EMA
        self.windows = 0

    def update(self, relative: Tensor) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Judge ``(layers, bands)`` relative powers, then fold them in; host ``(flags, distance)`` or ``None`` while warming up."""
        finite = torch.isfinite(relative).all(dim=1, keepdim=True)
        if self.baseline is None:
            self.baseline = torch.where(finite, relative, torch.zeros_like(relative)).clone()
            self.windows = 1
            return None
        flagged, distance = FA.spectral_shift(relative, self.baseline, self.threshold)  # (layers,)
        # The baseline needs a few windows before it is judged; it keeps adapting slowly afterwards.
        host = torch.stack([(flagged & finite.squeeze(1)).float(), distance]).cpu().numpy() if self.windows >= 3 else None
        self.baseline = torch.where(finite, 0.9 * self.baseline + 0.1 * relative, self.baseline)
        self.windows += 1
        return None if host is None else (host[0], host[1])

    def state_dict(self) -> Dict[str, Any]:
        return {"band_baseline": None if self.baseline is None else self.baseline.detach().cpu(), "baseline_windows": self.windows}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.baseline = state.get("band_baseline")
        self.windows = int(state.get("baseline_windows", 0))
