import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nn_neuroimaging_lightning.functional.shapley import (
    exact_shapley,
    merge_zeta,
    shapley_zeta,
    t_quantile,
)


def brute_force_shapley(f, n):
    """Independent reference: subset formula with math.comb, one coalition at a time."""
    def value(subset):
        m = torch.zeros(1, n, dtype=torch.bool)
        m[0, list(subset)] = True
        return float(f(m)[0])

    phi = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        total = 0.0
        for size in range(n):
            for s in itertools.combinations(others, size):
                total += (value(s + (i,)) - value(s)) / (n * math.comb(n - 1, size))
        phi.append(total)
    return torch.tensor(phi, dtype=torch.float64)


def make_games(n, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    inter = torch.randn(n, n, generator=g, dtype=torch.float64) / n
    crit = torch.zeros(n, dtype=torch.bool)
    crit[torch.randperm(n, generator=g)[:2]] = True
    return {
        "additive": lambda m: m.double() @ w,
        "interactions": lambda m: m.double() @ w + ((m.double() @ inter) * m.double()).sum(1),
        "planted_critical_region": lambda m: 3.0 * m[:, crit].all(1).double() + 0.1 * (m.double() @ w),
        "saturating": lambda m: torch.tanh(2.0 * (m.double() @ w)),
    }


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_exact_matches_brute_force(n, seed):
    for name, f in make_games(n, seed).items():
        torch.testing.assert_close(exact_shapley(f, n, batch_size=13), brute_force_shapley(f, n), msg=name)


def test_exact_properties():
    n = 6
    w = torch.tensor([1.0, 1.0, 0.0, 2.0, -1.0, 3.0], dtype=torch.float64)
    # players 0 and 1 interchangeable, player 2 null
    f = lambda m: (m.double() @ w) + 2.0 * (m[:, 0] | m[:, 1]).double() * m[:, 5].double()  # noqa: E731
    phi = exact_shapley(f, n)
    assert phi[2].item() == 0.0
    assert phi[0].item() == pytest.approx(phi[1].item(), abs=1e-12)
    full = f(torch.ones(1, n, dtype=torch.bool)) - f(torch.zeros(1, n, dtype=torch.bool))
    assert phi.sum().item() == pytest.approx(full.item(), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [6, 9])
def test_estimator_within_5_percent_of_range_at_default_budget(n, seed):
    for name, f in make_games(n, seed).items():
        exact = exact_shapley(f, n)
        est = shapley_zeta(f, n, generator=torch.Generator().manual_seed(100 + seed))
        span = (exact.max() - exact.min()).item()
        err = (est.scores - exact).abs().max().item()
        assert err <= 0.05 * span, (name, err / span)
        assert est.n_permutations == 256
        assert est.n_evaluations == 2 + 256 * (n - 1)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 9),
    seed=st.integers(0, 10_000),
    tol=st.sampled_from([None, 0.0, 0.05, 0.3]),
    antithetic=st.booleans(),
    batch_size=st.integers(1, 40),
)
def test_efficiency_per_permutation(n, seed, tol, antithetic, batch_size):
    f = make_games(n, seed)["interactions"]
    res = shapley_zeta(
        f,
        n,
        n_permutations=8,
        antithetic=antithetic,
        truncation_tol=tol,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        return_marginals=True,
    )
    full = (f(torch.ones(1, n, dtype=torch.bool)) - f(torch.zeros(1, n, dtype=torch.bool)))[0]
    assert res.marginals.shape == (8, n)
    torch.testing.assert_close(res.marginals.sum(1), full.expand(8), rtol=0, atol=1e-12)
    assert res.n_evaluations <= 2 + 8 * (n - 1)
    if tol is None:
        assert res.n_evaluations == 2 + 8 * (n - 1)


def test_marginals_are_true_prefix_differences():
    n = 5
    f = make_games(n, 3)["interactions"]
    perms = torch.tensor([[3, 1, 4, 0, 2], [0, 1, 2, 3, 4]])
    res = shapley_zeta(f, n, permutations=perms, antithetic=False, return_marginals=True)
    for p in range(2):
        mask = torch.zeros(1, n, dtype=torch.bool)
        for player in perms[p].tolist():
            before = f(mask)[0]
            mask[0, player] = True
            assert res.marginals[p, player].item() == pytest.approx((f(mask)[0] - before).item(), abs=1e-12)


