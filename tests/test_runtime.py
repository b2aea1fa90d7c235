"""Build/runtime facts: SIMD selection, threads, one OpenMP runtime per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import sparsekit

LEVELS = sparsekit.cpu_info()["simd_available"]


def run_python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("SPARSEKIT_SIMD", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cpu_info_contract():
    info = sparsekit.cpu_info()
    assert info["simd"] in ("scalar", "avx2", "avx512", "neon")
    assert info["simd"] in info["simd_available"]
    assert info["simd_available"][0] == "scalar"
    assert isinstance(info["openmp"], bool)
    assert info["threads"] == sparsekit.get_num_threads() >= 1
    assert isinstance(sparsekit.__version__, str)


def test_default_level_is_the_best_available():
    proc = run_python("import sparsekit; print(sparsekit.cpu_info()['simd'])")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == LEVELS[-1]


@pytest.mark.parametrize("level", LEVELS)
def test_env_forces_a_level(level):
    proc = run_python(
        """
        import numpy as np, sparsekit
        m = sparsekit.SparseMatrix.from_dense(np.eye(3, dtype=np.float32))
        y = sparsekit.linear(np.ones((2, 3), np.float32), m)
        assert (y == 1).all()
        print(sparsekit.cpu_info()['simd'])
        """,
        {"SPARSEKIT_SIMD": level},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == level


def test_env_unknown_level_is_a_clear_error():
    proc = run_python("import sparsekit", {"SPARSEKIT_SIMD": "sse9"})
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "scalar, avx2, avx512, neon" in proc.stderr


@pytest.mark.skipif(len(LEVELS) == 4, reason="every level is available on this CPU")
def test_env_unavailable_level_is_a_clear_error():
    missing = next(lv for lv in ("scalar", "avx2", "avx512", "neon") if lv not in LEVELS)
    proc = run_python("import sparsekit", {"SPARSEKIT_SIMD": missing})
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "not available" in proc.stderr


def test_use_simd_restores_and_validates():
    before = sparsekit.cpu_info()["simd"]
    with sparsekit.use_simd("scalar"):
        assert sparsekit.cpu_info()["simd"] == "scalar"
    assert sparsekit.cpu_info()["simd"] == before
    with pytest.raises(ValueError, match="level must be one of"):
        with sparsekit.use_simd("mmx"):
            pass


def test_threads_follow_torch_until_set():
    assert sparsekit.get_num_threads() == torch.get_num_threads()
    try:
        sparsekit.set_num_threads(3)
        assert sparsekit.get_num_threads() == 3
        assert sparsekit.cpu_info()["threads"] == 3
    finally:
        sparsekit.set_num_threads(None)
    assert sparsekit.get_num_threads() == torch.get_num_threads()
    with pytest.raises(ValueError, match="at least 1"):
        sparsekit.set_num_threads(0)
    with pytest.raises(TypeError, match="int or None"):
        sparsekit.set_num_threads(2.5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("order", ["torch first", "sparsekit first"])
def test_one_openmp_runtime_in_either_import_order(order):
    first, second = ("torch", "sparsekit") if order == "torch first" else ("sparsekit", "torch")
    proc = run_python(
        f"""
        import json
        import {first}
        import {second}
        import numpy as np
        m = sparsekit.SparseMatrix.from_dense(np.eye(512, dtype=np.float32))
        sparsekit.linear(torch.randn(256, 512), m, threads=2)
        torch.mm(torch.randn(256, 256), torch.randn(256, 256))
        print(json.dumps(sparsekit.cpu_info()))
        """
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    if info["openmp"]:
        assert len(info["openmp_runtimes"]) == 1, info["openmp_runtimes"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_kernels_without_deadlock():
    # libgomp deadlocks a forked child that starts a parallel region after the parent
    # used one; sparsekit runs single-threaded in forked children instead.
    proc = run_python(
        """
        import os, numpy as np, torch, sparsekit
        m = sparsekit.SparseMatrix.from_dense(np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32))
        x = torch.randn(64, 512)
        y0 = sparsekit.linear(x, m, threads=2)
        pid = os.fork()
        if pid == 0:
            ok = torch.equal(sparsekit.linear(x, m, threads=2), y0) and sparsekit.get_num_threads() == 1
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


def test_dataloader_fork_workers_use_sparsekit():
    proc = run_python(
        """
        import numpy as np, torch, sparsekit
        m = sparsekit.SparseMatrix.from_dense(np.eye(256, dtype=np.float32))
        sparsekit.linear(torch.randn(64, 256), m, threads=2)

        class DS(torch.utils.data.Dataset):
            def __len__(self):
                return 8
            def __getitem__(self, i):
                x = torch.full((4, 256), float(i))
                return sparsekit.linear(x, m, threads=2).sum()

        loader = torch.utils.data.DataLoader(DS(), batch_size=2, num_workers=2,
                                             multiprocessing_context="fork")
        print(sum(float(b.sum()) for b in loader))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip()) == sum(4 * 256 * i for i in range(8))


def test_torch_and_sparsekit_thread_settings_together():
    # Both libraries drive the same libgomp: mixing their thread counts in one process,
    # in every combination, must neither deadlock nor change sparsekit's results.
    proc = run_python(
        """
        import numpy as np, torch, sparsekit
        rng = np.random.default_rng(0)
        w = rng.standard_normal((512, 512)).astype(np.float32)
        w[rng.random(w.shape) < 0.8] = 0
        m = sparsekit.SparseMatrix.from_dense(w)
        x = torch.from_numpy(rng.standard_normal((64, 512)).astype(np.float32))
        ref = sparsekit.linear(x, m, threads=1)
        a = torch.randn(256, 256)
        for tt in (1, 2):
            for st in (1, 2):
                torch.set_num_threads(tt)
                sparsekit.set_num_threads(st)
                for _ in range(20):
                    torch.mm(a, a)
                    assert torch.equal(sparsekit.linear(x, m), ref)
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
