"""Structured configs map one-to-one to constructor arguments; bad keys and types are named."""

import dataclasses
import importlib.util
import inspect
import pathlib
from typing import Callable, Optional, Union

import pytest

from nn_neuroimaging_lightning import config as C
from nn_neuroimaging_lightning.callbacks import NNEEGCallback


def _yaml_params(cls):
    params = inspect.signature(cls.__init__).parameters
    return [n for n in params if n != "self" and n not in C.python_only(cls)]


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


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _reference_script():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_configuration_reference_is_generated_from_the_configs():
    """README's reference table is the output of the script (regenerate when a key changes)."""
    script = _reference_script()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert start in readme and end in readme, "README.md lacks the config-reference markers"
    embedded = readme.split(start, 1)[1].split(end, 1)[0]
    assert embedded == script.reference_markdown(), "README config reference is stale: python scripts/config_reference.py --write"


def test_reference_script_writes_the_readme_block(tmp_path, monkeypatch):
    script = _reference_script()
    fake = tmp_path / "README.md"
    fake.write_text("intro\n<!-- config-reference:start -->\nold table\n<!-- config-reference:end -->\noutro\n", encoding="utf-8")
    monkeypatch.setattr(script, "README", fake)
    assert script.main(["--write"]) == 0
    text = fake.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("<!-- config-reference:end -->\noutro\n") and "old table" not in text
    assert script.embedded(text) == script.reference_markdown()


def test_config_module_imports_no_callback():
    """Callbacks import config, never the reverse (issue 15): config.py imports nothing of the package."""
    import ast

    tree = ast.parse((ROOT / "nn_neuroimaging_lightning" / "config.py").read_text(encoding="utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported and not [m for m in imported if m.startswith("nn_neuroimaging_lightning")], imported


class _Custom(NNEEGCallback):
    def __init__(self, *, hook=None, name: str = "x", fn: Optional[Callable[[int], int]] = None,
                 either: Union[str, Callable[[int], int]] = "a", **kwargs):
        super().__init__(**kwargs)


def test_python_only_arguments_are_the_callables():
    from nn_neuroimaging_lightning.callbacks import CrossModalCallback, NNfMRICallback

    assert "output_selector" in C.python_only(NNEEGCallback)
    assert {"value_fn", "output_selector", "label_selector"} <= set(C.python_only(NNfMRICallback))
    assert C.python_only(CrossModalCallback) == ()
    for cls in (NNEEGCallback, NNfMRICallback, CrossModalCallback):  # a YAML key is never Python-only
        assert not set(C.python_only(cls)) & {f.name for f in dataclasses.fields(C.config_class(cls))}
    # Only arguments that can be nothing but a callable: an unannotated one, or one that may be a
    # string, needs a YAML key.
    assert C.python_only(_Custom) == ("fn",)


def test_unknown_config_class():
    with pytest.raises(TypeError, match="declares no structured config"):
        C.config_class(int)


def test_reference_describes_every_yaml_key():
    text = _reference_script().reference_markdown()
    for config_cls in (C.EEGConfig, C.FMRIConfig, C.CrossModalConfig):
        for f in dataclasses.fields(config_cls):
            row = next(line for line in text.splitlines() if line.startswith(f"| `{f.name}` |"))
            assert not row.endswith("|  |"), f"`{f.name}` has no description in its callback's docstring"
