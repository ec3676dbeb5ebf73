"""torchmetrics classes of NN-EEG: mean band powers and operational-state accuracy.

The formulas live in :mod:`nn_neuroimaging_lightning.functional.spectral` and
:mod:`nn_neuroimaging_lightning.functional.states`; these classes only hold state and reduce it
across processes (``dist_reduce_fx="sum"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics import Metric

from nn_neuroimaging_lightning.functional.spectral import (
    DEFAULT_BANDS,
    DEFAULT_FS,
    DEFAULT_NPERSEG,
    _band_power_compute,
    _band_power_update,
    check_bands,
)
from nn_neuroimaging_lightning.functional.states import (
    OperationalState,
    _state_accuracy_compute,
    _state_confusion_update,
    balanced_accuracy_from_confusion,
)

__all__ = ["BandPower", "StateAccuracy"]


class BandPower(Metric):
    """Mean absolute or relative Welch band power per layer over the windows seen.

    .. math::
        \\bar P_{lb} = \\frac{1}{N} \\sum_{n=1}^{N} P_{lb}^{(n)}

    Args:
        fs: nominal sampling rate in Hz.
        nperseg: Welch segment length.
        noverlap: Welch overlap, default ``nperseg // 2``.
        bands: ``name -> (lo_hz, hi_hz)``; checked at construction.
        relative: average relative instead of absolute powers.
        num_layers: number of layers, if known; fixes the state shape (needed under DDP when a
            process might never call ``update``). Without it the state takes its shape from the
            first update.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: for bands without a bin or invalid arguments.

    Example::

        >>> m = BandPower(fs=200.0, nperseg=64)
        >>> m.update(torch.randn(3, 128))
        >>> m.compute().shape
        torch.Size([3, 5])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        fs: float = DEFAULT_FS,
        nperseg: int = DEFAULT_NPERSEG,
        noverlap: Optional[int] = None,
        bands: Mapping[str, tuple[float, float]] = DEFAULT_BANDS,
        relative: bool = False,
        num_layers: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_bands(bands, fs, nperseg)
        if noverlap is not None and (
            isinstance(noverlap, bool) or not isinstance(noverlap, int) or not 0 <= noverlap < nperseg
        ):
            raise ValueError(f"`noverlap` must be an int in [0, nperseg={nperseg}), got {noverlap!r}.")
        if num_layers is not None and (
            isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0
        ):
            raise ValueError(f"`num_layers` must be a positive int or None, got {num_layers!r}.")
        if not isinstance(relative, bool):
            raise ValueError(f"`relative` must be a bool, got {relative!r}.")
        self.fs = float(fs)
        self.nperseg = nperseg
        self.noverlap = noverlap
        self.bands = dict(bands)
        self.relative = relative
        default = torch.zeros(num_layers, len(self.bands)) if num_layers else torch.tensor(0.0)
        self.add_state("sum_power", default=default, dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, signal: Optional[Tensor] = None, *, powers: Optional[Tensor] = None) -> None:
        """Add a ``(layers, W)`` window (or a batch ``(N, layers, W)``).

        ``powers`` instead of ``signal`` adds band powers already computed for a window, ``(layers,
        n_bands)`` (or ``(N, layers, n_bands)``), by
        :func:`~nn_neuroimaging_lightning.functional.spectral.band_powers` with this metric's
        ``relative``: for a caller that needs the window's spectrum itself (the NN-EEG engine), so
        that the Welch estimate is computed once.
        """
        if (signal is None) == (powers is None):
            raise ValueError("`BandPower.update` takes one of `signal` or `powers`, got "
                             f"{'neither' if signal is None else 'both'}.")
        if signal is not None:
            powers, n = _band_power_update(signal, self.fs, self.nperseg, self.noverlap, self.bands, self.relative)
        else:
            if not isinstance(powers, Tensor) or powers.ndim not in (2, 3) or powers.shape[-1] != len(self.bands):
                raise ValueError(f"`powers` must be (layers, {len(self.bands)}) or (N, layers, {len(self.bands)}),"
                                 f" got {getattr(powers, 'shape', powers)!r}.")
            powers, n = (powers, 1) if powers.ndim == 2 else (powers.sum(dim=0), powers.shape[0])
        self.sum_power = self.sum_power + powers.to(self.sum_power.dtype)
        self.count = self.count + n

    def compute(self) -> Tensor:
        """Mean band powers ``(layers, n_bands)`` (NaN before any window: undefined)."""
        return _band_power_compute(self.sum_power, self.count)


class StateAccuracy(Metric):
    """Accuracy of predicted operational states against lifecycle labels, with confusion matrix.

    ``compute()`` returns the accuracy (a scalar, so the metric can be passed to
    ``LightningModule.log``); :meth:`confusion_matrix` and :meth:`balanced_accuracy` read the same
    state. Pairs whose target or prediction is outside ``[0, num_states)`` are ignored.

    .. math::
        \\mathrm{acc} = \\frac{\\mathrm{tr}\\, M}{\\sum_{ck} M_{ck}}, \\qquad
        M_{ck} = \\#\\{i : y_i = c, \\hat y_i = k\\}

    Args:
        num_states: number of states (4: training, inference, idle, error).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: if ``num_states`` is not an int >= 2.

    Example::

        >>> m = StateAccuracy()
        >>> m.update(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 0, 2]))
        >>> m.compute()
        tensor(0.7500)
        >>> m.balanced_accuracy()
        tensor(0.8333)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_states: int = len(OperationalState), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_states, bool) or not isinstance(num_states, int) or num_states < 2:
            raise ValueError(f"`num_states` must be an int >= 2, got {num_states!r}.")
        self.num_states = num_states
        self.add_state(
            "confmat", default=torch.zeros(num_states, num_states, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add ``(N,)`` predicted states (or ``(N, num_states)`` scores) and ``(N,)`` lifecycle states."""
        self.confmat = self.confmat + _state_confusion_update(preds, target, self.num_states).to(
            self.confmat.device
        )

    def compute(self) -> Tensor:
        """Accuracy over all pairs seen (0 when none)."""
        return _state_accuracy_compute(self.confmat)

    def confusion_matrix(self) -> Tensor:
        """``(num_states, num_states)`` counts, rows = lifecycle state, columns = prediction."""
        return self.confmat.clone()

    def balanced_accuracy(self) -> Tensor:
        """Mean recall over the lifecycle states that occurred."""
        return balanced_accuracy_from_confusion(self.confmat)
