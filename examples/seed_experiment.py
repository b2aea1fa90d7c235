#!/usr/bin/env python
"""Reproduce the seed experiment: regression MLP pruned gradually to a final sparsity.

The TensorFlow pruning article this project grew from trained an MLP
1000-1024-1024-1 (ReLU) on ``make_regression(n_samples=10000, n_features=1000,
n_informative=500, noise=3)`` (inputs and targets scaled by their max absolute
values, 80/20 split) with Adam (lr 1e-3), batch 1024 and MSE, pruning with
PolynomialDecay from 0 to a final sparsity between steps 1000 and 5000, and
found validation loss falling with sparsity to a minimum near 95% while the
training loss rises.  This script sweeps the final sparsity over several
seeds, prints a table and plots mean train/val loss against final sparsity.

``--scale`` shrinks the step schedule proportionally (begin, end, frequency
and the total number of steps; 6000 * scale steps in all), ``--quick``
shrinks everything for a smoke test.  The figure docs/img/seed_experiment.png
was made on a shared 2-core CPU (about 28 minutes) with

    python examples/seed_experiment.py --scale 0.025 --seeds 0 1 --threads 1

i.e. PolynomialDecay(0 -> s) between steps 25 and 125 (every 2 steps) of 150
steps (19 epochs) instead of 1000 -> 5000; the full schedule (--scale 1) costs
about 40x more.

"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from sparsekit.prune import PolynomialDecay, Pruner, sparsity_report

SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99)


def make_data(n_samples: int, n_features: int, n_informative: int, noise: float, data_seed: int):
    from sklearn.datasets import make_regression
    from sklearn.model_selection import train_test_split

    X, y = make_regression(n_samples=n_samples, n_features=n_features, n_informative=n_informative,
                           noise=noise, random_state=data_seed)
    X = X / np.abs(X).max()
    y = y / np.abs(y).max()
    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.2, random_state=data_seed)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)
    return f(Xtr), f(ytr).reshape(-1, 1), f(Xva), f(yva).reshape(-1, 1)


def make_model(n_features: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


@torch.no_grad()
def mse(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    total = 0.0
    for i in range(0, len(X), batch):
        total += float(nn.functional.mse_loss(model(X[i:i + batch]), y[i:i + batch], reduction="sum"))
    return total / len(X)


def run_one(data, final_sparsity: float, seed: int, *, hidden: int, batch_size: int, lr: float,
            begin: int, end: int, frequency: int, total_steps: int) -> Dict[str, float]:
    Xtr, ytr, Xva, yva = data
    torch.manual_seed(seed)
    model = make_model(Xtr.shape[1], hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = PolynomialDecay(0.0, final_sparsity, begin_step=begin, end_step=end, frequency=frequency)
    pruner = Pruner(model, schedule, optimizer=opt)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    while step < total_steps:
        perm = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(Xtr), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            pruner.step()
            step += 1
            if step >= total_steps:
                break
    model.eval()
    report = sparsity_report(model)
    return {"final_sparsity": final_sparsity, "seed": seed, "train_loss": mse(model, Xtr, ytr),
            "val_loss": mse(model, Xva, yva), "achieved_sparsity": report.total["sparsity"],
            "remaining_weights": report.total["nnz"], "steps": step}


def summarize(results: List[Dict[str, float]], sparsities: Sequence[float]) -> List[Dict[str, float]]:
    rows = []
    for s in sparsities:
        rs = [r for r in results if r["final_sparsity"] == s]
        tr = np.array([r["train_loss"] for r in rs])
        va = np.array([r["val_loss"] for r in rs])
        rows.append({"final_sparsity": s, "remaining_weights": int(rs[0]["remaining_weights"]),
                     "achieved_sparsity": float(np.mean([r["achieved_sparsity"] for r in rs])),
                     "train_mean": float(tr.mean()), "train_std": float(tr.std()),
                     "val_mean": float(va.mean()), "val_std": float(va.std()), "n": len(rs)})
    return rows


def format_table(rows: List[Dict[str, float]]) -> str:
    head = f"{'final sparsity':>14}  {'achieved':>8}  {'remaining':>9}  {'train MSE (mean±std)':>22}  {'val MSE (mean±std)':>22}  seeds"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['final_sparsity']:>14.2f}  {r['achieved_sparsity']:>8.4f}  {r['remaining_weights']:>9d}  "
                     f"{r['train_mean']:>11.3e} ±{r['train_std']:>9.2e}  {r['val_mean']:>11.3e} ±{r['val_std']:>9.2e}  {r['n']:>5d}")
    return "\n".join(lines)


def plot(rows: List[Dict[str, float]], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, label, marker in (("train", "training loss", "o"), ("val", "validation loss", "s")):
        mean = np.array([r[f"{key}_mean"] for r in rows])
        std = np.array([r[f"{key}_std"] for r in rows])
        ax.errorbar(x, mean, yerr=std, marker=marker, capsize=3, label=label)
    ax.set_xticks(x, [f"{r['final_sparsity']:g}\n{r['remaining_weights'] / 1000:.0f}k" for r in rows])
    ax.set_xlabel("final sparsity (remaining weights)")
    ax.set_ylabel("MSE (mean over seeds)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny data/model/schedule for a smoke test")
    p.add_argument("--scale", type=float, default=1.0,
                   help="scale of the step schedule: begin 1000*s, end 5000*s, frequency 100*s, total 6000*s")
    p.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-samples", type=int, default=10000)
    p.add_argument("--n-features", type=int, default=1000)
    p.add_argument("--n-informative", type=int, default=500)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--plot", default=os.path.join(os.path.dirname(__file__), "..", "docs", "img", "seed_experiment.png"))
    p.add_argument("--json", default=None, help="write all per-run results here")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n_samples, args.n_features, args.n_informative, args.hidden = 500, 40, 20, 64
        args.batch_size, args.scale = 128, 0.01
        if args.sparsities == list(SPARSITIES):
            args.sparsities = [0.0, 0.5, 0.9]
        if args.seeds == [0, 1, 2]:
            args.seeds = [0]
    if not args.scale > 0:
        p.error("--scale must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> List[Dict[str, float]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    begin, end = round(1000 * args.scale), round(5000 * args.scale)
    frequency, total = max(1, round(100 * args.scale)), round(6000 * args.scale)
    data = make_data(args.n_samples, args.n_features, args.n_informative, 3.0, args.data_seed)
    print(f"data: train {tuple(data[0].shape)}, val {tuple(data[2].shape)}; MLP {args.n_features}-{args.hidden}-"
          f"{args.hidden}-1; schedule PolynomialDecay(0 -> s, begin {begin}, end {end}, freq {frequency}), "
          f"{total} steps ({total * args.batch_size / len(data[0]):.1f} epochs)", flush=True)
    results = []
    t0 = time.time()
    for s in args.sparsities:
        for seed in args.seeds:
            r = run_one(data, s, seed, hidden=args.hidden, batch_size=args.batch_size, lr=args.lr,
                        begin=begin, end=end, frequency=frequency, total_steps=total)
            results.append(r)
            if args.json:  # keep partial results if the sweep is interrupted
                with open(args.json, "w") as fh:
                    json.dump({"args": vars(args), "runs": results}, fh, indent=1)
            print(f"  s={s:<5g} seed={seed}: train {r['train_loss']:.4e}  val {r['val_loss']:.4e}  "
                  f"achieved {r['achieved_sparsity']:.4f}  ({time.time() - t0:.0f}s)", flush=True)
    rows = summarize(results, args.sparsities)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "runs": results, "summary": rows}, fh, indent=1)
    if not args.no_plot:
        plot(rows, args.plot, f"MLP {args.n_features}-{args.hidden}-{args.hidden}-1, {len(args.seeds)} seeds, "
                              f"PolynomialDecay {begin}->{end} of {total} steps")
        print(f"plot: {os.path.normpath(args.plot)}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
