"""The benchmark report runs end to end on a tiny grid and writes what it promises."""

from __future__ import annotations

import json
import os
import time

from sparsekit import bench


def test_report_on_tiny_grid(tmp_path):
    t0 = time.perf_counter()
    out = tmp_path / "bench"
    rc = bench.main(["--shapes", "64x48,40x64", "--batches", "1,9", "--sparsities", "0.5,0.9",
                     "--budget", "0.005", "--no-rss", "--out", str(out)])
    assert rc == 0
    assert time.perf_counter() - t0 < 20
    for name in ("report.md", "results.json", "bench_speedup.png", "bench_bandwidth.png", "bench_gflops.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "results.json").read_text())
    assert len(result["rows"]) == 2 * 2 * 2 * (len(bench.FORMATS) + len(bench.BASELINES))
    report = (out / "report.md").read_text()
    # The medians table parses: a header, a separator and one row per grid point, same width.
    lines = report.split("## Medians (ms) and speedups")[1].strip().splitlines()
    table = [ln for ln in lines[: 2 + 8] if ln.startswith("|")]
    assert len(table) == 2 + 8
    widths = {len(ln.strip("|").split("|")) for ln in table}
    assert widths == {6 + len(bench.FORMATS)}
    for ln in table[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert "x" in cells[0] and int(cells[1]) in (1, 9) and float(cells[2]) in (0.5, 0.9)
        for c in cells[3:6]:
            assert float(c) > 0
        for c in cells[6:]:
            ms, rest = c.split(" (")
            assert float(ms) > 0 and rest.endswith("x)")
    for png in ("bench_speedup.png", "bench_bandwidth.png", "bench_gflops.png"):
        assert f"]({png})" in report
    assert os.path.getsize(out / "bench_speedup.png") > 1000


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
