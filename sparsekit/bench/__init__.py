"""Benchmark report: sparsekit against torch dense, torch CSR and scipy CSR, side by side.

Run ``python -m sparsekit.bench --quick --out bench-out`` (or ``sparsekit bench``). It
writes, under ``--out``:

* ``report.md``: machine, a table of medians and speedups for every grid point (batch 1
  twice: weights hot in cache and evicted, labelled ``cache: hot|cold``), break-even
  sparsities, bandwidth at batch 1 against a streaming read of the same bytes, memory;
* ``results.json``: every measurement;
* ``bench_speedup.png``, ``bench_bandwidth.png``, ``bench_gflops.png``.

The parts, one job each:

* :mod:`~sparsekit.bench.cases`: grid points, their weights, the contenders;
* :mod:`~sparsekit.bench.measure`: timing on :func:`sparsekit.timing.interleaved`, hot
  or cold, quiet-machine waits, the streaming-read reference, resident bytes of a model;
* :mod:`~sparsekit.bench.cache`: the two cache states, and how cold is made (the caches
  evicted by streaming a buffer of twice the last-level cache read from the machine);
* :mod:`~sparsekit.bench.sections`: what the report measures, section by section;
* :mod:`~sparsekit.bench.rss`: the peak-RSS probe, run in fresh interpreters by
  :func:`peak_rss` (``python -m sparsekit.bench.rss``);
* :mod:`~sparsekit.bench.report` and :mod:`~sparsekit.bench.plots`: Markdown and PNGs;
* :mod:`~sparsekit.bench.command`: the options and :func:`main`.

The pytest-benchmark suite and the acceptance floors in ``benchmarks/`` use the same
weights and contenders (:func:`contenders`) and the same eviction (:func:`cold_setup`).

Example:
    >>> from sparsekit import bench
    >>> bench.Case((4096, 4096), 1, 0.9).id
    '4096x4096-b1-s0.9'
"""

from sparsekit.bench.cache import (
    CACHE_STATES,
    EVICT_FACTOR,
    EVICT_MAX_BYTES,
    Evictor,
    cache_of,
    cold_setup,
    cold_setup_for,
    evictor,
    last_level_cache,
)
from sparsekit.bench.command import Plan, build_parser, main, measure_all, plan, write_outputs
from sparsekit.bench.cases import (
    ALL_FORMATS,
    BASELINES,
    FORMATS,
    QUANTIZED_BASELINES,
    QUANTIZED_FORMATS,
    FULL_BATCHES,
    FULL_SHAPES,
    FULL_SPARSITIES,
    QUICK_BATCHES,
    QUICK_SHAPES,
    QUICK_SPARSITIES,
    Case,
    TWIN_ROWS,
    Contender,
    baselines_for,
    contenders,
    format_spec,
    dense_weight,
    grid,
    kernel_bytes,
    sparse_weight,
)
from sparsekit.bench.measure import (
    COLD_ROUNDS,
    LOAD,
    LoadPolicy,
    cpu_busy,
    interleaved_times,
    measure,
    resident_bytes,
    stream_fn,
    wait_quiet,
)
from sparsekit.bench.plots import bandwidth_plot, gflops_plot, plots, speedup_plot
from sparsekit.bench.report import NOTES, cache_note, markdown_table, render, summary_table
from sparsekit.bench.sections import (
    PEAK_RSS_SHAPE,
    PEAK_RSS_SPARSITY,
    bandwidth,
    break_even,
    machine_info,
    memory_table,
    peak_rss,
    run_grid,
)

__all__ = [
    # the grid and its contenders
    "FORMATS",
    "BASELINES",
    "ALL_FORMATS",
    "QUANTIZED_FORMATS",
    "QUANTIZED_BASELINES",
    "baselines_for",
    "format_spec",
    "FULL_SHAPES",
    "FULL_BATCHES",
    "FULL_SPARSITIES",
    "QUICK_SHAPES",
    "QUICK_BATCHES",
    "QUICK_SPARSITIES",
    "Case",
    "grid",
    "dense_weight",
    "sparse_weight",
    "kernel_bytes",
    "Contender",
    "contenders",
    "TWIN_ROWS",
    # cache states
    "CACHE_STATES",
    "EVICT_FACTOR",
    "EVICT_MAX_BYTES",
    "last_level_cache",
    "Evictor",
    "evictor",
    "cold_setup",
    "cold_setup_for",
    "cache_of",
    # measuring
    "LoadPolicy",
    "LOAD",
    "cpu_busy",
    "wait_quiet",
    "COLD_ROUNDS",
    "measure",
    "interleaved_times",
    "stream_fn",
    "resident_bytes",
    # the report's sections
    "PEAK_RSS_SHAPE",
    "PEAK_RSS_SPARSITY",
    "machine_info",
    "run_grid",
    "bandwidth",
    "memory_table",
    "break_even",
    "peak_rss",
    # rendering
    "NOTES",
    "cache_note",
    "markdown_table",
    "summary_table",
    "render",
    "speedup_plot",
    "bandwidth_plot",
    "gflops_plot",
    "plots",
    # the command
    "build_parser",
    "Plan",
    "plan",
    "measure_all",
    "write_outputs",
    "main",
]
