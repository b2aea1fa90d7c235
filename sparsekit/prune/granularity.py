"""Granularities: how individual weights group into the units that are pruned.

Every weight is seen through its 2-D view ``(out, in * k...)``
(``weight.reshape(weight.shape[0], -1)``; 1-D tensors as ``(n, 1)``), the
layout the block-CSR kernels use.  A granularity turns element scores into
one score per unit and a per-unit keep decision back into an element mask.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["Granularity", "Unstructured", "Blocks", "NM", "Channels", "Inputs", "parse_granularity"]

REDUCTIONS = ("mean", "max", "sum", "l1", "l2")


def view2d(t: Tensor) -> Tensor:
    """The 2-D ``(out, rest)`` view of a weight (1-D: ``(n, 1)``)."""
    if t.dim() == 0:
        raise ValueError("cannot prune a 0-d tensor; select weight tensors with at least one dimension")
    return t.reshape(t.shape[0], -1)


def _reduce(x: Tensor, dims: Tuple[int, ...], reduce: str, valid: Optional[Tensor] = None) -> Tensor:
    """Reduce element scores over ``dims``; ``valid`` marks non-padding elements."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if valid is not None:
        zero = torch.zeros((), dtype=x.dtype)
    if reduce == "max":
        if valid is not None:
            x = torch.where(valid, x, torch.full((), -math.inf, dtype=x.dtype))
        return x.amax(dim=dims)
    if reduce == "l1":
        x = x.abs()
    elif reduce == "l2":
        x = x * x
    if valid is not None:
        x = torch.where(valid, x, zero)
    total = x.sum(dim=dims)
    if reduce == "mean":
        count = valid.sum(dim=dims).to(x.dtype) if valid is not None else math.prod(x.shape[d] for d in dims)
        return total / count
    if reduce == "l2":
        return total.sqrt()
    return total


