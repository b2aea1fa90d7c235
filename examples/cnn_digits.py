#!/usr/bin/env python
"""A ResNet-18-style CNN on scikit-learn's digits: train, block-prune, fine-tune, convert, time.

The network is ResNet-18's layout (a 3x3 stem, four stages of two BasicBlocks with
strides 1-2-2-2, global average pooling, a linear head) at base width 16 instead of 64
(16-32-64-128 channels), on the 8x8 digits upsampled to 32x32. Each conv-BN(-ReLU)
run is an ``nn.Sequential``, so ``sparsekit.convert`` folds the BatchNorms and fuses the
ReLUs into the sparse convolutions.

Steps: train dense; prune every convolution but the stem one shot to ``--sparsity``
(default 0.85) in ``(4, 1)`` blocks of the ``(out, in*kh*kw)`` weight view (4 output
channels x 1 input tap); fine-tune with the masks enforced; bake the masks in; convert
(``format="auto"``, timed at the real feature-map sizes); check the converted model
against the masked dense one; time batch 1 and 32; report memory and file sizes.

    python examples/cnn_digits.py            # full run (figures in docs/e2e.md)
    python examples/cnn_digits.py --quick    # smoke test
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
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import sparsekit
from sparsekit.bench import resident_bytes
from sparsekit.convert import convert
from sparsekit.io import load, save
from sparsekit.prune import make_permanent, prune
from sparsekit.timing import interleaved


def conv_bn(cin: int, cout: int, k: int, stride: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(conv_bn(cin, cout, 3, stride, True), conv_bn(cout, cout, 3, 1, False))
        self.shortcut = conv_bn(cin, cout, 1, stride, False) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x):
        return F.relu(self.branch(x) + self.shortcut(x))


class ResNet18Style(nn.Module):
    def __init__(self, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.stem = conv_bn(1, w[0], 3, 1, True)
        blocks, cin = [], w[0]
        for i, cout in enumerate(w):
            for j in range(2):
                blocks.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load_digits(size: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    X = F.interpolate(X, size=(size, size), mode="bilinear", align_corners=False)
    X = (X - X.mean()) / X.std()
    y = torch.tensor(d.target)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=d.target)
    return X[idx_tr], y[idx_tr], X[idx_te], y[idx_te]


def shifted_batches(X: torch.Tensor, y: torch.Tensor, batch: int, gen: torch.Generator):
    """One epoch of shuffled ``(images, labels)`` minibatches, each image batch shifted by a random
    offset of up to 2 pixels (light augmentation); ``gen`` draws the order and the shifts."""
    perm = torch.randperm(len(X), generator=gen)
    for i in range(0, len(X), batch):
        idx = perm[i:i + batch]
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
        yield torch.roll(X[idx], shifts=(dy, dx), dims=(2, 3)), y[idx]


def train(model, X, y, epochs: int, lr: float, seed: int = 0, batch: int = 64) -> None:
    if epochs <= 0:
        model.eval()
        return
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(X) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for xb, yb in shifted_batches(X, y, batch, gen):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    model.eval()


@torch.inference_mode()
def accuracy(model, X, y) -> float:
    return float((model(X).argmax(1) == y).float().mean())


def convert_variants(model: nn.Module, specs: dict, Xte: torch.Tensor, yte: torch.Tensor, budget: float,
                     acc_ft: float) -> tuple:
    """Each conversion of ``specs``, checked against the masked dense model: (variants, max |logit
    difference|, accuracy), each a dict by name."""
    variants, max_abs, acc_sparse = {}, {}, {}
    example = Xte[:1]
    with torch.inference_mode():
        ref = model(Xte)
    for name, kw in specs.items():
        t0 = time.time()
        variants[name] = convert(model, example_inputs=example, time_budget_s=budget, **kw)
        formats = {}
        for r in variants[name].sparsekit_summary:
            formats[r.format] = formats.get(r.format, 0) + 1
        with torch.inference_mode():
            got = variants[name](Xte)
        max_abs[name] = float((got - ref).abs().max())
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # BN folding reorders float32 rounding
        acc_sparse[name] = accuracy(variants[name], Xte, yte)
        print(f"convert {name}: {time.time() - t0:.1f}s, formats {formats}; max |logit diff| vs masked dense "
              f"{max_abs[name]:.2e}; accuracy {acc_sparse[name]:.4f} (masked dense {acc_ft:.4f})")
    return variants, max_abs, acc_sparse


def time_models(model: nn.Module, variants: dict, Xte: torch.Tensor, args: argparse.Namespace) -> list:
    """Dense and every converted variant at batch 1 (and 32), interleaved, per thread count."""
    timings = []
    for threads in args.threads:
        with sparsekit.threads(threads, with_torch=True):
            for b in (1,) if args.quick else (1, 32):
                x = Xte[:b].contiguous()
                fns = {"dense": lambda: model(x)}
                fns.update({name: (lambda m=m: m(x)) for name, m in variants.items()})
                with torch.inference_mode():
                    s = interleaved(fns, rounds=args.rounds, round_s=0.0005 if args.quick else 0.05, warmup=3)
                t = {k: {"min_ms": min(v) * 1e3, "median_ms": statistics.median(v) * 1e3} for k, v in s.items()}
                row = {"threads": threads, "batch": b, "ms": t,
                       "speedup_min": {k: t["dense"]["min_ms"] / t[k]["min_ms"] for k in variants},
                       "speedup_median": {k: t["dense"]["median_ms"] / t[k]["median_ms"] for k in variants}}
                timings.append(row)
                print(f"threads {threads} batch {b:>2}, ms min (median): " + ", ".join(
                    f"{k} {v['min_ms']:.3f} ({v['median_ms']:.3f})" for k, v in t.items())
                    + " | speedup min (median): "
                    + ", ".join(f"{k} {row['speedup_min'][k]:.2f}x ({row['speedup_median'][k]:.2f}x)"
                                for k in variants))
    return timings


def file_sizes(model: nn.Module, variants: dict, Xte: torch.Tensor, width: int) -> dict:
    """Bytes of the dense safetensors file and of each variant saved with sparsekit.save;
    each variant is loaded back and must reproduce its outputs exactly."""
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        dp = os.path.join(tmp, "dense.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, dp)
        sizes["dense"] = os.path.getsize(dp)
        for name, m in variants.items():
            sp = os.path.join(tmp, f"{name}.safetensors")
            save(m, sp)
            sizes[name] = os.path.getsize(sp)
            reloaded = load(sp, ResNet18Style(width))
            with torch.inference_mode():
                torch.testing.assert_close(reloaded(Xte), m(Xte), rtol=0, atol=0)
    return sizes


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--size", type=int, default=32, help="image side after upsampling")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--sparsity", type=float, default=0.85)
    p.add_argument("--block", type=int, nargs=2, default=[4, 1])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--train-threads", type=int, default=1,
                   help="torch threads for training (1 is the most predictable on a shared machine)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        # smoke test: no training (accuracies are chance level), one thread, minimal timing
        args.size, args.width, args.epochs, args.finetune_epochs, args.threads, args.rounds = 16, 8, 0, 0, [1], 1
        torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.set_num_threads(args.train_threads)
    Xtr, ytr, Xte, yte = load_digits(args.size)
    if args.quick:
        Xtr, ytr, Xte, yte = Xtr[:128], ytr[:128], Xte[:64], yte[:64]
    model = ResNet18Style(args.width)
    t0 = time.time()
    train(model, Xtr, ytr, args.epochs, lr=0.05)
    acc_dense = accuracy(model, Xte, yte)
    t_train = time.time() - t0
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("stem")]
    prune(model, args.sparsity, granularity=tuple(args.block), include=convs)
    acc_pruned = accuracy(model, Xte, yte)
    t0 = time.time()
    train(model, Xtr, ytr, args.finetune_epochs, lr=0.01, seed=1)
    acc_ft = accuracy(model, Xte, yte)
    t_ft = time.time() - t0
    make_permanent(model)
    model.eval()
    conv_nnz = sum(int((model.get_submodule(n).weight != 0).sum()) for n in convs)
    conv_total = sum(model.get_submodule(n).weight.numel() for n in convs)
    print(f"ResNet-18-style width {args.width} on digits {args.size}x{args.size}: {len(Xtr)} train / {len(Xte)} test")
    print(f"accuracy: dense {acc_dense:.4f} ({t_train:.0f}s) -> pruned {args.sparsity:.0%} in blocks "
          f"{tuple(args.block)} {acc_pruned:.4f} -> fine-tuned {acc_ft:.4f} ({t_ft:.0f}s); conv sparsity "
          f"{1 - conv_nnz / conv_total:.4f}")

    # Three conversions: "auto" timed at batch 1 and 32 (never slower than dense at either),
    # "auto" timed at batch 1 only (a latency deployment), and every conv forced to the
    # pruning block (no timing).
    budget = 0.001 if args.quick else 0.03
    specs = {"auto_b1_b32": dict(format="auto", batch_sizes=(1, 32)),
             "auto_b1": dict(format="auto", batch_sizes=(1,)),
             f"bsr{args.block[0]}x{args.block[1]}": dict(format={"stem.*": "dense", "head": "dense",
                                                                "*": tuple(args.block)})}
    if args.quick:
        specs.pop("auto_b1_b32")
    variants, max_abs, acc_sparse = convert_variants(model, specs, Xte, yte, budget, acc_ft)
    print(f"\n{variants[next(iter(variants))].sparsekit_summary}\n")

    timings = time_models(model, variants, Xte, args)
    sizes = file_sizes(model, variants, Xte, args.width)
    mem = {"dense": resident_bytes(model)}
    mem.update({name: resident_bytes(m) for name, m in variants.items()})
    print("resident weights kB: " + ", ".join(f"{k} {v / 1e3:.1f}" for k, v in mem.items())
          + "; files kB: " + ", ".join(f"{k} {v / 1e3:.1f}" for k, v in sizes.items())
          + "; every reloaded model reproduces its outputs exactly")
    result = {"acc_dense": acc_dense, "acc_pruned": acc_pruned, "acc_finetuned": acc_ft, "acc_sparse": acc_sparse,
              "conv_sparsity": 1 - conv_nnz / conv_total, "max_abs_diff": max_abs, "timings": timings,
              "resident_bytes": mem, "file_bytes": sizes,
              "summaries": {k: m.sparsekit_summary.to_dict() for k, m in variants.items()},
              "cpu": sparsekit.cpu_info(), "args": vars(args)}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
