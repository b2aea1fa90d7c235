"""Benchmark report: sparsekit against torch dense, torch CSR and scipy CSR, side by side.

Run ``python -m sparsekit.bench --quick --out bench-out`` (or ``sparsekit bench``). It
writes, under ``--out``:

* ``report.md``: machine, the issue-4 targets with the measured figure beside each,
  a table of medians and speedups for every grid point, break-even sparsities,
  bandwidth at batch 1 against a streaming read of the same bytes, memory;
* ``results.json``: every measurement;
* ``bench_speedup.png``, ``bench_bandwidth.png``, ``bench_gflops.png``.

Timing: contenders of one grid point are timed in interleaved rounds (each round
calls every contender a few times), so a change in machine load hits all of them
alike and ratios stay meaningful; the table reports medians over all calls.

The pytest-benchmark suite in ``benchmarks/`` uses the same weights and contenders
(:func:`contenders`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import subprocess
import sys
import textwrap
import time
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
import torch

import sparsekit
from sparsekit._runtime import _core
from sparsekit.formats import SparseMatrix

FORMATS: Dict[str, Tuple[int, int]] = {"csr": (1, 1), "4x1": (4, 1), "1x4": (1, 4), "8x1": (8, 1)}
BASELINES = ("torch-dense", "torch-csr", "scipy-csr")

FULL_SHAPES = ((768, 768), (3072, 768), (768, 3072), (4096, 4096), (11008, 4096))
FULL_BATCHES = (1, 8, 32, 128, 512)
FULL_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)

QUICK_SHAPES = ((768, 768), (4096, 4096))
QUICK_BATCHES = (1, 128)
QUICK_SPARSITIES = (0.5, 0.7, 0.9, 0.95)

# Where the weights of a "cold" measurement rotate: well beyond the last-level cache.
COLD_BYTES = 96 << 20


@dataclasses.dataclass(frozen=True)
class Case:
    """One grid point: weight shape (out_features, in_features), batch, sparsity."""

    shape: Tuple[int, int]
    batch: int
    sparsity: float

    @property
    def id(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}-b{self.batch}-s{self.sparsity:g}"


def grid(shapes: Iterable[Tuple[int, int]], batches: Iterable[int],
         sparsities: Iterable[float]) -> List[Case]:
    """Every (shape, batch, sparsity) combination, in that nesting order."""
    return [Case(tuple(s), b, p) for s in shapes for b in batches for p in sparsities]


# ----------------------------------------------------------------------- weights
@functools.lru_cache(maxsize=6)
def dense_weight(shape: Tuple[int, int], sparsity: float, block: Tuple[int, int] = (1, 1),
                 seed: int = 0) -> np.ndarray:
    """A float32 weight whose zeros form whole ``block`` blocks, ``sparsity`` of them.

    Read-only; the same arguments give the same array.
    """
    rows, cols = shape
    r, c = block
    rng = np.random.default_rng(seed + 1000 * r + c)
    nbr, nbc = -(-rows // r), -(-cols // c)
    keep = rng.random((nbr, nbc)) >= sparsity
    mask = np.repeat(np.repeat(keep, r, axis=0), c, axis=1)[:rows, :cols]
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    w *= mask
    w.flags.writeable = False
    return w


@functools.lru_cache(maxsize=8)
def sparse_weight(shape: Tuple[int, int], sparsity: float, fmt: str = "csr") -> SparseMatrix:
    """The :func:`dense_weight` with ``FORMATS[fmt]`` blocks, compressed."""
    block = FORMATS[fmt]
    return SparseMatrix.from_dense(dense_weight(shape, sparsity, block), block=block)


def kernel_bytes(m: SparseMatrix, batch: int) -> int:
    """Bytes a product with ``m`` must move at least: the matrix, x once, y once."""
    rows, cols = m.shape
    return m.nbytes + 4 * batch * (rows + cols)


# -------------------------------------------------------------------- contenders
@dataclasses.dataclass
class Contender:
    name: str
    run: Callable[[], object]
    check: Callable[[], None]  # raises AssertionError when the result is wrong
    info: dict


def _assert_close(got, ref: np.ndarray, name: str) -> None:
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    scale = float(np.abs(ref).max()) or 1.0
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= 1e-4 * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


def contenders(case: Case, formats: Sequence[str] = tuple(FORMATS), baselines: Sequence[str] = BASELINES,
               threads: Optional[int] = None, seed: int = 0) -> Dict[str, Contender]:
    """Callables computing ``x @ w.T`` for this grid point, each with a correctness check.

    Names: ``sparsekit-<fmt>``, ``torch-dense`` (F.linear on the dense masked weight),
    ``torch-csr`` (torch.sparse.mm on ``weight.to_sparse_csr()``), ``scipy-csr``.
    The baselines use the unstructured weight; each sparsekit format uses its own
    weight of the same sparsity (a block that holds any nonzero is kept whole).
    """
    threads = threads or sparsekit.get_num_threads()
    rows, cols = case.shape
    rng = np.random.default_rng(seed + 7)
    x_np = rng.standard_normal((case.batch, cols), dtype=np.float32)
    x = torch.from_numpy(x_np)
    out: Dict[str, Contender] = {}

    def reference(w: np.ndarray) -> np.ndarray:
        return x_np.astype(np.float64) @ w.T.astype(np.float64)

    for fmt in formats:
        m = sparse_weight(case.shape, case.sparsity, fmt)
        w = dense_weight(case.shape, case.sparsity, FORMATS[fmt])
        y = torch.empty(case.batch, rows)
        name = f"sparsekit-{fmt}"

        def run(m=m, y=y):
            return sparsekit.linear(x, m, out=y, threads=threads)

        def check(run=run, w=w, name=name):
            _assert_close(run(), reference(w), name)

        out[name] = Contender(name, run, check, {
            "format": fmt, "block": list(FORMATS[fmt]), "nnz": m.nnz, "nbytes": m.nbytes,
            "bytes_moved": kernel_bytes(m, case.batch), "flops": 2 * m.nnz * case.batch,
            "index_dtype": m.index_dtype})

    w = dense_weight(case.shape, case.sparsity)
    nnz = int(np.count_nonzero(w))
    if "torch-dense" in baselines:
        wt = torch.from_numpy(w.copy())

        def run_dense():
            return torch.nn.functional.linear(x, wt)

        out["torch-dense"] = Contender("torch-dense", run_dense,
                                       lambda: _assert_close(run_dense(), reference(w), "torch-dense"),
                                       {"format": "dense", "nbytes": w.nbytes,
                                        "bytes_moved": w.nbytes + 4 * case.batch * (rows + cols),
                                        "flops": 2 * rows * cols * case.batch})
    if "torch-csr" in baselines:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            wc = torch.from_numpy(w.copy()).to_sparse_csr()
        xt = x.t()

        def run_tcsr():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return torch.sparse.mm(wc, xt)

        out["torch-csr"] = Contender("torch-csr", run_tcsr,
                                     lambda: _assert_close(run_tcsr().t(), reference(w), "torch-csr"),
                                     {"format": "torch-csr", "nnz": nnz,
                                      "nbytes": nnz * 12 + (rows + 1) * 8, "flops": 2 * nnz * case.batch})
    if "scipy-csr" in baselines:
        ws = sp.csr_array(w)
        xs = x_np[0] if case.batch == 1 else np.ascontiguousarray(x_np.T)

        def run_scipy():
            return ws @ xs

        def check_scipy():
            got = run_scipy()
            _assert_close(got if case.batch == 1 else got.T, reference(w)[0] if case.batch == 1 else reference(w),
                          "scipy-csr")

        out["scipy-csr"] = Contender("scipy-csr", run_scipy, check_scipy,
                                     {"format": "scipy-csr", "nnz": nnz,
                                      "nbytes": int(ws.data.nbytes + ws.indices.nbytes + ws.indptr.nbytes),
                                      "flops": 2 * nnz * case.batch})
    return out


# ------------------------------------------------------------------------ timing
def measure(fns: Dict[str, Callable[[], object]], budget: float = 0.3,
            min_calls: int = 5) -> Dict[str, dict]:
    """Times every callable in interleaved rounds; returns per name median/min/calls (seconds).

    Each round calls every contender ``k`` times (``k`` so that a round of it lasts
    about 5 ms), until ``budget`` seconds per contender are spent. When the median of
    some contender is over 1.5x its fastest call (other processes took the cores for
    part of the run) the measurement is repeated, at most ``_QUIET["retries"]`` times,
    and the attempt with the smallest such spread is kept.
    """
    best, best_spread = None, math.inf
    for _ in range(1 + _QUIET["retries"]):
        st = _measure_once(fns, budget, min_calls)
        spread = max(v["median"] / v["min"] for v in st.values())
        if spread < best_spread:
            best, best_spread = st, spread
        if spread <= 1.5:
            break
        _QUIET["retried"] += 1
    return best


def _measure_once(fns: Dict[str, Callable[[], object]], budget: float, min_calls: int) -> Dict[str, dict]:
    wait_quiet()
    per_call = {}
    for name, fn in fns.items():
        fn()  # warm up: first-touch pages, caches, thread pools
        t0 = time.perf_counter()
        fn()
        per_call[name] = max(time.perf_counter() - t0, 1e-7)
    reps = {name: max(1, int(0.005 / t)) for name, t in per_call.items()}
    times: Dict[str, List[float]] = {name: [] for name in fns}
    spent = {name: 0.0 for name in fns}
    while any(spent[n] < budget or len(times[n]) < min_calls for n in fns):
        for name, fn in fns.items():
            if spent[name] >= budget and len(times[name]) >= min_calls:
                continue
            for _ in range(reps[name]):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                times[name].append(dt)
                spent[name] += dt
    return {name: {"median": float(np.median(t)), "min": float(np.min(t)), "calls": len(t)}
            for name, t in times.items()}


def interleaved_times(fns: Dict[str, Callable[[], object]], rounds: int,
                      min_round_s: float = 0.0) -> Dict[str, dict]:
    """Per-call milliseconds of each callable, ``{"min_ms", "median_ms"}`` over ``rounds``.

    Every round calls each function in turn (fair under load from other processes),
    ``k`` times in a row where ``k`` makes one function's share of a round last about
    ``min_round_s`` (at least once). This is what the end-to-end examples report.

    Example:
        >>> from sparsekit.bench import interleaved_times
        >>> t = interleaved_times({"noop": lambda: None}, rounds=3)
        >>> sorted(t["noop"])
        ['median_ms', 'min_ms']
    """
    reps = {}
    for k, f in fns.items():
        for _ in range(3):
            f()
        t0 = time.perf_counter()
        f()
        reps[k] = max(1, int(min_round_s / max(time.perf_counter() - t0, 1e-7)))
    samples: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps[k]):
                f()
            samples[k].append((time.perf_counter() - t0) / reps[k])
    return {k: {"min_ms": min(v) * 1e3, "median_ms": float(np.median(v)) * 1e3} for k, v in samples.items()}


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct parameter and buffer: what a model keeps in memory for inference.

    Example:
        >>> import torch
        >>> from sparsekit.bench import resident_bytes
        >>> resident_bytes(torch.nn.Linear(4, 2))  # 8 weights + 2 biases, float32
        40
    """
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.numel() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@functools.lru_cache(maxsize=4)
def _stream_buffer(nbytes: int, copies: int = 1) -> Tuple[np.ndarray, ...]:
    n = max(1, nbytes // 4)
    return tuple(np.ones(n, dtype=np.float32) for _ in range(copies))


def stream_fn(nbytes: int, threads: int, copies: int = 1) -> Callable[[], float]:
    """A streaming read of ``nbytes`` (rotating over ``copies`` buffers) on ``threads`` threads."""
    bufs = _stream_buffer(nbytes, copies)
    state = [0]

    def run() -> float:
        i = state[0]
        state[0] = (i + 1) % copies
        return _core.stream_read(bufs[i], threads)

    return run


def _copies_of(m: SparseMatrix, copies: int) -> List[SparseMatrix]:
    return [SparseMatrix.from_arrays(m.shape, m.indptr.copy(), m.indices.copy(), m.values.copy(),
                                     block=m.block, index_dtype=m.index_dtype) for _ in range(copies)]


def _cpu_busy(window: float = 0.3) -> Optional[float]:
    """Share of all CPUs busy over ``window`` seconds while this process sleeps (Linux)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)  # total, idle + iowait
    try:
        t0, i0 = read()
        time.sleep(window)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


_QUIET = {"max_wait": 0.0, "waited": 0.0, "retries": 0, "retried": 0}


def wait_quiet(threshold: float = 0.15) -> None:
    """Waits (up to ``--wait-quiet`` seconds per call) until other processes leave the CPUs
    nearly idle, so that a measurement is not taken while they hold the cores."""
    deadline = time.time() + _QUIET["max_wait"]
    t0 = time.time()
    while time.time() < deadline:
        busy = _cpu_busy()
        if busy is None or busy < threshold:
            break
        time.sleep(1.0)
    _QUIET["waited"] += time.time() - t0


# --------------------------------------------------------------------- the report
def _machine() -> dict:
    info = sparsekit.cpu_info()
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cpu_count": os.cpu_count(), "simd_available": info["simd_available"],
            "simd_default": info["simd"], "threads": info["threads"], "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "sparsekit": sparsekit.__version__,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def run_grid(cases: Sequence[Case], formats: Sequence[str], threads: int, budget: float,
             simd: str, log: Callable[[str], None]) -> List[dict]:
    """Measures every contender at every grid point; returns one row per (case, contender)."""
    rows = []
    with sparsekit.use_simd(simd):
        for case in cases:
            cs = contenders(case, formats, threads=threads)
            for c in cs.values():
                c.check()
            stats = measure({n: c.run for n, c in cs.items()}, budget)
            for n, c in cs.items():
                rows.append({"shape": list(case.shape), "batch": case.batch, "sparsity": case.sparsity,
                             "contender": n, "simd": simd, "threads": threads, **stats[n], **c.info})
            dense = stats["torch-dense"]["median"]
            best = min((stats[n]["median"], n) for n in cs if n.startswith("sparsekit"))
            log(f"  {case.id:<24} dense {dense * 1e3:8.3f} ms  best {best[1]:<14} {best[0] * 1e3:8.3f} ms"
                f"  x{dense / best[0]:.2f}")
    return rows


def bandwidth(shapes: Sequence[Tuple[int, int]], sparsity: float, formats: Sequence[str], threads: int,
              simd: str, budget: float) -> List[dict]:
    """Batch-1 achieved bandwidth (bytes the kernel must read / time) against a streaming read
    of the same number of bytes, both with the weights hot in cache (repeated calls) and cold
    (rotating over copies that together exceed the last-level cache, like a model's layers)."""
    out = []
    with sparsekit.use_simd(simd):
        for shape in shapes:
            x = torch.randn(1, shape[1])
            for fmt in formats:
                m = sparse_weight(shape, sparsity, fmt)
                nbytes = kernel_bytes(m, 1)
                copies = min(256, max(2, math.ceil(COLD_BYTES / nbytes)))
                mats = _copies_of(m, copies)
                state = [0]

                def cold(mats=mats, state=state):
                    i = state[0]
                    state[0] = (i + 1) % len(mats)
                    return sparsekit.linear(x, mats[i], threads=threads)

                fns = {"kernel-hot": lambda m=m: sparsekit.linear(x, m, threads=threads),
                       "stream-hot": stream_fn(nbytes, threads),
                       "kernel-cold": cold, "stream-cold": stream_fn(nbytes, threads, copies)}
                st = measure(fns, budget)
                del mats
                row = {"shape": list(shape), "sparsity": sparsity, "format": fmt, "simd": simd,
                       "threads": threads, "bytes": nbytes}
                for k, v in st.items():
                    row[k + "_s"] = v["median"]
                    row[k + "_GBps"] = nbytes / v["median"] / 1e9
                row["fraction_hot"] = st["stream-hot"]["median"] / st["kernel-hot"]["median"]
                row["fraction_cold"] = st["stream-cold"]["median"] / st["kernel-cold"]["median"]
                out.append(row)
    return out


def memory_table(shapes: Sequence[Tuple[int, int]], sparsities: Sequence[float],
                 formats: Sequence[str]) -> List[dict]:
    """Bytes of each format against dense float32, per grid point (batch does not matter)."""
    out = []
    for shape in shapes:
        dense_bytes = 4 * shape[0] * shape[1]
        for s in sparsities:
            for fmt in formats:
                m = sparse_weight(shape, s, fmt)
                out.append({"shape": list(shape), "sparsity": s, "format": fmt, "index_dtype": m.index_dtype,
                            "nbytes": m.nbytes, "dense_bytes": dense_bytes, "ratio": m.nbytes / dense_bytes})
    return out


_RSS_SCRIPT = """
import json, sys
import numpy as np, torch, sparsekit

def status(key):  # bytes, from /proc/self/status (VmHWM: peak since exec or the last reset)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass

shape, sparsity, block = (4096, 4096), 0.9, tuple(json.loads(sys.argv[1]))
x = torch.randn(128, shape[1])
out = {"block": block, "after_imports": status("VmRSS")}
reset_peak()
rng = np.random.default_rng(0)
w = rng.standard_normal(shape, dtype=np.float32)
w *= np.repeat(np.repeat(rng.random((shape[0] // block[0], shape[1] // block[1])) >= sparsity,
                         block[0], 0), block[1], 1)
out["peak_dense"], out["rss_dense"] = status("VmHWM"), status("VmRSS")
reset_peak()
m = sparsekit.SparseMatrix.from_dense(w, block=block)
out["peak_convert"] = status("VmHWM")
del w
out["rss_sparse"] = status("VmRSS")
reset_peak()
for _ in range(3):
    y = sparsekit.linear(x, m)
    y1 = sparsekit.linear(x[:1], m)
out["peak_run"], out["rss_end"] = status("VmHWM"), status("VmRSS")
out["nbytes"] = m.nbytes
print(json.dumps(out))
"""


def peak_rss(blocks: Sequence[Tuple[int, int]] = ((1, 1), (4, 1))) -> List[dict]:
    """Resident memory (bytes) of building a 4096x4096 90%-sparse layer dense, converting it and
    running it at batch 1 and 128, each in a fresh interpreter (Linux: /proc/self/status)."""
    out = []
    for block in blocks:
        proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, json.dumps(list(block))],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"peak-RSS probe failed: {proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def targets(threads_list: Sequence[int], levels: Sequence[str], budget: float,
            log: Callable[[str], None]) -> List[dict]:
    """The issue-4 targets measured directly, each ratio from one interleaved run."""
    out: List[dict] = []
    shape = (4096, 4096)

    def ratio(st, a, b):
        """median ratio a/b, and in the detail the best-of (min) ratio, less hurt by load."""
        return st[a]["median"] / st[b]["median"], st[a]["min"] / st[b]["min"]

    def add(name, level, threads, value, floor, unit="x", higher=True, detail=""):
        ok = value >= floor if higher else value <= floor
        if hasattr(os, "getloadavg"):
            detail = f"{detail}; load {os.getloadavg()[0]:.1f}".lstrip("; ")
        out.append({"target": name, "simd": level, "threads": threads, "value": value, "floor": floor,
                    "unit": unit, "higher_is_better": higher, "met": bool(ok), "detail": detail})
        log(f"  [{'met ' if ok else 'MISS'}] {name:<46} {level:<6} t{threads}: {value:.3g}{unit}"
            f" ({'>=' if higher else '<='} {floor:g}{unit}) {detail}")

    for level in levels:
        with sparsekit.use_simd(level):
            for th in threads_list:
                torch.set_num_threads(th)
                # Batch 1.
                cs = contenders(Case(shape, 1, 0.9), ("csr",), threads=th)
                m = sparse_weight(shape, 0.9, "csr")
                fns = {n: c.run for n, c in cs.items()}
                fns["stream"] = stream_fn(kernel_bytes(m, 1), th)
                st = measure(fns, budget)
                t = st["sparsekit-csr"]["median"]
                r, rb = ratio(st, "torch-dense", "sparsekit-csr")
                add("4096x4096 90% b1: vs torch dense", level, th, r, 7,
                    detail=f"{t * 1e3:.3f} ms vs {st['torch-dense']['median'] * 1e3:.3f} ms; best-of {rb:.2f}x")
                r, rb = ratio(st, "torch-csr", "sparsekit-csr")
                add("4096x4096 90% b1: vs torch CSR", level, th, r, 3,
                    detail=f"torch CSR {st['torch-csr']['median'] * 1e3:.3f} ms; best-of {rb:.2f}x")
                r, rb = ratio(st, "stream", "sparsekit-csr")
                add("4096x4096 90% b1: share of streaming read (hot)", level, th, 100 * r, 80, unit="%",
                    detail=f"{kernel_bytes(m, 1) / t / 1e9:.1f} GB/s vs stream "
                           f"{kernel_bytes(m, 1) / st['stream']['median'] / 1e9:.1f} GB/s; best-of {100 * rb:.0f}%")
                # Batch 128.
                cs = contenders(Case(shape, 128, 0.9), ("csr", "4x1"), threads=th)
                st = measure({n: c.run for n, c in cs.items()}, budget)
                t = st["sparsekit-csr"]["median"]
                d = st["torch-dense"]["median"]
                r, rb = ratio(st, "torch-dense", "sparsekit-csr")
                add("4096x4096 90% b128: vs torch dense", level, th, r, 4,
                    detail=f"{t * 1e3:.2f} ms vs {d * 1e3:.2f} ms; best-of {rb:.2f}x")
                r, rb = ratio(st, "torch-csr", "sparsekit-csr")
                add("4096x4096 90% b128: vs torch CSR", level, th, r, 2,
                    detail=f"torch CSR {st['torch-csr']['median'] * 1e3:.2f} ms; best-of {rb:.2f}x")
                t4 = st["sparsekit-4x1"]["median"]
                r, rb = ratio(st, "torch-dense", "sparsekit-4x1")
                add("4096x4096 90% 4x1 blocks b128: vs torch dense", level, th, r, 8,
                    detail=f"{t4 * 1e3:.2f} ms; best-of {rb:.2f}x")
                # Small layer.
                cs = contenders(Case((768, 768), 1, 0.9), ("csr",), baselines=("torch-dense",), threads=th)
                tiny = SparseMatrix.from_dense(np.eye(8, dtype=np.float32))
                xt = torch.randn(1, 8)
                fns = {n: c.run for n, c in cs.items()}
                fns["overhead"] = lambda: sparsekit.linear(xt, tiny, threads=th)
                st = measure(fns, budget)
                t = st["sparsekit-csr"]["median"]
                r, rb = ratio(st, "torch-dense", "sparsekit-csr")
                add("768x768 90% b1: vs torch dense", level, th, r, 3,
                    detail=f"{t * 1e6:.1f} us vs {st['torch-dense']['median'] * 1e6:.1f} us; best-of {rb:.2f}x")
                add("per-call overhead (8x8 layer, b1)", level, th, st["overhead"]["median"] * 1e6, 5,
                    unit=" us", higher=False)
            torch.set_num_threads(max(threads_list))
            if len(threads_list) > 1 and 1 in threads_list:  # thread scaling
                th = max(threads_list)
                for fmt in ("csr", "4x1"):
                    m = sparse_weight(shape, 0.9, fmt)
                    x = torch.randn(128, shape[1])
                    y = torch.empty(128, shape[0])
                    st = measure({"t1": lambda: sparsekit.linear(x, m, out=y, threads=1),
                                  f"t{th}": lambda: sparsekit.linear(x, m, out=y, threads=th)}, budget * 2)
                    r, rb = ratio(st, "t1", f"t{th}")
                    add(f"4096x4096 90% {fmt} b128: {th} threads vs 1", level, th, r, 1.8,
                        detail=f"{st['t1']['median'] * 1e3:.2f} ms -> {st[f't{th}']['median'] * 1e3:.2f} ms; "
                               f"best-of {rb:.2f}x")
    for fmt, floor in (("csr", 0.16), ("4x1", 0.13)):
        m = sparse_weight(shape, 0.9, fmt)
        add(f"4096x4096 90% {fmt} bytes vs dense ({m.index_dtype})", "-", 0, m.nbytes / (4 * shape[0] * shape[1]),
            floor, unit="x", higher=False)
    return out


