"""Deterministic selection of the units to prune.

Units are ranked by ``(score, index)`` with a stable sort, so ties always go
to the lower index and the same inputs give the same masks on every run and
every process.  Exactly ``k`` units are pruned.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .granularity import Granularity


def unit_scores(element_scores: Tensor, granularity: Granularity, reduce: str, shape: torch.Size,
                prior_mask: Optional[Tensor], regrow: bool, where: str) -> Tuple[Tensor, Optional[Tensor]]:
    """Per-unit scores (float32, or float64 for float64 input; previously pruned
    units at ``-inf`` unless ``regrow``) and the N:M eligibility vector (or None)."""
    if not isinstance(element_scores, Tensor):
        raise TypeError(f"importance scores for {where} must be a torch.Tensor, got {type(element_scores).__name__}")
    if tuple(element_scores.shape) != tuple(shape):
        raise ValueError(
            f"importance scores for {where} have shape {tuple(element_scores.shape)}, "
            f"expected the weight's shape {tuple(shape)}"
        )
    s = element_scores.detach().to(device="cpu")
    s = s.to(torch.float64) if s.dtype == torch.float64 else s.to(torch.float32)  # exact for fp16/bf16/fp32
    if torch.isnan(s).any():
        raise ValueError(f"importance scores for {where} contain NaN; check the weights/gradients fed to the criterion")
    u = granularity.unit_scores(s, reduce).reshape(-1).clone()
    if prior_mask is not None and not regrow:
        pruned = granularity.units_pruned(prior_mask.detach().cpu().reshape(shape))
        u[pruned] = -math.inf
    eligible = granularity.eligible(u, shape)
    return u, eligible


def lowest_k(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` lowest entries by ``(score, index)`` in O(n).

    Same answer as a stable ascending sort taking the first ``k``: everything below
    the k-th smallest value, then the lowest-index entries equal to it.
    """
    n = scores.numel()
    out = torch.zeros(n, dtype=torch.bool)
    if k <= 0:
        return out
    if k >= n:
        out[:] = True
        return out
    v = torch.kthvalue(scores, k).values
    out = scores < v
    need = k - int(out.sum())
    if need > 0:
        out[torch.nonzero(scores == v).reshape(-1)[:need]] = True
    return out


def _ordered_candidates(scores: Tensor, eligible: Optional[Tensor]) -> Tensor:
    """Indices of eligible units sorted by (score, index)."""
    idx = torch.arange(scores.numel()) if eligible is None else torch.nonzero(eligible).reshape(-1)
    order = torch.argsort(scores[idx], stable=True)
    return idx[order]


def select_layer(scores: Tensor, eligible: Optional[Tensor], k: int, where: str) -> Tensor:
    """Bool vector: the ``k`` lowest-scoring eligible units."""
    idx = None if eligible is None else torch.nonzero(eligible).reshape(-1)
    n_cand = scores.numel() if idx is None else idx.numel()
    if k > n_cand:
        raise ValueError(
            f"cannot prune {k} units of {where}: only {n_cand} may be pruned with this granularity "
            "(an N:M pattern caps the sparsity at (M - N) / M); lower the sparsity"
        )
    if idx is None:
        return lowest_k(scores, k)
    prune = torch.zeros(scores.numel(), dtype=torch.bool)
    prune[idx[lowest_k(scores[idx], k)]] = True
    return prune


