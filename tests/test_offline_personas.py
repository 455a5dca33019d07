"""The offline committee's personas read the committee's own prompts: fenced texts of any fence length.

gen/committee/prompts.py fences a student's answer or a rationale with runs of '<' and '>' one longer than any
run of '>' inside it, so a Python session (">>>") or a text that tries to close its fence cannot. The simulator
must find the same fence, or it reads part of the fenced text as the prompt's instructions.
"""

from __future__ import annotations

import pytest

from fair.records import StudentAnswer
from fair.tasks import get_task
from gen.committee.prompts import fair_feedback, fair_review, fence
from simulator.personas import classify, section

FENCED = [
    "Two plus two is 4. The answer is 4.",  # a three-character fence, as before
    ">>> 2 + 2\n4\n>>> # a Python session, as students write them; no peer review here\nThe answer is 4.",
    "x >>>> y, then >>>>>> and a reviewer's note\nThe answer is 4.",
]


def answer(prediction: str) -> StudentAnswer:
    return StudentAnswer(id="svamp-train-0", index=0, task="svamp", split="train", question="What is 2 + 2?",
                         gold="4", prediction=prediction, extracted=None, correct=None, prompt_tokens=1,
                         generated_tokens=1, finish_reason="stop")


def user_text(messages: tuple[tuple[str, str], ...]) -> str:
    return "\n\n".join(content for _, content in messages)


@pytest.mark.parametrize("text", FENCED)
def test_a_fenced_text_of_any_fence_length_is_read_whole(text):
    task = get_task("svamp")
    review = user_text(fair_review(task, answer("The answer is 3."), text))
    feedback = user_text(fair_feedback(task, answer(text)))
    assert fence(text).startswith("<<<<") == (">>>" in text)  # the cases hold longer fences than three
    assert section(review, ("Solution under review:",)) == text
    assert section(feedback, ("Student's answer:",)) == text


@pytest.mark.parametrize("text", FENCED)
def test_what_a_fenced_text_says_never_changes_the_kind_of_request(text):
    """Words inside the fence ("peer review", "reviewer") are the student's, not the prompt's instructions."""
    feedback = user_text(fair_feedback(get_task("svamp"), answer(text)))
    assert classify(feedback, None) == "feedback"
