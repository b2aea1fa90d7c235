"""Cache state of a measurement: weights hot in cache, or evicted (cold).

At batch 1 a product reads each stored weight once, so where the weights come from
decides its speed. Both states are real, for different models:

* ``hot``: the same layer called back to back. Its weights stay in the caches (a
  whole model that fits in the last-level cache behaves like this); a weight larger
  than the cache, such as a big dense matrix, still comes partly from DRAM.
* ``cold``: before every call, :class:`Evictor` streams a buffer of
  :data:`EVICT_FACTOR` times the last-level cache (read from the machine by
  :func:`last_level_cache`, at most :data:`EVICT_MAX_BYTES`) through every CPU, which
  replaces what the caches held; then :func:`cold_setup` runs the measured code once
  on a small layer of other weights (so the interpreter's and the library's code and
  state are warm again, as they are in a model whose other layers run the same code)
  and reads the call's activations back. Only the weights come from DRAM, as in a
  model much larger than the cache. The eviction is not timed: it runs between timed
  calls (:func:`sparsekit.bench.measure` with ``cold=``, or pytest-benchmark's
  ``pedantic(setup=...)``).

Why a streaming read and not rotating over copies of the weights: one buffer serves
every contender (torch, scipy, sparsekit) without copying their weights, and its size
follows the cache read from the machine. Twice the cache leaves margin for replacement
policies that protect lines used more than once.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Iterable, Optional, Tuple

import numpy as np
import torch

from sparsekit._runtime import _core

# The states a measurement can be in, in report order.
CACHE_STATES = ("hot", "cold")
# The eviction buffer is this many times the last-level cache ...
EVICT_FACTOR = 2
# ... and at most this many bytes (memory is shared with other processes).
EVICT_MAX_BYTES = 1 << 30
# Taken as the last-level cache where the machine does not say (no sysfs, no sysconf).
ASSUMED_LLC_BYTES = 256 << 20

_SYSFS_CACHE = "/sys/devices/system/cpu/cpu0/cache"


def _size_bytes(text: str) -> int:
    """``"266240K"`` (a sysfs cache size) in bytes."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def last_level_cache(sysfs: str = _SYSFS_CACHE) -> Tuple[int, str]:
    """Bytes of this machine's largest (last-level) cache, and where the figure came from:
    ``"sysfs"`` (Linux, ``<sysfs>/index*/size``), ``"sysconf"`` or ``"assumed"``
    (:data:`ASSUMED_LLC_BYTES`).

    Example:
        >>> from sparsekit.bench import last_level_cache
        >>> nbytes, source = last_level_cache()
        >>> nbytes > 0 and source in ("sysfs", "sysconf", "assumed")
        True
    """
    sizes = []
    try:
        for entry in os.listdir(sysfs):
            if entry.startswith("index"):
                with open(os.path.join(sysfs, entry, "size")) as f:
                    sizes.append(_size_bytes(f.read()))
    except (OSError, ValueError):
        sizes = []
    if sizes:
        return max(sizes), "sysfs"
    for name in ("SC_LEVEL4_CACHE_SIZE", "SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        if name in getattr(os, "sysconf_names", {}):
            try:
                value = os.sysconf(name)
            except (OSError, ValueError):
                continue
            if value > 0:
                return value, "sysconf"
    return ASSUMED_LLC_BYTES, "assumed"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _buffer(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 4, dtype=np.float32)  # written once, so its pages are real


class Evictor:
    """Evicts the caches: one call streams ``nbytes`` (:data:`EVICT_FACTOR` x the
    last-level cache, at most :data:`EVICT_MAX_BYTES`) through ``threads`` threads,
    so every core's private caches and the shared one see it. The buffer is allocated
    at the first call and kept for the process.

    Example:
        >>> from sparsekit.bench import Evictor
        >>> ev = Evictor(llc_bytes=1 << 20, threads=1)  # a 1 MiB cache: a 2 MiB buffer
        >>> ev.nbytes, ev.evicts_llc
        (2097152, True)
        >>> ev()  # reads the buffer once
        >>> sorted(ev.info())
        ['evict_bytes', 'evict_factor', 'evict_threads', 'evicts_llc', 'llc_bytes', 'llc_source']
    """

    def __init__(self, llc_bytes: Optional[int] = None, threads: Optional[int] = None) -> None:
        if llc_bytes is None:
            self.llc_bytes, self.llc_source = last_level_cache()
        else:
            self.llc_bytes, self.llc_source = int(llc_bytes), "given"
        self.nbytes = min(EVICT_FACTOR * self.llc_bytes, EVICT_MAX_BYTES) // 64 * 64
        self.threads = threads or _cpus()

    @property
    def evicts_llc(self) -> bool:
        """Whether the buffer is larger than the last-level cache (false only for a cache
        over :data:`EVICT_MAX_BYTES`, which this buffer cannot fully replace)."""
        return self.nbytes > self.llc_bytes

    def __call__(self) -> None:
        _core.stream_read(_buffer(self.nbytes), self.threads)

    def info(self) -> dict:
        """How cold is produced, for a report: cache size and source, buffer bytes, threads."""
        return {"llc_bytes": self.llc_bytes, "llc_source": self.llc_source, "evict_bytes": self.nbytes,
                "evict_factor": EVICT_FACTOR, "evict_threads": self.threads, "evicts_llc": self.evicts_llc}


@functools.lru_cache(maxsize=1)
def evictor() -> Evictor:
    """The process's :class:`Evictor` for this machine's last-level cache, on every CPU.

    Example:
        >>> from sparsekit.bench import evictor, last_level_cache
        >>> evictor().llc_bytes == last_level_cache()[0]
        True
    """
    return Evictor()


def cache_of(row: dict) -> str:
    """The cache state of a result row: its ``cache`` field (rows written before the field
    existed were all measured hot).

    Example:
        >>> from sparsekit.bench import cache_of
        >>> cache_of({"cache": "cold"}), cache_of({})
        ('cold', 'hot')
    """
    return row.get("cache", "hot")


def _read(a: object) -> None:
    """Reads every byte of an array or a dense CPU tensor (brings it into cache)."""
    (a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)).sum()


