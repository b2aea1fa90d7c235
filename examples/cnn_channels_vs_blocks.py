#!/usr/bin/env python
"""Channels + shrink or blocks + sparse kernels? Both on one trained CNN, at one accuracy bar.

The model, data and training are those of ``examples/cnn_digits.py`` (a ResNet-18-style CNN
on scikit-learn's digits). The training images are split into a training and a validation
set; the dense model's validation accuracy minus ``--drop`` (default one point) is the bar
every pruned model must clear. Three ways down from the same dense model:

- **channels + shrink**: ``iterative_prune`` removes the inner channels of every residual
  branch (the output of its first 3x3 conv, read by its second) in rounds of rising
  sparsity, fine-tuning after each, as long as validation accuracy clears the bar; ``shrink``
  then turns the pruned model into a smaller dense one (same outputs). Only the inner
  channels can go: the others feed residual sums. By default the mask sits on the second
  conv's input channels (``granularity="inputs"``), so every pruned channel is removed
  exactly; ``--channel-mask channels`` masks the first conv's filters instead
  (``granularity="channels"``), where a dead filter still leaves its BatchNorm's shift as a
  constant feature map that ``shrink`` cannot fold through the padded 3x3 conv (it keeps
  those channels; see the "inner channels removed" it prints).
- **blocks + sparse kernels**: the same loop in ``--block`` blocks (default ``(4, 1)``) on
  every conv but the stem, then ``sparsekit.convert(format="auto")`` timed at the real
  feature-map sizes, at the batch sizes of ``--convert-batches`` (default 1: a latency
  deployment; with ``1 32`` "auto" keeps only layers that win at both, and on this CNN at
  85% that was none - see docs/e2e.md).
- **channels + blocks** (skip with ``--no-combined``): the shrunk model, block-pruned by the
  same loop to the same bar, then converted.

Every model runs with its BatchNorms folded into the convolutions, as a deployment would
(folding keeps the zeros of pruned blocks, so it happens before ``convert``). All of them are timed side by side
in interleaved rounds at batch 1 and 32, per thread count; the table and a verdict computed
from it are printed. Accuracy is on the held-out test images.

    python examples/cnn_channels_vs_blocks.py                 # full run
    python examples/cnn_channels_vs_blocks.py --quick         # smoke test
    python examples/cnn_channels_vs_blocks.py --json rows.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the model and data of examples/cnn_digits.py

import sparsekit  # noqa: E402
from cnn_digits import ResNet18Style, accuracy, load_digits, shifted_batches, train  # noqa: E402
from sparsekit.bench import resident_bytes  # noqa: E402
from sparsekit.convert import convert  # noqa: E402
from sparsekit.prune import iterative_prune, shrink  # noqa: E402
from sparsekit.timing import interleaved  # noqa: E402

METHODS = ("dense", "channels + shrink", "blocks + sparse kernels", "channels + blocks")


class ShiftedBatches:
    """The training minibatches of ``cnn_digits.train`` as a re-iterable loader: every pass
    is one epoch with a fresh order and fresh shifts."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch: int = 64, seed: int = 0) -> None:
        self.X, self.y, self.batch = X, y, batch
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.X) // self.batch)

    def __iter__(self):
        return shifted_batches(self.X, self.y, self.batch, self.gen)


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def fold_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every Conv2d -> BatchNorm2d pair of a Sequential fused into one conv.
    What followed the BatchNorm moves up (``convert`` then fuses a ReLU right after the conv); the
    Sequential keeps its length with an Identity at the end."""
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        mods, out, i = list(seq), [], 0
        while i < len(mods):
            if i + 1 < len(mods) and isinstance(mods[i], nn.Conv2d) and isinstance(mods[i + 1], nn.BatchNorm2d):
                out.append(fuse_conv_bn_eval(mods[i], mods[i + 1]))
                i += 2
            else:
                out.append(mods[i])
                i += 1
        for j, m in enumerate(out + [nn.Identity()] * (len(mods) - len(out))):
            seq[j] = m
    return model


def conv_names(model: nn.Module, suffix: str = "") -> List[str]:
    """Conv2d layers but the stem's, optionally only those whose name ends with ``suffix``."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and not n.startswith("stem") and n.endswith(suffix)]


