"""``sparsekit demo``: the end-to-end run (``--quick``), its table and its determinism."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from sparsekit.demo import QUICK, DemoConfig, format_table, run_demo

TINY = DemoConfig(hidden=64, dense_epochs=3, prune_epochs=2, finetune_epochs=1, latency_repeats=10, lr=1e-2,
                  train_limit=512, sparsity=0.9)

ROWS = ("test accuracy", "stored parameters", "bytes in memory", "bytes on disk", "batch-1 latency (median)")


def test_demo_quick_end_to_end():
    """`python -m sparsekit demo --quick` prints the dense-vs-sparse table (the command users run)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "sparsekit", "demo", "--quick", "--no-progress"],
                         capture_output=True, text=True, timeout=180)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Traceback" not in res.stderr
    for stage in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert stage in out
    for row in ROWS:
        assert row in out, out
    assert "dense" in out and "sparsekit" in out and "x fewer" in out and "x smaller" in out
    assert f"MLP 64-{QUICK.hidden}-{QUICK.hidden}-10" in out
    assert "done in" in out
    print(f"sparsekit demo --quick took {wall:.1f} s wall")  # shown with -s; the budget is 30 s on 2 idle cores


def test_demo_result_is_consistent(capsys):
    import sparsekit

    out = io.StringIO()
    torch_threads, sk_threads = torch.get_num_threads(), sparsekit.get_num_threads()
    r = run_demo(replace(TINY, threads=1), progress=True, out=out)
    assert (torch.get_num_threads(), sparsekit.get_num_threads()) == (torch_threads, sk_threads)  # restored
    assert r.threads == 1
    text = out.getvalue()
    bars = capsys.readouterr().err  # progress bars go to stderr, results to `out`
    for stage in ("1/4 train dense", "2/4 prune + fine-tune", "3/4 convert", "4/4 latency"):
        assert stage in bars and stage not in text
    # the model really is pruned, converted and equal to the pruned dense model
    assert r.achieved_sparsity == pytest.approx(0.9 * (64 * 64 + 10 * 64 + 0.5 / 0.9 * 64 * 64) / (2 * 64 * 64 + 640),
                                                abs=1e-3)
    assert r.max_abs_diff < 1e-4
    assert r.pruned.accuracy == pytest.approx(r.sparse.accuracy, abs=1 / r.n_test + 1e-9)
    assert r.dense.stored_values == r.pruned.stored_values == 64 * 64 + 64 + 64 * 64 + 64 + 640 + 10
    assert r.sparse.stored_values <= r.dense.stored_values
    assert all(s.latency_us > 0 for s in (r.dense, r.pruned, r.sparse))
    assert 0.5 < r.dense.accuracy <= 1.0  # a 3-epoch MLP on digits learns something
    assert r.n_train == 512 and r.n_test == 450
    assert format_table(r) in text
    assert "max |difference|" in text


def test_demo_is_deterministic_for_a_seed():
    a = run_demo(TINY, progress=False, out=io.StringIO())
    b = run_demo(TINY, progress=False, out=io.StringIO())
    c = run_demo(replace(TINY, seed=1), progress=False, out=io.StringIO())
    assert a.fingerprint == b.fingerprint
    assert (a.dense.accuracy, a.pruned.accuracy, a.sparse.accuracy) == (b.dense.accuracy, b.pruned.accuracy,
                                                                         b.sparse.accuracy)
    assert a.fingerprint != c.fingerprint


def test_demo_seed_option_reaches_the_run(monkeypatch, capsys):
    import sparsekit.demo as demo
    from sparsekit.cli import main

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda cfg, progress, out=None: seen.append((cfg, progress)))
    assert main(["demo", "--quick", "--seed", "7", "--no-progress"]) == 0
    assert main(["demo", "--seed", "3"]) == 0
    assert main(["demo", "--quick", "--threads", "2"]) == 0
    assert main(["demo", "--quick", "--threads", "0"]) == 0
    (quick, p1), (full, p2), (two, _), (default, _) = seen
    assert quick == replace(QUICK, seed=7) and not p1
    assert full == replace(demo.FULL, seed=3)
    assert quick.threads == full.threads == 1 and two.threads == 2 and default.threads is None
    assert not p2  # stderr is not a terminal under pytest: no progress bars
    capsys.readouterr()


def test_demo_without_scikit_learn_is_one_line_exit_1(monkeypatch, capsys):
    from sparsekit.cli import main

    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["demo", "--quick"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install scikit-learn" in err and "Traceback" not in err


def test_demo_data_does_not_import_scikit_learn():
    """The digits table is read from scikit-learn's files without importing it (that would map a
    second OpenMP runtime next to torch's)."""
    code = ("import sys, sparsekit.demo as d; x, y = d.load_digits_arrays(); "
            "print(x.shape, y.shape, int(y.min()), int(y.max()), 'sklearn' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["(1797,", "64)", "(1797,)", "0", "9", "False"]
