"""Tractography against hand-worked numbers and brute-force loops over units."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nn_neuroimaging_lightning.functional.tractography import (
    PathResult,
    TractResult,
    activation_derivative,
    conv2d_tractography,
    critical_pathways,
    linear_tractography,
    path_strength,
    pathway_efficiency,
    top_pathways,
    tractography,
)

# ------------------------------------------------------------------------------------------
# local helpers (independent of functional/grid.py)
# ------------------------------------------------------------------------------------------


def _split_ids(n, g):
    """Part index of each of n positions, torch.tensor_split convention (first n % g one larger)."""
    ids = torch.empty(n, dtype=torch.long)
    for part, chunk in enumerate(torch.tensor_split(torch.arange(n), g)):
        ids[chunk] = part
    return ids


def _regions_chw(shape, grid):
    """Region ids for (C, H, W) with grid (g_h, g_w, g_c): r = (i_h * g_w + i_w) * g_c + i_c."""
    c, h, w = shape
    g_h, g_w, g_c = min(grid[0], h), min(grid[1], w), min(grid[2], c)
    ic, ih, iw = _split_ids(c, g_c), _split_ids(h, g_h), _split_ids(w, g_w)
    ids = (ih[None, :, None] * g_w + iw[None, None, :]) * g_c + ic[:, None, None]
    return ids, g_h * g_w * g_c


def _deriv_autograd(z, activation):
    """sigma'(z) via autograd: an independent reference for the closed forms."""
    fn = {"relu": torch.relu, "identity": lambda t: t, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[activation]
    z = z.detach().double().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(z).sum(), z)
    return g


def _brute_linear(w, a, z, src, tgt, n_src, n_tgt, activation):
    s = _deriv_autograd(z, activation).tolist()
    w, a, src, tgt = w.tolist(), a.tolist(), src.tolist(), tgt.tolist()
    c = [[0.0] * n_tgt for _ in range(n_src)]
    for b in range(len(a)):
        for i in range(len(a[0])):
            for j in range(len(w)):
                c[src[i]][tgt[j]] += abs(w[j][i]) * max(a[b][i], 0.0) * s[b][j]
    return torch.tensor(c, dtype=torch.float64) / len(a)


def _as_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _brute_conv(w, a, z, src, tgt, n_src, n_tgt, stride, padding, dilation, groups, activation):
    s = _deriv_autograd(z, activation).tolist()
    co_n, ci_g, kh, kw = w.shape
    bsz, ci_n, h, wd = a.shape
    _, _, ho, wo = z.shape
    co_g = co_n // groups
    (sh, sw), (ph, pw), (dh, dw) = (_as_pair(v) for v in (stride, padding, dilation))
    w, a, src, tgt = w.tolist(), a.tolist(), src.tolist(), tgt.tolist()
    c = [[0.0] * n_tgt for _ in range(n_src)]
    for b, co, y, x, cil, ky, kx in itertools.product(
        range(bsz), range(co_n), range(ho), range(wo), range(ci_g), range(kh), range(kw)
    ):
        ci = (co // co_g) * ci_g + cil
        yi, xi = y * sh - ph + ky * dh, x * sw - pw + kx * dw
        if 0 <= yi < h and 0 <= xi < wd:
            c[src[ci][yi][xi]][tgt[co][y][x]] += abs(w[co][cil][ky][kx]) * max(a[b][ci][yi][xi], 0.0) * s[b][co][y][x]
    return torch.tensor(c, dtype=torch.float64) / bsz


# ------------------------------------------------------------------------------------------
# Linear
# ------------------------------------------------------------------------------------------


def _toy():
    # Linear 4 -> 2, no bias. Source regions {0,1} -> 0, {2,3} -> 1; target unit j -> region j.
    w = torch.tensor([[1.0, -2.0, 0.0, 3.0], [2.0, 1.0, -1.0, 0.0]])
    a = torch.tensor([[1.0, 2.0, -1.0, 1.0], [1.0, 0.0, 1.0, 1.0]])
    return w, a, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])


