import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nn_neuroimaging_lightning.functional.grid import (
    grid_partition,
    grid_region_sizes,
    region_density,
    region_density_from_activation,
    region_sums,
    resolve_grid,
    scatter_unit_sums,
    add_unit_sums_,
    unit_sums,
)


def _manual_regions(shape, grid):
    """Reference: list of boolean unit masks per region, built with torch.tensor_split."""
    unit_shape = shape[1:]
    if len(shape) == 4:
        c, h, w = unit_shape
        gh, gw, gc = grid
        hs = torch.tensor_split(torch.arange(h), gh)
        ws = torch.tensor_split(torch.arange(w), gw)
        cs = torch.tensor_split(torch.arange(c), gc)
        out = []
        for ih in range(gh):
            for iw in range(gw):
                for ic in range(gc):
                    m = torch.zeros(unit_shape, dtype=torch.bool)
                    m[cs[ic][:, None, None], hs[ih][None, :, None], ws[iw][None, None, :]] = True
                    out.append(m)
        return out
    if len(shape) == 3:
        t, d = unit_shape
        ts = torch.tensor_split(torch.arange(t), grid[0])
        ds = torch.tensor_split(torch.arange(d), grid[1])
        out = []
        for it in range(grid[0]):
            for id_ in range(grid[1]):
                m = torch.zeros(unit_shape, dtype=torch.bool)
                m[ts[it][:, None], ds[id_][None, :]] = True
                out.append(m)
        return out
    fs = torch.tensor_split(torch.arange(unit_shape[0]), grid[0])
    out = []
    for part in fs:
        m = torch.zeros(unit_shape, dtype=torch.bool)
        m[part] = True
        out.append(m)
    return out


