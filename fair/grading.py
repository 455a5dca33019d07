"""Answer extraction and grading, shared by mining (`fair mine`) and evaluation (`fair eval`).

Each grader extracts one answer from a free-text reply and compares it with the gold answer. A rule
"fires" only when it yields an answer; otherwise the next rule is tried. `Grade.correct` is None exactly
when no rule fires (the reply is unparseable; accuracy counts it as wrong).

Numbers (`extract_number`), first rule that yields a number:
  1. the last `\\boxed{...}`;
  2. the last `#### N`;
  3. the last answer marker ("The answer is", "the final answer is:", "Answer:", any case) that has a
     number after it: take the rest of the marker's line, or the first non-empty line below when the
     marker ends its line; cut it at the first sentence end; if it has an "=", keep what follows the
     last "=" ("Answer: 412 - 90 = 322" -> 322); the first number left is the answer;
  4. fallback: the last number anywhere in the reply.
  (Rules 1-3 are "strict", the reply marks its answer; rule 4 is "flexible", as in lm-eval-harness.)
  A number may carry thousands commas ("1,000"), a minus sign (not after a word: "COVID-19" is 19), a
  currency sign ("$5") and any unit or "%" after it (ignored: "50%" -> 50). An unspaced fraction "3/4"
  (or LaTeX \\frac{3}{4}) is one number, 0.75; "290 / 2" with spaces is an expression of two numbers.
  Numbers are compared as values with a relative tolerance of 1e-6, so "145.0" == "145". Number words
  ("five") and runs of more than 50 digits are not read.

Yes/no (`extract_yes_no`), the words yes/no/true/false, with "not" before them flipping them:
  1. the last answer marker followed by such a word ("The answer is no", "Answer: False",
     'I would answer "true"');
  2. the reply's opening word ("False. ...", "No, ...", "Not true.");
  3. fallback: the last verdict phrase ("is false", "is not true", "isn't true", "is true").
  The prompt echo "true or false" / "yes or no" is removed first, so "True or False: X" is no answer.
  The paper counted any reply containing "true" as true, so "False. ... it is not true that" was "true".

Options (`extract_option`), letters A-D:
  1. the last marker ("The answer is", "Answer:", "The correct option is") that names an option: by a
     letter right after it ("The answer is B", "Answer: (C)", "answer is option D"), else by an
     option's text quoted in the paragraph that follows it (the first one quoted there);
  2. a letter opening the reply ("B.", "(C)", "D)"), unless the reply restates the lettered options;
  3. "option X" / "choice X" naming one letter only;
  4. exactly one option's text quoted anywhere in the reply.
  Text matching ignores case, whitespace and punctuation; an option found only inside a longer quoted
  option does not count. Ordinals ("the second option") and numbers ("option 2") are not read.

Exact strings (`extract_exact`, for tasks declared in YAML: fair/tasks/_declared.py), first rule that fires:
  1. the last `\\boxed{...}`;
  2. the last answer marker's line (or the first non-empty line below it, as for numbers);
  3. fallback: a reply of one line, as it stands.
  Compared after `normalise_text`: case, runs of whitespace, and quotes, brackets, asterisks and punctuation at
  either end are ignored ("**Paris.**" is "paris"). The answer is the line's first sentence, or as many of its
  first sentences as make up the gold ("The answer is St. Louis. It lies on the Mississippi." is "St. Louis").

Regular expressions (`grade_regex`): the reply's last match of the task's pattern is its answer: the match's
  group named `answer`, else its first group that took part in the match (`A: (\\w+)|B: (\\w+)` has one group
  per alternative), else the whole match; compared with the gold as exact strings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

# How a task's replies are graded: the graders below, one per kind. The built-in tasks use the first three.
AnswerKind = Literal["number", "yesno", "option", "exact", "regex"]


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # the normalised answer found in the text; None when none could be found
    correct: bool | None  # None when no answer could be extracted (counted as wrong in accuracy)


# One level of nested braces is enough for \boxed{\frac{3}{4}}.
BOXED_RE = re.compile(r"\\boxed\s*\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
HASH_RE = re.compile(r"####\s*([^\n]*)")
# "answer" then is/:/=, allowing markdown ("**Answer:**") and 'the answer to the question "..." is'.
# It stops at the line's end, so that "Answer:\n\n..." can be told from "Answer: 5". Runs of filler
# are matched possessively (*+) here and below: no backtracking, so long runs of spaces cost linear time.
AFTER_MARKER = r"(?:\s+to\s+(?:[^.:\n\"]{0,40}\"[^\"\n]{1,200}\"|[^.:\n]{1,60}?))?[*_ \t]*+(?:is\b|:|=)[*_ \t:]*+"
MARKER_RE = re.compile(r"\banswer\b" + AFTER_MARKER, re.IGNORECASE)
# The sign is only a minus when it does not follow a word or a closing bracket ("7-3", "COVID-19").
# Runs of more than 50 digits (degenerate output) are no number: Python will not parse 4,300 digits.
DECIMALS = r"(?:\.\d{1,50}(?!\d))"
NUMBER_RE = re.compile(
    r"(?:(?<![\w.)\]])(?P<sign>[-−])\s?|(?<![\w.]))[$€£]?\s?"
    rf"(?P<num>(?:\d{{1,3}}(?:,\d{{3}}){{1,16}}(?![\d,])|\d{{1,50}}(?!\d)){DECIMALS}?|{DECIMALS})"
    r"(?:/(?P<den>\d{1,50})(?![\d/]))?"  # only an unspaced fraction; "290 / 2" stays two numbers
)
SENTENCE_END_RE = re.compile(r"[.!?](?:\s|$)")
WINDOW = 2000  # characters after a marker that are read; the longest LogiQA option has 1,382
REL_TOL = 1e-6


def _value(match: re.Match[str]) -> Fraction:
    value = Fraction(match["num"].replace(",", ""))
    if match["den"] and int(match["den"]) != 0:
        value /= int(match["den"])
    return -value if match["sign"] else value


def _canonical(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return repr(round(float(value), 10))


def _numbers(text: str) -> list[Fraction]:
    return [_value(m) for m in NUMBER_RE.finditer(FRAC_RE.sub(r"\1/\2", text))]


def _segments(regex: re.Pattern[str], text: str) -> list[str]:
    """The text after each marker, last marker first. A segment ends where the next marker begins, and
    after WINDOW characters: the answer sits right after its marker, and a reply full of markers must
    not cost quadratic time."""
    markers = list(regex.finditer(text))
    segments = []
    for i, m in enumerate(markers):
        stop = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        segments.append(text[m.end() : min(stop, m.end() + WINDOW)])
    return segments[::-1]


def _first_line(segment: str) -> str:
    """The rest of the marker's line, or the first non-empty line below it when the line is empty."""
    line, _, below = segment.partition("\n")
    return line if line.strip(" *_:") else below.lstrip().partition("\n")[0]


