"""The seed-experiment and CNN channels-vs-blocks examples run end to end in their --quick modes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import sparsekit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "seed_experiment.py"


def test_seed_experiment_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("seed_experiment", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n = torch.get_num_threads()
    try:
        results = mod.main(["--quick", "--threads", "1", "--sparsities", "0", "0.5", "0.9",
                            "--plot", str(tmp_path / "plot.png"), "--json", str(tmp_path / "runs.json")])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert [r["final_sparsity"] for r in results] == [0.0, 0.5, 0.9]
    assert [r["achieved_sparsity"] for r in results] == [0.0, 0.5, 0.9]  # exact, from sparsity_report
    assert all(r["steps"] == 60 and r["train_loss"] > 0 and r["val_loss"] > 0 for r in results)
    assert "final sparsity" in out and "0.90" in out
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "runs.json").read_text())
    assert len(saved["runs"]) == 3 and len(saved["summary"]) == 3
    # the quick run is deterministic
    again = mod.run_one(mod.make_data(500, 40, 20, 3.0, 0), 0.5, 0, hidden=64, batch_size=128, lr=1e-3,
                        begin=10, end=50, frequency=1, total_steps=60)
    assert again["val_loss"] == results[1]["val_loss"]


CHANNELS_VS_BLOCKS = EXAMPLE.parent / "cnn_channels_vs_blocks.py"


def test_cnn_channels_vs_blocks_quick(tmp_path, capsys):
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("cnn_channels_vs_blocks", CHANNELS_VS_BLOCKS)
    mod = importlib.util.module_from_spec(spec)
    n = torch.get_num_threads()
    try:
        spec.loader.exec_module(mod)
        result = mod.main(["--quick", "--json", str(tmp_path / "rows.json")])
    finally:  # the example sets thread counts; leave the process as the other tests expect it
        torch.set_num_threads(n)
        sparsekit.set_num_threads(None)
    out = capsys.readouterr().out
    methods = ["dense", "channels + shrink", "blocks + sparse kernels", "channels + blocks"]
    table = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = table[0], [[c.strip() for c in line.strip("|").split("|")] for line in table[1:]]
    assert "speedup" in header and "accuracy" in header
    assert [(r[0], r[1]) for r in body] == [(t, m) for t in ("1", "2") for m in methods]
    for r in body:  # accuracy, then batch-1 and batch-32 "median / min" and "speedup (speedup)": all numbers
        float(r[3])
        for ms, speedup in ((r[6], r[7]), (r[8], r[9])):
            assert all(float(v) >= 0 for v in ms.split(" / "))
            assert all(float(v.strip("x()")) >= 0 for v in speedup.split())
    assert "Verdict" in out
    rows = {r["method"]: r for r in json.loads((tmp_path / "rows.json").read_text())["rows"]}
    assert list(rows) == methods and rows == {r["method"]: r for r in result["rows"]}
    dense, chan, blocks, both = (rows[m] for m in methods)
    assert dense["weight_sparsity"] == 0 and all(0 <= r["accuracy"] <= 1 for r in rows.values())
    # --quick lets every round pass: the rows reach real sparsity and shrink really shrinks
    assert 0 < chan["inner_channels_removed"] < 1 and chan["weights_stored"] < dense["weights_stored"]
    assert chan["resident_bytes"] < dense["resident_bytes"]
    assert blocks["weight_sparsity"] > 0.5 and both["weight_sparsity"] > chan["weight_sparsity"]
    assert all(set(r["timings"]) == {"t1_b1", "t1_b32", "t2_b1", "t2_b32"} for r in rows.values())
