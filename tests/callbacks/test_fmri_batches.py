"""Batches and outputs as users have them (issue 13 items 1-2): the split rule, the value of a coalition
on per-token labels and model losses, and zeta failures that warn and skip a layer instead of ending the fit.

The three verbatim errors of issue 13 are reproduced on the tiny GPT-2 of the client zoo rewritten to
tuple batches ``(input_ids, labels)``: each now gives a warning naming the layer, the cause and the
argument that fixes it, the layer is skipped, the others go on and the fit completes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from nn_neuroimaging_lightning.batches import LABEL_KEYS, Batch, forward_module, output_tensor, split_batch
from nn_neuroimaging_lightning.callbacks import NNfMRICallback
from nn_neuroimaging_lightning.lesion import lesion_value_fn, per_sample_value

transformers = pytest.importorskip("transformers")

from nn_neuroimaging_lightning.demo.clients import GPT2Client, MarkovTokens  # noqa: E402


# ---------------------------------------------------------------------------------- the rule
def test_split_rule_mapping_tuple_tensor_and_override():
    ids, lab = torch.zeros(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long)
    b = split_batch({"input_ids": ids, "attention_mask": torch.ones(4, 3), "labels": lab})
    assert b.args == () and sorted(b.kwargs) == ["attention_mask", "input_ids"] and b.target is lab and b.size == 4
    assert b.label_key == "labels" and "labels" in b.with_target_in_kwargs().kwargs
    enc = split_batch(transformers.BatchEncoding({"input_ids": ids, "label": lab[:, 0]}))
    assert sorted(enc.kwargs) == ["input_ids"] and enc.target.shape == (4,)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    t = split_batch((x, y, "meta"))
    assert t.args[0] is x and t.target is y and t.kwargs == {}
    assert split_batch(x).target is None
    custom = split_batch({"a": x}, batch_split=lambda batch: ((), {"inp": batch["a"]}, y))
    assert custom.kwargs["inp"] is x and custom.target is y
    assert set(LABEL_KEYS) >= {"labels", "label", "targets"}
    with pytest.raises(TypeError, match="got str; pass `batch_split"):
        split_batch("text")
    with pytest.raises(TypeError, match="`batch_split` must return"):
        split_batch(x, batch_split=lambda batch: batch)


def test_take_repeat_and_shared_values():
    mask = torch.ones(1, 3)  # no batch axis of size 4: passed unchanged
    b = split_batch({"x": torch.arange(8.0).reshape(4, 2), "shared": mask, "labels": torch.arange(4)})
    p = b.take(2)
    assert p.size == 2 and p.kwargs["x"].shape == (2, 2) and p.kwargs["shared"] is not None and p.target.tolist() == [0, 1]
    r = p.repeat(3)
    assert r.kwargs["x"].shape == (6, 2) and r.target.tolist() == [0, 1, 0, 1, 0, 1] and r.kwargs["shared"].shape == (1, 3)


def test_forward_module_hf_idiom_and_own_forward():
    gpt = GPT2Client()
    assert forward_module(gpt) is gpt.model  # no forward of its own: self.model(**batch)
    lin = nn.Linear(2, 2)
    assert forward_module(lin) is lin

    class Two(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    with pytest.raises(ValueError, match="define `forward`"):
        forward_module(Two())


def test_output_tensor_prefers_logits():
    @dataclass
    class Out:
        loss: Optional[Tensor]
        hidden: Tensor
        logits: Tensor

    out = Out(torch.tensor(1.0), torch.zeros(2, 5), torch.ones(2, 3))
    assert output_tensor(out).shape == (2, 3)
    assert output_tensor({"loss": torch.tensor(1.0), "logits": torch.ones(2, 4)}).shape == (2, 4)


# ---------------------------------------------------------------------------------- values
def test_per_token_cross_entropy_against_a_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    labels = torch.randint(0, 7, (3, 5), generator=g)
    labels[0, 3:] = -100
    for shift in (False, True):
        got = per_sample_value(logits, labels, "cross_entropy", shift)
        for b in range(3):
            z, y = (logits[b, :-1], labels[b, 1:]) if shift else (logits[b], labels[b])
            keep = y != -100
            ref = -F.cross_entropy(z[keep].double(), y[keep])
            assert float(got[b]) == pytest.approx(float(ref), rel=1e-12)


def _tokens(n=8, seed=0):
    ds = MarkovTokens(n, seq_len=12, vocab=100, seed=seed)
    return ds.input_ids, ds.attention_mask, ds.labels


def test_gpt2_dict_probe_detects_the_causal_shift_and_matches_a_hand_computed_value():
    torch.manual_seed(0)
    module = GPT2Client(n_positions=12)
    ids, mask, labels = _tokens()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    game = lesion_value_fn(module, module.model.transformer.h[0], batch, grid=(2, 2))
    assert game.value_mode == "metric" and game.metric == "cross_entropy" and game.shift is True
    f_all = float(game(torch.ones(1, game.n_regions, dtype=torch.bool)))
    module.eval()  # the game's forwards run in eval mode (no dropout)
    with torch.no_grad():
        logits = module.model(input_ids=ids, attention_mask=mask).logits.double()
    per = []
    for b in range(ids.shape[0]):  # label t + 1 judged against the logits of token t (what GPT-2's loss does)
        z, y = logits[b, :-1], labels[b, 1:]
        keep = y != -100
        per.append(-F.cross_entropy(z[keep], y[keep]))
    assert f_all == pytest.approx(float(torch.stack(per).mean()), rel=1e-6)


class LossOnly(nn.Module):
    """Returns logits that fit no target and its own loss: the value falls back to minus that loss."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x, target=None):
        z = self.b(torch.relu(self.a(x)))  # (B, 3)
        loss = None if target is None else F.mse_loss(z.sum(1), target)
        return {"logits": z, "loss": loss}


