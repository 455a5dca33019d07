"""Every prompt the committee sees, in one place: ours (default), and the paper's (fair/paper.py) for parity runs.

Three requests per teacher and mistake, as in FAIR:
    feedback   the student's wrong answer plus the correct final answer as a hint -> what went wrong
    rationale  the bare question -> the teacher's own step-by-step solution (no hint: it must earn its place)
    review     another teacher's rationale plus the hint -> a score from 1 to 5 in square brackets

Ours differ from the paper's where it helps: a system role, the student's answer fenced off, the options of
LogiQA spelled out, rationales that end in the same gradeable "The answer is X." line the student is
evaluated on, a review rubric, and the question first in every user message (after the one system message):
the stable prefix that lets the providers' prompt caches bill a mistake's later requests at the cached rate.
Within a request the hint comes after the text it is about. The cache key hashes the full messages, so an edited prompt is never
answered from the cache; bump PROMPT_VERSION with any edit so that committee records say which prompts made them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from fair import paper
from fair.records import Messages, StudentAnswer, fence, gold_hint, question_block
from fair.tasks import Task
from gen.teachers.config import Teacher
from gen.teachers.providers import ChatRequest

# 2: fences longer than any run of '>' in the fenced text (the same prompts otherwise). 3: the question first in
# every user message, the request after it (a prefix the providers' prompt caches share); the rationale asks
# with the student's prompt under a "Question:" label.
PROMPT_VERSION = 3


def prompts_label(name: str) -> str:
    """What a committee record says made its texts: the prompt set and its version, e.g. fair-v3."""
    return f"{name}-v{PROMPT_VERSION}"


SYSTEM = "You are an expert teacher. You are precise, concise and never invent facts."


def question_first(task: Task, answer: StudentAnswer, request: str) -> Messages:
    """Every prompt of ours: the one system message, then the question, then what this request asks. The
    providers cache prompt prefixes (OpenAI and Gemini on their own, Anthropic where the request marks it), so
    a mistake's feedback, rationale and reviews to one teacher share the system message and the question."""
    return (("system", SYSTEM), ("user", f"Question:\n{question_block(task, answer)}\n\n{request}"))


def fair_feedback(task: Task, answer: StudentAnswer) -> Messages:
    return question_first(task, answer, (
        "A student answered the question above incorrectly.\n\n"
        f"Student's answer:\n{fence(answer.prediction)}\n\n"
        f"Hint: the correct final answer is {gold_hint(task, answer)}.\n\n"
        "Point out the specific mistakes in the student's reasoning and explain how to correct them, step by "
        "step. Do not just restate the correct answer."
    ))


def fair_rationale(task: Task, answer: StudentAnswer) -> Messages:
    """The student's own prompt (task.prompt: the question, then how to state the answer) after the shared
    prefix: every task's prompt opens with its question block, which is not repeated."""
    prompt = task.prompt(answer.example())
    return question_first(task, answer, prompt.removeprefix(question_block(task, answer)).lstrip("\n"))


def fair_review(task: Task, answer: StudentAnswer, rationale: str) -> Messages:
    return question_first(task, answer, (
        "You are reviewing another teacher's solution to the question above, as in a peer review.\n\n"
        f"Solution under review:\n{fence(rationale)}\n\n"
        f"Hint: the correct final answer is {gold_hint(task, answer)}.\n\n"
        "Judge whether the reasoning is correct and sound and whether it reaches the correct answer. Score it "
        "from 1 (wrong) to 5 (correct, clear and complete). Think briefly, then end with the score alone in "
        "square brackets, for example [4]."
    ))


@dataclass(frozen=True)
class PromptSet:
    feedback: Callable[[Task, StudentAnswer], Messages]
    rationale: Callable[[Task, StudentAnswer], Messages]
    review: Callable[[Task, StudentAnswer, str], Messages]


PROMPT_SETS = {
    "fair": PromptSet(fair_feedback, fair_rationale, fair_review),
    "paper": PromptSet(paper.feedback_messages, paper.rationale_messages, paper.review_messages),  # for parity runs
}


def drafts(answers: Iterable[StudentAnswer], task: Task, prompts: PromptSet, teachers: list[Teacher],
           samples: int = 1) -> Iterator[tuple[Teacher, ChatRequest]]:
    """The requests that need no other teacher's reply (what goes to the Batch API first): each teacher's feedback
    and rationales (`samples` of them) per mistake, built as gen/committee/mistake.py builds them
    (ChatRequest.for_teacher of the same prompts and sample salts), hence the same cache keys."""
    for answer in answers:
        for teacher in teachers:
            yield teacher, ChatRequest.for_teacher(teacher, prompts.feedback(task, answer))
            rationale = prompts.rationale(task, answer)
            for sample in range(samples):
                yield teacher, ChatRequest.for_teacher(teacher, rationale, sample)
