"""Structured configs (omegaconf dataclasses) mapping one-to-one to the callbacks' keyword arguments.

YAML is read only through omegaconf. Every key of a config is a constructor argument of the same
name; arguments that cannot be written in YAML (those annotated as callables, such as
``output_selector`` or ``value_fn``: :func:`python_only`) have no key and are passed in Python.
Each callback names its config in its ``config_class`` attribute; this module imports no callback
(callbacks import it). Checking is omegaconf's struct mode: an unknown key or a value of the wrong
type raises, and :func:`load` re-raises it as a ``ValueError`` that names the key, the value and
the allowed keys or types. The README's configuration reference is generated from these configs by
``scripts/config_reference.py``.

Example::

    >>> from nn_neuroimaging_lightning import NNEEGCallback
    >>> eeg = NNEEGCallback.from_config({"window": 256, "stop_on": ["non_finite"]})
    >>> eeg.window, eeg.stop_on
    (256, ('non_finite',))
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
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
    spectral_shift_threshold: float = 0.8
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
    grid: Optional[List[int]] = None  # null: (8, 8, 4) for the densities; zeta then uses zeta_grid's default
    lam: float = 0.1
    eps: float = 1e-6
    check_every_n_steps: Optional[int] = None
    density_samples: Optional[int] = 4
    min_history: int = 2
    zeta_every_n_epochs: int = 1
    zeta_layers: Any = None
    zeta_grid: Optional[List[int]] = None  # null: `grid` when given, else (2, 2, 2)
    zeta_fraction: float = 0.05
    zeta_budget: Optional[int] = None
    zeta_time_fraction: Optional[float] = None
    zeta_window: int = 8
    probe_size: int = 8
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
    strict: bool = False
    panels: bool = True
    max_events: int = 1000
    flag_history: int = 128
    seed: int = 0


@dataclass
class CrossModalConfig:
    """Keyword arguments of :class:`~nn_neuroimaging_lightning.CrossModalCallback`."""

    band: str = "gamma"
    history: int = 32
    joint_window: int = 50
    stop_on: List[str] = field(default_factory=list)
    panels: bool = True
    max_events: int = 1000


def config_class(callback_cls: type) -> Type[Any]:
    """The structured config of a callback class: its ``config_class`` attribute.

    Raises:
        TypeError: ``callback_cls`` declares no structured config.

    Example::

        >>> from nn_neuroimaging_lightning import NNEEGCallback
        >>> config_class(NNEEGCallback).__name__
        'EEGConfig'
    """
    cfg = getattr(callback_cls, "config_class", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise TypeError(f"{getattr(callback_cls, '__name__', callback_cls)!r} declares no structured config "
                        f"(a dataclass as its `config_class` attribute), got {cfg!r}.")
    return cfg


def _only_callables(hint: Any) -> bool:
    """Whether every non-None member of a type hint is a callable type (no YAML form)."""
    if typing.get_origin(hint) is Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return bool(members) and all(_only_callables(a) for a in members)
    return typing.get_origin(hint) is collections.abc.Callable or hint is collections.abc.Callable


def python_only(callback_cls: type) -> Tuple[str, ...]:
    """The constructor arguments that have no YAML key: those annotated as callables only.

    Derived from the constructor's signature (``Optional[Callable[...]]`` and the like), so a new
    callable argument needs no list kept by hand, and any other new argument needs a config key
    (``tests/test_config.py`` checks both).

    Example::

        >>> from nn_neuroimaging_lightning import NNfMRICallback
        >>> python_only(NNfMRICallback)
        ('value_fn', 'output_selector', 'label_selector', 'batch_split')
    """
    init = callback_cls.__init__  # type: ignore[misc]
    hints = typing.get_type_hints(init)
    params = inspect.signature(init).parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(n for n, p in params.items() if n != "self" and p.kind in named and _only_callables(hints.get(n)))


def _describe(config_cls: Type[Any]) -> str:
    return ", ".join(f"{f.name}: {getattr(f.type, '__name__', None) or str(f.type).replace('typing.', '')}" for f in dataclasses.fields(config_cls))


def _owner(schema: Type[Any], full_key: str) -> Tuple[Type[Any], str, str]:
    """The innermost dataclass along ``full_key`` (``"eeg.window"``), the section leading to it and the key in it."""
    parts = [p.split("[", 1)[0] for p in full_key.split(".")]
    owner, section = schema, []
    for part in parts[:-1]:
        hint = typing.get_type_hints(owner).get(part)
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return owner, ".".join(section), part
        owner = hint
        section.append(part)
    return owner, ".".join(section), parts[-1]


def _config_error(err: OmegaConfBaseException, schema: Type[Any], raw: Any, where: str) -> ValueError:
    """omegaconf's error as ours: the key, the value received and what is allowed."""
    full_key = str(getattr(err, "full_key", None) or getattr(err, "key", None) or "?")
    owner, section, key = _owner(schema, full_key)
    value = OmegaConf.select(raw, full_key, default="?") if isinstance(raw, DictConfig) else "?"
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    at = (f" in {where}" if where else "") + (f" section `{section}`" if section else "")
    allowed = [f.name for f in dataclasses.fields(owner)]
    if key not in allowed:
        return ValueError(f"unknown config key `{key}` (value {value!r}){at} for {owner.__name__}; "
                          f"allowed keys: {', '.join(allowed)}.")
    return ValueError(f"config key `{full_key}` has value {value!r} of the wrong type{at}: {str(err).splitlines()[0].rstrip('.')}. "
                      f"Allowed types: {_describe(owner)}.")


