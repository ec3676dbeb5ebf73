"""Tap selection, hook bookkeeping and the ring buffer, without a Trainer."""

import numpy as np
import pytest
import torch
from helpers import forward_hook_count
from torch import nn

from nn_neuroimaging_lightning.taps import ActivityTaps, LayerTaps, RingBuffer, first_tensor, select_layers


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.fc = nn.Linear(5, 2)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))  # (B, 4, H, W)
        seq = h.flatten(2).transpose(1, 2)  # (B, HW, 4)
        out, _ = self.lstm(seq)
        return self.fc(out[:, -1])


class Shared(nn.Module):
    """One Linear applied three times per forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(self.fc(self.fc(self.fc(x))))


def test_default_selection_is_leaf_modules_with_parameters_without_norms():
    assert list(select_layers(Net())) == ["conv", "lstm", "fc", "unused"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("fc", ["fc"]),
        ("*n*", ["conv", "bn", "unused"]),
        ("re:(conv|fc)", ["conv", "fc"]),
        (nn.BatchNorm2d, ["bn"]),
        (["conv", nn.LSTM], ["conv", "lstm"]),
    ],
)
def test_selection_by_glob_regex_and_type(selector, expected):
    assert list(select_layers(Net(), selector)) == expected


def test_selection_matching_nothing_lists_available_names():
    with pytest.raises(ValueError, match=r"`layers`='nope\*' matches no module\. Available modules: conv \(Conv2d\), bn \(BatchNorm2d\)"):
        select_layers(Net(), "nope*")
    with pytest.raises(TypeError, match="`layers` must be None"):
        select_layers(Net(), 3)
    with pytest.raises(ValueError, match="invalid regex"):
        select_layers(Net(), "re:(")


def test_first_tensor_of_tuple_and_dict_outputs():
    a, b = torch.ones(2), torch.zeros(2)
    assert first_tensor((a, (b,))) is a
    assert first_tensor({"x": None, "y": b}) is b
    assert first_tensor(((None,), [b, a])) is b
    assert first_tensor((a, b), selector=lambda o: o[1]) is b
    assert first_tensor("text") is None


def test_activity_is_mean_abs_and_lstm_tuple_output_is_tapped():
    torch.manual_seed(0)
    net = Net()
    taps = ActivityTaps(select_layers(net, ["conv", "lstm", "fc"]))
    seen = {}
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, first_tensor(o).detach().abs().mean())) for n in ("conv", "lstm", "fc")]
    with taps.attached():
        net(torch.randn(2, 3, 6, 6))
        sample = taps.sample()
    for h in hooks:
        h.remove()
    expected = torch.stack([seen["conv"], seen["lstm"], seen["fc"]])
    torch.testing.assert_close(sample, expected)
    assert forward_hook_count(net) == 0


def test_module_called_several_times_gives_one_sample_mean_of_calls():
    torch.manual_seed(0)
    net = Shared()
    calls = []
    h = net.fc.register_forward_hook(lambda m, i, o: calls.append(o.detach().abs().mean()))
    taps = ActivityTaps(select_layers(net))
    with taps.attached():
        net(torch.randn(4, 3))
        sample = taps.sample()
    h.remove()
    assert len(calls) == 3 and taps.fire_counts == [3, 1]
    torch.testing.assert_close(sample[0], torch.stack(calls).mean())


def test_never_firing_module_is_reported_not_fatal():
    net = Net()
    taps = ActivityTaps(select_layers(net))
    with taps.attached():
        net(torch.randn(1, 3, 5, 5))
        sample = taps.sample()
    assert taps.silent() == ["unused"]
    assert sample.shape == (4,) and sample[3] == 0
    assert [taps.names[i] for i in taps.forward_order()] == ["conv", "lstm", "fc", "unused"]


def test_root_forward_end_commits_one_sample_per_forward_and_pause():
    net = Shared()
    taps = ActivityTaps(select_layers(net))
    samples = []
    with taps.attached(root=net, on_forward_end=lambda: samples.append(taps.sample())):
        for _ in range(3):
            net(torch.randn(2, 3))
        with taps.paused():
            net(torch.randn(2, 3))
    assert len(samples) == 3 and forward_hook_count(net) == 0
    assert not taps.dirty


def test_hooks_removed_when_forward_raises():
    net = Shared()
    taps = ActivityTaps(select_layers(net))
    with pytest.raises(RuntimeError):
        with taps.attached(root=net, on_forward_end=lambda: None):
            net(torch.randn(2, 7))  # wrong width
    assert forward_hook_count(net) == 0


def test_ring_buffer_order_and_wraparound():
    ring = RingBuffer(rows=2, window=4)
    assert ring.ordered().shape == (2, 0)
    for t in range(1, 7):
        ring.push(torch.tensor([float(t), -float(t)]), phase=t % 3, step=10 * t)
    assert ring.count == 4 and ring.total == 6
    assert ring.ordered().tolist() == [[3.0, 4.0, 5.0, 6.0], [-3.0, -4.0, -5.0, -6.0]]
    assert ring.steps().tolist() == [30, 40, 50, 60]
    assert ring.phases().tolist() == [0, 1, 2, 0]
    assert ring.ordered(last=2).tolist() == [[5.0, 6.0], [-5.0, -6.0]]
    # CPU float32 samples go through the numpy view; a sample that cannot (here float64) takes the
    # device-index path, whose index first catches up with the host position
    ring.push(torch.tensor([7.0, -7.0], dtype=torch.float64), phase=0, step=70)
    assert int(ring.index) == ring.pos == 3
    assert ring.ordered().tolist() == [[4.0, 5.0, 6.0, 7.0], [-4.0, -5.0, -6.0, -7.0]]
    ring.relabel(0, 6)
    assert ring.phases(last=1).tolist() == [6]


def test_ring_buffer_state_round_trip_and_shape_check():
    ring = RingBuffer(rows=3, window=5)
    for t in range(7):
        ring.push(torch.arange(3.0) + t, phase=1, step=t)
    other = RingBuffer(rows=3, window=5)
    other.load_state_dict(ring.state_dict())
    assert torch.equal(other.ordered(), ring.ordered())
    other.push(torch.full((3,), 100.0), phase=2, step=7)
    assert other.ordered()[:, -1].tolist() == [100.0] * 3 and other.steps()[-2:].tolist() == [6, 7]
    with pytest.raises(ValueError, match="expected \\(2, 5\\)"):
        RingBuffer(rows=2, window=5).load_state_dict(ring.state_dict())
    assert np.all(other.times() > 0)


def test_global_suspension_silences_every_owner():
    from nn_neuroimaging_lightning.taps import suspended

    net = Shared()
    a, b = ActivityTaps(select_layers(net)), LayerTaps(select_layers(net), reduce=lambda t: t.sum())
    commits = []
    with a.attached(root=net, on_forward_end=lambda: commits.append(1)), b.attached():
        with suspended():
            net(torch.randn(2, 3))
        assert not a.dirty and not b.dirty and commits == []
        net(torch.randn(2, 3))
    assert a.fire_counts == [3, 1] and b.fire_counts == [3, 1] and commits == [1]


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(4, 8, 5, 5),
        lambda: torch.randn(3, 7, dtype=torch.float64),
        lambda: torch.randn(8, 6).t(),  # not contiguous
        lambda: torch.randn(4, 9)[:, ::2],  # strided view
        lambda: torch.randn(5, 5).to(torch.bfloat16),
        lambda: torch.randn(5, 5).to(torch.float16),
        lambda: torch.tensor([1.0, float("nan"), 2.0]),
        lambda: torch.tensor([1.0, float("-inf"), 2.0]),
        lambda: torch.zeros(0, 3),
    ],
)
def test_mean_abs_reduction_equals_abs_sum(make):
    from nn_neuroimaging_lightning.taps import mean_abs_reduction

    t = make()
    value, n = mean_abs_reduction(t)
    assert n == t.numel() and value.dtype == torch.float32
    reference = np.abs(t.detach().to(torch.float64).numpy()).sum()  # independent: numpy in float64
    got = float(value)
    if np.isnan(reference):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(reference, rel=1e-5 if t.dtype != torch.bfloat16 else 1e-2, abs=1e-6)


def test_samples_of_a_mixed_precision_model():
    """A float32 layer beside a bf16 one called twice gives one float32 sample (mean of calls)."""
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3).to(torch.bfloat16))
    net[0].register_forward_hook(lambda m, i, o: o.to(torch.bfloat16))
    taps = ActivityTaps(select_layers(net))
    x = torch.randn(5, 4)
    with torch.no_grad(), taps.attached():
        h = net[0](x)
        y = net[1](h)
        net[1](h)  # called twice: the mean of its calls
    sample = taps.sample()
    assert sample.dtype == torch.float32 and sample.shape == (2,)
    ref = torch.stack([h.float().abs().mean(), y.float().abs().mean()])
    torch.testing.assert_close(sample, ref, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 23, 64])
def test_chunked_mean_abs_reduction_equals_direct(n):
    """Large CPU activations are reduced in scratch-sized chunks: same value, NaN/inf still propagate."""
    from nn_neuroimaging_lightning.taps import mean_abs_reduction

    g = torch.Generator().manual_seed(n)
    t = torch.randn(n, 3, generator=g)
    scratch = torch.full((8,), 123.0)  # garbage left in the scratch must not leak into the value
    value, count = mean_abs_reduction(t, scratch)
    assert count == t.numel() and value.dtype == torch.float32
    assert float(value) == pytest.approx(np.abs(t.numpy().astype(np.float64)).sum(), rel=1e-6)
    t.view(-1)[-1] = float("nan")
    assert np.isnan(float(mean_abs_reduction(t, scratch)[0]))
    t.view(-1)[-1] = float("-inf")
    assert float(mean_abs_reduction(t, scratch)[0]) == float("inf")


def test_activity_taps_chunk_a_large_cpu_activation():
    """An output above ``ABS_CHUNKED_ABOVE`` elements gives the same sample through the chunked path."""
    from nn_neuroimaging_lightning import taps as T

    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 2, 1))
    x = torch.randn(5, 3, 64, 64)  # conv0 output 5*64*64*64 = 1.31M elements > 2**20
    taps = ActivityTaps(select_layers(net))
    with torch.no_grad():
        with taps.attached():
            net(x)
        a0 = net[0](x)
    sample = taps.sample()
    assert a0.numel() > T.ABS_CHUNKED_ABOVE and torch.float32 in taps._scratch
    ref = a0.double().abs().mean()
    assert float(sample[0]) == pytest.approx(float(ref), rel=1e-5)


def test_ring_buffer_survives_deepcopy_and_pickle():
    """The CPU ring writes through a numpy view; a copy writes into its own tensor, not an orphan."""
    import copy
    import pickle

    ring = RingBuffer(rows=1, window=4)
    ring.push(torch.tensor([1.0]), phase=0, step=0)
    for clone in (copy.deepcopy(ring), pickle.loads(pickle.dumps(ring))):
        clone.push(torch.tensor([2.0]), phase=0, step=1)
        assert clone.ordered().tolist() == [[1.0, 2.0]]
    assert ring.ordered().tolist() == [[1.0]]


def test_buffers_first_made_under_inference_mode_take_training_writes():
    """`trainer.validate` before `trainer.fit`: the ring and the chunk scratch are normal tensors."""
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 2, 1))
    taps = ActivityTaps(select_layers(net))
    ring = RingBuffer(rows=2, window=4)
    x = torch.randn(48, 1, 28, 28)  # conv0 output 48*32*28*28 = 1.2M elements: chunked
    taps.attach()
    try:
        with torch.inference_mode():
            net(x)
            ring.push(taps.sample(), phase=0, step=0)
        assert taps._scratch and not any(s.is_inference() for s in taps._scratch.values())
        assert not ring.values.is_inference()
        net(x).sum().backward()  # a training forward after it
        ring.push(taps.sample(), phase=1, step=1)
    finally:
        taps.detach()
    assert ring.count == 2 and torch.isfinite(ring.ordered()).all()
