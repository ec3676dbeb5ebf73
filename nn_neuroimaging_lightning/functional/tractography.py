"""NN-fMRI tractography: connection strength between micro-regions of consecutive layers.

For a weighted module (``nn.Linear`` or ``nn.Conv2d``) with input ``a`` (the *source* activation)
and output ``z`` (the *target* pre-activation, before the nonlinearity ``sigma`` that follows), the
connection strength from source region ``A`` to target region ``B`` is (seed, SPEC §3)

.. math::
    C_{A \\to B} = \\frac{1}{N} \\sum_{n=1}^{N} \\sum_{i \\in A} \\sum_{j \\in B}
        |W_{ji}| \\, \\mathrm{ReLU}(a_{n,i}) \\, \\sigma'(z_{n,j})

i.e. the mean over the ``N`` samples of the batch of the per-sample double sum. ``W_ji`` is the
weight joining source unit ``i`` to target unit ``j``: the weight matrix entry for ``nn.Linear``, the
kernel tap that connects them through the receptive field for ``nn.Conv2d`` (zero when ``i`` lies
outside ``j``'s receptive field or in another channel group). Both are computed exactly.

Regions are given as *region index tensors*: ``source_regions`` has the shape of one sample of
``a`` and holds the region id of every source unit, ``target_regions`` likewise for ``z`` (see
``grid_partition`` in :mod:`nn_neuroimaging_lightning.functional.grid`). Units whose id lies
outside ``[0, n)`` contribute nothing (no host-side range check is made, to stay sync-free).

Everything here is pure torch and device-agnostic; only :func:`critical_pathways` (its list form,
meant for logging steps) moves values to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nn_neuroimaging_lightning._validation import check_int

__all__ = [
    "ACTIVATIONS",
    "PathResult",
    "TractResult",
    "activation_derivative",
    "conv2d_tractography",
    "critical_pathways",
    "linear_tractography",
    "path_strength",
    "pathway_efficiency",
    "top_pathways",
    "tractography",
]

Activation = Union[str, Callable[[Tensor], Tensor]]

#: Names accepted by ``activation``; a callable ``z -> sigma'(z)`` is accepted too.
ACTIVATIONS = ("relu", "identity", "sigmoid", "tanh")

# Upper bound on the elements of each intermediate (joint, pair index, receptive-field copy) that the
# tractography cores materialise at once: 2**18 elements = 1 MiB in float32, about 4 MiB of transient
# memory in all. Larger layers/batches are processed in tiles of output positions and chunks of samples
# (sums accumulated, so the result is the same up to float rounding).
_CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class TractResult:
    """Outcome of :func:`tractography` for one weighted module.

    Attributes:
        matrix: ``(n_source, n_target)`` connection strengths, or ``None`` when not traced.
        traced: ``True`` when ``matrix`` holds the exact strengths; ``False`` when the module (or
            the way its input/output line up with the region indices) has no known unit-to-unit
            mapping. Nothing is ever invented for an untraced pair.
        reason: empty when traced, otherwise why it was not.
        module_type: class name of the module that joins the two layers.
    """

    matrix: Optional[Tensor]
    traced: bool
    reason: str = ""
    module_type: str = ""


@dataclass(frozen=True)
class PathResult:
    """Strongest path through a chain of connection matrices (see :func:`path_strength`).

    Attributes:
        strength: 0-d tensor in ``[0, 1]``, the share of the first layer's connection strength that
            follows the strongest path.
        path: ``(L + 1,)`` long tensor, the region visited in each of the ``L + 1`` layers.
    """

    strength: Tensor
    path: Tensor


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def activation_derivative(z: Tensor, activation: Activation = "relu") -> Tensor:
    """Derivative ``sigma'(z)`` of the nonlinearity that follows the weighted module.

    .. math::
        \\mathrm{relu}: \\mathbb{1}[z > 0], \\quad \\mathrm{identity}: 1, \\quad
        \\mathrm{sigmoid}: s(z)(1 - s(z)), \\quad \\mathrm{tanh}: 1 - \\tanh^2(z)

    Args:
        z: pre-activation, any shape.
        activation: one of ``"relu"``, ``"identity"``, ``"sigmoid"``, ``"tanh"``, or a callable
            returning ``sigma'(z)`` with the shape of ``z``.

    Returns:
        Tensor of the shape, dtype and device of ``z``.

    Raises:
        ValueError: unknown name, or a callable whose result does not have ``z``'s shape.
        TypeError: ``activation`` neither a string nor a callable, or the callable returns a
            non-tensor.

    Example::

        >>> activation_derivative(torch.tensor([-1.0, 0.0, 2.0]))
        tensor([0., 0., 1.])
    """
    if isinstance(activation, str):
        if activation == "relu":
            return (z > 0).to(z.dtype)
        if activation == "identity":
            return torch.ones_like(z)
        if activation == "sigmoid":
            s = torch.sigmoid(z)
            return s * (1 - s)
        if activation == "tanh":
            return 1 - torch.tanh(z).square()
        raise ValueError(f"`activation` must be one of {ACTIVATIONS!r} or a callable, got {activation!r}.")
    if not callable(activation):
        raise TypeError(
            f"`activation` must be one of {ACTIVATIONS!r} or a callable, got {activation!r} "
            f"({type(activation).__name__})."
        )
    out = activation(z)
    if not isinstance(out, Tensor):
        raise TypeError(f"`activation` callable must return a Tensor, got {type(out).__name__}.")
    if out.shape != z.shape:
        raise ValueError(
            f"`activation` callable must return sigma'(z) with the shape of `z` {tuple(z.shape)}, "
            f"got {tuple(out.shape)}."
        )
    return out.to(z.dtype)


def _compute_dtype(t: Tensor) -> torch.dtype:
    # Half/bfloat16 activations (mixed precision) are accumulated in float32.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _safe_ids(regions: Tensor, n: int) -> Tensor:
    """Region ids as long with every id outside ``[0, n)`` sent to the dump bin ``n``."""
    regions = regions.long()
    return torch.where((regions >= 0) & (regions < n), regions, torch.full_like(regions, n))


def _windows(x: Tensor, kernel: Tuple[int, int], stride: Tuple[int, int], dilation: Tuple[int, int]) -> Tensor:
    """Strided view ``(..., Ho, Wo, kh, kw)`` of the receptive fields of an (already padded) ``(..., H, W)``."""
    eh, ew = dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1
    win = x.unfold(-2, eh, stride[0]).unfold(-2, ew, stride[1])  # (..., Ho, Wo, eh, ew)
    return win[..., :: dilation[0], :: dilation[1]]


def _index_dtype(n_source: int, n_target: int) -> torch.dtype:
    # index_add_ is several times faster with int32 indices; fall back to int64 when they do not fit.
    return torch.int32 if (n_source + 1) * (n_target + 1) < 2**31 else torch.int64


def _check_regions(n_source: int, n_target: int) -> None:
    check_int("n_source", n_source, minimum=1)
    check_int("n_target", n_target, minimum=1)


def _check_tensor(name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a Tensor, got {type(value).__name__}.")


def _check_inputs(n_source: int, n_target: int, **tensors: object) -> None:
    """The checks every entry makes: each named input a tensor, both region counts positive."""
    for name, t in tensors.items():
        _check_tensor(name, t)
    _check_regions(n_source, n_target)


def _pair(name: str, value: object) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"`{name}` must be an int or a pair of ints, got {value!r}.")


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------


def _region_shape_problem(a: Tensor, z: Tensor, src: Tensor, tgt: Tensor, between: str) -> Optional[str]:
    """The message when the region maps do not have the shape of one sample of ``a`` / ``z``."""
    if tuple(src.shape) != tuple(a.shape[1:]):
        return (
            f"`source_regions` must have the shape of one sample of `a` {tuple(a.shape[1:])}, got "
            f"{tuple(src.shape)} (is a {between} between the tapped layer and the module?)."
        )
    if tuple(tgt.shape) != tuple(z.shape[1:]):
        return f"`target_regions` must have the shape of one sample of `z` {tuple(z.shape[1:])}, got {tuple(tgt.shape)}."
    return None


def _linear_mismatch(weight: Tensor, a: Tensor, z: Tensor, src: Tensor, tgt: Tensor) -> Optional[str]:
    if weight.dim() != 2:
        return f"`weight` must be (out, in), got shape {tuple(weight.shape)}."
    out_f, in_f = weight.shape
    if a.dim() < 2 or a.shape[-1] != in_f:
        return f"`a` must be (batch, ..., {in_f}) for a weight of shape {tuple(weight.shape)}, got {tuple(a.shape)}."
    if z.shape != a.shape[:-1] + (out_f,):
        return f"`z` must have shape {tuple(a.shape[:-1] + (out_f,))} to match `a` and `weight`, got {tuple(z.shape)}."
    if a.shape[0] == 0:
        return "`a` has an empty batch."
    return _region_shape_problem(a, z, src, tgt, "flatten/pool")


def linear_tractography(
    weight: Tensor, a: Tensor, z: Tensor,
    source_regions: Tensor, target_regions: Tensor, n_source: int, n_target: int,
    activation: Activation = "relu",
) -> Tensor:
    """Exact region-to-region connection strength through a linear map ``z = a W^T (+ b)``.

    .. math::
        C_{A \\to B} = \\frac{1}{N} \\sum_{n} \\sum_{i \\in A} \\sum_{j \\in B}
            |W_{ji}| \\, \\mathrm{ReLU}(a_{n,i}) \\, \\sigma'(z_{n,j})

    Computed as the joint ``ReLU(a)^T sigma'(z) / N`` weighted by ``|W|^T`` and accumulated into
    the region pair of each ``(in, out)`` entry with one ``index_add_``: the ``(N, out, in)``
    product is never materialised, and samples (and tokens) are processed in chunks so that no
    intermediate holds more than about ``2**18`` elements beyond one ``(in, out)`` joint. Inputs
    with extra middle dimensions, ``a`` of shape ``(N, *S, in)`` (e.g. tokens), connect position ``s`` only to position ``s``;
    regions are then indexed over ``(*S, in)`` and ``(*S, out)``.

    Args:
        weight: ``(out, in)`` weight matrix.
        a: ``(N, in)`` or ``(N, *S, in)`` source activation (the module's input).
        z: ``(N, out)`` or ``(N, *S, out)`` target pre-activation (the module's output).
        source_regions: ``(in,)`` or ``(*S, in)`` region id of every source unit.
        target_regions: ``(out,)`` or ``(*S, out)`` region id of every target unit.
        n_source: number of source regions.
        n_target: number of target regions.
        activation: nonlinearity after the module, see :func:`activation_derivative`.

    Returns:
        ``(n_source, n_target)`` tensor on ``a``'s device (float32, float64 for float64 input).

    Raises:
        ValueError: shapes that do not line up, non-positive region counts, unknown activation.
        TypeError: non-tensor inputs or a bad ``activation`` type.

    Example::

        >>> w = torch.tensor([[1.0, -2.0]])
        >>> a = torch.tensor([[1.0, 1.0]])
        >>> linear_tractography(w, a, a @ w.T, torch.tensor([0, 1]), torch.tensor([0]), 2, 1,
        ...                     activation="identity")
        tensor([[1.],
                [2.]])
    """
    _check_inputs(n_source, n_target, weight=weight, a=a, z=z, source_regions=source_regions,
                  target_regions=target_regions)
    reason = _linear_mismatch(weight, a, z, source_regions, target_regions)
    if reason is not None:
        raise ValueError(reason)
    return _linear_core(weight, a, z, source_regions, target_regions, n_source, n_target, activation)


def _linear_core(weight, a, z, src, tgt, n_source, n_target, activation,
                 chunk_elements: int = _CHUNK_ELEMENTS) -> Tensor:
    dtype = _compute_dtype(a)
    src, tgt = src.to(a.device), tgt.to(a.device)  # no-op when the ids already live there
    batch = a.shape[0]
    w_abs_t = weight.detach().to(dtype).abs().t()  # (in, out)
    in_f, out_f = w_abs_t.shape
    a3 = a.reshape(batch, -1, in_f)  # (N, T, in), T = 1 without middle dims
    z3 = z.reshape(batch, -1, out_f)  # (N, T, out)
    tokens = a3.shape[1]
    index_dtype = _index_dtype(n_source, n_target)
    src_ids = _safe_ids(src.reshape(tokens, in_f), n_source).to(index_dtype)  # (T, in)
    tgt_ids = _safe_ids(tgt.reshape(tokens, out_f), n_target).to(index_dtype)  # (T, out)
    out = torch.zeros((n_source + 1) * (n_target + 1), dtype=dtype, device=a.device)
    # Chunks of tokens and samples bound each buffer to about `chunk_elements` elements (at least
    # one token's (in, out) joint, the size of the weight).
    t_step = min(tokens, max(1, chunk_elements // (in_f * out_f)))
    n_step = min(batch, max(1, chunk_elements // (t_step * max(in_f, out_f))))
    for t0 in range(0, tokens, t_step):
        t1 = min(tokens, t0 + t_step)
        joint = None
        for n0 in range(0, batch, n_step):
            n1 = min(batch, n0 + n_step)
            r = torch.relu(a3[n0:n1, t0:t1].to(dtype)).permute(1, 2, 0)  # (t, in, b)
            s = activation_derivative(z3[n0:n1, t0:t1].to(dtype), activation).transpose(0, 1)  # (t, b, out)
            joint = torch.bmm(r, s) if joint is None else joint.baddbmm_(r, s)  # (t, in, out)
        joint.mul_(w_abs_t)
        flat = src_ids[t0:t1, :, None] * (n_target + 1) + tgt_ids[t0:t1, None, :]  # (t, in, out)
        out.index_add_(0, flat.reshape(-1), joint.reshape(-1))
    return (out / batch).view(n_source + 1, n_target + 1)[:n_source, :n_target]


# --------------------------------------------------------------------------------------------
# Conv2d
# --------------------------------------------------------------------------------------------


def _conv_padding(padding, kernel: Tuple[int, int], dilation: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding, with PyTorch's convention for ``"same"``."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
            # PyTorch puts the odd extra pixel on the bottom/right.
            return th // 2, th - th // 2, tw // 2, tw - tw // 2
        raise ValueError(f"`padding` must be an int, a pair of ints, 'valid' or 'same', got {padding!r}.")
    ph, pw = _pair("padding", padding)
    if ph < 0 or pw < 0:
        raise ValueError(f"`padding` must be non-negative, got {padding!r}.")
    return ph, ph, pw, pw


def _conv_mismatch(weight, a, z, src, tgt, stride, pads, dilation, groups) -> Optional[str]:
    if weight.dim() != 4:
        return f"`weight` must be (Co, Ci/groups, kh, kw), got shape {tuple(weight.shape)}."
    co, ci_g, kh, kw = weight.shape
    if a.dim() != 4 or a.shape[1] != ci_g * groups:
        return f"`a` must be (batch, {ci_g * groups}, H, W) for weight {tuple(weight.shape)} and groups={groups}, got {tuple(a.shape)}."
    if co % groups != 0:
        return f"`weight` has {co} output channels, not divisible by groups={groups}."
    if a.shape[0] == 0:
        return "`a` has an empty batch."
    top, bottom, left, right = pads
    ho = (a.shape[2] + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (a.shape[3] + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    expected = (a.shape[0], co, ho, wo)
    if ho < 1 or wo < 1 or tuple(z.shape) != expected:
        return f"`z` must have shape {expected} for this convolution of `a` {tuple(a.shape)}, got {tuple(z.shape)}."
    return _region_shape_problem(a, z, src, tgt, "pool/resize")


def conv2d_tractography(
    weight: Tensor, a: Tensor, z: Tensor,
    source_regions: Tensor, target_regions: Tensor, n_source: int, n_target: int,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation: Activation = "relu",
    *,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> Tensor:
    """Exact region-to-region connection strength through a 2-D convolution (zero padding).

    Target unit ``j = (c_o, y, x)`` is joined to source unit ``i = (c_i, y s_h + k_y d_h - p_t,
    x s_w + k_x d_w - p_l)`` by the kernel tap ``W[c_o, c_i - g C_i/G, k_y, k_x]`` whenever ``i``
    lies inside the input and ``c_i`` is in ``c_o``'s channel group ``g``; padded positions carry
    no unit and contribute nothing. Then

    .. math::
        C_{A \\to B} = \\frac{1}{N} \\sum_{n} \\sum_{j \\in B} \\sum_{i \\in A \\cap RF(j)}
            |W_{ji}| \\, \\mathrm{ReLU}(a_{n,i}) \\, \\sigma'(z_{n,j})

    Implementation: the receptive fields of ``ReLU(a)`` (a strided view, ``K = C_i/G k_h k_w``
    values per output position) are contracted over the batch with ``sigma'(z)`` by one batched
    matmul into the joint ``(H_o W_o, G, C_o/G, K)``, weighted by ``|W|``, and accumulated into the
    region pair of each element with one ``index_add_`` (source region ids are windowed the same
    way, so receptive field and padding are exact). Work is ``O(N C_o K H_o W_o)``. Memory is
    bounded: output positions are processed in tiles (rows, or parts of a row) and samples in
    chunks, accumulated into one reused joint buffer, so that each intermediate (joint, pair index,
    receptive-field copy) holds at most ``chunk_elements`` elements, or one output position's joint
    (``C_o K``, the size of the weight) when that is larger. The default ``2**18`` keeps the
    transient memory to a few MiB in float32 whatever the batch and layer size.
    Any ``groups`` is traced exactly.

    Args:
        weight: ``(C_o, C_i / groups, k_h, k_w)`` kernel.
        a: ``(N, C_i, H, W)`` source activation (the convolution's input).
        z: ``(N, C_o, H_o, W_o)`` target pre-activation (the convolution's output).
        source_regions: ``(C_i, H, W)`` region id of every source unit.
        target_regions: ``(C_o, H_o, W_o)`` region id of every target unit.
        n_source, n_target: the numbers of source and target regions.
        stride: int or pair.
        padding: int, pair, ``"valid"`` or ``"same"`` (zero padding).
        dilation: int or pair.
        groups: channel groups of the convolution.
        activation: as in :func:`linear_tractography`.
        chunk_elements: memory bound: elements of each per-chunk intermediate held at once.

    Returns:
        ``(n_source, n_target)`` tensor on ``a``'s device (float32, float64 for float64 input).

    Raises:
        ValueError: shapes that do not line up with the convolution, bad stride/padding/dilation,
            non-positive region counts, unknown activation.
        TypeError: non-tensor inputs or badly typed arguments.

    Example::

        >>> w = torch.ones(1, 1, 2, 2)
        >>> a = torch.arange(9.0).reshape(1, 1, 3, 3)
        >>> z = torch.nn.functional.conv2d(a, w)
        >>> src = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 1]]).reshape(1, 3, 3)
        >>> conv2d_tractography(w, a, z, src, torch.zeros(1, 2, 2, dtype=torch.long), 2, 1)
        tensor([[36.],
                [28.]])
    """
    _check_inputs(n_source, n_target, weight=weight, a=a, z=z, source_regions=source_regions,
                  target_regions=target_regions)
    check_int("groups", groups, minimum=1)
    check_int("chunk_elements", chunk_elements, minimum=1)
    stride_, dilation_ = _pair("stride", stride), _pair("dilation", dilation)
    if min(stride_) < 1 or min(dilation_) < 1:
        raise ValueError(f"`stride` and `dilation` must be positive, got {stride!r} and {dilation!r}.")
    if weight.dim() != 4:
        raise ValueError(f"`weight` must be (Co, Ci/groups, kh, kw), got shape {tuple(weight.shape)}.")
    pads = _conv_padding(padding, (weight.shape[2], weight.shape[3]), dilation_)
    reason = _conv_mismatch(weight, a, z, source_regions, target_regions, stride_, pads, dilation_, groups)
    if reason is not None:
        raise ValueError(reason)
    return _conv2d_core(weight, a, z, source_regions, target_regions, n_source, n_target,
                        stride_, pads, dilation_, groups, activation, chunk_elements)


def _span(o0: int, o1: int, stride: int, extent: int, pad_lo: int, size: int) -> Tuple[int, int, int, int]:
    """Input slice ``[i0, i1)`` and zero padding ``(lo, hi)`` whose windows are outputs ``[o0, o1)`` (one axis)."""
    p0, p1 = o0 * stride, (o1 - 1) * stride + extent  # window span in padded coordinates
    i0 = min(size, max(0, p0 - pad_lo))
    i1 = max(i0, min(size, p1 - pad_lo))
    lo = min(p1 - p0, max(0, pad_lo - p0))  # windows may lie wholly in the padding
    return i0, i1, lo, (p1 - p0) - lo - (i1 - i0)


def _conv2d_core(weight, a, z, src, tgt, n_source, n_target, stride, pads, dilation, groups,
                 activation, chunk_elements) -> Tensor:
    dtype = _compute_dtype(a)
    src, tgt = src.to(a.device), tgt.to(a.device)  # no-op when the ids already live there
    n, _, h, w = a.shape
    co, ci_g, kh, kw = weight.shape
    co_g, k_g = co // groups, ci_g * kh * kw
    _, _, ho, wo = z.shape
    top, bottom, left, right = pads
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1

    # Region pair index = src * (n_target + 1) + tgt; padded positions (-1) and ids out of range go
    # to the dump row/column n_source / n_target, dropped at the end. Source ids are windowed like
    # ReLU(a), per tile, so receptive fields and padding are exact.
    index_dtype = _index_dtype(n_source, n_target)
    src_pad = F.pad(_safe_ids(src, n_source), (left, right, top, bottom), value=-1)  # (Ci, Hp, Wp)
    tgt_ids = _safe_ids(tgt, n_target).to(index_dtype).reshape(groups, co_g, ho, wo)  # (G, Co/G, Ho, Wo)
    w_abs = weight.detach().to(dtype).abs().reshape(groups, co_g, k_g)  # (G, Co/G, K)

    # Tiles of output positions (rows of full width, or part of one row) and chunks of samples such
    # that every per-chunk buffer (joint, pair index, receptive-field copy) holds at most
    # `chunk_elements` elements (but at least one position's joint, the size of the weight).
    per_pos = co * k_g  # joint elements per output position (all groups)
    cols = min(wo, max(1, chunk_elements // per_pos))
    rows = 1 if cols < wo else min(ho, max(1, chunk_elements // (wo * per_pos)))
    cap = rows * cols * groups  # bmm batch (positions x groups) of a full tile
    samples = min(n, max(1, chunk_elements // (cap * max(k_g, co_g))))
    joint_buf = torch.empty(cap * co_g * k_g, dtype=dtype, device=a.device)
    index_buf = torch.empty(cap * co_g * k_g, dtype=index_dtype, device=a.device)

    out = torch.zeros((n_source + 1) * (n_target + 1), dtype=dtype, device=a.device)
    for y0 in range(0, ho, rows):
        y1 = min(ho, y0 + rows)
        iy0, iy1, pt, pb = _span(y0, y1, stride[0], eh, top, h)
        for x0 in range(0, wo, cols):
            x1 = min(wo, x0 + cols)
            ix0, ix1, pl, pr = _span(x0, x1, stride[1], ew, left, w)
            ny, nx = y1 - y0, x1 - x0
            p = ny * nx * groups
            joint = joint_buf[: p * co_g * k_g].view(p, co_g, k_g)
            for n0 in range(0, n, samples):
                n1 = min(n, n0 + samples)
                a_t = F.pad(torch.relu(a[n0:n1, :, iy0:iy1, ix0:ix1].to(dtype)), (pl, pr, pt, pb))  # (b, Ci, y', x')
                r = _windows(a_t, (kh, kw), stride, dilation).reshape(n1 - n0, groups, ci_g, ny, nx, kh, kw)
                rhs = r.permute(3, 4, 1, 0, 2, 5, 6).reshape(p, n1 - n0, k_g)  # (P, b, K)
                s = activation_derivative(z[n0:n1, :, y0:y1, x0:x1].to(dtype), activation)  # (b, Co, y, x)
                lhs = s.reshape(n1 - n0, groups, co_g, ny, nx).permute(3, 4, 1, 2, 0).reshape(p, co_g, n1 - n0)
                # One (Co/G, b) @ (b, K) product per output position and group, summed over chunks.
                if n0 == 0:
                    torch.bmm(lhs, rhs, out=joint)  # (P, Co/G, K)
                else:
                    joint.baddbmm_(lhs, rhs)
                del a_t, r, rhs, s, lhs
            joint.view(ny, nx, groups, co_g, k_g).mul_(w_abs)
            s_ids = _windows(src_pad[:, y0 * stride[0]: (y1 - 1) * stride[0] + eh,
                                     x0 * stride[1]: (x1 - 1) * stride[1] + ew], (kh, kw), stride, dilation)
            s_ids = torch.where(s_ids < 0, torch.full_like(s_ids, n_source), s_ids)  # (Ci, y, x, kh, kw)
            s_part = (s_ids * (n_target + 1)).to(index_dtype).reshape(groups, ci_g, ny, nx, kh, kw)
            s_part = s_part.permute(2, 3, 0, 1, 4, 5).reshape(ny, nx, groups, 1, k_g)  # (y, x, G, 1, K)
            t_part = tgt_ids[:, :, y0:y1, x0:x1].permute(2, 3, 0, 1)[..., None]  # (y, x, G, Co/G, 1)
            index = index_buf[: p * co_g * k_g].view(ny, nx, groups, co_g, k_g)
            torch.add(s_part, t_part, out=index)
            out.index_add_(0, index.view(-1), joint.view(-1))
    return (out / n).view(n_source + 1, n_target + 1)[:n_source, :n_target]


# --------------------------------------------------------------------------------------------
# generic entry
# --------------------------------------------------------------------------------------------


def tractography(
    module: nn.Module, a: Tensor, z: Tensor,
    source_regions: Tensor, target_regions: Tensor, n_source: int, n_target: int,
    activation: Activation = "relu",
) -> TractResult:
    """Connection strengths through ``module`` (the formula of :func:`linear_tractography`), or an
    explicit "not traced" with the reason.

    Dispatches to :func:`linear_tractography` for ``nn.Linear`` and to
    :func:`conv2d_tractography` for ``nn.Conv2d`` with zero padding (stride, padding, dilation,
    groups read from the module). Any other module type, non-zero padding modes, or inputs whose
    shapes do not match the module and the region indices (e.g. a flatten or pooling between the
    tapped layer and the module, whose unit mapping is unknown here) give ``traced=False`` and a
    ``reason``: a matrix is never invented.

    Args:
        module: the weighted module joining the two layers; ``a`` is its input (source activation)
            and ``z`` its output (target pre-activation), batch first; ``source_regions`` and
            ``target_regions`` hold the region id of every unit of one sample of each. The other
            arguments are those of :func:`linear_tractography`.

    Returns:
        :class:`TractResult`.

    Raises:
        TypeError: ``module`` not an ``nn.Module``, non-tensor inputs, bad ``activation`` type.
        ValueError: non-positive region counts or an unknown activation name.

    Example::

        >>> lin = torch.nn.Linear(2, 1, bias=False)
        >>> _ = lin.weight.data.copy_(torch.tensor([[1.0, -2.0]]))
        >>> a = torch.tensor([[1.0, 1.0]])
        >>> res = tractography(lin, a, lin(a), torch.tensor([0, 1]), torch.tensor([0]), 2, 1, "identity")
        >>> res.traced, res.matrix.detach()
        (True, tensor([[1.],
                [2.]]))
        >>> tractography(torch.nn.MaxPool2d(2), a, a, torch.tensor([0, 1]), torch.tensor([0]), 2, 1).traced
        False
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
    _check_inputs(n_source, n_target, a=a, z=z, source_regions=source_regions, target_regions=target_regions)
    if isinstance(activation, str) and activation not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {ACTIVATIONS!r} or a callable, got {activation!r}.")
    kind = type(module).__name__

    def untraced(reason: str) -> TractResult:
        return TractResult(matrix=None, traced=False, reason=reason, module_type=kind)

    if isinstance(module, nn.Linear):
        weight = module.weight
        reason = _linear_mismatch(weight, a, z, source_regions, target_regions)
        if reason is not None:
            return untraced(reason)
        with torch.no_grad():
            c = _linear_core(weight, a, z, source_regions, target_regions, n_source, n_target, activation)
        return TractResult(matrix=c, traced=True, module_type=kind)

    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            return untraced(
                f"padding_mode={module.padding_mode!r}: padded positions copy other units; only 'zeros' is traced."
            )
        weight = module.weight
        stride, dilation = tuple(module.stride), tuple(module.dilation)
        pads = _conv_padding(module.padding, (weight.shape[2], weight.shape[3]), dilation)
        reason = _conv_mismatch(weight, a, z, source_regions, target_regions, stride, pads, dilation, module.groups)
        if reason is not None:
            return untraced(reason)
        with torch.no_grad():
            c = _conv2d_core(weight, a, z, source_regions, target_regions, n_source, n_target, stride, pads,
                             dilation, module.groups, activation, _CHUNK_ELEMENTS)
        return TractResult(matrix=c, traced=True, module_type=kind)

    return untraced(f"{kind} has no known unit-to-unit mapping; only nn.Linear and nn.Conv2d are traced.")


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------


def _check_matrix(name: str, c: object, min_dim: int = 2) -> None:
    _check_tensor(name, c)
    if c.dim() < min_dim or c.shape[-1] == 0 or c.shape[-2] == 0:
        raise ValueError(f"`{name}` must be a non-empty (n_source, n_target) matrix, got shape {tuple(c.shape)}.")


def top_pathways(c: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The ``k`` strongest region pairs of a connection matrix, as tensors (no host sync).

    .. math::
        \\{(A, B)\\}_{1..k} = \\operatorname{arg\\,top\\text{-}k}_{(A, B)} C_{A \\to B}

    Ties are broken by row-major position (stable sort). ``k`` larger than the number of pairs is
    clamped to it.

    Args:
        c: ``(n_source, n_target)`` connection matrix.
        k: number of pairs, ``>= 1``.

    Returns:
        ``(src, dst, strength)``, each of shape ``(min(k, n_source * n_target),)``, strongest first.

    Raises:
        ValueError: ``k < 1`` or ``c`` not a non-empty 2-D matrix.
        TypeError: ``c`` not a tensor, ``k`` not an int.

    Example::

        >>> top_pathways(torch.tensor([[1.0, 5.0], [3.0, 2.0]]), 2)
        (tensor([0, 1]), tensor([1, 0]), tensor([5., 3.]))
    """
    _check_matrix("c", c)
    if c.dim() != 2:
        raise ValueError(f"`c` must be a (n_source, n_target) matrix, got shape {tuple(c.shape)}.")
    check_int("k", k, minimum=1)
    k = min(k, c.numel())
    values, flat = torch.sort(c.reshape(-1), descending=True, stable=True)
    flat = flat[:k]
    return flat // c.shape[1], flat % c.shape[1], values[:k]


def critical_pathways(c: Tensor, k: int) -> List[Tuple[int, int, float]]:
    """The ``k`` strongest region pairs as a Python list, for logging steps (host sync).

    .. math::
        \\{(A, B, C_{A \\to B})\\}_{1..k}, \\quad C_{A_1 \\to B_1} \\ge C_{A_2 \\to B_2} \\ge \\dots

    Same selection as :func:`top_pathways` (use that one in per-step code: this one moves the
    values to the host).

    Args:
        c: ``(n_source, n_target)`` connection matrix.
        k: number of pairs, ``>= 1``.

    Returns:
        List of ``(src_region, dst_region, strength)``, strongest first.

    Raises:
        ValueError: ``k < 1`` or ``c`` not a non-empty 2-D matrix.
        TypeError: ``c`` not a tensor, ``k`` not an int.

    Example::

        >>> critical_pathways(torch.tensor([[1.0, 5.0], [3.0, 2.0]]), 2)
        [(0, 1, 5.0), (1, 0, 3.0)]
    """
    src, dst, val = top_pathways(c, k)
    return list(zip(src.tolist(), dst.tolist(), val.tolist()))


def pathway_efficiency(c: Tensor) -> Tensor:
    """How concentrated connection strength is on few region pairs: 1 − normalised entropy.

    With ``p_{AB} = C_{A \\to B} / \\sum C`` over the ``P = n_source n_target`` pairs,

    .. math::
        E = 1 - \\frac{-\\sum_{A,B} p_{AB} \\log p_{AB}}{\\log P}

    ``E = 1`` when all strength flows through a single pair, ``E = 0`` when it is spread
    uniformly over all pairs. Conventions: ``0 log 0 = 0``; ``P = 1`` gives ``E = 1``; a matrix
    with no strength at all (``sum C = 0``) has no distribution and gives ``NaN``. Entries must be
    non-negative (as produced by the tractography functions with a non-decreasing nonlinearity).

    Args:
        c: ``(..., n_source, n_target)`` connection matrices; leading dims are batched.

    Returns:
        Tensor of shape ``(...)``, on ``c``'s device.

    Raises:
        ValueError: fewer than 2 dims or an empty matrix.
        TypeError: ``c`` not a tensor.

    Example::

        >>> pathway_efficiency(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        tensor(0.5000)
    """
    _check_matrix("c", c)
    c = c.to(_compute_dtype(c))
    flat = c.reshape(*c.shape[:-2], -1)  # (..., P)
    pairs = flat.shape[-1]
    total = flat.sum(-1, keepdim=True)
    p = flat / total
    entropy = -torch.special.xlogy(p, p).sum(-1)
    if pairs == 1:
        eff = torch.ones_like(entropy)
    else:
        eff = 1 - entropy / torch.log(torch.tensor(float(pairs), dtype=flat.dtype, device=flat.device))
    return torch.where(total.squeeze(-1) > 0, eff, torch.full_like(eff, float("nan")))


def path_strength(chain: Sequence[Tensor]) -> PathResult:
    """Strongest path through consecutive connection matrices (max-product, Viterbi).

    The first matrix, normalised by its total, is the joint share of strength on each pair
    ``(r_0, r_1)``; every later matrix is row-normalised into the share of region ``r_{l-1}``'s
    outgoing strength that goes to ``r_l`` (a row without strength passes nothing on). The strength
    of a path ``r_0 \\to \\dots \\to r_L`` is the product, and the result is the best path:

    .. math::
        S = \\max_{r_0, \\dots, r_L} \\frac{C^{(1)}_{r_0 r_1}}{\\sum C^{(1)}}
            \\prod_{l=2}^{L} \\frac{C^{(l)}_{r_{l-1} r_l}}{\\sum_{r} C^{(l)}_{r_{l-1} r}}

    ``S`` lies in ``[0, 1]``: the share of the first layer's strength that follows the strongest
    route when each region splits what it receives in proportion to its outgoing strengths
    (``S = 1``: a single route carries everything; ``S = 0`` when the first matrix is all zero).

    Chaining requirement: matrix ``l`` must be computed with *target* regions that are the same
    regions, in the same order, as the *source* regions of matrix ``l + 1``, i.e. the tapped
    activation between them is the output of one weighted module and, up to an element-wise
    nonlinearity, the input of the next, partitioned by the same grid. Only the counts can be
    checked here (``C^{(l)}.shape[1] == C^{(l+1)}.shape[0]``); a pooling or flatten in between
    changes the units and breaks the chain.

    Args:
        chain: ``L >= 1`` matrices, ``C^{(l)}`` of shape ``(n_{l-1}, n_l)``.

    Returns:
        :class:`PathResult` with ``strength`` (0-d) and ``path`` (``(L + 1,)`` region indices).

    Raises:
        ValueError: empty chain, a non-2-D matrix, or consecutive region counts that differ.
        TypeError: ``chain`` not a sequence of tensors.

    Example::

        >>> res = path_strength([torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0], [2.0]])])
        >>> res.strength, res.path
        (tensor(0.7500), tensor([0, 1, 0]))
    """
    if isinstance(chain, Tensor) or not isinstance(chain, (list, tuple)):
        raise TypeError(f"`chain` must be a list or tuple of (n_l-1, n_l) tensors, got {type(chain).__name__}.")
    if len(chain) == 0:
        raise ValueError("`chain` must hold at least one connection matrix, got an empty sequence.")
    for idx, c in enumerate(chain):
        _check_matrix(f"chain[{idx}]", c)
        if c.dim() != 2:
            raise ValueError(f"`chain[{idx}]` must be a (n_source, n_target) matrix, got shape {tuple(c.shape)}.")
        if idx > 0 and chain[idx - 1].shape[1] != c.shape[0]:
            raise ValueError(
                f"`chain[{idx - 1}]` has {chain[idx - 1].shape[1]} target regions but `chain[{idx}]` has "
                f"{c.shape[0]} source regions: consecutive matrices must share the regions of the layer between them."
            )
    first = chain[0].to(_compute_dtype(chain[0]))
    total = first.sum()
    joint = torch.where(total > 0, first / total, torch.zeros_like(first))  # (n0, n1)
    best, arg = joint.max(dim=0)  # (n1,), (n1,) best predecessor of each region
    backs = [arg]
    for c in chain[1:]:
        c = c.to(first.dtype)
        rows = c.sum(dim=1, keepdim=True)
        trans = torch.where(rows > 0, c / rows, torch.zeros_like(c))  # (n_{l-1}, n_l)
        best, arg = (best[:, None] * trans).max(dim=0)  # (n_l,)
        backs.append(arg)
    strength, last = best.max(dim=0)
    # Backtrack on the device with gathers: no host sync.
    path = [last]
    for arg in reversed(backs):
        path.append(arg.gather(0, path[-1].reshape(1)).reshape(()))
    return PathResult(strength=strength, path=torch.stack(path[::-1]))
