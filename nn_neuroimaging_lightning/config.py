"""Structured configs (omegaconf dataclasses) mapping one-to-one to the callbacks' keyword arguments.

YAML is read only through omegaconf. Every key of a config is a constructor argument of the same
name; arguments that cannot be written in YAML (callables such as ``output_selector`` or
``value_fn``) have no key and are passed in Python. An unknown key or a value of the wrong type
raises a ``ValueError`` that names the key, the value and the allowed keys or type.

Example::

    >>> from nn_neuroimaging_lightning import NNEEGCallback
    >>> eeg = NNEEGCallback.from_config({"window": 256, "stop_on": ["non_finite"]})
    >>> eeg.window, eeg.stop_on
    (256, ('non_finite',))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Type, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class EEGConfig:
    """Keyword arguments of :class:`~nn_neuroimaging_lightning.NNEEGCallback`."""

    layers: Any = None  # null, a glob / "re:" regex string, or a list of them
    window: int = 128
    fs: float = 200.0
    nperseg: int = 64
    noverlap: Optional[int] = None
    bands: Optional[Dict[str, List[float]]] = None
    state_window: int = 16
    stop_on: List[str] = field(default_factory=list)
    explosion_z: float = 8.0
    collapse_ratio: float = 1e-3
    spectral_shift_threshold: float = 0.7
    state_confidence: float = 0.95
    min_history: int = 16
    idle_threshold: float = 0.25
    idle_max_samples: int = 32
    analysis_every_n_steps: Optional[int] = None
    panels: bool = True
    max_events: int = 1000
    flag_history: int = 128
    log_anomaly_every_step: bool = False


@dataclass
class FMRIConfig:
    """Keyword arguments of :class:`~nn_neuroimaging_lightning.NNfMRICallback`."""

    layers: Any = None  # null, a glob / "re:" regex string, or a list of them
    grid: List[int] = field(default_factory=lambda: [8, 8, 4])
    lam: float = 0.1
    eps: float = 1e-6
    check_every_n_steps: Optional[int] = None
    density_samples: Optional[int] = 4
    min_history: int = 2
    zeta_every_n_epochs: int = 1
    zeta_layers: Any = None
    zeta_budget: int = 256
    zeta_time_fraction: Optional[float] = 0.05
    zeta_window: int = 8
    probe_size: int = 64
    baseline: str = "zero"
    metric: str = "auto"
    antithetic: bool = True
    truncation_tol: Optional[float] = None
    confidence: float = 0.95
    zeta_max_batch: int = 1024
    zeta_max_bytes: Optional[int] = 4 * 2**20
    tractography: bool = True
    top_k: int = 5
    dead_ratio: float = 0.05
    saturation_ratio: float = 20.0
    zeta_concentration: float = 0.9
    stop_on: List[str] = field(default_factory=list)
    panels: bool = True
    max_events: int = 1000
    flag_history: int = 128
    seed: int = 0


#: Constructor arguments that have no YAML form, per callback class name.
PYTHON_ONLY: Dict[str, tuple] = {
    "NNEEGCallback": ("output_selector",),
    "NNfMRICallback": ("value_fn", "output_selector", "label_selector"),
    "CrossModalCallback": (),
}

@dataclass
class CrossModalConfig:
    """Keyword arguments of :class:`~nn_neuroimaging_lightning.CrossModalCallback`."""

    band: str = "gamma"
    history: int = 32
    joint_window: int = 50
    stop_on: List[str] = field(default_factory=list)
    panels: bool = True
    max_events: int = 1000


_REGISTRY: Dict[str, Type[Any]] = {
    "NNEEGCallback": EEGConfig,
    "NNfMRICallback": FMRIConfig,
    "CrossModalCallback": CrossModalConfig,
}


def register(callback_name: str, config_cls: Type[Any]) -> None:
    """Associate a callback class name with its structured config."""
    _REGISTRY[callback_name] = config_cls


def config_class(callback_cls: type) -> Type[Any]:
    try:
        return _REGISTRY[callback_cls.__name__]
    except KeyError:
        raise TypeError(f"no structured config for {callback_cls.__name__}; known: {sorted(_REGISTRY)}.") from None


def _describe(config_cls: Type[Any]) -> str:
    return ", ".join(f"{f.name}: {getattr(f.type, '__name__', None) or str(f.type).replace('typing.', '')}" for f in dataclasses.fields(config_cls))


def load(config_cls: Type[Any], source: Union[str, os.PathLike, Mapping[str, Any], DictConfig], where: str = "") -> Dict[str, Any]:
    """Validate ``source`` (a YAML path, a mapping or a DictConfig) against ``config_cls``.

    Returns:
        The keyword arguments, as plain Python containers, including defaults.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: an unknown key or a value of the wrong type, naming the key, the value and
            what is allowed.
    """
    if isinstance(source, (str, os.PathLike)):
        where = where or str(source)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"config file {str(source)!r} does not exist.")
        data = OmegaConf.load(source)
    elif isinstance(source, (Mapping, DictConfig)):
        data = source if isinstance(source, DictConfig) else OmegaConf.create(dict(source))
    else:
        raise TypeError(f"`config` must be a YAML path, a mapping or a DictConfig, got {type(source).__name__}.")
    if data is None:
        data = OmegaConf.create({})
    if not isinstance(data, DictConfig):
        raise ValueError(f"config {where or ''} must be a mapping of keys to values, got {type(data).__name__}.")
    schema = OmegaConf.structured(config_cls)
    allowed = [f.name for f in dataclasses.fields(config_cls)]
    for key in data.keys():
        if key not in allowed:
            raise ValueError(
                f"unknown config key `{key}` (value {OmegaConf.to_container(data)[key]!r}){' in ' + where if where else ''} "
                f"for {config_cls.__name__}; allowed keys: {', '.join(allowed)}."
            )
    try:
        merged = OmegaConf.merge(schema, data)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
        raw = OmegaConf.to_container(data)
        value = raw.get(str(key).split(".")[0], "?") if isinstance(raw, dict) else "?"
        raise ValueError(
            f"config key `{key}` has value {value!r} of the wrong type{' in ' + where if where else ''}: "
            f"{str(err).splitlines()[0]}. Allowed types: {_describe(config_cls)}."
        ) from None
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def build(callback_cls: type, source: Union[str, os.PathLike, Mapping[str, Any], DictConfig], **overrides: Any) -> Any:
    """Construct ``callback_cls`` from a config; ``overrides`` (e.g. callables) win."""
    kwargs = load(config_class(callback_cls), source)
    kwargs.update(overrides)
    return callback_cls(**kwargs)


@dataclass
class DemoTrainerConfig:
    """The ``trainer`` section of the demo config (a subset of ``lightning.Trainer`` arguments)."""

    max_epochs: int = 8
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    accelerator: str = "cpu"
    devices: int = 1
    limit_train_batches: Optional[int] = None
    limit_val_batches: Optional[int] = None


@dataclass
class DemoDataConfig:
    """The ``data`` section: arguments of :class:`~nn_neuroimaging_lightning.demo.DemoDataModule`."""

    data_dir: Optional[str] = None
    batch_size: int = 64
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    num_workers: int = 0


@dataclass
class DemoModelConfig:
    """The ``model`` section: arguments of :class:`~nn_neuroimaging_lightning.demo.DemoClassifier`."""

    lr: float = 1e-3


@dataclass
class DemoConfig:
    """The whole demo job. ``eeg``, ``fmri`` and ``cross_modal`` hold the callbacks' own configs."""

    seed: int = 0
    log_dir: str = "runs"
    name: str = "demo"
    trainer: DemoTrainerConfig = field(default_factory=DemoTrainerConfig)
    data: DemoDataConfig = field(default_factory=DemoDataConfig)
    model: DemoModelConfig = field(default_factory=DemoModelConfig)
    eeg: Dict[str, Any] = field(default_factory=dict)
    # The demo's fMRI defaults differ from the library's so that every layer of a short run gets a
    # zeta map: a coarser grid and a larger zeta time share (see configs/demo.yaml).
    fmri: Dict[str, Any] = field(default_factory=lambda: {"grid": [4, 4, 4], "zeta_time_fraction": 0.25})
    cross_modal: Dict[str, Any] = field(default_factory=dict)


