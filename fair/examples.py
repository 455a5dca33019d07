"""Training examples from committee records: which teachers' texts a mistake is trained on, and their prompts.

One definition for the two stages that build them: `fair train` tokenizes them (train/data.py) and `fair export`
writes them as chat `messages` rows (gen/export.py), so an exported dataset holds what training trains on.

Per mistake, as in the paper's data.py, one feedback example (the student learns to explain its own mistake)
and one rationale example (it learns the teacher's solution). A mistake is used only when it has both, as
the paper's `assert cur_feedback and cur_rationale` did; every mistake left out is counted by reason. A text
counts only when it is whole (fair/records.py's usable_text): never a failed or refused request, nor one cut
off at max_tokens, feedback included, since the student would learn to end its explanation mid-sentence.

Whose texts, and how many a mistake (`mode`): 'mixed' (the paper's FAIR) one seeded random feedback and one
random qualifying rationale; 'all' every feedback and every qualifying rationale; a teacher's name, that
teacher's feedback and rationale (the paper's single-teacher baselines, which were unreviewed: `filter none`).
Which rationales qualify (`filter`, fair/recipes.py): 'review' (the paper's) those the peers accepted; 'gold'
those in which the task's grader, the one that mined the mistakes, finds the gold answer (free: no review
request); 'gold+review' both; 'none' every whole rationale. A teacher's several samples (`fair committee
--samples`) are all its own: 'all' takes each qualifying one (once, where two coincide), 'mixed' draws one among
every teacher's.

Two prompt formats. 'chat' (ours): the prompt is the user turn of the student's chat template, and the
rationale prompt is exactly `task.prompt`, the prompt the student is evaluated with. 'paper': the paper's
"### Instruction / ### Input / ### Response" text without a chat template, for parity runs.

`ExampleBuilder` takes one record at a time, so a caller may stream a file of any size through it; the draws of
mode 'mixed' depend on the order of the records (train/data.py sorts them by the mistake's index in its split).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from fair import paper
from fair.errors import FairError
from fair.recipes import FILTERS, Filter, check_filter, finds_gold, recorded_filter, trainable
from fair.records import StudentAnswer, fence, gold_hint, question_block, teacher_of, usable_text
from fair.tasks import Task

Kind = Literal["feedback", "rationale"]
PromptFormat = Literal["chat", "paper"]
MODES = ("mixed", "all")  # or a teacher's name: whose texts, and how many a mistake


@dataclass(frozen=True)
class TrainExample:
    kind: Kind
    mistake_id: str
    teacher: str  # whose text the completion is
    prompt: str  # user-side text, before any chat template
    completion: str


@dataclass
class BuildReport:
    mistakes: int = 0
    feedback_examples: int = 0
    rationale_examples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> mistakes left out for it
    per_teacher: dict[str, dict[str, int]] = field(default_factory=dict)  # teacher -> kind -> examples
    mode: str = ""
    filter: str = ""
    seed: int = 0
    prompt_format: str = ""

    def summary(self) -> str:
        used = self.mistakes - sum(self.skipped.values())
        lines = [f"{self.mistakes} mistakes, {used} used (mode {self.mode}, filter {self.filter}, seed {self.seed}, "
                 f"{self.prompt_format} prompts): {self.feedback_examples} feedback + "
                 f"{self.rationale_examples} rationale examples"]
        lines += [f"  skipped {n}: {reason}" for reason, n in self.skipped.items()]
        lines += [f"  from {t}: {c['feedback']} feedback, {c['rationale']} rationale"
                  for t, c in self.per_teacher.items() if any(c.values())]
        return "\n".join(lines)


class ExampleBuilder:
    """The examples of each record in turn, by `mode` and `filter` (the module docstring); `teachers`: the
    committee's names, in its order (a mode may name one)."""

    def __init__(self, task: Task, mode: str, seed: int, prompt_format: PromptFormat, teachers: list[str],
                 filter: Filter):
        if prompt_format not in ("chat", "paper"):
            raise FairError(f"prompt format must be 'chat' or 'paper', got {prompt_format!r}")
        check_filter(filter)
        if mode not in MODES and mode not in teachers:
            raise FairError(f"unknown teacher mode {mode!r}: choose {', '.join(MODES)} or a teacher "
                            f"({', '.join(teachers)})")
        self.task, self.mode, self.filter, self.prompt_format = task, mode, filter, prompt_format
        self.rng = random.Random(seed)  # private: the same (records, mode, filter, seed) always gives the same examples
        self.report = BuildReport(mode=mode, filter=filter, seed=seed, prompt_format=prompt_format,
                                  per_teacher={t: {"feedback": 0, "rationale": 0} for t in teachers})
        self._skipped: Counter[str] = Counter()

    def add(self, record: dict) -> list[TrainExample]:
        """The examples of one committee record (none when it is skipped: the report counts why)."""
        if not trainable(self.filter, ran := recorded_filter(record)):
            usable = ", ".join(f for f in FILTERS if trainable(f, ran))
            raise FairError(f"record {record['id']}: the committee ran with --filter {ran}, which leaves out the "
                            f"reviews --filter {self.filter} needs; choose {usable}")
        self.report.mistakes += 1
        mistake = StudentAnswer.from_json(record["mistake"], f"record {record['id']}")
        fb, rat, reason = choose(record, self.mode, self.filter, self.rng,
                                 lambda text: finds_gold(self.task, mistake, text))
        if reason:
            self._skipped[reason] += 1
            self.report.skipped = dict(self._skipped)
            return []
        fb_prompt, rat_prompt = training_prompts(self.task, mistake, self.prompt_format)
        examples = []
        for kind, prompt, chosen in (("feedback", fb_prompt, fb), ("rationale", rat_prompt, rat)):
            for teacher, text in chosen:
                examples.append(TrainExample(kind, record["id"], teacher, prompt, text))
                counts = self.report.per_teacher.setdefault(teacher, {"feedback": 0, "rationale": 0})
                counts[kind] += 1
        self.report.feedback_examples += len(fb)
        self.report.rationale_examples += len(rat)
        return examples


