"""Pruning and fine-tuning toolkit (pure Python on top of torch).

Decide which weights go (:func:`prune`, :class:`Pruner` with
:class:`ConstantSparsity` / :class:`PolynomialDecay` schedules), keep them gone
while fine-tuning (:func:`finetune`, :func:`iterative_prune`), report what was
done (:func:`sparsity_report`) and bake it in (:func:`make_permanent`,
:func:`shrink`).
"""

from .criteria import Criterion, LnNorm, Magnitude, Movement, Random, Scores, Taylor, make_criterion
from .granularity import NM, Blocks, Channels, Granularity, Inputs, Unstructured, parse_granularity
from .masks import get_mask, make_permanent
from .pruner import Pruner, prune
from .report import LayerReport, Report, sparsity_report
from .schedules import ConstantSparsity, PolynomialDecay, Schedule
from .selection import select_targets

__all__ = [
    "prune", "Pruner", "ConstantSparsity", "PolynomialDecay", "Schedule",
    "sparsity_report", "Report", "LayerReport", "make_permanent", "get_mask",
    "Criterion", "Magnitude", "Random", "LnNorm", "Taylor", "Movement", "Scores", "make_criterion",
    "Granularity", "Unstructured", "Blocks", "NM", "Channels", "Inputs", "parse_granularity",
    "select_targets",
]
