"""The default tap rule (``taps.default_layers``) on the zoo and on small models built to probe it.

No Trainer here: the selection is a function of the module tree. The rule (issue 13 item 4, SPEC §2
"Taps"): on a model built from a repeated block list, the block outputs plus stem and head; never
q/k/v projections or embedding tables; plain CNNs/MLPs keep the leaf rule; the user's own names,
with or without ``torch.compile``.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from torch import nn

from nn_neuroimaging_lightning.demo.clients import CLIENTS, HF_CLIENTS, make_client
from nn_neuroimaging_lightning.taps import default_layers, first_tensor, select_layers, user_modules

from test_clients_fit import EXPECTED_LAYERS


def _module(name: str, **kwargs):
    return make_client(name, steps_per_epoch=1, batch_size=2, **kwargs).module


@pytest.mark.parametrize("name", CLIENTS)
def test_zoo_default_taps_registration_order(name):
    assert list(select_layers(_module(name))) == EXPECTED_LAYERS[name]


def _compile_model_attribute(module):
    module.model = torch.compile(module.model, backend="eager")  # as users write it
    return module


def _compile_whole_module(module):
    return torch.compile(module, backend="eager")  # what Trainer.fit unwraps; Monitor sees the wrapper


@pytest.mark.parametrize("compiled", [_compile_model_attribute, _compile_whole_module])
def test_compiled_resnet_keeps_the_users_names(compiled):
    module = compiled(_module("resnet"))
    chosen = select_layers(module)
    assert list(chosen) == EXPECTED_LAYERS["resnet"]
    # the tapped objects are the modules inside the compiled graph, not the wrappers
    plain = dict(_module("resnet").named_modules())
    assert [type(m) for m in chosen.values()] == [type(plain[n]) for n in EXPECTED_LAYERS["resnet"]]
    # globs and regexes match the clean names too
    assert list(select_layers(module, "model.layer2.0.shortcut.*")) == ["model.layer2.0.shortcut.0", "model.layer2.0.shortcut.1"]
    assert not any("_orig_mod" in n for n, _ in user_modules(module))


def test_compiled_resnet_block_inside_its_stage():
    module = _module("resnet")
    module.model.layer2[0] = torch.compile(module.model.layer2[0], backend="eager")
    assert list(select_layers(module)) == EXPECTED_LAYERS["resnet"]


@pytest.mark.parametrize("name", HF_CLIENTS)
def test_hf_models_never_tap_projections_or_embedding_tables(name):
    module = _module(name)
    chosen = select_layers(module)
    for layer, m in chosen.items():
        assert not isinstance(m, nn.Embedding), layer
        assert not any(part in layer.split(".") for part in ("query", "key", "value", "c_attn", "wte", "wpe")), layer
    # `layers=` overrides everything: the projections and tables are one selection away
    assert list(select_layers(module, nn.Embedding))
    if name == "gpt2":
        assert list(select_layers(module, "*.c_attn")) == ["model.transformer.h.0.attn.c_attn", "model.transformer.h.1.attn.c_attn"]
    else:
        assert list(select_layers(module, "re:.*layer\\.0\\.attention\\.self\\.(query|key)")) == [
            "model.bert.encoder.layer.0.attention.self.query", "model.bert.encoder.layer.0.attention.self.key"]


# --------------------------------------------------------------------------- rule, on small models
class Block(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class Expert(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.up = nn.Linear(d, d)

    def forward(self, x):
        return self.up(x)


class MoEBlock(nn.Module):
    """A transformer-style block holding a block list of its own (experts): the block is the tap."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d, d)
        self.experts = nn.ModuleList([Expert(d), Expert(d)])

    def forward(self, x):
        x = x + self.q_proj(x)
        return x + sum(e(x) for e in self.experts)


def test_outermost_block_lists_win_over_lists_inside_blocks():
    net = nn.Module()
    net.stem = nn.Linear(3, 4)
    net.layers = nn.ModuleList([MoEBlock(), MoEBlock()])
    net.head = nn.Linear(4, 2)
    assert list(default_layers(net)) == ["stem", "layers.0", "layers.1", "head"]


def test_several_block_lists_and_what_lies_between_them():
    net = nn.Module()
    net.conv = nn.Conv2d(3, 4, 1)
    net.bn = nn.BatchNorm2d(4)
    net.stage1 = nn.Sequential(Block(), Block())
    net.down = nn.Linear(4, 4)  # a transition between the stages: outside every block, tapped
    net.stage2 = nn.Sequential(Block())  # a list of one block is still a block list
    net.norm = nn.LayerNorm(4)
    net.fc = nn.Linear(4, 2)
    assert list(default_layers(net)) == ["conv", "stage1.0", "stage1.1", "down", "stage2.0", "fc"]


def test_plain_models_keep_the_leaf_rule():
    # nn.Sequential of nn.Sequential is torch's container, not a block: leaf layers as before
    mlp = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 1))
    assert list(default_layers(mlp)) == ["0.0", "1.0", "2"]
    # a list of leaf layers (same type, but no submodules) is not a block list either
    stack = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
    assert list(default_layers(stack)) == ["0", "1"]
    # a recurrent layer is one leaf module whatever its depth; embedding tables are never default taps
    rnn = nn.Module()
    rnn.embed = nn.Embedding(10, 4)
    rnn.lstm = nn.LSTM(4, 8, num_layers=3)
    rnn.fc = nn.Linear(8, 2)
    assert list(default_layers(rnn)) == ["lstm", "fc"]


