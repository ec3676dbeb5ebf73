"""SPEC §6 "Works where Lightning works": bf16-mixed, gradient accumulation, two validation loaders, torch.compile."""

from __future__ import annotations

import math
from typing import Any, Dict, List

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import MLPModule, fast_trainer
from nn_neuroimaging_lightning.callbacks.cross_modal import CrossModalCallback
from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback
from nn_neuroimaging_lightning.phases import Phase

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _three(**fmri: Any) -> List[Any]:
    kw: Dict[str, Any] = dict(zeta_time_fraction=None, zeta_budget=8, grid=(4,), probe_size=8, check_every_n_steps=4)
    kw.update(fmri)
    return [NNEEGCallback(analysis_every_n_steps=8), NNfMRICallback(**kw), CrossModalCallback()]


class CountForwards(Callback):
    """Counts forwards of the LightningModule per loop (a forward pre-hook on the root).

    Forwards run by the callbacks' own evaluations (zeta, tractography: inside ``suspended()``)
    are left out.
    """

    def __init__(self) -> None:
        self.counts: Dict[str, int] = {"train": 0, "validate": 0}
        self._handle: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from nn_neuroimaging_lightning.taps import _SUSPEND_DEPTH

        def pre(module: Any, args: Any) -> None:
            if _SUSPEND_DEPTH[0]:
                return
            if trainer.training:
                self.counts["train"] += 1
            elif trainer.validating and not trainer.sanity_checking:
                self.counts["validate"] += 1

        self._handle = pl_module.register_forward_pre_hook(pre)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._handle.remove()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])  # bf16-true: the loss itself is bf16
def test_bf16_on_cpu_gives_a_finite_float32_signal(tmp_path: Any, precision: str) -> None:
    eeg, fmri, cross = callbacks = _three()
    module = MLPModule(n=256, batch_size=8)
    trainer = fast_trainer(tmp_path, callbacks, precision=precision, max_epochs=3)
    trainer.fit(module)
    assert trainer.global_step == 3 * 32
    for name in eeg.layers:
        s = eeg.signal(name)
        assert s.dtype == torch.float32 and s.numel() == eeg.window
        assert torch.isfinite(s).all() and (s > 0).all()
    assert eeg._ring.values.dtype == torch.float32
    assert eeg.band_powers and all(math.isfinite(v) for bands in eeg.band_powers.values() for v in bands.values())
    assert not [e for e in eeg.events if e.kind in ("non_finite", "explosion", "collapse")]
    assert fmri.zeta_evaluations == 3 and len(fmri.zeta) == 3
    for res in fmri.zeta.values():
        assert res.scores.dtype in (torch.float32, torch.float64) and torch.isfinite(res.scores).all()
    for phi in fmri.density.values():
        assert phi.dtype == torch.float32 and torch.isfinite(phi).all()
    assert cross.consistency is not None and 0.0 <= cross.consistency <= 1.0


@pytest.mark.timeout(120)
def test_gradient_accumulation_one_sample_per_forward(tmp_path: Any) -> None:
    counter = CountForwards()
    eeg, fmri, cross = callbacks = _three()
    module = MLPModule(n=128, batch_size=8)  # 16 batches per epoch -> 4 optimizer steps
    trainer = fast_trainer(tmp_path, [counter] + callbacks, accumulate_grad_batches=4, max_epochs=2)
    trainer.fit(module)
    assert trainer.global_step == 2 * 16 // 4
    assert counter.counts == {"train": 32, "validate": 32}
    # samples = forwards (no idle stretches on this fast run), not optimizer steps
    phases = eeg.phases
    assert phases.count(Phase.TRAIN) == 32 and phases.count(Phase.VALIDATE) == 32
    assert eeg._ring.total == 64 + phases.count(Phase.IDLE)
    # each training sample is tagged with the optimizer step its forward belonged to: 4 per step
    train_steps = [int(s) for s, p in zip(eeg.steps, phases) if p is Phase.TRAIN]
    assert train_steps == [i // 4 for i in range(32)]
    metrics = trainer.callback_metrics
    assert float(metrics["nn_eeg/anomaly"]) == 0.0
    assert 0.0 <= float(metrics["nn_eeg/anomaly_score"]) < 1.0
    assert not eeg.events
    assert fmri.zeta_evaluations == 2 and cross.consistency is not None


class TwoValLoaders(MLPModule):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss, add_dataloader_idx=True)
        return loss

    def val_dataloader(self) -> List[DataLoader]:
        return [DataLoader(TensorDataset(self.x[:40], self.y[:40]), batch_size=8),  # 5 batches
                DataLoader(TensorDataset(self.x[40:64], self.y[40:64]), batch_size=8)]  # 3 batches


@pytest.mark.timeout(120)
def test_two_validation_dataloaders_are_both_validate(tmp_path: Any) -> None:
    counter = CountForwards()
    eeg, fmri, cross = callbacks = _three()
    module = TwoValLoaders(n=128, batch_size=8)
    trainer = fast_trainer(tmp_path, [counter] + callbacks, max_epochs=2)
    trainer.fit(module)
    assert counter.counts == {"train": 32, "validate": 2 * (5 + 3)}
    phases = eeg.phases
    assert phases.count(Phase.VALIDATE) == 16 and phases.count(Phase.TRAIN) == 32
    assert not {p for p in phases} - {Phase.TRAIN, Phase.VALIDATE, Phase.IDLE}
    # the 8 validation samples of each epoch form one contiguous `validate` run after its 16 training ones
    codes = [p for p in phases if p is not Phase.IDLE]
    assert codes == ([Phase.TRAIN] * 16 + [Phase.VALIDATE] * 8) * 2
    assert not [e for e in eeg.events if e.kind == "state_mismatch"]
    assert "val_loss/dataloader_idx_0" in trainer.callback_metrics and "val_loss/dataloader_idx_1" in trainer.callback_metrics
    assert fmri.zeta_evaluations == 2 and len(fmri.zeta) == 3  # once per validation epoch, not per loader
    assert cross.consistency is not None


