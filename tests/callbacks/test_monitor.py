"""Monitor: NN-EEG on a served model without a Trainer (hooks, calibration, per-forward verdicts)."""

import math

import numpy as np
import pytest
import torch
from helpers import forward_hook_count
from torch import nn

from nn_neuroimaging_lightning.callbacks._base import AnomalyEvent
from nn_neuroimaging_lightning.demo.model import ReferenceCNN
from nn_neuroimaging_lightning.monitor import Monitor

CNN_LAYERS = ["conv1", "conv2", "fc1", "fc2"]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny forwards: intra-op threads only contend (x50 slower on a loaded 2-core box).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cnn():
    torch.manual_seed(0)
    return ReferenceCNN().eval()


def _batches(n, seed=0, batch=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(n)]


def test_hooks_removed_after_with_block_and_after_an_exception():
    model = _cnn()
    with Monitor(model, calibrate=64) as mon:
        assert forward_hook_count(model) == len(CNN_LAYERS) + 1  # one per layer plus the root hook
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
    assert forward_hook_count(model) == 0 and not mon.attached
    with pytest.raises(RuntimeError, match="boom"):
        with Monitor(model) as mon:
            model(torch.randn(2, 3, 32, 32))
            raise RuntimeError("boom")
    assert forward_hook_count(model) == 0
    # an exception inside the model's forward (wrong input shape)
    with pytest.raises(RuntimeError):
        with Monitor(model):
            model(torch.randn(2, 5, 32, 32))
    assert forward_hook_count(model) == 0
    mon = Monitor(model).attach()
    mon.attach()  # idempotent
    assert forward_hook_count(model) == len(CNN_LAYERS) + 1
    mon.detach()
    mon.detach()
    assert forward_hook_count(model) == 0


def test_signal_equals_mean_abs_computed_independently():
    model = _cnn()
    outputs = {name: [] for name in CNN_LAYERS}
    handles = [
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: outputs[name].append(o.detach().abs().mean().item()))
        for name in CNN_LAYERS
    ]
    try:
        with Monitor(model, window=16, nperseg=16, calibrate=16, bands={"low": (0, 50), "high": (50, 100)}) as mon:
            with torch.no_grad():
                for x in _batches(20):
                    model(x)
    finally:
        for h in handles:
            h.remove()
    assert mon.layers == CNN_LAYERS
    assert mon.forwards == 20
    for name in CNN_LAYERS:
        expected = np.array(outputs[name][-16:])  # the ring keeps the newest `window`
        np.testing.assert_allclose(mon.signal(name).numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="`name`='nope' is not a tapped layer"):
        mon.signal("nope")


def test_healthy_stream_gives_no_events():
    model = _cnn()
    with Monitor(model, calibrate=64, check_every=64) as mon, torch.no_grad():
        for x in _batches(320, seed=1):
            model(x)
    assert mon.calibrated and mon.forwards == 320
    assert mon.events == [] and not mon.anomalous
    assert mon.check() == []
    assert set(mon.spectral_distance) == set(CNN_LAYERS)
    assert max(mon.spectral_distance.values()) < 0.3


@pytest.mark.parametrize(("start", "calibrate"), [(64, 64), (90, 64), (40, 32)])
def test_drifted_stream_is_flagged_at_the_first_drifted_forward(start, calibrate):
    model = _cnn()
    seen = []
    with Monitor(model, calibrate=calibrate, nperseg=32, window=64,
                 bands={"low": (0, 25), "high": (25, 100)}, on_anomaly=seen.extend) as mon, torch.no_grad():
        for t, x in enumerate(_batches(start + 10, seed=2)):
            model(x * 100.0 if t >= start else x)  # z = log 100 / MIN_SCALE (0.5) ~ 9.2 > 8: the shared defaults
            if t == start - 1:
                assert not mon.anomalous and mon.events == []
            if t == start:
                assert mon.anomalous and mon.flagged_layers == CNN_LAYERS  # same forward on CPU
    first = min(e.step for e in mon.events)
    assert first == start
    at_start = {(e.layer, e.kind) for e in mon.events if e.step == start}
    assert at_start == {(name, "explosion") for name in CNN_LAYERS}
    # every drifted forward is flagged, in every layer; z = log 100 / 0.5 ~ 9.2 at most
    assert {e.step for e in mon.events} == set(range(start, start + 10))
    assert all(e.kind == "explosion" and e.value > 8.0 for e in mon.events)
    assert all(isinstance(e, AnomalyEvent) and e.source == "monitor" and e.phase == "predict" for e in mon.events)
    assert seen == mon.events