def test_linear_hand_worked_toy():
    # z = a W^T: sample 0 -> [0, 5] (relu' = [0, 1]: z = 0 counts as inactive), sample 1 -> [4, 1] ([1, 1]).
    # |W| = [[1, 2, 0, 3], [2, 1, 1, 0]];  ReLU(a): s0 = [1, 2, 0, 1], s1 = [1, 0, 1, 1].
    # sample 0 (only target 1 active): C[0,1] = 2*1 + 1*2 = 4, C[1,1] = 1*0 + 0*1 = 0 -> [[0, 4], [0, 0]]
    # sample 1: C[0,0] = 1*1 + 2*0 = 1, C[0,1] = 2*1 + 1*0 = 2, C[1,0] = 0*1 + 3*1 = 3, C[1,1] = 1*1 + 0*1 = 1
    # mean over the batch: [[0.5, 3.0], [1.5, 0.5]]
    w, a, src, tgt = _toy()
    z = a @ w.T
    assert torch.equal(z, torch.tensor([[0.0, 5.0], [4.0, 1.0]]))
    expected = torch.tensor([[0.5, 3.0], [1.5, 0.5]])
    torch.testing.assert_close(linear_tractography(w, a, z, src, tgt, 2, 2), expected)

    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    res = tractography(lin, a, lin(a), src, tgt, 2, 2)
    assert isinstance(res, TractResult) and res.traced and res.reason == "" and res.module_type == "Linear"
    torch.testing.assert_close(res.matrix, expected)
    assert not res.matrix.requires_grad


@pytest.mark.parametrize(
    ("in_f", "out_f", "n_src", "n_tgt", "activation"),
    [(7, 5, 3, 2, "relu"), (6, 4, 1, 4, "sigmoid"), (5, 9, 5, 3, "tanh"), (3, 3, 2, 2, "identity")],
)
def test_linear_matches_brute_force(in_f, out_f, n_src, n_tgt, activation):
    g = torch.Generator().manual_seed(in_f * 31 + out_f)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    a = torch.randn(4, in_f, generator=g, dtype=torch.float64)
    z = a @ w.T + 0.1
    src, tgt = _split_ids(in_f, n_src), _split_ids(out_f, n_tgt)
    got = linear_tractography(w, a, z, src, tgt, n_src, n_tgt, activation)
    assert got.dtype == torch.float64 and got.shape == (n_src, n_tgt)
    torch.testing.assert_close(got, _brute_linear(w, a, z, src, tgt, n_src, n_tgt, activation))


def test_linear_sequence_positions_only_connect_to_themselves():
    # (B, T, D) input: regions over (T, D); the brute force treats every (t, i) -> (t, j) link.
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64)
    a = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    z = a @ w.T
    src = _split_ids(6, 2)[:, None] * 2 + _split_ids(5, 2)[None, :]  # (T, in), 4 regions
    tgt = _split_ids(6, 3)[:, None] + torch.zeros(6, 4, dtype=torch.long)  # (T, out), 3 regions
    got = linear_tractography(w, a, z, src, tgt, 4, 3)
    s = (z > 0).double()
    expected = torch.zeros(4, 3, dtype=torch.float64)
    for b, t, i, j in itertools.product(range(3), range(6), range(5), range(4)):
        expected[src[t, i], tgt[t, j]] += abs(w[j, i]) * max(a[b, t, i], 0) * s[b, t, j]
    torch.testing.assert_close(got, expected / 3)


def test_out_of_range_region_ids_contribute_nothing():
    w, a, src, tgt = _toy()
    z = a @ w.T
    full = linear_tractography(w, a, z, src, tgt, 2, 2)
    dropped = linear_tractography(w, a, z, torch.tensor([0, 0, 7, -1]), tgt, 2, 2)
    torch.testing.assert_close(dropped, torch.stack([full[0], torch.zeros(2)]))


