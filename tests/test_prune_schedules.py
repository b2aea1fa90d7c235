"""Schedules follow TensorFlow Model Optimization's formula and step rules exactly."""

from __future__ import annotations

import pytest

from sparsekit.prune import ConstantSparsity, PolynomialDecay
from sparsekit.prune.schedules import as_schedule


def _tf_should_prune(step, begin, end, freq):
    # tfmot.sparsity.keras.pruning_schedule.PruningSchedule._should_prune_in_step
    in_range = step >= begin and (end == -1 or step <= end)
    return in_range and (step - begin) % freq == 0


def _tf_poly(step, si, sf, begin, end, power):
    p = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return (si - sf) * (1 - p) ** power + sf


@pytest.mark.parametrize("si,sf,begin,end,power,freq", [
    (0.0, 0.9, 1000, 5000, 3, 100), (0.2, 0.8, 0, 37, 2, 3), (0.5, 0.5, 5, 6, 1, 1), (0.9, 0.1, 10, 20, 0.5, 4)])
def test_polynomial_decay_matches_formula_every_step(si, sf, begin, end, power, freq):
    s = PolynomialDecay(si, sf, begin_step=begin, end_step=end, power=power, frequency=freq)
    for t in range(0, end + 3 * freq + 10):
        update, value = s(t)
        assert update == _tf_should_prune(t, begin, end, freq), t
        assert value == _tf_poly(t, si, sf, begin, end, power), t
    assert s(end)[1] == sf and s(end + 1)[1] == sf


def test_polynomial_known_values():
    s = PolynomialDecay(0.0, 0.9, begin_step=1000, end_step=5000, frequency=100)
    assert s(999) == (False, 0.0)
    assert s(1000) == (True, 0.0)
    assert s(1050) == (False, 0.9 + (0.0 - 0.9) * (1 - 50 / 4000) ** 3)
    assert s(3000) == (True, 0.9 - 0.9 * 0.5 ** 3)
    assert s(5000) == (True, 0.9)
    assert s(5100) == (False, 0.9)


@pytest.mark.parametrize("begin,end,freq", [(0, -1, 100), (10, 50, 7), (3, 3, 1)])
def test_constant_sparsity_steps(begin, end, freq):
    s = ConstantSparsity(0.75, begin_step=begin, end_step=end, frequency=freq)
    for t in range(0, 400):
        assert s(t) == (_tf_should_prune(t, begin, end, freq), 0.75)


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(target=1.5), ValueError, "target"), (dict(target="0.5"), TypeError, "target"),
    (dict(target=0.5, begin_step=-1), ValueError, "begin_step"), (dict(target=0.5, frequency=0), ValueError, "frequency"),
    (dict(target=0.5, begin_step=10, end_step=5), ValueError, "end_step"),
    (dict(target=0.5, begin_step=1.5), TypeError, "begin_step")])
def test_constant_validation(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        ConstantSparsity(**kwargs)


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=10, end_step=10), ValueError, "end_step"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=-1), ValueError, "end_step"),
    (dict(initial_sparsity=-0.1, final_sparsity=0.5, begin_step=0, end_step=10), ValueError, "initial_sparsity"),
    (dict(initial_sparsity=0.0, final_sparsity=2, begin_step=0, end_step=10), ValueError, "final_sparsity"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10, power=0), ValueError, "power"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10, power="3"), TypeError, "power")])
def test_polynomial_validation(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        PolynomialDecay(**kwargs)


def test_step_validation_and_config_roundtrip():
    s = PolynomialDecay(0.1, 0.7, begin_step=2, end_step=9, power=2, frequency=3)
    with pytest.raises(ValueError, match="step"):
        s(-1)
    assert PolynomialDecay(**s.get_config()) == s
    c = ConstantSparsity(0.3, 1, 10, 2)
    assert ConstantSparsity(**c.get_config()) == c and c != s
    assert "PolynomialDecay(initial_sparsity=0.1" in repr(s)


def test_as_schedule():
    assert as_schedule(0.5)(7) == (True, 0.5)
    f = lambda step: (step == 3, 0.25)
    assert as_schedule(f) is f
    with pytest.raises(TypeError, match="schedule"):
        as_schedule("0.5")
