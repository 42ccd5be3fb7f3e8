"""Shared fixtures. The whole session uses a private cache, so tests never touch ~/.cache/hapo.

`tiny_model_dir` builds the built-in tiny model (the real default recipe) once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _hapo_env(tmp_path_factory):
    # HAPO_TEST_CACHE: reuse a built tiny model across local test sessions (CI uses a fresh one)
    cache = os.environ.get("HAPO_TEST_CACHE") or tmp_path_factory.mktemp("hapo_cache")
    os.environ["HAPO_CACHE"] = str(cache)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.pop("WANDB_API_KEY", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(_hapo_env) -> Path:
    from hapo_cli.data.tiny import ensure_tiny_model

    return ensure_tiny_model(progress=False)


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: int = 600, env: dict | None = None):
    """Run the real `hapo` CLI in a subprocess; returns CompletedProcess (text)."""
    full_env = dict(os.environ)
    for key, value in (env or {}).items():  # None unsets a variable
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.run([sys.executable, "-m", "hapo_cli.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture
def cli():
    return run_cli