def break_even(rows: List[dict]) -> List[dict]:
    """Lowest sparsity at which each sparsekit format beats torch dense, per shape and batch
    (linear interpolation of log speedup between measured sparsities)."""
    out = []
    keys = sorted({(tuple(r["shape"]), r["batch"]) for r in rows})
    formats = sorted({r["format"] for r in rows if r["contender"].startswith("sparsekit")})
    for shape, batch in keys:
        sel = [r for r in rows if tuple(r["shape"]) == shape and r["batch"] == batch]
        dense = {r["sparsity"]: r["median"] for r in sel if r["contender"] == "torch-dense"}
        for fmt in formats:
            pts = sorted((r["sparsity"], dense[r["sparsity"]] / r["median"])
                         for r in sel if r["contender"] == f"sparsekit-{fmt}")
            if not pts:
                continue
            value: Optional[float]
            label: str
            if pts[0][1] >= 1:
                value, label = pts[0][0], f"<= {pts[0][0]:g}"
            elif all(s < 1 for _, s in pts):
                value, label = None, f"> {pts[-1][0]:g}"
            else:
                value = None
                for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
                    if v0 < 1 <= v1:
                        f = -math.log(v0) / (math.log(v1) - math.log(v0))
                        value = s0 + f * (s1 - s0)
                        break
                label = f"{value:.2f}" if value is not None else "n/a"
            out.append({"shape": list(shape), "batch": batch, "format": fmt, "break_even": value,
                        "label": label})
    return out


