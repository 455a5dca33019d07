"""What the simulated teachers of `fair teachers serve` say: personas, the question index, and the replies.

This is a SIMULATOR, not a model. A reply is built from the benchmark's own gold solution for the question
found in the prompt (GSM8K solution text, SVAMP equation, StrategyQA facts, LogiQA's gold option), then
spoiled at each persona's error rates, so that the committee code downstream sees realistic variety: wrong
final answers, terse rationales, biased or noisy review scores, reviews with no score at all. Every draw
comes from the `random.Random` the server seeds per request, so the same request always gets the same reply.
The rest lives in simulator/simulator.py (the answer pipeline, faults), simulator/replies.py (refusals,
spent thinking, truncation), simulator/app.py (routes), simulator/formats.py and stream.py (wire formats)
and simulator/api.py (rate limits, the prompt cache). Prompts are read as gen/committee/prompts.py writes them.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fair.errors import FairError
from fair.grading import extract_number, extract_option, extract_yes_no
from fair.tasks import OPTION_LETTERS, Example, Task, default_data_dir, get_task, registry

Kind = Literal["feedback", "rationale", "review", "other"]
GREEDY = ("Let's think step by step.", "Step {i}: {s}", "The answer is {answer}.")  # a rationale's wording at temperature 0


@dataclass(frozen=True)
class Persona:
    p_wrong: float = 0.05  # a rationale reaches a wrong final answer
    p_sloppy: float = 0.05  # a rationale (or feedback) is only a bare equation / answer
    review_bias: float = 0.0  # added to every review score before rounding and clipping to 1..5
    review_noise: float = 0.3  # standard deviation of Gaussian noise on review scores
    p_unparseable_review: float = 0.02  # a review that never states a score
    p_alt_score_format: float = 0.15  # "4/5" or "Score: 4" instead of "[4]"

    def validate(self, name: str) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FairError(f"persona {name!r}: {f.name} must be a number, got {value!r}")
            if f.name.startswith("p_") and not 0 <= value <= 1:
                raise FairError(f"persona {name!r}: {f.name} must be between 0 and 1, got {value}")
        if self.review_noise < 0:
            raise FairError(f"persona {name!r}: review_noise must be >= 0")


BUILTIN_PERSONAS = {
    "sim-careful": Persona(p_wrong=0.03, p_sloppy=0.02, review_bias=0.3, review_noise=0.3,
                           p_unparseable_review=0.01, p_alt_score_format=0.05),
    "sim-sloppy": Persona(p_wrong=0.25, p_sloppy=0.3, review_bias=0.0, review_noise=0.8,
                          p_unparseable_review=0.08, p_alt_score_format=0.3),
    "sim-harsh": Persona(p_wrong=0.05, p_sloppy=0.03, review_bias=-1.2, review_noise=0.4,
                         p_unparseable_review=0.02, p_alt_score_format=0.1),
}


def merge_personas(overrides: dict[str, Any] | None) -> dict[str, Persona]:
    """Built-in personas, with `overrides` (name -> Persona, or name -> {field: value}) laid over them.
    A new name starts from Persona()'s defaults; an unknown field is an error."""
    personas = dict(BUILTIN_PERSONAS)
    known = {f.name for f in dataclasses.fields(Persona)}
    for name, value in (overrides or {}).items():
        if isinstance(value, Persona):
            personas[str(name)] = value
            continue
        if not isinstance(value, dict):
            raise FairError(f"persona {name!r}: expected a mapping of settings, got {value!r}")
        if unknown := sorted(set(value) - known):
            raise FairError(f"persona {name!r}: unknown setting(s) {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(known))})")
        personas[str(name)] = dataclasses.replace(personas.get(str(name), Persona()), **value)
    for name, persona in personas.items():
        persona.validate(name)
    return personas


# --- finding the question in a prompt ------------------------------------------------------------------

KEY_CHARS = 32  # questions are indexed by their first 32 normalised characters (fewer if shorter)
SCAN_CHARS = 50_000  # a question starts within this many characters of the prompt's start (bounds the work)
SPACES_RE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return SPACES_RE.sub(" ", text).strip().lower()


@dataclass(frozen=True)
class Entry:
    task: Task
    example: Example
    anchor: str  # normalised question (LogiQA: its passage, since its questions are generic)


