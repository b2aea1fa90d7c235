"""Argument checks shared by the pruning modules (messages say what to do)."""

from __future__ import annotations

import numbers
from typing import Union

Amount = Union[int, float]


def check_amount(amount: object, name: str = "sparsity") -> Amount:
    """Validate a pruning amount the way ``torch.nn.utils.prune`` does.

    A float must lie in ``[0, 1]`` (a fraction of the units); an int must be
    ``>= 0`` (a count of units).  Booleans, strings, tensors and other types
    raise ``TypeError``; out-of-range values raise ``ValueError``.
    """
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(
            f"{name} must be a float in [0, 1] (a fraction) or a non-negative int "
            f"(a count), got {type(amount).__name__}: {amount!r}"
        )
    if isinstance(amount, numbers.Integral):
        value = int(amount)
        if value < 0:
            raise ValueError(f"{name} must be >= 0 when given as a count, got {value}")
        return value
    value = float(amount)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1] when given as a fraction, got {value!r}")
    return value


def units_to_prune(amount: Amount, n_units: int, name: str = "sparsity", where: str = "") -> int:
    """Number of units to prune: ``round(amount * n_units)`` or the count itself."""
    amount = check_amount(amount, name)
    if isinstance(amount, int):
        if amount > n_units:
            at = f" in {where}" if where else ""
            raise ValueError(
                f"{name}={amount} asks to prune more units than exist{at} ({n_units}); "
                "pass a smaller count or a fraction in [0, 1]"
            )
        return amount
    return int(round(amount * n_units))


def check_int(value: object, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_fraction(value: object, name: str) -> float:
    """A float (or int 0/1) in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}: {value!r}")
    value = float(value)
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value