def cold_setup(activations: Iterable[object] = (), evict: Optional[Evictor] = None,
               warm_code: Iterable[Callable[[], object]] = ()) -> Callable[[], None]:
    """The untimed step before a cold call: evict the caches (``evict``, by default
    :func:`evictor`), run ``warm_code`` (calls that execute the measured code on other,
    small weights), then read ``activations`` (the call's inputs and output buffer) back,
    so that only the weights come from DRAM.

    Example:
        >>> import numpy as np
        >>> from sparsekit.bench import Evictor, cold_setup
        >>> setup = cold_setup([np.ones(8, np.float32)], evict=Evictor(llc_bytes=1 << 16, threads=1))
        >>> setup()
    """
    acts, warm = tuple(activations), tuple(warm_code)

    def setup() -> None:
        (evict or evictor())()
        for fn in warm:
            fn()
        for a in acts:
            _read(a)

    return setup


def cold_setup_for(contenders: Iterable[object], evict: Optional[Evictor] = None) -> Callable[[], None]:
    """:func:`cold_setup` for :class:`sparsekit.bench.Contender` objects: their activations
    read back and their code warmed (``warm_code``) after the eviction.

    Example:
        >>> from sparsekit.bench import Case, Evictor, cold_setup_for, contenders
        >>> cs = contenders(Case((16, 8), 1, 0.5), formats=("csr",))
        >>> cold_setup_for(cs.values(), evict=Evictor(llc_bytes=1 << 16, threads=1))()
    """
    cs = list(contenders)
    return cold_setup([a for c in cs for a in c.activations], evict,
                      [c.warm_code for c in cs if c.warm_code is not None])