def _marker_number(piece: str) -> Fraction | None:
    if m := SENTENCE_END_RE.search(piece):
        piece = piece[: m.start()]
    numbers = _numbers(piece.rpartition("=")[2])  # "Answer: 412 - 90 = 322": the result, not the operands
    return numbers[0] if numbers else None


def _number_value(text: str) -> Fraction | None:
    for content in reversed(BOXED_RE.findall(text)):
        if numbers := _numbers(content.rpartition("=")[2]):
            return numbers[0]
    for content in reversed(HASH_RE.findall(text)):
        if numbers := _numbers(content):
            return numbers[0]
    for segment in _segments(MARKER_RE, text):
        if (value := _marker_number(_first_line(segment))) is not None:
            return value
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def extract_number(text: str) -> str | None:
    """The answer as a canonical number string ("145", "0.92", "-3"), or None when the text has no number."""
    value = _number_value(text)
    return None if value is None else _canonical(value)


def grade_number(text: str, gold: str) -> Grade:
    gold_numbers = _numbers(str(gold))
    if not gold_numbers:
        raise ValueError(f"gold answer {gold!r} is not a number")
    value = _number_value(text)
    if value is None:
        return Grade(None, None)
    ok = math.isclose(float(value), float(gold_numbers[-1]), rel_tol=REL_TOL, abs_tol=1e-9)
    return Grade(_canonical(value), ok)


# --- yes / no -----------------------------------------------------------------------------------------

