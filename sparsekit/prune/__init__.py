"""Pruning and fine-tuning toolkit (pure Python on top of torch).

Decide which weights go (:func:`prune`, :class:`Pruner` with
:class:`ConstantSparsity` / :class:`PolynomialDecay` schedules), keep them gone
while fine-tuning (:func:`finetune`, :func:`iterative_prune`), prune by calibration
activations (:class:`Wanda`, :class:`SparseGPT`), report what was
done (:func:`sparsity_report`) and bake it in (:func:`make_permanent`,
:func:`shrink`).

The subpackage is also callable: ``sparsekit.prune(model, 0.5)`` is
:func:`prune` even where the name resolves to this module.

Example:
    >>> import torch, sparsekit
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> masks = sparsekit.prune(model, 0.75)
    >>> round(sparsekit.sparsity_report(model).to_dict()["total"]["sparsity"], 2)
    0.75
"""

import inspect as _inspect
import sys as _sys
import types as _types

from .calibration import (CalibratedCriterion, InputStats, as_calibration_items, call_model, capture_input_stats,
                          conv_patches, layer_input_rows)
from .criteria import Criterion, LnNorm, Magnitude, Movement, Random, Scores, Taylor, make_criterion
from .fit import History, evaluate, finetune
from .granularity import NM, Blocks, Channels, Granularity, Inputs, Unstructured, parse_granularity
from .iterative import IterativeResult, Round, iterative_prune
from .masks import get_mask, make_permanent
from .pruner import Pruner, prune
from .regularizers import L1, L2, ElasticNet, GroupLasso, Regularizer
from .report import LayerReport, Report, sparsity_report
from .schedules import ConstantSparsity, PolynomialDecay, Schedule
from .selection import select_targets
from .shrink import InputSelect, shrink
from .sparsegpt import SparseGPT
from .wanda import Wanda

__all__ = [
    "prune", "Pruner", "ConstantSparsity", "PolynomialDecay", "Schedule",
    "sparsity_report", "Report", "LayerReport", "make_permanent", "get_mask",
    "finetune", "evaluate", "History", "iterative_prune", "IterativeResult", "Round",
    "L1", "L2", "ElasticNet", "GroupLasso", "Regularizer", "shrink", "InputSelect",
    "Criterion", "Magnitude", "Random", "LnNorm", "Taylor", "Movement", "Scores", "make_criterion",
    "Granularity", "Unstructured", "Blocks", "NM", "Channels", "Inputs", "parse_granularity",
    "select_targets", "Wanda", "SparseGPT", "CalibratedCriterion", "call_model", "as_calibration_items",
    "capture_input_stats", "InputStats", "conv_patches", "layer_input_rows",
]


class _CallablePackage(_types.ModuleType):
    """Lets ``sparsekit.prune(...)`` call :func:`prune` while ``sparsekit.prune.X`` stays this package."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return prune(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
__signature__ = _inspect.signature(prune)
