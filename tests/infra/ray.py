"""One local Ray per test session, bound to loopback, shut down at the end.

Tests that run chunks on Ray use the `ray_cluster` fixture (exposed by tests/conftest.py); the
services they build with `executor="ray"` join it (ray.is_initialized()) instead of starting one."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

RAY_CPUS = 2


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict]:
    """The session's local Ray (2 CPUs, 256 MiB object store, no dashboard); yields its resources."""
    ray = pytest.importorskip("ray")
    from userlens.jobs.executor import start_local_ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    started = not ray.is_initialized()
    if started:
        start_local_ray(RAY_CPUS)
    try:
        yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()
