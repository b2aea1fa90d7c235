"""Acceptance floors: the speed and size sparsekit must reach, measured on this machine.

    python benchmarks/floors.py [--simd avx2,avx512] [--threads 2] [--budget 0.25]
                                [--cold-rounds N] [--wait-quiet SECONDS] [--retries N]
                                [--json floors.json]

Each floor in :data:`FLOORS` says what it means (layer, batch, sparsity, what it is
compared with) and the cache state it is about: ``hot`` (back-to-back calls, the
weights stay in cache) or ``cold`` (the caches evicted before every call, as in
``sparsekit bench``: :func:`sparsekit.bench.cold_setup_for`); the batch-1 floors exist
in both. Every ratio comes from one interleaved measurement of the contenders
of ``sparsekit.bench`` (the same weights and calls as the benchmark report), at every
SIMD level and for the given thread count and one thread. The median ratio is checked;
the detail gives the best-of ratio (fastest call of each contender), less hurt by load
from other processes. Prints one line per floor, then the Markdown table; exits 1 when
a floor is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

import sparsekit
from sparsekit import SparseMatrix
from sparsekit.bench import (COLD_ROUNDS, LOAD, Case, cold_setup_for, contenders, kernel_bytes, measure,
                             sparse_weight, stream_fn)

SHAPE = (4096, 4096)
SMALL = (768, 768)
SPARSITY = 0.9


@dataclasses.dataclass(frozen=True)
class Floor:
    """A bound a measured figure must reach: at least ``bound`` (or at most, where lower is better),
    measured with the weights ``cache`` ("hot" or "cold"; "-" for a figure that is not a time)."""

    meaning: str
    bound: float
    unit: str = "x"
    higher_is_better: bool = True
    cache: str = "hot"

    def met(self, value: float) -> bool:
        return value >= self.bound if self.higher_is_better else value <= self.bound


FLOORS: Dict[str, Floor] = {
    "b1_dense_hot": Floor("batch 1, 4096x4096, 90% CSR, weights hot (back-to-back calls): at least 7x "
                          "torch dense", 7),
    "b1_dense_cold": Floor("batch 1, 4096x4096, 90% CSR, weights cold (evicted before every call): at least "
                           "4x torch dense (its 64 MiB against 10 MB from DRAM: 6.3x the bytes)", 4, cache="cold"),
    "b1_torch_csr_hot": Floor("batch 1, 4096x4096, 90% CSR, weights hot: at least 3x torch CSR", 3),
    "b1_torch_csr_cold": Floor("batch 1, 4096x4096, 90% CSR, weights cold: at least 1.5x torch CSR", 1.5,
                               cache="cold"),
    "b1_stream_hot": Floor("batch 1, 4096x4096, 90% CSR, weights hot: at least 80% of the speed of a "
                           "streaming read of the same bytes from cache", 80, unit="%"),
    "b1_stream_cold": Floor("batch 1, 4096x4096, 90% CSR, weights cold: at least 70% of the speed of a "
                            "streaming read of the same bytes from DRAM", 70, unit="%", cache="cold"),
    "b128_dense": Floor("batch 128, 4096x4096, 90% CSR: at least 4x torch dense", 4),
    "b128_torch_csr": Floor("batch 128, 4096x4096, 90% CSR: at least 2x torch CSR", 2),
    "b128_4x1_dense": Floor("batch 128, 4096x4096, 90% in 4x1 blocks: at least 8x torch dense", 8),
    "small_dense_hot": Floor("batch 1, 768x768, 90% CSR, weights hot: at least 3x torch dense", 3),
    "small_dense_cold": Floor("batch 1, 768x768, 90% CSR, weights cold: at least 2x torch dense", 2,
                              cache="cold"),
    "overhead": Floor("batch 1, 8x8 layer: at most 5 us per call (the fixed cost of a call)", 5, unit=" us",
                      higher_is_better=False),
    "scaling_csr": Floor("batch 128, 4096x4096, 90% CSR: all threads at least 1.8x one thread", 1.8),
    "scaling_4x1": Floor("batch 128, 4096x4096, 90% in 4x1 blocks: all threads at least 1.8x one thread", 1.8),
    "bytes_csr": Floor("4096x4096, 90% CSR: at most 0.16x the bytes of the dense float32 weight", 0.16,
                       higher_is_better=False, cache="-"),
    "bytes_4x1": Floor("4096x4096, 90% in 4x1 blocks: at most 0.13x the bytes of the dense float32 weight",
                       0.13, higher_is_better=False, cache="-"),
}


def ratio(st: dict, a: str, b: str) -> Tuple[float, float]:
    """Median ratio a/b, and the best-of (min) ratio."""
    return st[a]["median"] / st[b]["median"], st[a]["min"] / st[b]["min"]


class Results:
    """The measured floors, in order, each also logged as one line."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.rows: List[dict] = []
        self.log = log

    def add(self, key: str, level: str, threads: int, value: float, detail: str = "") -> None:
        floor = FLOORS[key]
        ok = floor.met(value)
        if hasattr(os, "getloadavg"):
            detail = f"{detail}; load {os.getloadavg()[0]:.1f}".lstrip("; ")
        self.rows.append({"floor": floor.meaning, "cache": floor.cache, "simd": level, "threads": threads,
                          "value": value,
                          "bound": floor.bound, "unit": floor.unit, "higher_is_better": floor.higher_is_better,
                          "met": bool(ok), "detail": detail})
        op = ">=" if floor.higher_is_better else "<="
        self.log(f"  [{'met ' if ok else 'MISS'}] {level:<6} t{threads} {floor.cache:<4}: {value:.3g}{floor.unit} "
                 f"({op} {floor.bound:g}{floor.unit}) {floor.meaning}; {detail}")


