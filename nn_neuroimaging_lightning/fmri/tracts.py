"""NN-fMRI tractography engine (plain PyTorch, no Lightning): capture, tracing, pathways and chains."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from nn_neuroimaging_lightning.batches import Batch, call_model
from nn_neuroimaging_lightning.functional.grid import grid_partition, resolve_grid
from nn_neuroimaging_lightning.functional.tractography import critical_pathways, path_strength, pathway_efficiency
from nn_neuroimaging_lightning.functional.tractography import tractography as trace_module
from nn_neuroimaging_lightning.lesion import isolated_evaluation
from nn_neuroimaging_lightning.taps import first_tensor

__all__ = ["TractInfo", "Tractography"]

_ACTIVATION_OF = ((nn.ReLU, "relu"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"))
#: ``name -> (input, output, output shape)`` of one capture forward.
Captured = Mapping[str, Tuple[Optional[Tensor], Optional[Tensor], Tuple[int, ...]]]
#: ``fail(what, error, fix)``: report (or raise) one failure; injected by the caller.
FailFn = Callable[[str, BaseException, str], None]


@dataclass
class TractInfo:
    """Tractography between two consecutive tapped layers ``source -> target``.

    Attributes:
        source: name of the upstream tapped layer (its output grid gives the source regions).
        target: name of the downstream weighted module (its output grid gives the target regions).
        matrix: ``(n_source, n_target)`` connection strengths (CPU), ``None`` when not traced.
        traced: whether ``matrix`` holds strengths.
        reason: why not, when not traced.
        mapping: how the source grid meets ``target``'s input: ``"exact"`` (same shape),
            ``"reshaped"`` (same units in memory order, e.g. after a flatten), ``"proportional"``
            (a pooling in between: the same grid laid proportionally over the pooled map, an
            approximation) or ``""``.
        activation: the nonlinearity assumed after ``target`` (the next module if it is a
            ReLU/Sigmoid/Tanh, else ``identity``).
        pathways: the ``top_k`` strongest ``(source_region, target_region, strength)``.
        efficiency: pathway efficiency, 1 − normalised entropy of the strength distribution.
    """

    source: str
    target: str
    matrix: Optional[Tensor]
    traced: bool
    reason: str = ""
    mapping: str = ""
    activation: str = "identity"
    pathways: List[Tuple[int, int, float]] = field(default_factory=list)
    efficiency: float = float("nan")


def _raise(what: str, err: BaseException, fix: str) -> None:
    raise err


class Tractography:
    """Connection strengths between the regions of consecutive tapped layers, from one forward.

    One forward on the probe captures each tapped module's input and output; for consecutive
    tapped layers ``A -> B`` with ``B`` an ``nn.Linear``/``nn.Conv2d`` the connection strengths
    between ``A``'s regions and ``B``'s regions are computed
    (:func:`~nn_neuroimaging_lightning.functional.tractography.tractography`). ``A``'s grid meets
    ``B``'s input exactly when the shapes agree or when only a reshape separates them; across a
    pooling the same grid is laid proportionally over the pooled map (``mapping="proportional"``,
    an approximation); anything else is reported as not traced. Along each maximal run of pairs
    whose middle regions meet exactly, the strongest path is kept in :attr:`path_strength`.

    Args:
        grid: ``(g_h, g_w, g_c)`` of the regions (clamped per layer, see
            :func:`~nn_neuroimaging_lightning.functional.grid.resolve_grid`).
        top_k: critical pathways reported per pair.
        output_selector: picks the tensor from tuple/dict outputs.
        fail: ``fail(what, error, fix)`` called on a failure (default: raise it).

    Example::

        >>> import torch
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> tr = Tractography(grid=(2,))
        >>> tracts = tr.compute(net, torch.randn(8, 4), {"0": net[0], "2": net[2]})
        >>> info = tracts[("0", "2")]
        >>> info.traced, info.mapping, tuple(info.matrix.shape)
        (True, 'exact', (2, 2))
        >>> list(tr.path_strength)
        [('0', '2')]
    """

    def __init__(self, grid: Optional[Sequence[int]], top_k: int = 5, output_selector: Optional[Callable[[Any], Tensor]] = None,
                 fail: FailFn = _raise) -> None:
        self.grid = grid
        self.top_k = top_k
        self.output_selector = output_selector
        self.fail = fail
        self.tracts: Dict[Tuple[str, str], TractInfo] = {}
        self.path_strength: Dict[Tuple[str, ...], Tuple[float, List[int]]] = {}

    def compute(self, model: nn.Module, inputs: Union[Tensor, Batch], modules: Mapping[str, nn.Module],
                trace: Optional[Callable[..., TractInfo]] = None) -> Dict[Tuple[str, str], TractInfo]:
        """One isolated forward on ``inputs`` (a tensor or a split batch); connection matrices between consecutive ``modules``.

        A failure of the forward skips tractography for this evaluation, one of a pair skips that
        pair (``traced=False`` with the reason), each through ``fail``. ``trace(a, b, module_b,
        captured, leaf_calls) -> TractInfo`` replaces :meth:`trace` (tests).
        """
        trace = trace or self.trace
        batch = inputs if isinstance(inputs, Batch) else Batch((inputs,), {}, None, int(inputs.shape[0]))
        # name -> (input, output, output shape); tensors are kept only while a pair still needs them.
        captured: Dict[str, Tuple[Optional[Tensor], Optional[Tensor], Tuple[int, ...]]] = {}
        order: List[str] = []
        leaf_calls: List[nn.Module] = []
        handles = []

        def tap(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if name in captured:
                    return
                out = first_tensor(output, self.output_selector)
                if out is None:
                    return
                inp = args[0] if args and isinstance(args[0], Tensor) else None
                if not captured:  # the first tapped layer is only ever a source: its shape is enough
                    captured[name] = (None, None, tuple(out.shape))
                else:
                    captured[name] = (None if inp is None else inp.detach(), out.detach(), tuple(out.shape))
                order.append(name)
            return hook

        try:
            for name, module in modules.items():
                handles.append(module.register_forward_hook(tap(name)))
            for m in model.modules():
                if not any(True for _ in m.children()):
                    handles.append(m.register_forward_hook(lambda mod, a, o: leaf_calls.append(mod)))
            with isolated_evaluation(model):
                call_model(model, batch)
        except Exception as err:  # never ends the fit (strict=True raises)
            self.fail("tractography (its probe forward)", err, "`tractography=False`, or `batch_split`")
            return self.tracts
        finally:
            for h in handles:
                h.remove()
        tracts: Dict[Tuple[str, str], TractInfo] = {}
        for a_name, b_name in zip(order, order[1:]):
            try:
                tracts[(a_name, b_name)] = trace(a_name, b_name, modules[b_name], captured, leaf_calls)
            except Exception as err:
                self.fail(f"tractography of `{a_name}` -> `{b_name}`", err, "`layers` (leave one of them out), or `tractography=False`")
                tracts[(a_name, b_name)] = TractInfo(a_name, b_name, None, False, f"{type(err).__name__}: {err}")
            captured[b_name] = (None, None, captured[b_name][2])  # only its shape is needed from here on
        self.tracts = tracts
        self.path_strength = self.chains(order, tracts)
        return tracts

    def trace(self, a_name: str, b_name: str, module: nn.Module, captured: Captured, leaf_calls: List[nn.Module]) -> TractInfo:
        """The pair ``a_name -> b_name`` (``module`` is ``b_name``'s) from one capture forward."""
        shape_a = captured[a_name][2]  # only the source layer's output *shape* matters
        in_b, out_b, _ = captured[b_name]
        kind = type(module).__name__
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            return TractInfo(a_name, b_name, None, False, f"{kind} has no known unit-to-unit mapping; only nn.Linear and nn.Conv2d are traced.")
        if in_b is None or out_b is None or not 2 <= len(shape_a) <= 4 or not 2 <= out_b.dim() <= 4:
            return TractInfo(a_name, b_name, None, False, "input or output of unsupported rank.")
        grid_a, _ = resolve_grid(shape_a, self.grid)
        src_a = grid_partition(shape_a, grid_a, in_b.device)
        n_src = math.prod(grid_a)
        if tuple(in_b.shape) == shape_a:
            src, mapping = src_a, "exact"
        elif in_b.shape[0] == shape_a[0] and math.prod(in_b.shape[1:]) == math.prod(shape_a[1:]):
            src, mapping = src_a.reshape(tuple(in_b.shape[1:])), "reshaped"
        elif in_b.dim() == 4 and len(shape_a) == 4 and tuple(in_b.shape[:2]) == shape_a[:2]:
            grid_b_in, _ = resolve_grid(tuple(in_b.shape), self.grid)
            if grid_b_in != grid_a:
                return TractInfo(a_name, b_name, None, False,
                                 f"{b_name}'s input {tuple(in_b.shape)} is a pooled {shape_a} too small for the grid {grid_a}.")
            src, mapping = grid_partition(tuple(in_b.shape), grid_a, in_b.device), "proportional"
        else:
            return TractInfo(a_name, b_name, None, False,
                             f"{b_name}'s input {tuple(in_b.shape)} has no known unit mapping to {a_name}'s output {shape_a}.")
        grid_b, _ = resolve_grid(tuple(out_b.shape), self.grid)
        tgt = grid_partition(tuple(out_b.shape), grid_b, out_b.device)
        activation = "identity"
        for pos, m in enumerate(leaf_calls):
            if m is module:
                nxt = leaf_calls[pos + 1] if pos + 1 < len(leaf_calls) else None
                activation = next((act for cls, act in _ACTIVATION_OF if isinstance(nxt, cls)), "identity")
                break
        res = trace_module(module, in_b, out_b, src, tgt, n_src, math.prod(grid_b), activation)
        if not res.traced:
            return TractInfo(a_name, b_name, None, False, res.reason, mapping, activation)
        matrix = res.matrix.detach().cpu()
        eff = float(pathway_efficiency(matrix)) if matrix.sum() > 0 else float("nan")
        return TractInfo(a_name, b_name, matrix, True, "", mapping, activation, critical_pathways(matrix, self.top_k), eff)

    @staticmethod
    def chains(order: List[str], tracts: Mapping[Tuple[str, str], TractInfo]) -> Dict[Tuple[str, ...], Tuple[float, List[int]]]:
        """Strongest path along each maximal run of traced pairs that share their middle regions exactly."""
        out: Dict[Tuple[str, ...], Tuple[float, List[int]]] = {}
        run: List[TractInfo] = []

        def close() -> None:
            if run:
                res = path_strength([t.matrix for t in run])
                out[tuple([run[0].source] + [t.target for t in run])] = (float(res.strength), res.path.tolist())

        for a, b in zip(order, order[1:]):
            t = tracts[(a, b)]
            if t.traced and t.mapping in ("exact", "reshaped") and (not run or run[-1].matrix.shape[1] == t.matrix.shape[0]):
                run.append(t)
            else:
                close()
                run = [t] if t.traced else []
        close()
        return out

    def state_dict(self) -> Dict[str, Any]:
        """Nothing to checkpoint: the tracts are recomputed at every evaluation (and were never saved)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accepts :meth:`state_dict`'s (empty) output."""
