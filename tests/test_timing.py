"""The shared interleaved timer and the ``sparsekit.threads`` context manager."""

from __future__ import annotations

import pytest
import torch

import sparsekit
from sparsekit.timing import calls_for, interleaved


def test_interleaved_rounds_and_order():
    log = []
    fns = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    s = interleaved(fns, rounds=4, calls={"a": 2, "b": 1})
    assert {k: len(v) for k, v in s.items()} == {"a": 4, "b": 4}
    assert log == ["a", "a", "b"] * 4  # every round calls each in turn, k times in a row
    assert all(t >= 0 for v in s.values() for t in v)


def test_interleaved_each_call_and_rotate():
    log = []
    fns = {k: (lambda k=k: log.append(k)) for k in "abc"}
    s = interleaved(fns, rounds=3, calls={"a": 2, "b": 1, "c": 1}, each_call=True, rotate=True)
    assert [len(s[k]) for k in "abc"] == [6, 3, 3]  # one sample per call
    assert log == ["a", "a", "b", "c", "b", "c", "a", "a", "c", "a", "a", "b"]


def test_interleaved_budget_runs_until_spent():
    s = interleaved({"x": lambda: sum(range(200))}, budget_s=0.01, min_rounds=3, round_s=0.001)
    assert len(s["x"]) >= 3 and sum(s["x"]) > 0


def test_interleaved_needs_a_stop():
    with pytest.raises(ValueError, match="rounds or budget_s"):
        interleaved({"x": lambda: None})
    with pytest.raises(ValueError, match="rounds"):
        interleaved({"x": lambda: None}, rounds=0)


def test_calls_for_is_at_least_one():
    calls = []
    assert calls_for(lambda: calls.append(1), 0.0, warmup=2) == 1
    assert len(calls) == 3  # two warm-ups and one under the clock


def test_threads_context_restores():
    sparsekit.set_num_threads(None)
    torch_n = torch.get_num_threads()
    with sparsekit.threads(1) as n:
        assert n == 1 == sparsekit.get_num_threads()
        assert torch.get_num_threads() == torch_n  # torch untouched by default
        with sparsekit.threads(2, with_torch=True) as m:
            assert m == 2 == sparsekit.get_num_threads() == torch.get_num_threads()
        assert sparsekit.get_num_threads() == 1 and torch.get_num_threads() == torch_n
    assert sparsekit.get_num_threads() == torch.get_num_threads()


def test_threads_context_restores_after_error():
    sparsekit.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError):
            with sparsekit.threads(1):
                raise RuntimeError("boom")
        assert sparsekit.get_num_threads() == 2
    finally:
        sparsekit.set_num_threads(None)


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_threads_context_rejects(bad, exc):
    with pytest.raises(exc, match="n must"):
        with sparsekit.threads(bad):
            pass
