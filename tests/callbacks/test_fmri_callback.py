"""NNfMRICallback inside real Trainer runs: zeta, densities, anomalies, tractography, panels, DDP."""

from __future__ import annotations

import json
import os
import types
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import forward_hook_count
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback
from nn_neuroimaging_lightning.taps import LayerTaps

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------- helpers
class TinyCNN(pl.LightningModule):
    """conv -> BN -> ReLU -> dropout -> flatten -> fc1 -> ReLU -> fc2: RNG and buffers matter."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.3)
        self.fc1 = nn.Linear(4 * 6 * 6, 8)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)
        self.lr = lr

    def forward(self, x):
        h = self.drop(self.relu(self.bn(self.conv(x))))
        return self.fc2(self.relu2(self.fc1(h.flatten(1))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loaders(n: int = 48, batch: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=batch), DataLoader(ds, batch_size=batch)


def trainer(tmp_path, callbacks, **kw):
    kw.setdefault("max_epochs", 2)
    kw.setdefault("log_every_n_steps", 1)
    return pl.Trainer(
        default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path), callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1, **kw,
    )


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


class PlantedNet(pl.LightningModule):
    """``lin`` (identity on 8 features) feeds the logits ONLY through units 2, 3 (region 1 of grid (4,))."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8, bias=False)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(8))
            self.head.weight.zero_()
            self.head.weight[1, 2:4] = 4.0
            self.head.weight[0, 2:4] = -4.0
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.lin(x))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def planted_loader(n: int = 32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 2] + x[:, 3] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=n)


# ---------------------------------------------------------------------------------- (b) planted region
@pytest.mark.parametrize(("baseline",), [("zero",), ("mean",)])
def test_planted_region_ranked_first_and_only_significant(tmp_path, baseline):
    fmri = NNfMRICallback(layers=["lin"], grid=(4,), zeta_budget=64, probe_size=32, baseline=baseline, tractography=False)
    trainer(tmp_path, [fmri]).validate(PlantedNet(), planted_loader(), verbose=False)
    res = fmri.zeta["lin"]
    assert res.scores.shape == (4,)
    assert int(res.scores.argmax()) == 1
    assert res.significant.tolist() == [False, True, False, False]
    # null players: zero outgoing weights give exactly zero marginals
    assert torch.equal(res.scores[[0, 2, 3]], torch.zeros(3, dtype=res.scores.dtype))
    assert res.scores[1] > 0.1
    assert fmri.zeta_max["lin"] == pytest.approx(float(res.scores[1]))
    # efficiency: the scores sum to f(all) - f(none)
    model = PlantedNet()
    x, y = next(iter(planted_loader()))
    with torch.no_grad():
        f_all = -F.cross_entropy(model(x).double(), y)
        h = model.lin(x)
        base = torch.zeros_like(h) if baseline == "zero" else h.reshape(32, 4, 2).mean((0, 2)).repeat_interleave(2).expand_as(h)
        f_none = -F.cross_entropy(model.head(base).double(), y)
    assert float(res.scores.sum()) == pytest.approx(float(f_all - f_none), rel=1e-6, abs=1e-7)
    # concentrated zeta mass is flagged
    assert [e.kind for e in fmri.events] == ["zeta_concentration"]
    assert fmri.flagged_layers == frozenset({"lin"})


# ---------------------------------------------------------------------------------- (c) no observer effect
def _seeded_run(tmp_path, with_callback: bool):
    pl.seed_everything(7, workers=True, verbose=False)
    model = TinyCNN()
    rec = LossRecorder()
    cbs = [rec]
    fmri = None
    if with_callback:
        fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=16, zeta_time_fraction=None, probe_size=8, baseline="mean")
        cbs.append(fmri)
    train, val = loaders()
    trainer(tmp_path, cbs, max_epochs=3, deterministic=True).fit(model, train, val)
    return rec.losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, fmri


