"""Test set-up: ``tests/helpers`` importable as ``helpers``; one torch thread; property tests deterministic.

Every hypothesis test runs with ``derandomize=True`` (the "deterministic" profile, loaded for the
whole suite): the examples are a fixed function of the test, so ``make test`` gives the same
verdict on every run and every machine, and a failure reproduces. Set
``HYPOTHESIS_PROFILE=random`` to explore new examples locally.
"""

import os
import sys

# One intra-op thread per test process (also inherited by the processes tests spawn, e.g. DDP):
# on these 2-core machines torch's default of one thread per core oversubscribes the CPU as soon as
# anything else runs, and a 5 s fit took 50 s. No test measures speed.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("random", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


import logging  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402

_QUIETED = ("lightning", "lightning.pytorch", "lightning.fabric", "transformers")


@pytest.fixture(autouse=True)
def _restore_warnings_and_logger_levels():
    """Benchmarks run in-process by smoke tests silence warnings and Lightning's loggers for their own
    log (``benchmarks/_clientfit.quiet``); undo that after every test, so later tests still see the
    warnings and log records they check, whatever order the suite runs in."""
    levels = {n: logging.getLogger(n).level for n in _QUIETED}
    with warnings.catch_warnings():  # restores the filters on exit
        yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