def test_callable_activation_and_half_precision():
    w, a, src, tgt = _toy()
    z = a @ w.T
    got = linear_tractography(w, a, z, src, tgt, 2, 2, activation=lambda t: torch.full_like(t, 2.0))
    torch.testing.assert_close(got, 2 * linear_tractography(w, a, z, src, tgt, 2, 2, activation="identity"))
    half = linear_tractography(w.bfloat16(), a.bfloat16(), z.bfloat16(), src, tgt, 2, 2)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, torch.tensor([[0.5, 3.0], [1.5, 0.5]]))


@pytest.mark.parametrize("activation", ["relu", "identity", "sigmoid", "tanh"])
def test_activation_derivative_matches_autograd(activation):
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(activation_derivative(z, activation), _deriv_autograd(z, activation))


# ------------------------------------------------------------------------------------------
# Conv2d
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ci", "co", "hw", "k", "stride", "padding", "dilation", "groups", "grid_in", "grid_out", "activation"),
    [
        (3, 4, (7, 5), 3, 1, 0, 1, 1, (2, 3, 2), (3, 2, 3), "relu"),
        (3, 4, (7, 7), 3, 2, 1, 1, 1, (3, 3, 2), (2, 2, 4), "relu"),
        (2, 3, (9, 8), 3, 1, 1, 2, 1, (4, 3, 2), (3, 3, 2), "sigmoid"),
        (2, 2, (9, 9), 3, 2, 0, 2, 1, (3, 2, 1), (2, 1, 2), "tanh"),
        (4, 6, (6, 7), 3, 1, 1, 1, 2, (2, 3, 3), (2, 2, 4), "relu"),
        (4, 4, (5, 5), 1, 2, 0, 1, 4, (2, 2, 2), (3, 3, 3), "identity"),
        (3, 2, (5, 6), 2, 1, 1, 1, 1, (5, 1, 3), (1, 4, 2), "relu"),
        (2, 4, (8, 7), (2, 3), (1, 2), (1, 0), (2, 1), 2, (3, 2, 2), (2, 3, 2), "relu"),
        (3, 3, (7, 9), (3, 1), (2, 1), (0, 2), (1, 3), 3, (2, 4, 3), (3, 2, 3), "sigmoid"),
    ],
)
def test_conv2d_matches_brute_force(ci, co, hw, k, stride, padding, dilation, groups, grid_in, grid_out, activation):
    g = torch.Generator().manual_seed(ci * 100 + co * 10 + hw[0])
    kh, kw = _as_pair(k)
    w = torch.randn(co, ci // groups, kh, kw, generator=g, dtype=torch.float64)
    a = torch.randn(2, ci, *hw, generator=g, dtype=torch.float64)
    z = F.conv2d(a, w, torch.randn(co, generator=g, dtype=torch.float64), stride, padding, dilation, groups)
    src, n_src = _regions_chw(a.shape[1:], grid_in)
    tgt, n_tgt = _regions_chw(z.shape[1:], grid_out)
    got = conv2d_tractography(w, a, z, src, tgt, n_src, n_tgt, stride, padding, dilation, groups, activation)
    expected = _brute_conv(w, a, z, src, tgt, n_src, n_tgt, stride, padding, dilation, groups, activation)
    torch.testing.assert_close(got, expected)
    # tiny chunks exercise the position-chunked path and must give the same numbers
    chunked = conv2d_tractography(
        w, a, z, src, tgt, n_src, n_tgt, stride, padding, dilation, groups, activation, chunk_elements=1
    )
    torch.testing.assert_close(chunked, expected)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(("k", "dilation"), [(3, 1), (4, 1), (2, 3), ((2, 3), (1, 2))])
def test_conv2d_module_padding_same(k, dilation):
    conv = nn.Conv2d(2, 3, k, padding="same", dilation=dilation).double()
    a = torch.randn(2, 2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    z = conv(a).detach()
    src, n_src = _regions_chw(a.shape[1:], (2, 2, 2))
    tgt, n_tgt = _regions_chw(z.shape[1:], (3, 2, 1))
    res = tractography(conv, a, z, src, tgt, n_src, n_tgt)
    assert res.traced, res.reason
    # Same layer as an explicit zero pad (PyTorch puts the odd extra pixel bottom/right) + 'valid' conv.
    (kh, kw), (dh, dw) = _as_pair(k), _as_pair(dilation)
    th, tw = dh * (kh - 1), dw * (kw - 1)
    pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    # Padded units get the extra id n_src, so they drop out of the brute force like padding does.
    a_pad, src_pad = F.pad(a, pad), F.pad(src, pad, value=n_src)
    expected = _brute_conv(conv.weight.detach(), a_pad, z, src_pad, tgt, n_src + 1, n_tgt, 1, 0, dilation, 1, "relu")
    torch.testing.assert_close(res.matrix, expected[:n_src])


@settings(max_examples=15, deadline=None)
@given(
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    size=st.integers(5, 9),
    grid=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)),
    seed=st.integers(0, 1000),
)
def test_conv2d_coarse_grid_is_block_sum_of_fine_grid(stride, padding, dilation, size, grid, seed):
    # Merging regions must sum their strengths; one region each recovers the unit-level total.
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    a = torch.randn(3, 3, size, size, generator=g, dtype=torch.float64)
    z = F.conv2d(a, w, None, stride, padding, dilation)
    src, n_src = _regions_chw(a.shape[1:], grid)
    tgt, n_tgt = _regions_chw(z.shape[1:], grid[::-1])
    fine = conv2d_tractography(w, a, z, src, tgt, n_src, n_tgt, stride, padding, dilation)
    one = conv2d_tractography(
        w, a, z, torch.zeros_like(src), torch.zeros_like(tgt), 1, 1, stride, padding, dilation
    )
    torch.testing.assert_close(one, fine.sum().reshape(1, 1))
    # unit-level total through autograd-free identity: sum_j s'_j * (|W| * ReLU(a))-conv at j
    s = (z > 0).double()
    total = (F.conv2d(torch.relu(a), w.abs(), None, stride, padding, dilation) * s).sum() / a.shape[0]
    torch.testing.assert_close(one[0, 0], total)


