"""README states facts the code owns: they are checked against the code, so the two cannot drift
(issue 18, item 14: the methods list had lost srigl; the resume sentence named 4 of 8 keys)."""

from __future__ import annotations

import re
from pathlib import Path

import regrow
from regrow.train.rundir import RESUME_OVERRIDABLE

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _paragraph(containing: str) -> str:
    """The README paragraph (blank-line separated) that holds ``containing``."""
    found = [p for p in README.split("\n\n") if containing in p]
    assert len(found) == 1, f"{containing!r} is in {len(found)} README paragraphs"
    return found[0]


def test_the_methods_sentence_lists_every_registered_method_in_registry_order() -> None:
    sentence = _paragraph("`regrow.METHODS` lists them")
    named = re.findall(r"`([a-z_]+)`", sentence.split("`regrow.METHODS` lists them", 1)[1])
    assert named == list(regrow.METHODS)


def test_the_resume_sentence_names_every_key_that_may_change() -> None:
    sentence = " ".join(_paragraph("may change on resume").split())
    named = set(re.findall(r"`((?:train|data)\.[a-z_]+)`", sentence.split("(only", 1)[1]))
    assert named == set(RESUME_OVERRIDABLE)
