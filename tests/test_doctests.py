"""Every docstring example in the public modules runs and prints what it claims."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sparsekit

SKIP = {"sparsekit.__main__", "sparsekit._core"}


def public_modules() -> list[str]:
    names = ["sparsekit"]
    for info in pkgutil.walk_packages(sparsekit.__path__, prefix="sparsekit."):
        if info.name not in SKIP:
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", public_modules())
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name) if t.examples]
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_every_public_name_has_an_example():
    missing = []
    for name in sparsekit.__all__:
        obj = getattr(sparsekit, name)
        if name.startswith("__") or not callable(obj):
            continue
        if ">>>" not in (obj.__doc__ or ""):
            missing.append(name)
    assert not missing, f"public names without a runnable example: {missing}"
