"""``sparsity_report``: what pruning did, per layer and in total."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .granularity import NM, parse_granularity
from .masks import effective_weight, get_mask, is_torch_pruned
from .selection import DEFAULT_TYPES, unwrap

__all__ = ["LayerReport", "Report", "sparsity_report", "csr_nbytes"]

_REPORT_TYPES = DEFAULT_TYPES + (nn.Embedding, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def csr_nbytes(rows: int, cols: int, nnz_blocks: int, block: Tuple[int, int] = (1, 1)) -> int:
    """Bytes of a (block) CSR matrix: float32 values, uint16 column indices when the
    block-column count fits (else int32), int64 row pointers.

    Example:
        >>> from sparsekit.prune.report import csr_nbytes
        >>> csr_nbytes(4, 8, nnz_blocks=3)  # 3 * (4 + 2) + 5 * 8
        58
    """
    r, c = block
    block_rows, block_cols = -(-rows // r), -(-cols // c)
    index_bytes = 2 if block_cols <= 65536 else 4
    return nnz_blocks * r * c * 4 + nnz_blocks * index_bytes + (block_rows + 1) * 8


@dataclass
class LayerReport:
    """One row of a :class:`Report` (all counts refer to the 2-D view ``(out, in*k...)``).

    Example:
        >>> import torch
        >>> from sparsekit.prune import sparsity_report
        >>> row = sparsity_report(torch.nn.Linear(4, 2, bias=False))[""]
        >>> row.shape, row.numel, row.dense_bytes
        ((2, 4), 8, 32)
    """

    name: str
    type: str
    shape: Tuple[int, ...]
    numel: int
    nnz: int
    sparsity: float
    zero_rows: int
    zero_cols: int
    dense_bytes: int
    sparse_bytes: int
    macs: int
    dense_macs: int
    masked: bool
    block_density: Optional[float] = None
    block_sparse_bytes: Optional[int] = None
    nm_compliance: Optional[float] = None


@dataclass
class Report:
    """Per-layer rows and totals; ``str()`` is a table, :meth:`to_dict` gives plain data.

    Example:
        >>> import torch
        >>> from sparsekit.prune import sparsity_report
        >>> rep = sparsity_report(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
        >>> [r.name for r in rep], rep.to_dict()["total"]["numel"]
        (['0', '1'], 24)
    """

    layers: List[LayerReport]
    total: Dict[str, Union[int, float]]
    block: Optional[Tuple[int, int]] = None
    nm: Optional[str] = None
    macs_note: str = field(default="")

    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerReport:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer {name!r} in the report; layers: {[r.name for r in self.layers]}")

    def to_dict(self) -> dict:
        return {"layers": [asdict(r) for r in self.layers], "total": dict(self.total),
                "block": self.block, "nm": self.nm}

    def __str__(self) -> str:
        head = ["layer", "type", "shape", "nnz", "sparsity", "0-rows", "0-cols", "dense KiB", "CSR KiB", "MACs"]
        if self.block is not None:
            head += [f"{self.block[0]}x{self.block[1]} dens", "BSR KiB"]
        if self.nm is not None:
            head += [f"{self.nm} ok"]
        rows = []
        for r in self.layers:
            row = [r.name or "(model)", r.type, "x".join(map(str, r.shape)), str(r.nnz), f"{r.sparsity:.2%}",
                   str(r.zero_rows), str(r.zero_cols), f"{r.dense_bytes / 1024:.1f}", f"{r.sparse_bytes / 1024:.1f}",
                   str(r.macs)]
            if self.block is not None:
                row += [f"{r.block_density:.2%}", f"{r.block_sparse_bytes / 1024:.1f}"]
            if self.nm is not None:
                row += [f"{r.nm_compliance:.2%}"]
            rows.append(row)
        t = self.total
        tot = ["total", "", "", str(t["nnz"]), f"{t['sparsity']:.2%}", "", "", f"{t['dense_bytes'] / 1024:.1f}",
               f"{t['sparse_bytes'] / 1024:.1f}", str(t["macs"])]
        if self.block is not None:
            tot += [f"{t['block_density']:.2%}", f"{t['block_sparse_bytes'] / 1024:.1f}"]
        if self.nm is not None:
            tot += [f"{t['nm_compliance']:.2%}"]
        rows.append(tot)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        lines = [fmt(head), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows[:-1]]
        lines += ["  ".join("-" * w for w in widths), fmt(rows[-1])]
        if self.macs_note:
            lines.append(self.macs_note)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Report({len(self.layers)} layers, sparsity={self.total['sparsity']:.4f}, "
                f"nnz={self.total['nnz']}/{self.total['numel']})")


def _positions(model: nn.Module, example_input: object, modules: Sequence[nn.Module]) -> Dict[int, int]:
    """Output positions (batch excluded) each module computes, from one forward pass."""
    seen: Dict[int, int] = {}
    handles = []

    def hook(mod: nn.Module, args: tuple, out: object) -> None:
        if isinstance(out, Tensor):
            if isinstance(mod, nn.Linear) or isinstance(mod, nn.Embedding):
                pos = out.numel() // out.shape[-1]
            else:  # conv: (N, C, *spatial)
                pos = out.numel() // out.shape[1]
            seen[id(mod)] = pos

    for m in modules:
        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            if isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


# Long because of its docstring; the body is one pass over the prunable layers, read in order.
def sparsity_report(model: nn.Module, block: Optional[Tuple[int, int]] = None, nm: Optional[str] = None,
                    example_input: object = None, include: Optional[Sequence[type]] = None) -> Report:
    """Report sparsity, storage and compute of every Linear/Conv/Embedding weight.

    Per layer: shape, stored nonzeros, sparsity, fully-zero rows and columns of
    the 2-D view, dense float32 bytes versus CSR bytes (float32 values, uint16
    or int32 indices, int64 row pointers), and multiply-accumulates (dense
    MACs = weights x output positions, sparse MACs = nonzeros x positions).
    ``block=(r, c)`` adds the fraction of nonzero blocks and the block-CSR
    bytes; ``nm="2:4"`` adds the fraction of groups meeting the pattern.
    ``example_input`` (run once, no grad) gives each layer's output positions
    (else 1 per layer: per sample for Linear, per output pixel for Conv).
    Masks (sparsekit or torch.nn.utils.prune) are applied before counting.

    Example:
        >>> import torch
        >>> from sparsekit.prune import prune, sparsity_report
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        >>> _ = prune(model, 0.5, granularity=(4, 1))
        >>> rep = sparsity_report(model, block=(4, 1))
        >>> rep["0"].sparsity, rep["0"].block_density, rep.total["nnz"]
        (0.5, 0.5, 1152)
        >>> "total" in str(rep)
        True
    """
    model = unwrap(model)
    if block is not None:
        if not (isinstance(block, (tuple, list)) and len(block) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in block)):
            raise TypeError(f"block must be a tuple (r, c) of positive ints such as (4, 1), got {block!r}")
        block = (int(block[0]), int(block[1]))
    nm_g = None
    if nm is not None:
        nm_g = parse_granularity(nm)
        if not isinstance(nm_g, NM):
            raise ValueError(f"nm must be an N:M pattern such as '2:4', got {nm!r}")
    types = tuple(include) if include is not None else _REPORT_TYPES
    mods = [(n, m) for n, m in model.named_modules()
            if isinstance(m, types) and (isinstance(getattr(m, "weight", None), Tensor) or is_torch_pruned(m))]
    positions = _positions(model, example_input, [m for _, m in mods]) if example_input is not None else {}
    rows: List[LayerReport] = []
    for name, m in mods:
        w = effective_weight(m, "weight").float()
        w2 = w.reshape(w.shape[0], -1)
        nzm = w2 != 0
        nnz = int(nzm.sum())
        numel = w2.numel()
        R, C = w2.shape
        pos = positions.get(id(m), 1)
        if isinstance(m, nn.Embedding):
            dense_macs = 0  # a lookup, no multiply-accumulates
        else:
            dense_macs = numel * pos
        row = LayerReport(
            name=name, type=type(m).__name__, shape=tuple(w.shape), numel=numel, nnz=nnz,
            sparsity=(numel - nnz) / numel if numel else 0.0,
            zero_rows=int((~nzm.any(dim=1)).sum()), zero_cols=int((~nzm.any(dim=0)).sum()),
            dense_bytes=numel * 4, sparse_bytes=csr_nbytes(R, C, nnz),
            macs=0 if isinstance(m, nn.Embedding) else nnz * pos, dense_macs=dense_macs,
            masked=get_mask(m, "weight") is not None)
        if block is not None:
            r, c = block
            br, bc = -(-R // r), -(-C // c)
            padded = torch.nn.functional.pad(nzm.float(), (0, bc * c - C, 0, br * r - R))
            nzb = int(padded.reshape(br, r, bc, c).amax(dim=(1, 3)).sum())
            row.block_density = nzb / (br * bc)
            row.block_sparse_bytes = csr_nbytes(R, C, nzb, block)
        if nm_g is not None:
            n_, m_ = nm_g.n, nm_g.m
            g = -(-C // m_)
            padded = torch.nn.functional.pad(nzm.float(), (0, g * m_ - C))
            per_group = padded.reshape(R, g, m_).sum(dim=2)
            row.nm_compliance = float((per_group <= n_).float().mean())
        rows.append(row)
    numel = sum(r.numel for r in rows)
    nnz = sum(r.nnz for r in rows)
    total: Dict[str, Union[int, float]] = {
        "layers": len(rows), "numel": numel, "nnz": nnz, "sparsity": (numel - nnz) / numel if numel else 0.0,
        "dense_bytes": sum(r.dense_bytes for r in rows), "sparse_bytes": sum(r.sparse_bytes for r in rows),
        "macs": sum(r.macs for r in rows), "dense_macs": sum(r.dense_macs for r in rows),
    }
    if block is not None:
        nb = sum(-(-r.shape[0] // block[0]) * -(-(r.numel // r.shape[0]) // block[1]) for r in rows)
        total["block_density"] = (sum(r.block_density * (-(-r.shape[0] // block[0]) * -(-(r.numel // r.shape[0]) // block[1]))
                                      for r in rows) / nb) if nb else 0.0  # type: ignore[operator]
        total["block_sparse_bytes"] = sum(r.block_sparse_bytes for r in rows)  # type: ignore[misc]
    if nm_g is not None:
        ng = sum(r.shape[0] * -(-(r.numel // r.shape[0]) // nm_g.m) for r in rows)
        total["nm_compliance"] = (sum(r.nm_compliance * r.shape[0] * -(-(r.numel // r.shape[0]) // nm_g.m)  # type: ignore[operator]
                                      for r in rows) / ng) if ng else 1.0
    note = "" if example_input is not None else "MACs per sample (Linear) / per output position (Conv); pass example_input for totals"
    return Report(rows, total, block, nm, note)