# ----------------------------------------------------------------------------------- torch.compile
class Snapshot(Callback):
    """Dynamo counters at the start of the second training epoch (warm-up: one train + one validation epoch)."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.warm = _dynamo_counts()


def _dynamo_counts() -> Dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "unique_graphs": counters["stats"]["unique_graphs"],
        "frames": counters["frames"]["total"],  # every frame dynamo (re)compiles, including recompiles
        "frames_ok": counters["frames"]["ok"],
    }


def _compiled_run(tmp_path: Any, callbacks: List[Any]) -> Dict[str, Any]:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    module = MLPModule(n=64, batch_size=8)
    # `backend="eager"`: dynamo's tracing, guards, graph breaks and recompiles are what is under
    # test; inductor's C++ code generation would only add ~1 min of compile time per graph.
    module.net = torch.compile(module.net, backend="eager")
    snap = Snapshot()
    trainer = fast_trainer(tmp_path, [snap] + callbacks, max_epochs=3)
    trainer.fit(module)
    return {"warm": snap.warm, "end": _dynamo_counts()}


@pytest.mark.timeout(180)
def test_torch_compile_no_graph_breaks_no_recompiles(tmp_path: Any) -> None:
    bare = _compiled_run(tmp_path / "bare", [])
    eeg = NNEEGCallback(analysis_every_n_steps=8)
    watched = _compiled_run(tmp_path / "eeg", [eeg])

    # the taps live inside the compiled module and still see every forward (8 train + 8 val per epoch)
    assert eeg.layers == ["net.0", "net.2", "net.4"]  # the user's names: no `_orig_mod.` (issue 13 item 4)
    assert eeg.phases.count(Phase.TRAIN) == 24 and eeg.phases.count(Phase.VALIDATE) == 24
    assert all(torch.isfinite(eeg.signal(n)).all() for n in eeg.layers)
    # our hooks cause no graph break and no extra graph (train + eval graph, as without them) ...
    assert watched["end"]["graph_breaks"] == bare["end"]["graph_breaks"] == 0
    assert watched["end"]["unique_graphs"] == bare["end"]["unique_graphs"] == 2
    assert watched["end"]["frames"] == watched["end"]["frames_ok"]  # no frame gave up (recompile limit)
    # ... and nothing is compiled again after the warm-up epoch
    assert watched["end"] == watched["warm"]
    assert bare["end"] == bare["warm"]


@pytest.mark.timeout(240)
def test_torch_compile_fmri_and_all_three_no_graph_breaks_no_recompiles(tmp_path: Any) -> None:
    # SPEC §6 / issue #6: the fMRI density hook (and the three callbacks together) inside a compiled
    # model cause no graph break, no extra graph and no recompile after the warm-up epoch.
    bare = _compiled_run(tmp_path / "bare", [])
    fmri = NNfMRICallback(grid=(4,), check_every_n_steps=4, zeta_every_n_epochs=100, tractography=False, panels=False)
    alone = _compiled_run(tmp_path / "fmri", [fmri])
    # the densities still see every training forward of the compiled module, and match eager sums
    assert fmri.layers == ["net.0", "net.2", "net.4"]  # the user's names: no `_orig_mod.`
    assert fmri._train_batches == 24 and set(fmri.density) == set(fmri.layers)
    assert all(torch.isfinite(phi).all() for phi in fmri.density.values())
    whole = NNfMRICallback(grid=(4,), density_samples=None, zeta_every_n_epochs=100, tractography=False, panels=False)
    whole_run = _compiled_run(tmp_path / "whole", [whole])  # the hook reduces the whole batch itself
    assert whole._train_batches == 24 and set(whole.density) == set(whole.layers)
    three = _three(grid=(4,), check_every_n_steps=4)
    together = _compiled_run(tmp_path / "three", three)
    assert three[1].zeta_evaluations == 3 and three[2].consistency is not None
    for run in (alone, whole_run, together):
        assert run["end"]["graph_breaks"] == bare["end"]["graph_breaks"] == 0
        assert run["end"]["unique_graphs"] == bare["end"]["unique_graphs"] == 2
        assert run["end"]["frames"] == run["end"]["frames_ok"]
        assert run["end"] == run["warm"]


def test_fmri_hook_sums_match_eager_under_compile() -> None:
    # the compiled hook path (`unit_sums` traced by dynamo) gives the eager per-unit sums
    from nn_neuroimaging_lightning.functional.grid import unit_sums

    torch._dynamo.reset()
    x = torch.randn(6, 3, 5, 4)
    compiled = torch.compile(unit_sums, backend="eager", fullgraph=True)  # fullgraph: a break raises
    got = compiled(x)
    ref = torch.stack([x.abs().sum(0).reshape(-1), x.sum(0).reshape(-1), (x * x).sum(0).reshape(-1)])
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6)
