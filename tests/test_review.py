"""Review-score parsing table and the acceptance rule (checked against the paper's published rule)."""

import pytest

from fair.gen.review import accept, parse_review_score


@pytest.mark.parametrize(("reply", "score"), [
    ("[4]", 4.0),
    ("The rationale is correct. [5]", 5.0),
    ("Step 1 ... step 2 ... Final score: [3]", 3.0),
    ("I first thought [2] but on reflection [4]", 4.0),
    ("[4/5]", 4.0),
    ("[ 3.5 ]", 3.5),
    ("Score: 4/5", 4.0),
    ("I'd rate it 2 out of 5.", 2.0),
    ("Score: 3.5", 3.5),
    ("**Rating:** 4", 4.0),
    ("The grade is 2 because the final step is wrong.", 2.0),
    ("4", 4.0),
    ("  5.\n", 5.0),
    ("[83]", None),  # the out-of-range score in the paper's file
    ("[0]", None),
    ("The answer is 145, which matches the hint.", None),  # the paper's grader would read 145
    ("Looks good to me!", None),
    ("", None),
    (None, None),
    ("Score: 7", None),
])
def test_parse_review_score(reply, score):
    assert parse_review_score(reply) == score


@pytest.mark.parametrize(("scores", "mean", "accepted"), [
    ([4, 3], 3.5, True),  # the paper's rule, as PROVENANCE.md re-ran it: mean of valid scores > 3
    ([3, 3], 3.0, False),
    ([4, None], 4.0, True),  # one valid score decides alone
    ([None, None], None, False),  # no valid review: never accepted
    ([5, 5], 5.0, True),
    ([1, 5], 3.0, False),
])
def test_accept(scores, mean, accepted):
    assert accept(scores, threshold=3) == (mean, accepted)