shapes_and_grids = st.one_of(
    st.tuples(
        st.tuples(st.just(2), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
        st.tuples(st.integers(1, 10), st.integers(1, 10), st.integers(1, 10)),
    ),
    st.tuples(st.tuples(st.just(2), st.integers(1, 12), st.integers(1, 12)), st.tuples(st.integers(1, 13), st.integers(1, 13))),
    st.tuples(st.tuples(st.just(2), st.integers(1, 40)), st.tuples(st.integers(1, 45))),
)


@settings(max_examples=60, deadline=None)
@given(shapes_and_grids)
def test_partition_covers_every_unit_once_and_matches_tensor_split(case):
    shape, grid = case
    g, _ = resolve_grid(shape, grid)
    index = grid_partition(shape, grid)
    assert index.shape == torch.Size(shape[1:])
    assert index.dtype == torch.long
    n_regions = math.prod(g)
    # every unit has exactly one region, every region is non-empty
    counts = torch.bincount(index.reshape(-1), minlength=n_regions)
    assert counts.numel() == n_regions
    assert int(counts.sum()) == math.prod(shape[1:])
    assert bool((counts > 0).all())
    torch.testing.assert_close(grid_region_sizes(shape, grid), counts)
    # identical to a manual tensor_split construction, region by region, in row-major order
    manual = _manual_regions(shape, g)
    assert len(manual) == n_regions
    for r, m in enumerate(manual):
        assert torch.equal(index == r, m), r
    # per-axis part sizes differ by at most one
    for axis_size, gi in zip((shape[2], shape[3], shape[1]) if len(shape) == 4 else shape[1:], g):
        sizes = [len(p) for p in torch.tensor_split(torch.arange(axis_size), gi)]
        assert max(sizes) - min(sizes) <= 1


def test_partition_hand_worked_example():
    # (C=2, H=3, W=2), grid (g_h=2, g_w=1, g_c=2): H rows {0,1},{2}; C {0},{1}
    idx = grid_partition((1, 2, 3, 2), (2, 1, 2))
    expected = torch.tensor([[[0, 0], [0, 0], [2, 2]], [[1, 1], [1, 1], [3, 3]]])
    assert torch.equal(idx, expected)
    assert grid_region_sizes((1, 2, 3, 2), (2, 1, 2)).tolist() == [4, 4, 2, 2]


@pytest.mark.parametrize(
    ("shape", "grid", "expected", "clamped"),
    [
        ((64, 16, 28, 28), (8, 8, 4), (8, 8, 4), False),
        ((64, 3, 5, 6), (8, 8, 4), (5, 6, 3), True),
        ((64, 100), (8, 8, 4), (4,), False),
        ((64, 3), (8, 8, 4), (3,), True),
        ((64, 10), 5, (5,), False),
        ((64, 10), (7,), (7,), False),
        ((64, 20, 30), (8, 8, 4), (8, 8), False),
        ((64, 4, 30), (8, 6), (4, 6), True),
        ((64, 16, 28, 28), None, (8, 8, 4), False),
    ],
)
def test_resolve_grid(shape, grid, expected, clamped):
    assert resolve_grid(shape, grid) == (expected, clamped)


@pytest.mark.parametrize(
    ("shape", "grid", "match"),
    [
        ((4, 3, 8, 8), (0, 2, 2), "`grid`"),
        ((4, 3, 8, 8), (-1, 2, 2), "`grid`"),
        ((4, 3, 8, 8), (2.0, 2, 2), "`grid`"),
        ((4, 3, 8, 8), (True, 2, 2), "`grid`"),
        ((4, 3, 8, 8), (2, 2), r"\(g_h, g_w, g_c\)"),
        ((4, 3, 8, 8), (2, 2, 2, 2), "1, 2 or 3 entries"),
        ((4, 3, 8, 8), "884", "`grid`"),
        ((4, 10), (2, 2), r"\(g_c,\)"),
        ((4, 10, 5), (2,), r"\(g_t, g_d\)"),
        ((4,), (2,), "`shape`"),
        ((4, 1, 2, 3, 4), (2, 2, 2), "`shape`"),
        ((4, 0, 3), (2, 2), "non-empty"),
    ],
)
def test_bad_grid_and_shape(shape, grid, match):
    with pytest.raises(ValueError, match=match):
        grid_partition(shape, grid)


def test_grid_error_names_value():
    with pytest.raises(ValueError, match=r"`grid`.*\(0, 2, 2\)"):
        resolve_grid((4, 3, 8, 8), (0, 2, 2))


def _direct_density(a, grid, lam, eps):
    """Reference density: boolean region masks + torch.var(unbiased=False), float64."""
    g, _ = resolve_grid(a.shape, grid)
    out = []
    for m in _manual_regions(tuple(a.shape), g):
        vals = a.double()[:, m].reshape(-1)
        out.append(vals.abs().mean() + lam * torch.log(torch.var(vals, unbiased=False) + eps))
    return torch.stack(out).reshape(g)


@pytest.mark.parametrize(
    ("shape", "grid"),
    [((5, 7, 9, 11), (4, 3, 2)), ((6, 13), (8, 8, 4)), ((3, 9, 10), (4, 3)), ((4, 3, 5, 6), (8, 8, 4))],
)
@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0])
def test_density_matches_direct_computation(shape, grid, lam):
    torch.manual_seed(0)
    a = torch.randn(shape) * 2 + 0.5
    got = region_density_from_activation(a, grid, lam=lam, eps=1e-6)
    ref = _direct_density(a, grid, lam, 1e-6).float()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_region_sums_hand_worked_and_counts():
    a = torch.tensor([[1.0, -2.0, 3.0], [0.0, 2.0, -1.0]])
    idx = grid_partition(a.shape, (2,))
    s = region_sums(a, idx, 2)
    assert s.dtype == torch.float32
    assert s.tolist() == [[5.0, 1.0, 9.0], [4.0, 2.0, 10.0]]
    # region 0: values 1,-2,0,2 -> mean|a| 1.25, mean .25, var 9/4 - 1/16 = 2.1875
    phi = region_density(s, grid_region_sizes(a.shape, (2,)) * 2, lam=1.0, eps=0.0 + 1e-12)
    assert phi[0].item() == pytest.approx(1.25 + math.log(2.1875), rel=1e-5)
    # region 1: values 3,-1 -> mean|a| 2, mean 1, var 4
    assert phi[1].item() == pytest.approx(2.0 + math.log(4.0), rel=1e-5)


def test_density_of_constant_region_uses_eps_and_clamps_variance():
    a = torch.full((3, 4), 0.7)
    phi = region_density_from_activation(a, (2,), lam=0.5, eps=1e-3)
    torch.testing.assert_close(phi, torch.full((2,), 0.7 + 0.5 * math.log(1e-3)))


def test_half_precision_input_is_summed_in_float32():
    a = torch.full((64, 300), 100.0, dtype=torch.float16)  # sum of squares overflows float16
    s = region_sums(a, grid_partition(a.shape, (1,)), 1)
    assert s.dtype == torch.float32
    assert s[0, 2].item() == pytest.approx(64 * 300 * 1e4)


@pytest.mark.parametrize(("lam", "eps", "match"), [(0.1, 0.0, "`eps`"), (0.1, -1.0, "`eps`"), (float("nan"), 1e-6, "`lam`")])
def test_bad_lam_eps(lam, eps, match):
    with pytest.raises(ValueError, match=match):
        region_density_from_activation(torch.ones(2, 4), (2,), lam=lam, eps=eps)


def test_region_sums_shape_mismatch():
    with pytest.raises(ValueError, match="`region_index`"):
        region_sums(torch.ones(2, 5), grid_partition((2, 4), (2,)), 2)