def test_no_observer_effect_bitwise(tmp_path):
    losses_a, weights_a, fmri = _seeded_run(tmp_path / "with", True)
    losses_b, weights_b, _ = _seeded_run(tmp_path / "without", False)
    assert fmri.zeta_evaluations == 3  # zeta + tractography ran mid-training, each epoch
    assert set(fmri.zeta) == {"conv", "fc1", "fc2"}
    assert fmri.tracts  # tractography ran
    assert len(losses_a) == len(losses_b) == 9
    for a, b in zip(losses_a, losses_b):
        assert torch.equal(a, b)
    assert weights_a.keys() == weights_b.keys()
    for k in weights_a:
        assert torch.equal(weights_a[k], weights_b[k]), k


# ---------------------------------------------------------------------------------- densities, tractography
def test_density_and_tractography(tmp_path):
    fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=16, zeta_time_fraction=None, probe_size=8, top_k=3)
    train, val = loaders()
    trainer(tmp_path, [fmri], max_epochs=1).fit(TinyCNN(), train, val)
    dens = fmri.density
    assert dens["conv"].shape == (2, 2, 2) and dens["fc1"].shape == (2,) and dens["fc2"].shape == (2,)
    assert all(torch.isfinite(d).all() for d in dens.values())
    # conv -> fc1 meets through a flatten (same units): traced, "reshaped"; fc1 -> fc2 exact
    t1, t2 = fmri.tracts[("conv", "fc1")], fmri.tracts[("fc1", "fc2")]
    assert t1.traced and t1.mapping == "reshaped" and t1.matrix.shape == (8, 2) and t1.activation == "relu"
    assert t2.traced and t2.mapping == "exact" and t2.matrix.shape == (2, 2) and t2.activation == "identity"
    assert len(t1.pathways) == 3 and t1.pathways[0][2] == pytest.approx(float(t1.matrix.max()))
    assert 0.0 <= t1.efficiency <= 1.0
    strength, path = fmri.path_strength[("conv", "fc1", "fc2")]
    assert 0.0 < strength <= 1.0 and len(path) == 3


def test_tractography_across_pooling_is_proportional_or_untraced():
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 2, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.c2 = nn.Conv2d(2, 2, 3, padding=1)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(self.gap(self.c2(self.pool(self.c1(x)))).flatten(1))

    net = Pooled()
    fmri = NNfMRICallback(grid=(2, 2, 1))
    fmri._modules = {"c1": net.c1, "c2": net.c2, "fc": net.fc}
    fmri._taps = LayerTaps(fmri._modules, reduce=lambda t: None)
    tracts = fmri.compute_tractography(net, torch.randn(4, 1, 8, 8))
    assert tracts[("c1", "c2")].traced and tracts[("c1", "c2")].mapping == "proportional"
    assert not tracts[("c2", "fc")].traced and "no known unit mapping" in tracts[("c2", "fc")].reason
    assert forward_hook_count(net) == 0


