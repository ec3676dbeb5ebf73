"""torchmetrics classes for the cross-modal measures (state and DDP reduction only).

Every formula and every "undefined is NaN" rule lives in
:mod:`nn_neuroimaging_lightning.functional.consistency`; these classes keep the sums its
``_x_update`` functions return (``dist_reduce_fx="sum"``), so that accumulation over evaluations
and across ranks is torchmetrics' job, and hand them to its ``_x_compute`` functions.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Tuple

import torch
from torch import Tensor
from torchmetrics import Metric

from nn_neuroimaging_lightning.functional.consistency import (
    _agreement_compute,
    _agreement_update,
    _coherence_compute,
    _coherence_update,
    _consistency_compute,
    _consistency_update,
    _spearman_compute,
    _spearman_update,
)

__all__ = ["Consistency", "FlagAgreement", "LayerCoherence", "SpearmanRho"]


class _SumStates(Metric):
    """A metric whose state is the sums that ``update`` returns (named and typed by ``states``) and
    whose value is ``compute`` of them: each class below names them in its class statement,
    ``class X(_SumStates, states=..., update=..., compute=...)``. Constructor keyword arguments
    are passed to :class:`torchmetrics.Metric`."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    _states: ClassVar[Tuple[Tuple[str, torch.dtype], ...]] = ()
    _update_fn: ClassVar[Callable[..., Tuple[Tensor, ...]]]
    _compute_fn: ClassVar[Callable[..., Tensor]]

    def __init_subclass__(cls, states: Tuple[Tuple[str, torch.dtype], ...] = (), update: Any = None,
                          compute: Any = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if update is not None:  # a further subclass without the keywords keeps its parent's
            cls._states = states
            cls._update_fn = staticmethod(update)
        if compute is not None:
            cls._compute_fn = staticmethod(compute)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, dtype in self._states:
            self.add_state(name, default=torch.tensor(0, dtype=dtype), dist_reduce_fx="sum")

    def update(self, *args: Tensor, **kwargs: Tensor) -> None:
        """Add one batch (the arguments are those of the class's ``update``, see its docstring)."""
        sums = type(self)._update_fn(*args, **kwargs)
        for (name, dtype), value in zip(self._states, sums):
            setattr(self, name, getattr(self, name) + value.to(dtype))

    def _sums(self) -> Tuple[Tensor, ...]:
        return tuple(getattr(self, name) for name, _ in self._states)

    def compute(self) -> Any:
        """The measure over everything added (NaN where undefined), in the default float dtype."""
        return type(self)._compute_fn(*self._sums()).to(torch.get_default_dtype())


_RHO = (("rho_sum", torch.float64), ("n_defined", torch.int64))
_AGREEMENT = (("n_agree", torch.int64), ("n_windows", torch.int64))
_COHERENCE = (("intersection", torch.int64), ("union", torch.int64), ("n_layers", torch.int64))


class SpearmanRho(_SumStates, states=_RHO, update=_spearman_update, compute=_spearman_compute):
    r"""Spearman rank correlation across layers, averaged over updates.

    .. math:: \bar\rho = \frac{1}{|D|} \sum_{k \in D} \rho_k

    Each ``update(x, y)`` (real tensors of one shape ``(..., L)``) contributes one rho per ``(L,)``
    series pair (a ``(..., L)`` batch contributes one per leading index), e.g. one per zeta evaluation with ``x`` the EEG gamma power
    and ``y`` the fMRI max zeta of each layer. Updates where rho is undefined (fewer than three
    layers, a constant series, NaN) are left out (:math:`D` holds the defined ones); ``compute``
    returns NaN when none was defined. This is the mean of per-evaluation correlations, not one
    correlation over pooled values, which would mix layers across time.

    Example::

        >>> metric = SpearmanRho()
        >>> metric.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0]))
        >>> metric.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 1.0, 3.0]))
        >>> metric.compute()
        tensor(0.7500)
    """



class FlagAgreement(_SumStates, states=_AGREEMENT, update=_agreement_update, compute=_agreement_compute):
    r"""Share of windows in which EEG and fMRI anomaly flags agree.

    .. math:: \mathrm{agreement} = \frac{\sum_n [e_n = f_n]}{N}

    ``update(eeg_flags, fmri_flags)`` adds windows (bool tensors of the same shape, True =
    flagged). NaN while no window has been seen (undefined).

    Example::

        >>> metric = FlagAgreement()
        >>> metric.update(torch.tensor([True, False]), torch.tensor([True, True]))
        >>> metric.update(torch.tensor([False, False]), torch.tensor([False, False]))
        >>> metric.compute()
        tensor(0.7500)
    """



class LayerCoherence(_SumStates, states=_COHERENCE, update=_coherence_update, compute=_coherence_compute):
    r"""Jaccard overlap of the layers flagged by each modality, pooled over updates.

    .. math:: \mathrm{coherence} = \frac{\sum_k |E_k \cap F_k|}{\sum_k |E_k \cup F_k|}

    ``update(eeg_layers, fmri_layers)`` adds one set of flags per modality (bool tensors of the
    same shape, e.g. ``(L,)``, True = flagged). 1.0 when layers were compared and neither modality
    flagged one; NaN while no layer has been compared. Pooling (micro-average) keeps the state three integers, reduced by ``sum`` across ranks.

    Example::

        >>> metric = LayerCoherence()
        >>> metric.update(torch.tensor([True, True, True]), torch.tensor([False, True, False]))
        >>> metric.compute()
        tensor(0.3333)
    """



class Consistency(_SumStates, states=_RHO + _AGREEMENT + _COHERENCE, update=_consistency_update):
    r"""Cross-modal consistency score in ``[0, 1]`` from the three measures above; NaN while a term is undefined.

    .. math:: \mathrm{consistency} = \frac{1}{3}\left(\frac{\bar\rho + 1}{2} + \mathrm{agreement}
        + \mathrm{coherence}\right)

    Holds the states of :class:`SpearmanRho`, :class:`FlagAgreement` and :class:`LayerCoherence`
    (the same accumulation rules) and combines them with
    :func:`~nn_neuroimaging_lightning.functional.consistency.consistency`: an undefined rho,
    agreement or coherence makes the score NaN. :meth:`compute_components` returns the three
    parts as well.

    ``update(gamma, zeta_max, eeg_flags, fmri_flags, eeg_layers, fmri_layers)`` adds one
    evaluation: ``(L,)`` EEG gamma power and fMRI max zeta per layer (same order); ``(N,)`` bool
    EEG and fMRI flags per compared window; ``(L',)`` bool layers flagged by each modality over
    the layers compared.

    Example::

        >>> metric = Consistency()
        >>> metric.update(
        ...     gamma=torch.tensor([1.0, 2.0, 3.0]), zeta_max=torch.tensor([0.1, 0.2, 0.3]),
        ...     eeg_flags=torch.tensor([False, True]), fmri_flags=torch.tensor([False, True]),
        ...     eeg_layers=torch.tensor([False, True, False]), fmri_layers=torch.tensor([False, True, True]),
        ... )
        >>> metric.compute()  # (1 + 1 + 0.5) / 3
        tensor(0.8333)
        >>> metric.update(gamma=torch.tensor([1.0, 2.0]), zeta_max=torch.tensor([2.0, 1.0]),  # 2 layers
        ...               eeg_flags=torch.tensor([True]), fmri_flags=torch.tensor([True]),
        ...               eeg_layers=torch.tensor([True]), fmri_layers=torch.tensor([True]))
        >>> metric.compute()  # the undefined rho is left out of the mean: (1 + 3/3 + 2/3) / 3
        tensor(0.8889)
        >>> metric.reset()
        >>> metric.update(gamma=torch.tensor([1.0, 2.0]), zeta_max=torch.tensor([2.0, 1.0]),
        ...               eeg_flags=torch.tensor([True]), fmri_flags=torch.tensor([True]),
        ...               eeg_layers=torch.tensor([True]), fmri_layers=torch.tensor([True]))
        >>> metric.compute()  # no defined rho at all
        tensor(nan)
    """

    def compute_components(self) -> Dict[str, Tensor]:
        """``{"consistency", "rho", "agreement", "coherence"}`` as scalar tensors (NaN where undefined).

        States are synchronised across processes for the duration of the call, as in ``compute``.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, process_group=self.process_group):
            return _consistency_compute(*self._sums())

    def compute(self) -> Tensor:
        """The consistency score in ``[0, 1]``, NaN while a term is undefined."""
        return _consistency_compute(*self._sums())["consistency"]
