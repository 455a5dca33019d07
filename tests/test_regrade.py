"""`fair grade`: re-grading the paper's mistake files and our JSON Lines, and one-line errors on bad input."""

import subprocess
import sys
from collections import Counter

import orjson
import pytest

from eval.regrade import GradeConfig, grade_file, run
from fair.config import build_config, config_parser
from fair.errors import FairError
from fair.tasks import default_data_dir

SEED = default_data_dir() / "seed"
SVAMP = SEED / "Llama-2-7b-chat-hf_svamp_false_round0.json"
STRATEGYQA = SEED / "Llama-2-7b-chat-hf_strategyQA_false_round0.json"
needs_seed = pytest.mark.skipif(not SVAMP.exists() or not STRATEGYQA.exists(), reason="shared seed data absent")


def args(*argv: str) -> GradeConfig:
    parser = config_parser(GradeConfig, "fair grade", None, positional=("file",))
    return build_config(GradeConfig, parser.parse_args(argv))


def verdicts(results: list[dict]) -> Counter:
    return Counter({True: "correct", False: "wrong", None: "unparseable"}[r["correct"]] for r in results)


def write_jsonl(path, records) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


# --- the paper's files (the numbers in docs/grader_report.md) -----------------------------------------------


@needs_seed
def test_paper_svamp_file():
    results = grade_file("svamp", SVAMP)
    assert verdicts(results) == {"correct": 26, "wrong": 352, "unparseable": 9}
    assert results[0] == {"id": 0, "gold": "145", "extracted": "145", "correct": True}


@needs_seed
def test_paper_strategyqa_file():
    results = grade_file("strategyQA", STRATEGYQA)  # the paper's spelling is an alias
    assert verdicts(results) == {"correct": 30, "wrong": 425, "unparseable": 370}
    assert results[12] == {"id": 24, "gold": "no", "extracted": "no", "correct": True}  # "false.\t<facts>" -> no


@needs_seed
def test_run_prints_a_summary(capsys):
    assert run(args("--task", "svamp", str(SVAMP))) == 0
    out = capsys.readouterr().out
    assert "records         387" in out
    assert "correct          26    6.7%" in out
    assert "unparseable       9    2.3%" in out


@needs_seed
def test_run_json_prints_one_record_per_line_and_nothing_else(capsys):
    assert run(args("--task", "strategyqa", "--json", str(STRATEGYQA))) == 0
    captured = capsys.readouterr()
    lines = [orjson.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == 825
    assert lines[0] == {"id": 1, "correct": None, "extracted": None}
    assert lines[1] == {"id": 2, "correct": False, "extracted": "no"}
    assert "records         825" in captured.err


@needs_seed
def test_module_entry_point_reproduces_the_report():
    cmd = [sys.executable, "-m", "eval.regrade", "--task", "svamp", str(SVAMP)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "correct          26" in out


def test_module_entry_point_exits_2_with_a_one_line_error(tmp_path):
    cmd = [sys.executable, "-m", "eval.regrade", "--task", "svamp", str(tmp_path / "none.jsonl")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == f"fair grade: error: {tmp_path / 'none.jsonl'}: no such file\n"


# --- our JSON Lines ----------------------------------------------------------------------------------------


def test_our_jsonl_numbers(tmp_path):
    path = write_jsonl(tmp_path / "mistakes.jsonl", [
        {"id": "chal-1", "gold": "145", "prediction": "The answer is 145.0", "extracted": "0", "correct": False},
        {"id": "chal-2", "gold": "8", "prediction": "The answer is 9."},
        {"id": "chal-3", "gold": "8", "prediction": ""},
    ])
    assert grade_file("svamp", path) == [
        {"id": "chal-1", "gold": "145", "extracted": "145", "correct": True},  # stored verdicts are ignored
        {"id": "chal-2", "gold": "8", "extracted": "9", "correct": False},
        {"id": "chal-3", "gold": "8", "extracted": None, "correct": None},
    ]


def test_our_jsonl_yes_no_with_boolean_gold(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "q1", "gold": "yes", "prediction": "The answer is yes."},
        {"id": "q2", "gold": False, "prediction": "True. It is."},
    ])
    assert [(r["gold"], r["correct"]) for r in grade_file("strategyqa", path)] == [("yes", True), ("no", False)]


def test_our_records_as_a_json_array(tmp_path):
    path = tmp_path / "p.json"
    path.write_bytes(orjson.dumps([{"id": "a", "gold": "3", "prediction": "#### 3"}]))
    assert grade_file("gsm8k", path)[0]["correct"] is True


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "a", "gold": "3", "prediction": "3"}\n{"id": "b", "gold"')
    assert [r["id"] for r in grade_file("svamp", path)] == ["a"]


def test_empty_file(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_bytes(b"")
    assert run(args("--task", "svamp", str(tmp_path / "p.jsonl"))) == 0
    assert "records           0" in capsys.readouterr().out


def test_logiqa_options_in_the_record(tmp_path):
    options = ["Cats can fly.", "Dogs can bark.", "Fish can sing.", "Birds can swim."]
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "validation-0", "gold": "B", "prediction": "The answer is: dogs can bark", "options": options},
        {"id": "validation-1", "gold": "B", "prediction": "Answer: (C)", "options": options},
    ])
    assert [(r["extracted"], r["correct"]) for r in grade_file("logiqa", path)] == [("B", True), ("C", False)]


