"""Sparsity schedules with TensorFlow Model Optimization semantics.

A schedule is any callable ``schedule(step) -> (update_now, sparsity)``.
``step`` counts completed optimizer steps (0 before the first one); when
``update_now`` is true the :class:`~sparsekit.prune.Pruner` recomputes the
masks for ``sparsity``; otherwise it only keeps enforcing the current masks.
"""

from __future__ import annotations

import numbers
from typing import Callable, Mapping, Tuple, Union

from ._validation import check_fraction, check_int

__all__ = ["Schedule", "ConstantSparsity", "PolynomialDecay", "as_schedule"]

ScheduleFn = Callable[[int], Tuple[bool, Union[float, Mapping[str, float]]]]


def _check_step(step: object) -> int:
    return check_int(step, "step", minimum=0)


class Schedule:
    """Base class of the built-in schedules (subclasses define ``sparsity_at``).

    Masks update when ``begin_step <= step <= end_step`` (``end_step=-1``: no
    end) and ``(step - begin_step) % frequency == 0``, exactly like
    ``tfmot.sparsity.keras.PruningSchedule``.

    Example:
        >>> from sparsekit.prune import Schedule
        >>> class Step(Schedule):  # 0.5 from step 100 on, updated every 50 steps
        ...     def sparsity_at(self, step):
        ...         return 0.5
        ...     def get_config(self):
        ...         return {}
        >>> s = Step(begin_step=100, end_step=-1, frequency=50)
        >>> s(100), s(120)
        ((True, 0.5), (False, 0.5))
    """

    def __init__(self, begin_step: int, end_step: int, frequency: int) -> None:
        self.begin_step = check_int(begin_step, "begin_step", minimum=0)
        self.end_step = check_int(end_step, "end_step", minimum=-1)
        self.frequency = check_int(frequency, "frequency", minimum=1)
        if self.end_step != -1 and self.end_step < self.begin_step:
            raise ValueError(
                f"end_step ({self.end_step}) must be >= begin_step ({self.begin_step}), "
                "or -1 to prune until training ends"
            )

    def should_update(self, step: int) -> bool:
        """True when masks are recomputed at ``step``."""
        step = _check_step(step)
        in_range = step >= self.begin_step and (self.end_step == -1 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    def sparsity_at(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: int) -> Tuple[bool, float]:
        return self.should_update(step), self.sparsity_at(step)

    def get_config(self) -> dict:
        """The constructor arguments, so ``type(s)(**s.get_config())`` rebuilds ``s``."""
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]


class ConstantSparsity(Schedule):
    """Prune to a fixed ``target`` sparsity every ``frequency`` steps.

    Args:
        target: sparsity in ``[0, 1]``.
        begin_step: first step at which masks update.
        end_step: last step at which masks may update; ``-1`` means no end.
        frequency: masks update every ``frequency`` steps from ``begin_step``.

    Example:
        >>> from sparsekit.prune import ConstantSparsity
        >>> s = ConstantSparsity(0.5, begin_step=10, frequency=5)
        >>> s(0), s(10), s(12), s(15)
        ((False, 0.5), (True, 0.5), (False, 0.5), (True, 0.5))
    """

    def __init__(self, target: float, begin_step: int = 0, end_step: int = -1, frequency: int = 100) -> None:
        super().__init__(begin_step, end_step, frequency)
        self.target = check_fraction(target, "target")

    def sparsity_at(self, step: int) -> float:
        _check_step(step)
        return self.target

    def get_config(self) -> dict:
        return {"target": self.target, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}


class PolynomialDecay(Schedule):
    """Raise sparsity from ``initial_sparsity`` to ``final_sparsity`` polynomially.

    ``s(t) = s_f + (s_i - s_f) * (1 - p) ** power`` with
    ``p = clip((t - begin_step) / (end_step - begin_step), 0, 1)``; masks update
    on the ``frequency`` grid between ``begin_step`` and ``end_step`` and stay
    frozen (still enforced) afterwards.

    Example:
        >>> from sparsekit.prune import PolynomialDecay
        >>> s = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, power=1, frequency=50)
        >>> [s(t) for t in (0, 50, 100, 150)]
        [(True, 0.0), (True, 0.4), (True, 0.8), (False, 0.8)]
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 power: float = 3, frequency: int = 100) -> None:
        super().__init__(begin_step, end_step, frequency)
        if self.end_step == -1 or self.end_step <= self.begin_step:
            raise ValueError(
                f"PolynomialDecay needs end_step > begin_step (got begin_step={self.begin_step}, "
                f"end_step={self.end_step}); use ConstantSparsity for an open-ended schedule"
            )
        self.initial_sparsity = check_fraction(initial_sparsity, "initial_sparsity")
        self.final_sparsity = check_fraction(final_sparsity, "final_sparsity")
        if isinstance(power, bool) or not isinstance(power, numbers.Real):
            raise TypeError(f"power must be a positive number, got {type(power).__name__}: {power!r}")
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power!r}")
        self.power = power

    def sparsity_at(self, step: int) -> float:
        step = _check_step(step)
        p = (step - self.begin_step) / (self.end_step - self.begin_step)
        p = min(1.0, max(0.0, p))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - p) ** self.power

    def get_config(self) -> dict:
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step,
                "power": self.power, "frequency": self.frequency}


def as_schedule(schedule: object) -> ScheduleFn:
    """Accept a schedule object, any callable ``step -> (bool, sparsity)``, or a
    plain number (``ConstantSparsity(number, frequency=1)``).

    Example:
        >>> from sparsekit.prune.schedules import as_schedule
        >>> as_schedule(0.3)
        ConstantSparsity(target=0.3, begin_step=0, end_step=-1, frequency=1)
    """
    if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
        return ConstantSparsity(float(schedule), frequency=1)
    if callable(schedule):
        return schedule  # type: ignore[return-value]
    raise TypeError(
        "schedule must be a Schedule (ConstantSparsity, PolynomialDecay), a callable "
        f"step -> (update_now, sparsity), or a number; got {type(schedule).__name__}"
    )
