r"""Region lesions: the value of a coalition of micro-regions, evaluated in batched forwards.

This is the bridge between a model and the Shapley game of
:mod:`nn_neuroimaging_lightning.functional.shapley`: :class:`LesionGame` is a
``value_fn(masks: BoolTensor[K, R]) -> Tensor[K]`` that, for each of the ``K`` rows, runs the model
on a fixed probe batch with every region of one target module's output that is *outside* the
coalition (mask False) replaced by a baseline, and returns the model's performance.

* **Batched coalitions.** ``K`` coalitions are evaluated in one forward of ``K*B`` samples (``K``
  chunked so that ``K*B <= max_batch`` and, with ``max_bytes``, so that the largest activation of
  the forward, ``K*B`` times its bytes per sample, stays within ``max_bytes``; see
  :attr:`LesionGame.rows_per_forward`). Chunking changes only how rows are grouped into forwards:
  every row's value is computed from its own ``B`` samples, whatever the grouping. By default (``expand=True``, built-in metrics only) the
  model runs on the ``B`` probe samples and a forward hook on the target module *expands* its
  ``(B, *units)`` output to ``(K*B, *units)`` through the ``(K, R)`` masks (expanded to units with
  :func:`~nn_neuroimaging_lightning.functional.grid.grid_partition`): everything upstream of the
  target runs once per call instead of ``K`` times (on the reference CNN a row of ``relu2``
  costs 0.26 ms instead of 7.1 ms, a row of ``conv1`` 3.3 ms instead of 7.1 ms). The first call
  checks the expanded values against the plain path (the inputs repeated ``K`` times into one
  ``(K*B, ...)`` batch); when the downstream fails on the shape (e.g. a skip connection adds an
  upstream ``(B, ...)`` tensor) or the values differ, the game falls back to the plain path for
  good. With ``B = 1`` (where a skip connection would broadcast silently) or a user ``value_fn``
  (which sees the inputs) the plain path is always used.
* **Baseline.** ``"zero"`` (a lesioned unit outputs 0) or ``"mean"`` (every unit of a lesioned
  region outputs the region's mean activation over the probe batch, measured once by an
  unlesioned forward).
* **Value.** Minus the cross-entropy when the targets are integer class labels, minus the mean
  squared error otherwise (``metric="auto"``), the accuracy with ``metric="accuracy"``, or a user
  ``value_fn(module, batch) -> per-sample values`` (``batch = (inputs, targets)`` repeated ``K``
  times); the value of a coalition is the mean over the probe samples.
* **No observer effect.** :func:`isolated_evaluation` runs everything in eval mode under
  ``torch.no_grad()``, inside :func:`nn_neuroimaging_lightning.taps.suspended` (no tap of any
  callback records these forwards), with forked RNG streams, and afterwards restores every module's
  training flag and copies every buffer back (batch-norm statistics).

.. math:: f(S) = \mathrm{perf}\big(\mathrm{model}(x)\ \text{with}\ a_g \leftarrow b_g\ \forall g \notin S\big)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nn_neuroimaging_lightning.functional.grid import DEFAULT_GRID, _partition
from nn_neuroimaging_lightning.batches import Batch, BatchSplit, call_model, output_loss, output_tensor, split_batch
from nn_neuroimaging_lightning.taps import first_tensor, suspended

__all__ = ["BASELINES", "METRICS", "IGNORE_INDEX", "LesionGame", "isolated_evaluation", "lesion_value_fn", "per_sample_value"]

#: Lesion baselines: a lesioned unit outputs 0, or its region's mean over the probe batch.
BASELINES: Tuple[str, ...] = ("zero", "mean")
#: Performance measures: ``auto`` = minus cross-entropy (integer labels) or minus MSE.
METRICS: Tuple[str, ...] = ("auto", "cross_entropy", "mse", "accuracy")

UserValueFn = Callable[[nn.Module, Tuple[Tensor, Optional[Tensor]]], Tensor]


def _rng_devices(model: nn.Module) -> List[int]:
    if not torch.cuda.is_available():
        return []
    devices = {p.device.index for p in model.parameters() if p.device.type == "cuda"}
    devices |= {b.device.index for b in model.buffers() if b.device.type == "cuda"}
    devices.discard(None)
    return sorted(devices) or [torch.cuda.current_device()]


@contextmanager
def isolated_evaluation(model: nn.Module) -> Iterator[None]:
    """Run forwards of ``model`` that leave no trace: eval mode, ``no_grad``, taps silenced.

    On exit (also on an exception) every module's ``training`` flag is restored, every buffer is
    copied back from a clone taken on entry (batch-norm running statistics, counters), and the
    CPU and CUDA random streams are those of the entry (:func:`torch.random.fork_rng`).

    Args:
        model: the module (e.g. a ``LightningModule``) whose forwards run inside the block.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
        >>> before = net[1].running_mean.clone()
        >>> with isolated_evaluation(net):
        ...     _ = net.train()  # even a forward in train mode leaves no trace
        ...     _ = net(torch.randn(4, 2))
        >>> torch.equal(net[1].running_mean, before), net.training
        (True, True)
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        # force_eager: a `torch.compile`d model runs these forwards (other batch shapes, lesion
        # hooks) uncompiled, so they never recompile the user's graphs.
        with torch.random.fork_rng(devices=_rng_devices(model)), torch.no_grad(), suspended(), \
                torch.compiler.set_stance("force_eager"):
            model.eval()
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)
        for m, flag in modes:
            m.training = flag


