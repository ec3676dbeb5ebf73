"""Forward-hook manager: which modules to watch, how their outputs are reduced, where samples go.

Three pieces, each usable without Lightning (``Monitor`` and the callbacks build on them):

* :func:`select_layers` — the default selection (:func:`default_layers`: block outputs plus stem
  and head on models built from a repeated block list, else leaf modules that own parameters;
  normalisation layers and embedding tables excluded unless asked for), selection by name glob,
  ``re:`` regex or module type, under the user's own names (no ``_orig_mod.`` from
  ``torch.compile``), and an error listing the available names when a selection matches nothing.
* :class:`LayerTaps` — forward hooks that reduce each tapped output to a small tensor on its own
  device and collect the reductions of one model forward. Hooks are removed by :meth:`detach`,
  which the callbacks call in ``finally``/``teardown``/``on_exception``.
* :class:`RingBuffer` — a preallocated ``(layers, window)`` tensor written at a device-side index,
  plus host-side rings of the same length for the phase, global step and wall-clock time.

Per-step cost per tapped layer of the activity reduction is two aten ops (``abs``, ``sum``; see
:func:`mean_abs_reduction`; CPU activations above 4 MiB are reduced in 1 MiB chunks, two ops per
chunk); dividing by the element count and writing the samples of all layers into the ring is done
once per forward for all layers together.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ._validation import check_layer_selector

LayerSelector = Union[None, str, type, Sequence[Union[str, type]]]

# Depth of `suspended()` blocks: while > 0 no tap of any owner records (our own evaluations, e.g.
# zeta lesion forwards, must not show up in any callback's signal).
_SUSPEND_DEPTH = [0]


@contextmanager
def suspended() -> Iterator[None]:
    """Make every :class:`LayerTaps` ignore the forwards run inside the block."""
    _SUSPEND_DEPTH[0] += 1
    try:
        yield
    finally:
        _SUSPEND_DEPTH[0] -= 1

#: Normalisation layers own parameters but rescale rather than compute; left out by default.
NORM_TYPES: Tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)
#: Embedding lookup tables: never tapped by default (their output is rows of a table, not computed
#: from the activity; a broadcast position table has no batch axis).
EMBEDDING_TYPES: Tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag)
#: torch's own containers: a list of these is not a block list.
CONTAINER_TYPES: Tuple[type, ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
#: The name under which ``torch.compile``'s wrapper registers the compiled module.
_COMPILE_CHILD = "_orig_mod"


def _is_default_layer(module: nn.Module) -> bool:
    """A leaf module that owns parameters and is neither a normalisation layer nor an embedding table."""
    has_own_params = any(True for _ in module.parameters(recurse=False))
    is_leaf = not any(True for _ in module.children())
    return has_own_params and is_leaf and not isinstance(module, NORM_TYPES + EMBEDDING_TYPES)


def _is_compile_wrapper(module: nn.Module) -> bool:
    # `torch.compile(m)` returns a wrapper whose only child is `m`, registered as `_orig_mod`.
    children = [n for n, _ in module.named_children()]
    return children == [_COMPILE_CHILD]


def _unwrap(module: nn.Module) -> nn.Module:
    while _is_compile_wrapper(module):
        module = next(module.children())
    return module


def _user_name(name: str) -> str:
    return ".".join(p for p in name.split(".") if p != _COMPILE_CHILD)


def user_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``model.named_modules()`` under the user's own names: ``torch.compile`` wrappers left out.

    Every ``_orig_mod`` component is removed from the names and the wrapper modules themselves are
    dropped, so ``self.model = torch.compile(net)`` lists ``model.conv1`` (the module inside the
    compiled graph, whose hooks dynamo traces), as does compiling the whole ``LightningModule`` or a
    single block. The root is the first entry, named ``""``.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> holder = nn.Module(); holder.model = torch.compile(net)
        >>> [n for n, _ in user_modules(holder)]
        ['', 'model', 'model.0', 'model.1']
        >>> dict(user_modules(holder))["model"] is net
        True
    """
    return [(_user_name(n), m) for n, m in model.named_modules() if not _is_compile_wrapper(m)]