# ---------------------------------------------------------------------------------- (e) panels
def test_panels_in_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=16, zeta_time_fraction=None, probe_size=8)
    train, val = loaders()
    tr = trainer(tmp_path, [fmri], max_epochs=1)
    tr.fit(TinyCNN(), train, val)
    acc = EventAccumulator(tr.logger.log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    images = set(acc.Tags()["images"])
    for layer in ("conv", "fc1", "fc2"):
        assert {f"nn_fmri/{layer}/density", f"nn_fmri/{layer}/zeta"} <= images
        assert f"nn_fmri/{layer}/significance" not in images  # the zeta map's dots carry it (one figure fewer per layer)
        assert len(acc.Images(f"nn_fmri/{layer}/density")) == 1  # drawn once per epoch, not again after zeta
    assert "nn_fmri/tract/conv__fc1" in images and "nn_fmri/tract/fc1__fc2" in images
    scalars = set(acc.Tags()["scalars"])
    assert {"nn_fmri/conv/zeta_max", "nn_fmri/fc1/zeta_max", "nn_fmri/anomaly"} <= scalars
    texts = set(acc.Tags()["tensors"])
    assert "nn_fmri/conv/zeta_top/text_summary" in texts
    value = acc.Scalars("nn_fmri/conv/zeta_max")[-1].value
    assert value == pytest.approx(fmri.zeta_max["conv"], rel=1e-5)


# ---------------------------------------------------------------------------------- (f) spatial anomaly
def test_dead_region_event_when_region_zeroed(tmp_path):
    class Zeroer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 8 and not hasattr(self, "h"):
                def hook(m, a, out):
                    out = out.clone()
                    out[:, 0:2, 0:3, 0:3] = 0.0  # region (h=0, w=0, c=0) of grid (2, 2, 2)
                    return out
                self.h = pl_module.conv.register_forward_hook(hook, prepend=True)

    fmri = NNfMRICallback(layers=["conv"], grid=(2, 2, 2), tractography=False, zeta_every_n_epochs=100, min_history=2)
    train, val = loaders()
    zeroer = Zeroer()
    trainer(tmp_path, [zeroer, fmri], max_epochs=5).fit(TinyCNN(lr=0.01), train, val)
    zeroer.h.remove()
    dead = [e for e in fmri.events if e.kind == "dead_region"]
    assert len(dead) == 1 and dead[0].layer == "conv" and dead[0].step >= 8
    assert dead[0].value == 0.0 and "(h=0, w=0, c=0)" in dead[0].detail
    assert "conv" in fmri.flagged_layers
    assert any("conv" in flagged for _, flagged in fmri.flag_history)
    assert not any(flagged for step, flagged in fmri.flag_history if step < 8)
    lines = [json.loads(l) for l in open(os.path.join(tmp_path, "lightning_logs", "version_0", "events.jsonl"))]
    assert [l["kind"] for l in lines] == ["dead_region"]


def test_stop_on_dead_region(tmp_path):
    class Killer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 6 and not hasattr(self, "h"):
                self.h = pl_module.conv.register_forward_hook(lambda m, a, o: o * 0, prepend=True)

    fmri = NNfMRICallback(layers=["conv"], grid=(2, 2, 2), tractography=False, stop_on="dead_region")
    train, val = loaders()
    tr = trainer(tmp_path, [Killer(), fmri], max_epochs=10)
    tr.fit(TinyCNN(lr=0.01), train, val)
    assert tr.global_step == 7  # stopped in the step the regions died


# ---------------------------------------------------------------------------------- (g) hooks removed
def test_hooks_removed_after_fit_validate_and_exception(tmp_path):
    model = TinyCNN()
    train, val = loaders()
    fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=16, zeta_time_fraction=None, probe_size=8)
    trainer(tmp_path / "a", [fmri], max_epochs=1).fit(model, train, val)
    assert forward_hook_count(model) == 0
    trainer(tmp_path / "b", [fmri]).validate(model, val, verbose=False)
    assert forward_hook_count(model) == 0

    class Boom(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                assert forward_hook_count(pl_module) > 0
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path / "c", [fmri, Boom()], max_epochs=1).fit(model, train, val)
    assert forward_hook_count(model) == 0


# ---------------------------------------------------------------------------------- (h) bad arguments, clamping
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grid": (0, 8, 4)}, "`grid`"),
        ({"grid": "big"}, "`grid`"),
        ({"lam": float("nan")}, "`lam`"),
        ({"eps": 0.0}, "`eps`"),
        ({"zeta_every_n_epochs": 0}, "`zeta_every_n_epochs`"),
        ({"zeta_budget": 2}, "`zeta_budget`"),
        ({"probe_size": 0}, "`probe_size`"),
        ({"baseline": "median"}, r"`baseline` must be one of \('zero', 'mean'\), got 'median'"),
        ({"metric": "f1"}, "`metric`"),
        ({"truncation_tol": -1.0}, "`truncation_tol`"),
        ({"confidence": 1.0}, "`confidence`"),
        ({"top_k": 0}, "`top_k`"),
        ({"dead_ratio": 2.0}, "`dead_ratio`"),
        ({"saturation_ratio": 0.5}, "`saturation_ratio`"),
        ({"zeta_concentration": 0.0}, "`zeta_concentration`"),
        ({"stop_on": ("explosion",)}, r"`stop_on` got unknown value\(s\) \['explosion'\]"),
        ({"max_events": 0}, "`max_events`"),
        ({"check_every_n_steps": 0}, "`check_every_n_steps`"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NNfMRICallback(**kwargs)


@pytest.mark.parametrize(("kwargs",), [({"value_fn": 3},), ({"label_selector": "y"},), ({"antithetic": 1},)])
def test_bad_argument_types(kwargs):
    with pytest.raises(TypeError, match=f"`{next(iter(kwargs))}`"):
        NNfMRICallback(**kwargs)


def test_unknown_layer_lists_available(tmp_path):
    fmri = NNfMRICallback(layers=["nope"])
    train, val = loaders()
    with pytest.raises(ValueError, match="matches no module. Available modules: conv"):
        trainer(tmp_path, [fmri], max_epochs=1).fit(TinyCNN(), train, val)


def test_grid_larger_than_layer_clamped_with_one_warning(tmp_path):
    fmri = NNfMRICallback(grid=(8, 8, 4), zeta_budget=16, zeta_time_fraction=None, probe_size=8, tractography=False)
    train, val = loaders()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [fmri], max_epochs=2).fit(TinyCNN(), train, val)
    clamp = [w for w in caught if "was clamped" in str(w.message)]
    assert len(clamp) == 1
    assert "`conv` output (16, 4, 6, 6) -> grid (6, 6, 4)" in str(clamp[0].message)
    assert fmri.density["conv"].shape == (6, 6, 4)
    assert fmri.zeta["conv"].scores.shape == (6, 6, 4)