def test_corrupted_stream_nan_pixels_flagged_as_non_finite():
    model = _cnn()
    with Monitor(model, calibrate=64) as mon, torch.no_grad():
        for t, x in enumerate(_batches(75, seed=3)):
            if t == 70:
                x = x.clone()
                x[0, :, 5, 7] = float("nan")  # one corrupted pixel in one image
            model(x)
    assert {(e.step, e.layer, e.kind) for e in mon.events} == {(70, name, "non_finite") for name in CNN_LAYERS}
    assert all(e.value == 1.0 for e in mon.events)
    assert not mon.anomalous  # forwards 71.. are healthy again
    assert math.isnan(float(mon.signal("conv1")[-5]))


def test_dead_layer_is_a_collapse_in_that_layer_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    g = torch.Generator().manual_seed(4)
    with Monitor(model, calibrate=64) as mon, torch.no_grad():
        for t in range(80):
            if t == 70:
                model[2].weight.zero_()
                model[2].bias.zero_()
            model(torch.randn(8, 6, generator=g))
    assert mon.layers == ["0", "2", "4"]
    kinds = {(e.step, e.layer, e.kind) for e in mon.events}
    assert (70, "2", "collapse") in kinds
    assert {e.layer for e in mon.events if e.kind == "collapse"} == {"2"}
    assert min(e.step for e in mon.events) == 70
    assert not any(e.layer == "0" for e in mon.events)


def test_check_flags_a_spectral_shift_in_an_oscillating_stream():
    model = _cnn()
    batches = _batches(64 + 128, seed=5)
    # A weak (20 %) modulation, judged at 0.3: the shared default (functional.anomalies.SHIFT_THRESHOLD,
    # 0.8) is set so that healthy training runs raise nothing.
    with Monitor(model, calibrate=64, spectral_shift_threshold=0.3) as mon, torch.no_grad():
        for t, x in enumerate(batches):
            scale = 1.0 if t < 64 else 1.0 + 0.2 * math.sin(2 * math.pi * 6.0 * t / 200.0)  # 6 Hz: theta
            model(x * scale)
        events = mon.check()
    assert events == [e for e in mon.events if e.kind == "spectral_shift"]
    assert all(e.step == 64 + 128 - 1 for e in events)
    assert {e.layer for e in events} == set(CNN_LAYERS)
    assert not [e for e in mon.events if e.kind == "explosion"]  # a 20 % modulation is no explosion
    assert all(e.value > 0.3 for e in events)
    assert min(mon.spectral_distance.values()) > 0.3


def test_check_before_enough_samples_judges_nothing():
    model = _cnn()
    with Monitor(model, calibrate=64) as mon, torch.no_grad():
        for x in _batches(80, seed=6):
            model(x)
        assert mon.check() == []  # 16 post-calibration samples < nperseg
    assert mon.spectral_distance == {}


