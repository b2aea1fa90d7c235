"""Shared fixtures. Tests run against the *installed* sparsekit (see README)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import sparsekit


@pytest.fixture(autouse=True, scope="session")
def _cwd_outside_source_tree(tmp_path_factory):
    """Run every test from an empty directory.

    Subprocesses (`python -c`, `python -m sparsekit`) put their working directory first
    on sys.path; from the repository root that would import the source tree, which has
    no compiled module, instead of the installed package. Refer to repository files
    through paths relative to ``__file__``.
    """
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator: every test sees the same numbers on every run."""
    return np.random.default_rng(0)


@pytest.fixture
def torch_seed() -> int:
    """Seeds torch's global generator; returns the seed."""
    torch.manual_seed(0)
    return 0


SIMD_LEVELS = sparsekit.cpu_info()["simd_available"]


@pytest.fixture(params=SIMD_LEVELS)
def simd(request):
    """Runs the test once per SIMD level this CPU has (forced process-wide)."""
    with sparsekit.use_simd(request.param):
        yield request.param


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request) -> int:
    return request.param
