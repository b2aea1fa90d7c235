"""The report's plots: speedup over torch dense, batch-1 bandwidth, GFLOP/s.

Each function draws one PNG from the rows of :mod:`sparsekit.bench.sections` and
returns its path; matplotlib (Agg backend) is imported only when a plot is drawn.
"""

from __future__ import annotations

import os
from typing import Callable, List, Sequence, Tuple

import numpy as np

from sparsekit.bench.cache import CACHE_STATES, cache_of

STYLES = ("-", "--", ":", "-.")  # one line style per sparsekit format


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _shapes(rows: List[dict]) -> List[Tuple[int, int]]:
    return sorted({tuple(r["shape"]) for r in rows}, key=lambda s: s[0] * s[1])


def _speedup(r: dict, dense_median: float) -> float:
    return dense_median / r["median"]


def _gflops(r: dict, dense_median: float) -> float:
    return r["flops"] / r["median"] / 1e9


def _series(rows: List[dict], shape: Tuple[int, int], batch: int, name: str,
            key: Callable[[dict, float], float] = _speedup, cache: str = "hot") -> Tuple[List[float], List[float]]:
    """(sparsities, key of each) for one contender at one shape, batch and cache state, by sparsity."""
    sel = [r for r in rows if tuple(r["shape"]) == shape and r["batch"] == batch and cache_of(r) == cache]
    dense = {r["sparsity"]: r["median"] for r in sel if r["contender"] == "torch-dense"}
    pts = sorted((r["sparsity"], key(r, dense[r["sparsity"]])) for r in sel if r["contender"] == name)
    return [p[0] for p in pts], [p[1] for p in pts]


def speedup_plot(rows: List[dict], out_dir: str, formats: Sequence[str]) -> str:
    """Speedup over torch dense against sparsity, one panel per batch size and cache state
    (batch 1 hot and cold): ``bench_speedup.png``.

    Example:
        >>> from sparsekit.bench import speedup_plot
        >>> rows = [{"shape": [8, 8], "batch": 1, "sparsity": s, "contender": c, "median": t}
        ...         for s in (0.5, 0.9) for c, t in (("torch-dense", 2.0), ("torch-csr", 1.5), ("sparsekit-csr", s))]
        >>> speedup_plot(rows, ".", ["csr"])
        './bench_speedup.png'
    """
    plt = _pyplot()
    shapes = _shapes(rows)
    panels = sorted({(r["batch"], cache_of(r)) for r in rows}, key=lambda p: (p[0], CACHE_STATES.index(p[1])))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (batch, cache) in zip(axes[0], panels):
        for i, shape in enumerate(shapes):
            for j, fmt in enumerate(formats):
                xs, ys = _series(rows, shape, batch, f"sparsekit-{fmt}", cache=cache)
                ax.plot(xs, ys, STYLES[j % 4], marker="o", ms=3, color=f"C{i}",
                        label=f"{shape[0]}x{shape[1]} {fmt}")
            xs, ys = _series(rows, shape, batch, "torch-csr", cache=cache)
            ax.plot(xs, ys, ":", marker="x", ms=3, color=f"C{i}", alpha=0.5, label=f"{shape[0]}x{shape[1]} torch CSR")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speedup over torch dense")
        ax.set_title(f"batch {batch}, weights {cache}" + (" (evicted before each call)" if cache == "cold" else ""))
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="upper left")
    return _save(fig, out_dir, "bench_speedup.png")


def bandwidth_plot(bw: List[dict], out_dir: str) -> str:
    """Batch-1 bandwidth of the kernel against a streaming read of the same bytes, hot and
    cold (one bar pair per row of :func:`sparsekit.bench.bandwidth`): ``bench_bandwidth.png``.

    Example:
        >>> from sparsekit.bench import bandwidth_plot
        >>> bw = [{"shape": [8, 8], "format": "csr", "sparsity": 0.9, "simd": "scalar", "threads": 1,
        ...        "cache": c, "stream_GBps": s, "kernel_GBps": k}
        ...       for c, s, k in (("hot", 9.0, 3.0), ("cold", 5.0, 4.0))]
        >>> bandwidth_plot(bw, ".")
        './bench_bandwidth.png'
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(bw)), 4))
    labels = [f"{r['shape'][0]}x{r['shape'][1]}\n{r['format']} s{r['sparsity']:g}\n{r['cache']}" for r in bw]
    xs = np.arange(len(bw))
    width = 0.4
    for k, (key, name) in enumerate((("stream", "streaming read"), ("kernel", "sparsekit"))):
        for cache in CACHE_STATES:
            idx = [i for i, r in enumerate(bw) if r["cache"] == cache]
            ax.bar(xs[idx] + (k - 0.5) * width, [bw[i][key + "_GBps"] for i in idx], width,
                   label=f"{name}, {cache}", color=f"C{k}", alpha=1.0 if cache == "cold" else 0.5)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("GB/s (bytes the kernel must read / time)")
    ax.set_title(f"batch 1: achieved bandwidth vs streaming read ({bw[0]['simd']}, {bw[0]['threads']} threads)")
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "bench_bandwidth.png")


def gflops_plot(rows: List[dict], out_dir: str, formats: Sequence[str]) -> str:
    """GFLOP/s at the largest batch (weights hot), sparsekit (useful work: stored values)
    against torch dense: ``bench_gflops.png``.

    Example:
        >>> from sparsekit.bench import gflops_plot
        >>> rows = [{"shape": [8, 8], "batch": 4, "sparsity": s, "contender": c, "median": 1e-6, "flops": f}
        ...         for s in (0.5, 0.9) for c, f in (("torch-dense", 512), ("sparsekit-csr", 512 * (1 - s)))]
        >>> gflops_plot(rows, ".", ["csr"])
        './bench_gflops.png'
    """
    plt = _pyplot()
    big = max(r["batch"] for r in rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, shape in enumerate(_shapes(rows)):
        xs, ys = _series(rows, shape, big, "torch-dense", key=_gflops)
        ax.plot(xs, ys, "-", color=f"C{i}", lw=2, alpha=0.5, label=f"{shape[0]}x{shape[1]} torch dense")
        for j, fmt in enumerate(formats):
            xs, ys = _series(rows, shape, big, f"sparsekit-{fmt}", key=_gflops)
            ax.plot(xs, ys, STYLES[j % 4], marker="o", ms=3, color=f"C{i}", label=f"{shape[0]}x{shape[1]} {fmt}")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("GFLOP/s (2 x stored values x batch / time)")
    ax.set_title(f"batch {big}, weights hot: achieved GFLOP/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    return _save(fig, out_dir, "bench_gflops.png")


def plots(rows: List[dict], bw: List[dict], out_dir: str, formats: Sequence[str]) -> List[str]:
    """Every plot of the report (the bandwidth plot only when ``bw`` has rows); their paths.

    Example:
        >>> from sparsekit.bench import plots
        >>> rows = [{"shape": [8, 8], "batch": 1, "sparsity": s, "contender": c, "median": 1e-6, "flops": 64}
        ...         for s in (0.5, 0.9) for c in ("torch-dense", "torch-csr", "sparsekit-csr")]
        >>> plots(rows, [], ".", ["csr"])
        ['./bench_speedup.png', './bench_gflops.png']
    """
    written = [speedup_plot(rows, out_dir, formats)]
    if bw:
        written.append(bandwidth_plot(bw, out_dir))
    written.append(gflops_plot(rows, out_dir, formats))
    return written
