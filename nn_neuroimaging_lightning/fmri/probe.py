"""NN-fMRI probe engine (plain PyTorch, no Lightning): the fixed batch on which zeta and tractography are computed."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from nn_neuroimaging_lightning.batches import Batch, BatchSplit, split_batch

__all__ = ["ProbeBatch"]


class ProbeBatch:
    """The probe of zeta and tractography: the first ``size`` samples of the first validation batch seen.

    Without a validation batch, the first training batch's: :meth:`offer` is called with each
    training batch (it takes one while it holds none) and each validation batch (it takes the first
    one and keeps it: a validation probe replaces a training one, never the reverse). The batch is
    split into inputs and target by :func:`~nn_neuroimaging_lightning.batches.split_batch`
    (``label_selector``, ``batch_split``) and its first ``size`` samples are cloned once to the CPU
    (:meth:`~nn_neuroimaging_lightning.batches.Batch.take`). The probe is not checkpointed: after a
    resume it is taken again from the next batches. Under DDP every rank must play the same game, so
    the caller broadcasts rank 0's probe (:class:`~nn_neuroimaging_lightning.NNfMRICallback` through
    ``trainer.strategy.broadcast``).

    A batch the rule cannot split (or that holds no sample) gives no probe: ``warn`` is called with
    the cause and the argument that fixes it (each time; the caller says it once), or, with
    ``strict=True``, the error is raised. :meth:`shared` without a probe calls ``missing``.

    Args:
        size: samples of the probe.
        label_selector: ``label_selector(batch) -> targets`` replacing the rule's target.
        batch_split: ``batch_split(batch) -> (args, kwargs, target)`` replacing the rule.
        strict: raise a batch the rule cannot split instead of warning.
        warn: ``warn(message)`` for a batch that cannot be split, default :func:`warnings.warn`.
        missing: ``missing(message)`` for an evaluation without a probe, default :func:`warnings.warn`.

    Example::

        >>> import torch
        >>> probe = ProbeBatch(2)
        >>> probe.offer((torch.zeros(4, 3), torch.zeros(4)), from_val=False)
        >>> probe.offer((torch.ones(4, 3), torch.ones(4)), from_val=False)  # holds one: kept
        >>> probe.batch.size, float(probe.batch.target.sum()), probe.from_val
        (2, 0.0, False)
        >>> probe.offer({"x": torch.ones(5, 3), "labels": torch.ones(5)}, from_val=True)  # the first validation batch wins
        >>> probe.batch.size, float(probe.batch.target.sum()), probe.from_val
        (2, 2.0, True)
        >>> probe.shared("cpu").kwargs["x"].shape, ProbeBatch(2, missing=print).shared("cpu")
        NNfMRICallback: no probe batch has been seen yet (...); zeta skipped.
        (torch.Size([2, 3]), None)
    """

    def __init__(self, size: int, label_selector: Optional[Callable[[Any], Tensor]] = None,
                 batch_split: Optional[BatchSplit] = None, strict: bool = False,
                 warn: Callable[[str], None] = warnings.warn, missing: Callable[[str], None] = warnings.warn) -> None:
        self.size, self.label_selector, self.batch_split, self.strict = size, label_selector, batch_split, strict
        self.warn, self.missing = warn, missing
        self.batch: Optional[Batch] = None
        self.from_val = False  # whether `batch` comes from a validation batch (then it is kept)

    def offer(self, batch: Any, from_val: bool) -> None:
        """Take the probe from ``batch`` if none is held (a training batch) or none from validation yet (a validation batch)."""
        if self.from_val or (self.batch is not None and not from_val):
            return
        split = self.split(batch)
        if split is None or split.size == 0:
            return
        self.batch = split.take(self.size)
        self.from_val = from_val

    def shared(self, device: Union[str, torch.device], broadcast: Optional[Callable[[Any], Any]] = None) -> Optional[Batch]:
        """The probe on ``device``; rank 0's through ``broadcast`` (every rank must play the same game).

        ``None``, with a ``missing`` notice, while no batch could be taken (on rank 0).
        """
        probe = self.batch if broadcast is None else broadcast(self.batch)
        if probe is None:
            self.missing("NNfMRICallback: no probe batch has been seen yet (no training or validation batch could be split"
                         " into inputs and target; see `batch_split`); zeta skipped.")
            return None
        return probe.to(device)

    def split(self, batch: Any) -> Optional[Batch]:
        """The batch split by :func:`~nn_neuroimaging_lightning.batches.split_batch`; ``None`` (``warn``) if it cannot be."""
        try:
            return split_batch(batch, self.label_selector, self.batch_split)
        except (TypeError, ValueError) as err:
            if self.strict:
                raise
            self.warn(f"NNfMRICallback: no probe for zeta and tractography: {err} (the argument that fixes it:"
                      " `batch_split(batch) -> (args, kwargs, target)`).")
            return None
