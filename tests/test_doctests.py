"""Every ``Example::`` in the package's docstrings runs and prints what it says (house style)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import nn_neuroimaging_lightning

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(nn_neuroimaging_lightning.__path__, prefix="nn_neuroimaging_lightning.")
    if not m.name.endswith("__main__")
)


def test_the_package_has_examples():
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name)))
    assert len(MODULES) > 20 and examples > 100


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
