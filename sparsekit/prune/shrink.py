"""Structural shrinking: drop hidden units / channels / input features that pruning left dead."""

from __future__ import annotations

import copy
from typing import List, Optional

import torch
from torch import Tensor, nn

from .masks import make_permanent

__all__ = ["shrink", "InputSelect"]

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.CELU,
                nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Mish, nn.Identity, nn.Dropout,
                nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Tanhshrink, nn.Softsign)


class InputSelect(nn.Module):
    """Keeps the input features (last dim) or channels (dim 1 of 4-D inputs) a shrunk model still uses.

    Example:
        >>> import torch
        >>> from sparsekit.prune import InputSelect
        >>> InputSelect(torch.tensor([0, 2]), dim=-1)(torch.tensor([[1.0, 2.0, 3.0]])).tolist()
        [[1.0, 3.0]]
    """

    def __init__(self, index: Tensor, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(self.dim, self.index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kept={self.index.numel()}"


def _producer_kind(m: nn.Module) -> Optional[str]:
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.Conv2d) and m.groups == 1:
        return "conv"
    return None


def _between_ok(m: nn.Module, kind: str) -> bool:
    if isinstance(m, _ELEMENTWISE):
        return True
    if kind == "linear" and isinstance(m, nn.BatchNorm1d):
        return True
    return kind == "conv" and isinstance(m, nn.BatchNorm2d)


def _consumer_ok(m: nn.Module, kind: str) -> bool:
    if kind == "linear":
        return isinstance(m, nn.Linear)
    return isinstance(m, nn.Conv2d) and m.groups == 1


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
    else:
        module._buffers[name] = value.detach().clone()


def _constant_outputs(producer: nn.Module, between: List[nn.Module], kind: str) -> Tensor:
    """What each output unit becomes after the in-between modules if its weights are all zero."""
    n = producer.weight.shape[0]
    b = producer.bias.detach() if producer.bias is not None else torch.zeros(n, dtype=producer.weight.dtype)
    x = b.reshape(1, n) if kind == "linear" else b.reshape(1, n, 1, 1)
    with torch.no_grad():
        for m in between:
            was = m.training
            m.eval()
            x = m(x)
            m.train(was)
    return x.reshape(n)


def _shrink_pair(producer: nn.Module, between: List[nn.Module], consumer: nn.Module, kind: str) -> int:
    W, V = producer.weight.detach(), consumer.weight.detach()
    n = W.shape[0]
    rows_zero = ~(W.reshape(n, -1) != 0).any(dim=1)
    unused = ~(V.transpose(0, 1).reshape(n, -1) != 0).any(dim=1)
    const = _constant_outputs(producer, between, kind)
    if kind == "linear":
        foldable = rows_zero
    else:
        no_pad = all(p == 0 for p in consumer.padding) if isinstance(consumer.padding, tuple) else consumer.padding == 0
        foldable = rows_zero & ((const == 0) | torch.tensor(bool(no_pad)))
    drop = unused | foldable
    if bool(drop.all()):
        drop[int(torch.nonzero(drop)[-1])] = False  # keep one unit so shapes stay valid
    if not bool(drop.any()):
        return 0
    keep = ~drop
    fold = drop & ~unused
    if bool(fold.any()):
        # constant activations feed the consumer's bias: sum over kernel taps of w * a
        contrib = (V[:, fold] * const[fold].reshape((1, -1) + (1,) * (V.dim() - 2))).reshape(V.shape[0], -1).sum(dim=1)
        bias = consumer.bias.detach() if consumer.bias is not None else torch.zeros(V.shape[0], dtype=V.dtype)
        if consumer.bias is None:
            consumer.bias = nn.Parameter(bias + contrib)
        else:
            _set(consumer, "bias", bias + contrib)
    _set(producer, "weight", W[keep])
    if producer.bias is not None:
        _set(producer, "bias", producer.bias.detach()[keep])
    for m in between:
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, name, None) is not None:
                    _set(m, name, getattr(m, name).detach()[keep])
            m.num_features = int(keep.sum())
    _set(consumer, "weight", V[:, keep])
    k = int(keep.sum())
    if kind == "linear":
        producer.out_features, consumer.in_features = k, k
    else:
        producer.out_channels, consumer.in_channels = k, k
    return int(drop.sum())


def _chain(seq: nn.Sequential) -> List[nn.Module]:
    """The modules ``seq`` runs in order, nested ``nn.Sequential``s flattened into one chain
    (``Sequential(Sequential(conv, bn, relu), Sequential(conv, bn))`` is conv-bn-relu-conv-bn)."""
    out: List[nn.Module] = []
    for m in seq:
        out.extend(_chain(m) if isinstance(m, nn.Sequential) else [m])
    return out


def _shrink_sequential(mods: List[nn.Module]) -> int:
    removed = 0
    for i, p in enumerate(mods):
        kind = _producer_kind(p)
        if kind is None:
            continue
        j = i + 1
        while j < len(mods) and _between_ok(mods[j], kind):
            j += 1
        if j < len(mods) and _consumer_ok(mods[j], kind):
            removed += _shrink_pair(p, mods[i + 1:j], mods[j], kind)
    return removed


def shrink(model: nn.Module, *, inputs: bool = False, inplace: bool = False) -> nn.Module:
    """Remove hidden units, output channels (and with ``inputs=True`` input features) that are all zero.

    Inside every ``nn.Sequential`` (nested ones read as one chain): a Linear (or Conv2d) whose output unit ``j`` has an
    all-zero weight row, or whose consumer never reads ``j`` (all-zero column), loses
    unit ``j``; the change propagates through elementwise activations, Dropout and
    BatchNorm1d/2d to the next Linear (Conv2d).  A dead unit with a bias is a
    constant; its effect is folded into the consumer's bias (for convolutions only
    when that is exact: the constant is zero or the consumer has no padding).
    With ``inputs=True`` and a first Linear/Conv2d, unused input features (columns)
    are dropped and an :class:`InputSelect` in front picks the kept ones, so the
    model still takes the original inputs.  Masks are baked in first; results are
    exact up to float rounding in eval mode (BatchNorm running statistics).

    Returns a new model (``model`` itself with ``inplace=True``).

    Example:
        >>> import torch
        >>> from sparsekit.prune import prune, shrink
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> _ = prune(model, 0.5, granularity="channels", include="0")
        >>> small = shrink(model)
        >>> small[0].out_features, small[2].in_features
        (8, 8)
        >>> x = torch.randn(4, 8)
        >>> torch.allclose(small(x), model(x), atol=1e-6)
        True
    """
    if not inplace:
        model = copy.deepcopy(model)
    make_permanent(model)
    nested = {id(c) for m in model.modules() if isinstance(m, nn.Sequential)
              for c in m.children() if isinstance(c, nn.Sequential)}
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential) and id(m) not in nested:
            _shrink_sequential(_chain(m))
    if inputs:
        first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
        if first is None or (isinstance(first, nn.Conv2d) and first.groups != 1):
            raise ValueError("inputs=True needs a model whose first weight layer is a Linear or Conv2d (groups=1)")
        W = first.weight.detach()
        used = (W.transpose(0, 1).reshape(W.shape[1], -1) != 0).any(dim=1)
        if not bool(used.any()):
            used[0] = True
        if not bool(used.all()):
            idx = torch.nonzero(used).reshape(-1)
            _set(first, "weight", W[:, used])
            if isinstance(first, nn.Linear):
                first.in_features = int(used.sum())
            else:
                first.in_channels = int(used.sum())
            model = nn.Sequential(InputSelect(idx, -1 if isinstance(first, nn.Linear) else 1), model)
    return model
