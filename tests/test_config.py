"""Structured configs map one-to-one to constructor arguments; bad keys and types are named."""

import dataclasses
import inspect

import pytest

from nn_neuroimaging_lightning import config as C
from nn_neuroimaging_lightning.callbacks import NNEEGCallback


def _yaml_params(cls):
    params = inspect.signature(cls.__init__).parameters
    return [n for n in params if n != "self" and n not in C.PYTHON_ONLY[cls.__name__]]


def _callback_classes():
    from nn_neuroimaging_lightning import callbacks as CB

    return [getattr(CB, n) for n in ("NNEEGCallback", "NNfMRICallback", "CrossModalCallback") if hasattr(CB, n)]


@pytest.mark.parametrize("cls", _callback_classes(), ids=lambda c: c.__name__)
def test_config_fields_are_the_constructor_arguments_with_the_same_defaults(cls):
    cfg = C.config_class(cls)
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    assert list(fields) == _yaml_params(cls)
    params = inspect.signature(cls.__init__).parameters
    for name, f in fields.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        expected = params[name].default
        if isinstance(expected, tuple):
            expected = list(expected)
        assert default == expected, name


@pytest.mark.parametrize("cls", _callback_classes(), ids=lambda c: c.__name__)
def test_shipped_yaml_builds_the_callback(cls):
    name = {"NNEEGCallback": "eeg", "NNfMRICallback": "fmri", "CrossModalCallback": "cross_modal"}[cls.__name__]
    cb = cls.from_config(f"configs/{name}.yaml")
    assert isinstance(cb, cls)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"windw": 3}, r"unknown config key `windw` \(value 3\).*allowed keys: layers, window, fs"),
        ({"window": "long"}, r"config key `window` has value 'long' of the wrong type.*Allowed types: .*window: int"),
        ({"stop_on": "boom"}, r"config key `stop_on` has value 'boom'"),
        ({"window": 0}, r"`window` must be an int in \[2, inf\], got 0"),
        ({"nperseg": 16}, r"band `delta` .* no frequency bin at resolution 12.5 Hz"),
    ],
)
def test_bad_config_values_are_named(data, match):
    with pytest.raises(ValueError, match=match):
        NNEEGCallback.from_config(data)


def test_config_from_missing_file_and_overrides(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NNEEGCallback.from_config(tmp_path / "none.yaml")
    path = tmp_path / "eeg.yaml"
    path.write_text("window: 256\nstop_on: [explosion]\n")
    eeg = NNEEGCallback.from_config(path, output_selector=lambda o: o[0])
    assert eeg.window == 256 and eeg.stop_on == ("explosion",) and eeg.output_selector is not None


def test_shipped_demo_yaml_is_the_demo_default():
    assert C.load_demo("configs/demo.yaml") == C.load_demo(None)
    assert C.load_demo(None, {"trainer.max_epochs": 2})["trainer"]["max_epochs"] == 2


def test_readme_configuration_reference_is_generated_from_the_configs():
    """README's reference table is the output of `reference_markdown()` (regenerate when a key changes)."""
    import pathlib

    from nn_neuroimaging_lightning.config import reference_markdown

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert start in readme and end in readme, "README.md lacks the config-reference markers"
    embedded = readme.split(start, 1)[1].split(end, 1)[0]
    assert embedded == reference_markdown(), "README config reference is stale: python -m nn_neuroimaging_lightning.config"


def test_reference_describes_every_yaml_key():
    from nn_neuroimaging_lightning.config import reference_markdown

    text = reference_markdown()
    for config_cls in (C.EEGConfig, C.FMRIConfig, C.CrossModalConfig):
        for f in dataclasses.fields(config_cls):
            row = next(line for line in text.splitlines() if line.startswith(f"| `{f.name}` |"))
            assert not row.endswith("|  |"), f"`{f.name}` has no description in its callback's docstring"
