"""Answer extraction and grading, shared by mining (`fair mine`) and evaluation (`fair eval`).

(stub: being written)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # the normalised answer found in the text; None when none could be found
    correct: bool | None  # None when no answer could be extracted (counted as wrong in accuracy)


def grade_number(text: str, gold: str) -> Grade:
    raise NotImplementedError


def grade_yes_no(text: str, gold: str) -> Grade:
    raise NotImplementedError


def grade_option(text: str, options: tuple[str, ...], gold: str) -> Grade:
    raise NotImplementedError
