"""Timing several callables side by side, in interleaved rounds.

Every figure sparsekit prints (``convert(format="auto")``'s choice, ``sparsekit
bench``, ``sparsekit demo``, the examples) comes from :func:`interleaved`. A round
calls each callable in turn, so all of them see the same load from other
processes; each returns its samples and the caller takes the statistic it needs
(``min`` for choosing a format, the median for a report).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, Hashable, List, Mapping, Optional, TypeVar

K = TypeVar("K", bound=Hashable)

__all__ = ["interleaved", "calls_for"]


def calls_for(fn: Callable[[], object], seconds: float, warmup: int = 1) -> int:
    """How many back-to-back calls of ``fn`` last about ``seconds`` (at least 1).

    ``fn`` is first called ``warmup`` times (first-touch pages, thread pools, lazily
    built kernels), then once more under the clock.
    """
    for _ in range(max(warmup, 0)):
        fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(seconds / once))


def interleaved(fns: Mapping[K, Callable[[], object]], *, rounds: Optional[int] = None,
                budget_s: Optional[float] = None, round_s: float = 0.0, min_rounds: int = 1,
                each_call: bool = False, rotate: bool = False, warmup: int = 1,
                calls: Optional[Mapping[K, int]] = None) -> Dict[K, List[float]]:
    """Seconds per call of each callable, sampled in interleaved rounds.

    A round runs every callable ``k`` times in a row, ``k`` chosen per callable so its
    share of a round lasts about ``round_s`` (at least one call; pass ``calls`` to fix
    ``k``). A round yields one sample per callable (its mean over the ``k`` calls), or
    ``k`` samples with ``each_call=True`` (each call timed on its own). Rounds go on
    until ``rounds`` are done, or, with ``budget_s``, until every callable has spent
    that many seconds under the clock (and ``min_rounds`` rounds have run).
    ``rotate=True`` changes which callable goes first in each round, so none always
    follows the same neighbour (whose cache footprint it would inherit).

    Example:
        >>> from sparsekit.timing import interleaved
        >>> s = interleaved({"a": lambda: None, "b": lambda: sum(range(10))}, rounds=5)
        >>> sorted(s), len(s["a"])
        (['a', 'b'], 5)
    """
    if rounds is None and budget_s is None:
        raise ValueError("interleaved() needs rounds or budget_s")
    if rounds is not None and rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    keys = list(fns)
    reps = dict(calls) if calls is not None else {k: calls_for(fns[k], round_s, warmup) for k in keys}
    samples: Dict[K, List[float]] = {k: [] for k in keys}
    spent = {k: 0.0 for k in keys}
    clock = time.perf_counter
    limit = rounds if rounds is not None else math.inf
    done = 0
    while done < limit:
        if budget_s is not None and done >= min_rounds and min(spent.values()) >= budget_s:
            break
        order = keys[done % len(keys):] + keys[:done % len(keys)] if rotate else keys
        for k in order:
            fn, n = fns[k], reps[k]
            if each_call:
                for _ in range(n):
                    t0 = clock()
                    fn()
                    dt = clock() - t0
                    samples[k].append(dt)
                    spent[k] += dt
            else:
                t0 = clock()
                for _ in range(n):
                    fn()
                dt = clock() - t0
                samples[k].append(dt / n)
                spent[k] += dt
        done += 1
    return samples
