"""The Markdown report: tables of medians and speedups, and the page that holds them.

:func:`render` turns a result of :func:`sparsekit.bench.main` (the same dict written
to ``results.json``) into ``report.md``; :func:`markdown_table` and
:func:`summary_table` are its two speed tables, usable on their own (the README
quotes the summary).
"""

from __future__ import annotations

from typing import List, Sequence

from sparsekit.bench.cache import CACHE_STATES, cache_of
from sparsekit.bench.cases import ALL_FORMATS

NOTES = """## Reading these numbers

* **Load.** The build machine is shared: when other processes hold the cores, a
  two-thread call waits for its second thread to be scheduled (milliseconds), for
  torch and sparsekit alike. The acceptance floors (`benchmarks/floors.py`) therefore
  give the median ratio and beside it the best-of ratio (fastest call of each
  contender). Compare runs only at a similar load average (printed above).
* **Batch 1, unstructured (CSR).** Each stored value needs one load of a random
  element of x, so the kernel is bound by load-port throughput (scalar-load gathers,
  which beat `vgatherdps` on AMD Zen), not by bandwidth, while the weights fit in the
  last-level cache ("hot"). A
  streaming read of the same bytes moves 64 bytes per load, hence the gap. With the
  weights in DRAM ("cold", the case of a model larger than the cache) the kernel gets
  much closer to the streaming read. Block formats (r x 1, 1 x c) need one x load per
  block and run 2-3x faster at the same sparsity.
* **Batch > 1.** x is packed into panels (a register transpose) and every stored value
  becomes a broadcast and 1-4 fused multiply-adds on panel rows. For CSR and r x 1
  blocks the columns are cut into K-blocks of 128 whose panel slice stays in L1; CSR is
  then bound by loads (a broadcast and one panel load per FMA), while r x 1 blocks reuse
  one panel load for r rows and get closer to the FMA peak.
* **Small layers.** A product gets a second thread from 32k multiply-adds (16k per
  thread); below that a fork/join costs more than it saves.

"""


def _fmt_ms(t: float) -> str:
    return f"{t * 1e3:.3f}" if t < 0.1 else f"{t * 1e3:.1f}"


def _field(r: dict, f: str):
    if f == "cache":
        return cache_of(r)
    return tuple(r[f]) if f == "shape" else r[f]


def _points(rows: List[dict], *fields: str) -> list:
    """The distinct values of ``fields`` over ``rows`` (shape as a tuple), in order of first
    appearance, except that within each (shape, batch) the hot points come before the cold."""
    keys: list = []
    for r in rows:
        k = tuple(_field(r, f) for f in fields)
        if k not in keys:
            keys.append(k)
    if "cache" not in fields:
        return keys
    c = fields.index("cache")
    groups = [k[:c] for k in keys]
    return sorted(keys, key=lambda k: (groups.index(k[:c]), CACHE_STATES.index(k[c])))


