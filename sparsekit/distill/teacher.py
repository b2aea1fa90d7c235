"""The teacher's side of distillation: eval mode, ``torch.inference_mode``, optional output cache."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .hooks import HiddenCapture
from .inputs import call_model, move_batch

__all__ = ["TeacherRunner", "plain_copy", "batch_signature"]


def plain_copy(out: Any, device: Optional[torch.device] = None) -> Any:
    """Copy every tensor of ``out`` into an ordinary tensor (usable by autograd) on ``device``.

    Outputs made under ``torch.inference_mode`` are inference tensors, which autograd
    may not save for backward; dicts (also Hugging Face ``ModelOutput``) become plain dicts.

    Example:
        >>> import torch
        >>> from sparsekit.distill import plain_copy
        >>> with torch.inference_mode():
        ...     out = {"a": torch.ones(2) * 2}
        >>> plain_copy(out)["a"].is_inference(), out["a"].is_inference()
        (False, True)
    """
    if isinstance(out, Tensor):
        return out.to(device).clone() if device is not None else out.clone()
    if isinstance(out, dict):
        return {k: plain_copy(v, device) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(plain_copy(v, device) for v in out)
    return out


def batch_signature(batch: Any) -> Any:
    """Shapes and dtypes of the tensors in ``batch`` (nested), to recognise a cached batch.

    Example:
        >>> import torch
        >>> from sparsekit.distill import batch_signature
        >>> batch_signature((torch.zeros(2, 3), 5))
        (((2, 3), torch.float32), 5)
    """
    if isinstance(batch, Tensor):
        return (tuple(batch.shape), batch.dtype)
    if isinstance(batch, dict):
        return tuple((k, batch_signature(v)) for k, v in batch.items())
    if isinstance(batch, (tuple, list)):
        return tuple(batch_signature(v) for v in batch)
    return batch if isinstance(batch, (int, float, str, bool, type(None))) else type(batch).__name__


class TeacherRunner:
    """Runs the teacher (eval mode, inference mode) on a batch and returns ``(outputs, hidden states)``
    as ordinary tensors on ``device``.

    With ``cache=True`` the results of batch ``index`` of a pass are kept and reused on
    later passes; the data must then yield the same batches in the same order every
    pass (no shuffling). A batch whose shapes differ from the cached one raises ``ValueError``.

    Example:
        >>> import torch
        >>> from sparsekit.distill import TeacherRunner
        >>> runner = TeacherRunner(torch.nn.Linear(2, 1), cache=True)
        >>> out, hidden = runner(0, torch.ones(3, 2))
        >>> out.shape, hidden, runner(0, torch.ones(3, 2))[0] is out
        (torch.Size([3, 1]), {}, True)
    """

    def __init__(self, teacher: nn.Module, hidden: Sequence[str] = (), *, cache: bool = False,
                 device: Optional[torch.device] = None, autocast_dtype: Optional[torch.dtype] = None) -> None:
        self.teacher = teacher
        self.capture = HiddenCapture(teacher, hidden, "teacher")
        self.cache = bool(cache)
        self.device = device
        self.autocast_dtype = autocast_dtype
        self._cache: Dict[int, Tuple[Any, Any, Dict[str, Tensor]]] = {}
        param = next(iter(teacher.parameters()), None)
        self.teacher_device = param.device if param is not None else None

    def __call__(self, index: Optional[int], batch: Any) -> Tuple[Any, Dict[str, Tensor]]:
        sig = batch_signature(batch) if self.cache else None
        if self.cache and index in self._cache:
            cached_sig, out, hidden = self._cache[index]
            if cached_sig != sig:
                raise ValueError(f"cache_teacher=True but batch {index} of this pass differs from the cached one "
                                 "(shapes/dtypes); the data must yield the same batches in the same order every pass")
            return out, hidden
        device_type = self.teacher_device.type if self.teacher_device is not None else "cpu"
        amp = torch.autocast(device_type=device_type, dtype=self.autocast_dtype) \
            if self.autocast_dtype is not None else contextlib.nullcontext()
        with self.capture, torch.inference_mode(), amp:
            raw = call_model(self.teacher, move_batch(batch, self.teacher_device))
            raw_hidden = self.capture.take()
        out, hidden = plain_copy(raw, self.device), plain_copy(raw_hidden, self.device)
        if self.cache and index is not None:
            self._cache[index] = (sig, out, hidden)
        return out, hidden

    def __len__(self) -> int:
        """Number of cached batches."""
        return len(self._cache)