class QuestionIndex:
    """Every question of the built-in tasks (and of the declared ones asked for), looked up from a prompt in time
    linear in the prompt's length: at each word start of the normalised prompt, the next 32 characters (or a
    short question's length) are tried as a dict key, and each hit is confirmed by finding its whole anchor in
    the prompt."""

    def __init__(self, entries: list[Entry], loaded: list[str]):
        self.loaded = loaded  # "svamp/train", ...: what was found on disk
        self.size = len(entries)
        self.by_key: dict[str, list[Entry]] = {}
        for entry in entries:
            self.by_key.setdefault(entry.anchor[:KEY_CHARS], []).append(entry)
        self.key_lengths = sorted({len(k) for k in self.by_key}, reverse=True)

    @classmethod
    def build(cls, data_dir: str | Path | None = None, tasks: tuple[str, ...] = ()) -> QuestionIndex:
        """The built-ins' questions, and those of `tasks` (declared in YAML: names or paths)."""
        return _build_index(str(data_dir or default_data_dir()), tuple(tasks))

    def find(self, text: str) -> Entry | None:
        norm = normalise(text)
        best, best_score = None, (0, 0)
        starts = [0] + [m.end() for m in re.finditer(" ", norm[:SCAN_CHARS])]
        for i in starts:
            for length in self.key_lengths:
                for entry in self.by_key.get(norm[i : i + length], ()):
                    if entry is best or not norm.startswith(entry.anchor, i):
                        continue
                    score = (len(entry.anchor), self._extra(entry, norm))
                    if score > best_score:
                        best, best_score = entry, score
        return best

    @staticmethod
    def _extra(entry: Entry, norm: str) -> int:
        """LogiQA passages repeat across questions: count the question and options the prompt also holds."""
        ex = entry.example
        if not ex.options:
            return 0
        return sum(normalise(part) in norm for part in (ex.question, *ex.options))


@cache
def _build_index(data_dir: str, declared: tuple[str, ...]) -> QuestionIndex:
    entries, loaded = [], []
    tasks = {t.name: t for t in [*registry().values(), *map(get_task, declared)]}  # each once, not once per alias
    for task in sorted(tasks.values(), key=lambda t: t.name):
        for split in task.splits:
            try:  # an explicit data_dir: a missing file (LogiQA's train) is skipped, never downloaded from the hub
                examples = task.load(split, data_dir)
            except FairError:
                continue
            loaded.append(f"{task.name}/{split}")
            for ex in examples:
                anchor = normalise(ex.context or ex.question)
                if anchor:
                    entries.append(Entry(task, ex, anchor))
    return QuestionIndex(entries, loaded)


# --- what kind of request, and the text inside it ------------------------------------------------------

FENCE_RE = re.compile(r"<{3,}")
REVIEW_MARKERS = ("peer review", "peer-review", "reviewer", "solution under review", "rationale:")
FEEDBACK_MARKERS = ("incorrectly", "incorrect answer")
HINT_RE = re.compile(r"hint:\s*the correct (?:final )?answer (?:is|should be)\s*(.+)", re.IGNORECASE)


def fences(text: str) -> Iterator[tuple[int, int, int, int]]:
    """Each fenced text as (start, inner start, inner end, end). gen/committee/prompts.py's `fence` opens with n
    '<'s and closes with n '>'s, n longer than any run of '>' inside, so the first n '>'s after it close it."""
    pos = 0
    while opening := FENCE_RE.search(text, pos):
        n = len(opening[0])
        if (close := text.find(">" * n, opening.end())) < 0:
            return
        pos = close + n
        yield opening.start(), opening.end(), close, pos


def classify(text: str, entry: Entry | None) -> Kind:
    """From the instructions only: fenced student answers and rationales, and the question itself (a passage
    may well mention a "reviewer"), are cut out first."""
    outside, pos = [], 0
    for start, _, _, end in fences(text):
        outside.append(text[pos:start])
        pos = end
    instructions = normalise(" ".join([*outside, text[pos:]]))
    if entry is not None:
        for part in (entry.example.context, entry.example.question, *entry.example.options):
            if len(part := normalise(part)) >= 25:  # short options ("Reviewer") could eat the instructions
                instructions = instructions.replace(part, " ")
    if any(m in instructions for m in REVIEW_MARKERS):
        return "review"
    if any(m in instructions for m in FEEDBACK_MARKERS):
        return "feedback"
    return "rationale" if entry else "other"


def section(text: str, markers: tuple[str, ...]) -> str:
    """The text after the first marker found: what its fence holds, or (unfenced, as in the paper's prompts)
    everything up to the last "Hint:" after it."""
    lower = text.lower()
    for marker in markers:
        if (start := lower.find(marker.lower())) >= 0:
            rest = text[start + len(marker) :].lstrip()
            fenced = next(fences(rest), None)
            if fenced is not None and fenced[0] == 0:
                return rest[fenced[1] : fenced[2]].strip()
            end = rest.lower().rfind("hint:")
            return rest[: end if end >= 0 else len(rest)].strip()
    return ""


