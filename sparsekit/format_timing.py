"""The timings ``convert(format="auto")`` compares: best-of-rounds seconds per call, measured
with :func:`sparsekit.timing.interleaved` and kept per process, so that layers of one shape
share their measurements."""

from __future__ import annotations

import threading
from typing import Callable, Dict, Hashable, Mapping, TypeVar

from sparsekit.timing import interleaved

K = TypeVar("K", bound=Hashable)

__all__ = ["ROUNDS", "best_seconds", "cached_best_seconds", "clear_timing_cache"]

#: Interleaved rounds per measurement; the fastest round counts.
ROUNDS = 7

_cache: Dict[Hashable, float] = {}
_cache_lock = threading.Lock()


def clear_timing_cache() -> None:
    """Forget the per-process timings that ``format="auto"`` reuses across layers.

    Example:
        >>> from sparsekit.convert import clear_timing_cache
        >>> clear_timing_cache()
    """
    with _cache_lock:
        _cache.clear()


def best_seconds(fns: Mapping[K, Callable[[], object]], budget_s: float) -> Dict[K, float]:
    """Best-of-rounds seconds per call for each callable, measured interleaved.

    Each callable is called once to warm up, then timed in :data:`ROUNDS` rounds, called
    back to back often enough that its share of a round lasts about ``budget_s / ROUNDS``.
    Interleaving gives every candidate the same exposure to other processes on the
    machine; the minimum over rounds is robust to time slices stolen from us.

    Example:
        >>> from sparsekit.format_timing import best_seconds
        >>> t = best_seconds({"noop": lambda: None, "sum": lambda: sum(range(100))}, budget_s=0.001)
        >>> sorted(t), all(v > 0 for v in t.values())
        (['noop', 'sum'], True)
    """
    samples = interleaved(fns, rounds=ROUNDS, round_s=budget_s / ROUNDS)
    return {key: min(values) for key, values in samples.items()}


def cached_best_seconds(fns: Mapping[K, Callable[[], object]], budget_s: float) -> Dict[K, float]:
    """:func:`best_seconds` for the keys this process has not timed yet, the cache for the others.

    A key must name everything the time depends on (format, shape, input shape, threads, ...):
    the first measurement under a key is kept until :func:`clear_timing_cache`.

    Example:
        >>> from sparsekit.format_timing import cached_best_seconds
        >>> first = cached_best_seconds({("doctest", "noop"): lambda: None}, budget_s=0.001)
        >>> again = cached_best_seconds({("doctest", "noop"): lambda: sum(range(10**6))}, budget_s=0.001)
        >>> first == again
        True
    """
    with _cache_lock:
        todo = {k: f for k, f in fns.items() if k not in _cache}
    if todo:
        measured = best_seconds(todo, budget_s)
        with _cache_lock:
            for k, v in measured.items():
                _cache.setdefault(k, v)
    with _cache_lock:
        return {k: _cache[k] for k in fns}
