"""Shared test helpers: the `clipsteer` command as a subprocess, and one torch thread per test process."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

import pytest
import torch

import harness  # noqa: F401  (installs the torchvision guard before any test module imports open_clip)

CLI_TIMEOUT_S = 600

# In-process training in tests runs on one thread: with two pytest workers on two cores, more threads only contend.
torch.set_num_threads(1)


def run_clipsteer(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m harness ARGS` in a fresh interpreter (exit code, stdout, stderr), with extra environment `env`."""
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, env=None if env is None else {**os.environ, **env})


@pytest.fixture(scope="session")
def clipsteer() -> Callable[..., subprocess.CompletedProcess]:
    """The `clipsteer` command line as a function: clipsteer("run", grid, "--dry-run").returncode."""
    return run_clipsteer