def hint(text: str) -> str | None:
    matches = HINT_RE.findall(text)
    return matches[-1].strip().rstrip(".").strip() if matches else None


# --- answers -------------------------------------------------------------------------------------------

def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")


def wrong_answer(entry: Entry, rng: random.Random) -> str:
    gold = entry.example.gold
    if entry.task.answer_type == "yesno":
        return "no" if gold == "yes" else "yes"
    if entry.task.answer_type == "option":
        return rng.choice([x for x in OPTION_LETTERS[: len(entry.example.options)] if x != gold])
    if entry.task.answer_type in ("exact", "regex"):  # a string answer: any other string is wrong
        return "unknown"
    value = float(gold)
    delta = rng.randint(1, max(2, int(abs(value) // 4))) * rng.choice((-1, 1))
    return number_text(value + delta)


def clean_equation(equation: str) -> str:
    """SVAMP's "( ( 8.0 + 4.0 ) / 2.0 )" -> "(8 + 4) / 2"."""
    eq = re.sub(r"(\d+)\.0\b", r"\1", SPACES_RE.sub(" ", equation)).strip()
    eq = eq.replace("( ", "(").replace(" )", ")")
    while eq.startswith("(") and eq.endswith(")") and _closes_at_end(eq):
        eq = eq[1:-1].strip()
    return eq


def _closes_at_end(eq: str) -> bool:
    depth = 0
    for i, ch in enumerate(eq):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return i == len(eq) - 1
    return False


def rationale_steps(entry: Entry, answer: str) -> list[str]:
    """Steps from the gold solution, whose last step reaches `answer` (the gold, or a wrong one)."""
    ex, gold = entry.example, entry.example.gold
    if entry.task.solution_form == "worked":
        lines = [re.sub(r"<<[^>]*>>", "", line).strip() for line in ex.solution.split("\n")]
        lines = [line for line in lines if line and not line.startswith("####")] or [f"The result is {gold}."]
        if answer != gold:
            head, sep, tail = lines[-1].rpartition(gold)
            lines[-1] = head + answer + tail if sep else lines[-1] + f" So the result is {answer}."
        return lines
    if entry.task.solution_form == "equation":
        eq = clean_equation(ex.solution) if ex.solution else "the two quantities the question asks about"
        return ["Find the quantities the question actually asks about and ignore the others.",
                f"The computation is {eq}.", f"{eq} = {answer}."]
    if entry.task.solution_form == "facts":
        facts = [s.strip() for s in re.split(r"(?<=[.!?])\s+", ex.solution) if s.strip()]
        verdict = "holds" if answer == "yes" else "does not hold"
        return [*facts[:4], f"Putting these facts together, the claim in the question {verdict}."]
    if not ex.options:  # a declared task's question, with no reference reasoning: generic steps
        return [f"The question asks: {ex.question}", f"Working through what it gives step by step leads to {answer}."]
    k = OPTION_LETTERS.index(answer)
    first = re.split(r"(?<=[.!?])\s+", ex.context)[0] if ex.context else "the passage"
    return [f"The passage states: \"{first}\"", f"The question asks: {ex.question}",
            f"Option {answer} (\"{ex.options[k]}\") follows from the passage; the other options either go "
            "beyond what it says or contradict it."]


def write_rationale(entry: Entry, persona: Persona, rng: random.Random, wording: tuple[str, ...] = GREEDY) -> str:
    answer = wrong_answer(entry, rng) if rng.random() < persona.p_wrong else entry.example.gold
    steps = rationale_steps(entry, answer)
    opening, form, closing = wording
    if rng.random() < persona.p_sloppy:
        equation = f"{steps[-1]}\n" if entry.task.answer_type == "number" else ""
        return f"{equation}{closing.format(answer=answer)}"
    body = "\n".join(form.format(i=i, s=s) for i, s in enumerate(steps, 1))
    return f"{opening}\n{body}\n{closing.format(answer=answer)}"


MISTAKES = {
    "number": ("used the wrong operation on the quantities", "included a quantity the question does not ask about",
               "made an arithmetic slip in the last step", "stopped one step before the end"),
    "yesno": ("relied on an assumption the facts contradict", "missed a key fact",
              "answered a different question than the one asked"),
    "option": ("chose an option that goes beyond what the passage says", "confused a necessary with a sufficient "
               "condition", "overlooked a statement in the passage that rules the option out"),
}
MISTAKES["exact"] = MISTAKES["regex"] = ("misread what the question asks", "stated the answer in another form",
                                         "reasoned from a fact the question does not give")


def write_feedback(entry: Entry | None, persona: Persona, text: str, rng: random.Random) -> str:
    student = section(text, ("Student's answer:",))
    if entry is None:
        gold = hint(text) or "the one given in the hint"
        return (f"The student's final answer is wrong; the correct answer is {gold}. Re-read the question, "
                "check each step's arithmetic and logic, and make sure the final line answers what is asked.")
    task, ex = entry.task, entry.example
    gold = f"{ex.gold} (\"{ex.options[OPTION_LETTERS.index(ex.gold)]}\")" if ex.options else ex.gold
    if rng.random() < persona.p_sloppy:
        return f"The answer should be {gold}."
    said = task.grade(student, ex).extracted if student else None
    lead = f"The student concluded {said}, but the correct answer is {gold}." if said else (
        f"The student never states a clear final answer; the correct answer is {gold}.")
    mistake = rng.choice(MISTAKES[task.answer_type])
    steps = rationale_steps(entry, ex.gold)
    return (f"{lead}\nThe likely mistake: the student {mistake}.\nTo correct it: " + " ".join(steps[-2:]) +
            "\nCheck each step against the question before writing the final answer.")


def format_score(score: int, persona: Persona, rng: random.Random) -> str:
    if rng.random() < persona.p_alt_score_format:
        return rng.choice((f"{score}/5", f"Score: {score}"))
    return f"[{score}]"


def write_review(entry: Entry | None, persona: Persona, text: str, rng: random.Random) -> str:
    rationale = section(text, ("Solution under review:", "Rationale:"))
    if entry is not None:
        grade = entry.task.grade(rationale, entry.example)
        said, ok, gold = grade.extracted, grade.correct, entry.example.gold
    else:
        gold = hint(text)
        said, ok = _loose_answer(rationale, gold)
    terse = len(rationale) < 80 or rationale.count("\n") < 1
    if ok is None:
        base, critique = 2.0, "The rationale never commits to a clear final answer."
    elif not ok:
        base = 1.0
        critique = f"The rationale concludes {said}, but the correct answer is {gold}; the reasoning goes wrong."
    elif terse:
        base, critique = 4.0, "The final answer is right, but the rationale is terse: most steps are missing."
    else:
        base, critique = 5.0, "The reasoning is sound, the steps are clear and it reaches the correct answer."
    if gold is None:
        base, critique = 3.0, "Without a reference answer I can only judge the style: the steps look plausible."
    if rng.random() < persona.p_unparseable_review:
        return f"Review: {critique} Overall, a reasonable attempt."
    score = min(5, max(1, round(base + persona.review_bias + rng.gauss(0.0, persona.review_noise))))
    return f"Review: {critique}\n{format_score(score, persona, rng)}"


def _loose_answer(rationale: str, gold: str | None) -> tuple[str | None, bool | None]:
    """Unknown question: compare the rationale's answer with the prompt's hint, whatever its type."""
    if not gold:
        return None, None
    g = gold.strip().lower()
    if g.split(".")[0] in ("yes", "no", "true", "false"):
        said = extract_yes_no(rationale)
        return said, None if said is None else said == extract_yes_no(f"The answer is {g.split('.')[0]}.")
    if re.fullmatch(r"[a-d](?:\..*)?", g):
        said = extract_option(rationale)
        return said, None if said is None else said == g[0].upper()
    said, want = extract_number(rationale), extract_number(gold)
    return said, None if said is None or want is None else float(said) == float(want)


def answer_type_of(text: str) -> str:
    lower = text.lower()
    if "a, b, c or d" in lower or "four options" in lower:
        return "option"
    if '"the answer is yes."' in lower or '"true" or "false"' in lower:
        return "yesno"
    return "number"


def write_other(text: str, rng: random.Random) -> str:
    """A question the index does not hold: a generic reply that still ends in a gradeable line."""
    kind = answer_type_of(text)
    answer = {"option": rng.choice(OPTION_LETTERS), "yesno": rng.choice(("yes", "no"))}.get(kind)
    if answer is None:
        numbers = re.findall(r"\d+(?:\.\d+)?", text)
        answer = numbers[-1] if numbers else str(rng.randint(1, 100))
    return ("(Simulated teacher: this question is not in the offline committee's index.)\n"
            f"Let's think step by step about what is given and what is asked.\nThe answer is {answer}.")


def write_reply(kind: Kind, entry: Entry | None, persona: Persona, text: str, rng: random.Random, wording=GREEDY) -> str:
    if kind == "review":
        return write_review(entry, persona, text, rng)
    if kind == "feedback":
        return write_feedback(entry, persona, text, rng)
    if kind == "rationale" and entry is not None:
        return write_rationale(entry, persona, rng, wording)
    return write_other(text, rng)
