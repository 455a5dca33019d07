"""Graders on real replies: the paper's published "mistakes" (several of which are right answers it mis-scored),
hand-written cases for each extraction rule, and LogiQA options from the shared data."""

import time
from functools import cache

import orjson
import pytest

from fair.errors import FairError
from fair.grading import (
    Grade,
    extract_number,
    extract_option,
    extract_yes_no,
    grade_exact,
    grade_number,
    grade_option,
    grade_regex,
    grade_yes_no,
)
from fair.tasks import default_data_dir, get_task

SVAMP_SEED = "Llama-2-7b-chat-hf_svamp_false_round0.json"
STRATEGYQA_SEED = "Llama-2-7b-chat-hf_strategyQA_false_round0.json"


@cache
def seed(name: str) -> list[dict]:
    path = default_data_dir() / "seed" / name
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data not checked out)")
    return orjson.loads(path.read_bytes())


@cache
def logiqa_validation():
    try:
        return get_task("logiqa").load("validation", default_data_dir())
    except FairError as e:  # no shared data here: nothing to test against
        pytest.skip(f"LogiQA validation data unavailable: {e}")


# --- the paper's SVAMP mistakes: (list index, record id, our extraction, our verdict) -----------------------

SVAMP_RECORDS = [
    (0, 0, "145", True),  # "Answer:\n\nGroup of bananas: 290 / 2 = 145 ..." the paper took the last number, 0.92
    (2, 5, "322", True),  # "Answer: 412 - 90 = 322\n\nExplanation: ... 392": the result after "=" on the marker line
    (5, 11, "20", True),  # "Answer:\nBob has 20 apples.\n\n...= 22": first line below a bare marker
    (47, 85, "29", True),  # "The number of bananas in each group is 203 / 7 = 29."
    (89, 166, "4", True),  # "Answer: 4 people can sit ... Therefore, 4 x 16 = 64": cut at the sentence end
    (3, 8, "12", False),  # "Answer: 12\n\nExplanation: ... has 14": the marked answer is wrong, gold 26
    (10, 21, "46", False),  # "Answer:\nZachary did 46 push-ups and 58 crunches, so he did 10": first number
    (179, 328, "-49", False),  # no marker: the last number, with its minus sign ("137 - 176 = -49")
    (33, 59, None, None),  # empty reply: nothing to extract
]


@pytest.mark.parametrize(("index", "record_id", "extracted", "correct"), SVAMP_RECORDS)
def test_paper_svamp_mistakes(index, record_id, extracted, correct):
    record = seed(SVAMP_SEED)[index]
    assert record["id"] == record_id
    assert grade_number(record["student_wrong_pred"], record["gold_answer"]) == Grade(extracted, correct)


STRATEGYQA_RECORDS = [
    (12, 24, "no", True),  # echo "True or False: ..." then 'the answer is "false"'; the paper said true
    (319, 590, "no", True),  # "Answer: False ... While it is true that": the paper said true
    (454, 871, "no", True),  # "My answer: False."
    (63, 126, "no", True),  # no marker: "I believe this statement is false"
    (336, 619, "no", True),  # 'Therefore, I would say "false".'
    (263, 487, "no", False),  # 'the answer to the question "Did ... Christianity?" is "false"'
    (1, 2, "no", False),  # "\nFalse.\n\nMy reasoning ...": the opening word
    (9, 19, "yes", False),  # "Answer: True"
    (2, 4, None, None),  # only the echoed question "True or False: ..."; the paper said true
    (7, 14, None, None),  # 'Please answer "true" or "false"': asks, does not answer
    (0, 1, None, None),  # "Hint: ..."
]


@pytest.mark.parametrize(("index", "record_id", "extracted", "correct"), STRATEGYQA_RECORDS)
def test_paper_strategyqa_mistakes(index, record_id, extracted, correct):
    record = seed(STRATEGYQA_SEED)[index]
    assert record["id"] == record_id
    gold = record["gold_answer"].split(".\t")[0]
    assert grade_yes_no(record["student_wrong_pred"], gold) == Grade(extracted, correct)


# --- numbers -----------------------------------------------------------------------------------------------

