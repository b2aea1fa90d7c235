"""SparseGPT: one-shot pruning with weight reconstruction (Frantar & Alistarh 2023).

For a layer with 2-D weight ``W`` (out x in) and calibration inputs ``X``
(rows x in), the Hessian of the layer-wise error ``||X W^T - X W'^T||^2`` is
``H = 2 X^T X``.  With ``H_d = X^T X + damp * mean(diag) * I`` and ``U`` the
upper Cholesky factor of ``H_d^-1``, columns are swept left to right in lazy
blocks of ``blocksize``; when a column is reached, the weights it loses are
zeroed and their error ``(w - q) / U[j, j]`` is spread over the later columns
(``w[:, j:] -= err * U[j, j:]``), the optimal-brain-surgeon update.  The
layer's weight is **modified** - that is the point - and the returned mask
marks exactly its pruned zeros.

Which weights go is decided adaptively by ``w^2 / U[j, j]^2`` on the weights
as updated so far:

* unstructured: at the start of every block of ``blocksize`` columns, per
  output row (each row loses its share of the block's quota);
* N:M: at the start of every group of M columns, per row;
* ``(r, c)`` blocks: at the start of every column block (a multiple of
  ``c``), whole blocks by their ``reduce`` of the scores.

Each chunk of columns gets a quota proportional to what it may lose, so
the layer loses exactly ``round(sparsity * n_units)`` units.  Whole output
rows (``"channels"``) or input columns (``"inputs"``) leave nothing to
compensate within the layer and are refused.

Layers are processed one at a time in model registration order, each
Hessian captured by a fresh pass over the calibration data through the
already pruned earlier layers (the paper's sequential scheme; one model
pass per layer).  ``sequential=False`` captures every Hessian in one pass
of the dense model instead.  Hessians are kept and reused by later updates
of a :class:`~sparsekit.prune.Pruner` until :meth:`SparseGPT.reset`.
Only ``scope="layer"`` is meaningful.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._validation import check_fraction, check_int, units_to_prune
from .calibration import CalibratedCriterion, capture_input_stats
from .granularity import NM, Blocks, Granularity, GranularityLike, Unstructured, parse_granularity, view2d
from .masks import attach_mask, get_mask
from .ranking import lowest_per_row, select_layer, unit_scores

__all__ = ["SparseGPT", "inverse_hessian_factor", "chunk_quotas", "reconstruct_layer"]


def inverse_hessian_factor(xtx: Tensor, damp: float = 0.01, where: str = "layer") -> Tensor:
    """Upper Cholesky factor ``U`` of ``(X^T X + damp * mean(diag) * I)^-1`` (float64).

    Features that never fired (zero diagonal) get a unit diagonal so the
    matrix stays invertible; they are decoupled from every other feature.

    Example:
        >>> import torch
        >>> from sparsekit.prune.sparsegpt import inverse_hessian_factor
        >>> u = inverse_hessian_factor(torch.tensor([[4.0, 0.0], [0.0, 0.0]]), damp=0.0)
        >>> u.diagonal().tolist(), float(u[0, 1]) == 0
        ([0.5, 1.0], True)
    """
    h = xtx.detach().to(torch.float64).clone()
    diag = h.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    h.diagonal().add_(damp * float(diag.mean()))
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise ValueError(f"the input Hessian of {where} is not positive definite; raise damp (now {damp})")
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def chunk_quotas(k: int, caps: List[int], forced: Optional[List[int]] = None) -> List[int]:
    """Split ``k`` pruned units over chunks proportionally to their capacities ``caps``.

    With ``forced`` (units that must stay pruned per chunk) every chunk gets
    at least its forced count when the total allows, taking the difference
    from the last chunks with slack.

    Example:
        >>> from sparsekit.prune.sparsegpt import chunk_quotas
        >>> chunk_quotas(5, [4, 4, 2]), chunk_quotas(5, [4, 4, 2], forced=[0, 0, 2])
        ([2, 2, 1], [2, 1, 2])
    """
    total = sum(caps)
    if k > total:
        raise ValueError(f"cannot prune {k} units: only {total} may be pruned with this granularity")
    bounds, acc = [0], 0
    for c in caps:
        acc += c
        bounds.append(round(k * acc / total) if total else 0)
    q = [b - a for a, b in zip(bounds, bounds[1:])]
    if forced is None or sum(forced) > k:
        return q
    q = [max(a, f) for a, f in zip(q, forced)]
    excess = sum(q) - k
    for i in reversed(range(len(q))):
        take = min(excess, q[i] - forced[i])
        q[i] -= take
        excess -= take
    return q


def _chunk_width(g: Granularity, blocksize: int) -> int:
    """Columns decided together: one block for unstructured, M for N:M, a multiple of c for blocks."""
    if isinstance(g, NM):
        return g.m
    if isinstance(g, Blocks):
        return g.c * max(1, blocksize // g.c)
    return blocksize


def _capacity(g: Granularity, rows: int, width: int) -> int:
    shape = torch.Size([rows, width])
    return g.capacity(shape) if isinstance(g, NM) else g.n_units(shape)


def _select_chunk(scores: Tensor, g: Granularity, quota: int, prior: Optional[Tensor], reduce: str,
                  where: str) -> Tensor:
    """Bool prune mask of one chunk of columns (``scores`` rows x width)."""
    if isinstance(g, Unstructured):
        return lowest_per_row(scores, quota, None if prior is None else ~prior)
    u, eligible = unit_scores(scores, g, reduce, scores.shape, prior, False, where)
    return ~g.expand(~select_layer(u, eligible, quota, where), scores.shape)


def reconstruct_layer(weight: Tensor, xtx: Tensor, k: int, granularity: GranularityLike = "unstructured", *,
                      prior_mask: Optional[Tensor] = None, damp: float = 0.01, blocksize: int = 128,
                      reduce: str = "mean", where: str = "layer") -> Tuple[Tensor, Tensor]:
    """Prune ``k`` units of a 2-D ``weight`` (out x in) given ``xtx = X^T X``; returns ``(new_weight, keep)``.

    ``new_weight`` is float64 with exact zeros where ``keep`` is False; the
    kept weights are updated to compensate the layer's output on ``X``.
    ``prior_mask`` (keep-mask) entries that are False stay pruned when ``k``
    allows.

    Example:
        >>> import torch
        >>> from sparsekit.prune.sparsegpt import reconstruct_layer
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(64, 8)
        >>> w, keep = reconstruct_layer(torch.randn(4, 8), x.T @ x, 16, "2:4")
        >>> keep.reshape(4, 2, 4).sum(-1).tolist(), bool((w[~keep] == 0).all())
        ([[2, 2], [2, 2], [2, 2], [2, 2]], True)
    """
    g = parse_granularity(granularity)
    rows, cols = weight.shape
    width = _chunk_width(g, blocksize)
    block = width * max(1, blocksize // width)
    starts = list(range(0, cols, width))
    widths = [min(width, cols - s) for s in starts]
    caps = [_capacity(g, rows, w) for w in widths]
    prior = None if prior_mask is None else prior_mask.detach().cpu().bool().reshape(rows, cols)
    forced = None
    if prior is not None:
        forced = [min(int(g.units_pruned(prior[:, s:s + w]).sum()), c) for s, w, c in zip(starts, widths, caps)]
    quotas = dict(zip(starts, chunk_quotas(k, caps, forced)))
    width_at = dict(zip(starts, widths))
    W = weight.detach().to(device="cpu", dtype=torch.float64).clone()
    prune = torch.zeros(rows, cols, dtype=torch.bool)
    if k == 0:
        return W, ~prune
    U = inverse_hessian_factor(xtx, damp, where)
    for b1 in range(0, cols, block):  # lazy blocks: updates within, one matmul to the rest
        b2 = min(b1 + block, cols)
        W1, U1 = W[:, b1:b2].clone(), U[b1:b2, b1:b2]
        err = torch.zeros(rows, b2 - b1, dtype=torch.float64)
        for i in range(b2 - b1):
            j = b1 + i
            if j in quotas:  # decide the chunk starting here on the weights updated so far
                w = width_at[j]
                d = U1.diagonal()[i:i + w]
                scores = W1[:, i:i + w].pow(2) / d.pow(2).reshape(1, -1)
                sub = None if prior is None else prior[:, j:j + w]
                prune[:, j:j + w] = _select_chunk(scores, g, quotas[j], sub, reduce, where)
            q = W1[:, i].masked_fill(prune[:, j], 0.0)
            e = (W1[:, i] - q) / U1[i, i]
            W1[:, i:] -= e.reshape(-1, 1) * U1[i, i:].reshape(1, -1)
            W1[:, i] = q
            err[:, i] = e
        W[:, b1:b2] = W1
        W[:, b2:] -= err @ U[b1:b2, b2:]
    W[prune] = 0.0
    return W, ~prune


class SparseGPT(CalibratedCriterion):
    """Layer-wise pruning with optimal-brain-surgeon weight updates; see the module notes.

    Args:
        calibration: iterable of model inputs (calling rule of :func:`~sparsekit.prune.call_model`).
        damp: dampening, a fraction of the mean Hessian diagonal added to it.
        blocksize: columns per lazy-update block (and per unstructured mask decision).
        sequential: capture each layer's Hessian after the earlier layers are pruned
            (one model pass per layer); False: one pass of the unpruned model for all.
        reduce: how scores pool into ``(r, c)`` blocks.

    Example:
        >>> import torch
        >>> from sparsekit.prune import prune
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        >>> masks = prune(model, 0.5, method="sparsegpt", granularity="2:4", calibration=[torch.randn(64, 8)])
        >>> [int((model[i].weight == 0).sum()) for i in (0, 2)], [int(m.sum()) for m in masks.values()]
        ([32, 16], [32, 16])
    """

    unsupported = ("channels", "inputs")
    layer_scope_only = True

    def __init__(self, calibration: Any, *, damp: float = 0.01, blocksize: int = 128, sequential: bool = True,
                 reduce: str = "mean") -> None:
        super().__init__(calibration)
        self.damp = check_fraction(damp, "damp")
        self.blocksize = check_int(blocksize, "blocksize", minimum=1)
        self.sequential = bool(sequential)
        self.reduce = reduce
        self._xtx: Dict[str, Tensor] = {}

    def hessian(self, name: str) -> Tensor:
        """``X^T X`` of parameter ``name``'s layer inputs (float64), captured on first use."""
        module = self.module_for(name)
        if name not in self._xtx:
            assert self.model is not None
            layers = {name: module} if self.sequential else self.modules
            stats = capture_input_stats(self.model, layers, self.items, hessian=True)
            self._xtx.update({n: st.xtx for n, st in stats.items()})  # type: ignore[misc]
        return self._xtx[name]

    def score(self, weight: Tensor, *, name: str, module: Optional[nn.Module] = None, step: int = 0) -> Tensor:
        raise ValueError("SparseGPT decides and reconstructs each layer on its own; use scope='layer'")

    def compute_mask(self, weight: Tensor, amount: Union[int, float], *, granularity: GranularityLike = "unstructured",
                     name: str = "weight", module: Optional[nn.Module] = None, step: int = 0,
                     prior_mask: Optional[Tensor] = None, regrow: bool = False) -> Tensor:
        g = parse_granularity(granularity)
        if g.name in self.unsupported:
            raise ValueError(f"granularity {g!r} is not supported by SparseGPT; use 'unstructured', 'N:M' or (r, c)")
        layer = self.module_for(name)
        k = units_to_prune(amount, g.n_units(weight.shape), where=name)
        w2 = view2d(weight.detach())
        prior = None if prior_mask is None or regrow else view2d(prior_mask)
        if k == 0 and (prior is None or bool(prior.all())):
            return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        new, keep = reconstruct_layer(w2, self.hessian(name), k, g, prior_mask=prior, damp=self.damp,
                                      blocksize=self.blocksize, reduce=self.reduce, where=name)
        keep = keep.reshape(weight.shape).to(weight.device)
        param = layer._parameters["weight"]
        with torch.no_grad():
            param.copy_(new.reshape(param.shape).to(dtype=param.dtype, device=param.device))
        if get_mask(layer, "weight") is not None:  # keep the enforcing hook in step with the new zeros
            attach_mask(layer, "weight", keep)
        return keep

    def reset(self) -> None:
        self._xtx = {}

    def __repr__(self) -> str:
        return (f"SparseGPT(damp={self.damp}, blocksize={self.blocksize}, sequential={self.sequential}, "
                f"{len(self.items)} calibration batches)")