def _is_class_labels(targets: Optional[Tensor]) -> bool:
    """Integer class labels of any rank: ``(B,)`` per sample or ``(B, T, ...)`` per token."""
    return (
        targets is not None
        and not targets.is_floating_point()
        and not targets.is_complex()
        and targets.dtype != torch.bool
        and targets.dim() >= 1
    )


#: Label value skipped by the per-token cross-entropy (PyTorch's and Hugging Face's convention).
IGNORE_INDEX: int = -100


def per_sample_value(out: Tensor, y: Tensor, metric: str, shift: bool = False) -> Tensor:
    r"""Per-sample value (higher is better) of a model output against its target: the one formula of the game.

    * ``cross_entropy``: ``y`` ``(N,)`` class labels and ``out`` ``(N, C, ...)`` (flattened to
      ``(N, -1)``): minus the cross-entropy; ``y`` ``(N, T)`` per-token labels and ``out``
      ``(N, T, V)``: minus the mean cross-entropy over the sample's tokens whose label is not
      :data:`IGNORE_INDEX` (0 for a sample without any), with ``shift=True`` token ``t``'s logits
      judged against label ``t + 1`` (the causal-LM shift).
    * ``accuracy``: the same pairing, ``argmax == label`` (mean over valid tokens).
    * ``mse``: minus the mean squared error, ``y`` with as many elements as ``out``.

    .. math:: v_b = -\frac{1}{|T_b|}\sum_{t \in T_b} \ell(y_{b,t}, z_{b,t})

    Raises:
        ValueError: ``y`` and ``out`` cannot be paired for ``metric`` (the message says both shapes).
    """
    out = out.double()
    n = out.shape[0]
    if metric in ("cross_entropy", "accuracy"):
        if y.dim() == 1 and y.shape[0] == n:
            logits = out.reshape(n, -1)
            if metric == "accuracy":
                return (logits.argmax(1) == y).double()
            return -F.cross_entropy(logits, y, reduction="none")
        if y.dim() >= 2 and out.dim() == y.dim() + 1 and tuple(out.shape[:-1]) == tuple(y.shape):
            if shift:
                out, y = out[:, :-1], y[:, 1:]
            logits = out.reshape(-1, out.shape[-1])  # (N*T, V)
            labels = y.reshape(-1)
            valid = (labels != IGNORE_INDEX).reshape(n, -1).double()  # (N, T)
            if metric == "accuracy":
                per_token = (logits.argmax(1) == labels).double().reshape(n, -1)
            else:
                per_token = -F.cross_entropy(logits, labels.clamp_min(0), reduction="none").reshape(n, -1)
            return (per_token * valid).sum(1) / valid.sum(1).clamp_min(1.0)
        raise ValueError(f"`metric`={metric!r} needs integer class labels (B,) with logits (B, C) or per-token labels"
                         f" (B, T) with logits (B, T, V), got labels {tuple(y.shape)} and output {tuple(out.shape)}.")
    y = y.to(out.dtype)
    if y.numel() != out.numel():
        raise ValueError(f"targets of shape {tuple(y.shape)} do not match the model output {tuple(out.shape)} for the MSE.")
    return -(out - y.reshape(out.shape)).square().reshape(n, -1).mean(1)


