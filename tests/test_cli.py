"""The real `fair` CLI, in-process (and `fair teachers serve` as a process), with a tiny model: one test per user
command, plus its errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import orjson
import pytest

from cli.main import main
from fair.jsonl import read_jsonl
from tests.conftest import assert_complete, cli_args, import_seed_mistakes, tiny_train_config


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_mine_then_eval(tmp_path, data_dir, tiny_model_dir, capsys):
    out = tmp_path / "mined"
    code, stdout, _ = run(capsys, "mine", "--task", "gsm8k", "--model", str(tiny_model_dir), "--engine", "hf",
                          "--limit", "5", "--max-new-tokens", "6", "--out", str(out), "--export-seed")
    assert code == 0 and "accuracy" in stdout
    assert len(list(read_jsonl(out / "answers.jsonl"))) == 5
    stats = orjson.loads((out / "stats.json").read_bytes())
    assert stats["total"] == 5 and stats["this_run"]["generated_tokens"] > 0
    assert (out / f"{tiny_model_dir.name}_gsm8k_false_round0.json").exists()

    code, stdout, _ = run(capsys, "eval", "--task", "svamp", "strategyqa", "--model", str(tiny_model_dir),
                          "--engine", "hf", "--limit", "3", "--max-new-tokens", "6", "--out", str(tmp_path / "ev"))
    assert code == 0 and "svamp" in stdout and "strategyqa" in stdout
    for task in ("svamp", "strategyqa"):
        folder = tmp_path / "ev" / f"{task}-test"
        summary = orjson.loads((folder / "summary.json").read_bytes())
        assert summary["total"] == 3
        wrong = orjson.loads((folder / "wrong.json").read_bytes())
        assert len(wrong) == 3 - summary["correct"]


def test_eval_is_deterministic(tmp_path, data_dir, tiny_model_dir, capsys):
    args = ["eval", "--task", "svamp", "--model", str(tiny_model_dir), "--engine", "hf", "--limit", "3",
            "--max-new-tokens", "6", "--temperature", "0.9", "--seed", "3"]
    run(capsys, *args, "--out", str(tmp_path / "a"))
    run(capsys, *args, "--out", str(tmp_path / "b"))
    first, second = ((tmp_path / d / "svamp-test" / "predictions.jsonl").read_bytes() for d in "ab")
    assert first == second


def test_import_mistakes_from_the_paper(tmp_path, data_dir, capsys):
    seed = data_dir / "seed" / "Llama-2-7b-chat-hf_svamp_false_round0.json"
    code, stdout, _ = run(capsys, "import-mistakes", "--task", "svamp", str(seed), "--out", str(tmp_path))
    assert code == 0
    mistakes = list(read_jsonl(tmp_path / "mistakes.jsonl"))
    dropped = 387 - len(mistakes)
    assert 0 < dropped < 100 and f"{dropped} dropped" in stdout
    assert all(m["id"].startswith("chal-") and m["correct"] is not True for m in mistakes)
    code, _, err = run(capsys, "import-mistakes", "--task", "svamp", str(seed), "--out", str(tmp_path))
    assert code == 2 and "exists" in err  # never overwrites what is there


def test_tasks_lists_the_registry(capsys):
    code, stdout, _ = run(capsys, "tasks")
    assert code == 0 and all(name in stdout for name in ("gsm8k", "svamp", "strategyqa", "logiqa"))


@pytest.mark.parametrize(("argv", "message"), [
    (["mine", "--task", "svmap"], "unknown task 'svmap'"),
    (["mine", "--model", "no/such/dir/here"], "unknown model 'no/such/dir/here'"),
    (["mine", "--config", "nope.yaml"], "config file nope.yaml not found"),
    (["mine", "limit=abc"], "command line: limit must be int or None, got 'abc'"),
    (["eval", "--data-dir", "/nonexistent"], "data directory /nonexistent/svamp does not exist"),
    (["mine", "--dtype", "fp16"], "command line: unknown dtype 'fp16' (choose from 'auto', 'float32', 'bfloat16')"),
    (["eval", "dtype=float16"], "command line: unknown dtype 'float16'"),
    (["grade", "--task", "svamp", "/nonexistent.jsonl"], "/nonexistent.jsonl"),
])
def test_bad_input_is_one_line_naming_the_culprit(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, *argv, *(["--out", str(tmp_path)] if argv[0] in ("mine", "eval") else []))
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_unknown_yaml_keys_are_rejected(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("task: svamp\nbatchsize: 4\n")
    code, _, err = run(capsys, "mine", "--config", str(config))
    assert code == 2 and "unknown setting(s) batchsize" in err


def test_gen_with_the_offline_committee(tmp_path, data_dir, tiny_model_dir, capsys, monkeypatch):
    """`make gen TEACHERS=offline`: mine, start the simulator, ask it, export the paper's files, stop it."""
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "gen", "--task", "svamp", "--student", str(tiny_model_dir), "--engine", "hf",
                            "--teachers", "offline", "--limit", "3", "--max-new-tokens", "4", "--offline-latency-ms", "0", "5")
    assert code == 0, err
    out = tmp_path / "data" / "svamp" / tiny_model_dir.name
    records = list(read_jsonl(out / "committee.jsonl"))
    mistakes = list(read_jsonl(out / "mistakes.jsonl"))
    assert len(records) == len(mistakes) > 0
    assert all(r["rationales"]["careful"]["text"] for r in records)
    for kind in ("false", "feedback", "rationale"):
        assert (out / f"{tiny_model_dir.name}_svamp_{kind}_round0.json").exists()
    assert "listening on http://127.0.0.1:" in stdout and "accepted" in stdout


