"""How a batch reaches a model: the calling rule, device moves, labels, batches of text.

The calling rule, shared by :func:`sparsekit.distill` and the calibration-aware
pruning criteria: a tensor ``x`` -> ``model(x)``; a tuple or list ->
``model(*items)``; a dict (Hugging Face tokenizer output) -> ``model(**d)``.
A model whose forward takes one dict (sentence-transformers) gets its batches
as 1-tuples ``(features,)``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from sparsekit.prune.calibration import call_model  # the one calling rule, re-exported here

__all__ = ["call_model", "move_batch", "split_labels", "text_batches", "LabelKey"]

LabelKey = Union[int, str]


def move_batch(batch: Any, device: Optional[torch.device]) -> Any:
    """Move every tensor in ``batch`` (nested tuples, lists, dicts) to ``device``; None keeps it.

    Example:
        >>> import torch
        >>> from sparsekit.distill import move_batch
        >>> b = move_batch({"ids": torch.zeros(2, dtype=torch.long), "n": 3}, torch.device("cpu"))
        >>> b["ids"].device.type, b["n"]
        ('cpu', 3)
    """
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_batch(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: move_batch(v, device) for k, v in batch.items()}
    return batch


def split_labels(batch: Any, keys: Sequence[LabelKey]) -> Tuple[Any, Dict[LabelKey, Any]]:
    """Take the label items ``keys`` (tuple indices or dict keys) out of ``batch``.

    Returns ``(model_batch, {key: label})``; the model is then called on the rest.

    Example:
        >>> import torch
        >>> from sparsekit.distill import split_labels
        >>> rest, labels = split_labels((torch.zeros(2, 3), torch.tensor([0, 1])), [-1])
        >>> rest[0].shape, labels[-1].tolist()
        (torch.Size([2, 3]), [0, 1])
    """
    if not keys:
        return batch, {}
    if isinstance(batch, Mapping):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"labelled batch has no key(s) {missing}; it has {sorted(map(str, batch))}")
        rest = {k: v for k, v in batch.items() if k not in keys}
        return rest, {k: batch[k] for k in keys}
    if isinstance(batch, (tuple, list)):
        n = len(batch)
        bad = [k for k in keys if not isinstance(k, int) or not -n <= k < n]
        if bad:
            raise ValueError(f"label index/key {bad} does not fit a batch tuple of {n} items")
        drop = {k % n for k in keys}  # type: ignore[operator]
        rest = [b for i, b in enumerate(batch) if i not in drop]
        labels = {k: batch[k] for k in keys}  # type: ignore[index]
        return tuple(rest), labels  # still a tuple: model(*rest) even for one item
    raise ValueError(f"labels {list(keys)} need tuple or dict batches, got {type(batch).__name__}")


def text_batches(texts: Iterable[str], model: nn.Module, *, batch_size: int = 16,
                 tokenizer: Optional[Callable[..., Any]] = None, max_length: int = 128) -> List[Any]:
    """Tokenize ``texts`` into model batches that follow the calling rule.

    A sentence-transformers model (it has ``.preprocess`` or ``.tokenize``) gets 1-tuples ``(features,)``;
    otherwise ``tokenizer`` (a Hugging Face tokenizer) makes dict batches
    (``model(**batch)``), padded and truncated to ``max_length``.

    Example:
        >>> import torch
        >>> from sparsekit.distill import text_batches
        >>> tok = lambda texts, **kw: {"input_ids": torch.tensor([[len(t)] for t in texts])}
        >>> [b["input_ids"].tolist() for b in text_batches(["ab", "abc", "a"], torch.nn.Identity(),
        ...                                                batch_size=2, tokenizer=tok)]
        [[[2], [3]], [[1]]]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must all be str")
    # sentence-transformers >= 6 names it preprocess (tokenize still works, with a deprecation warning)
    tokenize = getattr(model, "preprocess", None) or getattr(model, "tokenize", None)
    if tokenizer is None and not callable(tokenize):
        raise TypeError("texts need a tokenizer: pass tokenizer=... (a Hugging Face tokenizer) or a model with "
                        ".tokenize (sentence-transformers)")
    out: List[Any] = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        if tokenizer is not None:
            out.append(dict(tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                                      return_tensors="pt")))
        else:
            out.append((dict(tokenize(chunk)),))  # type: ignore[misc]
    return out
