"""Every prompt the committee sees, in one place: ours (default) and the paper's, for parity runs.

Three requests per teacher and mistake, as in FAIR:
    feedback   the student's wrong answer plus the correct final answer as a hint -> what went wrong
    rationale  the bare question -> the teacher's own step-by-step solution (no hint: it must earn its place)
    review     another teacher's rationale plus the hint -> a score from 1 to 5 in square brackets

Ours differ from the paper's where it helps: a system role, the student's answer fenced off, the options of
LogiQA spelled out, rationales that end in the same gradeable "The answer is X." line the student is
evaluated on, and a review rubric. The cache key hashes the full messages, so an edited prompt is never
answered from the cache; bump PROMPT_VERSION with any edit so that committee records say which prompts made them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from fair.records import StudentAnswer
from fair.tasks import OPTION_LETTERS, Task

PROMPT_VERSION = 2  # 2: fences longer than any run of '>' in the fenced text (the same prompts otherwise)
Messages = tuple[tuple[str, str], ...]

SYSTEM = "You are an expert teacher. You are precise, concise and never invent facts."


def gold_hint(task: Task, answer: StudentAnswer) -> str:
    if task.answer_type == "option":
        k = OPTION_LETTERS.index(answer.gold)
        return f"{answer.gold}. {answer.options[k]}"
    return answer.gold


def question_block(task: Task, answer: StudentAnswer) -> str:
    """The question as the student saw it, options included, without answer-format instructions."""
    if task.answer_type != "option":
        return answer.question
    options = "\n".join(f"{OPTION_LETTERS[k]}. {o}" for k, o in enumerate(answer.options))
    return f"{answer.context}\n\nQuestion: {answer.question}\n{options}"


def fence(text: str) -> str:
    """The text between a line of '<'s and a line of '>'s, three each unless the text holds a run as long (a
    Python session's ">>>", or a rationale that ends our fence and writes its own hint): then one more than its
    longest run, as Markdown lengthens a code fence. The text cannot close its fence and pass for our prompt."""
    n = max([3] + [len(run) + 1 for run in re.findall(r">{3,}", text)])
    return f"{'<' * n}\n{text.strip()}\n{'>' * n}"


def fair_feedback(task: Task, answer: StudentAnswer) -> Messages:
    return (("system", SYSTEM), ("user", (
        "A student answered the question below incorrectly.\n\n"
        f"Question:\n{question_block(task, answer)}\n\n"
        f"Student's answer:\n{fence(answer.prediction)}\n\n"
        f"Hint: the correct final answer is {gold_hint(task, answer)}.\n\n"
        "Point out the specific mistakes in the student's reasoning and explain how to correct them, step by "
        "step. Do not just restate the correct answer."
    )))


def fair_rationale(task: Task, answer: StudentAnswer) -> Messages:
    return (("system", SYSTEM), ("user", task.prompt(answer.example())))


def fair_review(task: Task, answer: StudentAnswer, rationale: str) -> Messages:
    return (("system", SYSTEM), ("user", (
        "You are reviewing another teacher's solution to a question, as in a peer review.\n\n"
        f"Question:\n{question_block(task, answer)}\n\n"
        f"Solution under review:\n{fence(rationale)}\n\n"
        f"Hint: the correct final answer is {gold_hint(task, answer)}.\n\n"
        "Judge whether the reasoning is correct and sound and whether it reaches the correct answer. Score it "
        "from 1 (wrong) to 5 (correct, clear and complete). Think briefly, then end with the score alone in "
        "square brackets, for example [4]."
    )))


# The paper's prompts, verbatim from its all_prompts.py (the feedback and review ones give the hint).
PAPER_FEEDBACK = """
Imagine you are a teacher, I will give you one student's incorrect answer to a question. You should point out the mistakes in the student's answer.
Question: {}
Student's Answer: {}
Hint: The correct answer should be {}.
"""
PAPER_REVIEW = """
Imagine you are a reviewer, I will give you one submission about the rationale for a question. You should simulate the peer-review process by evaluating the rationale based on its correctness and soundness. Let's think step by step, but your final answer should only be one number, ranging from 1-5 (the higher the score is, the more possible you think the rationale is correct). The score should be wrapped by square brackets, such as: [5].
Question: {}
Rationale: {}
Hint: The correct answer should be {}.
"""


def paper_question(task: Task, answer: StudentAnswer) -> str:
    return task.paper_prompt(answer.example()) if task.name in ("strategyqa", "logiqa") else answer.question


def paper_gold(task: Task, answer: StudentAnswer) -> str:
    """The paper hints with its own gold field: StrategyQA's 'true.\\t<facts>', LogiQA's option index."""
    from fair.paper import paper_gold as gold

    return gold(task, answer)


def paper_feedback(task: Task, answer: StudentAnswer) -> Messages:
    question = paper_question(task, answer) if task.name == "logiqa" else answer.question
    return (("user", PAPER_FEEDBACK.format(question, answer.prediction, paper_gold(task, answer))),)


def paper_rationale(task: Task, answer: StudentAnswer) -> Messages:
    return (("user", paper_question(task, answer)),)


def paper_review(task: Task, answer: StudentAnswer, rationale: str) -> Messages:
    question = paper_question(task, answer) if task.name == "logiqa" else answer.question
    return (("user", PAPER_REVIEW.format(question, rationale, paper_gold(task, answer))),)


@dataclass(frozen=True)
class PromptSet:
    feedback: Callable[[Task, StudentAnswer], Messages]
    rationale: Callable[[Task, StudentAnswer], Messages]
    review: Callable[[Task, StudentAnswer, str], Messages]


PROMPT_SETS = {
    "fair": PromptSet(fair_feedback, fair_rationale, fair_review),
    "paper": PromptSet(paper_feedback, paper_rationale, paper_review),
}
