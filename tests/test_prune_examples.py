"""The seed-experiment example runs end to end in its --quick mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

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
