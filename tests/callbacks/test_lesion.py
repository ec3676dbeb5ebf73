"""The lesion game: values against hand computations, batching, isolation and restoration."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from helpers import forward_hook_count
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback
from nn_neuroimaging_lightning.functional.shapley import exact_shapley
from nn_neuroimaging_lightning.lesion import LesionGame, isolated_evaluation, lesion_value_fn


def tiny():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    y = torch.tensor([0, 1, 1, 0, 1])
    return net, x, y


def hand_value(net, x, y, keep_units, base=None):
    """-CE with the first layer's units outside ``keep_units`` replaced by ``base`` (0 by default)."""
    with torch.no_grad():
        h = x @ net[0].weight.T + net[0].bias  # (5, 4)
        b = torch.zeros_like(h) if base is None else base.expand_as(h)
        m = torch.zeros(4, dtype=torch.bool)
        m[list(keep_units)] = True
        h = torch.where(m, h, b)
        logits = torch.relu(h) @ net[2].weight.T + net[2].bias
        logp = logits.double().log_softmax(1)
        return float(-(-logp[torch.arange(5), y]).mean())


def test_values_match_hand_computation():
    net, x, y = tiny()
    game = lesion_value_fn(net, net[0], (x, y), grid=(2,))  # regions: units {0, 1}, {2, 3}
    masks = torch.tensor([[True, True], [True, False], [False, True], [False, False]])
    values = game(masks)
    expected = [hand_value(net, x, y, k) for k in ([0, 1, 2, 3], [0, 1], [2, 3], [])]
    assert values.dtype == torch.float64
    assert values.tolist() == pytest.approx(expected, rel=1e-6)


def test_mean_baseline_and_chunking():
    net, x, y = tiny()
    with torch.no_grad():
        h = net[0](x)
    region_means = torch.stack([h[:, :2].mean(), h[:, 2:].mean()]).repeat_interleave(2)  # (4,)
    masks = torch.tensor([[True, False], [False, True], [False, False], [True, True]])
    expected = [hand_value(net, x, y, k, region_means) for k in ([0, 1], [2, 3], [], [0, 1, 2, 3])]
    for max_batch in (5, 7, 1024):  # 1, 1 and 4 coalitions per forward
        game = LesionGame(net, net[0], x, y, grid=(2,), baseline="mean", max_batch=max_batch)
        assert game(masks).tolist() == pytest.approx(expected, rel=1e-6)


def test_accuracy_mse_and_user_value_fn():
    net, x, y = tiny()
    full = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        out = net(x)
    acc = LesionGame(net, net[0], x, y, grid=(2,), metric="accuracy")(full)
    assert float(acc) == pytest.approx(float((out.argmax(1) == y).double().mean()))
    target = torch.randn(5, 2)
    mse = LesionGame(net, net[0], x, target, grid=(2,))(full)  # float targets -> minus MSE
    assert float(mse) == pytest.approx(-float(F.mse_loss(out.double(), target.double())), rel=1e-6)
    user = LesionGame(net, net[0], x, None, grid=(2,), value_fn=lambda m, b: m(b[0])[:, 1])
    assert user(torch.tensor([[True, True], [False, False]])).tolist() == pytest.approx(
        [float(out[:, 1].mean()), float(net[2](torch.relu(torch.zeros(5, 4)))[:, 1].mean())], rel=1e-5)


def test_exact_shapley_of_lesion_game_is_efficient():
    net, x, y = tiny()
    game = LesionGame(net, net[0], x, y, grid=(4,))
    res = exact_shapley(game, 4)
    f = game(torch.tensor([[True] * 4, [False] * 4]))
    assert float(res.sum()) == pytest.approx(float(f[0] - f[1]), rel=1e-9, abs=1e-12)


def test_isolation_restores_modes_buffers_rng_and_hooks():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    net.train()
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    buffers = [b.clone() for b in net.buffers()]
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    game = LesionGame(net, net[0], x, y, grid=(2,))
    game(torch.ones(3, 2, dtype=torch.bool))
    assert torch.equal(torch.rand(3), expected_next)  # RNG stream untouched
    assert all(m.training for m in net.modules())
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers()))
    assert forward_hook_count(net) == 0
    # eval mode inside: dropout off, so two calls agree exactly
    assert torch.equal(game(torch.ones(2, 2, dtype=torch.bool)), game(torch.ones(2, 2, dtype=torch.bool)))
    with pytest.raises(RuntimeError, match="inside"):
        with isolated_evaluation(net):
            net(x)
            raise RuntimeError("inside")
    assert all(m.training for m in net.modules()) and forward_hook_count(net) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"baseline": "median"}, ValueError, r"`baseline` must be one of \('zero', 'mean'\), got 'median'"),
        ({"metric": "f1"}, ValueError, "`metric`"),
        ({"max_batch": 0}, ValueError, "`max_batch`"),
        ({"targets": None}, ValueError, "`targets` must be given"),
        ({"targets": torch.randn(5)}, ValueError, "`metric`='accuracy' needs integer class labels"),
        ({"value_fn": 3}, TypeError, "`value_fn`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    net, x, y = tiny()
    args = {"targets": y, "metric": "accuracy" if "targets" in kwargs and kwargs["targets"] is not None else "auto"}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        LesionGame(net, net[0], x, grid=(2,), **args)


def test_target_not_in_model():
    net, x, y = tiny()
    with pytest.raises(ValueError, match="`target`"):
        LesionGame(net, nn.Linear(3, 4), x, y)


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))

    def validation_step(self, batch, batch_idx):
        self.log("val", F.mse_loss(self(batch[0]), batch[1]))