VERDICTS = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
ECHO_RE = re.compile(r"\btrue[\"']?\s*(?:or|/)\s*[\"']?false\b|\byes[\"']?\s*(?:or|/)\s*[\"']?no\b", re.IGNORECASE)
NOT = r"(?P<neg>\bnot\s+)?"
# An answer marker, or 'I would answer "true"' / "I would say no".
MARKED_VERDICT_RE = re.compile(
    rf"(?:{MARKER_RE.pattern}|\bwould\s+(?:answer|say)\b)[\"'(\[*\s]*+{NOT}(?P<word>yes|no|true|false)\b", re.I
)
# A reply opening with a verdict: "False.", "No, ...", "Not true". A bare "No" must end a clause ("No one").
OPENING_VERDICT_RE = re.compile(
    r"[\s*_\"'(\[>#-]*+" + NOT + r"(?P<word>yes|true|false|no(?=[ \t]*(?:[.,!:;)\]*\"'—-]|\n|$)))\b", re.I
)
# Verdict phrases anywhere: "is false", "is not true", "isn't true", "it's true", "would be false".
PHRASE_VERDICT_RE = re.compile(
    r"\b(?:is|'s|are|was|were|be|(?P<nt>isn't|aren't|wasn't|weren't))\s+" + NOT + r"(?P<word>true|false)\b",
    re.IGNORECASE,
)


