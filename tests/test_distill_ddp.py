"""sparsekit.distill with a DistributedDataParallel student: two gloo ranks on localhost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import torch

_SCRIPT = textwrap.dedent('''
    import multiprocessing as mp, os, sys

    def worker(rank, world, port, out):
        import torch, torch.distributed as dist  # imported in the ranks only: the launcher stays light
        os.environ["MASTER_ADDR"] = "127.0.0.1"; os.environ["MASTER_PORT"] = str(port)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        train(rank, out)
        dist.barrier()
        dist.destroy_process_group()
        # Results are saved and the group is gone: skip the interpreter's teardown, where
        # gloo's threads can abort an otherwise finished process.
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)

    def train(rank, out):
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

    if __name__ == "__main__":
        port, out = int(sys.argv[1]), sys.argv[2]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(r, 2, port, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(100)
        sys.exit(max(abs(p.exitcode if p.exitcode is not None else 99) for p in procs))
''')


def test_ddp_student_two_gloo_ranks(tmp_path):
    script = tmp_path / "ddp_distill.py"
    script.write_text(_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, str(script), str(port), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
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