Chosen = list[tuple[str, str]]  # (teacher, text)
NO_RATIONALE = {"review": "no accepted rationale", "gold": "no rationale with the gold answer",
                "gold+review": "no accepted rationale with the gold answer", "none": "rationale failed"}


def choose(record: dict, mode: str, filter: Filter, rng: random.Random,
           gold: Callable[[str], bool]) -> tuple[Chosen, Chosen, str | None]:
    """(feedbacks, rationales, None) for one mistake, or a reason to skip it; `gold(text)`: the gold check."""
    if mode not in MODES and (mode not in record["feedback"] or mode not in record["rationales"]):
        return [], [], "teacher missing"
    feedbacks = {n: t for n, e in record["feedback"].items() if (t := usable_text(e)) and mode in (*MODES, n)}
    rationales: dict[tuple[str, str], str] = {}  # (teacher, text) -> key: a teacher's coinciding samples are one
    for key, entry in record["rationales"].items():
        if (text := usable_text(entry)) and mode in (*MODES, teacher_of(key)):
            rationales.setdefault((teacher_of(key), text), key)
    if "review" in filter:  # `accepted` is the peers' verdict (and the gold check's, after a gold+review run)
        rationales = {c: k for c, k in rationales.items() if record["rationales"][k].get("accepted")}
    if "gold" in filter:
        rationales = {c: k for c, k in rationales.items() if gold(c[1])}
    if mode == "mixed":
        # Feedback first, then rationale: the paper's order of random.choice calls, so that on the paper's files
        # with its seed the same texts are drawn (a choice from an empty list draws no random number).
        fb = [rng.choice(list(feedbacks.items()))] if feedbacks else []
        rat = [rng.choice(list(rationales))] if rationales else []
    else:
        fb, rat = list(feedbacks.items()), list(rationales)
    if not rationales:
        return [], [], NO_RATIONALE[filter]
    return fb, rat, None if feedbacks else "feedback failed"


def chat_feedback_prompt(task: Task, mistake: StudentAnswer) -> str:
    return (
        "A student answered the question below incorrectly. Point out the mistakes in the student's answer.\n\n"
        f"Question:\n{question_block(task, mistake)}\n\n"
        f"Student's answer:\n{fence(mistake.prediction)}\n\n"
        f"Hint: the correct final answer is {gold_hint(task, mistake)}."
    )


def training_prompts(task: Task, mistake: StudentAnswer, prompt_format: PromptFormat) -> tuple[str, str]:
    """(feedback prompt, rationale prompt) for one mistake."""
    if prompt_format == "chat":
        return chat_feedback_prompt(task, mistake), task.prompt(mistake.example())
    return paper.training_prompts(task, mistake)