def _last(regex: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(regex.finditer(text))
    return matches[-1] if matches else None


def _verdict(match: re.Match[str] | None) -> str | None:
    if match is None:
        return None
    value = VERDICTS[match["word"].lower()]
    negated = bool(match["neg"]) or bool(match.groupdict().get("nt"))
    return {"yes": "no", "no": "yes"}[value] if negated else value


def extract_yes_no(text: str) -> str | None:
    """The answer as "yes" or "no" (true/false map to them), or None when the reply commits to neither."""
    text = ECHO_RE.sub(" ", text)  # the paper's prompt asks to 'answer "true" or "false"'; replies echo it
    return (
        _verdict(_last(MARKED_VERDICT_RE, text))
        or _verdict(OPENING_VERDICT_RE.match(text))
        or _verdict(_last(PHRASE_VERDICT_RE, text))
    )


def normalise_yes_no(gold: str | bool) -> str:
    """Gold "yes"/"no"/"true"/"True"/"false." or a bool -> "yes" or "no"."""
    word = str(gold).strip().strip(".").lower()
    if word not in VERDICTS:
        raise ValueError(f"gold answer {gold!r} is not yes/no/true/false")
    return VERDICTS[word]


def grade_yes_no(text: str, gold: str) -> Grade:
    gold = normalise_yes_no(gold)
    answer = extract_yes_no(text)
    return Grade(answer, None if answer is None else answer == gold)


# --- options -------------------------------------------------------------------------------------------

LETTERS = "ABCD"
# A bare capital letter counts only when punctuation or the line's end shows it is not the article "A".
BARE_LETTER = r"\(?(?P<bare>[A-D])(?=[ \t]*(?:[).:,\]*]|\n|$))"
MARKED_LETTER_RE = re.compile(r"[\s\"'*_]*+(?:(?i:option|choice)\s*\(?(?P<opt>[A-Da-d])\b|" + BARE_LETTER + ")")
OPENING_LETTER_RE = re.compile(r"[\s*_\"'>#-]*+" + BARE_LETTER)
LISTED_LETTER_RE = re.compile(r"^[ \t]*\(?([A-D])[).:]", re.MULTILINE)  # "A. ...\nB. ...": options restated
OPTION_MARKER_RE = re.compile(r"\b(?:answer|option|choice)\b" + AFTER_MARKER, re.IGNORECASE)  # "option is B"
NAMED_LETTER_RE = re.compile(r"\b(?:option|choice)\s*\(?([A-D])\b", re.IGNORECASE)
PUNCT_RE = re.compile(r"[\W_]+")


def _norm(text: str) -> str:
    return " " + PUNCT_RE.sub(" ", text.lower()).strip() + " "


def _quoted(text: str, options: tuple[str, ...]) -> list[str]:
    """Letters of the options whose text appears in `text`, in order of appearance; an option found only
    inside a longer quoted option ("Some A" inside "Some A are B") does not count."""
    hay = _norm(text)
    spans = []
    for k, option in enumerate(options):
        needle = _norm(option)
        if needle.strip() and (pos := hay.find(needle)) >= 0:
            spans.append((pos, pos + len(needle), LETTERS[k]))
    kept = [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]
    return [letter for _, _, letter in sorted(kept)]


def _letter(match: re.Match[str] | None) -> str | None:
    return (match.groupdict().get("opt") or match["bare"]).upper() if match else None


def extract_option(text: str, options: tuple[str, ...] = ()) -> str | None:
    """The chosen letter "A".."D", or None when nothing can be told."""
    for segment in _segments(OPTION_MARKER_RE, text):  # the last marker that names an option
        if letter := _letter(MARKED_LETTER_RE.match(segment)):
            return letter
        # The quoted text must sit right after the marker, not in a later paragraph of reasoning.
        if quoted := _quoted(segment.strip().split("\n\n")[0], options):
            return quoted[0]
    if len(set(LISTED_LETTER_RE.findall(text))) < 2 and (letter := _letter(OPENING_LETTER_RE.match(text))):
        return letter
    if len(named := {x.upper() for x in NAMED_LETTER_RE.findall(text)}) == 1:
        return named.pop()
    if len(quoted := set(_quoted(text, options))) == 1:
        return quoted.pop()
    return None


def grade_option(text: str, options: tuple[str, ...], gold: str) -> Grade:
    gold = str(gold).strip().upper()
    if gold not in LETTERS:
        raise ValueError(f"gold answer {gold!r} is not a letter A-D")
    answer = extract_option(text, options)
    return Grade(answer, None if answer is None else answer == gold)


# --- exact strings and regular expressions ---------------------------------------------------------------

EDGES = " \t\n*_\"'`.,;:!?()[]"


def normalise_text(text: str) -> str:
    """What two exact answers are compared as: lower case, whitespace runs as one space, no quotes, brackets,
    asterisks or punctuation at either end."""
    return " ".join(text.split()).lower().strip(EDGES)


def extract_exact(text: str) -> str | None:
    """The answer's line (rules in the module docstring), stripped; None when no rule fires."""
    if boxed := BOXED_RE.findall(text):
        return boxed[-1].strip() or None
    for segment in _segments(MARKER_RE, text):
        if line := _first_line(segment).strip(" *_"):
            return line
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if len(lines) == 1 else None


def _sentences(line: str) -> list[str]:
    """The line cut after its first sentence, its first two, ..., and the whole line."""
    return [line[: m.start()] for m in SENTENCE_END_RE.finditer(line)] + [line]


def grade_exact(text: str, gold: str) -> Grade:
    want = normalise_text(str(gold))
    if not want:
        raise ValueError(f"gold answer {gold!r} is empty")
    line = extract_exact(text)
    if line is None:
        return Grade(None, None)
    heads = _sentences(line)
    match = next((head for head in heads if normalise_text(head) == want), None)
    return Grade((match or heads[0]).strip(), match is not None)


def regex_answer(text: str, pattern: re.Pattern[str]) -> str | None:
    """The last match's group `answer`, else its first group that took part in the match (a pattern of
    alternatives has a group each), else the whole match; None without a match."""
    if (last := _last(pattern, text)) is None:
        return None
    if (found := last.groupdict().get("answer")) is None:
        found = next((g for g in last.groups() if g is not None), "") if pattern.groups else last.group(0)
    return found.strip() or None


def grade_regex(text: str, gold: str, pattern: str) -> Grade:
    want = normalise_text(str(gold))
    if not want:
        raise ValueError(f"gold answer {gold!r} is empty")
    answer = regex_answer(text, re.compile(pattern))
    return Grade(answer, None if answer is None else normalise_text(answer) == want)


def grade(kind: AnswerKind, text: str, gold: str, *, options: tuple[str, ...] = (), pattern: str | None = None
          ) -> Grade:
    """`text` graded against `gold` by the grader of `kind`."""
    if kind == "number":
        return grade_number(text, gold)
    if kind == "yesno":
        return grade_yes_no(text, gold)
    if kind == "option":
        return grade_option(text, options, gold)
    if kind == "exact":
        return grade_exact(text, gold)
    if pattern is None:
        raise ValueError("a regex task needs its answer_pattern")
    return grade_regex(text, gold, pattern)