def conv_weights(model: nn.Module) -> tuple:
    """(nonzero, total) weights over every Conv2d of ``model``."""
    ws = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(int((w != 0).sum()) for w in ws), sum(w.numel() for w in ws)


def weights_stored(model: nn.Module) -> int:
    """Weight values a model keeps: Conv2d / Linear weights, or what a converted model stores."""
    summary = getattr(model, "sparsekit_summary", None)
    if summary is None:
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return sum(round((1.0 if r.format == "dense" else r.stored_density) * r.shape[0] * r.shape[1])
               for r in summary)


def formats_of(model: nn.Module) -> Dict[str, int] | None:
    """Layers per storage format of a converted model (None for a plain torch model)."""
    summary = getattr(model, "sparsekit_summary", None)
    if summary is None:
        return None
    formats: Dict[str, int] = {}
    for r in summary:
        formats[r.format] = formats.get(r.format, 0) + 1
    return formats


def prune_loop(model: nn.Module, data: dict, args: argparse.Namespace, *, granularity, include: List[str],
               rate: float, label: str):
    """iterative_prune to the accuracy bar: rounds of rising sparsity, ``--round-epochs`` of
    fine-tuning each; the model ends holding the sparsest round that cleared the bar, masks baked in."""
    t0 = time.time()
    res = iterative_prune(
        model, ShiftedBatches(data["Xtr"], data["ytr"], seed=args.seed + 1), [(data["Xval"], data["yval"])],
        F.cross_entropy,
        lambda m: torch.optim.SGD(m.parameters(), lr=args.ft_lr, momentum=0.9, weight_decay=5e-4, nesterov=True),
        rate=rate, max_rounds=args.max_rounds, threshold=data["threshold"], metric=top1,
        epochs_per_round=args.round_epochs, granularity=granularity, include=include, permanent=True)
    model.eval()
    print(f"\n{label}: {time.time() - t0:.0f}s\n{res}")
    return res


def convert_checked(model: nn.Module, data: dict, args: argparse.Namespace, label: str) -> nn.Module:
    """convert(format="auto") timed at ``--convert-batches`` on the real input size; outputs checked."""
    t0 = time.time()
    fast = convert(model, format="auto", example_inputs=data["Xte"][:1], batch_sizes=tuple(args.convert_batches),
                   time_budget_s=args.convert_budget)
    with torch.inference_mode():
        torch.testing.assert_close(fast(data["Xte"]), model(data["Xte"]), rtol=1e-4, atol=1e-4)
    print(f"convert {label}: {time.time() - t0:.0f}s, formats {formats_of(fast)}")
    return fast


def make_row(method: str, timed: nn.Module, reference: nn.Module, dense: nn.Module, data: dict,
             res=None, inner: tuple = (0, 0), stores_zeros: bool = False) -> dict:
    """One table row (timings are added later). ``reference`` is the torch model before conversion;
    with ``stores_zeros`` it runs dense, so only the weights it no longer has count as removed."""
    nnz, size = conv_weights(reference)
    _, total = conv_weights(dense)
    return {"method": method, "weight_sparsity": 1 - (size if stores_zeros else nnz) / total,
            "inner_channels_removed": (1 - inner[0] / inner[1]) if inner[1] else 0.0,
            "accuracy": accuracy(timed, data["Xte"], data["yte"]),
            "val_accuracy": accuracy(timed, data["Xval"], data["yval"]),
            "weights_stored": weights_stored(timed), "resident_bytes": resident_bytes(timed),
            "formats": formats_of(timed),
            "rounds": [{"sparsity": r.sparsity, "val_accuracy": r.metric, "accepted": r.accepted}
                       for r in res.rounds] if res is not None else []}


