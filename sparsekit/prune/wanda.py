"""Wanda: prune by weight magnitude times input activation norm (Sun et al. 2023).

The score of weight ``W[i, j]`` is ``|W[i, j]| * ||x_j||_2``, where
``||x_j||_2`` is the L2 norm of input feature ``j`` over every calibration
row (every token of every sequence; for convolutions, every output position
of the unfolded input, so ``j`` runs over input channel x kernel position).

Comparison groups:

* ``granularity="unstructured"`` with ``scope="layer"``: weights compete
  within their output row (the paper's per-output comparison group); each
  row loses the same number of weights, the remainder of
  ``round(sparsity * numel)`` going to the rows whose next candidate scores
  lowest, so the layer total stays exact.
* N:M patterns and ``(r, c)`` blocks: the scores feed the granularity as
  magnitude's ``|w|`` does (N:M per group of M; blocks by ``reduce``).
* ``scope="global"``: one ranking of the scores across layers (no per-row
  groups); norms are sums over calibration rows, so a convolution that sees
  many output positions has larger norms than a Linear layer.

One calibration pass captures the norms of every target at the first mask
computation (with the model as it is then); later updates of a
:class:`~sparsekit.prune.Pruner` reuse them until :meth:`Wanda.reset`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor, nn

from ._validation import units_to_prune
from .calibration import CalibratedCriterion, capture_input_stats
from .granularity import GranularityLike, Unstructured, parse_granularity, view2d
from .ranking import lowest_per_row

__all__ = ["Wanda"]


class Wanda(CalibratedCriterion):
    """``|W| * ||x||_2`` scores from calibration inputs; see the module notes for comparison groups.

    Args:
        calibration: iterable of model inputs (calling rule of :func:`~sparsekit.prune.call_model`).
        reduce: how element scores pool into blocks (``"mean"``, ``"max"``, ...).

    Example:
        >>> import torch
        >>> from sparsekit.prune import prune
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 2))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]))
        >>> x = torch.tensor([[10.0, 1.0, 1.0, 0.1]])  # feature norms 10, 1, 1, 0.1
        >>> prune(model, 0.5, method="wanda", calibration=[x])["0.weight"].int().tolist()
        [[1, 0, 1, 0], [1, 1, 0, 0]]
    """

    def __init__(self, calibration: Any, reduce: str = "mean") -> None:
        super().__init__(calibration)
        self.reduce = reduce
        self._norms: Dict[str, Tensor] = {}

    def norms(self, name: str) -> Tensor:
        """L2 norm of every input feature of parameter ``name``'s layer (captured on first use)."""
        self.module_for(name)
        if not self._norms:
            assert self.model is not None
            stats = capture_input_stats(self.model, self.modules, self.items)
            self._norms = {n: st.norms for n, st in stats.items()}
        return self._norms[name]

    def score(self, weight: Tensor, *, name: str, module: Optional[nn.Module] = None, step: int = 0) -> Tensor:
        w = view2d(weight.detach()).to(device="cpu", dtype=torch.float64).abs()
        norms = self.norms(name)
        if norms.numel() != w.shape[1]:
            raise ValueError(f"{name}: weight has {w.shape[1]} inputs but its layer saw {norms.numel()} features")
        return (w * norms.reshape(1, -1)).reshape(weight.shape)

    def compute_mask(self, weight: Tensor, amount: Union[int, float], *, granularity: GranularityLike = "unstructured",
                     name: str = "weight", module: Optional[nn.Module] = None, step: int = 0,
                     prior_mask: Optional[Tensor] = None, regrow: bool = False) -> Tensor:
        g = parse_granularity(granularity)
        if not isinstance(g, Unstructured):
            return super().compute_mask(weight, amount, granularity=g, name=name, module=module, step=step,
                                        prior_mask=prior_mask, regrow=regrow)
        scores = view2d(self.score(weight, name=name, module=module, step=step))
        if torch.isnan(scores).any():
            raise ValueError(f"Wanda scores for {name} contain NaN; check the weights")
        k = units_to_prune(amount, scores.numel(), where=name)
        forced = None if prior_mask is None or regrow else ~view2d(prior_mask.detach().cpu().bool())
        prune = lowest_per_row(scores, k, forced)
        return (~prune).reshape(weight.shape).to(weight.device)

    def reset(self) -> None:
        self._norms = {}

    def __repr__(self) -> str:
        return f"Wanda(reduce={self.reduce!r}, {len(self.items)} calibration batches)"