def _is_block_list(module: nn.Module) -> bool:
    """An ``nn.ModuleList``/``nn.Sequential`` whose elements are all of one composite, parameterised type.

    A block has submodules of its own and owns parameters somewhere inside; torch's containers
    (``nn.Sequential`` of ``nn.Sequential`` ...) are not blocks, so nested plain stacks keep the leaf rule.
    """
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    blocks = [_unwrap(c) for c in module.children()]
    if not blocks:
        return False
    kind = type(blocks[0])
    return (
        all(type(b) is kind for b in blocks)
        and not isinstance(blocks[0], CONTAINER_TYPES)
        and all(any(True for _ in b.children()) and any(True for _ in b.parameters()) for b in blocks)
    )


def _parent(name: str) -> Optional[str]:
    return None if not name else (name.rsplit(".", 1)[0] if "." in name else "")


def _ancestors(name: str) -> Iterator[str]:
    parent = _parent(name)
    while parent is not None:
        yield parent
        parent = _parent(parent)


def _is_embedding_container(module: nn.Module) -> bool:
    # e.g. Hugging Face's `BertEmbeddings`: word + position + token-type tables, LayerNorm, dropout
    leaves = [m for m in module.modules() if m is not module and any(True for _ in m.parameters(recurse=False))]
    return (
        any(True for _ in module.children())
        and any(isinstance(m, EMBEDDING_TYPES) for m in leaves)
        and all(isinstance(m, EMBEDDING_TYPES + NORM_TYPES) for m in leaves)
        and not any(True for _ in module.parameters(recurse=False))
    )