# ---------------------------------------------------------------------------------- (i) config
def test_from_config_yaml():
    fmri = NNfMRICallback.from_config(os.path.join(REPO, "configs", "fmri.yaml"))
    assert fmri.grid == (8, 8, 4) and fmri.baseline == "zero" and fmri.zeta_every_n_epochs == 1
    override = NNfMRICallback.from_config({"grid": [4, 4, 2], "stop_on": ["dead_region"]}, value_fn=lambda m, b: b[1])
    assert override.grid == (4, 4, 2) and override.stop_on == ("dead_region",) and override.value_fn is not None
    with pytest.raises(ValueError, match="unknown config key `gird`"):
        NNfMRICallback.from_config({"gird": [4, 4, 2]})


def test_state_dict_round_trip(tmp_path):
    fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=16, zeta_time_fraction=None, probe_size=8, tractography=False)
    train, val = loaders()
    trainer(tmp_path, [fmri], max_epochs=1).fit(TinyCNN(), train, val)
    state = fmri.state_dict()
    fresh = NNfMRICallback(grid=(2, 2, 2), zeta_budget=16, zeta_time_fraction=None, probe_size=8, tractography=False)
    fresh.load_state_dict(state)
    tr = trainer(tmp_path / "r", [fresh], max_epochs=1)
    fresh.setup(tr, TinyCNN(), "fit")
    assert torch.equal(fresh.zeta["fc1"].scores, fmri.zeta["fc1"].scores)
    for name in ("conv", "fc1"):
        assert torch.allclose(fresh.density[name], fmri.density[name])
    assert fresh._train_batches == fmri._train_batches == 3
    fresh._finish(tr)


def test_listener_called_after_each_zeta(tmp_path):
    calls = []
    fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=16, zeta_time_fraction=None, probe_size=8, tractography=False)
    fmri.add_listener(lambda trainer, module: calls.append((trainer.current_epoch, dict(fmri.zeta_max))))
    train, val = loaders()
    trainer(tmp_path, [fmri], max_epochs=2).fit(TinyCNN(), train, val)
    assert [c[0] for c in calls] == [0, 1] and set(calls[-1][1]) == {"conv", "fc1", "fc2"}


def test_zeta_at_train_epoch_end_without_validation(tmp_path):
    fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=16, zeta_time_fraction=None, probe_size=8, tractography=False, zeta_every_n_epochs=2)
    train, _ = loaders()
    trainer(tmp_path, [fmri], max_epochs=4, limit_val_batches=0).fit(TinyCNN(), train)
    assert fmri.zeta_evaluations == 2 and set(fmri.zeta) == {"conv", "fc1", "fc2"}


