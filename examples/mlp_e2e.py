#!/usr/bin/env python
"""End to end on the seed experiment's MLP (1000-1024-1024-1): prune to 95%, convert, compare, time.

Steps: build the regression data of the seed experiment (``make_regression``, 1000
features), train the MLP while pruning it to 95% with ``PolynomialDecay`` (or, with
``--steps 0``, prune a freshly initialised model one shot), bake the masks in, convert
with ``sparsekit.convert(format="auto")``, then check that the converted model's outputs
equal the masked dense model's on the validation set and time both at several batch
sizes and thread counts (interleaved runs; min and median over rounds). Also reports
resident weight bytes and file sizes (dense state_dict as safetensors vs sparsekit.save).

    python examples/mlp_e2e.py              # full run (the figures in docs/e2e.md)
    python examples/mlp_e2e.py --quick      # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

import sparsekit
from sparsekit.bench import resident_bytes
from sparsekit.convert import convert
from sparsekit.io import load, save
from sparsekit.prune import PolynomialDecay, Pruner, make_permanent, prune
from sparsekit.timing import interleaved


def make_data(n_samples: int, n_features: int, seed: int = 0):
    from sklearn.datasets import make_regression
    from sklearn.model_selection import train_test_split

    X, y = make_regression(n_samples=n_samples, n_features=n_features, n_informative=n_features // 2,
                           noise=3.0, random_state=seed)
    X, y = X / np.abs(X).max(), y / np.abs(y).max()
    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.2, random_state=seed)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return f(Xtr), f(ytr).reshape(-1, 1), f(Xva), f(yva).reshape(-1, 1)


def make_model(n_features: int = 1000, hidden: int = 1024) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def train_pruned(model, data, sparsity: float, steps: int, batch: int = 1024, seed: int = 0) -> None:
    """Adam + MSE with PolynomialDecay(0 -> sparsity) over the first 5/6 of the steps."""
    Xtr, ytr, _, _ = data
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    begin, end = steps // 6, (5 * steps) // 6
    schedule = PolynomialDecay(0.0, sparsity, begin_step=begin, end_step=max(end, begin + 1),
                               frequency=max(1, steps // 60))
    pruner = Pruner(model, schedule, optimizer=opt)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    while step < steps:
        perm = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(Xtr), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
            pruner.step()
            step += 1
            if step >= steps:
                break
    # The schedule ends at `sparsity`; one last prune makes it exact even for short runs.
    prune(model, sparsity)


def time_models(model: nn.Module, sparse: nn.Module, args: argparse.Namespace) -> list:
    """The dense and the converted model, interleaved, at every batch size and thread count."""
    timings = []
    gen = torch.Generator().manual_seed(1)
    for threads in args.threads:
        with sparsekit.threads(threads, with_torch=True):
            for b in args.batches:
                x = torch.randn(b, 1000, generator=gen)
                with torch.inference_mode():
                    s = interleaved({"dense": lambda: model(x), "sparse": lambda: sparse(x)}, rounds=args.rounds,
                                    round_s=0.0005 if args.quick else 0.02, warmup=3)
                t = {k: {"min_ms": min(v) * 1e3, "median_ms": statistics.median(v) * 1e3} for k, v in s.items()}
                row = {"threads": threads, "batch": b, "dense": t["dense"], "sparse": t["sparse"],
                       "speedup_min": t["dense"]["min_ms"] / t["sparse"]["min_ms"],
                       "speedup_median": t["dense"]["median_ms"] / t["sparse"]["median_ms"]}
                timings.append(row)
                print(f"threads {threads} batch {b:>4}: dense {t['dense']['min_ms']:.4f} ms (median "
                      f"{t['dense']['median_ms']:.4f}), sparse {t['sparse']['min_ms']:.4f} ms (median "
                      f"{t['sparse']['median_ms']:.4f}) -> {row['speedup_min']:.2f}x "
                      f"(median {row['speedup_median']:.2f}x)")
    return timings


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small data, no training, short timings")
    p.add_argument("--sparsity", type=float, default=0.95)
    p.add_argument("--steps", type=int, default=300, help="training steps while pruning (0: one-shot prune)")
    p.add_argument("--n-samples", type=int, default=10000)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--train-threads", type=int, default=1,
                   help="torch threads for training (1 is the most predictable on a shared machine)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.n_samples, args.batches, args.threads, args.rounds = 0, 300, [1], [1], 2
        torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.set_num_threads(args.train_threads)
    data = make_data(args.n_samples, 1000)
    model = make_model()
    t0 = time.time()
    if args.steps > 0:
        train_pruned(model, data, args.sparsity, args.steps)
    else:
        prune(model, args.sparsity)
    make_permanent(model)
    model.eval()
    train_s = time.time() - t0
    nnz = sum(int((m.weight != 0).sum()) for m in model if isinstance(m, nn.Linear))
    total = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    print(f"MLP 1000-1024-1024-1, {args.steps} training steps ({train_s:.0f}s): sparsity {1 - nnz / total:.4f} "
          f"({nnz} of {total} weights left)")

    t0 = time.time()
    sparse = convert(model, format="auto", batch_sizes=tuple(sorted(set(args.batches))),
                     time_budget_s=0.002 if args.quick else 0.03)
    print(f"convert(format='auto') took {time.time() - t0:.1f}s\n{sparse.sparsekit_summary}\n")

    _, _, Xva, yva = data
    with torch.inference_mode():
        ref, got = model(Xva), sparse(Xva)
    max_abs = float((got - ref).abs().max())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    mse_dense = float(nn.functional.mse_loss(ref, yva))
    mse_sparse = float(nn.functional.mse_loss(got, yva))
    print(f"outputs on {len(Xva)} validation rows: max |sparse - masked dense| = {max_abs:.2e}; "
          f"val MSE dense {mse_dense:.4e}, sparse {mse_sparse:.4e}")

    timings = time_models(model, sparse, args)

    with tempfile.TemporaryDirectory() as tmp:
        dense_path, sparse_path = os.path.join(tmp, "dense.safetensors"), os.path.join(tmp, "sparse.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dense_path)
        save(sparse, sparse_path)
        sizes = {"dense_file": os.path.getsize(dense_path), "sparse_file": os.path.getsize(sparse_path)}
        reloaded = load(sparse_path, make_model())
        with torch.inference_mode():
            torch.testing.assert_close(reloaded(Xva), got, rtol=0, atol=0)
    mem = {"dense_resident": resident_bytes(model), "sparse_resident": resident_bytes(sparse)}
    print(f"resident weights: dense {mem['dense_resident'] / 1e6:.2f} MB, sparse {mem['sparse_resident'] / 1e6:.2f} MB "
          f"({mem['sparse_resident'] / mem['dense_resident']:.3f}); files: dense {sizes['dense_file'] / 1e6:.2f} MB, "
          f"sparse {sizes['sparse_file'] / 1e6:.2f} MB ({sizes['sparse_file'] / sizes['dense_file']:.3f}); "
          f"reloaded model reproduces the outputs exactly")
    b1 = [r for r in timings if r["batch"] == 1]
    if b1:
        best = max(r["speedup_min"] for r in b1)
        print(f"batch-1 speedup target >= 5x: best {best:.2f}x -> {'met' if best >= 5 else 'NOT met'}")
    result = {"sparsity": 1 - nnz / total, "max_abs_diff": max_abs, "val_mse_dense": mse_dense,
              "val_mse_sparse": mse_sparse, "timings": timings, **mem, **sizes,
              "summary": sparse.sparsekit_summary.to_dict(), "cpu": sparsekit.cpu_info(),
              "args": vars(args)}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