def load_demo(source: Union[None, str, os.PathLike, Mapping[str, Any]] = None, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The demo config: defaults, then ``source`` (YAML path or mapping), then dotted ``overrides``.

    Each callback section is validated against that callback's structured config here, so a
    typo in ``eeg.windw`` fails before training starts.
    """
    merged = OmegaConf.structured(DemoConfig)
    where = str(source) if isinstance(source, (str, os.PathLike)) else "demo config"
    if source is not None:
        if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
            raise FileNotFoundError(f"`--config` file {str(source)!r} does not exist.")
        data = OmegaConf.load(source) if isinstance(source, (str, os.PathLike)) else OmegaConf.create(dict(source))
        try:
            merged = OmegaConf.merge(merged, data)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
            allowed = ", ".join(f.name for f in dataclasses.fields(DemoConfig))
            raise ValueError(f"demo config key `{key}` in {where}: {str(err).splitlines()[0]}. Top-level keys: {allowed}.") from None
    for dotted, value in dict(overrides or {}).items():
        OmegaConf.update(merged, dotted, value, merge=True)
    cfg = OmegaConf.to_container(merged, resolve=True)
    for section, name in (("eeg", "NNEEGCallback"), ("fmri", "NNfMRICallback"), ("cross_modal", "CrossModalCallback")):
        if name in _REGISTRY:
            cfg[section] = load(_REGISTRY[name], cfg[section] or {}, where=f"{where} section `{section}`")
    return cfg


def _docstring_args(cls: type) -> Dict[str, str]:
    """``{argument: description}`` from the ``Args:`` section of a Google-style class docstring."""
    import inspect

    doc = inspect.getdoc(cls) or ""
    args: Dict[str, str] = {}
    inside, current, indent = False, None, None
    for line in doc.splitlines():
        stripped = line.strip()
        if not inside:
            inside = stripped == "Args:"
            continue
        if stripped and not line.startswith(" "):  # the next section (Raises:, Example::, ...)
            break
        if not stripped:
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        name, sep, text = stripped.partition(":")
        if width == indent and sep and name.replace("_", "").isalnum():
            current = name
            args[current] = text.strip()
        elif current is not None:
            args[current] += " " + stripped
    return args


def reference_markdown() -> str:
    """The configuration reference: one Markdown table per callback, generated from the configs.

    Keys, types and defaults come from the structured configs (the YAML schema); descriptions from
    the callbacks' docstrings. ``README.md`` embeds this text between ``<!-- config-reference -->``
    markers and ``tests/test_config.py`` checks that it is current (regenerate with
    ``python -m nn_neuroimaging_lightning.config``).

    Example::

        >>> print(reference_markdown().splitlines()[0])
        ### `NNEEGCallback` (`configs/eeg.yaml`)
    """
    from nn_neuroimaging_lightning.callbacks import CrossModalCallback, NNEEGCallback, NNfMRICallback

    files = {"NNEEGCallback": "eeg", "NNfMRICallback": "fmri", "CrossModalCallback": "cross_modal"}
    out: List[str] = []
    for cls in (NNEEGCallback, NNfMRICallback, CrossModalCallback):
        described = _docstring_args(cls)
        out += [f"### `{cls.__name__}` (`configs/{files[cls.__name__]}.yaml`)", "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(_REGISTRY[cls.__name__]):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
            kind = getattr(f.type, "__name__", None) or str(f.type)
            kind = str(kind).replace("typing.", "")
            text = described.get(f.name, "").replace("|", "\\|")
            out.append(f"| `{f.name}` | `{kind}` | `{default!r}` | {text} |")
        python_only = [name for name in described if name not in {f.name for f in dataclasses.fields(_REGISTRY[cls.__name__])}]
        if python_only:
            out += ["", "Python only (no YAML key): " + ", ".join(f"`{n}`" for n in python_only) + "."]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