def _cold(fns: Dict[str, Callable[[], object]], cs: dict, cold_rounds: int) -> dict:
    """``fns`` measured cold: the caches evicted before every call (the streaming-read reference
    among them then reads from DRAM too)."""
    return measure(fns, cold=cold_setup_for(cs.values()), cold_rounds=cold_rounds)


def batch1(res: Results, level: str, th: int, budget: float, cold_rounds: int) -> None:
    """4096x4096 at batch 1, hot and cold: against torch dense, torch CSR and a streaming read
    of the same bytes."""
    cs = contenders(Case(SHAPE, 1, SPARSITY), ("csr",), threads=th)
    m = sparse_weight(SHAPE, SPARSITY, "csr")
    nbytes = kernel_bytes(m, 1)
    fns = {n: c.run for n, c in cs.items()}
    fns["stream"] = stream_fn(nbytes, th)
    for cache, st in (("hot", measure(fns, budget)), ("cold", _cold(fns, cs, cold_rounds))):
        t = st["sparsekit-csr"]["median"]
        r, rb = ratio(st, "torch-dense", "sparsekit-csr")
        res.add(f"b1_dense_{cache}", level, th, r,
                f"{t * 1e3:.3f} ms vs {st['torch-dense']['median'] * 1e3:.3f} ms; best-of {rb:.2f}x")
        r, rb = ratio(st, "torch-csr", "sparsekit-csr")
        res.add(f"b1_torch_csr_{cache}", level, th, r,
                f"torch CSR {st['torch-csr']['median'] * 1e3:.3f} ms; best-of {rb:.2f}x")
        r, rb = ratio(st, "stream", "sparsekit-csr")
        res.add(f"b1_stream_{cache}", level, th, 100 * r, f"{nbytes / t / 1e9:.1f} GB/s vs stream "
                f"{nbytes / st['stream']['median'] / 1e9:.1f} GB/s; best-of {100 * rb:.0f}%")


def batch128(res: Results, level: str, th: int, budget: float) -> None:
    """4096x4096 at batch 128: CSR against torch dense and torch CSR, 4x1 blocks against torch dense."""
    cs = contenders(Case(SHAPE, 128, SPARSITY), ("csr", "4x1"), threads=th)
    st = measure({n: c.run for n, c in cs.items()}, budget)
    t, d = st["sparsekit-csr"]["median"], st["torch-dense"]["median"]
    r, rb = ratio(st, "torch-dense", "sparsekit-csr")
    res.add("b128_dense", level, th, r, f"{t * 1e3:.2f} ms vs {d * 1e3:.2f} ms; best-of {rb:.2f}x")
    r, rb = ratio(st, "torch-csr", "sparsekit-csr")
    res.add("b128_torch_csr", level, th, r, f"torch CSR {st['torch-csr']['median'] * 1e3:.2f} ms; best-of {rb:.2f}x")
    r, rb = ratio(st, "torch-dense", "sparsekit-4x1")
    res.add("b128_4x1_dense", level, th, r, f"{st['sparsekit-4x1']['median'] * 1e3:.2f} ms; best-of {rb:.2f}x")


def small_layer(res: Results, level: str, th: int, budget: float, cold_rounds: int) -> None:
    """768x768 at batch 1 against torch dense, hot and cold, and the cost of a call on an 8x8 layer (hot)."""
    cs = contenders(Case(SMALL, 1, SPARSITY), ("csr",), baselines=("torch-dense",), threads=th)
    tiny = SparseMatrix.from_dense(np.eye(8, dtype=np.float32))
    xt = torch.randn(1, 8)
    fns = {n: c.run for n, c in cs.items()}
    hot = measure({**fns, "overhead": lambda: sparsekit.linear(xt, tiny, threads=th)}, budget)
    for cache, st in (("hot", hot), ("cold", _cold(fns, cs, cold_rounds))):
        t = st["sparsekit-csr"]["median"]
        r, rb = ratio(st, "torch-dense", "sparsekit-csr")
        res.add(f"small_dense_{cache}", level, th, r,
                f"{t * 1e6:.1f} us vs {st['torch-dense']['median'] * 1e6:.1f} us; best-of {rb:.2f}x")
    res.add("overhead", level, th, hot["overhead"]["median"] * 1e6)


