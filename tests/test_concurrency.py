"""Many Python threads on one matrix: identical results, GIL released, no growth."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import sparsekit
from sparsekit import SparseMatrix


def sparse_dense(rng, shape, density):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= density] = 0.0
    return w


@pytest.mark.parametrize("block", [(1, 1), (4, 1)])
def test_eight_threads_match_single_threaded_run(rng, block):
    m = SparseMatrix.from_dense(sparse_dense(rng, (257, 300), 0.1), block=block)
    bias = torch.from_numpy(rng.standard_normal(257).astype(np.float32))
    inputs = [torch.from_numpy(rng.standard_normal((b, 300)).astype(np.float32)) for b in (1, 3, 40)]
    expected = [sparsekit.linear(x, m, bias, activation="gelu", threads=1) for x in inputs]

    def worker(seed: int) -> int:
        mismatches = 0
        for i in range(400):
            k = (seed + i) % len(inputs)
            y = sparsekit.linear(inputs[k], m, bias, activation="gelu", threads=1 + (i % 2))
            mismatches += int(not torch.equal(y, expected[k]))
        return mismatches

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(worker, range(8)))
    assert results == [0] * 8  # 8 x 400 = 3200 calls, each bitwise equal


def test_kernel_releases_the_gil(rng):
    # While one thread runs a long kernel, another must keep executing Python code.
    m = SparseMatrix.from_dense(sparse_dense(rng, (2048, 2048), 0.5))
    x = torch.from_numpy(rng.standard_normal((256, 2048)).astype(np.float32))
    state = {"running": False, "ticks_during": 0}
    done = threading.Event()

    def heavy():
        state["running"] = True
        for _ in range(3):
            sparsekit.linear(x, m, threads=1)
        state["running"] = False
        done.set()

    t = threading.Thread(target=heavy)
    t.start()
    while not done.is_set():
        if state["running"]:
            state["ticks_during"] += 1
    t.join()
    # With the GIL held for the whole call this stays near the number of switch
    # intervals that fall between calls (a handful); released, it is in the thousands.
    assert state["ticks_during"] > 1000, state


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
def test_no_memory_growth_over_many_calls(rng):
    m = SparseMatrix.from_dense(sparse_dense(rng, (64, 64), 0.2))
    x1 = torch.from_numpy(rng.standard_normal((1, 64)).astype(np.float32))
    x8 = torch.from_numpy(rng.standard_normal((8, 64)).astype(np.float32))
    out = torch.empty(8, 64)
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    for _ in range(2000):  # warm up allocator pools and scratch buffers
        sparsekit.linear(x1, m)
        sparsekit.linear(x8, m, out=out, activation="relu")
    before = rss()
    for _ in range(50_000):
        sparsekit.linear(x1, m)
        sparsekit.linear(x8, m, out=out, activation="relu")
    grown = rss() - before
    assert grown < 4 * 2**20, f"resident memory grew by {grown} bytes over 100k calls"