def test_model_loss_is_the_fallback_when_no_per_sample_value_exists():
    torch.manual_seed(0)
    net = LossOnly()
    x, t = torch.randn(5, 4), torch.randn(5)
    game = lesion_value_fn(net, net.a, {"x": x, "target": t}, grid=(2,))
    assert game.value_mode == "loss" and game.rows_per_forward == 1  # the (5,) float target fits no (5, 3) MSE
    v = game(torch.tensor([[True, True], [False, False]]))
    with torch.no_grad():
        full = -F.mse_loss(net(x)["logits"].sum(1), t)
        none = -F.mse_loss(net.b(torch.zeros(5, 6)).sum(1), t)
    assert torch.allclose(v, torch.stack([full, none]).double(), rtol=1e-6)


def test_keyword_forward_and_user_value_fn_sees_the_batch():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)

        def forward(self, *, image, scale):
            return self.a(image) * scale

    torch.manual_seed(0)
    net = KW()
    x = torch.randn(4, 3)
    seen = []

    def value_fn(model, batch):
        seen.append(batch)
        return model(**batch.kwargs)[:, 0]

    game = lesion_value_fn(net, net.a, {"image": x, "scale": 2.0}, grid=(2,), value_fn=value_fn)
    v = game(torch.tensor([[True, True], [True, False]]))
    assert isinstance(seen[-1], Batch) and seen[-1].kwargs["image"].shape[0] == 4 * 2
    with torch.no_grad():
        assert float(v[0]) == pytest.approx(float((net.a(x) * 2.0)[:, 0].mean()), rel=1e-6)


# ---------------------------------------------------------------------------------- the verbatim errors of issue 13
class TupleGPT2(GPT2Client):
    """The tiny GPT-2 trained on tuple batches ``(input_ids, labels)``, as in the issue's reproduction."""

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        return self.model(input_ids=ids, labels=labels).loss

    def validation_step(self, batch, batch_idx):
        ids, labels = batch
        self.log("val_loss", self.model(input_ids=ids, labels=labels).loss)


def _fit_gpt2(tmp_path, **fmri_kwargs):
    pl.seed_everything(0, verbose=False)
    module = TupleGPT2(n_positions=12)
    ids, _, labels = _tokens(32)
    loader = DataLoader(TensorDataset(ids, labels), batch_size=8)
    fmri = NNfMRICallback(tractography=False, panels=False, **fmri_kwargs)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                         callbacks=[fmri], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, loader, loader)
    return trainer, fmri, [str(w.message) for w in caught if "NNfMRICallback" in str(w.message)]


