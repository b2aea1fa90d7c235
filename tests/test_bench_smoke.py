"""The benchmark report runs end to end on a tiny grid and writes what it promises."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from sparsekit import bench


def test_report_on_tiny_grid(tmp_path):
    t0 = time.perf_counter()
    out = tmp_path / "bench"
    rc = bench.main(["--shapes", "64x48,40x64", "--batches", "1,9", "--sparsities", "0.5,0.9",
                     "--budget", "0.005", "--cold-rounds", "2", "--no-rss", "--out", str(out)])
    assert rc == 0
    assert time.perf_counter() - t0 < 30
    for name in ("report.md", "results.json", "bench_speedup.png", "bench_bandwidth.png", "bench_gflops.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "results.json").read_text())
    contenders = len(bench.FORMATS) + len(bench.BASELINES)
    # Every point hot; the batch-1 points (2 shapes x 2 sparsities) also cold.
    assert len(result["rows"]) == (2 * 2 * 2 + 2 * 2) * contenders
    by_cache = {c: [r for r in result["rows"] if r["cache"] == c] for c in ("hot", "cold")}
    assert len(by_cache["hot"]) == 8 * contenders and len(by_cache["cold"]) == 4 * contenders
    assert {r["batch"] for r in by_cache["cold"]} == {1}
    assert {r["contender"] for r in by_cache["cold"]} == {r["contender"] for r in by_cache["hot"]}
    assert all(r["evict_s"] > 0 and r["calls"] == 2 for r in by_cache["cold"])
    # How cold was made: a buffer larger than the last-level cache read from this machine.
    cold = result["cold"]
    assert cold["llc_bytes"] == bench.last_level_cache()[0]
    assert cold["evict_bytes"] > cold["llc_bytes"] and cold["evicts_llc"] and cold["rounds"] == 2
    assert {(r["cache"], r["format"]) for r in result["bandwidth"]} == {
        (c, f) for c in ("hot", "cold") for f in ("csr", "4x1")}
    assert {b["cache"] for b in result["break_even"]} == {"hot", "cold"}
    report = (out / "report.md").read_text()
    assert f"streaming read of a {cold['evict_bytes'] / 2**20:.0f} MiB buffer" in report
    # The medians table parses: a header, a separator and one row per grid point and cache state.
    lines = report.split("## Medians (ms) and speedups")[1].strip().splitlines()
    table = [ln for ln in lines[: 2 + 12] if ln.startswith("|")]
    assert len(table) == 2 + 12
    widths = {len(ln.strip("|").split("|")) for ln in table}
    assert widths == {7 + len(bench.FORMATS)}
    caches = []
    for ln in table[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert "x" in cells[0] and int(cells[1]) in (1, 9) and float(cells[3]) in (0.5, 0.9)
        caches.append((int(cells[1]), cells[2]))
        for c in cells[4:7]:
            assert float(c) > 0
        for c in cells[7:]:
            ms, rest = c.split(" (")
            assert float(ms) > 0 and rest.endswith("x)")
    assert sorted(caches) == sorted([(1, "hot")] * 4 + [(1, "cold")] * 4 + [(9, "hot")] * 4)
    summary = report.split("## Summary at 90% sparsity")[1].split("##")[0]
    assert "| hot |" in summary and "| cold |" in summary
    bandwidth = report.split("## Batch 1: achieved bandwidth")[1].split("##")[0]
    assert "| hot |" in bandwidth and "| cold |" in bandwidth
    for png in ("bench_speedup.png", "bench_bandwidth.png", "bench_gflops.png"):
        assert f"]({png})" in report
    assert os.path.getsize(out / "bench_speedup.png") > 1000


def test_no_cold_measures_hot_only(tmp_path):
    result = bench.measure_all(*_tiny_plan(["--no-cold"]), log=lambda line: None)
    assert {r["cache"] for r in result["rows"] + result["bandwidth"]} == {"hot"}
    assert result["cold"] == {}
    assert "Every figure is *hot*" in bench.cache_note(result["cold"])


def _tiny_plan(extra):
    args = bench.build_parser().parse_args(["--shapes", "32x16", "--batches", "1", "--sparsities", "0.9",
                                            "--formats", "csr", "--budget", "0.001", "--no-rss", *extra])
    return bench.plan(args), args


def test_evictor_exceeds_the_last_level_cache_it_read():
    llc, source = bench.last_level_cache()
    ev = bench.evictor()
    assert (ev.llc_bytes, ev.llc_source) == (llc, source)
    assert ev.nbytes == min(bench.EVICT_FACTOR * llc, bench.EVICT_MAX_BYTES) // 64 * 64
    assert ev.nbytes <= bench.EVICT_MAX_BYTES
    if bench.EVICT_FACTOR * llc <= bench.EVICT_MAX_BYTES:
        assert ev.nbytes >= 2 * llc - 64 and ev.evicts_llc
    assert ev.threads >= 1
    small = bench.Evictor(llc_bytes=3 << 20, threads=1)
    assert small.nbytes == 6 << 20 and small.evicts_llc and small.llc_source == "given"
    assert not bench.Evictor(llc_bytes=bench.EVICT_MAX_BYTES, threads=1).evicts_llc  # said, not hidden


def test_last_level_cache_reads_sysfs(tmp_path):
    for index, size in (("index0", "48K"), ("index2", "2048K"), ("index3", "266240K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    assert bench.last_level_cache(str(tmp_path)) == (266240 << 10, "sysfs")
    nbytes, source = bench.last_level_cache(str(tmp_path / "missing"))
    assert nbytes > 0 and source in ("sysconf", "assumed")


def test_cold_measurement_evicts_before_every_call(monkeypatch):
    """Structure, not speed: every call of every contender follows an eviction that came
    after that contender's previous call."""
    monkeypatch.setattr(bench.LOAD, "retries", 0)  # one attempt: no repeat of a noisy measurement
    events = []
    evict = bench.Evictor(llc_bytes=1 << 16, threads=1)
    setup = bench.cold_setup([np.ones(4, np.float32)], evict=evict)
    st = bench.measure({"a": lambda: events.append("a"), "b": lambda: events.append("b")},
                       cold=lambda: (setup(), events.append("evict")), cold_rounds=4)
    assert st["a"]["calls"] == st["b"]["calls"] == 4 and st["a"]["evict_s"] > 0
    rounds = "".join("|" if e == "evict" else e for e in events).split("|")[1:]
    assert sorted(rounds) == ["ab", "ab", "ab", "ba", "ba"]  # a warm-up round, then the order rotates
    for name in ("a", "b"):
        assert events.count(name) == events.count("evict")