def channels_method(dense: nn.Module, data: dict, args: argparse.Namespace) -> tuple:
    """Inner channels pruned to the bar, then shrunk: (shrunk torch model, row, (inner channels
    left, inner channels of the dense model))."""
    model = copy.deepcopy(dense)
    mask_on = {"inputs": "branch.1.0", "channels": "branch.0.0"}[args.channel_mask]
    res = prune_loop(model, data, args, granularity=args.channel_mask, include=conv_names(model, mask_on),
                     rate=args.channel_rate, label=f"channels ({args.channel_mask} of the branch convs)")
    small = shrink(model).eval()
    with torch.inference_mode():
        torch.testing.assert_close(small(data["Xte"]), model(data["Xte"]), rtol=1e-4, atol=1e-4)
    inner_names = conv_names(dense, "branch.0.0")
    inner = (sum(small.get_submodule(n).out_channels for n in inner_names),
             sum(dense.get_submodule(n).out_channels for n in inner_names))
    print(f"shrink: inner channels {inner[1]} -> {inner[0]}; parameters "
          f"{sum(p.numel() for p in dense.parameters())} -> {sum(p.numel() for p in small.parameters())}")
    return small, make_row(METHODS[1], fold_bn(small), small, dense, data, res, inner, stores_zeros=True), inner


def blocks_method(start: nn.Module, dense: nn.Module, data: dict, args: argparse.Namespace, method: str,
                  inner: tuple = (0, 0)) -> tuple:
    """``start`` block-pruned to the bar and converted: (converted model, row)."""
    model = copy.deepcopy(start)
    res = prune_loop(model, data, args, granularity=tuple(args.block), include=conv_names(model),
                     rate=args.block_rate, label=f"{method} ({args.block[0]}x{args.block[1]} blocks)")
    # BatchNorms folded first, as in the dense rows: convert folds them only into layers it makes sparse
    fast = convert_checked(fold_bn(model), data, args, method)
    return fast, make_row(method, fast, model, dense, data, res, inner)


def time_all(models: Dict[str, nn.Module], rows: Dict[str, dict], X: torch.Tensor,
             args: argparse.Namespace) -> None:
    """Every model at batch 1 and 32 per thread count, interleaved; fills rows[m]["timings"]."""
    for row in rows.values():
        row["timings"] = {}
    for threads in args.threads:
        with sparsekit.threads(threads, with_torch=True):
            for b in (1, 32):
                x = X[:b].contiguous()
                fns = {name: (lambda m=m, x=x: m(x)) for name, m in models.items()}
                with torch.inference_mode():
                    s = interleaved(fns, rounds=args.rounds, round_s=args.round_s, warmup=3, rotate=True)
                base = s["dense"]
                for name, v in s.items():
                    rows[name]["timings"][f"t{threads}_b{b}"] = {
                        "threads": threads, "batch": b, "median_ms": statistics.median(v) * 1e3,
                        "min_ms": min(v) * 1e3, "speedup_median": statistics.median(base) / statistics.median(v),
                        "speedup_min": min(base) / min(v)}