def test_gen_without_api_keys_names_them_before_mining(tmp_path, capsys, monkeypatch):
    for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "gen", "--task", "gsm8k")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "ANTHROPIC_API_KEY, GEMINI_API_KEY, OPENAI_API_KEY" in err and "TEACHERS=offline" in err
    assert not (tmp_path / "data").exists()  # nothing was mined


def test_eval_rerun_reuses_predictions_without_an_engine(tmp_path, data_dir, tiny_model_dir, capsys, monkeypatch):
    args = ["eval", "--task", "svamp", "--model", str(tiny_model_dir), "--engine", "hf", "--limit", "3",
            "--max-new-tokens", "4", "--out", str(tmp_path)]
    assert main(args) == 0
    first = (tmp_path / "svamp-test" / "summary.json").read_bytes()

    def no_engine(*a, **k):
        raise AssertionError("the engine must not start when every answer exists")
    monkeypatch.setattr("fair.student.make_engine", no_engine)
    assert main(args) == 0
    assert orjson.loads((tmp_path / "svamp-test" / "summary.json").read_bytes())["correct"] == orjson.loads(first)["correct"]
    assert len(list(read_jsonl(tmp_path / "svamp-test" / "predictions.jsonl"))) == 3
    (tiny_model_dir / "config.json").touch()  # same folder, other weights (as after retraining): refused
    import os
    os.utime(tiny_model_dir / "model.safetensors", (1, 1))
    assert main(args) == 2 and "model weights" in capsys.readouterr().err


def test_committee_without_a_mistakes_file_says_so_in_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "committee", "--task", "svamp", "--teachers", "offline",
                       "--mistakes", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "committee.jsonl"))
    assert code == 2 and "no mistakes file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "committee.jsonl").exists()


def import_paper_committee(capsys, data_dir, out) -> tuple[int, str, str]:
    seed = data_dir / "seed"
    return run(capsys, "import-committee", "--task", "svamp", "--out", str(out),
               "--feedback", str(seed / "Llama-2-7b-chat-hf_svamp_feedback_round0.json"),
               "--rationale", str(seed / "Llama-2-7b-chat-hf_svamp_rationale_round0.json"))


def test_import_committee_from_the_paper(tmp_path, data_dir, capsys):
    out = tmp_path / "committee.jsonl"
    code, stdout, _ = import_paper_committee(capsys, data_dir, out)
    records = list(read_jsonl(out))
    accepted = sum(r["accepted"] for record in records for r in record["rationales"].values())
    assert code == 0 and len(records) == 387 and accepted == 286 + 221 + 319  # PROVENANCE.md's counts
    assert f"imported 387 mistakes with {accepted} accepted rationales into {out}" in stdout
    assert {name for r in records for name in r["rationales"]} == {"gpt", "gemini", "mistral"}
    written = out.read_bytes()
    code, _, err = import_paper_committee(capsys, data_dir, out)
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == written  # never overwrites what is there


