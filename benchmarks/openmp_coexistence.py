"""OpenMP coexistence: torch and sparsekit share one libgomp; does the order of imports
or the mix of thread settings cost throughput?

Each configuration runs in a fresh interpreter (import order matters only at start-up):
a mixed workload alternating torch.mm and sparsekit.linear, timed as the median of
repeated rounds. The report gives each configuration's time against the best import
order for the same thread settings.

    python benchmarks/openmp_coexistence.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import textwrap

WORKLOAD = textwrap.dedent(
    """
    import json, statistics, sys, time
    order, tt, st, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if order == "torch first":
        import torch, sparsekit
    else:
        import sparsekit, torch
    import numpy as np
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2048, 2048)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    m = sparsekit.SparseMatrix.from_dense(w)
    x = torch.from_numpy(rng.standard_normal((64, 2048)).astype(np.float32))
    a = torch.randn(512, 512)
    torch.set_num_threads(tt)
    sparsekit.set_num_threads(st)
    def once():
        for _ in range(10):
            torch.mm(a, a)
            sparsekit.linear(x, m)
    once()
    times = []
    for _ in range(rounds):
        t = time.perf_counter(); once(); times.append(time.perf_counter() - t)
    print(json.dumps({"median_ms": 1e3 * statistics.median(times), "best_ms": 1e3 * min(times),
                      "runtimes": sparsekit.cpu_info()["openmp_runtimes"]}))
    """
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    ncpu = os.cpu_count() or 1
    threads = sorted({1, ncpu})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:  # run outside any source checkout
        for tt, st, order in itertools.product(threads, threads, ("torch first", "sparsekit first")):
            out = subprocess.run([sys.executable, "-c", WORKLOAD, order, str(tt), str(st), str(args.rounds)],
                                 capture_output=True, text=True, cwd=tmp, check=True)
            results[(tt, st, order)] = json.loads(out.stdout)
    print("| torch threads | sparsekit threads | import order | median ms | best ms | vs best order (median) | OpenMP runtimes |")
    print("|---|---|---|---|---|---|---|")
    for (tt, st, order), r in results.items():
        best = min(results[(tt, st, o)]["median_ms"] for o in ("torch first", "sparsekit first"))
        print(f"| {tt} | {st} | {order} | {r['median_ms']:.2f} | {r['best_ms']:.2f} | "
              f"{r['median_ms'] / best:.2f}x | {len(r['runtimes'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