def table(rows: List[dict], threads: Sequence[int]) -> str:
    head = ("| threads | method | sparsity | accuracy | weights / stored values | MB in memory "
            "| batch-1 ms (median/min) | speedup | batch-32 ms (median/min) | speedup |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for t in threads:
        for r in rows:
            cells = [str(t), r["method"],
                     f"{r['weight_sparsity']:.2f}" + (f" (ch {r['inner_channels_removed']:.2f})"
                                                      if r["inner_channels_removed"] else ""),
                     f"{r['accuracy']:.4f}", f"{r['weights_stored']:,}", f"{r['resident_bytes'] / 1e6:.3f}"]
            for b in (1, 32):
                tm = r["timings"][f"t{t}_b{b}"]
                cells += [f"{tm['median_ms']:.3f} / {tm['min_ms']:.3f}",
                          f"{tm['speedup_median']:.2f}x ({tm['speedup_min']:.2f}x)"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: List[dict], threads: Sequence[int], dense_acc: float, noise: float = 0.05) -> str:
    """One paragraph from the numbers: the fastest pruned model per batch size and thread count
    (by median; a tie unless the fastest calls agree), its speedup and accuracy, the runner-up,
    and what to take."""
    by = {r["method"]: r for r in rows}
    pruned = [m for m in METHODS[1:] if m in by]
    parts, winners = [], {}
    for t in threads:
        for b in (1, 32):
            key = f"t{t}_b{b}"
            order = sorted(pruned, key=lambda m: by[m]["timings"][key]["median_ms"])
            win, runner = order[0], order[1] if len(order) > 1 else None
            tw = by[win]["timings"][key]
            # a tie: the runner-up's median is within ``noise``, or the fastest calls rank them the other way
            close = runner is not None and (
                by[runner]["timings"][key]["median_ms"] <= tw["median_ms"] * (1 + noise)
                or by[runner]["timings"][key]["min_ms"] < tw["min_ms"])
            winners[key] = "dense" if tw["speedup_median"] < 1 else (None if close else win)
            s = (f"batch {b}, {t} thread{'s' if t > 1 else ''}: {win} is fastest, "
                 f"{tw['speedup_median']:.2f}x over dense at accuracy {by[win]['accuracy']:.4f}"
                 + (" (no pruned model beats dense here)" if tw["speedup_median"] < 1 else ""))
            if runner is not None:
                tie = f", a tie: within {noise:.0%} or faster by the fastest call" if close else ""
                s += (f" ({runner}: {by[runner]['timings'][key]['speedup_median']:.2f}x at "
                      f"{by[runner]['accuracy']:.4f}{tie})")
            parts.append(s)
    return (f"Verdict (every pruned model cleared the same validation bar; dense test accuracy "
            f"{dense_acc:.4f}): " + "; ".join(parts) + ". " + advice(winners, threads))


def advice(winners: Dict[str, str | None], threads: Sequence[int]) -> str:
    """What to take, from the winner of each ``t{threads}_b{batch}`` setting (None: a tie)."""
    if None in winners.values():
        return "Some settings are ties within timing noise; decide by the batch size you deploy at."
    if len(set(winners.values())) == 1:
        return f"On this model and CPU, take {next(iter(winners.values()))} at every batch size and thread count timed."
    per_batch = {b: {winners[f"t{t}_b{b}"] for t in threads} for b in (1, 32)}
    if all(len(v) == 1 for v in per_batch.values()):
        return (f"The answer depends on the batch size: for latency (batch 1) take {per_batch[1].pop()}, "
                f"for throughput (batch 32) take {per_batch[32].pop()}.")
    return "The answer changes with the thread count: " + "; ".join(
        f"{t} thread{'s' if t > 1 else ''}: batch 1 {winners[f't{t}_b1']}, batch 32 {winners[f't{t}_b32']}"
        for t in threads) + "."


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny data, one epoch, two rounds each")
    p.add_argument("--size", type=int, default=32, help="image side after upsampling")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6, help="dense training epochs")
    p.add_argument("--val", type=int, default=300, help="training images held out for the accuracy bar")
    p.add_argument("--drop", type=float, default=0.01, help="accuracy bar: dense validation accuracy minus this")
    p.add_argument("--round-epochs", type=int, default=2, help="fine-tuning epochs per pruning round")
    p.add_argument("--max-rounds", type=int, default=10)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--channel-rate", type=float, default=0.25, help="channels pruned per round, of those left")
    p.add_argument("--channel-mask", choices=("inputs", "channels"), default="inputs",
                   help="mask the inner channels as the second conv's inputs (exactly removable) or as the "
                        "first conv's filters (granularity='channels')")
    p.add_argument("--block", type=int, nargs=2, default=[4, 1])
    p.add_argument("--block-rate", type=float, default=0.3, help="blocks pruned per round, of those left")
    p.add_argument("--no-combined", action="store_true", help="skip the channels + blocks row")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    p.add_argument("--round-s", type=float, default=0.05, help="seconds per model per timing round")
    p.add_argument("--convert-budget", type=float, default=0.03, help="convert(format='auto') time_budget_s")
    p.add_argument("--convert-batches", type=int, nargs="+", default=[1],
                   help="batch sizes convert(format='auto') times; a layer goes sparse only if it wins at all")
    p.add_argument("--train-threads", type=int, default=1,
                   help="torch threads for training (1 is the most predictable on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the rows (and the run's settings) here")
    args = p.parse_args(argv)
    if args.quick:
        # every round passes (drop 1) and rounds are steep: the smoke test reaches real sparsity
        args.size, args.width, args.epochs, args.val, args.drop = 16, 8, 1, 64, 1.0
        args.channel_rate, args.block_rate = 0.5, 0.7
        args.round_epochs, args.max_rounds, args.rounds, args.round_s, args.convert_budget = 1, 2, 1, 0.0005, 0.001
    return args