BLOCK, WPE = "model.transformer.h.0", "model.transformer.wpe"


@pytest.mark.timeout(120)
def test_mse_on_per_token_labels_warns_skips_and_the_fit_completes(tmp_path):
    """``ValueError: targets of shape (128, 32) do not match the model output (128, 32, 100) for the MSE.``"""
    trainer, fmri, said = _fit_gpt2(tmp_path, layers=[BLOCK], metric="mse")
    assert trainer.state.finished and trainer.global_step == 2
    assert fmri.zeta == {}
    fail = [w for w in said if "skipped" in w]
    assert len(fail) == 1 and f"`{BLOCK}`" in fail[0] and "for the MSE" in fail[0] and "`value_fn" in fail[0]
    # the default value (`metric="auto"`) handles per-token labels: minus the token cross-entropy
    _, fixed, said = _fit_gpt2(tmp_path / "auto", layers=[BLOCK])
    assert BLOCK in fixed.zeta and torch.isfinite(fixed.zeta[BLOCK].ci_high).all() and not any("skipped" in w for w in said)


@pytest.mark.timeout(120)
def test_cross_entropy_on_per_token_labels_gives_maps_and_a_misfit_warns_and_skips(tmp_path):
    """``ValueError: `metric`='cross_entropy' needs integer class labels (B,) as targets, got dtype torch.int64 shape (64, 32).``"""
    _, fmri, said = _fit_gpt2(tmp_path, layers=[BLOCK], metric="cross_entropy")
    assert BLOCK in fmri.zeta and not any("skipped" in w for w in said)
    # labels that fit no logits (the last position's logits (B, V) against (B, T) labels) still only skip the layer
    trainer, bad, said = _fit_gpt2(tmp_path / "bad", layers=[BLOCK], metric="cross_entropy",
                                   output_selector=lambda out: out.logits[:, -1] if hasattr(out, "logits") else out)
    assert trainer.state.finished and bad.zeta == {}
    fail = [w for w in said if "skipped" in w]
    assert len(fail) == 1 and f"`{BLOCK}`" in fail[0] and "needs integer class labels" in fail[0] and "`metric`" in fail[0]


@pytest.mark.timeout(120)
def test_broadcast_output_layer_warns_with_its_name_and_the_others_go_on(tmp_path):
    """``ValueError: `target`'s output must carry the batch (64) on its first axis, got shape (1, 32, 64).``"""
    trainer, fmri, said = _fit_gpt2(tmp_path, layers=[WPE, BLOCK])
    assert trainer.state.finished
    assert sorted(fmri.zeta) == [BLOCK] and torch.isfinite(fmri.zeta[BLOCK].ci_low).all()
    fail = [w for w in said if "skipped" in w]
    assert len(fail) == 1 and f"`{WPE}`" in fail[0] and "first axis" in fail[0] and "`zeta_layers`" in fail[0]
    assert any(f"`{WPE}` has no zeta map" in w for w in said)
    with pytest.raises(ValueError, match="first axis"):
        _fit_gpt2(tmp_path / "strict", layers=[WPE, BLOCK], strict=True)


def test_tractography_pair_failure_warns_and_skips_the_pair():
    torch.manual_seed(0)
    fmri = NNfMRICallback(layers=["0", "1"], grid=(2,))

    class Boom(nn.Linear):
        def forward(self, x):
            return super().forward(x)

    net = nn.Sequential(nn.Linear(3, 4), Boom(4, 2))
    fmri._modules = {"0": net[0], "1": net[1]}
    fmri._taps = type("T", (), {"names": ["0", "1"]})()
    fmri._trace = lambda *a: (_ for _ in ()).throw(RuntimeError("no mapping"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracts = fmri.compute_tractography(net, torch.randn(5, 3))
    assert not tracts[("0", "1")].traced and "no mapping" in tracts[("0", "1")].reason
    assert any("`0` -> `1`" in str(w.message) and "`tractography=False`" in str(w.message) for w in caught)