def test_every_contender_names_its_activations():
    cs = bench.contenders(bench.Case((16, 8), 1, 0.5), formats=("csr",))
    for c in cs.values():
        assert c.activations, c.name
        assert any(np.asarray(a).size == 8 for a in c.activations), c.name  # x: one row of 8 inputs
        assert c.warm_code is None  # a layer this small has no smaller twin
    big = bench.contenders(bench.Case((bench.TWIN_ROWS + 16, 8), 1, 0.5), formats=("csr",))
    for c in big.values():
        assert c.warm_code is not None, c.name
        c.warm_code()  # the same call on a TWIN_ROWS-row layer of other weights


def test_break_even_interpolates():
    rows = []
    for s, dense, sk in ((0.5, 1.0, 2.0), (0.7, 1.0, 0.5), (0.9, 1.0, 0.25)):
        rows.append({"shape": [8, 8], "batch": 1, "sparsity": s, "contender": "torch-dense", "median": dense,
                     "format": "dense"})
        rows.append({"shape": [8, 8], "batch": 1, "sparsity": s, "contender": "sparsekit-csr", "median": sk,
                     "format": "csr"})
    (be,) = bench.break_even(rows)
    assert 0.5 < be["break_even"] < 0.7
    assert abs(be["break_even"] - 0.6) < 1e-9  # log-linear: speedup 0.5 -> 2 crosses 1 halfway


def test_gather_ceiling_program_builds_and_runs(tmp_path):
    """benchmarks/cpp/gather_ceiling.cpp (quoted in the README) still compiles and its loops
    agree: run it and parse its report (no timing is asserted)."""
    import re
    import shutil
    import subprocess

    import pytest

    import sparsekit

    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None or "avx2" not in sparsekit.cpu_info()["simd_available"]:
        pytest.skip("needs a C++ compiler and an AVX2 CPU")
    src = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "cpp", "gather_ceiling.cpp")
    exe = tmp_path / "gather_ceiling"
    subprocess.run([cxx, "-O2", "-mavx2", "-mfma", "-std=c++17", src, "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=120).stdout
    figures = dict(re.findall(r"^(spmv|gather|assemble|stream)\s+([0-9.]+) ns/value", out, re.M))
    assert set(figures) == {"spmv", "gather", "assemble", "stream"}, out
    assert all(float(v) > 0 for v in figures.values())
    assert re.search(r"ceiling: assemble reaches \d+% of the streaming read; spmv \d+%", out)
    err = float(re.search(r"max \|error\| ([0-9.e+-]+)", out).group(1))
    assert err < 1e-4, out  # both loops against a float64 reference (410 values per row)
