"""Real English text that installs with Python, for distilling and evaluating language models offline.

:func:`reference_text` reads the Python language reference shipped in
``pydoc_data.topics`` (training text); :func:`docstring_text` reads docstrings of
standard-library modules (held-out text: a different source, and any sentence
that also occurs in the reference text is dropped).  Both are deterministic for a
given Python version, deduplicated, and keep prose only: paragraphs that are not
indented (no code or grammar rules), sentences that start with a capital letter,
end with ``.``, ``!`` or ``?`` and have ``min_words..max_words`` words.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from typing import Iterable, List, Optional, Sequence, Tuple

__all__ = ["reference_text", "docstring_text", "prose_units", "DOCSTRING_MODULES"]

DOCSTRING_MODULES: Tuple[str, ...] = (
    "argparse", "collections", "csv", "difflib", "email.message", "functools", "json", "logging",
    "pathlib", "shutil", "subprocess", "tarfile", "textwrap", "threading", "unittest.case", "zipfile",
)
"""Standard-library modules whose docstrings :func:`docstring_text` reads by default."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.")


def _paragraphs(text: str) -> List[str]:
    """Unindented prose paragraphs of ``text`` joined into single lines."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(not ln.strip() or ln[:1].isspace() for ln in lines):
            continue  # indented: code, grammar, tables, or a list continuation
        if any(ln.startswith((">>>", "*", "-", "=", "+", "|")) for ln in lines):
            continue
        out.append(" ".join(ln.strip() for ln in lines))
    return out


def _sentences(paragraph: str) -> List[str]:
    parts = _SENTENCE_END.split(paragraph)
    out: List[str] = []
    for part in parts:  # glue back splits after "e.g." and friends
        if out and out[-1].endswith(_ABBREVIATIONS):
            out[-1] = f"{out[-1]} {part}"
        else:
            out.append(part)
    return out


def _is_prose(s: str, min_words: int, max_words: int) -> bool:
    words = s.split()
    if not min_words <= len(words) <= max_words or not s[:1].isupper() or s[-1:] not in ".!?":
        return False
    letters = sum(c.isalpha() or c.isspace() for c in s)
    return letters >= 0.85 * len(s) and "::" not in s and ">>>" not in s


def prose_units(texts: Iterable[str], unit: str = "sentence", min_words: int = 8,
                max_words: int = 60) -> List[str]:
    """Prose sentences (or paragraphs) of ``texts``, in order, deduplicated, length-filtered.

    Example:
        >>> from sparsekit.distill import prose_units
        >>> doc = "A short line of real words here. It is fine too.\\n\\n    code = 1\\n"
        >>> prose_units([doc], min_words=3)
        ['A short line of real words here.', 'It is fine too.']
    """
    if unit not in ("sentence", "paragraph"):
        raise ValueError(f"unit must be 'sentence' or 'paragraph', got {unit!r}")
    if isinstance(min_words, bool) or isinstance(max_words, bool) or not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words!r}, {max_words!r}")
    seen, out = set(), []
    for text in texts:
        for para in _paragraphs(text):
            for unit_text in ([para] if unit == "paragraph" else _sentences(para)):
                if unit_text not in seen and _is_prose(unit_text, min_words, max_words):
                    seen.add(unit_text)
                    out.append(unit_text)
    return out


def _limit(items: List[str], n: Optional[int]) -> List[str]:
    if n is None:
        return items
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0 or None, got {n!r}")
    return items[:n]


@functools.lru_cache(maxsize=8)
def _reference(unit: str, min_words: int, max_words: int) -> Tuple[str, ...]:
    from pydoc_data.topics import topics
    return tuple(prose_units((topics[k] for k in sorted(topics)), unit, min_words, max_words))


def reference_text(n: Optional[int] = None, *, unit: str = "sentence", min_words: int = 8,
                   max_words: int = 60) -> List[str]:
    """Sentences (``unit="paragraph"``: paragraphs) of the Python language reference, for training.

    Topics are read in sorted order, so the list is the same on every run of one Python version.

    Example:
        >>> from sparsekit.distill import reference_text
        >>> texts = reference_text(200)
        >>> len(texts), len(set(texts)), all(t[0].isupper() for t in texts)
        (200, 200, True)
    """
    return _limit(list(_reference(unit, min_words, max_words)), n)


def _docstrings(module_names: Sequence[str]) -> List[str]:
    docs = []
    for name in module_names:
        module = importlib.import_module(name)
        docs.append(inspect.getdoc(module) or "")
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr, None)
            if getattr(obj, "__module__", None) != module.__name__:
                continue  # re-exports and constants: read each docstring once, where it is defined
            docs.append(inspect.getdoc(obj) or "")
            if inspect.isclass(obj):
                docs.extend(inspect.getdoc(m) or "" for k, m in sorted(vars(obj).items())
                            if not k.startswith("_") and callable(m))
    return docs


def docstring_text(n: Optional[int] = None, *, modules: Sequence[str] = DOCSTRING_MODULES, unit: str = "sentence",
                   min_words: int = 8, max_words: int = 60) -> List[str]:
    """Sentences from the docstrings of ``modules`` (standard library by default), for held-out evaluation.

    Sentences that also occur in :func:`reference_text` (same ``unit`` and length filters)
    are dropped, so the two sources are disjoint.

    Example:
        >>> from sparsekit.distill import docstring_text, reference_text
        >>> held_out = docstring_text(50, modules=("json", "textwrap"))
        >>> len(held_out) > 10, set(held_out).isdisjoint(reference_text())
        (True, True)
    """
    train = set(_reference(unit, min_words, max_words))
    units = prose_units(_docstrings(modules), unit, min_words, max_words)
    return _limit([u for u in units if u not in train], n)
