"""Test set-up: ``tests/helpers`` importable as ``helpers``; property tests deterministic.

Every hypothesis test runs with ``derandomize=True`` (the "deterministic" profile, loaded for the
whole suite): the examples are a fixed function of the test, so ``make test`` gives the same
verdict on every run and every machine, and a failure reproduces. Set
``HYPOTHESIS_PROFILE=random`` to explore new examples locally.
"""

import os
import sys

from hypothesis import settings

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("random", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