# ------------------------------------------------------------------------------------------
# untraceable
# ------------------------------------------------------------------------------------------


def test_untraceable_modules_are_reported_not_invented():
    a = torch.randn(2, 3, 8, 8)
    src, n_src = _regions_chw((3, 8, 8), (2, 2, 1))
    res = tractography(nn.MaxPool2d(2), a, F.max_pool2d(a, 2), src, src[:, :4, :4], n_src, n_src)
    assert res.traced is False and res.matrix is None and "MaxPool2d" in res.reason

    conv1d = nn.Conv1d(3, 4, 3)
    res = tractography(conv1d, a[:, :, 0], conv1d(a[:, :, 0]), src[:, 0], torch.zeros(4, 6, dtype=torch.long), 4, 1)
    assert not res.traced and "only nn.Linear and nn.Conv2d" in res.reason

    reflect = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    tgt, n_tgt = _regions_chw((4, 8, 8), (2, 2, 2))
    res = tractography(reflect, a, reflect(a), src, tgt, n_src, n_tgt)
    assert not res.traced and "reflect" in res.reason


def test_flatten_between_layers_is_not_traced():
    # Source regions describe a (32, 3, 3) grid but the Linear sees the flattened (288,) vector.
    lin = nn.Linear(288, 64)
    a = torch.randn(4, 288)
    src, n_src = _regions_chw((32, 3, 3), (2, 2, 4))
    res = tractography(lin, a, lin(a), src, _split_ids(64, 4), n_src, 4)
    assert not res.traced and res.matrix is None and "source_regions" in res.reason and "(288,)" in res.reason
    conv = nn.Conv2d(16, 32, 5)
    a = torch.randn(2, 16, 14, 14)
    src28, n28 = _regions_chw((16, 28, 28), (8, 8, 4))
    tgt, n_tgt = _regions_chw((32, 10, 10), (8, 8, 4))
    res = tractography(conv, a, conv(a), src28, tgt, n28, n_tgt)
    assert not res.traced and "pool" in res.reason
    res = tractography(conv, a, torch.randn(2, 32, 9, 9), _regions_chw((16, 14, 14), (8, 8, 4))[0], tgt, 256, 256)
    assert not res.traced and "`z` must have shape (2, 32, 10, 10)" in res.reason