def test_callback_value_is_minus_mse_in_trainer(tmp_path):
    """In a Trainer: float targets give minus the MSE; zeta sums to f(all) - f(none) (efficiency)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    model = Regressor()
    fmri = NNfMRICallback(layers=["a"], grid=(3,), zeta_budget=64, probe_size=16, tractography=False)
    pl.Trainer(default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path), callbacks=[fmri], enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).validate(model, DataLoader(TensorDataset(x, y), batch_size=16), verbose=False)
    with torch.no_grad():
        f_all = -F.mse_loss(model(x).double(), y.double())
        f_none = -F.mse_loss(model.b(torch.zeros(16, 6)).double(), y.double())
    exact = exact_shapley(LesionGame(model, model.a, x, y, grid=(3,)), 3)
    res = fmri.zeta["a"]
    assert float(res.scores.sum()) == pytest.approx(float(f_all - f_none), rel=1e-6)
    assert torch.allclose(res.scores, exact.to(res.scores.dtype), atol=0.05 * float(exact.abs().max()) + 1e-9)


# ---------------------------------------------------------------------------------- upstream expansion
class SkipNet(nn.Module):
    """``out = head(relu(lin(x)) + x)``: the skip adds an upstream (B, F) tensor after the target."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.lin(x)) + x)


@pytest.mark.parametrize(("baseline",), [("zero",), ("mean",)])
def test_expanded_upstream_equals_repeated_inputs(baseline):
    net, x, y = tiny()
    masks = torch.tensor([[True, True], [True, False], [False, True], [False, False]])
    fast = LesionGame(net, net[0], x, y, grid=(2,), baseline=baseline)
    plain = LesionGame(net, net[0], x, y, grid=(2,), baseline=baseline, expand=False)
    assert fast.expanding is None and plain.expanding is False
    v_fast, v_plain = fast(masks), plain(masks)
    assert fast.expanding is True
    assert torch.allclose(v_fast, v_plain, rtol=1e-6, atol=1e-9)
    expected = [hand_value(net, x, y, k) for k in ([0, 1, 2, 3], [0, 1], [2, 3], [])]
    if baseline == "zero":
        assert v_fast.tolist() == pytest.approx(expected, rel=1e-6)


def test_skip_connection_falls_back_to_repeated_inputs():
    net = SkipNet()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    game = LesionGame(net, net.lin, x, y, grid=(2,))
    masks = torch.tensor([[True, False], [False, True], [True, True]])
    values = game(masks)
    assert game.expanding is False  # (K*B, 4) + (B, 4) cannot broadcast: plain path for good
    with torch.no_grad():
        h = net.lin(x)
        expected = []
        for keep in masks:
            m = keep.repeat_interleave(2)
            out = net.head(torch.relu(torch.where(m, h, torch.zeros(()))) + x)
            expected.append(float(-F.cross_entropy(out.double(), y)))
    assert values.tolist() == pytest.approx(expected, rel=1e-6)


def test_single_sample_probe_never_expands():
    net, x, y = tiny()
    game = LesionGame(net, net[0], x[:1], y[:1], grid=(2,))
    game(torch.ones(3, 2, dtype=torch.bool))
    assert game.expanding is False
    with pytest.raises(TypeError, match="`expand`"):
        LesionGame(net, net[0], x, y, grid=(2,), expand=1)


