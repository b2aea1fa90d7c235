"""What the report measures, section by section: the machine, the grid of medians
(batch 1 with the weights hot in cache and evicted), batch-1 bandwidth against a
streaming read, bytes per format, break-even sparsities.

Each function returns plain rows (dicts, JSON-ready) that :mod:`sparsekit.bench.report`
renders and :mod:`sparsekit.bench.plots` draws.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

import sparsekit
from sparsekit.bench.cache import CACHE_STATES, cache_of, cold_setup_for
from sparsekit.bench.cases import Case, baselines_for, contenders, sparse_weight
from sparsekit.bench.measure import COLD_ROUNDS, measure, stream_fn
# The layer whose resident memory the report follows from dense to converted to running.
PEAK_RSS_SHAPE = (4096, 4096)
PEAK_RSS_SPARSITY = 0.9


def machine_info() -> dict:
    """The machine a report ran on: CPU model, SIMD levels, threads, versions, load average.

    Example:
        >>> from sparsekit.bench import machine_info
        >>> m = machine_info()
        >>> m["simd_default"] in m["simd_available"]
        True
    """
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
             simd: str, log: Callable[[str], None], cold: bool = True,
             cold_rounds: int = COLD_ROUNDS) -> List[dict]:
    """Measures every contender at every grid point; returns one row per (case, cache
    state, contender), ``cache`` ``"hot"`` (back-to-back calls) or, at batch 1 when
    ``cold``, also ``"cold"`` (caches evicted before every call, ``cold_rounds`` calls:
    :mod:`sparsekit.bench.cache`).

    Each contender's result is checked first; ``log`` gets one line per grid point and
    cache state.

    Example:
        >>> from sparsekit.bench import Case, run_grid
        >>> rows = run_grid([Case((16, 8), 1, 0.5)], ["csr"], threads=1, budget=0.001,
        ...                 simd="scalar", log=lambda line: None, cold=False)
        >>> sorted((r["cache"], r["contender"]) for r in rows)[:2]
        [('hot', 'scipy-csr'), ('hot', 'sparsekit-csr')]
    """
    rows = []
    with sparsekit.use_simd(simd):
        for case in cases:
            cs = contenders(case, formats, baselines_for(formats), threads=threads)
            for c in cs.values():
                c.check()
            fns = {n: c.run for n, c in cs.items()}
            measured = [("hot", measure(fns, budget))]
            if cold and case.batch == 1:
                measured.append(("cold", measure(fns, cold=cold_setup_for(cs.values()), cold_rounds=cold_rounds)))
            for cache, stats in measured:
                for n, c in cs.items():
                    rows.append({"shape": list(case.shape), "batch": case.batch, "sparsity": case.sparsity,
                                 "cache": cache, "contender": n, "simd": simd, "threads": threads,
                                 **stats[n], **c.info})
                dense = stats["torch-dense"]["median"]
                best = min((stats[n]["median"], n) for n in cs if n.startswith("sparsekit"))
                log(f"  {case.id:<24} {cache:<4} dense {dense * 1e3:8.3f} ms  best {best[1]:<14} "
                    f"{best[0] * 1e3:8.3f} ms  x{dense / best[0]:.2f}")
    return rows


def bandwidth(shapes: Sequence[Tuple[int, int]], sparsity: float, formats: Sequence[str], threads: int,
              simd: str, budget: float, cold: bool = True, cold_rounds: int = COLD_ROUNDS) -> List[dict]:
    """Batch-1 achieved bandwidth (bytes the kernel must read / time) against a streaming read
    of the same number of bytes; one row per shape, format and cache state: ``"hot"`` (both
    called back to back, from cache) and, when ``cold``, ``"cold"`` (both after the caches
    were evicted: :func:`sparsekit.bench.cold_setup`).

    Example:
        >>> from sparsekit.bench import bandwidth
        >>> (row,) = bandwidth([(64, 64)], 0.9, ["csr"], threads=1, simd="scalar", budget=0.001, cold=False)
        >>> row["cache"], row["bytes"] > 0 and row["fraction"] > 0
        ('hot', True)
    """
    out = []
    with sparsekit.use_simd(simd):
        for shape in shapes:
            for fmt in formats:
                (c,) = contenders(Case(shape, 1, sparsity), (fmt,), baselines=(), threads=threads).values()
                nbytes = c.info["bytes_moved"]
                fns = {"kernel": c.run, "stream": stream_fn(nbytes, threads)}
                measured = [("hot", measure(fns, budget))]
                if cold:
                    measured.append(("cold", measure(fns, cold=cold_setup_for([c]), cold_rounds=cold_rounds)))
                for cache, st in measured:
                    row = {"shape": list(shape), "sparsity": sparsity, "format": fmt, "cache": cache,
                           "simd": simd, "threads": threads, "bytes": nbytes}
                    for k, v in st.items():
                        row[k + "_s"] = v["median"]
                        row[k + "_GBps"] = nbytes / v["median"] / 1e9
                    row["fraction"] = st["stream"]["median"] / st["kernel"]["median"]
                    if "evict_s" in st["kernel"]:
                        row["evict_s"] = st["kernel"]["evict_s"]
                    out.append(row)
    return out


def memory_table(shapes: Sequence[Tuple[int, int]], sparsities: Sequence[float],
                 formats: Sequence[str]) -> List[dict]:
    """Bytes of each format against dense float32, per grid point (batch does not matter).

    Example:
        >>> from sparsekit.bench import memory_table
        >>> (row,) = memory_table([(64, 64)], [0.9], ["csr"])
        >>> row["dense_bytes"], row["ratio"] < 1
        (16384, True)
    """
    out = []
    for shape in shapes:
        dense_bytes = 4 * shape[0] * shape[1]
        for s in sparsities:
            for fmt in formats:
                m = sparse_weight(shape, s, fmt)
                out.append({"shape": list(shape), "sparsity": s, "format": fmt, "index_dtype": m.index_dtype,
                            "nbytes": m.nbytes, "dense_bytes": dense_bytes, "ratio": m.nbytes / dense_bytes})
    return out


def peak_rss(blocks: Sequence[Tuple[int, int]] = ((1, 1), (4, 1)), shape: Tuple[int, int] = PEAK_RSS_SHAPE,
             sparsity: float = PEAK_RSS_SPARSITY) -> List[dict]:
    """Resident memory (bytes) of building a ``shape`` layer at ``sparsity`` dense, converting
    it and running it at batch 1 and 128, one fresh interpreter per block shape
    (``python -m sparsekit.bench.rss``; Linux).

    Example:
        >>> from sparsekit.bench import peak_rss
        >>> (r,) = peak_rss([(4, 1)], shape=(64, 64))  # the report uses 4096x4096
        >>> r["block"], r["peak_run"] >= r["after_imports"] > 0
        ([4, 1], True)
    """
    out = []
    for block in blocks:
        cmd = [sys.executable, "-m", "sparsekit.bench.rss", "--block", f"{block[0]}x{block[1]}",
               "--shape", f"{shape[0]}x{shape[1]}", "--sparsity", repr(float(sparsity))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"peak-RSS probe failed: {proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def break_even(rows: List[dict]) -> List[dict]:
    """Lowest sparsity at which each sparsekit format beats torch dense, per shape, batch and
    cache state (linear interpolation of log speedup between measured sparsities; rows
    without ``cache`` count as hot).

    Example:
        >>> from sparsekit.bench import break_even
        >>> rows = [{"shape": [8, 8], "batch": 1, "sparsity": s, "contender": c, "format": f, "median": t}
        ...         for s, d, k in ((0.5, 1.0, 2.0), (0.9, 1.0, 0.5))
        ...         for c, f, t in (("torch-dense", "dense", d), ("sparsekit-csr", "csr", k))]
        >>> (be,) = break_even(rows)
        >>> round(be["break_even"], 3), be["cache"]
        (0.7, 'hot')
    """
    out = []
    keys = sorted({(tuple(r["shape"]), r["batch"], cache_of(r)) for r in rows},
                  key=lambda k: (k[0], k[1], CACHE_STATES.index(k[2])))
    formats = sorted({r["format"] for r in rows if r["contender"].startswith("sparsekit")})
    for shape, batch, cache in keys:
        sel = [r for r in rows if (tuple(r["shape"]), r["batch"], cache_of(r)) == (shape, batch, cache)]
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
            out.append({"shape": list(shape), "batch": batch, "cache": cache, "format": fmt,
                        "break_even": value, "label": label})
    return out