def test_suspended_forwards_are_not_counted():
    from nn_neuroimaging_lightning.taps import suspended

    model = _cnn()
    with Monitor(model) as mon, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        with suspended():
            model(torch.randn(2, 3, 32, 32))
    assert mon.forwards == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"window": 1}, ValueError, "`window`"),
        ({"nperseg": 256}, ValueError, "`nperseg` must be at most `window`=128"),
        ({"nperseg": 16}, ValueError, "band `delta`"),
        ({"explosion_z": 0.0}, ValueError, "`explosion_z`"),
        ({"collapse_ratio": 2.0}, ValueError, "`collapse_ratio`"),
        ({"spectral_shift_threshold": 0.0}, ValueError, "`spectral_shift_threshold`"),
        ({"calibrate": 32}, ValueError, "`calibrate` must be at least"),
        ({"calibrate": "64"}, TypeError, "`calibrate` must be an int"),
        ({"on_anomaly": 3}, TypeError, "`on_anomaly` must be callable"),
        ({"check_every": 0}, ValueError, "`check_every`"),
        ({"layers": "nope*"}, ValueError, "matches no module. Available modules: conv1"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        Monitor(_cnn(), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        Monitor(lambda x: x)


def test_silent_tapped_module_is_not_a_collapse():
    from nn_neuroimaging_lightning.demo.model import TinyTransformer

    torch.manual_seed(0)
    model = TinyTransformer(vocab=16, seq_len=8, num_classes=4).eval()
    g = torch.Generator().manual_seed(7)
    # the leaf layers (the default taps of a block model are its blocks, which all run)
    with Monitor(model, calibrate=64, layers=[nn.Embedding, nn.Linear]) as mon, torch.no_grad():
        for t in range(80):
            model(torch.randint(0, 16, (4, 8), generator=g))
    # MultiheadAttention uses out_proj's weights functionally: the module itself never runs
    assert mon.silent_layers == ["blocks.0.attn.out_proj", "blocks.1.attn.out_proj"]
    assert float(mon.signal("blocks.0.attn.out_proj").abs().sum()) == 0.0
    assert mon.events == []
    assert mon.layers[0] == "embed" and mon.layers[-2:] == mon.silent_layers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the lagged host copy path")
def test_cuda_stream_events_arrive_at_most_one_forward_late_with_the_right_index():
    model = _cnn().cuda()
    with Monitor(model, calibrate=64) as mon, torch.no_grad():
        for t, x in enumerate(_batches(72, seed=8)):
            model((x * 50.0 if t >= 70 else x).cuda())
            if t == 71:  # forward 70's verdict is collected at the latest when forward 71 ends
                assert 70 in {e.step for e in mon.events}
    assert {(e.step, e.layer) for e in mon.events} == {(s, n) for s in (70, 71) for n in CNN_LAYERS}
    assert all(e.kind == "explosion" for e in mon.events)


# ------------------------------------------------------------------ one judge (issue 14 item 4)
class _Stream(torch.nn.Module):
    """Two fixed bias-free Linear layers: the activity stream is the input stream's."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False))
        for p, w in zip(self.net.parameters(), (torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g))):
            p.data.copy_(w)
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _fault_stream(n: int = 160) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(n, 32, 8, generator=g)
    xs[100] *= 1e3  # explosion
    xs[120] = 0.0  # collapse (bias-free: zero activity)
    xs[140] = float("nan")  # non_finite
    xs[150] *= 20.0  # 20x: z = log 20 / 0.5 = 6 < 8, no alarm in either
    return xs


def test_monitor_and_eeg_callback_judge_one_stream_alike(tmp_path):
    """The same activity stream through Monitor and NNEEGCallback gives the same per-step events."""
    from lightning.pytorch import LightningModule, Trainer
    from torch.utils.data import DataLoader, TensorDataset

    from nn_neuroimaging_lightning import NNEEGCallback

    xs = _fault_stream()

    class Fit(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _Stream()
            self.anchor = torch.nn.Parameter(torch.zeros(()))  # the loss has a graph; lr 0 moves nothing

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            return self(batch[0]).mean().nan_to_num(0.0) * 0.0 + self.anchor

        def configure_optimizers(self):
            return torch.optim.SGD([self.anchor], lr=0.0)

        def train_dataloader(self):
            return DataLoader(TensorDataset(xs), batch_size=None)

    fit = Fit()
    eeg = NNEEGCallback(analysis_every_n_steps=10_000)
    Trainer(callbacks=[eeg], accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
            default_root_dir=str(tmp_path)).fit(fit)

    served = _Stream()
    with Monitor(served, calibrate=64) as mon:
        for x in xs:
            served(x)
    kinds = ("non_finite", "explosion", "collapse")

    def key(events, prefix=""):
        return sorted((e.step, e.layer.removeprefix(prefix), e.kind) for e in events if e.kind in kinds and e.layer != "<loss>")

    expected = [(100, "net.0", "explosion"), (100, "net.1", "explosion"), (120, "net.0", "collapse"), (120, "net.1", "collapse"),
                (140, "net.0", "non_finite"), (140, "net.1", "non_finite")]
    assert key(mon.events) == expected
    assert key(eeg.events, "model.") == expected
