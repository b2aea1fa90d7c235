"""sparsekit.distill with a DistributedDataParallel student: two gloo ranks on localhost."""

from __future__ import annotations

import torch

_TRAIN = '''
    def train(rank, out):
        import os
        import torch
        from torch import nn
        import sparsekit
        from sparsekit.distill import MSE, Hidden
        torch.manual_seed(0)
        teacher = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 3))
        torch.manual_seed(rank)  # different init per rank: DDP broadcasts rank 0's weights
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        ddp = nn.parallel.DistributedDataParallel(model)
        pruner = sparsekit.Pruner(ddp, sparsekit.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=8, frequency=2))
        gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        data = [torch.randn(8, 6, generator=gen) for _ in range(3)]
        loss = [MSE(), Hidden("0", "0", weight=0.1)]  # 16 -> 24 projection outside DDP
        hist = sparsekit.distill(ddp, teacher, data, steps=16, pruner=pruner, loss=loss, lr=1e-2, accumulate=2,
                                 progress=False)
        torch.save({"masks": pruner.masks, "state": model.state_dict(), "loss": hist["loss"],
                    "proj": loss[1].projection.state_dict()}, os.path.join(out, f"rank{rank}.pt"))
'''


def test_ddp_student_two_gloo_ranks(tmp_path, run_gloo_script):
    proc = run_gloo_script(_TRAIN, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert sorted(r0["masks"]) == ["0.weight", "2.weight"]
    for k, m in r0["masks"].items():
        assert torch.equal(m, r1["masks"][k])
        assert int((~m).sum()) == round(0.75 * m.numel())
        assert torch.all(r0["state"][k][~m] == 0)
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k])
    for k in r0["proj"]:
        assert torch.equal(r0["proj"][k], r1["proj"][k])
    for r in (r0, r1):
        assert len(r["loss"]) == 16 and r["loss"][-1] < r["loss"][0]
