"""torchmetrics classes for the cross-modal measures (state and DDP reduction only).

Every formula lives in :mod:`nn_neuroimaging_lightning.functional.consistency`; these classes keep
sums and counts (``dist_reduce_fx="sum"``) so that accumulation over evaluations and across ranks is
torchmetrics' job.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from nn_neuroimaging_lightning.functional.consistency import (
    _agreement_compute,
    _agreement_update,
    _coherence_compute,
    _coherence_update,
    _spearman_compute,
    _spearman_update,
    consistency,
)

__all__ = ["Consistency", "FlagAgreement", "LayerCoherence", "SpearmanRho"]


class SpearmanRho(Metric):
    r"""Spearman rank correlation across layers, averaged over updates.

    .. math:: \bar\rho = \frac{1}{|D|} \sum_{k \in D} \rho_k

    Each ``update(x, y)`` contributes one rho per ``(L,)`` series pair (a ``(..., L)`` batch
    contributes one per leading index), e.g. one per zeta evaluation with ``x`` the EEG gamma power
    and ``y`` the fMRI max zeta of each layer. Updates where rho is undefined (fewer than three
    layers, a constant series, NaN) are left out (:math:`D` holds the defined ones); ``compute``
    returns NaN when none was defined. This is the mean of per-evaluation correlations, not one
    correlation over pooled values, which would mix layers across time.

    Args:
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Example::

        >>> metric = SpearmanRho()
        >>> metric.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0]))
        >>> metric.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 1.0, 3.0]))
        >>> metric.compute()
        tensor(0.7500)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    rho_sum: Tensor
    n_defined: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("rho_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_defined", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add the rho of each ``(L,)`` series pair in ``x``, ``y`` (shape ``(..., L)``)."""
        rho_sum, n_defined = _spearman_update(x, y)
        self.rho_sum += rho_sum.to(self.rho_sum.dtype)
        self.n_defined += n_defined

    def compute(self) -> Tensor:
        """Mean of the defined rhos, NaN if none was defined."""
        return _spearman_compute(self.rho_sum, self.n_defined).to(torch.get_default_dtype())


class FlagAgreement(Metric):
    r"""Share of windows in which EEG and fMRI anomaly flags agree.

    .. math:: \mathrm{agreement} = \frac{\sum_n [e_n = f_n]}{N}

    1.0 when no window has been seen (nothing disagrees).

    Args:
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Example::

        >>> metric = FlagAgreement()
        >>> metric.update(torch.tensor([True, False]), torch.tensor([True, True]))
        >>> metric.update(torch.tensor([False, False]), torch.tensor([False, False]))
        >>> metric.compute()
        tensor(0.7500)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    n_agree: Tensor
    n_windows: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("n_agree", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_windows", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, eeg_flags: Tensor, fmri_flags: Tensor) -> None:
        """Add windows: ``eeg_flags`` and ``fmri_flags`` are bool tensors of the same shape."""
        n_agree, n_windows = _agreement_update(eeg_flags, fmri_flags)
        self.n_agree += n_agree
        self.n_windows += n_windows

    def compute(self) -> Tensor:
        """Agreement over all windows seen, 1.0 if none."""
        return _agreement_compute(self.n_agree, self.n_windows)


class LayerCoherence(Metric):
    r"""Jaccard overlap of the layers flagged by each modality, pooled over updates.

    .. math:: \mathrm{coherence} = \frac{\sum_k |E_k \cap F_k|}{\sum_k |E_k \cup F_k|}

    1.0 when neither modality has flagged any layer. Pooling (micro-average) keeps the state two
    integers, reduced by ``sum`` across ranks.

    Args:
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Example::

        >>> metric = LayerCoherence()
        >>> metric.update(torch.tensor([True, True, True]), torch.tensor([False, True, False]))
        >>> metric.compute()
        tensor(0.3333)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    intersection: Tensor
    union: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("intersection", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, eeg_layers: Tensor, fmri_layers: Tensor) -> None:
        """Add one set of flags per modality: bool tensors of the same shape, e.g. ``(L,)``."""
        intersection, union = _coherence_update(eeg_layers, fmri_layers)
        self.intersection += intersection
        self.union += union

    def compute(self) -> Tensor:
        """Pooled Jaccard overlap, 1.0 if the union is empty."""
        return _coherence_compute(self.intersection, self.union)


class Consistency(Metric):
    r"""Cross-modal consistency score in ``[0, 1]`` from the three measures above.

    .. math:: \mathrm{consistency} = \frac{1}{3}\left(\frac{\bar\rho + 1}{2} + \mathrm{agreement}
        + \mathrm{coherence}\right)

    Holds the states of :class:`SpearmanRho`, :class:`FlagAgreement` and :class:`LayerCoherence`
    (the same accumulation rules) and combines them with
    :func:`~nn_neuroimaging_lightning.functional.consistency.consistency`; an undefined rho counts
    as the neutral ``rho' = 0.5``. :meth:`compute_components` returns the three parts as well.

    Args:
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Example::

        >>> metric = Consistency()
        >>> metric.update(
        ...     gamma=torch.tensor([1.0, 2.0, 3.0]), zeta_max=torch.tensor([0.1, 0.2, 0.3]),
        ...     eeg_flags=torch.tensor([False, True]), fmri_flags=torch.tensor([False, True]),
        ...     eeg_layers=torch.tensor([False, True, False]), fmri_layers=torch.tensor([False, True, True]),
        ... )
        >>> metric.compute()  # (1 + 1 + 0.5) / 3
        tensor(0.8333)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    rho_sum: Tensor
    n_defined: Tensor
    n_agree: Tensor
    n_windows: Tensor
    intersection: Tensor
    union: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("rho_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("n_defined", "n_agree", "n_windows", "intersection", "union"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self,
        gamma: Tensor,
        zeta_max: Tensor,
        eeg_flags: Tensor,
        fmri_flags: Tensor,
        eeg_layers: Tensor,
        fmri_layers: Tensor,
    ) -> None:
        """Add one evaluation.

        Args:
            gamma: ``(L,)`` EEG gamma power per layer.
            zeta_max: ``(L,)`` fMRI max zeta per layer (same layer order).
            eeg_flags: ``(N,)`` bool, EEG anomaly / abnormal-state flag per recent window.
            fmri_flags: ``(N,)`` bool, fMRI spatial-anomaly flag per recent window.
            eeg_layers: ``(L',)`` bool, layers flagged by NN-EEG.
            fmri_layers: ``(L',)`` bool, layers flagged by NN-fMRI.
        """
        rho_sum, n_defined = _spearman_update(gamma, zeta_max)
        n_agree, n_windows = _agreement_update(eeg_flags, fmri_flags)
        intersection, union = _coherence_update(eeg_layers, fmri_layers)
        self.rho_sum += rho_sum.to(self.rho_sum.dtype)
        self.n_defined += n_defined
        self.n_agree += n_agree
        self.n_windows += n_windows
        self.intersection += intersection
        self.union += union

    def _components(self) -> dict[str, Tensor]:
        rho = _spearman_compute(self.rho_sum, self.n_defined).to(torch.get_default_dtype())
        agree = _agreement_compute(self.n_agree, self.n_windows)
        coh = _coherence_compute(self.intersection, self.union)
        return {"consistency": consistency(rho, agree, coh), "rho": rho, "agreement": agree, "coherence": coh}

    def compute_components(self) -> dict[str, Tensor]:
        """``{"consistency", "rho", "agreement", "coherence"}`` as scalar tensors (rho may be NaN).

        States are synchronised across processes for the duration of the call, as in ``compute``.
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync and not self._is_synced,
            should_unsync=self._should_unsync,
        ):
            return self._components()

    def compute(self) -> Tensor:
        """The consistency score in ``[0, 1]``."""
        return self._components()["consistency"]