# ------------------------------------------------------------------------------------------
# summaries
# ------------------------------------------------------------------------------------------


def test_critical_pathways_hand_case():
    c = torch.tensor([[0.1, 4.0, 0.3], [2.5, 0.0, 7.0]])
    assert critical_pathways(c, 3) == [(1, 2, 7.0), (0, 1, 4.0), (1, 0, 2.5)]
    src, dst, val = top_pathways(c, 10)  # clamped to the 6 pairs
    assert src.tolist() == [1, 0, 1, 0, 0, 1] and dst.tolist() == [2, 1, 0, 2, 0, 1]
    torch.testing.assert_close(val, torch.tensor([7.0, 4.0, 2.5, 0.3, 0.1, 0.0]))


@pytest.mark.parametrize(
    ("c", "expected"),
    [
        (torch.ones(3, 4), 0.0),  # uniform
        (torch.tensor([[0.0, 0.0], [0.0, 5.0]]), 1.0),  # single pair
        (torch.tensor([[2.0, 2.0], [0.0, 0.0]]), 0.5),  # 1 - log 2 / log 4
        (torch.tensor([[3.0, 1.0]]), 1 - (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / math.log(2)),
        (torch.tensor([[4.2]]), 1.0),  # one pair only
    ],
)
def test_pathway_efficiency_hand_cases(c, expected):
    torch.testing.assert_close(pathway_efficiency(c), torch.tensor(expected))


def test_pathway_efficiency_batched_and_zero():
    c = torch.stack([torch.ones(2, 2), torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.zeros(2, 2)])
    eff = pathway_efficiency(c)
    assert eff.shape == (3,)
    torch.testing.assert_close(eff[:2], torch.tensor([0.0, 1.0]))
    assert torch.isnan(eff[2])


def test_path_strength_hand_worked_three_layers():
    # C1 / 8 = [[1/8, 3/8], [0, 1/2]]           -> best into r1: [1/8 (r0=0), 1/2 (r0=1)]
    # P2 = [[.5, .5, 0], [.25, 0, .75]]          -> v2 = [max(1/16, 1/8), 1/16, 3/8] = [1/8, 1/16, 3/8]
    # P3 = [[.5, .5], [0, 1], [.2, .8]]          -> v3 = [max(1/16, 0, 3/40), max(1/16, 1/16, 3/10)]
    # best: 3/10 along 1 -> 1 -> 2 -> 1  (1/2 * 3/4 * 4/5)
    chain = [
        torch.tensor([[1.0, 3.0], [0.0, 4.0]]),
        torch.tensor([[2.0, 2.0, 0.0], [1.0, 0.0, 3.0]]),
        torch.tensor([[1.0, 1.0], [0.0, 5.0], [1.0, 4.0]]),
    ]
    res = path_strength(chain)
    assert isinstance(res, PathResult)
    torch.testing.assert_close(res.strength, torch.tensor(0.3))
    assert res.path.tolist() == [1, 1, 2, 1]


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4), seed=st.integers(0, 10_000))
def test_path_strength_matches_enumeration(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    chain = [torch.rand(m, n, generator=g, dtype=torch.float64) * (torch.rand(m, n, generator=g) > 0.3)
             for m, n in zip(sizes[:-1], sizes[1:])]
    best = 0.0
    total = chain[0].sum().item()
    rows = [c.sum(1).tolist() for c in chain]
    for path in itertools.product(*[range(n) for n in sizes]):
        val = chain[0][path[0], path[1]].item() / total if total > 0 else 0.0
        for layer, c in enumerate(chain[1:], start=1):
            row = rows[layer][path[layer]]
            val *= c[path[layer], path[layer + 1]].item() / row if row > 0 else 0.0
        best = max(best, val)
    res = path_strength(chain)
    assert res.strength.item() == pytest.approx(best, rel=1e-12, abs=1e-15)
    # the returned path realises the returned strength
    val = chain[0][res.path[0], res.path[1]].item() / total if total > 0 else 0.0
    for layer, c in enumerate(chain[1:], start=1):
        row = rows[layer][res.path[layer]]
        val *= c[res.path[layer], res.path[layer + 1]].item() / row if row > 0 else 0.0
    assert val == pytest.approx(best, rel=1e-12, abs=1e-15)


class _CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def test_no_host_sync_outside_the_list_form():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    a = torch.randn(2, 3, 6, 6)
    src, n_src = _regions_chw((3, 6, 6), (2, 2, 2))
    tgt, n_tgt = _regions_chw((4, 6, 6), (3, 3, 2))
    lin = nn.Linear(5, 3)
    al = torch.randn(2, 5)
    with _CountSyncs() as mode:
        c = tractography(conv, a, conv(a), src, tgt, n_src, n_tgt).matrix
        cl = tractography(lin, al, lin(al), _split_ids(5, 2), _split_ids(3, 3), 2, 3).matrix
        top_pathways(c, 5)
        pathway_efficiency(c)
        path_strength([cl, torch.rand(3, 4), torch.rand(4, 2)])
    assert mode.syncs == 0


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def test_bad_input_errors():
    w, a, src, tgt = _toy()
    z = a @ w.T
    with pytest.raises(ValueError, match="`activation` must be one of"):
        linear_tractography(w, a, z, src, tgt, 2, 2, activation="gelu")
    with pytest.raises(TypeError, match="`activation` must be one of"):
        linear_tractography(w, a, z, src, tgt, 2, 2, activation=3)
    with pytest.raises(ValueError, match="`activation` callable must return"):
        linear_tractography(w, a, z, src, tgt, 2, 2, activation=lambda t: t.sum())
    with pytest.raises(ValueError, match="`n_source` must be an int in"):
        linear_tractography(w, a, z, src, tgt, 0, 2)
    with pytest.raises(ValueError, match="`source_regions` must have the shape"):
        linear_tractography(w, a, z, src[:3], tgt, 2, 2)
    with pytest.raises(ValueError, match="`z` must have shape"):
        linear_tractography(w, a, z[:, :1], src, tgt, 2, 2)
    with pytest.raises(TypeError, match="`a` must be a Tensor"):
        linear_tractography(w, a.tolist(), z, src, tgt, 2, 2)
    wc = torch.randn(2, 3, 3, 3)
    ac = torch.randn(1, 3, 6, 6)
    zc = F.conv2d(ac, wc)
    sc, tc = torch.zeros(3, 6, 6, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="`stride` and `dilation` must be positive"):
        conv2d_tractography(wc, ac, zc, sc, tc, 1, 1, stride=0)
    with pytest.raises(ValueError, match="`padding` must be an int, a pair"):
        conv2d_tractography(wc, ac, zc, sc, tc, 1, 1, padding="full")
    with pytest.raises(ValueError, match="`z` must have shape"):
        conv2d_tractography(wc, ac, zc, sc, tc, 1, 1, padding=1)
    with pytest.raises(TypeError, match="`module` must be an nn.Module"):
        tractography("conv", ac, zc, sc, tc, 1, 1)
    with pytest.raises(ValueError, match="`k` must be an int in"):
        top_pathways(torch.ones(2, 2), 0)
    with pytest.raises(ValueError, match="`chain` must hold at least one"):
        path_strength([])
    with pytest.raises(ValueError, match=r"`chain\[0\]` has 2 target regions but `chain\[1\]` has 3"):
        path_strength([torch.ones(2, 2), torch.ones(3, 3)])
    with pytest.raises(TypeError, match="`chain` must be a list or tuple"):
        path_strength(torch.ones(2, 2))
    with pytest.raises(ValueError, match="`c` must be a non-empty"):
        pathway_efficiency(torch.ones(3))


# ------------------------------------------------------------------------------------------
# bounded memory: tiled / sample-chunked cores give the brute-force numbers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "k", "stride", "padding", "dilation", "groups", "chunk_elements"),
    [
        ((9, 8), 3, 1, 1, 1, 1, 300),  # several positions per tile, several sample chunks
        ((9, 8), 3, 2, 1, 1, 2, 2000),  # multi-row tiles, a partial last tile
        ((6, 7), 3, 1, 4, 1, 1, 40),  # padding wider than the kernel: windows wholly in the padding
        ((7, 9), (2, 3), (2, 1), (3, 0), (2, 1), 2, 1),  # one position and one sample at a time
        ((5, 5), 3, 1, 0, 1, 1, 1 << 18),  # default-sized chunk: one tile, all samples
    ],
)
def test_conv2d_chunked_matches_brute_force(hw, k, stride, padding, dilation, groups, chunk_elements):
    g = torch.Generator().manual_seed(11)
    kh, kw = _as_pair(k)
    w = torch.randn(4, 4 // groups, kh, kw, generator=g, dtype=torch.float64)
    a = torch.randn(7, 4, *hw, generator=g, dtype=torch.float64)
    z = F.conv2d(a, w, None, stride, padding, dilation, groups)
    src, n_src = _regions_chw(a.shape[1:], (2, 2, 3))
    tgt, n_tgt = _regions_chw(z.shape[1:], (2, 3, 2))
    expected = _brute_conv(w, a, z, src, tgt, n_src, n_tgt, stride, padding, dilation, groups, "tanh")
    got = conv2d_tractography(w, a, z, src, tgt, n_src, n_tgt, stride, padding, dilation, groups, "tanh",
                              chunk_elements=chunk_elements)
    torch.testing.assert_close(got, expected)
    assert expected[:, :].abs().sum() > 0  # the test sees actual strength


@pytest.mark.parametrize("chunk_elements", [1, 7, 60, 1 << 18])
@pytest.mark.parametrize("tokens", [(), (3,), (2, 2)])
def test_linear_chunked_matches_brute_force(chunk_elements, tokens):
    from nn_neuroimaging_lightning.functional.tractography import _linear_core

    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    a = torch.randn(5, *tokens, 4, generator=g, dtype=torch.float64)
    z = a @ w.T
    n_tok = math.prod(tokens)
    src = torch.randint(0, 3, (*tokens, 4), generator=g)
    tgt = torch.randint(0, 2, (*tokens, 3), generator=g)
    got = _linear_core(w, a, z, src, tgt, 3, 2, "sigmoid", chunk_elements)
    # brute force: token t of `a` only feeds token t of `z`
    expected = torch.zeros(3, 2, dtype=torch.float64)
    a2, z2 = a.reshape(5, n_tok, 4), z.reshape(5, n_tok, 3)
    for t in range(n_tok):
        expected += _brute_linear(w, a2[:, t], z2[:, t], src.reshape(n_tok, 4)[t], tgt.reshape(n_tok, 3)[t], 3, 2,
                                  "sigmoid")
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(linear_tractography(w, a, z, src, tgt, 3, 2, "sigmoid"), expected)