def _fmt_ms(t: float) -> str:
    return f"{t * 1e3:.3f}" if t < 0.1 else f"{t * 1e3:.1f}"


def markdown_table(rows: List[dict], formats: Sequence[str]) -> str:
    """Medians in ms; each sparsekit cell adds its speedup over torch dense and torch CSR."""
    head = ["shape", "batch", "sparsity", "torch dense", "torch CSR", "scipy CSR"] + \
           [f"sparsekit {f}" for f in formats]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = []
    for r in rows:
        k = (tuple(r["shape"]), r["batch"], r["sparsity"])
        if k not in keys:
            keys.append(k)
    for shape, batch, s in keys:
        sel = {r["contender"]: r for r in rows
               if (tuple(r["shape"]), r["batch"], r["sparsity"]) == (shape, batch, s)}
        d, c = sel["torch-dense"]["median"], sel["torch-csr"]["median"]
        cells = [f"{shape[0]}x{shape[1]}", str(batch), f"{s:g}", _fmt_ms(d), _fmt_ms(c),
                 _fmt_ms(sel["scipy-csr"]["median"])]
        for f in formats:
            t = sel[f"sparsekit-{f}"]["median"]
            cells.append(f"{_fmt_ms(t)} ({d / t:.1f}x / {c / t:.1f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(rows: List[dict], formats: Sequence[str], sparsity: float = 0.9) -> str:
    """A compact table (for the README): every shape and batch at one sparsity."""
    sel = [r for r in rows if abs(r["sparsity"] - sparsity) < 1e-9]
    if not sel:
        sparsity = max(r["sparsity"] for r in rows)
        sel = [r for r in rows if r["sparsity"] == sparsity]
    head = ["layer", "batch", "torch dense", "torch CSR"] + [f"sparsekit {f}" for f in formats]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = []
    for r in sel:
        k = (tuple(r["shape"]), r["batch"])
        if k not in keys:
            keys.append(k)
    for shape, batch in keys:
        by = {r["contender"]: r["median"] for r in sel if (tuple(r["shape"]), r["batch"]) == (shape, batch)}
        d = by["torch-dense"]
        cells = [f"{shape[0]}x{shape[1]}", str(batch), f"{_fmt_ms(d)} ms", f"{_fmt_ms(by['torch-csr'])} ms"]
        cells += [f"{_fmt_ms(by[f'sparsekit-{f}'])} ms (**{d / by[f'sparsekit-{f}']:.1f}x**)" for f in formats]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(rows: List[dict], bw: List[dict], out_dir: str, formats: Sequence[str]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    shapes = sorted({tuple(r["shape"]) for r in rows}, key=lambda s: s[0] * s[1])
    batches = sorted({r["batch"] for r in rows})
    styles = ["-", "--", ":", "-."]

    def series(shape, batch, name, key=lambda r, d: d / r["median"]):
        sel = [r for r in rows if tuple(r["shape"]) == shape and r["batch"] == batch]
        dense = {r["sparsity"]: r["median"] for r in sel if r["contender"] == "torch-dense"}
        pts = sorted((r["sparsity"], key(r, dense[r["sparsity"]])) for r in sel if r["contender"] == name)
        return [p[0] for p in pts], [p[1] for p in pts]

    # Speedup over torch dense versus sparsity, one panel per batch size.
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for i, shape in enumerate(shapes):
            for j, fmt in enumerate(formats):
                xs, ys = series(shape, batch, f"sparsekit-{fmt}")
                ax.plot(xs, ys, styles[j % 4], marker="o", ms=3, color=f"C{i}",
                        label=f"{shape[0]}x{shape[1]} {fmt}")
            xs, ys = series(shape, batch, "torch-csr")
            ax.plot(xs, ys, ":", marker="x", ms=3, color=f"C{i}", alpha=0.5, label=f"{shape[0]}x{shape[1]} torch CSR")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speedup over torch dense")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    path = os.path.join(out_dir, "bench_speedup.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # Batch-1 bandwidth against a streaming read of the same bytes.
    if bw:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(bw)), 4))
        labels = [f"{r['shape'][0]}x{r['shape'][1]}\n{r['format']} s{r['sparsity']:g}" for r in bw]
        xs = np.arange(len(bw))
        width = 0.2
        for k, (key, name) in enumerate((("stream-hot", "stream read, hot"), ("kernel-hot", "sparsekit, hot"),
                                         ("stream-cold", "stream read, cold"), ("kernel-cold", "sparsekit, cold"))):
            ax.bar(xs + (k - 1.5) * width, [r[key + "_GBps"] for r in bw], width, label=name,
                   color=f"C{k // 2}", alpha=1.0 if k % 2 else 0.5)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("GB/s (bytes the kernel must read / time)")
        ax.set_title(f"batch 1: achieved bandwidth vs streaming read ({bw[0]['simd']}, {bw[0]['threads']} threads)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "bench_bandwidth.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # GFLOP/s at the largest batch: sparsekit (useful work = stored values) vs torch dense.
    big = max(batches)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, shape in enumerate(shapes):
        xs, ys = series(shape, big, "torch-dense", key=lambda r, d: r["flops"] / r["median"] / 1e9)
        ax.plot(xs, ys, "-", color=f"C{i}", lw=2, alpha=0.5, label=f"{shape[0]}x{shape[1]} torch dense")
        for j, fmt in enumerate(formats):
            xs, ys = series(shape, big, f"sparsekit-{fmt}", key=lambda r, d: r["flops"] / r["median"] / 1e9)
            ax.plot(xs, ys, styles[j % 4], marker="o", ms=3, color=f"C{i}", label=f"{shape[0]}x{shape[1]} {fmt}")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("GFLOP/s (2 x stored values x batch / time)")
    ax.set_title(f"batch {big}: achieved GFLOP/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = os.path.join(out_dir, "bench_gflops.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def _parse_shapes(s: str) -> List[Tuple[int, int]]:
    out = []
    for part in s.split(","):
        a, b = part.lower().split("x")
        out.append((int(a), int(b)))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsekit bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small grid (default): 768x768 and 4096x4096, "
                      "batch 1 and 128, four sparsities; a few minutes")
    mode.add_argument("--full", action="store_true", help="the whole grid of issue 4 (tens of minutes)")
    p.add_argument("--out", default="bench-out", help="output directory (created)")
    p.add_argument("--report-name", default="report.md",
                   help="file name of the Markdown report under --out (results go to <stem>.json)")
    p.add_argument("--img-dir", default="", help="subdirectory of --out for the PNG plots (default: --out)")
    p.add_argument("--shapes", help="override: comma-separated RxC weight shapes")
    p.add_argument("--batches", help="override: comma-separated batch sizes")
    p.add_argument("--sparsities", help="override: comma-separated sparsities")
    p.add_argument("--formats", default=",".join(FORMATS), help="sparsekit formats (csr,4x1,1x4,8x1)")
    p.add_argument("--simd", help="SIMD level for the grid (default: the best available)")
    p.add_argument("--threads", type=int, help="threads for sparsekit and torch (default: torch's)")
    p.add_argument("--budget", type=float, help="seconds of timed calls per contender and grid point")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement, wait up to SECONDS for other processes to leave "
                        "the CPUs idle (for shared machines; default 0: do not wait)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="repeat a grid point's measurement up to N times when its medians are "
                        "over 1.5x its fastest calls (load from other processes); default 2")
    p.add_argument("--no-targets", action="store_true", help="skip the issue-4 target measurements")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocess probes")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the batch-1 bandwidth comparison")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark grid and write the report; returns the exit status.

    Example:
        >>> from sparsekit import bench
        >>> bench.main(["--shapes", "64x64", "--batches", "1", "--sparsities", "0.9",
        ...             "--no-targets", "--no-rss", "--budget", "0.01", "--out", "/tmp/skb"])  # doctest: +SKIP
        0
    """
    args = _parser().parse_args(argv)
    full = args.full
    shapes = _parse_shapes(args.shapes) if args.shapes else list(FULL_SHAPES if full else QUICK_SHAPES)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(FULL_BATCHES if full else QUICK_BATCHES)
    sparsities = [float(s) for s in args.sparsities.split(",")] if args.sparsities else \
        list(FULL_SPARSITIES if full else QUICK_SPARSITIES)
    formats = [f for f in args.formats.split(",") if f]
    for f in formats:
        if f not in FORMATS:
            raise SystemExit(f"unknown format {f!r}; choose from {', '.join(FORMATS)}")
    available = sparsekit.cpu_info()["simd_available"]
    simd = args.simd or sparsekit.cpu_info()["simd"]
    if simd not in available:
        raise SystemExit(f"SIMD level {simd!r} is not available here ({', '.join(available)})")
    threads = args.threads or sparsekit.get_num_threads()
    budget = args.budget if args.budget is not None else (0.5 if full else 0.25)
    os.makedirs(args.out, exist_ok=True)
    _QUIET.update(max_wait=max(0.0, args.wait_quiet), waited=0.0, retries=max(0, args.retries), retried=0)
    log = functools.partial(print, flush=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t_start = time.time()
    try:
        machine = _machine()
        log(f"sparsekit bench: {machine['cpu']}, simd {simd} (available {', '.join(available)}), "
            f"{threads} threads, torch {machine['torch']}")
        tg: List[dict] = []
        if not args.no_targets:
            levels = [lv for lv in ("avx2", "avx512", "neon") if lv in available] or [available[-1]]
            log("targets (issue 4):")
            tg = targets(sorted({threads, 1}, reverse=True), levels, budget, log)
        cases = grid(shapes, batches, sparsities)
        log(f"grid: {len(cases)} points x {len(formats) + len(BASELINES)} contenders")
        rows = run_grid(cases, formats, threads, budget, simd, log)
        be = break_even(rows)
        bw = [] if args.no_bandwidth else bandwidth(shapes, 0.9, [f for f in ("csr", "4x1") if f in formats],
                                                    threads, simd, budget)
        mem = memory_table(shapes, sparsities, formats)
        rss = [] if args.no_rss else peak_rss()
    finally:
        torch.set_num_threads(prev_threads)
    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["waited_for_quiet_s"] = _QUIET["waited"]
    machine["noisy_measurements_repeated"] = _QUIET["retried"]
    result = {"machine": machine, "simd": simd, "threads": threads, "budget_s": budget, "rows": rows,
              "break_even": be, "bandwidth": bw, "memory": mem, "peak_rss": rss, "targets": tg,
              "seconds": time.time() - t_start}
    stem = os.path.splitext(args.report_name)[0]
    json_name = "results.json" if args.report_name == "report.md" else f"{stem}.json"
    with open(os.path.join(args.out, json_name), "w") as f:
        json.dump(result, f, indent=1)
    img_dir = os.path.join(args.out, args.img_dir) if args.img_dir else args.out
    os.makedirs(img_dir, exist_ok=True)
    pngs = plots(rows, bw, img_dir, formats)
    with open(os.path.join(args.out, args.report_name), "w") as f:
        f.write(render(result, formats, [os.path.relpath(p, args.out) for p in pngs]))
    log(f"wrote {os.path.join(args.out, args.report_name)}, {json_name} and {len(pngs)} plots "
        f"in {time.time() - t_start:.0f} s")
    return 0


NOTES = """## Reading these numbers