# ---------------------------------------------------------------------------------- memory-aware batching
class Funnel(nn.Module):
    """``head(relu(wide(x)))``: 40 hidden floats per sample upstream of ``head``, 2 after it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.wide = nn.Linear(3, 40)
        self.head = nn.Linear(40, 2)

    def forward(self, x):
        return self.head(torch.relu(self.wide(x)))


def _largest_outputs(model):
    """Record the largest module output (bytes) of every forward while the context is open."""
    sizes = []

    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    return sizes, handles


def test_bytes_per_sample_measured_and_rows_per_forward_by_hand():
    net = Funnel()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    game = LesionGame(net, net.wide, x, y, grid=(4,), max_bytes=5 * 160 * 3 + 7)
    # by hand: wide -> 40 floats (160 B), relu(wide) is not a module, head -> 2 floats (8 B); inputs 12 B
    assert (game.sample_bytes_downstream, game.sample_bytes_all) == (160, 160)
    assert game.rows_per_call == 1024 // 5
    assert game.rows_per_forward == 3  # floor((5 * 160 * 3 + 7) / (5 * 160))
    at_head = LesionGame(net, net.head, x, y, grid=(2,), max_bytes=5 * 8 * 10)
    assert (at_head.sample_bytes_downstream, at_head.sample_bytes_all) == (8, 160)
    assert at_head.rows_per_forward == 10  # expanded path: only head's (K*B, 2) output grows with K
    tiny_budget = LesionGame(net, net.wide, x, y, grid=(4,), max_bytes=1)
    assert tiny_budget.rows_per_forward == 1  # never below one coalition
    assert LesionGame(net, net.wide, x, y, grid=(4,)).rows_per_forward == 1024 // 5  # no cap by default


@pytest.mark.parametrize(("budget_rows",), [(1,), (2,), (3,), (7,)])
def test_byte_budget_changes_forwards_not_values(budget_rows):
    """Same values as one big forward, the largest activation within the budget, the expected forward count."""
    net = Funnel()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(11, 4, generator=g) > 0.5  # (K=11, R=4)
    free = LesionGame(net, net.wide, x, y, grid=(4,), baseline="mean")
    reference = free(masks)
    budget = budget_rows * 5 * 160
    game = LesionGame(net, net.wide, x, y, grid=(4,), baseline="mean", max_bytes=budget)
    assert game.rows_per_forward == budget_rows
    sizes, handles = _largest_outputs(net)
    calls = []
    counter = net.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        values = game(masks)
    finally:
        counter.remove()
        for h in handles:
            h.remove()
    # float32 products over other batch sizes may round differently: equal to float32 precision
    assert torch.allclose(values, reference, rtol=1e-6, atol=1e-9)
    hand = []
    with torch.no_grad():
        h = net.wide(x)  # (5, 40)
        base = h.reshape(5, 4, 10).mean((0, 2)).repeat_interleave(10)  # (40,) region means
        for keep in masks:
            m = keep.repeat_interleave(10)
            hand.append(float(-F.cross_entropy(net.head(torch.relu(torch.where(m, h, base))).double(), y)))
    assert values.tolist() == pytest.approx(hand, rel=1e-6)
    assert max(sizes) <= budget
    # forwards: ceil(11 / k) of the expanded path (B inputs each) + the one plain check of 2 rows when k >= 2
    n_expanded = -(-11 // budget_rows) if budget_rows >= 2 else 0
    n_plain = (1 if budget_rows >= 2 else 11)
    assert len(calls) == n_expanded + n_plain
    assert game.expanding is (True if budget_rows >= 2 else None)


def test_zeta_estimates_do_not_depend_on_the_byte_budget():
    """shapley_zeta on the same permutations: a 1-coalition budget gives the scores of the uncapped game.

    In float64, so that the products' rounding over other batch sizes (1e-16) cannot hide a difference.
    """
    from nn_neuroimaging_lightning.functional.shapley import shapley_zeta

    net = Funnel().double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])
    results = []
    for max_bytes in (None, 1, 6 * 160 * 4):
        game = LesionGame(net, net.wide, x, y, grid=(8,), max_bytes=max_bytes and max_bytes * 2)
        with game.session():
            results.append(shapley_zeta(game, 8, n_permutations=6, batch_size=game.rows_per_call,
                                        generator=torch.Generator().manual_seed(11)))
    for res in results[1:]:
        assert torch.allclose(res.scores, results[0].scores, rtol=1e-12, atol=1e-14)
        assert torch.allclose(res.ci_high, results[0].ci_high, rtol=1e-12, atol=1e-14)
        assert res.n_evaluations == results[0].n_evaluations


@pytest.mark.parametrize(("value",), [(0,), (-5,), (1.5,), (True,), ("8MB",)])
def test_bad_max_bytes(value):
    net, x, y = tiny()
    with pytest.raises(ValueError, match=r"`max_bytes` must be None or a positive int \(bytes\), got"):
        LesionGame(net, net[0], x, y, grid=(2,), max_bytes=value)


def test_callback_zeta_same_with_and_without_byte_cap(tmp_path):
    """Fixed mode: NNfMRICallback(zeta_max_bytes=...) reproduces the uncapped scores."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    scores = []
    for cap in (None, 1):
        torch.manual_seed(0)
        model = Regressor()
        fmri = NNfMRICallback(layers=["a"], grid=(3,), zeta_budget=64, tractography=False, zeta_time_fraction=None,
                              zeta_max_bytes=cap)
        assert fmri.zeta_max_bytes == cap
        pl.Trainer(default_root_dir=tmp_path, logger=False, callbacks=[fmri], enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False).validate(
            model, DataLoader(TensorDataset(x, y), batch_size=16), verbose=False)
        scores.append(fmri.zeta["a"].scores)
    assert torch.allclose(scores[0], scores[1], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="`zeta_max_bytes`"):
        NNfMRICallback(zeta_max_bytes=0)