def markdown_table(rows: List[dict], formats: Sequence[str]) -> str:
    """Medians in ms, one line per grid point and cache state (``hot``: weights in cache,
    ``cold``: evicted before every call); each sparsekit cell adds its speedup over torch
    dense and torch CSR measured in the same state.

    Example:
        >>> from sparsekit.bench import markdown_table
        >>> rows = [{"shape": [8, 8], "batch": 1, "sparsity": 0.9, "cache": "hot", "contender": c, "median": t}
        ...         for c, t in (("torch-dense", 2e-3), ("torch-csr", 1e-3), ("scipy-csr", 3e-3),
        ...                      ("sparsekit-csr", 5e-4))]
        >>> print(markdown_table(rows, ["csr"]))
        | shape | batch | cache | sparsity | torch dense | torch CSR | scipy CSR | sparsekit csr |
        |---|---|---|---|---|---|---|---|
        | 8x8 | 1 | hot | 0.9 | 2.000 | 1.000 | 3.000 | 0.500 (4.0x / 2.0x) |
    """
    head = ["shape", "batch", "cache", "sparsity", "torch dense", "torch CSR", "scipy CSR"] + \
           [f"sparsekit {f}" for f in formats]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fields = ("shape", "batch", "cache", "sparsity")
    for point in _points(rows, *fields):
        shape, batch, cache, s = point
        sel = {r["contender"]: r for r in rows if tuple(_field(r, f) for f in fields) == point}
        d, c = sel["torch-dense"]["median"], sel["torch-csr"]["median"]
        cells = [f"{shape[0]}x{shape[1]}", str(batch), cache, f"{s:g}", _fmt_ms(d), _fmt_ms(c),
                 _fmt_ms(sel["scipy-csr"]["median"])]
        for f in formats:
            t = sel[f"sparsekit-{f}"]["median"]
            cells.append(f"{_fmt_ms(t)} ({d / t:.1f}x / {c / t:.1f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(rows: List[dict], formats: Sequence[str], sparsity: float = 0.9) -> str:
    """A compact table (for the README): every shape, batch and cache state at one
    sparsity (the highest measured where ``sparsity`` was not).

    Example:
        >>> from sparsekit.bench import summary_table
        >>> rows = [{"shape": [8, 8], "batch": 1, "sparsity": 0.9, "cache": k, "contender": c, "median": t * f}
        ...         for k, f in (("hot", 1), ("cold", 2))
        ...         for c, t in (("torch-dense", 2e-3), ("torch-csr", 1e-3), ("sparsekit-csr", 5e-4))]
        >>> for line in summary_table(rows, ["csr"]).splitlines()[-2:]:
        ...     print(line)
        | 8x8 | 1 | hot | 2.000 ms | 1.000 ms | 0.500 ms (**4.0x**) |
        | 8x8 | 1 | cold | 4.000 ms | 2.000 ms | 1.000 ms (**4.0x**) |
    """
    sel = [r for r in rows if abs(r["sparsity"] - sparsity) < 1e-9]
    if not sel:
        sparsity = max(r["sparsity"] for r in rows)
        sel = [r for r in rows if r["sparsity"] == sparsity]
    head = ["layer", "batch", "cache", "torch dense", "torch CSR"] + [f"sparsekit {f}" for f in formats]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fields = ("shape", "batch", "cache")
    for point in _points(sel, *fields):
        shape, batch, cache = point
        by = {r["contender"]: r["median"] for r in sel if tuple(_field(r, f) for f in fields) == point}
        d = by["torch-dense"]
        cells = [f"{shape[0]}x{shape[1]}", str(batch), cache, f"{_fmt_ms(d)} ms", f"{_fmt_ms(by['torch-csr'])} ms"]
        cells += [f"{_fmt_ms(by[f'sparsekit-{f}'])} ms (**{d / by[f'sparsekit-{f}']:.1f}x**)" for f in formats]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cache_note(cold: dict) -> str:
    """What *hot* and *cold* mean in a report, with how cold was produced on this run
    (``cold``: the ``"cold"`` entry of a result, :meth:`sparsekit.bench.Evictor.info`
    plus ``rounds`` and ``evict_s``; empty when nothing was measured cold).

    Example:
        >>> from sparsekit.bench import Evictor, cache_note
        >>> info = {**Evictor(llc_bytes=32 << 20, threads=2).info(), "rounds": 9, "evict_s": 0.004}
        >>> "64 MiB buffer (2x the 32 MiB last-level cache" in cache_note(info)
        True
    """
    hot = ("*hot*: the same layer called back to back, so its weights stay in the caches "
           "(a whole model that fits in the last-level cache runs like this; a weight larger "
           "than the cache, such as a big dense matrix, still comes partly from DRAM).")
    if not cold:
        return f"Every figure is {hot}\n"
    llc, evict = cold["llc_bytes"] / 2**20, cold["evict_bytes"] / 2**20
    warn = "" if cold["evicts_llc"] else " (smaller than the cache: cold figures are partly hot)"
    return (f"Batch 1 is measured in two cache states. {hot[0].upper()}{hot[1:]} *cold*: before "
            f"every call the caches are evicted by a streaming read of a {evict:.0f} MiB buffer "
            f"({cold['evict_factor']}x the {llc:.0f} MiB last-level cache, read from {cold['llc_source']}"
            f"{warn}) on {cold['evict_threads']} threads, {1e3 * cold['evict_s']:.0f} ms per call and not "
            "timed; then the same code runs once on a small layer of other weights (the "
            "interpreter's and the library's state warm again, as in a model whose other layers run "
            "the same code) and the call's activations are read back, so only its weights come from "
            "DRAM, as in a model much larger than the cache. Cold medians are over "
            f"{cold['rounds']} calls per contender, one per eviction, in an order that rotates. "
            "Larger batches are measured hot.\n")


def _header(result: dict) -> List[str]:
    m = result["machine"]
    return ["# sparsekit benchmark report\n",
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


def _break_even_section(be: List[dict]) -> List[str]:
    out = ["## Break-even sparsity against torch dense\n",
           "Lowest sparsity at which sparsekit is faster than torch's dense linear in the same cache "
           "state (interpolated between measured sparsities; `<= s`: already faster at the lowest measured).\n"]
    fmts = sorted({b["format"] for b in be}, key=list(ALL_FORMATS).index)
    out.append("| shape | batch | cache | " + " | ".join(fmts) + " |\n|---|---|---|" + "---|" * len(fmts))
    fields = ("shape", "batch", "cache")
    for point in sorted(_points(be, *fields), key=lambda k: (k[0], k[1], CACHE_STATES.index(k[2]))):
        cells = {b["format"]: b["label"] for b in be if tuple(_field(b, f) for f in fields) == point}
        out.append(f"| {point[0][0]}x{point[0][1]} | {point[1]} | {point[2]} | " +
                   " | ".join(cells.get(f, "") for f in fmts) + " |")
    out.append("")
    return out


def _bandwidth_section(bw: List[dict]) -> List[str]:
    if not bw:
        return []
    out = ["## Batch 1: achieved bandwidth against a streaming read of the same bytes\n",
           "Bytes = values + indices + row pointers + x + y. The streaming read is measured in "
           "the same cache state as the kernel: *hot* (both called back to back) or *cold* (both "
           "after the caches were evicted, as above). Share: streaming-read time / kernel time.\n",
           "| shape | format | sparsity | cache | MB | kernel GB/s | stream GB/s | share |\n"
           "|---|---|---|---|---|---|---|---|"]
    for r in bw:
        out.append(f"| {r['shape'][0]}x{r['shape'][1]} | {r['format']} | {r['sparsity']:g} | {r['cache']} | "
                   f"{r['bytes'] / 1e6:.2f} | {r['kernel_GBps']:.1f} | {r['stream_GBps']:.1f} | "
                   f"{100 * r['fraction']:.0f}% |")
    out.append("")
    return out


def _memory_section(mem: List[dict], formats: Sequence[str]) -> List[str]:
    out = ["## Memory: bytes of each format against dense float32\n"]
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
    return out


def _peak_rss_section(rss: List[dict]) -> List[str]:
    if not rss:
        return []
    out = ["Resident memory of a fresh interpreter building a 4096x4096 layer at 90% sparsity "
           "dense, converting it, dropping the dense copy and running it at batch 1 and 128 "
           "(MiB; peaks from VmHWM, reset between stages; the dense float32 weight is 64 MiB):\n",
           "| block | after imports | peak building dense | peak converting | after dropping dense | "
           "peak running | sparse weight |\n|---|---|---|---|---|---|---|"]
    for r in rss:
        def mib(v: int) -> str:
            return f"{v / 2**20:.0f}"
        out.append(f"| {r['block'][0]}x{r['block'][1]} | {mib(r['after_imports'])} | {mib(r['peak_dense'])} | "
                   f"{mib(r['peak_convert'])} | {mib(r['rss_sparse'])} | {mib(r['peak_run'])} | "
                   f"{r['nbytes'] / 2**20:.1f} |")
    out.append("")
    return out


def render(result: dict, formats: Sequence[str], pngs: Sequence[str]) -> str:
    """The Markdown report for a :func:`sparsekit.bench.main` result; ``pngs`` are the
    plots' paths relative to the report.

    Example:
        >>> from sparsekit.bench import break_even, machine_info, memory_table, render
        >>> rows = [{"shape": [8, 8], "batch": 1, "sparsity": 0.9, "contender": c, "format": f,
        ...          "median": t} for c, f, t in (("torch-dense", "dense", 2e-3), ("torch-csr", "torch-csr", 1e-3),
        ...                                       ("scipy-csr", "scipy-csr", 3e-3), ("sparsekit-csr", "csr", 5e-4))]
        >>> result = {"machine": machine_info(), "simd": "scalar", "threads": 1, "rows": rows,
        ...           "break_even": break_even(rows), "bandwidth": [], "peak_rss": [],
        ...           "memory": memory_table([(8, 8)], [0.9], ["csr"]), "seconds": 1.0}
        >>> text = render(result, ["csr"], ["bench_speedup.png"])
        >>> "| 8x8 | 1 | hot | <= 0.9 |" in text, "![bench_speedup.png](bench_speedup.png)" in text
        (True, True)
    """
    out = _header(result)
    out.append(cache_note(result.get("cold") or {}))
    out.append(NOTES)
    out += ["## Summary at 90% sparsity\n", summary_table(result["rows"], formats), ""]
    out += ["## Medians (ms) and speedups\n", markdown_table(result["rows"], formats), ""]
    out += _break_even_section(result["break_even"])
    out += _bandwidth_section(result["bandwidth"])
    out += _memory_section(result["memory"], formats)
    out += _peak_rss_section(result["peak_rss"])
    out.append("## Plots\n")
    for p in pngs:
        out.append(f"![{p}]({p})\n")
    out.append(f"_Generated by `python -m sparsekit.bench` in {result['seconds']:.0f} s._\n")
    return "\n".join(out)
