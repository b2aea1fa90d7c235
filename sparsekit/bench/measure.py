"""Measuring: timed calls on the shared interleaved timer, quiet-machine waits,
the streaming-read reference, and the memory a model keeps.

Every timing here comes from :func:`sparsekit.timing.interleaved`: contenders of one
measurement alternate in rounds, so a change in machine load hits all of them alike
and their ratios stay meaningful.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, Dict, Hashable, Mapping, Optional, Tuple, TypeVar

import numpy as np
import torch

from sparsekit._runtime import _core
from sparsekit.timing import calls_for, interleaved

K = TypeVar("K", bound=Hashable)

# A round of :func:`measure` lasts about this long per contender.
ROUND_S = 0.005
# A measurement whose median is over this multiple of its fastest call is noisy.
NOISY_SPREAD = 1.5
# Rounds of a cold measurement (one eviction and one call per contender each).
COLD_ROUNDS = 15


@dataclasses.dataclass
class LoadPolicy:
    """How measurements cope with other processes on a shared machine, and what it cost.

    ``max_wait``: seconds :func:`wait_quiet` waits at most before each measurement;
    ``retries``: how often :func:`measure` repeats a noisy measurement. ``waited`` and
    ``retried`` add up what happened since the last :meth:`reset`.

    Example:
        >>> from sparsekit.bench import LoadPolicy
        >>> p = LoadPolicy()
        >>> p.reset(max_wait=5, retries=2)
        >>> (p.max_wait, p.retries, p.waited, p.retried)
        (5.0, 2, 0.0, 0)
    """

    max_wait: float = 0.0
    retries: int = 0
    waited: float = 0.0
    retried: int = 0

    def reset(self, max_wait: float = 0.0, retries: int = 0) -> None:
        """New limits (negative values count as 0) and zero totals."""
        self.max_wait, self.retries = max(0.0, float(max_wait)), max(0, int(retries))
        self.waited, self.retried = 0.0, 0


# The policy every measurement of this process follows (``sparsekit bench`` sets it).
LOAD = LoadPolicy()


def cpu_busy(window: float = 0.3) -> Optional[float]:
    """Share of all CPUs busy over ``window`` seconds while this process sleeps
    (Linux; ``None`` where ``/proc/stat`` cannot be read).

    Example:
        >>> from sparsekit.bench import cpu_busy
        >>> b = cpu_busy(0.01)
        >>> b is None or 0.0 <= b <= 1.0
        True
    """
    def read() -> Tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)  # total, idle + iowait
    try:
        t0, i0 = read()
        time.sleep(window)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(threshold: float = 0.15) -> None:
    """Waits (up to ``LOAD.max_wait`` seconds) until other processes leave the CPUs
    nearly idle, so that a measurement is not taken while they hold the cores.

    Example:
        >>> from sparsekit.bench import wait_quiet
        >>> wait_quiet()  # LOAD.max_wait is 0 unless `sparsekit bench --wait-quiet` set it
    """
    deadline = time.time() + LOAD.max_wait
    t0 = time.time()
    while time.time() < deadline:
        busy = cpu_busy()
        if busy is None or busy < threshold:
            break
        time.sleep(1.0)
    LOAD.waited += time.time() - t0


def measure(fns: Mapping[K, Callable[[], object]], budget: float = 0.3, min_calls: int = 5, *,
            cold: Optional[Callable[[], object]] = None, cold_rounds: int = COLD_ROUNDS) -> Dict[K, dict]:
    """Times every callable in interleaved rounds; returns per name median/min/calls (seconds).

    Hot (``cold=None``): each round calls every contender ``k`` times (``k`` so that a
    round of it lasts about 5 ms), each call timed on its own, until ``budget`` seconds
    per contender are spent and each has at least ``min_calls`` calls.

    Cold: ``cold`` (untimed, e.g. :func:`sparsekit.bench.cold_setup`) runs at the start of
    each of ``cold_rounds`` rounds, then every contender is called once, in an order
    that rotates from round to round; a first round warms up and is dropped, and the
    budget does not apply. Each contender's entry adds ``evict_s``, the median seconds
    of ``cold``.

    When the median of some contender is over 1.5x its fastest call (other processes
    took the cores for part of the run) the measurement is repeated, at most
    ``LOAD.retries`` times, and the attempt with the smallest such spread is kept.

    Example:
        >>> from sparsekit.bench import measure
        >>> st = measure({"noop": lambda: None}, budget=0.001)
        >>> st["noop"]["calls"] >= 5 and st["noop"]["min"] <= st["noop"]["median"]
        True
        >>> measure({"noop": lambda: None}, cold=lambda: None, cold_rounds=3)["noop"]["calls"]
        3
    """
    best, best_spread = None, math.inf
    for _ in range(1 + LOAD.retries):
        wait_quiet()
        st = _measure_once(fns, budget, min_calls) if cold is None else _measure_cold(fns, cold, cold_rounds)
        spread = max(v["median"] / max(v["min"], 1e-12) for v in st.values())
        if spread < best_spread:
            best, best_spread = st, spread
        if spread <= NOISY_SPREAD:
            break
        LOAD.retried += 1
    return best


def _stats(samples: Mapping[K, list]) -> Dict[K, dict]:
    return {name: {"median": float(np.median(t)), "min": float(np.min(t)), "calls": len(t)}
            for name, t in samples.items()}


def _measure_once(fns: Mapping[K, Callable[[], object]], budget: float, min_calls: int) -> Dict[K, dict]:
    calls = {name: calls_for(fn, ROUND_S) for name, fn in fns.items()}  # one warm-up call, one timed
    samples: Dict[K, list] = {name: [] for name in fns}
    spent = {name: 0.0 for name in fns}
    active = list(fns)
    # One interleaved round at a time, each contender leaving once it has its budget and
    # min_calls: interleaved(budget_s=...) would keep all of them until the slowest to
    # fill its budget is done, so a contender of long calls would run for as many rounds
    # as one of short calls needs.
    while active:
        got = interleaved({n: fns[n] for n in active}, rounds=1, each_call=True,
                          calls={n: calls[n] for n in active})
        for name, t in got.items():
            samples[name] += t
            spent[name] += sum(t)
        active = [n for n in active if spent[n] < budget or len(samples[n]) < min_calls]
    return _stats(samples)


_EVICT = object()  # the key of the untimed eviction step among a cold round's callables


def _measure_cold(fns: Mapping[K, Callable[[], object]], cold: Callable[[], object],
                  rounds: int) -> Dict[K, dict]:
    names = list(fns)
    samples: Dict[K, list] = {name: [] for name in names}
    evict_s: list = []
    for i in range(rounds + 1):  # round 0 warms up (first-touch pages, thread pools) and is dropped
        j = i % len(names)
        # The eviction comes first in the round, then each contender once: the round's
        # eviction evicted every contender's weights, and no contender's call brings
        # another's weights back. Rotating the order shares out who runs first after it.
        order = names[j:] + names[:j]
        got = interleaved({_EVICT: cold, **{n: fns[n] for n in order}}, rounds=1, each_call=True,
                          calls={_EVICT: 1, **{n: 1 for n in order}})
        if i:
            evict_s += got[_EVICT]
            for n in names:
                samples[n] += got[n]
    st = _stats(samples)
    for v in st.values():
        v["evict_s"] = float(np.median(evict_s))
    return st


def interleaved_times(fns: Mapping[K, Callable[[], object]], rounds: int,
                      min_round_s: float = 0.0) -> Dict[K, dict]:
    """Per-call milliseconds of each callable, ``{"min_ms", "median_ms"}`` over ``rounds``.

    Every round calls each function in turn (fair under load from other processes),
    ``k`` times in a row where ``k`` makes one function's share of a round last about
    ``min_round_s`` (at least once); a round's sample is the mean of its ``k`` calls.

    Example:
        >>> from sparsekit.bench import interleaved_times
        >>> t = interleaved_times({"noop": lambda: None}, rounds=3)
        >>> sorted(t["noop"])
        ['median_ms', 'min_ms']
    """
    samples = interleaved(fns, rounds=rounds, round_s=min_round_s, warmup=3)
    return {k: {"min_ms": min(v) * 1e3, "median_ms": float(np.median(v)) * 1e3} for k, v in samples.items()}


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct parameter and buffer: what a model keeps in memory for inference.

    Example:
        >>> import torch
        >>> from sparsekit.bench import resident_bytes
        >>> resident_bytes(torch.nn.Linear(4, 2))  # 8 weights + 2 biases, float32
        40
    """
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.numel() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@functools.lru_cache(maxsize=4)
def _stream_buffer(nbytes: int) -> np.ndarray:
    return np.ones(max(1, nbytes // 4), dtype=np.float32)


def stream_fn(nbytes: int, threads: int) -> Callable[[], float]:
    """A streaming read of ``nbytes`` on ``threads`` threads: the reference a batch-1
    product reading the same bytes is compared with. Called back to back it reads from
    cache (hot); after :func:`sparsekit.bench.cold_setup` it reads from DRAM (cold),
    like the product it is compared with.

    Example:
        >>> from sparsekit.bench import stream_fn
        >>> read = stream_fn(4096, threads=1)
        >>> float(read())  # the sum of 1024 float32 ones
        1024.0
    """
    buf = _stream_buffer(nbytes)

    def run() -> float:
        return _core.stream_read(buf, threads)

    return run
