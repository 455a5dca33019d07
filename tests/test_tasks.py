"""Tasks declared in YAML (fair/tasks/_declared.py): each answer kind from each file format, the one-line errors
for a bad file and a bad row, `fair tasks`, the example in configs/tasks/, and (slow) a declared task mined, sent to the offline committee, trained on and
evaluated end to end."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cli.main import main
from fair.errors import FairError
from fair.jsonl import read_jsonl
from fair.tasks import DECLARED_DIR, declared_names, get_task
from fair.tasks._declared import keys_table
from tests.conftest import ROOT, declare


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------------------------------------
# Each kind, each format


def test_a_number_task_over_a_csv_renders_its_template(tmp_path):
    (tmp_path / "sums.csv").write_text('a,b,total\n3,4,7\n"1,000",5,"1,005.0"\n')
    task = get_task(str(declare(tmp_path, "splits: {train: sums.csv}\nquestion: 'What is {a} plus {b}?'\n"
                                          "answer: total\nanswer_kind: number\n")))
    first, second = task.load("train")
    assert (first.id, first.question, first.gold) == ("train-0", "What is 3 plus 4?", "7")
    assert (second.question, second.gold) == ("What is 1,000 plus 5?", "1005")
    assert task.prompt(first).startswith("What is 3 plus 4?\n\n") and '"The answer is N."' in task.prompt(first)
    assert task.grade("3 + 4 = 7.\nThe answer is 7.", first).correct is True
    assert task.grade("The answer is 8.", first).correct is False


def test_a_yes_no_task_over_jsonl_takes_booleans_and_its_own_ids(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"qid": "q1", "claim": "Is the sky green?", "truth": False},
                                        {"qid": "q2", "claim": "Is water wet?", "truth": "Yes"}])
    task = get_task(str(declare(tmp_path, "splits: {train: qa.jsonl}\nquestion: claim\nanswer: truth\n"
                                          "answer_kind: yesno\nid: qid\n")))
    examples = task.load("train")
    assert [(e.id, e.gold) for e in examples] == [("q1", "no"), ("q2", "yes")]
    assert task.prompt(examples[0]).endswith('"The answer is yes." or "The answer is no."')
    assert task.grade("The sky is blue, so: The answer is no.", examples[0]).correct is True


def test_an_option_task_over_parquet_takes_a_list_of_options_and_an_index(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"q": ["Which is a fruit?", "Which is a colour?"],
                             "choices": [["stone", "apple", "chair"], ["red", "seven", "up"]],
                             "label": [1, 0]}), tmp_path / "mc.parquet")
    task = get_task(str(declare(tmp_path, "splits: {test: mc.parquet}\nquestion: q\nanswer: label\n"
                                          "answer_kind: option\noptions: choices\n")))
    first, second = task.load("test")
    assert (first.gold, first.options, second.gold) == ("B", ("stone", "apple", "chair"), "A")
    assert task.prompt(first) == ("Question: Which is a fruit?\nA. stone\nB. apple\nC. chair\n\nThink step by step. "
                                  'Then write the final answer on its own line as "The answer is X." where X is A, B or C.')
    assert task.grade("The answer is B.", first).correct is True
    assert task.grade('The answer is "chair".', first).correct is False


def test_an_option_task_over_csv_columns_takes_a_letter(tmp_path):
    (tmp_path / "mc.csv").write_text("q,w,x,y,z,key\nPick two.,one,two,three,four,b\n")
    task = get_task(str(declare(tmp_path, "splits: {train: mc.csv}\nquestion: q\nanswer: key\n"
                                          "answer_kind: option\noptions: [w, x, y, z]\n")))
    (example,) = task.load("train")
    assert (example.gold, example.options) == ("B", ("one", "two", "three", "four"))


def test_an_exact_task_over_tsv_with_its_own_prompt(tmp_path):
    (tmp_path / "capitals.tsv").write_text("country\tcapital\nFrance\tParis\nPeru\tLima\n")
    task = get_task(str(declare(tmp_path, "splits: {train: capitals.tsv}\nquestion: 'Capital of {country}?'\n"
                                          "answer: capital\nanswer_kind: exact\n"
                                          "prompt: 'Answer in one word. {question} {{no braces}}'\n")))
    france, peru = task.load("train")
    assert task.prompt(france) == "Answer in one word. Capital of France? {no braces}"
    assert task.grade("The answer is **Paris**.", france).correct is True
    assert task.grade("The answer is Lyon.", france).correct is False
    assert task.grade("Lima", peru).correct is True


def test_a_regex_task_reads_the_patterns_last_match(tmp_path):
    write_jsonl(tmp_path / "codes.jsonl", [{"question": "Which part fits?", "answer": "SKU-0457"}])
    task = get_task(str(declare(tmp_path, "splits: {train: codes.jsonl}\nanswer_kind: regex\n"
                                          "answer_pattern: 'SKU-\\d+'\n")))
    (example,) = task.load("train")
    assert task.grade("Not SKU-12 but SKU-0457 fits.", example).correct is True
    assert task.grade("SKU-0457 is close; SKU-12 fits.", example).extracted == "SKU-12"


def test_a_hub_task_maps_its_splits_to_the_hubs_and_reads_them_lazily(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    asked = []

    def load_dataset(hub_id, config, split):
        asked.append((hub_id, config, split))
        return datasets.Dataset.from_dict({"query": ["Is ice cold?", "Is fire cold?"], "label": [True, False]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    task = get_task(str(declare(tmp_path, "splits: {train: train, test: validation}\nhub: someone/ice\n"
                                          "hub_config: easy\nquestion: query\nanswer: label\nanswer_kind: yesno\n")))
    assert task.describe_source() == "hub someone/ice (easy)"
    assert [(e.id, e.gold) for e in task.load("test", limit=1)] == [("test-0", "yes")]
    assert asked == [("someone/ice", "easy", "validation")]


def test_every_task_in_configs_loads_and_every_data_file_there_is_read():
    named = set()
    for name in declared_names():
        task = get_task(name)
        for split in task.splits:
            examples = task.load(split)
            assert examples and len({e.id for e in examples}) == len(examples)
            assert all(task.grade(f"The answer is {e.gold}.", e).correct for e in examples)
            named.add((DECLARED_DIR / task.source.spec.splits[split]).resolve())
    assert "arithmetic" in declared_names()
    assert {p.resolve() for p in DECLARED_DIR.rglob("*") if p.is_file() and p.suffix != ".yaml"} <= named


def test_the_docs_page_shows_every_key_as_the_code_documents_it():
    page = (ROOT / "docs" / "tasks.md").read_text()
    table = page.split("<!-- keys: begin -->\n", 1)[1].split("<!-- keys: end -->", 1)[0]
    assert table == keys_table(), "docs/tasks.md: paste fair.tasks._declared.keys_table() between its keys markers"


# ----------------------------------------------------------------------------------------------------------
# Errors: one line, naming the file and the key (a bad file), or the data file, the row and the field (a bad row)

KINDS = "'number', 'yesno', 'option', 'exact', 'regex'"


@pytest.mark.parametrize(("text", "message"), [
    ("splits: {train: d.csv}\nanswer_kind: numbr\n", f"mine.yaml: unknown answer_kind 'numbr' (choose from {KINDS})"),
    ("splits: {train: d.csv}\nanwser: a\n", "mine.yaml: unknown setting 'anwser'"),
    ("question: q\n", "mine.yaml: missing setting(s) splits"),
    ("splits: [d.csv]\n", "mine.yaml: splits must be dict, got ['d.csv']"),
    ("splits: {train: d.xlsx}\n", "mine.yaml: splits: train: 'd.xlsx' is not a .jsonl, .csv, .tsv, .parquet file"),
    ("splits: {train: d.csv}\nanswer_kind: option\n", "mine.yaml: options: an option task names the fields"),
    ("splits: {train: d.csv}\noptions: [a, b]\n", "mine.yaml: options: only an option task has options"),
    ("splits: {train: d.csv}\nanswer_kind: option\noptions: [a, b, c, d, e]\n", "mine.yaml: options: 2 to 4 fields"),
    ("splits: {train: d.csv}\nanswer_kind: regex\n", "mine.yaml: answer_pattern: a regex task needs one"),
    ("splits: {train: d.csv}\nanswer_kind: regex\nanswer_pattern: '(x'\n",
     "mine.yaml: answer_pattern: not a valid regular expression"),
    ("splits: {train: d.csv}\nanswer_kind: regex\nanswer_pattern: '(\\d*)'\n",
     "mine.yaml: answer_pattern: it matches the empty string"),
    ("splits: {train: d.csv}\nprompt: '{question} {hint}'\n", "mine.yaml: prompt: a template over {question}"),
    ("splits: {train: d.csv}\nquestion: 'Q: {}'\n", "mine.yaml: question: name a field"),
    ("splits: {train: d.csv}\nhub_config: main\n", "mine.yaml: hub_config: only with hub"),
    ("splits: {train: d.csv\n", "mine.yaml is not valid YAML"),
    ("- a list\n", "mine.yaml: expected a mapping of settings"),
])
def test_a_bad_task_file_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, text, message):
    code, _, err = run(capsys, "mine", "--task", str(declare(tmp_path, text)), "--out", str(tmp_path / "out"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("kind", "data", "message"), [
    ("number", "question,answer\n1+1?,2\n2+2?,\n", "d.csv row 1: missing field 'answer' (the answer of"),
    ("number", "questoin,answer\n1+1?,2\n", "d.csv row 0: missing field 'question' (the question of"),
    ("number", "question, answer\n1+1?,2\n", "mine.yaml; the row's fields: 'question', ' answer')"),
    ("number", "question,answer\n1+1?,two\n", "d.csv row 0: field 'answer': gold answer 'two' is not a number"),
    ("number", "question,answer\n1+1?,2\n1/0?,inf\n", "d.csv row 1: field 'answer': gold answer 'inf' is not a number"),
    ("number", "question,answer\n0/0?,NaN\n", "d.csv row 0: field 'answer': gold answer 'NaN' is not a number"),
    ("yesno", "question,answer\nIs it?,maybe\n", "d.csv row 0: field 'answer': gold answer 'maybe' is not yes/no"),
    ("option", "question,answer,a,b\nPick.,C\n", "d.csv row 0: missing field 'a' (the options of"),
    ("option", "question,answer,a,b\nPick.,C,x,y\n", "d.csv row 0: field 'answer' must be a letter A-B or an index 0-1"),
])
def test_a_bad_row_names_the_data_file_the_row_and_the_field_before_the_model_loads(tmp_path, capsys, monkeypatch,
                                                                                     kind, data, message):
    def no_engine(*a, **k):
        raise AssertionError("a bad row must stop the run before the engine starts")

    monkeypatch.setattr("fair.student.make_engine", no_engine)
    (tmp_path / "d.csv").write_text(data)
    options = "options: [a, b]\n" if kind == "option" else ""
    path = declare(tmp_path, f"splits: {{train: d.csv}}\nanswer_kind: {kind}\n{options}")
    code, _, err = run(capsys, "mine", "--task", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and message in err and "mine.yaml" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "answers.jsonl").exists()


def test_a_csv_not_in_utf8_says_so_without_a_line_it_cannot_know(tmp_path):
    # Excel's "CSV" on Windows is cp1252: the decoder fails a buffer ahead of the csv reader's line count
    (tmp_path / "d.csv").write_bytes("question,answer\nCafé au lait?,yes\n".encode("cp1252"))
    task = get_task(str(declare(tmp_path, "splits: {train: d.csv}\n")))
    with pytest.raises(FairError, match=r"d.csv: not UTF-8 text \(byte b'\\xe9'\): save it as UTF-8$"):
        task.load("train")


def test_an_id_given_twice_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    # A resumed run skips the ids answered and the records are joined by id: a second row of an id would be lost.
    monkeypatch.setattr("fair.student.make_engine", lambda *a, **k: pytest.fail("the engine must not start"))
    (tmp_path / "d.csv").write_text("id,question,answer\nq1,1+1?,2\nq2,2+2?,4\nq1,3+3?,6\n")
    path = declare(tmp_path, "splits: {train: d.csv}\nanswer_kind: number\nid: id\n")
    code, _, err = run(capsys, "mine", "--task", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "d.csv row 2: field 'id': id 'q1' is not unique (the id of" in err and "mine.yaml" in err
    assert [e.id for e in get_task(str(path)).load("train", limit=2)] == ["q1", "q2"]  # no row read past the limit
    (tmp_path / "d.csv").write_text("id,question,answer\n7,1+1?,2\n8,2+2?,4\n")  # ids need only be unique
    assert [e.id for e in get_task(str(path)).load("train")] == ["7", "8"]


def test_a_missing_data_file_and_a_missing_task_file_are_named(tmp_path):
    path = declare(tmp_path, "splits: {train: absent.csv}\n")
    with pytest.raises(FairError, match=r"mine.yaml: splits: train: no data file .*absent.csv"):
        get_task(str(path)).load("train")
    with pytest.raises(FairError, match="task file .*nope.yaml not found"):
        get_task(str(tmp_path / "nope.yaml"))


def test_a_declared_task_cannot_take_a_built_in_name_and_a_typo_is_told_the_near_name(tmp_path, monkeypatch):
    with pytest.raises(FairError, match="cannot take the built-in task name 'svamp'"):
        get_task(str(declare(tmp_path, "splits: {train: d.csv}\n", "svamp")))
    monkeypatch.setattr("fair.tasks.DECLARED_DIR", tmp_path)
    declare(tmp_path, "splits: {train: d.csv}\n", "capitals")
    with pytest.raises(FairError, match="unknown task 'capitls'.*capitals.*did you mean 'capitals'"):
        get_task("capitls")
    assert get_task("capitals").name == "capitals"


# ----------------------------------------------------------------------------------------------------------
# fair tasks


def test_fair_tasks_lists_the_built_ins_and_the_declared_tasks(capsys, tmp_path, monkeypatch):
    code, out, _ = run(capsys, "tasks")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and {"gsm8k", "svamp", "strategyqa", "logiqa", "arithmetic"} <= set(lines)
    assert lines["arithmetic"].split()[1:5] == ["number", "splits:", "train,", "test"]
    assert lines["arithmetic"].endswith("configs/tasks/arithmetic.yaml: arithmetic/train.csv, arithmetic/test.csv")
    assert "hub openai/gsm8k" in lines["gsm8k"] and lines["logiqa"].split()[1] == "option"

    monkeypatch.setattr("fair.tasks.DECLARED_DIR", tmp_path)
    declare(tmp_path, "splits: {train: train, test: validation}\nhub: someone/quiz\nhub_config: easy\n"
                      "answer_kind: exact\n", "quiz")
    code, out, _ = run(capsys, "tasks")
    assert code == 0 and out.splitlines()[-1].split() == ["quiz", "exact", "splits:", "train,", "test", "hub",
                                                          "someone/quiz", "(easy)"]
    declare(tmp_path, "splits: {train: d.csv}\nanswer_kind: numbr\n", "broken")
    code, _, err = run(capsys, "tasks")
    assert code == 2 and "broken.yaml: unknown answer_kind 'numbr'" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------------------
# The offline committee


def test_the_simulator_answers_a_declared_tasks_questions_from_their_gold(tmp_path):
    import random

    from simulator.personas import Persona, QuestionIndex, write_feedback, write_rationale

    rows = {"number": "How much is six and one?,7", "exact": "Which city is in Peru?,Lima",
            "option": "Which is red?,B,grass,blood,sky"}
    for kind, row in rows.items():
        (tmp_path / f"{kind}.csv").write_text(f"q,a,w,x,y\n{row}\n")
        options = "options: [w, x, y]\n" if kind == "option" else ""
        declare(tmp_path, f"splits: {{train: {kind}.csv}}\nquestion: q\nanswer: a\nanswer_kind: {kind}\n{options}", kind)
    index = QuestionIndex.build(tmp_path / "no-built-ins-here", tuple(str(tmp_path / f"{k}.yaml") for k in rows))
    careful, wrong, rng = Persona(p_wrong=0, p_sloppy=0), Persona(p_wrong=1, p_sloppy=0), random.Random(0)
    for kind in rows:
        task = get_task(str(tmp_path / f"{kind}.yaml"))
        (example,) = task.load("train")
        entry = index.find(f"Question:\n{task.prompt(example)}")
        assert entry is not None and entry.task.name == kind and entry.example.id == example.id
        assert task.grade(write_rationale(entry, careful, rng), example).correct is True
        assert task.grade(write_rationale(entry, wrong, rng), example).correct is not True
        assert example.gold in write_feedback(entry, careful, "Student's answer:\n<<<\nno idea\n>>>", rng)


# ----------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_a_declared_task_mines_goes_to_the_offline_committee_trains_and_evaluates(tmp_path, tiny_model_dir, capsys,
                                                                                  monkeypatch):
    """A YAML task over a CSV written here, through every stage on the tiny model: `fair gen` (mining, the offline
    committee, the paper's files), `fair train` on the committee's records, `fair eval` of the trained model."""
    monkeypatch.chdir(tmp_path)
    pairs = [(3, 4), (12, 5), (6, 8), (20, 4), (15, 7), (9, 9), (7, 6), (11, 2)]
    (tmp_path / "sums").mkdir()
    for split, part in (("train", pairs), ("test", pairs[:4])):
        (tmp_path / "sums" / f"{split}.csv").write_text("a,b,total\n" + "".join(f"{a},{b},{a + b}\n" for a, b in part))
    task = str(declare(tmp_path, "splits: {train: sums/train.csv, test: sums/test.csv}\n"
                                 "question: 'Ann has {a} shells and finds {b} more. How many shells does she have?'\n"
                                 "answer: total\nanswer_kind: number\n", "sums"))
    code, _, err = run(capsys, "gen", "--task", task, "--student", str(tiny_model_dir), "--engine", "hf",
                       "--teachers", "offline", "--max-new-tokens", "4", "--offline-latency-ms", "0", "5")
    assert code == 0, err
    gen = tmp_path / "data" / "sums" / tiny_model_dir.name
    mistakes, records = list(read_jsonl(gen / "mistakes.jsonl")), list(read_jsonl(gen / "committee.jsonl"))
    assert len(records) == len(mistakes) > 0 and {m["task"] for m in mistakes} == {"sums"}
    assert (gen / f"{tiny_model_dir.name}_sums_rationale_round0.json").exists()
    # The simulator knew the questions (fair gen passed it the task): its teachers' rationales reach the gold.
    assert any(r["accepted"] for record in records for r in record["rationales"].values())

    code, _, err = run(capsys, "train", "--task", task, "--student", str(tiny_model_dir), "--committee",
                       str(gen / "committee.jsonl"), "--max-steps", "1", "--batch-size", "2", "--micro-batch-size", "1",
                       "--max-length", "256", "--dtype", "float32", "--out", str(tmp_path / "train"))
    assert code == 0, err
    assert [r["step"] for r in read_jsonl(tmp_path / "train" / "log.jsonl")] == [1]

    code, out, err = run(capsys, "eval", "--task", task, "--model", str(tmp_path / "train" / "final"), "--engine",
                         "hf", "--max-new-tokens", "4", "--out", str(tmp_path / "eval"))
    assert code == 0 and "sums" in out, err
    assert orjson.loads((tmp_path / "eval" / "sums-test" / "summary.json").read_bytes())["total"] == 4