NUMBER_CASES = [
    # \boxed{}: the last one, ahead of every other marker
    (r"So x = 3 and \boxed{145}.", "145"),
    (r"First \boxed{3}, then corrected: \boxed{5}. The answer is 7.", "5"),
    (r"\boxed{\frac{3}{4}}", "0.75"),
    (r"\boxed{x = 12}", "12"),
    (r"\boxed{1,000} #### 7", "1000"),
    # #### N (GSM8K style), ahead of "The answer is"
    ("48 / 2 = 24\n#### 24", "24"),
    ("The answer is 5.\n#### 6", "6"),
    ("#### 1,234", "1234"),
    # answer markers, any case; the last one that has a number wins
    ("The answer is 18.", "18"),
    ("the final answer is: $18.00", "18"),
    ("ANSWER: 9 apples", "9"),
    ("**Answer:** 42", "42"),
    ("The answer is 5. Wait, 12 - 5 = 7. The answer is 7.", "7"),
    ("Answer: 412 - 90 = 322\n\nExplanation: 110 - 90 = 20", "322"),
    ("Answer:\n\nGroup of bananas: 290 / 2 = 145\n\nGroup of oranges: 87 / 93 = 0.92", "145"),
    ("Answer: $186 - $172 = $14", "14"),
    ("The answer is 5 people. Earlier we found 10.", "5"),
    ("Answer:\n\nLet's think. We have 3 apples and 4 pears, so 7 in all", "7"),  # marker without a number
    ("The answer is 12. The answer is unclear", "12"),  # a later marker without a number is skipped
    # fallback: the last number
    ("He had 5 apples and bought 7 more, so 12", "12"),
    ("7-3", "3"),
    # normalisation
    ("There are 1,000 students", "1000"),
    ("It costs $5.", "5"),
    ("It costs 5 dollars", "5"),
    ("The rope is 12 cm long", "12"),
    ("The discount is 50%", "50"),
    ("The answer is 145.0", "145"),
    ("The answer is 3.50", "3.5"),
    ("The answer is -3", "-3"),
    ("x = -4", "-4"),
    ("He lost −2 points", "-2"),
    ("The answer is 3/4", "0.75"),  # an unspaced fraction is one number
    ("290 / 2", "2"),  # a spaced one is an expression
    ("The answer is 145.", "145"),
    ("COVID-19", "19"),  # a hyphen after a word is no minus
    ("Answer: 2,190 cookies (53 bags x 41", "2190"),
    # nothing to extract
    ("", None),
    ("I do not know the answer.", None),
    ("The answer is five.", None),  # number words are not read
]


@pytest.mark.parametrize(("text", "expected"), NUMBER_CASES)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    ("text", "gold", "correct"),
    [
        ("The answer is 145.0", "145", True),
        ("The answer is 145", "145.0", True),
        ("The answer is 1,000", "1000", True),
        ("The answer is 1000", "1,000", True),
        ("The answer is 0.92", "0.92", True),
        ("The answer is 1/3", "0.333333333", True),  # within 1e-6 relative
        ("The answer is 0.33", "0.3333333", False),
        ("The answer is 3", "-3", False),
        ("The answer is -3", "-3", True),
        ("The answer is 144", "145", False),
        ("no idea", "145", None),
    ],
)
def test_grade_number(text, gold, correct):
    assert grade_number(text, gold).correct is correct


def test_grade_number_rejects_a_non_numeric_gold():
    with pytest.raises(ValueError, match="not a number"):
        grade_number("5", "five")


# --- yes / no ----------------------------------------------------------------------------------------------

YES_NO_CASES = [
    # answer markers, the last one wins; "not" flips
    ("The answer is yes.", "yes"),
    ("Therefore, the answer is no.", "no"),
    ("Answer: False\n\nExplanation: while it is true that hippos live in Africa ...", "no"),
    ("The answer is: True", "yes"),
    ('So the answer is "false".', "no"),
    ("Answer: not true", "no"),
    ("Answer: True. On reflection, the answer is false.", "no"),
    ("No one knows for sure, but the answer is yes.", "yes"),
    ('So, based on the information provided, I would answer "true".', "yes"),
    ("I would say no.", "no"),
    # the reply's opening word
    ("Yes.", "yes"),
    ("No, because cats cannot fly.", "no"),
    ("True. Cats are mammals.", "yes"),
    ("False. Flying fish glide; it is not true that they flap their fins.", "no"),  # the paper said true
    ("**Yes**, it is.", "yes"),
    ("Not true: cats cannot fly.", "no"),
    ("\nFalse.\n\nMy reasoning is as follows:", "no"),
    # fallback: the last verdict phrase
    ("It is not true that cats bark.", "no"),
    ("That isn't true.", "no"),
    ("The claim is false.", "no"),
    ("I think the statement is true.", "yes"),
    ("It's true that cats purr.", "yes"),
    # no answer
    ("True or False: Cats can fly.", None),  # the prompt echoed back
    ('Please answer "true" or "false" and explain.', None),
    ("No one really knows.", None),  # "No" opening a noun phrase is not an answer
    ("Cats are mammals.", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), YES_NO_CASES)
