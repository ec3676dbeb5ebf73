import warnings

import pytest
import torch

from nn_neuroimaging_lightning.functional.grid import region_density_from_activation
from nn_neuroimaging_lightning.functional.shapley import merge_zeta, shapley_zeta
from nn_neuroimaging_lightning.metrics.fmri import RegionDensity, ZetaAggregate


def test_region_density_accumulates_like_one_big_batch():
    torch.manual_seed(0)
    batches = [torch.randn(5, 6, 9, 7) * (i + 1) for i in range(3)]
    metric = RegionDensity(grid=(3, 2, 4), lam=0.2)
    for b in batches:
        metric.update(b)
    expected = region_density_from_activation(torch.cat(batches), (3, 2, 4), lam=0.2)
    got = metric.compute()
    assert got.shape == (3, 2, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    metric.reset()
    metric.update(batches[0])
    torch.testing.assert_close(metric.compute(), region_density_from_activation(batches[0], (3, 2, 4), lam=0.2))


def test_region_density_merges_states_by_sum():
    torch.manual_seed(1)
    a, b = torch.randn(4, 10), torch.randn(6, 10) + 1
    m1, m2 = RegionDensity(grid=(8, 8, 3)), RegionDensity(grid=(8, 8, 3))
    m1.update(a)
    m2.update(b)
    m1.merge_state(m2)
    torch.testing.assert_close(m1.compute(), region_density_from_activation(torch.cat([a, b]), (8, 8, 3)))


def test_region_density_clamps_with_one_warning():
    metric = RegionDensity(grid=(8, 8, 4))
    with pytest.warns(UserWarning, match="clamped"):
        metric.update(torch.randn(2, 2, 3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.update(torch.randn(2, 2, 3, 3))
    assert metric.compute().shape == (3, 3, 2)


def test_region_density_errors():
    with pytest.raises(ValueError, match="`grid`"):
        RegionDensity(grid=(0, 1, 1))
    with pytest.raises(ValueError, match="`eps`"):
        RegionDensity(eps=0.0)
    metric = RegionDensity(grid=(2, 2, 2))
    with pytest.raises(RuntimeError, match="before any update"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric.compute()
    metric.update(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="unit shape"):
        metric.update(torch.randn(2, 3, 5, 4))


def test_region_density_from_precomputed_sums_equals_from_activations():
    """The NN-fMRI engine's path: per-unit sums scattered into regions, added with the sample count."""
    from nn_neuroimaging_lightning.functional.grid import _partition, scatter_unit_sums, unit_sums

    torch.manual_seed(2)
    batches = [torch.randn(3, 5, 6, 7) * (i + 1) for i in range(2)]
    direct, reduced = RegionDensity(grid=(4, 2, 3), lam=0.1), RegionDensity(grid=(4, 2, 3), lam=0.1)
    for b in batches:
        direct.update(b)
    index, _, g = _partition(tuple(batches[0].shape), (4, 2, 3), "cpu")
    units = sum(unit_sums(b) for b in batches)  # (3, U)
    reduced.update(sums=scatter_unit_sums(units, index.reshape(-1), 24), samples=6, unit_shape=(5, 6, 7))
    torch.testing.assert_close(reduced.compute(), direct.compute(), rtol=1e-5, atol=1e-5)
    assert reduced.counts.tolist() == direct.counts.tolist()
    with pytest.raises(ValueError, match="one of `activation` or `sums`, got both"):
        reduced.update(batches[0], sums=torch.zeros(24, 3))
    with pytest.raises(ValueError, match=r"`sums` must be \(24, 3\)"):
        reduced.update(sums=torch.zeros(4, 3), samples=1, unit_shape=(5, 6, 7))
    with pytest.raises(ValueError, match="unit shape"):
        reduced.update(sums=torch.zeros(24, 3), samples=1, unit_shape=(5, 6, 8))


def test_zeta_aggregate_matches_merge_zeta():
    n = 6
    w = torch.arange(n, dtype=torch.float64)
    f = lambda m: torch.tanh((m.double() @ w) / 5)  # noqa: E731
    parts = [
        shapley_zeta(f, n, n_permutations=20, generator=torch.Generator().manual_seed(0), rank=r, world_size=2)
        for r in range(2)
    ]
    agg_a, agg_b = ZetaAggregate(n), ZetaAggregate(n)
    agg_a.update(parts[0])
    agg_b.update(parts[1])
    agg_a.merge_state(agg_b)
    got = agg_a.compute()
    ref = merge_zeta(parts)
    torch.testing.assert_close(got.scores, ref.scores)
    torch.testing.assert_close(got.ci_low, ref.ci_low)
    assert torch.equal(got.significant, ref.significant)
    assert got.stat_count == 10 and got.n_permutations == 20
    with pytest.raises(ValueError, match="`result`"):
        ZetaAggregate(n + 1).update(parts[0])
    with pytest.raises(ValueError, match="`n_players`"):
        ZetaAggregate(0)