def scaling(res: Results, level: str, th: int, budget: float) -> None:
    """4096x4096 at batch 128 on ``th`` threads against one thread, CSR and 4x1 blocks."""
    for fmt in ("csr", "4x1"):
        m = sparse_weight(SHAPE, SPARSITY, fmt)
        x = torch.randn(128, SHAPE[1])
        y = torch.empty(128, SHAPE[0])
        st = measure({"t1": lambda: sparsekit.linear(x, m, out=y, threads=1),
                      f"t{th}": lambda: sparsekit.linear(x, m, out=y, threads=th)}, budget * 2)
        r, rb = ratio(st, "t1", f"t{th}")
        res.add(f"scaling_{fmt}", level, th, r, f"{st['t1']['median'] * 1e3:.2f} ms -> "
                f"{st[f't{th}']['median'] * 1e3:.2f} ms; best-of {rb:.2f}x")


def sizes(res: Results) -> None:
    """Bytes of the 4096x4096 90% weight in CSR and 4x1 blocks against dense float32."""
    for fmt in ("csr", "4x1"):
        m = sparse_weight(SHAPE, SPARSITY, fmt)
        res.add(f"bytes_{fmt}", "-", 0, m.nbytes / (4 * SHAPE[0] * SHAPE[1]), f"{m.index_dtype} indices")


def measure_floors(threads_list: Sequence[int], levels: Sequence[str], budget: float,
                   log: Callable[[str], None] = print, cold_rounds: int = COLD_ROUNDS) -> List[dict]:
    """Every floor at every SIMD level in ``levels`` and thread count in ``threads_list``
    (cold floors: ``cold_rounds`` calls per contender, each after an eviction)."""
    res = Results(log)
    for level in levels:
        with sparsekit.use_simd(level):
            for th in threads_list:
                with sparsekit.threads(th, with_torch=True):
                    batch1(res, level, th, budget, cold_rounds)
                    batch128(res, level, th, budget)
                    small_layer(res, level, th, budget, cold_rounds)
            if len(threads_list) > 1 and 1 in threads_list:
                th = max(threads_list)
                with sparsekit.threads(th, with_torch=True):
                    scaling(res, level, th, budget)
    sizes(res)
    return res.rows


def markdown(rows: List[dict]) -> str:
    """The floors as a Markdown table (the one in docs/benchmarks.md)."""
    out = ["| floor | cache | SIMD | threads | measured | bound | met | detail |",
           "|---|---|---|---|---|---|---|---|"]
    for t in rows:
        op = ">=" if t["higher_is_better"] else "<="
        out.append(f"| {t['floor']} | {t['cache']} | {t['simd']} | {t['threads'] or '-'} | "
                   f"{t['value']:.3g}{t['unit']} | "
                   f"{op} {t['bound']:g}{t['unit']} | {'yes' if t['met'] else '**no**'} | {t['detail']} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    available = sparsekit.cpu_info()["simd_available"]
    default_levels = [lv for lv in ("avx2", "avx512", "neon") if lv in available] or [available[-1]]
    p.add_argument("--simd", default=",".join(default_levels),
                   help=f"comma-separated SIMD levels (default: {','.join(default_levels)})")
    p.add_argument("--threads", type=int, default=sparsekit.get_num_threads(),
                   help="thread count measured beside one thread (default: torch's)")
    p.add_argument("--budget", type=float, default=0.25, help="seconds of timed calls per contender (hot)")
    p.add_argument("--cold-rounds", type=int, default=COLD_ROUNDS, metavar="N",
                   help=f"cold calls per contender, each after its own eviction (default {COLD_ROUNDS})")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement, wait up to SECONDS for the CPUs to be idle")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="repeat a measurement up to N times when its medians are over 1.5x its fastest calls")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    LOAD.reset(max_wait=args.wait_quiet, retries=args.retries)
    levels = [lv for lv in args.simd.split(",") if lv]
    print(f"acceptance floors: SIMD {', '.join(levels)}, threads {sorted({args.threads, 1}, reverse=True)}")
    rows = measure_floors(sorted({args.threads, 1}, reverse=True), levels, args.budget,
                          cold_rounds=args.cold_rounds)
    print()
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