def _merge(schema: Type[Any], data: DictConfig, where: str) -> DictConfig:
    """``data`` over the defaults of ``schema`` in struct mode: omegaconf rejects unknown keys and wrong types."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), data)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _config_error(err, schema, data, where) from None


def _read(source: Union[str, os.PathLike, Mapping[str, Any], DictConfig], argument: str = "config") -> DictConfig:
    """A YAML path, a mapping or a DictConfig as a DictConfig (YAML only through omegaconf)."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"`{argument}` file {str(source)!r} does not exist.")
        data = OmegaConf.load(source)
    elif isinstance(source, (Mapping, DictConfig)):
        data = source if isinstance(source, DictConfig) else OmegaConf.create(dict(source))
    else:
        raise TypeError(f"`{argument}` must be a YAML path, a mapping or a DictConfig, got {type(source).__name__}.")
    if data is None:
        data = OmegaConf.create({})
    if not isinstance(data, DictConfig):
        raise ValueError(f"`{argument}` {str(source)!r} must be a mapping of keys to values, got {type(data).__name__}.")
    return data


def load(config_cls: Type[Any], source: Union[str, os.PathLike, Mapping[str, Any], DictConfig], where: str = "") -> Dict[str, Any]:
    """Validate ``source`` (a YAML path, a mapping or a DictConfig) against ``config_cls``.

    Returns:
        The keyword arguments, as plain Python containers, including defaults.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: an unknown key or a value of the wrong type, naming the key, the value and
            what is allowed.

    Example::

        >>> load(CrossModalConfig, {"history": 8})["history"]
        8
        >>> load(CrossModalConfig, {"histroy": 8})
        Traceback (most recent call last):
        ...
        ValueError: unknown config key `histroy` (value 8) for CrossModalConfig; allowed keys: band, history, joint_window, stop_on, panels, max_events.
    """
    where = where or (str(source) if isinstance(source, (str, os.PathLike)) else "")
    merged = _merge(config_cls, _read(source), where)
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
    eeg: EEGConfig = field(default_factory=EEGConfig)
    # The demo's fMRI defaults differ from the library's so that every layer of a short run gets a
    # zeta map: a coarser grid and a larger zeta time share (see configs/demo.yaml).
    fmri: FMRIConfig = field(default_factory=lambda: FMRIConfig(grid=[4, 4, 4], zeta_grid=[2, 2, 2]))
    cross_modal: CrossModalConfig = field(default_factory=CrossModalConfig)


def load_demo(source: Union[None, str, os.PathLike, Mapping[str, Any]] = None, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The demo config: defaults, then ``source`` (YAML path or mapping), then dotted ``overrides``.

    The callback sections are the callbacks' own structured configs, so a typo in ``eeg.windw``
    fails here, before training starts.

    Example::

        >>> cfg = load_demo(None, {"trainer.max_epochs": 2})
        >>> cfg["trainer"]["max_epochs"], cfg["fmri"]["grid"], cfg["eeg"]["window"]
        (2, [4, 4, 4], 128)
    """
    where = str(source) if isinstance(source, (str, os.PathLike)) else "demo config"
    merged = _merge(DemoConfig, _read(source if source is not None else {}, "--config"), where)
    for dotted, value in dict(overrides or {}).items():
        try:
            OmegaConf.update(merged, dotted, value, merge=True)
        except OmegaConfBaseException as err:
            raw = OmegaConf.create()
            OmegaConf.update(raw, dotted, value)
            raise _config_error(err, DemoConfig, raw, "the command-line overrides") from None
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]
