"""Argument checks shared by every constructor: errors name the argument, the value and what is allowed."""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
              optional: bool = False) -> int | None:
    """Return ``value`` if it is an int within ``[minimum, maximum]`` (or ``None`` with ``optional``), else raise naming ``name``."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {value!r} ({type(value).__name__}).")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be an int in {_range(minimum, maximum)}, got {value!r}.")
    return value


def check_index(name: str, value: Any, minimum: int, maximum: int | None = None, *, shown: Any = None,
                must: str | None = None) -> int:
    """Return ``operator.index(value)`` (ints, numpy ints) within ``[minimum, maximum]``, else ``ValueError``.

    For the functional core, where a wrong type and a wrong value are both a ``ValueError``. The
    message shows ``shown`` (e.g. the whole tuple an entry came from) instead of ``value``, and
    ``must`` (e.g. "contain positive ints") instead of "be an int >= minimum", when given.
    """
    import operator

    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    error = ValueError(f"`{name}` must {must or 'be an int ' + allowed}, got {value if shown is None else shown!r}.")
    if isinstance(value, bool):
        raise error
    try:
        v = operator.index(value)
    except TypeError:
        raise error from None
    if v < minimum or (maximum is not None and v > maximum):
        raise error
    return v


def check_float(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    strict_min: bool = False,
    optional: bool = False,
) -> float | None:
    """Return ``float(value)`` if it is a finite real within range (or ``None`` with ``optional``), else raise naming ``name``."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    too_low = minimum is not None and (value <= minimum if strict_min else value < minimum)
    if not math.isfinite(value) or too_low or (maximum is not None and value > maximum):
        lo = "(" if strict_min else "["
        raise ValueError(f"`{name}` must be a finite number in {_range(minimum, maximum, lo)}, got {value!r}.")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed!r}, got {value!r}.")
    return value


def check_choices(name: str, values: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    """Normalise a string or a sequence of strings to a tuple, each one of ``allowed``."""
    if isinstance(values, str):
        values = (values,)
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"`{name}` must be a string or a sequence of strings from {tuple(allowed)!r}, got {values!r}.")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"`{name}` got unknown value(s) {bad!r}; allowed: {tuple(allowed)!r}.")
    return tuple(values)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (``0``/``1``/strings are refused: they hide typos), else raise."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool (True or False), got {value!r} ({type(value).__name__}).")
    return value


def check_callable(name: str, value: Any, what: str = "callable") -> Any:
    """Return ``value`` if it is ``None`` or callable, else raise a TypeError saying ``what`` is expected."""
    if value is not None and not callable(value):
        raise TypeError(f"`{name}` must be {what} or None, got {value!r}.")
    return value


def check_layer_selector(name: str, value: Any) -> Any:
    """Check the *form* of a layer selection (the model is needed to check that it matches something).

    Allowed: ``None``, a name glob, a ``"re:"`` regex, a module type, or a non-empty list/tuple of these.
    """
    patterns = [value] if value is None or isinstance(value, (str, type)) else value
    if (not isinstance(patterns, (list, tuple)) or not patterns
            or not all(p is None and value is None or isinstance(p, (str, type)) for p in patterns)):
        raise TypeError(
            f"`{name}` must be None, a name glob, a 're:' regex, a module type or a non-empty list of these, got {value!r}."
        )
    for p in patterns:
        if isinstance(p, str) and p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as err:
                raise ValueError(f"`{name}` has an invalid regex {p!r}: {err}.") from None
    return value


def _range(minimum: Any, maximum: Any, lo: str = "[") -> str:
    left = "-inf" if minimum is None else repr(minimum)
    right = "inf" if maximum is None else repr(maximum)
    return f"{lo}{left}, {right}]"