def test_extract_yes_no(text, expected):
    assert extract_yes_no(text) == expected


@pytest.mark.parametrize(
    ("gold", "text", "correct"),
    [
        ("yes", "Yes.", True),
        ("True", "Yes.", True),
        ("true", "Answer: False", False),
        ("false", "Answer: False", True),
        ("false.", "Answer: False", True),  # the paper's "false.\t<facts>" cut at the tab
        ("NO", "The answer is no", True),
        ("no", "True or False: cats fly.", None),
    ],
)
def test_grade_yes_no(gold, text, correct):
    assert grade_yes_no(text, gold).correct is correct


def test_grade_yes_no_rejects_an_unknown_gold():
    with pytest.raises(ValueError, match="yes/no"):
        grade_yes_no("Yes", "maybe")


# --- options (LogiQA validation rows 0 and 2) -----------------------------------------------------------------


def options(index: int) -> tuple[str, ...]:
    return logiqa_validation()[index].options


def test_logiqa_rows_are_the_expected_ones():
    assert options(0)[1].startswith("The unusually high salt intake")
    assert options(2)[3] == "Sudanese girls, French girls, French boys."


LETTER_CASES = [
    ("The answer is B.", "B"),
    ("Answer: (C)", "C"),
    ("The answer is option D because ...", "D"),
    ("Answer: **A**", "A"),
    ("I choose option d, since the others fail.", "D"),
    ("B. The unusually high salt intake ...\n\nThis option matters most.", "B"),
    ("(C) is right because ...", "C"),
    ("Answer:\nB\n\nRationale: ...", "B"),
    ("Option A is tempting. The answer is C.", "C"),  # the marker beats a mention
    ("The correct option is B.", "B"),
    ("The answer is B. This option is the only one that fits.", "B"),  # a later marker naming nothing is skipped
    ("A person who eats salt ...", None),  # the article "A" is no letter
    ("A. ...\nB. ...\nC. ...\nD. ...", None),  # the options restated, no choice
    ("Option A is wrong and option C is right.", None),  # two letters named, no marker
    ("I am not sure.", None),
]


@pytest.mark.parametrize(("text", "expected"), LETTER_CASES)
def test_extract_option_by_letter(text, expected):
    assert extract_option(text, options(0)) == expected


def test_extract_option_by_quoted_text():
    opts = options(0)
    # the paper's format: the option's text after "Answer:", here with case and punctuation changed
    reply = f"Answer:\n\nThe correct answer is: '{opts[3].upper().rstrip('.')}'\n\nRationale: ..."
    assert extract_option(reply, opts) == "D"
    # quoted anywhere, once
    assert extract_option(f"I think that {opts[1].lower()} That supports it.", opts) == "B"
    # several quoted: the one after the marker wins
    reply = f'Is it "{opts[0]}"? Or "{opts[2]}"? The answer is "{opts[2]}"'
    assert extract_option(reply, opts) == "C"
    # several quoted, no marker: nothing can be told
    assert extract_option(f"{opts[0]} {opts[2]}", opts) is None


def test_extract_option_tells_near_identical_options_apart():
    opts = options(2)  # C and D differ only in their last word
    assert extract_option("The answer is: sudanese girls, french girls, french boys", opts) == "D"
    assert extract_option("The answer is: Sudanese girls, French girls, French girls.", opts) == "C"


def test_extract_option_prefers_the_longer_of_two_nested_options():
    opts = ("Some birds fly", "Some birds fly south in winter", "Fish swim", "None of the above")
    assert extract_option("I believe some birds fly south in winter.", opts) == "B"


@pytest.mark.parametrize(
    ("text", "gold", "correct"),
    [("The answer is A.", "A", True), ("The answer is B.", "a", False), ("Hmm.", "A", None)],
)
def test_grade_option(text, gold, correct):
    assert grade_option(text, options(0), gold).correct is correct


