"""Shared fixtures: an offline, session-wide model cache and the `builtin:tiny` pipelines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def pytest_configure(config: pytest.Config) -> None:
    """Tests never reach the Hugging Face hub.

    A hook, not a fixture: huggingface_hub reads these variables once, at import, and test
    modules may import it (through diffusers) while they are collected, before any fixture runs.
    """
    os.environ.update(OFFLINE_ENV)


@pytest.fixture(scope="session", autouse=True)
def sdfleet_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point $SDFLEET_CACHE into this session's basetemp: builtin:tiny is built once per
    session and nothing is written under the user's home."""
    cache = tmp_path_factory.getbasetemp() / "sdfleet-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDFLEET_CACHE", str(cache))
        for name, value in OFFLINE_ENV.items():
            patch.setenv(name, value)
        yield cache


@pytest.fixture(scope="session")
def tiny_dir(sdfleet_cache: Path) -> Path:
    """The `builtin:tiny` diffusers folder, built on first use (~5 s)."""
    from sdfleet.batch.tiny import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_pipes(tiny_dir: Path):
    """`load_pipelines(ModelSpec())` (default device and dtype), shared by the session.

    Do not mutate it; `StableDiffusionPipeline.from_pipe(tiny_pipes.txt2img, ...)` varies a part.
    """
    from sdfleet.batch.models import ModelSpec, load_pipelines

    return load_pipelines(ModelSpec())


@pytest.fixture(autouse=True)
def no_ray_left_running():
    """A test that runs a job on the Ray executor in this process leaves Ray initialised (the
    runner reuses an initialised instance, as a library should); the next test that starts
    its own instance, or checks that a bad job never started one, needs it gone."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
