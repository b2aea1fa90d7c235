"""Peak resident memory of building a sparse layer dense, converting it and running it.

Each probe runs in a fresh interpreter,
``python -m sparsekit.bench.rss --shape 4096x4096 --sparsity 0.9 --block 4x1``, so that
nothing else a process allocated counts (:func:`sparsekit.bench.peak_rss` starts them;
the package does not import this module). It prints one JSON line of bytes
read from ``/proc/self/status`` (Linux): the resident size after the imports, then the
peak (VmHWM, reset between stages) while building the dense weight, while converting
it, after dropping the dense copy, and while running the layer at batch 1 and 128.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Tuple

import numpy as np
import torch

import sparsekit


def _status(key: str) -> int:
    """Bytes of one /proc/self/status field (VmHWM: peak since exec or the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _probe(shape: Tuple[int, int], sparsity: float, block: Tuple[int, int]) -> dict:
    """The stages, measured in this process (which must be fresh for the figures to mean anything)."""
    x = torch.randn(128, shape[1])
    out = {"block": list(block), "after_imports": _status("VmRSS")}
    _reset_peak()
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.repeat(np.repeat(rng.random((shape[0] // block[0], shape[1] // block[1])) >= sparsity,
                             block[0], 0), block[1], 1)
    out["peak_dense"], out["rss_dense"] = _status("VmHWM"), _status("VmRSS")
    _reset_peak()
    m = sparsekit.SparseMatrix.from_dense(w, block=block)
    out["peak_convert"] = _status("VmHWM")
    del w
    out["rss_sparse"] = _status("VmRSS")
    _reset_peak()
    for _ in range(3):  # the outputs stay referenced, as a caller's would, until the next call
        y = sparsekit.linear(x, m)  # noqa: F841
        y1 = sparsekit.linear(x[:1], m)  # noqa: F841
    out["peak_run"], out["rss_end"] = _status("VmHWM"), _status("VmRSS")
    out["nbytes"] = m.nbytes
    return out


def _pair(text: str) -> Tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m sparsekit.bench.rss``: runs one probe, prints its JSON line.

    Example (in a fresh interpreter; :func:`sparsekit.bench.peak_rss` runs it that way):
        >>> from sparsekit.bench import rss
        >>> rss.main(["--shape", "64x64", "--sparsity", "0.9", "--block", "4x1"])  # doctest: +SKIP
        {"block": [4, 1], "after_imports": ...}
        0
    """
    p = argparse.ArgumentParser(prog="python -m sparsekit.bench.rss", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=_pair, required=True, help="weight shape RxC")
    p.add_argument("--sparsity", type=float, required=True, help="share of zero blocks")
    p.add_argument("--block", type=_pair, required=True, help="block shape RxC (1x1: CSR)")
    args = p.parse_args(argv)
    print(json.dumps(_probe(args.shape, args.sparsity, args.block)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