def default_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The default taps of ``model`` (``layers=None``), under the user's own names.

    **Block models.** A *block list* is an ``nn.ModuleList`` or ``nn.Sequential`` (of any length)
    whose elements are all of one class that is not one of torch's containers, has submodules and
    owns parameters: transformer layers (GPT-2's ``transformer.h``, BERT's ``encoder.layer``,
    ``nn.TransformerEncoder.layers``), ResNet stages (``layer1`` = ``nn.Sequential(BasicBlock, ...)``).
    When the model holds at least one, the taps are, in registration order:

    * every **block**: the output of each element — the residual stream, a ResNet block's output
      after its addition. Block lists are taken outermost first: a block list inside a block (a
      stage's own blocks, a mixture-of-experts list, per-head modules) is part of that block and
      not tapped; every block list not inside another block is used (several stages, encoder and
      decoder);
    * every **leaf outside the blocks** that owns parameters and is neither a normalisation layer
      nor an embedding table: the **stem** before the first block (a ResNet's first conv), what
      lies between block lists, and the **head** after the last block (GPT-2's ``lm_head``, BERT's
      ``pooler.dense`` and ``classifier``, a ResNet's final ``Linear``);
    * every **embedding container** outside the blocks: a module with submodules whose
      parameterised leaves are all embedding tables or normalisation layers, at least one table
      (BERT's ``bert.embeddings``: its output is the embedded sequence that enters the first block);
    * when nothing of the above comes before the first block but an embedding table does (GPT-2
      adds its token and position embeddings in its own ``forward``), the stem is the
      parameter-free leaf registered immediately before the first block list in the same parent,
      if there is one (GPT-2's ``transformer.drop``, which receives that sum).

    Never tapped by default in block models: anything inside a block (q/k/v projections, fused
    ``c_attn``, the MLP's linears, the 1x1 skip conv), embedding tables, normalisation layers.

    **Plain models** (no block list): every leaf module that owns parameters, normalisation layers
    and embedding tables excluded (``Conv*``, ``Linear``, ``nn.LSTM``/``nn.GRU`` — a recurrent
    layer is one leaf module whatever its ``num_layers``, tapped once on its output sequence).

    Raises:
        ValueError: nothing qualifies; the message lists the available modules.

    Example::

        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(4, 4)
        ...     def forward(self, x):
        ...         return x + self.fc(x)
        >>> net = nn.Sequential()
        >>> net.add_module("embed", nn.Embedding(10, 4))
        >>> net.add_module("blocks", nn.Sequential(Block(), Block()))
        >>> net.add_module("norm", nn.LayerNorm(4))
        >>> net.add_module("head", nn.Linear(4, 2))
        >>> list(default_layers(net))
        ['blocks.0', 'blocks.1', 'head']
    """
    return _default_selection(model, "layers")


def _default_selection(model: nn.Module, argument: str) -> Dict[str, nn.Module]:
    entries = user_modules(model)  # pre-order, root first
    block_names: List[str] = []
    block_set: set = set()
    for name, module in entries:
        if any(a in block_set for a in _ancestors(name)) or name in block_set:
            continue  # inside a block already chosen: outermost block lists win
        if _is_block_list(module):
            kids = [f"{name}.{k}" if name else k for k, _ in module.named_children()]
            block_names += kids
            block_set.update(kids)
    if not block_set:
        chosen = {n: m for n, m in entries if n and _is_default_layer(m)}
    else:
        chosen = _block_model_selection(entries, block_names, block_set)
    if not chosen:
        raise ValueError(
            f"`{argument}`=None selects block outputs or leaf modules with parameters (embedding tables and norm "
            f"layers excluded), but {type(model).__name__} has none; pass names or types. "
            f"Available modules: {_listing([e for e in entries if e[0]])}."
        )
    return chosen


def _block_model_selection(entries: List[Tuple[str, nn.Module]], block_names: List[str], block_set: set) -> Dict[str, nn.Module]:
    holds_block = {a for b in block_names for a in _ancestors(b)}  # modules with a block below them
    position = {n: i for i, (n, _) in enumerate(entries)}
    first_block = min(position[b] for b in block_names if b in position)
    picked: List[str] = []
    containers: List[str] = []
    table_before_first = False
    for i, (name, module) in enumerate(entries):
        if not name or name in holds_block:
            continue
        if name in block_set:
            picked.append(name)
            continue
        if any(a in block_set or a in containers for a in _ancestors(name)):
            continue  # inside a block, or inside an embedding container already tapped
        if i < first_block and isinstance(module, EMBEDDING_TYPES):
            table_before_first = True
        if _is_embedding_container(module):
            containers.append(name)
            picked.append(name)
        elif _is_default_layer(module):
            picked.append(name)
    if table_before_first and not any(position[n] < first_block for n in picked):
        stem = _stem_before(entries, entries[first_block][0])
        if stem is not None:
            picked.append(stem)
    lookup = dict(entries)
    return {n: lookup[n] for n in sorted(picked, key=position.__getitem__)}


def _stem_before(entries: List[Tuple[str, nn.Module]], first_block: str) -> Optional[str]:
    """The parameter-free leaf registered right before the first block's list, in the same parent."""
    block_list = _parent(first_block)
    parent = _parent(block_list) if block_list is not None else None
    if parent is None:
        return None
    siblings = [(n, m) for n, m in entries if n and _parent(n) == parent]
    names = [n for n, _ in siblings]
    at = names.index(block_list) if block_list in names else 0
    if at == 0:
        return None
    name, module = siblings[at - 1]
    leaf = not any(True for _ in module.children())
    return name if leaf and not any(True for _ in module.parameters()) else None


def _matches(name: str, module: nn.Module, pattern: Union[str, type]) -> bool:
    if isinstance(pattern, type):
        return isinstance(module, pattern)
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def select_layers(model: nn.Module, layers: LayerSelector = None, *, argument: str = "layers") -> Dict[str, nn.Module]:
    """Choose the modules to tap.

    Names are the user's own module names: ``torch.compile`` wrappers add no ``_orig_mod.`` (see
    :func:`user_modules`), whether a submodule, a block or the whole model was compiled.

    Args:
        model: the root module (a ``LightningModule`` or any ``nn.Module``).
        layers: ``None`` for the default taps (:func:`default_layers`: block outputs plus stem and
            head on models built from a repeated block list, else every leaf module that owns
            parameters; normalisation layers and embedding tables excluded); a name glob
            (``"model.conv*"``), a regex prefixed with ``re:`` (``"re:.*fc[0-9]"``), a module type
            (``nn.Conv2d``), or a sequence of these (union). Anything but ``None`` overrides the
            default entirely (a type or glob may select norm layers, embedding tables, q/k/v ...).
        argument: the argument name used in error messages.

    Returns:
        ``{qualified_name: module}`` in registration order.

    Raises:
        TypeError: ``layers`` is not one of the forms above.
        ValueError: the selection matches no module; the message lists the available names.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
        >>> list(select_layers(net))
        ['0', '3']
        >>> list(select_layers(net, nn.BatchNorm1d))
        ['1']
        >>> list(select_layers(torch.compile(net), "re:[0-9]"))
        ['0', '1', '2', '3']
    """
    if layers is None:
        return _default_selection(model, argument)
    check_layer_selector(argument, layers)
    patterns = [layers] if isinstance(layers, (str, type)) else layers
    named = [(n, m) for n, m in user_modules(model) if n]
    chosen = {n: m for n, m in named if any(_matches(n, m, p) for p in patterns)}
    if not chosen:
        raise ValueError(f"`{argument}`={layers!r} matches no module. Available modules: {_listing(named)}.")
    return chosen


def _listing(named: Sequence[Tuple[str, nn.Module]], limit: int = 60) -> str:
    items = [f"{n} ({type(m).__name__})" for n, m in named]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more if items else "<none>"


def first_tensor(output: Any, selector: Optional[Callable[[Any], Tensor]] = None) -> Optional[Tensor]:
    """The tensor to analyse from a module's output.

    Tuple/list outputs (LSTM, attention, Hugging Face layers of older versions) give their first
    tensor, searched depth-first. Mapping outputs (dicts, Hugging Face ``ModelOutput``) give
    ``last_hidden_state`` when present, else their first tensor value whose key is not ``loss``
    (``logits`` of a ``CausalLMOutput``), and the loss only when nothing else is there. Dataclass
    outputs are read as the mapping of their fields. ``selector(output)``, when given, picks first.

    Example::

        >>> out = {"loss": torch.tensor(0.5), "logits": torch.ones(2, 3)}
        >>> tuple(first_tensor(out).shape)
        (2, 3)
        >>> tuple(first_tensor((torch.zeros(2, 4), (torch.zeros(1, 2, 5),))).shape)
        (2, 4)
    """
    if selector is not None:
        output = selector(output)
    if isinstance(output, Tensor):
        return output
    if dataclasses.is_dataclass(output) and not isinstance(output, (type, Mapping)):
        output = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    if isinstance(output, Mapping):
        keys = list(output.keys())
        ordered = [k for k in keys if k == "last_hidden_state"] + [k for k in keys if k not in ("last_hidden_state", "loss")]
        output = [output[k] for k in ordered + [k for k in keys if k == "loss"]]
    if isinstance(output, (list, tuple)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


#: Elements per ``abs`` chunk of a large CPU activation (2**18 float32 = 1 MiB of scratch per taps object).
ABS_CHUNK = 1 << 18
#: CPU activations with more elements than this (4 MiB of float32) are reduced in chunks by :class:`ActivityTaps`.
ABS_CHUNKED_ABOVE = 1 << 20


def mean_abs_reduction(t: Tensor, scratch: Optional[Tensor] = None) -> Tuple[Tensor, int]:
    """The activity reduction of one call: ``(sum |a|, numel)``; the division happens per forward.

    .. math::
        r = \\sum_i |a_i|,\\qquad s_t = r / n

    Two aten ops on the activation's device (``abs``, then ``sum`` accumulated in float32), no host
    sync. With ``scratch`` (a 1-D CPU tensor of the activation's dtype), a contiguous CPU
    activation larger than ``scratch`` is reduced in chunks of ``scratch.numel()`` elements, each
    ``abs`` written into ``scratch`` (``abs``, ``sum`` per chunk, then ``stack`` + ``sum``): the
    same value, but the ``|a|`` copy never leaves the L2 cache and no fresh pages are faulted in.
    Measured inside ``Trainer.fit`` of the 4x-wide CNN (conv1 output 12.8 MB, four tapped layers,
    per step, the variants alternated in one process): in 1 of 4 processes the allocator handed
    ``abs`` fresh pages every step, and ``abs`` + ``sum`` cost 3.3 ms against 1.0 ms chunked; in
    the other 3 they were equal (0.97-1.01 ms against 0.90-1.04 ms; ``sum`` alone 0.37-0.49 ms).
    Activations up to :data:`ABS_CHUNKED_ABOVE` elements keep the two-op form: for the reference
    CNN's conv1 (3.2 MB, plain training loops, 13 processes) ``abs`` + ``sum`` cost 290-350 us in 6
    processes and 830-910 us in 7 (fresh pages), chunked 390-480 us in all; the Lightning runs of
    ``benchmarks/eeg_overhead.py`` have so far all been of the first kind. Under ``torch.compile`` and off CPU the two-op form is always used (inductor
    fuses it; device allocators cache).

    Alternatives measured on CPU and rejected: ``linalg_vector_norm(t, 1)`` (one op, but its
    ord-1 kernel is 1.3-3x slower than ``abs`` + ``sum``), ``cdist(..., p=1)`` against a zero row
    (1.0-1.7x slower), a ``torch.compile``d ``abs().sum()`` (15 s to compile, then 0.8x), and BLAS
    ``?asum`` on the tensor's own memory (one op and 0.2-1x one ``sum()`` in isolation, but
    OpenBLAS's threads and torch's OpenMP threads spin-wait on each other inside a training step: a
    9 ms step became 80-120 ms; with one BLAS thread it is no faster than ``abs`` + ``sum``).

    Example::

        >>> mean_abs_reduction(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        (tensor(10.), 4)
        >>> mean_abs_reduction(torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0]), scratch=torch.empty(2))
        (tensor(15.), 5)
    """
    n = t.numel()
    if (
        scratch is None
        or n <= scratch.numel()
        or t.dtype != scratch.dtype
        or t.device != scratch.device
        or not t.is_contiguous()
        or (t.requires_grad and torch.is_grad_enabled())  # `out=` does not record autograd
        or torch.compiler.is_compiling()
    ):
        return torch.abs(t).sum(dtype=torch.float32), n
    size = scratch.numel()
    parts = [torch.abs(c, out=scratch if c.numel() == size else scratch[: c.numel()]).sum(dtype=torch.float32) for c in t.view(-1).split(size)]
    return torch.stack(parts).sum(), n


class LayerTaps:
    """Forward hooks on selected modules that reduce outputs and collect them per model forward.

    Args:
        modules: ``{name: module}`` as returned by :func:`select_layers`.
        reduce: ``reduce(tensor) -> Any`` applied to each call's output tensor under ``no_grad``.
        selector: picks the tensor from tuple/dict outputs (default: the first tensor).

    The reductions of the calls since the last :meth:`take` are kept per layer; a module called
    several times in one forward therefore contributes all its calls, and the owner averages them.
    Modules that never fire are listed by :meth:`silent`.

    Example::

        >>> net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> taps = LayerTaps(select_layers(net), reduce=lambda t: t.abs().mean())
        >>> with taps.attached():
        ...     _ = net(torch.ones(2, 3))
        >>> [len(calls) for calls in taps.take()]
        [1, 1]
        >>> taps.attached_to  # the hooks are removed on leaving the block
        False
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        reduce: Callable[[Tensor], Any],
        selector: Optional[Callable[[Any], Tensor]] = None,
    ) -> None:
        self.names: List[str] = list(modules)
        self.modules: List[nn.Module] = list(modules.values())
        self.reduce = reduce
        self.selector = selector
        self.enabled = True
        self.dirty = False
        self._fire_counts = [0] * len(self.names)  # calls folded in by `take`; see `fire_counts`
        self._pending: List[List[Any]] = [[] for _ in self.names]
        self._calls: List[int] = []  # layer index of each call since the last `take`, in call order
        self._first_seen: List[int] = []
        self._handles: List[Any] = []
        self._root_handle: Any = None

    # -- hook lifecycle -------------------------------------------------------------------------
    @property
    def attached_to(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def attach(self, root: Optional[nn.Module] = None, on_forward_end: Optional[Callable[[], None]] = None) -> None:
        """Register the hooks (idempotent). ``on_forward_end`` runs after each ``root`` forward."""
        if self._handles:
            return
        for i, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._make_hook(i)))
        if root is not None and on_forward_end is not None:
            self._root_handle = root.register_forward_hook(lambda *_: on_forward_end() if self.enabled and not _SUSPEND_DEPTH[0] else None)

    def detach(self) -> None:
        """Remove every hook this object registered (idempotent, safe in ``finally``)."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()
        if self._root_handle is not None:
            self._root_handle.remove()
            self._root_handle = None

    @contextmanager
    def attached(self, root: Optional[nn.Module] = None, on_forward_end: Optional[Callable[[], None]] = None) -> Iterator["LayerTaps"]:
        self.attach(root, on_forward_end)
        try:
            yield self
        finally:
            self.detach()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Ignore forwards inside the block (our own evaluations, e.g. zeta lesions)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def _make_hook(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self.enabled or _SUSPEND_DEPTH[0]:
                return
            t = output if self.selector is None and type(output) is Tensor else first_tensor(output, self.selector)
            if t is None:
                return
            with torch.no_grad():
                value = self.reduce(t)
            # No branch on a per-call counter here: inside a `torch.compile`d model, dynamo guards on
            # every Python int a hook reads, so a counter recompiles each step. Only in-place appends to
            # lists that live as long as the taps; the bookkeeping is done in `take`, outside the graph.
            self._pending[index].append(value)
            self._calls.append(index)
            self.dirty = True

        return hook

    # -- collection -----------------------------------------------------------------------------
    def take(self) -> List[List[Any]]:
        """The reductions collected since the last call, per layer (empty list: did not fire)."""
        pending = [list(calls) for calls in self._pending]
        for calls in self._pending:
            calls.clear()  # in place: a compiled hook keeps appending to the same list objects
        self._first_seen = self._seen_order()
        self._calls.clear()
        for i, calls in enumerate(pending):
            self._fire_counts[i] += len(calls)
        self.dirty = False
        return pending

    def _seen_order(self) -> List[int]:
        seen = list(self._first_seen)
        for i in self._calls:
            if i not in seen:
                seen.append(i)
        return seen

    @property
    def fire_counts(self) -> List[int]:
        """Calls per tapped module so far (taken and pending)."""
        return [c + len(p) for c, p in zip(self._fire_counts, self._pending)]

    def discard(self) -> None:
        self.take()

    def forward_order(self) -> List[int]:
        """Layer indices in the order they first fired, then the silent ones in selection order."""
        seen = self._seen_order()
        return seen + [i for i in range(len(self.names)) if i not in seen]

    def silent(self) -> List[str]:
        """Names of tapped modules that have never fired."""
        return [n for n, c in zip(self.names, self.fire_counts) if c == 0]


class ActivityTaps(LayerTaps):
    """:class:`LayerTaps` for the EEG signal ``s_t = mean |a|``: one ``(layers,)`` sample per forward.

    A layer called ``k`` times in one forward contributes the mean of its ``k`` per-call means; a
    layer that did not fire in a forward repeats its previous value (0 before its first call).
    """

    def __init__(self, modules: Mapping[str, nn.Module], selector: Optional[Callable[[Any], Tensor]] = None) -> None:
        super().__init__(modules, self._reduce, selector)
        self._scratch: Dict[torch.dtype, Tensor] = {}  # CPU only, allocated at the first large activation
        self._inv_numel_cache: Dict[Tuple[int, ...], Tensor] = {}
        self._last: Optional[Tensor] = None

    def _reduce(self, t: Tensor) -> Tuple[Tensor, int]:
        if t.device.type != "cpu" or t.numel() <= ABS_CHUNKED_ABOVE or torch.compiler.is_compiling():
            return mean_abs_reduction(t)
        scratch = self._scratch.get(t.dtype)
        if scratch is None:
            with torch.inference_mode(False):  # a normal tensor even when first met under inference mode
                scratch = self._scratch[t.dtype] = torch.empty(ABS_CHUNK, dtype=t.dtype)
        return mean_abs_reduction(t, scratch)

    def sample(self) -> Optional[Tensor]:
        """Combine the collected calls into one ``(layers,)`` float32 sample, or ``None``."""
        calls = self.take()
        if not any(calls):
            return None
        if all(len(c) == 1 for c in calls):
            norms = torch.stack([c[0][0] for c in calls])  # (layers,)
            self._last = norms * self._inv_numel(tuple(c[0][1] for c in calls), norms.device)
            return self._last
        values = []
        for i, c in enumerate(calls):
            if c:
                values.append(sum(n / k for n, k in c) / len(c))
            elif self._last is not None:
                values.append(self._last[i])
            else:
                values.append(torch.zeros((), dtype=torch.float32, device=next(x for cc in calls for x, _ in cc).device))
        self._last = torch.stack(values)
        return self._last

    def _inv_numel(self, numels: Tuple[int, ...], device: torch.device) -> Tensor:
        key = numels + (device,)
        cached = self._inv_numel_cache.get(key)
        if cached is None:
            if len(self._inv_numel_cache) > 64:  # bounded: batch sizes are few
                self._inv_numel_cache.clear()
            cached = torch.tensor([1.0 / max(n, 1) for n in numels], dtype=torch.float32, device=device)
            self._inv_numel_cache[key] = cached
        return cached


class NumpyViewState:
    """Copy/pickle support for a buffer whose CPU tensor ``values`` is also written through ``_np``.

    A numpy view does not survive ``copy.deepcopy`` or pickling (the copy would write into an
    orphan array); it is dropped from the state and rebuilt on the copy's own tensor.
    """

    values: Optional[Tensor]
    _np: Optional[np.ndarray]

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_np"] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.values is not None and self.values.device.type == "cpu":
            self._np = self.values.numpy()


class RingBuffer(NumpyViewState):
    """A preallocated ``(rows, window)`` ring of samples with host-side metadata of the same length.

    The sample tensor lives on the device of the first pushed sample and is written with
    ``index_copy_`` at a device-side write index (a Python index that changes every step would
    make ``torch.compile`` recompile). On CPU, outside ``torch.compile``, a float32 sample is
    written through a numpy view instead (no aten op: the push fell from 42 to 14-21 us per step
    of the reference CNN); the device index is brought up to date before the next tensor-path write. Phase code,
    global step and wall-clock time of each sample are kept in numpy rings; their position is
    tracked on the host without reading the device.

    Example::

        >>> ring = RingBuffer(rows=2, window=3)
        >>> for t in range(4):
        ...     ring.push(torch.tensor([t, 10.0 * t]), phase=0, step=t)
        >>> ring.ordered()
        tensor([[ 1.,  2.,  3.],
                [10., 20., 30.]])
        >>> ring.steps().tolist()
        [1, 2, 3]
    """

    def __init__(self, rows: int, window: int) -> None:
        self.rows = rows
        self.window = window
        self.values: Optional[Tensor] = None  # (rows, window)
        self.index: Optional[Tensor] = None  # (1,) int64, device-side write position
        self._np: Optional[np.ndarray] = None  # numpy view of `values` on CPU
        self._index_stale = False  # `index` behind `pos` after numpy writes
        self.pos = 0  # host mirror of the write position
        self.count = 0  # samples held, <= window
        self.total = 0  # samples ever pushed
        self.phase = np.zeros(window, dtype=np.int8)
        self.step = np.zeros(window, dtype=np.int64)
        self.time = np.zeros(window, dtype=np.float64)

    def _allocate(self, device: torch.device) -> None:
        # Normal tensors even when the first sample comes from `trainer.validate` (inference mode):
        # an inference tensor could not be written by a later training step.
        with torch.inference_mode(False):
            self.values = torch.zeros(self.rows, self.window, dtype=torch.float32, device=device)
            self.index = torch.full((1,), self.pos, dtype=torch.long, device=device)
        self._np = self.values.numpy() if device.type == "cpu" else None
        self._index_stale = False


    def push(self, sample: Tensor, phase: int, step: int, wall_time: Optional[float] = None) -> None:
        """Append one ``(rows,)`` sample (no host synchronisation)."""
        if self.values is None:
            self._allocate(sample.device)
        elif sample.device != self.values.device:
            # e.g. restored from a checkpoint on CPU, now running on an accelerator: move once.
            with torch.inference_mode(False):
                self.values = self.values.to(sample.device)
                self.index = self.index.to(sample.device)
            self._np = self.values.numpy() if sample.device.type == "cpu" else None
        if self._np is not None and sample.dtype == torch.float32 and not sample.requires_grad and not torch.compiler.is_compiling():
            # CPU, eager: write through the numpy view (no aten op); the device index catches up
            # if a compiled caller ever writes next.
            self._np[:, self.pos] = sample.numpy()
            self._index_stale = True
        else:
            if self._index_stale:
                self.index.fill_(self.pos)
                self._index_stale = False
            self.values.index_copy_(1, self.index, sample.reshape(self.rows, 1).to(self.values.dtype))
            self.index.add_(1).remainder_(self.window)
        self.phase[self.pos] = phase
        self.step[self.pos] = step
        self.time[self.pos] = time.time() if wall_time is None else wall_time
        self.pos = (self.pos + 1) % self.window
        self.count = min(self.count + 1, self.window)
        self.total += 1

    def slots(self, last: Optional[int] = None) -> np.ndarray:
        """Ring slots of the held samples (the newest ``last``), oldest first."""
        n = self.count if last is None else min(last, self.count)
        return (np.arange(self.pos - n, self.pos) % self.window).astype(np.int64)

    def ordered(self, last: Optional[int] = None) -> Tensor:
        """The held samples, oldest first: ``(rows, n)`` with ``n <= window``."""
        if self.values is None:
            return torch.zeros(self.rows, 0)
        idx = torch.from_numpy(self.slots(last)).to(self.values.device, non_blocking=True)
        return self.values.index_select(1, idx)

    def phases(self, last: Optional[int] = None) -> np.ndarray:
        return self.phase[self.slots(last)]

    def steps(self, last: Optional[int] = None) -> np.ndarray:
        return self.step[self.slots(last)]

    def times(self, last: Optional[int] = None) -> np.ndarray:
        return self.time[self.slots(last)]

    def relabel(self, back: int, phase: int) -> None:
        """Change the phase code of the sample ``back`` positions before the newest (0 = newest)."""
        if back < self.count:
            self.phase[(self.pos - 1 - back) % self.window] = phase

    def nbytes(self) -> int:
        tensor_bytes = 0 if self.values is None else self.values.numel() * self.values.element_size() + 8
        return tensor_bytes + self.phase.nbytes + self.step.nbytes + self.time.nbytes

    def state_dict(self) -> Dict[str, Any]:
        values = torch.zeros(self.rows, self.window) if self.values is None else self.values.detach().cpu().clone()
        return {
            "values": values,
            "pos": self.pos,
            "count": self.count,
            "total": self.total,
            "phase": torch.from_numpy(self.phase.copy()),
            "step": torch.from_numpy(self.step.copy()),
            "time": torch.from_numpy(self.time.copy()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = state.get("values")
        if values is None or tuple(values.shape) != (self.rows, self.window):
            raise ValueError(
                f"ring buffer state has shape {None if values is None else tuple(values.shape)}, "
                f"expected {(self.rows, self.window)}: the tapped layers or `window` changed."
            )
        self.pos = int(state.get("pos", 0)) % self.window
        self.count = int(state.get("count", 0))
        self.total = int(state.get("total", self.count))
        device = self.values.device if self.values is not None else torch.device("cpu")
        self._allocate(device)
        self.values.copy_(values)
        for key in ("phase", "step", "time"):
            if key in state:
                getattr(self, key)[:] = state[key].numpy()
