r"""Batches and outputs as users have them: which part of a batch is the input, which the target.

One rule, used by the probe of :class:`~nn_neuroimaging_lightning.callbacks.NNfMRICallback`, the
lesion forwards (:mod:`nn_neuroimaging_lightning.lesion`) and the default value of a coalition:

* **Mapping** (``dict``, Hugging Face ``BatchEncoding``, any ``collections.abc.Mapping``): the inputs
  are the mapping minus its label keys (:data:`LABEL_KEYS`), forwarded as keyword arguments
  (``model(**inputs)``); the target is the value of the first label key present.
* **Tuple / list** ``(x, y, ...)``: the input is the first element (positional), the target the
  second when it is a tensor; further elements are ignored.
* **Tensor**: the input, no target (a user ``value_fn`` is then needed, or the model's ``.loss``).
* Anything else, or a mapping without a tensor: not a batch this rule understands (``TypeError``);
  ``batch_split(batch) -> (args, kwargs, target)`` overrides the whole rule.

The *batch axis* is the first axis of the first tensor input (positional first, then keyword
values in order): every tensor whose first axis has that size is sliced, repeated and moved with
the batch; other values (masks shared by all samples, ints, strings) are passed unchanged.

**Which module is called.** Decision: a ``LightningModule`` that defines ``forward`` itself is
called (``pl_module(*args, **kwargs)``); one without a ``forward`` of its own (the Hugging Face
idiom, ``self.model(**batch).loss`` in the steps) has its ``model`` attribute called, or, without
one, its single direct child module that holds parameters. Anything else is an error that names
the fix (define ``forward``). A plain ``nn.Module`` is called as it is.

**Outputs.** A tensor is the output; dataclass / ``ModelOutput`` / mapping outputs give ``logits``
when present, else the first tensor (:func:`~nn_neuroimaging_lightning.taps.first_tensor`); the
model's own ``loss`` is read by :func:`output_loss`.

Example::

    >>> b = split_batch({"input_ids": torch.zeros(4, 3, dtype=torch.long), "labels": torch.ones(4, 3, dtype=torch.long)})
    >>> b.args, sorted(b.kwargs), tuple(b.target.shape), b.size
    ((), ['input_ids'], (4, 3), 4)
    >>> split_batch((torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))).kwargs
    {}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from nn_neuroimaging_lightning.taps import first_tensor

__all__ = [
    "LABEL_KEYS", "Batch", "BatchSplit", "split_batch", "forward_module", "call_model", "output_tensor", "output_loss",
]

#: Keys of a mapping batch that hold the target (the first present wins; all are removed from the inputs).
LABEL_KEYS: Tuple[str, ...] = ("labels", "label", "targets", "target")

#: ``batch_split(batch) -> (args, kwargs, target)``: a user's own rule.
BatchSplit = Callable[[Any], Tuple[Tuple[Any, ...], Dict[str, Any], Optional[Tensor]]]


class Batch(NamedTuple):
    """A batch split by the rule: ``model(*args, **kwargs)`` is the forward, ``target`` what it is judged against.

    Attributes:
        args: positional inputs.
        kwargs: keyword inputs.
        target: the target tensor, or ``None``.
        size: the batch size ``B`` (first axis of the first tensor input).
        label_key: the mapping key the target came from (``None`` for other forms).
    """

    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    target: Optional[Tensor]
    size: int
    label_key: Optional[str] = None

    def map(self, fn: Callable[[Tensor], Tensor], target: bool = True) -> "Batch":
        """Apply ``fn`` to every tensor that carries the batch axis (the target too, unless ``target=False``)."""
        b = self.size

        def f(v: Any) -> Any:
            return fn(v) if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == b else v

        tgt = self.target
        if target and tgt is not None:
            tgt = fn(tgt) if tgt.dim() >= 1 and tgt.shape[0] == b else tgt
        out = Batch(tuple(f(a) for a in self.args), {k: f(v) for k, v in self.kwargs.items()}, tgt, b, self.label_key)
        first = _first_input(out.args, out.kwargs)
        return out._replace(size=b if first is None else int(first.shape[0]))

    def take(self, k: int) -> "Batch":
        """The first ``k`` samples, detached copies on the CPU (the probe)."""
        k = min(k, self.size)
        return self.map(lambda t: t[:k].detach().to("cpu", copy=True))._replace(size=k)._moved("cpu")

    def to(self, device: Union[str, torch.device]) -> "Batch":
        """Every tensor on ``device`` (those without the batch axis too)."""
        return self._moved(device)

    def repeat(self, k: int, target: bool = True) -> "Batch":
        """Every batch-axis tensor repeated ``k`` times along the batch axis (row ``i*B + b`` is sample ``b``)."""
        return self.map(lambda t: t.repeat((k,) + (1,) * (t.dim() - 1)), target)

    def with_target_in_kwargs(self) -> "Batch":
        """The inputs with the target forwarded too (under its label key): the model then computes its own ``loss``."""
        if self.label_key is None or self.target is None:
            return self
        return self._replace(kwargs={**self.kwargs, self.label_key: self.target})

    def _moved(self, device: Union[str, torch.device]) -> "Batch":
        def f(v: Any) -> Any:
            return v.to(device) if isinstance(v, Tensor) else v

        return Batch(tuple(f(a) for a in self.args), {k: f(v) for k, v in self.kwargs.items()},
                     None if self.target is None else f(self.target), self.size, self.label_key)


def _first_input(args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> Optional[Tensor]:
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, Tensor) and v.dim() >= 1:
            return v
    return None


def split_batch(batch: Any, label_selector: Optional[Callable[[Any], Tensor]] = None,
                batch_split: Optional[BatchSplit] = None) -> Batch:
    """Split ``batch`` into inputs and target by the module's rule (see the module docstring).

    Args:
        batch: what the dataloader yields.
        label_selector: ``label_selector(batch) -> target``, replacing the rule's target.
        batch_split: ``batch_split(batch) -> (args, kwargs, target)``, replacing the whole rule.

    Returns:
        :class:`Batch`.

    Raises:
        TypeError: a batch the rule does not understand, or a ``batch_split`` returning something
            else than ``(tuple, dict, Tensor | None)``.
        ValueError: a batch without a tensor input with a batch axis.
    """
    label_key = None
    if batch_split is not None:
        got = batch_split(batch)
        if not (isinstance(got, tuple) and len(got) == 3 and isinstance(got[0], (tuple, list)) and isinstance(got[1], Mapping)
                and (got[2] is None or isinstance(got[2], Tensor))):
            raise TypeError(f"`batch_split` must return (args: tuple, kwargs: dict, target: Tensor | None), got {type(got).__name__}"
                            f" {got!r:.120}.")
        args, kwargs, target = tuple(got[0]), dict(got[1]), got[2]
    elif isinstance(batch, Tensor):
        args, kwargs, target = (batch,), {}, None
    elif isinstance(batch, Mapping):
        label_key = next((k for k in LABEL_KEYS if k in batch), None)
        kwargs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        args = ()
        target = batch[label_key] if label_key is not None and isinstance(batch[label_key], Tensor) else None
        if target is None:
            label_key = None
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        args = (batch[0],)
        kwargs = {}
        target = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
    else:
        raise TypeError(
            f"a batch must be a Tensor, a Mapping of tensors (dict, BatchEncoding) or an (inputs, targets, ...) sequence"
            f" starting with a Tensor, got {type(batch).__name__}; pass `batch_split(batch) -> (args, kwargs, target)`."
        )
    if label_selector is not None:
        target = label_selector(batch)
        label_key = None
    first = _first_input(args, kwargs)
    if first is None:
        raise ValueError(f"the batch ({type(batch).__name__}) holds no tensor input with a batch axis; pass `batch_split`.")
    return Batch(args, kwargs, target, int(first.shape[0]), label_key)


def _defines_forward(module: nn.Module) -> bool:
    fwd = type(module).forward
    if fwd is nn.Module.forward:
        return False
    try:
        from lightning.pytorch import LightningModule
    except ImportError:  # pragma: no cover - lightning is a dependency
        return True
    return not (isinstance(module, LightningModule) and fwd is LightningModule.forward)


def forward_module(module: nn.Module) -> nn.Module:
    """The module whose call is the model's forward (see the module docstring).

    Raises:
        ValueError: no ``forward`` of its own, no ``model`` attribute and not exactly one child with parameters.
    """
    if _defines_forward(module):
        return module
    inner = getattr(module, "model", None)
    if isinstance(inner, nn.Module):
        return inner
    children = [c for c in module.children() if any(True for _ in c.parameters())]
    if len(children) == 1:
        return children[0]
    raise ValueError(
        f"{type(module).__name__} defines no `forward`, has no `model` attribute and {len(children)} child modules with"
        " parameters: define `forward` (what zeta and tractography call), or set `model`."
    )


def call_model(module: nn.Module, batch: Batch) -> Any:
    """``forward_module(module)(*batch.args, **batch.kwargs)``."""
    return forward_module(module)(*batch.args, **batch.kwargs)


def output_tensor(output: Any, selector: Optional[Callable[[Any], Tensor]] = None) -> Optional[Tensor]:
    """The prediction tensor of a model output: ``selector(output)``, a tensor, ``.logits``, or the first tensor."""
    if selector is not None:
        return first_tensor(output, selector)
    if isinstance(output, Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    return first_tensor(output)


def output_loss(output: Any) -> Optional[Tensor]:
    """The model's own scalar ``loss`` in a dataclass / ``ModelOutput`` / mapping output, else ``None``."""
    if isinstance(output, Tensor):
        return None
    if isinstance(output, Mapping):
        loss = output.get("loss")
    elif dataclasses.is_dataclass(output) or hasattr(output, "loss"):
        loss = getattr(output, "loss", None)
    else:
        loss = None
    return loss if isinstance(loss, Tensor) and loss.numel() == 1 else None