# ---------------------------------------------------------------------------------- (d) DDP
class ScoreDump:
    """Listener that saves the scores on global rank 0 (picklable for ddp_spawn)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fmri = None

    def __call__(self, trainer, pl_module):
        if trainer.global_rank == 0:
            torch.save({k: (v.scores.clone(), v.n_permutations, v.stat_count) for k, v in self.fmri.zeta.items()}, self.path)


def _ddp_run(tmp_path, devices: int):
    pl.seed_everything(3, verbose=False)
    model = TinyCNN()
    fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=40, probe_size=8, tractography=False)
    dump = ScoreDump(str(tmp_path / f"scores_{devices}.pt"))
    dump.fmri = fmri
    fmri.add_listener(dump)
    train, val = loaders()
    strategy = "ddp_spawn" if devices > 1 else "auto"
    tr = pl.Trainer(default_root_dir=tmp_path / str(devices), logger=TensorBoardLogger(tmp_path / str(devices)), callbacks=[fmri],
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                    devices=devices, strategy=strategy, use_distributed_sampler=False)
    # every rank sees the same batches (no distributed sampler): one game, its permutations split
    tr.validate(model, val, verbose=False)
    return torch.load(dump.path)


@pytest.mark.timeout(300)
def test_ddp_two_processes_match_one(tmp_path):
    one = _ddp_run(tmp_path, 1)
    two = _ddp_run(tmp_path, 2)
    assert set(one) == set(two) == {"conv", "fc1", "fc2"}
    for name in one:
        s1, p1, c1 = one[name]
        s2, p2, c2 = two[name]
        assert p1 == p2 and c1 == c2  # the same total permutations, split across the ranks
        assert torch.allclose(s1, s2, rtol=1e-6, atol=1e-9), name


# ---------------------------------------------------------------------------------- subsampled densities
def test_density_uses_the_first_density_samples_of_each_batch(tmp_path):
    from nn_neuroimaging_lightning.functional.grid import region_density_from_activation

    model = TinyCNN(lr=0.0)  # weights fixed: conv outputs are a function of the inputs alone
    fmri = NNfMRICallback(layers=["conv"], grid=(2, 2, 2), density_samples=5, check_every_n_steps=100,
                          zeta_every_n_epochs=100, tractography=False)
    train, val = loaders()  # 48 samples, batches of 16
    trainer(tmp_path, [fmri], max_epochs=1).fit(model, train, val)
    x = train.dataset.tensors[0]
    picked = torch.cat([x[s : s + 5] for s in (0, 16, 32)])  # (15, 1, 6, 6)
    with torch.no_grad():
        direct = region_density_from_activation(model.conv(picked), (2, 2, 2))
    assert torch.allclose(fmri.density["conv"], direct, rtol=1e-5, atol=1e-6)
    assert fmri._acc_n[0] == 15


def test_density_copies_are_summed_in_bounded_groups_and_match_direct_computation(tmp_path):
    """40 steps with the window open: the pending copies never exceed `_ROWS_MAX_CALLS`, and the
    density over all 40 steps (summed in groups of 16, 16 and 8) equals a direct computation."""
    from lightning.pytorch import Callback

    from nn_neuroimaging_lightning.fmri import density as FM
    from nn_neuroimaging_lightning.functional.grid import region_density_from_activation

    seen = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(len(fmri._rows[0]))

    model = TinyCNN(lr=0.0)
    fmri = NNfMRICallback(layers=["conv"], grid=(2, 2, 2), density_samples=2, check_every_n_steps=1000,
                          zeta_every_n_epochs=100, tractography=False)
    x = torch.randn(40 * 4, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=4)
    trainer(tmp_path, [fmri, Watch()], max_epochs=1, limit_val_batches=0).fit(model, train)
    assert max(seen) == FM._ROWS_MAX_CALLS - 1 and seen[FM._ROWS_MAX_CALLS - 1] == 0  # summed at the 16th step
    picked = torch.cat([x[s : s + 2] for s in range(0, len(x), 4)])  # (80, 1, 6, 6)
    with torch.no_grad():
        direct = region_density_from_activation(model.conv(picked), (2, 2, 2))
    assert torch.allclose(fmri.density["conv"], direct, rtol=1e-5, atol=1e-6)
    assert fmri._acc_n[0] == 80


def test_density_of_the_whole_batch_matches_direct_computation(tmp_path):
    # density_samples=None: the hook reduces each batch to per-unit sums itself (the other path)
    from nn_neuroimaging_lightning.functional.grid import region_density_from_activation

    model = TinyCNN(lr=0.0)
    fmri = NNfMRICallback(layers=["conv"], grid=(2, 3, 2), density_samples=None, check_every_n_steps=100,
                          zeta_every_n_epochs=100, tractography=False)
    train, val = loaders()  # 48 samples, batches of 16
    trainer(tmp_path, [fmri], max_epochs=1).fit(model, train, val)
    with torch.no_grad():
        direct = region_density_from_activation(model.conv(train.dataset.tensors[0]), (2, 3, 2))
    assert torch.allclose(fmri.density["conv"], direct, rtol=1e-5, atol=1e-6)
    assert fmri._acc_n[0] == 48


def test_density_windows_are_region_density_metrics_and_survive_a_checkpoint():
    """The engine's windows are ``metrics.fmri.RegionDensity`` states; a state round trip keeps the open window
    and the closed one (whose density is read while the new window is empty)."""
    from nn_neuroimaging_lightning.fmri.density import RegionDensities
    from nn_neuroimaging_lightning.metrics.fmri import RegionDensity

    torch.manual_seed(3)
    dens = RegionDensities(["conv", "fc"], grid=(2, 2, 2), lam=0.1, eps=1e-6, density_samples=2)
    for _ in range(3):
        dens.add([[dens.reduce(torch.randn(4, 3, 5, 5))], [dens.reduce(torch.randn(4, 6))]])
    first = dens.density()
    assert all(isinstance(m, RegionDensity) for m in dens.acc)
    events, _ = dens.check(step=3)  # closes the window: its density is the last one's now
    assert events == [] and all(m is None for m in dens.acc)
    dens.add([[dens.reduce(torch.randn(4, 3, 5, 5) + 2)], []])  # a new window for "conv" only
    restored = RegionDensities(["conv", "fc"], grid=(2, 2, 2), lam=0.1, eps=1e-6, density_samples=2)
    assert restored.load_state_dict(dens.state_dict())
    for name, phi in dens.density().items():
        torch.testing.assert_close(restored.density()[name], phi)
    torch.testing.assert_close(restored.density()["fc"], first["fc"])  # the closed window
    assert not torch.allclose(restored.density()["conv"], first["conv"])  # the open one


# ---------------------------------------------------------------------------------- time budget, window
def test_time_budget_ledger_and_window(tmp_path):
    from nn_neuroimaging_lightning.fmri.zeta import MAX_SAMPLES_PER_EVALUATION

    model = TinyCNN()
    fmri = NNfMRICallback(grid=(2, 2, 2), zeta_budget=16, zeta_time_fraction=None, zeta_window=2, probe_size=8,
                          tractography=False)
    train, val = loaders()
    trainer(tmp_path, [fmri], max_epochs=1).fit(model, train, val)
    first = {k: v.stat_count for k, v in fmri.zeta.items()}
    assert first == {"conv": 2, "fc1": 7, "fc2": 7}  # conv (R = 8): raised to 2 pairs; fc (R = 2): (16 - 2) // 1 // 2
    probe = fmri._probe
    # nothing affordable: no forward, the share is banked (up to one sample's cost) and the window ages
    fmri.compute_zeta(model, probe, time_budget_s=0.0)
    assert all(p["samples"] == 0 for p in fmri.last_zeta_plan.values())
    assert {k: v.stat_count for k, v in fmri.zeta.items()} == first  # window [eval 1, empty]
    fmri.compute_zeta(model, probe, time_budget_s=0.0)
    assert fmri.zeta == {} and fmri.zeta_max == {}  # window [empty, empty]: no estimate, never a fake 0
    # ample time: each layer is capped, the unspent share is not kept as savings
    fmri.compute_zeta(model, probe, time_budget_s=60.0)
    for name, plan in fmri.last_zeta_plan.items():
        assert plan["samples"] == MAX_SAMPLES_PER_EVALUATION and plan["bank_s"] <= 0.0
        assert fmri.zeta[name].stat_count == MAX_SAMPLES_PER_EVALUATION
        assert fmri.zeta[name].n_permutations == 2 * MAX_SAMPLES_PER_EVALUATION
    fmri.compute_zeta(model, probe, time_budget_s=60.0)
    assert fmri.zeta["fc1"].stat_count == 2 * MAX_SAMPLES_PER_EVALUATION  # two evaluations pooled
    # the pooled estimate is the mean of both evaluations' samples, with a finite interval
    res = fmri.zeta["conv"]
    assert torch.all(res.ci_low <= res.scores) and torch.all(res.scores <= res.ci_high)
    assert torch.isfinite(res.std_err).all()
    # state survives, windows included
    fresh = NNfMRICallback(grid=(2, 2, 2), zeta_window=2)
    fresh.load_state_dict(fmri.state_dict())
    tr = trainer(tmp_path / "r", [fresh], max_epochs=1)
    fresh.setup(tr, TinyCNN(), "fit")
    assert torch.equal(fresh.zeta["conv"].scores, res.scores) and fresh._row_cost == fmri._row_cost
    fresh._finish(tr)


def test_time_mode_in_fit_stays_within_its_share(tmp_path):
    fmri = NNfMRICallback(grid=(2, 2, 2), probe_size=8, tractography=False, zeta_time_fraction=0.5)
    train, val = loaders(n=256)
    trainer(tmp_path, [fmri], max_epochs=3, limit_val_batches=1).fit(TinyCNN(), train, val)
    assert fmri.zeta_evaluations == 3
    # the ledger of every evaluation: what a layer spent never exceeds its allowance by more than the
    # sample that crossed it (wall-clock: a loaded machine can make that one sample a few times slower
    # than its running estimate, hence the slack; the budget logic itself is what is tested)
    for name, plan in fmri.last_zeta_plan.items():
        assert plan["spent_s"] <= plan["allowance_s"] + 4 * fmri._sample_cost(name) + 0.25


# ---------------------------------------------------------------------------------- DDP epoch logs
class _LogRecorder:
    """Stands in for a LightningModule: records ``log`` calls; ``_trainer`` carries ``world_size``."""

    def __init__(self, world_size):
        self._trainer = types.SimpleNamespace(world_size=world_size)
        self.calls = []

    def log(self, name, value, **kwargs):
        self.calls.append((name, kwargs))


@pytest.mark.parametrize(("world_size", "kwargs", "synced"), [
    (2, dict(on_step=False, on_epoch=True), False),  # epoch-only: no collective (see `_log`)
    (2, dict(), False),  # per step (the default): no collective
    (2, dict(on_epoch=True), False),
    (2, dict(on_step=False, on_epoch=True, sync_dist=True), True),  # an explicit choice is kept
    (1, dict(on_step=False, on_epoch=True), False),
])
def test_log_never_adds_a_collective_under_ddp(world_size, kwargs, synced):
    module = _LogRecorder(world_size)
    NNfMRICallback._log(module, "nn_fmri/anomaly", 1.0, **kwargs)
    (name, got), = module.calls
    assert name == "nn_fmri/anomaly"
    assert got.get("sync_dist", False) is synced
    assert got["batch_size"] == 1 and got["add_dataloader_idx"] is False


def test_log_without_trainer_does_not_sync():
    module = _LogRecorder(2)
    module._trainer = None
    NNfMRICallback._log(module, "x", 1.0, on_step=False, on_epoch=True)
    assert "sync_dist" not in module.calls[0][1]


# ---------------------------------------------------------------------------------- counted schedule (issue 13 item 3)
def _counted_fit(tmp_path, epochs=2):
    pl.seed_everything(0, verbose=False)
    fmri = NNfMRICallback(tractography=False, panels=False)  # defaults: counted, 5 % of training sample-forwards
    train, val = loaders(n=64)
    model = TinyCNN()
    trainer(tmp_path, [fmri], max_epochs=epochs).fit(model, train, val)
    fmri.model = model
    return fmri


def test_counted_schedule_floor_share_and_same_seed_same_maps(tmp_path):
    from nn_neuroimaging_lightning.fmri.zeta import MAX_SAMPLES_PER_EVALUATION

    first, second = _counted_fit(tmp_path / "a"), _counted_fit(tmp_path / "b")
    assert sorted(first.zeta) == sorted(first.zeta_layers) and first.zeta_evaluations == 2
    for name, res in first.zeta.items():
        assert res.stat_count >= 2 and torch.isfinite(res.ci_low).all() and torch.isfinite(res.ci_high).all()
        other = second.zeta[name]  # no clock in the default path: bitwise the same
        assert torch.equal(res.scores, other.scores) and torch.equal(res.ci_low, other.ci_low)
    # 4 training batches of 16 per epoch = 64 sample-forwards, 5 % = 3: below any sample, so the first
    # evaluation is the floor (two samples each) and the second adds none (the window still holds two)
    assert all(p["samples"] == 0 and p["sample_forwards"] == 0 for p in first.last_zeta_plan.values())
    probe, model = first._probe, first.model
    first.compute_zeta(model, probe, forward_budget=10**9)  # ample: every layer capped
    assert all(p["samples"] == MAX_SAMPLES_PER_EVALUATION for p in first.last_zeta_plan.values())
    cost = {n: (3 + first._rows_per_sample[n]) * probe.size for n in first.zeta_layers}
    cheapest = min(cost, key=cost.get)
    first._zeta_stats.clear()
    first.compute_zeta(model, probe, forward_budget=0)  # empty windows: the floor whatever the share
    assert all(p["samples"] == 2 for p in first.last_zeta_plan.values())
    # a share that buys exactly one sample for each layer (the credit of the floor is not a debt)
    budget = sum(cost.values())
    first.compute_zeta(model, probe, forward_budget=budget)
    assert first.last_zeta_plan[cheapest]["samples"] >= 1
    assert sum(p["sample_forwards"] for p in first.last_zeta_plan.values()) <= budget


def test_sampled_density_agrees_with_the_full_batch_density(tmp_path):
    """The default density is an average over the first ``density_samples`` (4) samples of each
    batch. On the reference CNN with the demo's data (64-sample batches, 50 steps, weights fixed in
    effect so both runs see the same activations: 200 samples against 3,200), the sampled map agrees
    with the map of every sample of every batch: Pearson >= 0.98 over the regions of each layer, and
    no region off by more than 0.35 x the layer's mean |phi| (phi's log-variance term can put a
    region near 0, where a relative error means nothing). Measured: corr 0.991 / 0.997 / 0.999 /
    1.000 and 0.08 / 0.23 / 0.01 / 0.02 for conv1 / conv2 / fc1 / fc2. The README states the same."""
    from nn_neuroimaging_lightning.demo.data import SyntheticImages
    from nn_neuroimaging_lightning.demo.model import DemoClassifier

    data = SyntheticImages(64 * 50, seed=0)
    dens = {}
    for samples in (4, None):
        pl.seed_everything(0, verbose=False)
        model = DemoClassifier(lr=1e-12)  # weights fixed in effect (lr must be > 0)
        fmri = NNfMRICallback(density_samples=samples, check_every_n_steps=1000, zeta_every_n_epochs=100, tractography=False)
        train = DataLoader(data, batch_size=64, shuffle=True)
        trainer(tmp_path / str(samples), [fmri], max_epochs=1, limit_val_batches=0).fit(model, train)
        dens[samples] = {k: v.clone() for k, v in fmri.density.items()}
    assert dens[4].keys() == dens[None].keys() and dens[4]
    for layer, full in dens[None].items():
        sampled = dens[4][layer]
        corr = torch.corrcoef(torch.stack([sampled.flatten(), full.flatten()]))[0, 1].item()
        off = ((sampled - full).abs().max() / full.abs().mean()).item()  # phi can be near 0 (log-variance term)
        assert corr >= 0.98 and off <= 0.35, (layer, corr, off)


def test_zeta_concentration_is_not_judged_on_a_two_region_map(tmp_path):
    # the planted net's layer with 2 regions: one holds all the zeta mass, as a head's feature groups
    # ordinarily do; concentration needs MIN_CONCENTRATION_REGIONS (4) regions to mean a shortcut
    from nn_neuroimaging_lightning.fmri.zeta import MIN_CONCENTRATION_REGIONS

    assert MIN_CONCENTRATION_REGIONS == 4
    fmri = NNfMRICallback(layers=["lin"], grid=(2,), zeta_budget=64, probe_size=32, tractography=False)
    trainer(tmp_path, [fmri]).validate(PlantedNet(), planted_loader(), verbose=False)
    res = fmri.zeta["lin"]
    assert res.scores.shape == (2,) and float(res.scores.abs().max() / res.scores.abs().sum()) > 0.9
    assert fmri.events == [] and fmri.flagged_layers == frozenset()
