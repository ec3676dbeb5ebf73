"""Fixtures of the client tests: each client run is made once per session and read by several tests."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import pytest

from _client_runs import ClientRun, fit_client


@pytest.fixture(scope="session")
def client_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ClientRun]:
    """``client_run(name, repeat=0)``: the run of :data:`RUNS` ``name``, made once per session and ``repeat``."""
    cache: Dict[Tuple[str, int], ClientRun] = {}

    def get(name: str, repeat: int = 0) -> ClientRun:
        key = (name, repeat)
        if key not in cache:
            cache[key] = fit_client(name, str(tmp_path_factory.mktemp(f"{name}_{repeat}")))
        return cache[key]

    return get
