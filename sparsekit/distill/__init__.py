"""Knowledge distillation while pruning: train a sparse student to reproduce its dense teacher.

:func:`distill` is the training loop (it keeps a :class:`sparsekit.Pruner`'s
masks and schedule); the loss is a list of weighted terms - :class:`MSE`,
:class:`Cosine`, :class:`KL` on outputs, :class:`Hidden` on the outputs of named
modules, :class:`Task` on labels; :func:`prune_and_distill` is the one-call
recipe; :func:`reference_text` / :func:`docstring_text` give real English text
that installs with Python.

The subpackage is also callable: ``sparsekit.distill(student, teacher, data, steps=...)``
is :func:`distill`.

Example:
    >>> import copy, torch, sparsekit
    >>> _ = torch.manual_seed(0)
    >>> teacher = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> student = copy.deepcopy(teacher)
    >>> loss = [sparsekit.distill.KL(temperature=2.0), sparsekit.distill.Hidden("0", weight=0.1)]
    >>> hist = sparsekit.distill(student, teacher, [torch.randn(16, 4)], steps=2, loss=loss, progress=False)
    >>> sorted(k for k in hist.steps[0] if k.startswith("loss"))
    ['loss', 'loss/hidden[0]', 'loss/kl']
"""

import inspect as _inspect
import sys as _sys
import types as _types

from .hooks import Hidden, HiddenCapture, capture_names, first_tensor
from .inputs import LabelKey, call_model, move_batch, split_labels, text_batches
from .loop import DEFAULT_LR, DistillHistory, distill
from .losses import (KL, MSE, Cosine, Key, Pair, Task, Term, as_terms, attention_mask_of, matched_outputs,
                     output_leaves, select_output, token_mean, cosine_distance)
from .recipe import prune_and_distill, pruning_schedule
from .teacher import TeacherRunner, batch_fingerprint, plain_copy
from .text import DOCSTRING_MODULES, docstring_text, prose_units, reference_text

__all__ = [
    "distill", "DistillHistory", "DEFAULT_LR", "prune_and_distill",
    "Term", "MSE", "Cosine", "KL", "Hidden", "Task", "Pair", "Key",
    "HiddenCapture", "TeacherRunner", "first_tensor", "capture_names",
    "output_leaves", "select_output", "matched_outputs", "as_terms",
    "attention_mask_of", "token_mean", "cosine_distance",
    "call_model", "move_batch", "split_labels", "text_batches", "LabelKey",
    "plain_copy", "batch_fingerprint",
    "reference_text", "docstring_text", "prose_units", "DOCSTRING_MODULES", "pruning_schedule",
]


class _CallablePackage(_types.ModuleType):
    """Lets ``sparsekit.distill(...)`` call :func:`distill` while ``sparsekit.distill.X`` stays this package."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return distill(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
__signature__ = _inspect.signature(distill)