* **Load.** The build machine is shared: when other processes hold the cores, a
  two-thread call waits for its second thread to be scheduled (milliseconds), for
  torch and sparsekit alike. The targets table therefore gives the median ratio and,
  in its last column, the best-of ratio (fastest call of each contender). Compare
  runs only at a similar load average (printed above).
* **Batch 1, unstructured (CSR).** Each stored value needs one load of a random
  element of x, so the kernel is bound by load-port throughput (about 4 stored values
  per ns per core on Zen 4, with scalar-load gathers, which beat `vgatherdps` there),
  not by bandwidth, while the weights fit in the last-level cache ("hot"). A
  streaming read of the same bytes moves 64 bytes per load, hence the gap. With the
  weights in DRAM ("cold", the case of a model larger than the cache) the kernel gets
  much closer to the streaming read. Block formats (r x 1, 1 x c) need one x load per
  block and run 2-3x faster at the same sparsity.
* **Batch > 1.** x is packed into panels (a register transpose) and every stored value
  becomes a broadcast and 2-4 fused multiply-adds on panel rows; for CSR the panel row
  (128 bytes per stored value) comes from L2, which bounds it at about half the FMA
  peak; r x 1 blocks reuse one panel row for r rows and get close to the peak.
* **Small layers.** A product gets a second thread from 32k multiply-adds (16k per
  thread); below that a fork/join costs more than it saves.

