"""pytest-benchmark suite options: run with ``pytest benchmarks --benchmark-only``.

The default grid is a small subset (a few minutes); ``--full-grid`` runs the whole
grid of the benchmark report (5 shapes x 5 batches x 6 sparsities x 7 contenders).
Batch-1 points run twice, parametrised by ``cache``: ``hot`` (back-to-back calls, the
weights stay in cache) and ``cold`` (the caches evicted before every call by
:func:`sparsekit.bench.cold_setup_for`, as in the report); ids end in ``-hot``/``-cold``,
so ``-k cold`` selects the cold ones. The acceptance floors are checked apart:
``python benchmarks/floors.py``.
"""

from __future__ import annotations

import pytest
import torch

import sparsekit
from sparsekit import bench

DEFAULT_SHAPES = ((768, 768), (4096, 4096))
DEFAULT_BATCHES = (1, 128)
DEFAULT_SPARSITIES = (0.7, 0.9)


def pytest_addoption(parser):
    group = parser.getgroup("sparsekit benchmarks")
    group.addoption("--full-grid", action="store_true", default=False,
                    help="run the report's whole grid instead of the default subset")
    group.addoption("--simd", default=None, help="sparsekit SIMD level (default: the best available)")
    group.addoption("--sk-threads", type=int, default=None,
                    help="threads for sparsekit and torch (default: sparsekit.get_num_threads())")
    group.addoption("--cold-rounds", type=int, default=bench.COLD_ROUNDS,
                    help="timed calls of a cold benchmark, each after its own eviction "
                         f"(default {bench.COLD_ROUNDS})")


def cases(config) -> list:
    if config.getoption("--full-grid"):
        return bench.grid(bench.FULL_SHAPES, bench.FULL_BATCHES, bench.FULL_SPARSITIES)
    return bench.grid(DEFAULT_SHAPES, DEFAULT_BATCHES, DEFAULT_SPARSITIES)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cs = cases(metafunc.config)
        if "batch_independent" in metafunc.fixturenames:  # one point per (shape, sparsity)
            seen, uniq = set(), []
            for c in cs:
                if (c.shape, c.sparsity) not in seen:
                    seen.add((c.shape, c.sparsity))
                    uniq.append(bench.Case(c.shape, 1, c.sparsity))
            cs = uniq
        if "cache" in metafunc.fixturenames:  # batch 1 hot and cold, larger batches hot
            points = [(c, cache) for c in cs for cache in bench.CACHE_STATES if cache == "hot" or c.batch == 1]
            metafunc.parametrize(("case", "cache"), points, ids=[f"{c.id}-{cache}" for c, cache in points])
        else:
            metafunc.parametrize("case", cs, ids=[c.id for c in cs])


@pytest.fixture
def batch_independent():
    """Marks a test whose grid points ignore the batch size."""
    return True


@pytest.fixture(scope="session")
def sk_threads(pytestconfig) -> int:
    n = pytestconfig.getoption("--sk-threads") or sparsekit.get_num_threads()
    torch.set_num_threads(n)
    return n


@pytest.fixture(scope="session")
def cold_rounds(pytestconfig) -> int:
    return pytestconfig.getoption("--cold-rounds")


@pytest.fixture(scope="session", autouse=True)
def simd_level(pytestconfig):
    level = pytestconfig.getoption("--simd") or sparsekit.cpu_info()["simd"]
    with sparsekit.use_simd(level):
        yield level