def load_data(args: argparse.Namespace) -> dict:
    Xtr, ytr, Xte, yte = load_digits(args.size)
    if args.quick:
        Xtr, ytr, Xte, yte = Xtr[:320], ytr[:320], Xte[:64], yte[:64]
    perm = torch.randperm(len(Xtr), generator=torch.Generator().manual_seed(args.seed))
    val, tr = perm[:args.val], perm[args.val:]
    return {"Xtr": Xtr[tr], "ytr": ytr[tr], "Xval": Xtr[val], "yval": ytr[val], "Xte": Xte, "yte": yte}


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.train_threads)
    data = load_data(args)
    dense = ResNet18Style(args.width)
    t0 = time.time()
    train(dense, data["Xtr"], data["ytr"], args.epochs, lr=0.05, seed=args.seed)
    acc_val = accuracy(dense, data["Xval"], data["yval"])
    data["threshold"] = acc_val - args.drop
    print(f"ResNet-18-style width {args.width} on digits {args.size}x{args.size}: {len(data['Xtr'])} train / "
          f"{len(data['Xval'])} validation / {len(data['Xte'])} test; dense trained in {time.time() - t0:.0f}s, "
          f"validation accuracy {acc_val:.4f}, bar {data['threshold']:.4f}")

    small, ch_row, inner = channels_method(dense, data, args)
    blocks, bl_row = blocks_method(dense, dense, data, args, METHODS[2])
    models = {METHODS[0]: fold_bn(dense), METHODS[1]: fold_bn(small), METHODS[2]: blocks}
    rows = {METHODS[0]: make_row(METHODS[0], models[METHODS[0]], dense, dense, data), METHODS[1]: ch_row,
            METHODS[2]: bl_row}
    if not args.no_combined:
        models[METHODS[3]], rows[METHODS[3]] = blocks_method(small, dense, data, args, METHODS[3], inner)

    t0 = time.time()
    time_all(models, rows, data["Xte"], args)
    row_list = [rows[m] for m in METHODS if m in rows]
    simd = sparsekit.cpu_info().get("simd", "?")
    print(f"\ntimed in {time.time() - t0:.0f}s (SIMD {simd}; the run took {time.time() - t_start:.0f}s); "
          "sparsity = fraction of conv weights removed (ch: of the branches' inner channels); speedup = "
          "dense median / median (fastest / fastest); every model runs with BatchNorm folded; block models "
          f"converted by format='auto' timed at batch {'+'.join(map(str, args.convert_batches))}\n")
    print(table(row_list, args.threads))
    text = verdict(row_list, args.threads, rows[METHODS[0]]["accuracy"])
    print("\n" + text)
    result = {"rows": row_list, "verdict": text, "threshold": data["threshold"], "dense_val_accuracy": acc_val,
              "cpu": sparsekit.cpu_info(), "args": vars(args)}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