class Granularity:
    """Base class.  Subclasses define the unit structure of a 2-D weight view.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Blocks
        >>> g = Blocks(2, 2)
        >>> g.n_units(torch.Size([4, 6])), g.unit_scores(torch.arange(24.).reshape(4, 6), "max").tolist()
        (6, [7.0, 9.0, 11.0, 19.0, 21.0, 23.0])
    """

    name = "granularity"

    def n_units(self, shape: torch.Size) -> int:
        raise NotImplementedError  # pragma: no cover

    def unit_scores(self, scores: Tensor, reduce: str) -> Tensor:
        """1-D scores, one per unit, from element scores shaped like the weight."""
        raise NotImplementedError  # pragma: no cover

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        """Element keep-mask (bool, ``shape``) from a per-unit keep vector."""
        raise NotImplementedError  # pragma: no cover

    def units_pruned(self, mask: Tensor) -> Tensor:
        """Per-unit bool: every element of the unit is pruned in ``mask``."""
        return ~self.unit_scores(mask.bool().to(torch.float32), "max").gt(0)

    def eligible(self, unit_scores: Tensor, shape: torch.Size) -> Optional[Tensor]:
        """Units allowed to be pruned (None: all).  N:M restricts it per group."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    __hash__ = None  # type: ignore[assignment]


class Unstructured(Granularity):
    """Each weight is its own unit.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Unstructured
        >>> Unstructured().n_units(torch.Size([3, 4]))
        12
    """

    name = "unstructured"

    def n_units(self, shape: torch.Size) -> int:
        return math.prod(shape)

    def unit_scores(self, scores: Tensor, reduce: str) -> Tensor:
        if reduce in ("l1", "l2"):
            scores = scores.abs()
        return scores.reshape(-1)

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        return keep_units.reshape(shape)

    def units_pruned(self, mask: Tensor) -> Tensor:
        return ~mask.bool().reshape(-1)


class Channels(Granularity):
    """Whole output rows (Linear) or filters (Conv): row ``i`` of the 2-D view.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Channels
        >>> Channels().expand(torch.tensor([True, False]), torch.Size([2, 3])).tolist()
        [[True, True, True], [False, False, False]]
    """

    name = "channels"

    def n_units(self, shape: torch.Size) -> int:
        return int(shape[0])

    def unit_scores(self, scores: Tensor, reduce: str) -> Tensor:
        return _reduce(view2d(scores), (1,), reduce)

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        rest = math.prod(shape[1:]) if len(shape) > 1 else 1
        return keep_units.reshape(-1, 1).expand(-1, rest).reshape(shape)


class Inputs(Granularity):
    """Whole input features (Linear columns) or input channels (Conv, all kernel taps).

    Example:
        >>> import torch
        >>> from sparsekit.prune import Inputs
        >>> Inputs().expand(torch.tensor([True, False, True]), torch.Size([2, 3])).int().tolist()
        [[1, 0, 1], [1, 0, 1]]
    """

    name = "inputs"

    @staticmethod
    def _view3(t: Tensor) -> Tensor:
        if t.dim() < 2:
            raise ValueError("granularity 'inputs' needs a weight with at least 2 dimensions")
        return t.reshape(t.shape[0], t.shape[1], -1)

    def n_units(self, shape: torch.Size) -> int:
        if len(shape) < 2:
            raise ValueError("granularity 'inputs' needs a weight with at least 2 dimensions")
        return int(shape[1])

    def unit_scores(self, scores: Tensor, reduce: str) -> Tensor:
        return _reduce(self._view3(scores), (0, 2), reduce)

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        rest = math.prod(shape[2:]) if len(shape) > 2 else 1
        return keep_units.reshape(1, -1, 1).expand(shape[0], -1, rest).reshape(shape)


class Blocks(Granularity):
    """``(r, c)`` blocks of the 2-D view, aligned at (0, 0) like the block-CSR
    kernels; edge blocks of shapes the block does not divide are partial.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Blocks
        >>> Blocks(2, 2).expand(torch.tensor([True, False]), torch.Size([2, 3])).int().tolist()
        [[1, 1, 0], [1, 1, 0]]
    """

    name = "blocks"

    def __init__(self, r: int, c: int) -> None:
        for v, n in ((r, "block rows"), (c, "block cols")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"granularity block {n} must be a positive int, got {v!r}")
        self.r, self.c = int(r), int(c)

    def _grid(self, shape: torch.Size) -> Tuple[int, int, int, int]:
        rows = int(shape[0])
        cols = math.prod(shape[1:]) if len(shape) > 1 else 1
        return rows, cols, -(-rows // self.r), -(-cols // self.c)

    def n_units(self, shape: torch.Size) -> int:
        _, _, br, bc = self._grid(shape)
        return br * bc

    def unit_scores(self, scores: Tensor, reduce: str) -> Tensor:
        rows, cols, br, bc = self._grid(scores.shape)
        x = view2d(scores)
        pr, pc = br * self.r - rows, bc * self.c - cols
        valid = None
        if pr or pc:
            x = torch.nn.functional.pad(x, (0, pc, 0, pr))
            valid = torch.zeros(br * self.r, bc * self.c, dtype=torch.bool)
            valid[:rows, :cols] = True
            valid = valid.reshape(br, self.r, bc, self.c)
        x = x.reshape(br, self.r, bc, self.c)
        return _reduce(x, (1, 3), reduce, valid).reshape(-1)

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        rows, cols, br, bc = self._grid(shape)
        m = keep_units.reshape(br, 1, bc, 1).expand(br, self.r, bc, self.c).reshape(br * self.r, bc * self.c)
        return m[:rows, :cols].reshape(shape)

    def __repr__(self) -> str:
        return f"Blocks({self.r}, {self.c})"


class NM(Granularity):
    """N:M sparsity along the input dimension: in every group of ``m``
    consecutive entries of a row of the 2-D view at most ``n`` stay nonzero.

    The units are single weights; at most ``m - n`` per group may be pruned
    (a trailing partial group of length ``L`` allows ``max(L - n, 0)``), so
    the sparsity may not exceed that capacity, and a target of ``(m - n) / m``
    on a row length divisible by ``m`` gives exactly the N:M pattern.

    Example:
        >>> import torch
        >>> from sparsekit.prune import Magnitude
        >>> w = torch.tensor([[4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0]])
        >>> Magnitude().compute_mask(w, 0.5, granularity="2:4").int().tolist()
        [[1, 1, 0, 0, 0, 0, 1, 1]]
    """

    name = "n:m"

    def __init__(self, n: int, m: int) -> None:
        if not (isinstance(n, int) and isinstance(m, int)) or not (0 <= n < m):
            raise ValueError(f"N:M pattern needs integers 0 <= N < M, got {n}:{m}")
        self.n, self.m = n, m

    def n_units(self, shape: torch.Size) -> int:
        return math.prod(shape)

    def unit_scores(self, scores: Tensor, reduce: str) -> Tensor:
        return Unstructured().unit_scores(scores, reduce)

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        return keep_units.reshape(shape)

    def units_pruned(self, mask: Tensor) -> Tensor:
        return ~mask.bool().reshape(-1)

    def capacity(self, shape: torch.Size) -> int:
        rows = int(shape[0])
        cols = math.prod(shape[1:]) if len(shape) > 1 else 1
        full, rem = divmod(cols, self.m)
        return rows * (full * (self.m - self.n) + max(rem - self.n, 0))

    def eligible(self, unit_scores: Tensor, shape: torch.Size) -> Tensor:
        rows = int(shape[0])
        cols = unit_scores.numel() // rows
        g = -(-cols // self.m)
        x = unit_scores.reshape(rows, cols)
        pad = g * self.m - cols
        if pad:
            x = torch.nn.functional.pad(x, (0, pad), value=math.inf)
        x = x.reshape(rows, g, self.m)
        order = torch.argsort(x, dim=-1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(self.m).expand_as(order).contiguous())
        lengths = torch.full((g,), self.m, dtype=torch.long)
        if pad:
            lengths[-1] = self.m - pad
        cap = (lengths - self.n).clamp(min=0).reshape(1, g, 1)
        ok = (rank < cap).reshape(rows, g * self.m)[:, :cols]
        return ok.reshape(-1)

    def __repr__(self) -> str:
        return f"NM({self.n}, {self.m})"


_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_ALIASES = {
    "unstructured": Unstructured, "weights": Unstructured, "element": Unstructured,
    "channels": Channels, "filters": Channels, "rows": Channels, "outputs": Channels,
    "inputs": Inputs, "input_features": Inputs, "input_channels": Inputs, "columns": Inputs,
}

GranularityLike = Union[str, Tuple[int, int], Granularity]


def parse_granularity(granularity: GranularityLike) -> Granularity:
    """``"unstructured"``, ``"channels"``, ``"inputs"``, ``(r, c)``, ``"N:M"`` or a Granularity.

    Example:
        >>> from sparsekit.prune import parse_granularity
        >>> parse_granularity("2:4"), parse_granularity((4, 1)), parse_granularity("channels")
        (NM(2, 4), Blocks(4, 1), Channels())
    """
    if isinstance(granularity, Granularity):
        return granularity
    if isinstance(granularity, str):
        key = granularity.strip().lower()
        if key in _ALIASES:
            return _ALIASES[key]()
        m = _NM_RE.match(key)
        if m:
            return NM(int(m.group(1)), int(m.group(2)))
        raise ValueError(
            f"unknown granularity {granularity!r}; use 'unstructured', 'channels', 'inputs', "
            "a block (r, c) such as (4, 1), or an N:M pattern such as '2:4'"
        )
    if isinstance(granularity, (tuple, list)) and len(granularity) == 2:
        r, c = granularity
        if (r, c) == (1, 1):
            return Unstructured()
        return Blocks(r, c)
    raise TypeError(
        "granularity must be a string ('unstructured', 'channels', 'inputs', '2:4'), a block "
        f"tuple (r, c), or a Granularity; got {type(granularity).__name__}: {granularity!r}"
    )
