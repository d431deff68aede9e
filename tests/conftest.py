"""Shared fixtures: one local Ray per test session, tiny synthetic episodes, a scratch run directory."""

from __future__ import annotations

import os

import pytest

from tests.factories import make_episode

pytest_plugins = ["tests.servers"]

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """Start Ray once for the whole session (about 5 s on 2 cores); tests that need it take this fixture.

    The local S3 server starts first, so Ray's workers inherit its variables (AWS_ENDPOINT_URL, test keys) and any
    test may use ``s3://`` run directories with this Ray.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture
def episode_factory():
    return make_episode