def test_eval_train_eval_report_on_the_tiny_model(tmp_path, data_dir, tiny_model_dir, capsys):
    """The FAIR loop on an imported committee: evaluate, train on it, evaluate the result, write the report."""
    gen = tmp_path / "gen"
    gen.mkdir()
    assert import_paper_committee(capsys, data_dir, gen / "committee.jsonl")[0] == 0
    config = tiny_train_config(tmp_path, tiny_model_dir, data_dir, committee=str(gen / "committee.jsonl"),
                               paper_feedback=None, paper_rationale=None, max_steps=2, max_length=256)
    evaluate = ["eval", "--task", "svamp", "--engine", "hf", "--limit", "3", "--max-new-tokens", "4"]
    assert run(capsys, *evaluate, "--model", str(tiny_model_dir), "--out", str(tmp_path / "before"))[0] == 0
    code, _, err = run(capsys, "train", *cli_args(config), "--out", str(tmp_path / "train"))
    assert code == 0, err
    assert [r["step"] for r in read_jsonl(tmp_path / "train" / "log.jsonl")] == [1, 2]
    final = tmp_path / "train" / "final"
    assert (final / "model.safetensors").exists() and "committee:" in (tmp_path / "train" / "train.yaml").read_text()
    assert run(capsys, *evaluate, "--model", str(final), "--out", str(tmp_path / "after"))[0] == 0

    code, stdout, _ = run(capsys, "report", "--gen-dir", str(gen), "--train-dir", str(tmp_path / "train"),
                          "--before", str(tmp_path / "before" / "svamp-test"),
                          "--after", str(tmp_path / "after" / "svamp-test"), "--out", str(tmp_path / "report"))
    assert code == 0 and "report.md" in stdout
    page = (tmp_path / "report" / "report.md").read_text()
    assert f"| before: `{tiny_model_dir}` |" in page and f"| after: `{final}` |" in page
    assert "2 optimizer steps" in page and "| gpt | 387 |" in page and "paired bootstrap over 3 questions" in page
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {"accuracy.png", "reviews.png", "loss.png"}
    code, _, err = run(capsys, "report", "--gen-dir", str(gen), "--train-dir", str(tmp_path / "nope"),
                       "--out", str(tmp_path / "report"))
    assert code == 2 and "train_dir" in err and "no such folder" in err and len(err.strip().splitlines()) == 1


def test_teachers_serve_answers_a_committee_run_until_sigterm(tmp_path, data_dir, capsys):
    """`fair teachers serve` in its own process, as a user starts it; `fair committee` talks to it; SIGTERM stops
    it with its summary, which counts what the committee sent and the request log recorded."""
    mistakes, log = import_seed_mistakes(tmp_path, data_dir, count=2), tmp_path / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "teachers", "serve", "--port", "0", "--log", str(log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=os.environ | {"FAIR_DATA_DIR": str(data_dir)})
    try:
        line = server.stdout.readline()  # printed once it listens
        url = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line).group(1)
        code, _, err = run(capsys, "committee", "--task", "svamp", "--teachers", "offline", "--base-url", url,
                           "--mistakes", str(mistakes), "--out", str(tmp_path / "committee.jsonl"), "--no-progress",
                           "--filter", "review")
        assert code == 0, err
        server.send_signal(signal.SIGTERM)
        summary, _ = server.communicate(timeout=30)
    finally:
        server.kill()
    assert_complete(list(read_jsonl(tmp_path / "committee.jsonl")), 2)
    requests = len(log.read_bytes().splitlines())
    # 3 feedbacks, 3 rationales, 6 reviews a mistake: sent, or read back from the cache when two peers' identical
    # rationales make one review prompt twice (which of the two depends on timing)
    stats = orjson.loads((tmp_path / "committee_stats.json").read_bytes())["teachers"].values()
    assert server.returncode == 0 and requests + sum(t["cache_hits"] for t in stats) == 2 * 12
    assert f"offline committee: {requests} completed" in summary


def test_every_entry_point_ends_alike(capsys):
    """main_guard (fair/errors.py), the one tail of `fair`, `fair train`, the simulator, the demo, the experiment
    and `python -m eval.regrade`: one line and a status per kind of end; a bug keeps its traceback."""
    import errno

    from fair.errors import FairError, main_guard

    def raising(e: BaseException):
        def work():
            raise e
        return work

    assert main_guard("p", lambda: None) == 0 and main_guard("p", lambda: 3) == 3
    assert main_guard("p", raising(FairError("bad x"))) == 2
    assert capsys.readouterr().err == "p: error: bad x\n"
    assert main_guard("p", raising(KeyboardInterrupt())) == 130
    assert "p: interrupted; finished work is saved" in capsys.readouterr().err
    assert main_guard("p", raising(OSError(errno.ENOSPC, "No space left on device"))) == 1
    assert "the disk is full" in capsys.readouterr().err
    with pytest.raises(OSError):
        main_guard("p", raising(OSError(errno.EACCES, "Permission denied")))