def test_grade_option_rejects_a_bad_gold():
    with pytest.raises(ValueError, match="A-D"):
        grade_option("A", ("w", "x", "y", "z"), "E")


def test_the_longest_logiqa_option_is_read_after_a_marker():
    examples = {e.id: e for e in logiqa_validation()}
    examples |= {e.id: e for e in get_task("logiqa").load("test", default_data_dir())}
    example = max(examples.values(), key=lambda e: max(map(len, e.options)))
    k = max(range(4), key=lambda i: len(example.options[i]))
    assert extract_option(f"The answer is: {example.options[k]}\n\nRationale: ...", example.options) == "ABCD"[k]


# --- degenerate replies: no crash, no quadratic time ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Answer: " + "1" * 5000,  # Python refuses to parse more than 4,300 digits
        "Answer:" + " " * 50_000,
        "Answer:" * 5_000,
        "Answer:\n" * 5_000,
        "The answer is " + "*" * 50_000,
        "\\boxed{" * 2_000 + "x" * 10_000,
        "1," * 20_000,
        "x = 3 " * 20_000,
    ],
)
def test_degenerate_replies_are_graded_quickly(text):
    """A regex that backtracks catastrophically takes seconds to forever here; a sound one, milliseconds. This
    thread's CPU time, not the wall clock, so that other processes on a loaded machine do not count."""
    start = time.thread_time()
    assert grade_number(text, "5").correct is not True
    assert grade_yes_no(text, "yes").correct is not True
    assert grade_option(text, ("a", "b", "c", "d"), "A").correct is not True
    assert grade_exact(text, "5").correct is not True
    assert time.thread_time() - start < 1.0


# --- exact strings and regular expressions (tasks declared in YAML) -----------------------------------------


@pytest.mark.parametrize(
    ("text", "gold", "extracted", "correct"),
    [
        ("Paris is the capital.\nThe answer is Paris.", "Paris", "Paris", True),
        ("The answer is **paris**", "Paris", "paris", True),  # case and markup at the ends do not count
        ('Final answer: "New   York"', "new york", '"New   York"', True),
        ("The answer is St. Louis. It lies on the Mississippi.", "St. Louis", "St. Louis", True),
        ("The answer is St. Louis. It lies on the Mississippi.", "St", "St", True),  # its first sentence
        ("The answer is Lyon. Not Paris.", "Paris", "Lyon", False),
        ("The answer is:\n\nBerlin", "Berlin", "Berlin", True),  # the line below a marker that ends its line
        ("We get \\boxed{Rome} after all.", "rome", "Rome", True),
        ("Madrid", "Madrid", "Madrid", True),  # a one-line reply is its answer
        ("I am not sure.\nMaybe Oslo, maybe Bergen.", "Oslo", None, None),  # no marker, several lines: no answer
    ],
)
def test_grade_exact(text, gold, extracted, correct):
    assert grade_exact(text, gold) == Grade(extracted, correct)


def test_grade_exact_rejects_an_empty_gold():
    with pytest.raises(ValueError, match="empty"):
        grade_exact("The answer is x.", " ** ")


@pytest.mark.parametrize(
    ("pattern", "text", "gold", "extracted", "correct"),
    [
        (r"SKU-(\d+)", "First SKU-12, then SKU-0457.", "0457", "0457", True),  # the last match, its first group
        (r"(?P<answer>[A-Z]{3})-(\d)", "Route ABC-1 to XYZ-2", "xyz", "XYZ", True),  # the group named answer
        (r"\b[a-z]+@[a-z]+\.com\b", "mail bob@corp.com", "Bob@Corp.com", "bob@corp.com", True),  # the whole match
        (r"SKU-(\d+)", "SKU-1 and SKU-2", "1", "2", False),
        (r"SKU-(\d+)", "no code here", "1", None, None),
        # alternatives, each with its group: the group that took part in the match, not the first by number
        (r"The answer is (\w+)|Answer: (\w+)", "Answer: Lyon", "lyon", "Lyon", True),
        (r"(?P<answer>\d+) apples|(?P<other>none)", "none", "3", "none", False),
        (r"Answer: (\w+)?", "Answer: ...", "x", None, None),  # a group that took no part is no answer
    ],
)
def test_grade_regex(pattern, text, gold, extracted, correct):
    assert grade_regex(text, gold, pattern) == Grade(extracted, correct)