def test_truncation_saves_evaluations_and_keeps_null_player_zero():
    n = 12
    w = torch.zeros(n, dtype=torch.float64)
    w[:3] = torch.tensor([5.0, 3.0, 2.0])
    w[3:6] = 1e-4  # tiny contributions, truncated away
    f = lambda m: m.double() @ w  # noqa: E731  players 6.. are null
    res = shapley_zeta(f, n, n_permutations=64, truncation_tol=0.01, return_marginals=True)
    assert res.n_evaluations < 2 + 64 * (n - 1)
    assert bool((res.marginals[:, 6:] == 0).all())
    assert bool((res.scores[6:] == 0).all())
    torch.testing.assert_close(res.marginals.sum(1), torch.full((64,), float(w.sum()), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.scores[:3], w[:3], rtol=0, atol=0.011 * float(w.sum()))


def test_null_player_exactly_zero_and_symmetry():
    n = 8
    f = lambda m: torch.tanh(m[:, :2].double().sum(1) + 0.5 * m[:, 2:6].double().sum(1))  # noqa: E731  6, 7 null
    res = shapley_zeta(f, n, generator=torch.Generator().manual_seed(5))
    assert res.scores[6].item() == 0.0 and res.scores[7].item() == 0.0
    assert res.ci_low[6].item() == 0.0 and res.ci_high[6].item() == 0.0
    assert not bool(res.significant[6:].any())
    exact = exact_shapley(f, n)
    assert exact[0].item() == pytest.approx(exact[1].item(), abs=1e-12)
    # interchangeable players 0 and 1: the estimates' intervals overlap
    assert res.ci_low[0] <= res.ci_high[1] and res.ci_low[1] <= res.ci_high[0]
    assert bool(res.significant[:6].all())


def test_ci_coverage_on_a_noisy_game():
    n = 7
    f = make_games(n, 4)["saturating"]
    exact = exact_shapley(f, n)
    covered = 0
    trials = 40
    for s in range(trials):
        res = shapley_zeta(f, n, n_permutations=24, generator=torch.Generator().manual_seed(s))
        covered += int(((res.ci_low <= exact) & (exact <= res.ci_high)).sum())
    rate = covered / (trials * n)
    assert 0.88 <= rate <= 0.995, rate


def test_merge_equals_single_process():
    n = 9
    f = make_games(n, 7)["interactions"]
    single = shapley_zeta(f, n, n_permutations=40, generator=torch.Generator().manual_seed(3))
    parts = [
        shapley_zeta(f, n, n_permutations=40, generator=torch.Generator().manual_seed(3), rank=r, world_size=3)
        for r in range(3)
    ]
    assert [p.stat_count for p in parts] == [7, 7, 6]
    merged = merge_zeta(parts)
    torch.testing.assert_close(merged.scores, single.scores, rtol=0, atol=1e-12)
    # intervals come from sum / sum of squares: summation order moves them by float64 rounding only
    torch.testing.assert_close(merged.ci_low, single.ci_low, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(merged.ci_high, single.ci_high, rtol=1e-7, atol=1e-7)
    assert torch.equal(merged.significant, single.significant)
    assert merged.n_permutations == single.n_permutations == 40
    assert merged.stat_count == single.stat_count == 20
    assert merged.n_evaluations == single.n_evaluations + 2 * 2


def test_batching_never_exceeds_batch_size_and_budget_is_respected():
    n = 10
    sizes = []

    def f(m):
        sizes.append(m.shape[0])
        return m.double().sum(1) ** 2

    res = shapley_zeta(f, n, budget=500, batch_size=37)
    assert max(sizes) <= 37
    assert sum(sizes) == res.n_evaluations <= 500
    assert res.n_permutations == (500 - 2) // 9 // 2 * 2


def test_global_rng_untouched_and_generator_reproducible():
    f = make_games(6, 0)["saturating"]
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    a = shapley_zeta(f, 6, n_permutations=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = shapley_zeta(f, 6, n_permutations=10, generator=torch.Generator().manual_seed(1))
    c = shapley_zeta(f, 6, n_permutations=10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.scores, b.scores)
    assert not torch.equal(a.scores, c.scores)


def test_t_quantile_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in [1, 2, 3, 4, 7, 19, 100, 2000]:
        for p in [0.6, 0.9, 0.975, 0.995]:
            assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-7)
    assert t_quantile(0.025, 5) == pytest.approx(scipy_stats.t.ppf(0.025, 5), rel=1e-7)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_closed_forms(p):
    """Independent of scipy: Cauchy (df 1), the df-2 closed form, and the normal limit."""
    import math
    import statistics

    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12)
    assert t_quantile(p, 10**7) == pytest.approx(statistics.NormalDist().inv_cdf(p), rel=1e-6)
    with pytest.raises(ValueError, match="`p` must be in"):
        t_quantile(1.0, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_players": 0}, "`n_players`"),
        ({"n_players": 3, "budget": 5}, "`budget` must be at least 6"),
        ({"n_players": 3, "batch_size": 0}, "`batch_size`"),
        ({"n_players": 3, "confidence": 1.0}, "`confidence`"),
        ({"n_players": 3, "truncation_tol": -0.1}, "`truncation_tol`"),
        ({"n_players": 3, "n_permutations": 3}, "`n_permutations` must be even"),
        ({"n_players": 3, "rank": 2, "world_size": 2}, "`rank`"),
        ({"n_players": 3, "permutations": torch.tensor([[0, 0, 1]])}, "`permutations` rows"),
        ({"n_players": 3, "permutations": torch.tensor([[0, 1]])}, "`permutations` must be"),
        ({"n_players": 3, "generator": 3}, "`generator`"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shapley_zeta(lambda m: m.double().sum(1), **kwargs)


def test_bad_value_fn_and_exact_limits():
    with pytest.raises(ValueError, match="`value_fn` must return one value per mask row"):
        shapley_zeta(lambda m: m.double(), 3)
    with pytest.raises(TypeError, match="`value_fn` must return a torch.Tensor"):
        exact_shapley(lambda m: [0.0] * m.shape[0], 3)
    with pytest.raises(ValueError, match=r"`n_players` must be an int in \[1, 20\]"):
        exact_shapley(lambda m: m.double().sum(1), 21)
    with pytest.raises(ValueError, match="`partials`"):
        merge_zeta([])


def test_single_player_game():
    res = shapley_zeta(lambda m: 2.0 * m.double().sum(1) + 1.0, 1, budget=2)
    assert res.scores.tolist() == [2.0]
    assert exact_shapley(lambda m: 2.0 * m.double().sum(1) + 1.0, 1).tolist() == [2.0]