def test_the_root_itself_may_be_the_block_list():
    assert list(default_layers(nn.Sequential(Block(), Block()))) == ["0", "1"]


def test_torch_transformer_encoder_taps_its_layers():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True), num_layers=2)
    assert list(default_layers(enc)) == ["layers.0", "layers.1"]


class Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(10, 4)
        self.pos = nn.Embedding(6, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, ids):
        return self.norm(self.tok(ids) + self.pos(torch.arange(ids.shape[1])))


def test_stem_is_the_embedding_container_else_the_parameter_free_module_before_the_blocks():
    bert_like = nn.Module()
    bert_like.embeddings = Embeddings()
    bert_like.layer = nn.ModuleList([Block(), Block()])
    bert_like.classifier = nn.Linear(4, 2)
    assert list(default_layers(bert_like)) == ["embeddings", "layer.0", "layer.1", "classifier"]

    gpt_like = nn.Module()
    gpt_like.wte = nn.Embedding(10, 4)
    gpt_like.wpe = nn.Embedding(6, 4)
    gpt_like.drop = nn.Dropout(0.1)
    gpt_like.h = nn.ModuleList([Block(), Block()])
    gpt_like.ln_f = nn.LayerNorm(4)
    assert list(default_layers(gpt_like)) == ["drop", "h.0", "h.1"]
    # without the parameter-free module there is no stem to tap (the sum happens in `forward`)
    del gpt_like.drop
    assert list(default_layers(gpt_like)) == ["h.0", "h.1"]


def test_nothing_to_tap_is_an_error_listing_the_modules():
    with pytest.raises(ValueError, match=r"`layers`=None selects block outputs or leaf modules .* Available modules: 0 \(Embedding\)"):
        select_layers(nn.Sequential(nn.Embedding(4, 2)))


# ----------------------------------------------------------------------------- first_tensor
def test_model_output_gives_its_hidden_state_not_the_loss():
    transformers = pytest.importorskip("transformers")
    hidden = torch.ones(2, 3, 4)
    out = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=hidden)
    assert first_tensor(out) is hidden
    logits = torch.ones(2, 5)
    seq = transformers.modeling_outputs.SequenceClassifierOutput(loss=torch.tensor(0.3), logits=logits)
    assert first_tensor(seq) is logits  # `loss` comes first in the output, but is not an activation
    both = {"loss": torch.tensor(1.0), "logits": logits, "last_hidden_state": hidden}
    assert first_tensor(both) is hidden
    assert float(first_tensor({"loss": torch.tensor(2.0)})) == 2.0  # nothing else: the loss


def test_dataclass_output_is_read_field_by_field():
    @dataclasses.dataclass
    class Out:
        loss: object
        hidden: torch.Tensor

    h = torch.zeros(3)
    assert first_tensor(Out(loss=None, hidden=h)) is h
    assert first_tensor(Out(loss=torch.tensor(1.0), hidden=h)) is h


# ------------------------------------------------------------------------------ the zoo itself
@pytest.mark.parametrize("name", CLIENTS)
def test_same_seed_same_weights_and_batches_other_seed_differs(name):
    a, b, c = (make_client(name, seed=s, steps_per_epoch=2, batch_size=4) for s in (0, 0, 1))
    pa, pb, pc = (torch.cat([p.detach().flatten() for p in x.module.parameters()]) for x in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)

    def first(loader):
        batch = next(iter(loader))
        return [batch[k] for k in sorted(batch)] if hasattr(batch, "keys") else list(batch)

    assert all(torch.equal(x, y) for x, y in zip(first(a.train_loader), first(b.train_loader)))
    assert not all(torch.equal(x, y) for x, y in zip(first(a.train_loader), first(c.train_loader)))


def test_batches_are_what_the_users_have():
    transformers = pytest.importorskip("transformers")
    batch = next(iter(make_client("gpt2", steps_per_epoch=1, batch_size=4).train_loader))
    assert type(batch) is dict and sorted(batch) == ["attention_mask", "input_ids", "labels"]
    assert torch.equal(batch["labels"] == -100, batch["attention_mask"] == 0)
    batch = next(iter(make_client("bert", steps_per_epoch=1, batch_size=4).train_loader))
    assert isinstance(batch, transformers.BatchEncoding) and batch["labels"].shape == (4,)
    batch = next(iter(make_client("kwargs", steps_per_epoch=1, batch_size=4).train_loader))
    assert sorted(batch) == ["image", "label", "mask"]


def test_hf_clients_without_transformers_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"the `gpt2` client needs Hugging Face `transformers`.*pip install"):
        make_client("gpt2", steps_per_epoch=1)
    assert make_client("cnn", steps_per_epoch=1).module is not None  # the others do not need it


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "vit"}, ValueError, r"`name` must be one of \['cnn'"),
        ({"name": "cnn", "compile": "yes"}, ValueError, r"`compile` must be one of \[None, 'model'\], got 'yes'"),
        ({"name": "kwargs", "compile": "model"}, ValueError, "does not have"),
        ({"name": "cnn", "steps_per_epoch": 0}, ValueError, "steps_per_epoch"),
        ({"name": "cnn", "image_size": 8}, ValueError, "image_size"),
    ],
)
def test_bad_factory_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_client(**kwargs)
