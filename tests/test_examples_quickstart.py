"""examples/quickstart.py runs and prints what it measures (with a small hidden width)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_is_short():
    code = [ln for ln in QUICKSTART.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(code) <= 20, len(code)


def test_quickstart_runs_and_reports():
    res = subprocess.run([sys.executable, str(QUICKSTART), "128"], capture_output=True, text=True, timeout=180,
                         cwd=str(QUICKSTART.parent))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Linear" in out and "format" in out  # the per-layer conversion decisions
    diff = float(re.search(r"max \|sparse - dense\| = (\S+)", out).group(1))
    assert diff < 1e-4
    m = re.search(r"dense ([\d.]+) ms, sparse ([\d.]+) ms, ([\d.]+)x", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0