def test_a_declared_option_task_grades_records_of_two_or_three_options(tmp_path):
    # a declared option task has 2 to 4 options (docs/tasks.md), and `fair grade` takes declared tasks
    (tmp_path / "quiz.yaml").write_text("splits: {test: quiz.jsonl}\nanswer_kind: option\noptions: choices\n")
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "test-0", "gold": "B", "prediction": "The answer is B.", "options": ["red", "blue", "green"]},
        {"id": "test-1", "gold": "A", "prediction": "The answer is B.", "options": ["yes", "no"]},
    ])
    assert [(r["extracted"], r["correct"]) for r in grade_file(str(tmp_path / "quiz.yaml"), path)] == [
        ("B", True), ("B", False)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "test-0", "gold": "A", "prediction": "A", "options": ["one"]}])
    with pytest.raises(FairError, match="record 0: field 'options' must be a list of 2 to 4 strings"):
        grade_file(str(tmp_path / "quiz.yaml"), bad)


def test_logiqa_options_looked_up_by_id(tmp_path):
    if not (default_data_dir() / "logiqa" / "Eval.txt").exists():
        pytest.skip("LogiQA data absent")
    # validation row 2's option D, quoted; its option C differs only in the last word
    reply = "The answer is: Sudanese girls, French girls, French boys."
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "validation-2", "gold": "D", "prediction": reply}])
    assert grade_file("logiqa", path)[0] == {"id": "validation-2", "gold": "D", "extracted": "D", "correct": True}


def test_paper_logiqa_and_gsm8k_records(tmp_path):
    path = tmp_path / "logiqa.json"
    path.write_bytes(orjson.dumps([{
        "id": 7, "context": "...", "question": "...", "options": ["w x", "y z", "p q", "r s"],
        "gold_answer": "2", "student_wrong_pred": "Answer:\n\nThe correct answer is: 'P q.'\n\nRationale: ...",
        "student_wrong_final_answer": "ABSOLUTE_WRONG_FINAL_ANS",
    }]))
    assert grade_file("logiQA", path) == [{"id": 7, "gold": "C", "extracted": "C", "correct": True}]
    path = tmp_path / "gsm8k.json"
    path.write_bytes(orjson.dumps([{"id": 0, "gold_answer": "5 * 246 = 1230\n#### 1,230",
                                    "student_wrong_pred": "So she has 1230 dollars."}]))
    assert grade_file("gsm8k", path)[0]["correct"] is True


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "content", "message"),
    [
        ("svamp", b'[{"id": 0, "gold_answer": "1", "student_wrong_pred": "1"},', r"p\.json: not valid JSON"),
        ("svamp", b'{"id": "a", "gold": "1", "prediction": "1"}\n{oops\n{"id": "b"}\n', r"p\.json:2: not valid JSON"),
        ("svamp", b'[{"id": 0, "gold_answer": "1", "student_wrong_pred": "1"}, 3]', "record 1: expected a JSON object"),
        ("svamp", b'{"id": "a", "gold": "1", "prediction": "1"}\n{"id": "b", "gold": "1"}\n',
         "record 1: missing field 'prediction'"),
        ("svamp", b'{"gold": "1", "prediction": "1"}\n', "record 0: missing field 'id'"),
        ("svamp", b'{"id": "a", "gold": "1", "prediction": 5}\n', "field 'prediction' must be a string"),
        ("svamp", b'{"id": "a", "gold": "many", "prediction": "5"}\n', "record 0: field 'gold': .*not a number"),
        ("strategyqa", b'{"id": "a", "gold": "maybe", "prediction": "yes"}\n', "field 'gold': .*yes/no"),
        ("logiqa", b'[{"id": 0, "options": ["a", "b", "c", "d"], "gold_answer": "7", "student_wrong_pred": "A"}]',
         "record 0: field 'gold_answer' must be an option index 0-3"),
        ("logiqa", b'{"id": "x", "gold": "A", "prediction": "A", "options": ["a"]}\n',
         "field 'options' must be a list of 2 to 4 strings"),
        ("logiqa", b'{"id": "nosplit", "gold": "A", "prediction": "A"}\n', "record 0: missing field 'options'"),
        ("nosuchtask", b"", "unknown task 'nosuchtask'"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, task, content, message):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(FairError, match=message) as info:
        grade_file(task, path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FairError, match="none.jsonl: no such file"):
        grade_file("svamp", tmp_path / "none.jsonl")


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(FairError, match="cannot read"):
        grade_file("svamp", tmp_path)


def test_logiqa_options_lookup_failure_names_the_record(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "validation-0", "gold": "A", "prediction": "A."}])
    with pytest.raises(FairError, match=r"record 0: missing field 'options', and loading them failed: .*does not exist"):
        grade_file("logiqa", path, data_dir=str(tmp_path / "nodata"))
