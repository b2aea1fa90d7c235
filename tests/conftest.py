"""Shared fixtures. Tests run against the *installed* sparsekit (see README)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

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


_GLOO_MAIN = textwrap.dedent('''
    import multiprocessing as mp, os, sys

    def worker(rank, world, port, out):
        import torch, torch.distributed as dist  # imported in the ranks only: the launcher stays light
        os.environ["MASTER_ADDR"] = "127.0.0.1"; os.environ["MASTER_PORT"] = str(port)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        train(rank, out)
        dist.barrier()
        dist.destroy_process_group()
        # The results are saved and the group is gone. Skip the interpreter's teardown:
        # gloo's threads aborted it once in about ten local runs of the suite ("terminate
        # called without an active exception", exit code -6), after the work was done.
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)

    if __name__ == "__main__":
        port, out = int(sys.argv[1]), sys.argv[2]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(r, 2, port, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(100)
        sys.exit(max(abs(p.exitcode if p.exitcode is not None else 99) for p in procs))
''')


@pytest.fixture
def run_gloo_script() -> Callable[[str, Path], subprocess.CompletedProcess]:
    """``run(train_source, out_dir)``: run ``train(rank, out_dir)`` on two gloo ranks on localhost.

    ``train_source`` defines ``train(rank, out)`` (imports inside it); each rank calls it
    with its own process group up, on one torch thread, and should save what the test
    checks under ``out``. The script and its launcher run in a fresh interpreter (spawned
    ranks, a free port); the finished process comes back for the test to check.
    """
    def run(train_source: str, out_dir: Path) -> subprocess.CompletedProcess:
        script = Path(out_dir) / "gloo_ranks.py"
        script.write_text(textwrap.dedent(train_source) + "\n" + _GLOO_MAIN)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return subprocess.run([sys.executable, str(script), str(port), str(out_dir)], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ))
    return run
