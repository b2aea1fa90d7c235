"""Sparsity-friendly penalties, used as a loss term: ``loss + reg(model)``."""

from __future__ import annotations

import math
import numbers
from typing import List, Sequence

import torch
from torch import Tensor, nn

from .granularity import Blocks, Channels, GranularityLike, Inputs, parse_granularity, view2d
from .selection import Selector, select_targets

__all__ = ["Regularizer", "L1", "L2", "ElasticNet", "GroupLasso"]


def _check_strength(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a non-negative number, got {type(v).__name__}: {v!r}")
    if not (float(v) >= 0 and math.isfinite(float(v))):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


class Regularizer:
    """Base class: ``reg(model)`` sums :meth:`penalty` over the selected weights
    (by default Linear/Conv weights; ``include``/``exclude``/``param_names`` as in ``prune``).

    Example:
        >>> import torch
        >>> from sparsekit.prune import Regularizer
        >>> class MaxAbs(Regularizer):
        ...     def penalty(self, weight):
        ...         return weight.abs().max()
        >>> layer = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[0.5, -2.0]]))
        >>> MaxAbs()(layer).item()
        2.0
    """

    def __init__(self, include: Selector = None, exclude: Selector = None,
                 param_names: Sequence[str] = ("weight",)) -> None:
        self.include, self.exclude, self.param_names = include, exclude, tuple(param_names)

    def penalty(self, weight: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def weights(self, model: nn.Module) -> List[Tensor]:
        return [t.weight for t in select_targets(model, self.include, self.exclude, self.param_names)]

    def __call__(self, model: nn.Module) -> Tensor:
        ws = self.weights(model)
        if not ws:
            raise ValueError("the regularizer selected no weights; adjust include/exclude")
        total = self.penalty(ws[0])
        for w in ws[1:]:
            total = total + self.penalty(w)
        return total


class L1(Regularizer):
    """``strength * sum |w|``.

    Example:
        >>> import torch
        >>> from sparsekit.prune import L1
        >>> layer = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, -3.0]]))
        >>> L1(0.5)(layer).item()
        2.0
    """

    def __init__(self, strength: float, **kw) -> None:
        super().__init__(**kw)
        self.strength = _check_strength(strength, "strength")

    def penalty(self, weight: Tensor) -> Tensor:
        return self.strength * weight.abs().sum()


class L2(Regularizer):
    """``strength * sum w**2`` (no 1/2 factor).

    Example:
        >>> import torch
        >>> from sparsekit.prune import L2
        >>> layer = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, -3.0]]))
        >>> L2(0.5)(layer).item()
        5.0
    """

    def __init__(self, strength: float, **kw) -> None:
        super().__init__(**kw)
        self.strength = _check_strength(strength, "strength")

    def penalty(self, weight: Tensor) -> Tensor:
        return self.strength * weight.pow(2).sum()


class ElasticNet(Regularizer):
    """``l1 * sum |w| + l2 * sum w**2``.

    Example:
        >>> import torch
        >>> from sparsekit.prune import ElasticNet
        >>> layer = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, -3.0]]))
        >>> ElasticNet(l1=1.0, l2=0.1)(layer).item()
        5.0
    """

    def __init__(self, l1: float, l2: float, **kw) -> None:
        super().__init__(**kw)
        self.l1, self.l2 = _check_strength(l1, "l1"), _check_strength(l2, "l2")

    def penalty(self, weight: Tensor) -> Tensor:
        return self.l1 * weight.abs().sum() + self.l2 * weight.pow(2).sum()


class GroupLasso(Regularizer):
    """``strength * sum_g sqrt(|g|) * ||w_g||_2`` over rows/filters (``"channels"``),
    input columns (``"inputs"``) or ``(r, c)`` blocks: drives whole groups to zero.
    ``scale_by_size=False`` drops the ``sqrt(|g|)`` factor.

    Example:
        >>> import torch
        >>> from sparsekit.prune import GroupLasso
        >>> layer = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        >>> GroupLasso(1.0, "channels", scale_by_size=False)(layer).item()
        5.0
    """

    def __init__(self, strength: float, granularity: GranularityLike = "channels", scale_by_size: bool = True,
                 **kw) -> None:
        super().__init__(**kw)
        self.strength = _check_strength(strength, "strength")
        self.granularity = parse_granularity(granularity)
        if not isinstance(self.granularity, (Channels, Inputs, Blocks)):
            raise ValueError(f"GroupLasso groups rows ('channels'), columns ('inputs') or blocks (r, c); "
                             f"got {self.granularity!r} (use L1 for unstructured sparsity)")
        self.scale_by_size = bool(scale_by_size)

    def groups(self, weight: Tensor) -> Tensor:
        """``(n_groups, group_len)`` view of the weight (zero-padded for partial blocks)."""
        g = self.granularity
        if isinstance(g, Channels):
            return view2d(weight)
        if isinstance(g, Inputs):
            w3 = weight.reshape(weight.shape[0], weight.shape[1], -1)
            return w3.permute(1, 0, 2).reshape(weight.shape[1], -1)
        w2 = view2d(weight)
        R, C = w2.shape
        br, bc = -(-R // g.r), -(-C // g.c)  # type: ignore[union-attr]
        w2 = torch.nn.functional.pad(w2, (0, bc * g.c - C, 0, br * g.r - R))  # type: ignore[union-attr]
        return w2.reshape(br, g.r, bc, g.c).permute(0, 2, 1, 3).reshape(br * bc, g.r * g.c)  # type: ignore[union-attr]

    def _sizes(self, weight: Tensor) -> Tensor:
        g = self.granularity
        if isinstance(g, Blocks):
            ones = torch.ones_like(weight, dtype=torch.float32)
            return GroupLasso.groups(self, ones).sum(dim=1)
        grp = self.groups(weight)
        return torch.full((grp.shape[0],), float(grp.shape[1]))

    def penalty(self, weight: Tensor) -> Tensor:
        norms = torch.linalg.vector_norm(self.groups(weight), ord=2, dim=1)
        if self.scale_by_size:
            norms = norms * self._sizes(weight).to(norms.dtype).sqrt()
        return self.strength * norms.sum()
