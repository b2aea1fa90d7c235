"""Loading the compiled core, SIMD level selection and thread counts."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

# torch first: it loads libgomp.so.1, and our extension then binds to that same
# OpenMP runtime by soname instead of mapping a second one (two runtimes in one
# process oversubscribe the cores or crash).
import torch

try:
    from sparsekit import _core
except ImportError as exc:  # pragma: no cover - depends on how the package was installed
    _here = os.path.dirname(os.path.abspath(__file__))
    raise ImportError(
        f"sparsekit's compiled module could not be imported from {_here} ({exc}). If this is the "
        "source tree, install the package (`pip install .`) and run Python or pytest from an "
        "environment where the installed copy comes first (e.g. the `pytest` command, not "
        "`python -m pytest`, from the repository root)."
    ) from exc

SIMD_LEVELS = ("scalar", "avx2", "avx512", "neon")

_lock = threading.Lock()
_num_threads: int | None = None
_forked_child = False


def _after_fork_in_child() -> None:
    # GNU libgomp cannot start a parallel region in a child forked after the parent
    # used one (the child deadlocks; plain torch does too). Forked children, such as
    # DataLoader workers, therefore run sparsekit's kernels on one thread. Results are
    # bitwise the same; only speed differs. Spawned processes are unaffected.
    global _forked_child
    _forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _apply_env_simd() -> None:
    level = os.environ.get("SPARSEKIT_SIMD", "").strip().lower()
    if not level:
        return
    if level not in SIMD_LEVELS:
        raise ValueError(
            f"SPARSEKIT_SIMD={os.environ['SPARSEKIT_SIMD']!r} is not a SIMD level; "
            f"valid values are {', '.join(SIMD_LEVELS)}"
        )
    if level not in _core.simd_available():
        raise ValueError(
            f"SPARSEKIT_SIMD={level!r} is not available on this machine; "
            f"available levels: {', '.join(_core.simd_available())}"
        )
    _core.set_simd(level)


_apply_env_simd()


def _check_thread_count(n: object, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}")


def set_num_threads(n: int | None) -> None:
    """Set the number of threads sparsekit's kernels use (``None`` follows torch).

    Example:
        >>> import sparsekit
        >>> sparsekit.set_num_threads(1)
        >>> sparsekit.get_num_threads()
        1
        >>> sparsekit.set_num_threads(None)  # back to torch.get_num_threads()
    """
    global _num_threads
    if n is not None:
        _check_thread_count(n, "n")
    with _lock:
        _num_threads = n


def get_num_threads() -> int:
    """Threads the kernels use by default: :func:`set_num_threads`'s value, else torch's.

    Example:
        >>> import sparsekit, torch
        >>> sparsekit.get_num_threads() == torch.get_num_threads()
        True
    """
    if _forked_child:
        return 1
    n = _num_threads
    return n if n is not None else max(1, torch.get_num_threads())


@contextmanager
def threads(n: int | None, *, with_torch: bool = False) -> Iterator[int]:
    """Run kernels on ``n`` threads inside a ``with`` block, then restore the setting.

    ``n=None`` follows torch inside the block. With ``with_torch=True``,
    ``torch.set_num_threads`` is set to the same count for the block too, so dense
    torch layers and sparsekit's kernels are timed on equal terms. Process-wide, like
    :func:`set_num_threads`. Yields the thread count in force.

    Example:
        >>> import sparsekit
        >>> with sparsekit.threads(1) as n:
        ...     (n, sparsekit.get_num_threads())
        (1, 1)
    """
    global _num_threads
    if n is not None:
        _check_thread_count(n, "n")
    with _lock:
        previous = _num_threads
        _num_threads = n
    torch_before = torch.get_num_threads()
    if with_torch and n is not None:
        torch.set_num_threads(n)
    try:
        yield get_num_threads()
    finally:
        if with_torch:
            torch.set_num_threads(torch_before)
        with _lock:
            _num_threads = previous


def resolve_threads(threads: int | None) -> int:
    """Validates a per-call thread count; ``None`` means :func:`get_num_threads`.

    Example:
        >>> from sparsekit._runtime import resolve_threads
        >>> resolve_threads(2)
        2
    """
    if threads is None:
        return get_num_threads()
    _check_thread_count(threads, "threads")
    return 1 if _forked_child else threads


def simd_level() -> str:
    """The SIMD level the kernels run at now (see :func:`use_simd`).

    Example:
        >>> from sparsekit._runtime import SIMD_LEVELS, simd_level
        >>> simd_level() in SIMD_LEVELS
        True
    """
    return _core.simd()


@contextmanager
def use_simd(level: str) -> Iterator[None]:
    """Run kernels at a given SIMD level inside a ``with`` block (process-wide).

    Example:
        >>> import sparsekit
        >>> with sparsekit.use_simd("scalar"):
        ...     sparsekit.cpu_info()["simd"]
        'scalar'
    """
    if level not in SIMD_LEVELS:
        raise ValueError(f"level must be one of {', '.join(SIMD_LEVELS)}, got {level!r}")
    if level not in _core.simd_available():
        raise ValueError(
            f"level {level!r} is not available here; available: {', '.join(_core.simd_available())}"
        )
    previous = _core.simd()
    _core.set_simd(level)
    try:
        yield
    finally:
        _core.set_simd(previous)


def _openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtime libraries mapped into this process (Linux only)."""
    libs: set[str] = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                name = os.path.basename(path)
                if name.startswith(("libgomp", "libiomp", "libomp")) and ".so" in name:
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


def cpu_info() -> dict:
    """What the kernels run on: SIMD level in use and available, OpenMP, threads.

    Example:
        >>> import sparsekit
        >>> info = sparsekit.cpu_info()
        >>> info["simd"] in info["simd_available"]
        True
    """
    return {
        "simd": _core.simd(),
        "simd_available": list(_core.simd_available()),
        "openmp": bool(_core.openmp()),
        "openmp_runtimes": _openmp_runtimes(),
        "threads": get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