def select_global(layers: Sequence[Tuple[Tensor, Optional[Tensor]]], k: int,
                  lo: Sequence[int], hi: Sequence[int], names: Sequence[str]) -> List[Tensor]:
    """One ranking across layers with per-layer bounds ``lo[i] <= pruned[i] <= hi[i]``.

    Each layer first prunes its ``lo`` lowest units; the rest of ``k`` goes to
    the globally lowest remaining candidates, a layer taking at most ``hi``.
    This equals the greedy walk over the global (score, layer, index) order.
    """
    n_elig = [s.numel() if e is None else int(e.sum()) for s, e in layers]
    if all(l == 0 for l in lo) and all(h >= n for h, n in zip(hi, n_elig)):
        return _select_global_unbounded(layers, k)
    ordered = [_ordered_candidates(s, e) for s, e in layers]
    caps = [min(h, o.numel()) for h, o in zip(hi, ordered)]
    for name, l, c, h, o in zip(names, lo, caps, hi, ordered):
        if l > c:
            raise ValueError(
                f"layer {name} must prune at least {l} units (min_sparsity) but only {c} may be pruned "
                f"(max_sparsity / granularity allow {min(h, o.numel())}); relax min_sparsity"
            )
    if k < sum(lo) or k > sum(caps):
        raise ValueError(
            f"global sparsity asks to prune {k} units, but the per-layer bounds allow between "
            f"{sum(lo)} and {sum(caps)}; adjust sparsity, min_sparsity or max_sparsity"
        )
    rest_scores, rest_ids, rest_layer = [], [], []
    for i, (o, l, c) in enumerate(zip(ordered, lo, caps)):
        extra = o[l:c]
        extra = extra.sort().values  # back to index order for the (layer, index) tie-break
        rest_scores.append(layers[i][0][extra])
        rest_ids.append(extra)
        rest_layer.append(torch.full((extra.numel(),), i, dtype=torch.long))
    out = []
    for (s, _), o, l in zip(layers, ordered, lo):
        p = torch.zeros(s.numel(), dtype=torch.bool)
        p[o[:l]] = True
        out.append(p)
    r = k - sum(lo)
    if r > 0:
        scores = torch.cat(rest_scores)
        ids = torch.cat(rest_ids)
        layer = torch.cat(rest_layer)
        take = torch.argsort(scores, stable=True)[:r]
        for i in range(len(layers)):
            sel = take[layer[take] == i]
            out[i][ids[sel]] = True
    return out


def _select_global_unbounded(layers: Sequence[Tuple[Tensor, Optional[Tensor]]], k: int) -> List[Tensor]:
    """Global selection without per-layer bounds: one O(n) pass over the concatenation."""
    parts, ids = [], []
    for s, e in layers:
        idx = torch.arange(s.numel()) if e is None else torch.nonzero(e).reshape(-1)
        parts.append(s[idx])
        ids.append(idx)
    total = sum(p.numel() for p in parts)
    if k > total:
        raise ValueError(
            f"global sparsity asks to prune {k} units, but only {total} may be pruned with this granularity; "
            "lower the sparsity"
        )
    chosen = lowest_k(torch.cat(parts), k)
    out, offset = [], 0
    for (s, _), idx in zip(layers, ids):
        p = torch.zeros(s.numel(), dtype=torch.bool)
        p[idx[chosen[offset:offset + idx.numel()]]] = True
        offset += idx.numel()
        out.append(p)
    return out


def lowest_per_row(scores: Tensor, k: int, forced: Optional[Tensor] = None) -> Tensor:
    """Bool ``(rows, cols)`` mask of ``k`` entries of a 2-D score matrix, compared within each row.

    Every row gives up its lowest entries in turn: the ``k`` entries with the
    smallest ``(rank within row, score, index)`` are chosen, so with ``k`` a
    multiple of ``rows`` each row loses exactly ``k / rows`` entries, and the
    remainder goes to the rows whose next candidate scores lowest.  Entries
    in ``forced`` (previously pruned) come first and count toward their row.
    """
    rows, cols = scores.shape
    n = rows * cols
    if k > n:
        raise ValueError(f"cannot prune {k} of {n} entries")
    s = scores.detach().to(device="cpu", dtype=torch.float64).clone()
    n_forced = torch.zeros(rows, dtype=torch.long)
    if forced is not None:
        forced = forced.detach().cpu().bool()
        s[forced] = -math.inf  # forced entries take the first ranks of their row
        n_forced = forced.sum(dim=1)
        if int(n_forced.sum()) > k:  # not all of them can stay pruned: the first k by index
            out = torch.zeros(n, dtype=torch.bool)
            out[torch.nonzero(forced.reshape(-1)).reshape(-1)[:k]] = True
            return out.reshape(rows, cols)
    order = torch.argsort(s, dim=1, stable=True)
    # entries pruned when every row gives up its ranks below t: max(forced, t) per row
    t_all = torch.arange(cols + 1)
    counts = torch.maximum(n_forced.reshape(-1, 1), t_all.reshape(1, -1)).sum(dim=0)
    t = int((counts <= k).sum()) - 1
    rank_pos = torch.maximum(n_forced, torch.tensor(t))  # per row: entries with rank < this go
    out = torch.arange(cols).reshape(1, -1) < rank_pos.reshape(-1, 1)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask.scatter_(1, order, out)
    r = k - int(counts[t])
    if r > 0:  # the rows whose next candidate (rank t) scores lowest give up one more
        cand = torch.nonzero(n_forced <= t).reshape(-1)
        nxt = order[cand, t]
        pick = lowest_k(s[cand, nxt], r)
        mask[cand[pick], nxt[pick]] = True
    return mask