"""


def render(result: dict, formats: Sequence[str], pngs: Sequence[str]) -> str:
    """The Markdown report for a :func:`main` result."""
    m = result["machine"]
    out = [f"# sparsekit benchmark report\n",
           f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, SIMD available {', '.join(m['simd_available'])}; "
           f"grid run at **{result['simd']}** with **{result['threads']} threads** (sparsekit and torch); "
           f"torch {m['torch']}, numpy {m['numpy']}, Python {m['python']}. Load average at start: "
           f"{', '.join(f'{v:.1f}' for v in m['load_average']) if m['load_average'] else 'n/a'}; at the end: "
           f"{', '.join(f'{v:.1f}' for v in m.get('load_average_end') or []) or 'n/a'} (1, 5, 15 min)"
           f"{'; waited %.0f s in all for other processes to leave the CPUs idle' % m['waited_for_quiet_s'] if m.get('waited_for_quiet_s') else ''}"
           f"{'; %d noisy measurements repeated' % m['noisy_measurements_repeated'] if m.get('noisy_measurements_repeated') else ''}.\n",
           "Times are medians of interleaved calls (contenders of a grid point alternate, so load "
           "changes hit all alike). `sparsekit <fmt>` cells: ms (speedup over torch dense / over torch "
           "CSR). Baselines use the unstructured weight; each block format uses a weight of the same "
           "block sparsity.\n"]
    if result["targets"]:
        out.append("## Issue-4 targets\n")
        out.append("| target | SIMD | threads | measured | floor | met | detail |\n|---|---|---|---|---|---|---|")
        for t in result["targets"]:
            op = ">=" if t["higher_is_better"] else "<="
            out.append(f"| {t['target']} | {t['simd']} | {t['threads'] or '-'} | {t['value']:.3g}{t['unit']} | "
                       f"{op} {t['floor']:g}{t['unit']} | {'yes' if t['met'] else '**no**'} | {t['detail']} |")
        out.append("")
    out.append(NOTES)
    out.append("## Summary at 90% sparsity\n")
    out.append(summary_table(result["rows"], formats))
    out.append("")
    out.append("## Medians (ms) and speedups\n")
    out.append(markdown_table(result["rows"], formats))
    out.append("")
    out.append("## Break-even sparsity against torch dense\n")
    out.append("Lowest sparsity at which sparsekit is faster than torch's dense linear "
               "(interpolated between measured sparsities; `<= s`: already faster at the lowest measured).\n")
    be = result["break_even"]
    fmts = sorted({b["format"] for b in be}, key=list(FORMATS).index)
    out.append("| shape | batch | " + " | ".join(fmts) + " |\n|---|---|" + "---|" * len(fmts))
    for key in sorted({(tuple(b["shape"]), b["batch"]) for b in be}):
        cells = {b["format"]: b["label"] for b in be if (tuple(b["shape"]), b["batch"]) == key}
        out.append(f"| {key[0][0]}x{key[0][1]} | {key[1]} | " + " | ".join(cells.get(f, "") for f in fmts) + " |")
    out.append("")
    if result["bandwidth"]:
        out.append("## Batch 1: achieved bandwidth against a streaming read of the same bytes\n")
        out.append("Bytes = values + indices + row pointers + x + y. *Hot*: the same layer called "
                   "repeatedly (it stays in the last-level cache). *Cold*: rotating over copies that "
                   f"together exceed {COLD_BYTES >> 20} MiB, like the layers of a model; the streaming "
                   "read rotates over buffers of the same sizes.\n")
        out.append("| shape | format | sparsity | MB | kernel hot GB/s | stream hot GB/s | share | "
                   "kernel cold GB/s | stream cold GB/s | share |\n|---|---|---|---|---|---|---|---|---|---|")
        for r in result["bandwidth"]:
            out.append(f"| {r['shape'][0]}x{r['shape'][1]} | {r['format']} | {r['sparsity']:g} | "
                       f"{r['bytes'] / 1e6:.2f} | {r['kernel-hot_GBps']:.1f} | {r['stream-hot_GBps']:.1f} | "
                       f"{100 * r['fraction_hot']:.0f}% | {r['kernel-cold_GBps']:.1f} | "
                       f"{r['stream-cold_GBps']:.1f} | {100 * r['fraction_cold']:.0f}% |")
        out.append("")
    out.append("## Memory: bytes of each format against dense float32\n")
    mem = result["memory"]
    sps = sorted({r["sparsity"] for r in mem})
    out.append("| shape | format | index | " + " | ".join(f"s={s:g}" for s in sps) + " |\n|---|---|---|" +
               "---|" * len(sps))
    for shape in sorted({tuple(r["shape"]) for r in mem}, key=lambda s: s[0] * s[1]):
        for fmt in formats:
            sel = {r["sparsity"]: r for r in mem if tuple(r["shape"]) == shape and r["format"] == fmt}
            if not sel:
                continue
            idx = next(iter(sel.values()))["index_dtype"]
            out.append(f"| {shape[0]}x{shape[1]} | {fmt} | {idx} | " +
                       " | ".join(f"{sel[s]['ratio']:.3f}x" if s in sel else "" for s in sps) + " |")
    out.append("")
    if result["peak_rss"]:
        out.append("Resident memory of a fresh interpreter building a 4096x4096 layer at 90% sparsity "
                   "dense, converting it, dropping the dense copy and running it at batch 1 and 128 "
                   "(MiB; peaks from VmHWM, reset between stages; the dense float32 weight is 64 MiB):\n")
        out.append("| block | after imports | peak building dense | peak converting | after dropping dense | "
                   "peak running | sparse weight |\n|---|---|---|---|---|---|---|")
        for r in result["peak_rss"]:
            mib = lambda v: f"{v / 2**20:.0f}"  # noqa: E731
            out.append(f"| {r['block'][0]}x{r['block'][1]} | {mib(r['after_imports'])} | {mib(r['peak_dense'])} | "
                       f"{mib(r['peak_convert'])} | {mib(r['rss_sparse'])} | {mib(r['peak_run'])} | "
                       f"{r['nbytes'] / 2**20:.1f} |")
        out.append("")
    out.append("## Plots\n")
    for p in pngs:
        out.append(f"![{p}]({p})\n")
    out.append(f"_Generated by `python -m sparsekit.bench` in {result['seconds']:.0f} s._\n")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