def _token_mean(out: Tensor, y: Tensor, shift: bool) -> float:
    """Minus ``per_sample_value``'s cross-entropy pooled over all valid tokens (how models reduce their loss)."""
    if shift:
        out, y = out[:, :-1], y[:, 1:]
    labels = y.reshape(-1)
    ce = F.cross_entropy(out.double().reshape(-1, out.shape[-1]), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return float(ce) / max(int((labels != IGNORE_INDEX).sum()), 1)


class LesionGame:
    r"""The lesion game of one target module on a fixed probe batch, as a batched ``value_fn``.

    Calling the game with ``masks`` ``(K, R)`` (True = region kept) returns ``(K,)`` values
    (float64 on CPU). Inside :meth:`session` (what the callback uses around a whole Shapley
    estimate) the model is isolated once; a call outside a session isolates itself.

    .. math:: f(S) = -\frac{1}{B}\sum_{b} \ell\big(y_b, \mathrm{model}(x_b)\,\big|_{a_g \leftarrow \beta_g,\ g \notin S}\big)

    Args:
        model: the whole model (``nn.Module`` or ``LightningModule``); called as ``model(inputs)``.
        target: the submodule whose output regions are the players.
        inputs: probe inputs ``(B, ...)``.
        targets: probe targets ``(B,)`` integer labels or any float tensor matching the output;
            ``None`` only with a user ``value_fn``.
        grid: the grid over the target's output, see
            :func:`~nn_neuroimaging_lightning.functional.grid.resolve_grid` (clamped silently;
            :attr:`clamped` says whether it was).
        baseline: ``"zero"`` or ``"mean"``.
        metric: ``"auto"``, ``"cross_entropy"``, ``"mse"`` or ``"accuracy"`` (ignored with
            ``value_fn``).
        value_fn: ``value_fn(model, (inputs, targets)) -> (K*B,)`` per-sample values (higher is
            better), overriding ``metric``.
        output_selector: picks the tensor from the model's (and the target's) tuple/dict outputs.
        max_batch: most samples ``K*B`` in one forward (memory cap); also the rows of one call
            that a caller should batch (:attr:`rows_per_call`).
        expand: run the upstream once per call and expand the target's output (see the module
            docstring); ``False`` always repeats the inputs. :attr:`expanding` says which path is
            in use.
        max_bytes: most bytes of the largest activation of one lesion forward (``None``: no
            cap). The bytes per sample of every module's output are measured on the first,
            unlesioned forward; a forward of ``K`` coalitions holds at most ``K*B`` times the
            largest of them (the target's output and the modules after it when expanding, every
            module and the inputs otherwise), so ``K`` is capped at ``max_bytes`` over ``B``
            times that (at least 1). The peak of a forward is about twice this (a layer's input
            and output are alive together).

    Raises:
        ValueError: for a bad ``baseline``/``metric``/``max_batch``, a ``target`` that is not a
            submodule of ``model``, targets missing or not matching the metric, or a target output
            that does not carry the batch on its first axis.
        TypeError: ``inputs``/``targets`` not tensors, ``value_fn`` not callable.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
        >>> _ = net[0].weight.data.copy_(torch.eye(2)); _ = net[1].weight.data.fill_(1.0)
        >>> x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]])
        >>> game = LesionGame(net, net[0], x, y, grid=(2,))
        >>> game(torch.tensor([[True, True], [True, False], [False, False]]))  # -(x1 + x2)^2, -(x1)^2, 0
        tensor([-9., -1.,  0.], dtype=torch.float64)
    """

    def __init__(
        self,
        model: nn.Module,
        target: nn.Module,
        inputs: Tensor,
        targets: Optional[Tensor] = None,
        grid: Union[int, Sequence[int], None] = DEFAULT_GRID,
        baseline: str = "zero",
        metric: str = "auto",
        value_fn: Optional[UserValueFn] = None,
        output_selector: Optional[Callable[[Any], Tensor]] = None,
        max_batch: int = 1024,
        expand: bool = True,
        max_bytes: Optional[int] = None,
    ) -> None:
        if not isinstance(model, nn.Module) or not isinstance(target, nn.Module):
            raise TypeError(f"`model` and `target` must be nn.Modules, got {type(model).__name__} and {type(target).__name__}.")
        if not any(m is target for m in model.modules()):
            raise ValueError(f"`target` ({type(target).__name__}) must be a submodule of `model`.")
        if isinstance(inputs, Batch):
            probe = inputs if targets is None else inputs._replace(target=targets)
        elif isinstance(inputs, Tensor):
            if inputs.dim() < 1 or inputs.shape[0] < 1:
                raise ValueError(f"`inputs` must have a non-empty batch axis, got shape {tuple(inputs.shape)}.")
            probe = Batch((inputs,), {}, targets, int(inputs.shape[0]))
        else:
            raise TypeError(f"`inputs` must be a Tensor (the batch's first element) or a batches.Batch, got {type(inputs).__name__}.")
        targets = probe.target
        if targets is not None and not isinstance(targets, Tensor):
            raise TypeError(f"`targets` must be a Tensor or None, got {type(targets).__name__}.")
        if baseline not in BASELINES:
            raise ValueError(f"`baseline` must be one of {BASELINES!r}, got {baseline!r}.")
        if metric not in METRICS:
            raise ValueError(f"`metric` must be one of {METRICS!r}, got {metric!r}.")
        if value_fn is not None and not callable(value_fn):
            raise TypeError(f"`value_fn` must be callable(module, batch) -> per-sample values, got {value_fn!r}.")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"`max_batch` must be a positive int, got {max_batch!r}.")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"`max_bytes` must be None or a positive int (bytes), got {max_bytes!r}.")
        if value_fn is None and targets is not None:
            if targets.dim() == 0 or targets.shape[0] != probe.size:
                raise ValueError(f"`targets` must have the batch size of `inputs` ({probe.size}), got shape {tuple(targets.shape)}.")
            if metric in ("cross_entropy", "accuracy") and not _is_class_labels(targets):
                raise ValueError(f"`metric`={metric!r} needs integer class labels (B,) or per-token labels (B, T) as targets,"
                                 f" got dtype {targets.dtype} shape {tuple(targets.shape)}.")
        self.model = model
        self.target = target
        self.probe = probe.map(lambda t: t.detach())
        self.inputs = probe.args[0] if probe.args and isinstance(probe.args[0], Tensor) else None
        self.targets = None if targets is None else targets.detach()
        self.batch = int(probe.size)
        self.grid_request = grid
        self.baseline = baseline
        self.metric = metric
        self.user_value_fn = value_fn
        self.output_selector = output_selector
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        # largest activation bytes per probe sample, measured by _probe: after the target, and overall
        self.sample_bytes_downstream = 0
        self.sample_bytes_all = 0
        if not isinstance(expand, bool):
            raise TypeError(f"`expand` must be a bool, got {expand!r}.")
        #: how a coalition's value is formed, settled by the first forward: "metric" (per sample,
        #: :func:`per_sample_value`), "loss" (minus the model's own ``.loss``, one coalition per
        #: forward) or "user" (``value_fn``); :attr:`shift` is the causal shift of per-token labels.
        self.value_mode = "user" if value_fn is not None else "metric"
        self.shift = False
        # None: not yet verified (decided by the first call with K >= 2); True/False: decided.
        self._expand: Optional[bool] = None if (expand and value_fn is None and self.batch > 1) else False
        self._expanding_now = False
        self._active = 0
        self._masks: Optional[Tensor] = None  # (K, R) during a call
        self._k = 0
        self._base: Optional[Tensor] = None  # (*units) baseline value of every unit
        self.unit_shape: Tuple[int, ...] = ()
        self.grid: Tuple[int, ...] = ()
        self.clamped = False
        self.n_regions = 0
        self._index: Optional[Tensor] = None  # (*units) region of every unit
        self._probe()

    # ------------------------------------------------------------------ set-up
    def _probe(self) -> None:
        """One clean forward: the target's output shape, hence the grid, and the region means."""
        seen: List[Tensor] = []
        sizes_in_order: List[Tuple[bool, int]] = []  # (after the target?, output bytes per sample)

        def grab(module: nn.Module, args: Any, output: Any) -> None:
            t = first_tensor(output, self.output_selector)
            if t is not None and not seen:
                seen.append(t.detach())

        def measure(module: nn.Module, args: Any, output: Any) -> None:
            t = output if isinstance(output, Tensor) else first_tensor(output, self.output_selector)
            if isinstance(t, Tensor) and t.dim() >= 1 and t.shape[0] == self.batch:
                sizes_in_order.append((bool(seen), t.numel() * t.element_size() // self.batch))

        handle = self.target.register_forward_hook(grab)
        # registered after `grab`, so the target's own output counts as downstream (seen is set)
        sizers = [m.register_forward_hook(measure) for m in self.model.modules()]
        try:
            with self.session():
                labelled = self.probe.with_target_in_kwargs()  # with the labels the model returns its own loss
                try:
                    output = call_model(self.model, labelled)
                except TypeError:
                    if labelled is self.probe:
                        raise
                    output = call_model(self.model, self.probe)  # a forward that takes no labels
        finally:
            handle.remove()
            for h in sizers:
                h.remove()
        per_input = sum(t.numel() * t.element_size() for t in list(self.probe.args) + list(self.probe.kwargs.values())
                        if isinstance(t, Tensor)) // self.batch
        self.sample_bytes_all = max([per_input] + [b for _, b in sizes_in_order])
        self.sample_bytes_downstream = max([0] + [b for after, b in sizes_in_order if after])
        if not seen:
            raise ValueError(f"`target` ({type(self.target).__name__}) produced no tensor output in a forward of `model`: is it used in forward()?")
        a = seen[0]
        if a.dim() < 2 or a.shape[0] != self.batch:
            raise ValueError(
                f"`target`'s output must carry the batch ({self.batch}) on its first axis, got shape {tuple(a.shape)}."
            )
        if self.user_value_fn is None:
            self._settle_value(output)
        from nn_neuroimaging_lightning.functional.grid import resolve_grid

        self.grid, self.clamped = resolve_grid(tuple(a.shape), self.grid_request)
        index, sizes, _ = _partition(tuple(a.shape), self.grid, a.device)
        self._index = index
        self.n_regions = math.prod(self.grid)
        self.unit_shape = tuple(a.shape[1:])
        if self.baseline == "mean":
            x = a.float().reshape(self.batch, -1).sum(0)  # (U,)
            region_sum = torch.zeros(self.n_regions, dtype=torch.float32, device=a.device).index_add_(0, index.reshape(-1), x)
            region_mean = region_sum / (sizes * self.batch).float()  # (R,)
            self._base = region_mean[index].to(a.dtype)  # (*units)

    def _settle_value(self, output: Any) -> None:
        """Choose the metric, the causal shift, or the model's own loss, from the clean forward's output."""
        out = output_tensor(output, self.output_selector)
        loss = output_loss(output)
        y = self.targets
        reason = ""
        if y is not None and out is not None:
            if self.metric == "auto":
                self.metric = "cross_entropy" if _is_class_labels(y) else "mse"
            per_token = y.dim() >= 2 and self.metric in ("cross_entropy", "accuracy") and out.dim() == y.dim() + 1
            if per_token and loss is not None and y.shape[1] > 1:
                # the model's own loss says whether it judges token t against label t or t + 1
                plain, shifted = _token_mean(out, y, False), _token_mean(out, y, True)
                own = float(loss)
                best = min((abs(plain - own), False), (abs(shifted - own), True))
                if best[0] <= 1e-3 * max(abs(own), 1e-6):
                    self.shift = best[1]
                else:
                    reason = (f"the model's own loss {own:.6g} is neither the per-token cross-entropy ({plain:.6g}) nor its"
                              f" causally shifted form ({shifted:.6g})")
            if not reason:
                try:
                    per_sample_value(out[:1], y[:1], self.metric, self.shift)
                    return
                except ValueError as err:
                    reason = str(err)
        else:
            reason = "the batch has no target" if y is None else "the model's output holds no tensor"
        if loss is not None:
            self.value_mode = "loss"  # fallback: minus the model's own loss, one coalition per forward
            return
        if y is None:
            raise ValueError("`targets` must be given when no `value_fn` is: the default value is minus the loss against"
                             " them (or the model's own `.loss`, which its output does not have).")
        raise ValueError(f"{reason}; pass `value_fn(module, batch) -> per-sample values` or `metric`.")

    # ------------------------------------------------------------------ evaluation
    @contextmanager
    def session(self) -> Iterator["LesionGame"]:
        """Isolate the model once (see :func:`isolated_evaluation`) for many calls."""
        if self._active:
            self._active += 1
            try:
                yield self
            finally:
                self._active -= 1
            return
        with isolated_evaluation(self.model):
            self._active = 1
            try:
                yield self
            finally:
                self._active = 0

    @property
    def expanding(self) -> Optional[bool]:
        """Whether calls expand the target's output (``None`` until the first multi-row call decides)."""
        return self._expand

    @property
    def rows_per_call(self) -> int:
        """Coalitions a caller should pass per call (``max_batch // B``, at least 1).

        A call may hold any number of rows; it runs in forwards of :attr:`rows_per_forward` rows.
        """
        return max(1, self.max_batch // self.batch)

    @property
    def rows_per_forward(self) -> int:
        r"""Coalitions evaluated in one forward: :attr:`rows_per_call`, capped by ``max_bytes``.

        .. math:: K = \max\Big(1, \min\Big(\Big\lfloor \frac{\text{max\_batch}}{B} \Big\rfloor,
            \Big\lfloor \frac{\text{max\_bytes}}{B\, s} \Big\rfloor\Big)\Big)

        with ``s`` the largest activation bytes per sample (:attr:`sample_bytes_downstream` while
        the output is expanded or not yet decided, :attr:`sample_bytes_all` on the plain path).
        Only the grouping of coalitions into forwards changes, not the estimates. Decision (the
        callback's ``zeta_max_bytes``): the default, 4 MiB, keeps the lesion forwards below a demo
        training step's activations; on a time budget, fewer coalitions per forward also means fewer
        samples in the budget on small models (``benchmarks/fmri_localisation.py``: 17/20 at 4 MiB,
        20/20 uncapped), so raise it when memory allows.
        """
        if self.value_mode == "loss":
            return 1  # the model reduces its loss over the whole forward: one coalition each
        k = self.rows_per_call
        if self.max_bytes is not None:
            per_sample = self.sample_bytes_all if self._expand is False else self.sample_bytes_downstream
            k = min(k, self.max_bytes // max(1, self.batch * per_sample))
        return max(1, k)

    def __call__(self, masks: Tensor) -> Tensor:
        if not isinstance(masks, Tensor) or masks.dim() != 2 or masks.shape[1] != self.n_regions:
            got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"`masks` must be a (K, {self.n_regions}) bool tensor, got {got}.")
        outs = []
        with self.session():
            start = 0
            while start < masks.shape[0]:
                k = self.rows_per_forward  # re-read: the first multi-row chunk settles the path
                outs.append(self._chunk(masks[start : start + k]))
                start += k
        return torch.cat(outs).to("cpu", torch.float64)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._masks is None:
            return None
        if isinstance(output, Tensor):
            return self._lesion(output)
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
            return type(output)([self._lesion(output[0]), *output[1:]])
        raise TypeError(
            f"the lesioned module's output must be a Tensor or a tuple starting with one, got {type(output).__name__}."
        )

    def _lesion(self, out: Tensor) -> Tensor:
        k = self._k
        if self._expanding_now and tuple(out.shape) == (self.batch,) + self.unit_shape:
            keep = self._masks.to(out.device)[:, self._index].unsqueeze(1)  # (K, 1, *units)
            base = torch.zeros((), dtype=out.dtype, device=out.device) if self._base is None else self._base.to(out.dtype)
            lesioned = torch.where(keep, out.unsqueeze(0), base)  # (K, B, *units): one write of the expanded output
            return lesioned.reshape((k * self.batch,) + self.unit_shape)
        if tuple(out.shape) != (k * self.batch,) + self.unit_shape:
            raise ValueError(
                f"the lesioned module's output has shape {tuple(out.shape)}, expected {(k * self.batch,) + self.unit_shape}"
                " (the probe batch repeated once per coalition)."
            )
        keep = self._masks.to(out.device)[:, self._index]  # (K, *units)
        view = out.reshape((k, self.batch) + self.unit_shape)
        keep = keep.unsqueeze(1)  # (K, 1, *units)
        if self._base is None:
            lesioned = torch.where(keep, view, torch.zeros((), dtype=view.dtype, device=view.device))
        else:
            lesioned = torch.where(keep, view, self._base.to(view.dtype))
        return lesioned.reshape(out.shape)

    def _chunk(self, masks: Tensor) -> Tensor:
        k = masks.shape[0]
        if k >= 2 and self._expand is not False:
            try:
                values = self._chunk_once(masks, expand=True)
            except (RuntimeError, ValueError, IndexError):  # the downstream cannot take a (K*B, ...) tensor meeting (B, ...) ones
                values = None
            if self._expand is None:
                plain = self._chunk_once(masks[:2], expand=False)
                ok = values is not None and bool(torch.allclose(values[:2], plain, rtol=1e-4, atol=1e-6))
                self._expand = ok
            if values is not None and self._expand:
                return values
        return self._chunk_once(masks, expand=False)

    def _chunk_once(self, masks: Tensor, expand: bool) -> Tensor:
        k = masks.shape[0]
        # expanding: the model runs on the B probe samples and the target's hook expands its output to K*B;
        # else every batch-axis input is repeated K times into one (K*B, ...) batch, row k*B + b
        batch = self.probe if expand else self.probe.repeat(k)
        y = None if batch.target is None else (batch.target if not expand else self.probe.repeat(k).target)
        self._expanding_now = expand
        self._masks, self._k = masks, k
        handle = self.target.register_forward_hook(self._hook)
        try:
            if self.value_mode == "user":
                arg = (batch.args[0], y) if len(batch.args) == 1 and not batch.kwargs else batch
                values = self.user_value_fn(self.model, arg)
                if not isinstance(values, Tensor) or values.numel() != k * self.batch:
                    got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
                    raise ValueError(f"`value_fn` must return one value per sample ({k * self.batch},), got {got}.")
                per_sample = values.reshape(k, self.batch).double()
            elif self.value_mode == "loss":
                loss = output_loss(call_model(self.model, batch.with_target_in_kwargs()))
                if loss is None:
                    raise ValueError("the model's output has no `.loss` in a lesion forward; pass `value_fn`.")
                per_sample = -loss.detach().double().reshape(1, 1).expand(k, 1)
            else:
                out = output_tensor(call_model(self.model, batch), self.output_selector)
                if out is None:
                    raise ValueError("the model's output holds no tensor; pass `output_selector`.")
                if expand and out.shape[0] != k * self.batch:
                    raise RuntimeError(f"expanded forward returned batch {out.shape[0]}, expected {k * self.batch}.")
                per_sample = per_sample_value(out, y, self.metric, self.shift).reshape(k, self.batch)
        finally:
            handle.remove()
            self._masks, self._k, self._expanding_now = None, 0, False
        return per_sample.mean(1)  # (K,)


def lesion_value_fn(
    model: nn.Module,
    target: nn.Module,
    batch: Union[Tensor, Sequence[Any]],
    grid: Union[int, Sequence[int], None] = DEFAULT_GRID,
    baseline: str = "zero",
    metric: str = "auto",
    value_fn: Optional[UserValueFn] = None,
    label_selector: Optional[Callable[[Any], Tensor]] = None,
    output_selector: Optional[Callable[[Any], Tensor]] = None,
    max_batch: int = 1024,
    expand: bool = True,
    max_bytes: Optional[int] = None,
    batch_split: Optional[BatchSplit] = None,
) -> LesionGame:
    """Build a :class:`LesionGame` from a batch as the dataloader yields it.

    Inputs and target by the rule of :func:`nn_neuroimaging_lightning.batches.split_batch`
    (mappings: the mapping minus its label keys as keyword arguments; ``(x, y, ...)``; a tensor),
    or ``label_selector(batch)`` / ``batch_split(batch)``.

    .. math:: f(S) = \\mathrm{perf}(\\mathrm{model}\\ \\text{with regions outside}\\ S\\ \\text{lesioned})

    Args:
        model: the whole model.
        target: the submodule whose output regions are the players.
        batch: a mapping, ``(inputs, targets, ...)`` or an input tensor (then ``value_fn`` or a
            model ``.loss`` is needed).
        grid: grid over the target's output.
        baseline: ``"zero"`` or ``"mean"``.
        metric: see :class:`LesionGame`.
        value_fn: per-sample value override, see :class:`LesionGame`.
        label_selector: ``label_selector(batch) -> targets``.
        output_selector: picks the tensor from tuple/dict outputs.
        max_batch: most samples in one forward.
        expand: run the upstream once per call (see :class:`LesionGame`).
        max_bytes: most bytes of the largest activation of one forward (see :class:`LesionGame`).
        batch_split: ``batch_split(batch) -> (args, kwargs, target)`` overriding the rule.

    Returns:
        The game, a ``value_fn(masks) -> values`` for
        :func:`~nn_neuroimaging_lightning.functional.shapley.shapley_zeta`.

    Raises:
        ValueError, TypeError: as :class:`LesionGame`, or a batch without inputs.

    Example::

        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> game = lesion_value_fn(net, net[0], (torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])), grid=(2,))
        >>> game(torch.ones(1, 2, dtype=torch.bool)).shape
        torch.Size([1])
    """
    return LesionGame(model, target, split_batch(batch, label_selector, batch_split), None, grid, baseline, metric, value_fn,
                      output_selector, max_batch, expand, max_bytes)