def test_partition_is_cached_and_device_kept():
    a = grid_partition((2, 3, 8, 8), (2, 2, 2))
    b = grid_partition((7, 3, 8, 8), (2, 2, 2))  # batch size is not part of the key
    assert a is b
    assert a.device.type == "cpu"
    act = torch.randn(2, 3, 8, 8)
    assert region_density_from_activation(act, (2, 2, 2)).device == act.device


# ---------------------------------------------------------------------------------- unit sums + scatter
def _brute_region_sums(a, grid):
    """Reference: per-region sums from boolean unit masks (tensor_split), in float64."""
    x = a.double()
    rows = []
    for mask in _manual_regions(tuple(a.shape), resolve_grid(tuple(a.shape), grid)[0]):
        vals = x[:, mask]
        rows.append(torch.stack([vals.abs().sum(), vals.sum(), (vals * vals).sum()]))
    return torch.stack(rows)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(4, 16, 28, 28), (4, 32, 10, 10), (3, 64), (1, 10), (5, 7, 9), (2, 3, 5, 6)]),
    grid=st.sampled_from([(8, 8, 4), (2, 3, 1), (4, 4, 4)]),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**16),
)
def test_unit_sums_then_scatter_match_brute_force(shape, grid, scale, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g) * scale
    idx = grid_partition(a.shape, grid)
    n_regions = int(grid_region_sizes(a.shape, grid).numel())
    ref = _brute_region_sums(a, grid)
    got = scatter_unit_sums(unit_sums(a), idx, n_regions)
    assert got.shape == (n_regions, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4 * (scale + scale * scale))
    torch.testing.assert_close(region_sums(a, idx, n_regions), got)


def test_unit_sums_hand_worked_dtypes_and_empty_batch():
    a = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    expected = [[4.0, 2.5], [4.0, -1.5], [10.0, 4.25]]
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        s = unit_sums(a.to(dtype))
        assert s.dtype == torch.float32 and s.tolist() == expected
    empty = unit_sums(torch.ones(0, 2, 3))
    assert empty.shape == (3, 6) and (empty == 0).all()
    # the batch sum multiplies by ones only: an infinite activation stays +inf in |a| and a^2
    s = unit_sums(torch.tensor([[float("inf"), 1.0], [2.0, 1.0]]))
    assert s[0, 0] == float("inf") and s[1, 0] == float("inf") and s[2, 0] == float("inf")
    assert s[:, 1].tolist() == [2.0, 2.0, 2.0]


def test_scatter_unit_sums_accumulates_in_place_and_checks_shapes():
    a, b = torch.randn(3, 2, 4, 4), torch.randn(5, 2, 4, 4)
    idx = grid_partition(a.shape, (2, 2, 2))
    acc = torch.zeros(8, 3)
    out = scatter_unit_sums(unit_sums(a), idx, 8, out=acc)
    scatter_unit_sums(unit_sums(b), idx, 8, out=acc)
    assert out is acc
    torch.testing.assert_close(acc, region_sums(torch.cat([a, b]), idx, 8), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="`region_index`"):
        scatter_unit_sums(unit_sums(a), idx[:1], 8)
    with pytest.raises(ValueError, match="`out`"):
        scatter_unit_sums(unit_sums(a), idx, 8, out=torch.zeros(3, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 16, 28, 28), (4, 32, 10, 10), (3, 64), (1, 10), (5, 7, 9)])
def test_add_unit_sums_accumulates_brute_force_sums(dtype, shape):
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(shape, generator=g) * 3).to(dtype), (torch.randn(shape, generator=g) - 1).to(dtype)
    both = torch.cat([a, b]).double().flatten(1)  # reference in float64 from the rounded inputs
    ref = torch.stack([both.abs().sum(0), both.sum(0), (both * both).sum(0)])
    acc = torch.zeros(3, both.shape[1])
    out = add_unit_sums_(add_unit_sums_(acc, a), b)
    assert out is acc and acc.dtype == torch.float32
    torch.testing.assert_close(acc.double(), ref, rtol=1e-5, atol=1e-4)


def test_add_unit_sums_keeps_inf_handles_empty_batch_and_checks_out():
    acc = torch.zeros(3, 2)
    add_unit_sums_(acc, torch.ones(0, 2))
    assert (acc == 0).all()
    add_unit_sums_(acc, torch.tensor([[float("inf"), 2.0], [1.0, -2.0]]))
    assert acc[:, 0].tolist() == [float("inf")] * 3  # ones times inf only: never 0 * inf = nan
    assert acc[:, 1].tolist() == [4.0, 0.0, 8.0]
    with pytest.raises(ValueError, match="`out`"):
        add_unit_sums_(torch.zeros(3, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="`out`"):
        add_unit_sums_(torch.zeros(3, 2, dtype=torch.float64), torch.ones(2, 2))
