"""`fair loop`: rounds of gen -> train -> eval, each from the round before's trained student.

The fast tests fake the stages at the loop's seam (cli/loop.py's Stages): each fake writes what its stage would
(the files the summary reads) and records its call, so the tests see which stage ran, in which folder, from which
student. The slow test runs the real stages on the tiny model and the offline committee.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from cli.loop import LoopConfig, Stages, run_loop
from fair.config import CONFIGS_DIR, save_config
from fair.errors import FairError
from fair.jsonl import append_jsonl, read_jsonl, write_json


class Fakes:
    """The four stages, faked: `calls` lists (stage, folder, model) in order; `mistakes[r]` is how many
    mistakes round r's student makes (default 3); `fail` names a (stage, round) that raises once, as a kill."""

    def __init__(self, mistakes: dict[int, int] | None = None, fail: tuple[str, int] | None = None):
        self.calls: list[tuple[str, str, str]] = []
        self.mistakes = mistakes or {}
        self.fail = fail

    def stages(self) -> Stages:
        return Stages(generate=self.generate, train=self.train, evaluate=self.evaluate, report=self.report,
                      release=lambda: None)

    def maybe_fail(self, stage: str, folder: Path) -> None:
        if self.fail == (stage, int(folder.name.removeprefix("round"))):
            self.fail = None
            raise KeyboardInterrupt  # a kill in the middle of the stage

    def generate(self, config) -> None:
        folder = Path(config.out)
        self.calls.append(("gen", folder.name, config.student))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": config.student}))
        n = self.mistakes.get(config.paper_round, 3)
        write_json(folder / "stats.json", {"total": 10, "correct": 10 - n, "mistakes": n, "accuracy": (10 - n) / 10})
        self.maybe_fail("gen", folder)
        append_jsonl(folder / "committee.jsonl", ({
            "id": f"q{i}", "filter": config.filter, "feedback": {"a": {"text": "f"}, "b": {"text": "f"}},
            "rationales": {"a": {"text": "r", "accepted": True, "reviews": {"b": {"score": 4}}},
                           "b": {"text": "r", "accepted": False, "reviews": {"a": {"score": 2}}}},
            "usage": {"a": {"cost": 0.01}, "b": {"cost": 0.02}}} for i in range(n)))
        spent = 0.03 * n + (orjson.loads(Path(config.cache).with_name("spent").read_bytes())
                            if Path(config.cache).with_name("spent").exists() else 0.0)
        Path(config.cache).with_name("spent").write_bytes(orjson.dumps(spent))
        write_json(folder / "committee_stats.json", {"budget": {"spent_usd": spent}})

    def train(self, config) -> Path:
        out = Path(config.out)
        self.calls.append(("train", out.parent.name, config.student))
        save_config(config, out / "train.yaml")  # as training saves its settings, checked when it resumes
        assert config.committee == str(out.parent / "committee.jsonl")
        self.maybe_fail("train", out.parent)
        (out / "final").mkdir(parents=True, exist_ok=True)
        (out / "final" / "config.json").write_text("{}")
        write_json(out / "train_summary.json", {"examples": 2 * len(list(read_jsonl(config.committee_path))),
                                                "steps": 5})
        return out / "final"

    def evaluate(self, config) -> list[dict]:
        out = Path(config.out)
        self.calls.append(("eval", out.parent.name if out.name == "eval" else out.name, config.model))
        folder = out / "svamp-test"
        folder.mkdir(parents=True, exist_ok=True)
        right = 2 + sum(1 for c in self.calls if c[0] == "eval")  # each evaluation one more right than the last
        append_jsonl(folder / "predictions.jsonl", ({"id": f"t{i}", "correct": i < right} for i in range(10)))
        write_json(folder / "summary.json", {"model": config.model, "correct": right, "total": 10,
                                             "accuracy": right / 10, "unparseable": 0})
        return [{}]

    def report(self, gen_dir, train_dir, before, after, out, threshold, task) -> None:
        self.calls.append(("report", Path(gen_dir).name, str(before)))
        self.report_task = task  # as the loop was given it: a task file's path finds it from its records


def loop_config(tmp_path: Path, **changes) -> LoopConfig:
    return LoopConfig(**{"teachers": "offline", "limit": 10, "out": str(tmp_path / "loop"), "dtype": "float32"}
                      | changes)


def test_each_round_starts_from_the_round_befores_trained_student(tmp_path):
    fakes = Fakes()
    config = loop_config(tmp_path, rounds=3)
    summary = run_loop(config, fakes.stages())
    out = tmp_path / "loop"
    final = [str(out / f"round{r}" / "train" / "final") for r in range(3)]
    assert fakes.calls == [
        ("eval", "eval-start", "smollm2-135m"),
        ("gen", "round0", "smollm2-135m"), ("train", "round0", "smollm2-135m"), ("eval", "round0", final[0]),
        ("report", "round0", str(out / "eval-start" / "svamp-test")),
        ("gen", "round1", final[0]), ("train", "round1", final[0]), ("eval", "round1", final[1]),
        ("report", "round1", str(out / "round0" / "eval" / "svamp-test")),
        ("gen", "round2", final[1]), ("train", "round2", final[1]), ("eval", "round2", final[2]),
        ("report", "round2", str(out / "round1" / "eval" / "svamp-test")),
    ]
    assert fakes.report_task == "svamp"
    assert [r["student"] for r in summary["rounds"]] == ["smollm2-135m", final[0], final[1]]
    assert [r["test"]["correct"] for r in summary["rounds"]] == [4, 5, 6] and summary["start"]["correct"] == 3
    assert summary["rounds"][1] | {"test": None, "change": None} == {
        "round": 1, "student": final[0], "mined": 10, "train_accuracy": 0.7, "mistakes": 3, "records": 3,
        "replies": 3 * 6, "accepted_rationales": 3, "data_cost_usd": 0.09, "spent_usd": pytest.approx(0.18),
        "paid_usd": pytest.approx(0.09), "examples_trained": 6, "steps": 5, "test": None, "change": None}
    assert "+10.0 points" in summary["rounds"][0]["change"]  # 4/10 after against 3/10 at the start, paired
    assert orjson.loads((out / "loop.json").read_bytes()) == orjson.loads(orjson.dumps(summary))
    page = (out / "loop.md").read_text()
    assert "| start (untrained) |" in page and "30.0% [" in page
    assert "| 2 | 10 | 70.0% | 3 | 18 | 3 | 0.0900 | 0.0900 | 6 | 60.0% [" in page
    assert "Paid in all: $0.2700" in page and "- round 2 against the row before: +10.0 points" in page


def test_the_round_configs_share_one_cache_and_name_the_papers_files_by_round(tmp_path):
    config = loop_config(tmp_path, train={"epochs": 3})
    gen = config.gen_config(2, "some/final")
    assert (gen.student, gen.out, gen.paper_student, gen.paper_round) == (
        "some/final", str(tmp_path / "loop" / "round2"), "smollm2-135m", 2)
    assert gen.cache == str(tmp_path / "loop" / "requests.sqlite") == config.gen_config(0, "x").cache
    assert gen.committee_config().cache_path == tmp_path / "loop" / "requests.sqlite"
    assert gen.mine_config().paper_stem == "smollm2-135m_svamp"
    train = config.train_settings(2, "some/final")
    assert (train.student, train.out, train.epochs, train.dtype, train.lora) == (
        "some/final", str(tmp_path / "loop" / "round2" / "train"), 3, "float32", True)  # demo.yaml's LoRA
    assert train.committee_path == tmp_path / "loop" / "round2" / "committee.jsonl"


def test_each_rounds_evaluation_goes_to_the_trackers_its_training_reported_to(tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr("cli.loop.report_evaluation", lambda config, rows: sent.append((config.out, config.report_to,
                                                                                       rows)))
    run_loop(loop_config(tmp_path, train={"report_to": ["tensorboard"]}), Fakes().stages())
    assert sent == [(str(tmp_path / "loop" / f"round{r}" / "train"), ("tensorboard",), [{}]) for r in (0, 1)]


def test_a_rerun_skips_every_finished_stage(tmp_path, capsys):
    run_loop(loop_config(tmp_path), Fakes().stages())
    again = Fakes()
    summary = run_loop(loop_config(tmp_path), again.stages())
    assert again.calls == [] and len(summary["rounds"]) == 2
    assert "--- round1 train: done" in capsys.readouterr().out


@pytest.mark.parametrize("stage", ["gen", "train"])
def test_a_round_killed_in_a_stage_resumes_there_and_round_0_is_not_redone(tmp_path, stage):
    """Killed in round 1's committee (its gen stage) or its training: the rerun of the same command starts that
    stage again (the stage itself skips what it finished) and goes on; nothing of round 0 runs again."""
    fakes = Fakes(fail=(stage, 1))
    with pytest.raises(KeyboardInterrupt):
        run_loop(loop_config(tmp_path), fakes.stages())
    assert fakes.calls[-1][:2] == (stage, "round1")
    first = Fakes()
    summary = run_loop(loop_config(tmp_path), first.stages())
    final0 = str(tmp_path / "loop" / "round0" / "train" / "final")
    todo = ["gen", "train", "eval", "report"][["gen", "train"].index(stage):]
    assert [c[:2] for c in first.calls] == [(s, "round1") for s in todo]
    assert all(c[2] == final0 for c in first.calls if c[0] in ("gen", "train"))
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and summary["rounds"][1]["test"]


def test_more_rounds_on_a_rerun_go_on_from_the_last(tmp_path):
    run_loop(loop_config(tmp_path, rounds=1), Fakes().stages())
    more = Fakes()
    summary = run_loop(loop_config(tmp_path, rounds=2, window=8), more.stages())  # window: how, not what
    assert [c[:2] for c in more.calls] == [("gen", "round1"), ("train", "round1"), ("eval", "round1"),
                                           ("report", "round1")]
    assert len(summary["rounds"]) == 2


def test_a_rerun_with_other_settings_is_refused_by_name(tmp_path):
    run_loop(loop_config(tmp_path, rounds=1), Fakes().stages())
    fakes = Fakes()
    with pytest.raises(FairError, match=r"other settings \(limit, epochs 1 -> 2 changed\)"):
        run_loop(loop_config(tmp_path, rounds=1, limit=20, train={"epochs": 2}), fakes.stages())
    assert fakes.calls == []


def test_a_training_file_edited_between_runs_is_refused_by_its_setting(tmp_path, monkeypatch):
    """--train-config names a file: the loop's settings hold its name, not what it says; rounds trained under
    one content and rounds under another would be one loop in loop.md."""
    settings = tmp_path / "mine.yaml"
    settings.write_text((CONFIGS_DIR / "train" / "demo.yaml").read_text())
    run_loop(loop_config(tmp_path, rounds=1, train_config=str(settings)), Fakes().stages())
    settings.write_text(settings.read_text().replace("epochs: 1", "epochs: 3"))
    fakes = Fakes()
    with pytest.raises(FairError, match=r"loop holds a loop run with other settings \(epochs 1 -> 3 changed\)"):
        run_loop(loop_config(tmp_path, rounds=2, train_config=str(settings)), fakes.stages())
    assert fakes.calls == []
    monkeypatch.setattr("cli.loop.report_evaluation", lambda config, rows: None)  # the fake evaluation's rows
    settings.write_text(settings.read_text().replace("micro_batch_size: 1", "micro_batch_size: 2"))  # how, not what
    settings.write_text(settings.read_text().replace("epochs: 3", "epochs: 1"))
    run_loop(loop_config(tmp_path, rounds=2, train_config=str(settings), train={"report_to": ["tensorboard"]}),
             fakes.stages())  # a tracker added to a loop under way: as `fair train` takes one on a resume
    assert [c[:2] for c in fakes.calls][0] == ("gen", "round1")


def test_a_student_without_mistakes_ends_the_loop(tmp_path):
    fakes = Fakes(mistakes={1: 0})
    summary = run_loop(loop_config(tmp_path, rounds=3), fakes.stages())
    assert [c[:2] for c in fakes.calls][-2:] == [("report", "round0"), ("gen", "round1")]
    assert "round 1's student made no mistake" in summary["stopped"]
    assert "The loop stopped early: round 1's" in (tmp_path / "loop" / "loop.md").read_text()


def test_a_round_with_less_than_a_batch_to_train_on_ends_the_loop_and_a_rerun_ends_there_again(tmp_path):
    """Round 1's student makes 2 mistakes: too few examples for one batch. Training refuses them, and that must
    end the loop as "nothing to teach" does, not fail every rerun (no setting of the loop's folder may change)."""
    from train.train import TooFewExamples

    class Few(Fakes):
        def train(self, config) -> Path:
            if len(list(read_jsonl(config.committee_path))) < 3:
                self.calls.append(("train", Path(config.out).parent.name, config.student))
                raise TooFewExamples("4 training examples is fewer than one batch of 8")
            return super().train(config)

    for _ in range(2):
        fakes = Few(mistakes={1: 2})
        summary = run_loop(loop_config(tmp_path, rounds=3), fakes.stages())
        assert fakes.calls[-1][:2] == ("train", "round1") and len(summary["rounds"]) == 2
        assert summary["stopped"] == ("round 1's training: 4 training examples is fewer than one batch of 8: "
                                      "too little is left to teach")
    assert "The loop stopped early: round 1's training" in (tmp_path / "loop" / "loop.md").read_text()


def test_missing_api_keys_are_named_before_the_first_evaluation(tmp_path, monkeypatch):
    for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    fakes = Fakes()
    with pytest.raises(FairError, match="needs the environment variable.*OPENAI_API_KEY"):
        run_loop(loop_config(tmp_path, teachers="default"), fakes.stages())
    assert fakes.calls == [] and not (tmp_path / "loop").exists()


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(FairError, match="rounds must be at least 1"):
        loop_config(tmp_path, rounds=0)
    with pytest.raises(FairError, match="train: student, task are the loop's"):
        loop_config(tmp_path, train={"task": "gsm8k", "student": "x"})
    with pytest.raises(FairError, match="unknown setting 'epoch'"):
        loop_config(tmp_path, train={"epoch": 2})
    with pytest.raises(FairError, match="eval_split: task 'svamp' has no split 'dev'"):
        loop_config(tmp_path, eval_split="dev")
    with pytest.raises(FairError, match="window must be at least 1"):  # a stage's own rule, checked up front
        loop_config(tmp_path, window=0)


def test_the_command_line_says_a_bad_setting_in_one_line(tmp_path, capsys):
    from cli.main import main

    assert main(["loop", "--rounds", "0", "--out", str(tmp_path / "loop")]) == 2
    err = capsys.readouterr().err
    assert "fair loop: error:" in err and "rounds must be at least 1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "loop").exists()


@pytest.mark.slow
def test_two_rounds_on_the_tiny_model_and_the_offline_committee(tmp_path, data_dir, tiny_model_dir, monkeypatch):
    """`make loop`, small: the real stages, two rounds; round 1 mines round 0's trained (LoRA-merged) model."""
    monkeypatch.chdir(tmp_path)
    from cli.main import main
    from fair.config import REPO_ROOT

    args = ["loop", "--task", "svamp", "--student", str(tiny_model_dir), "--engine", "hf", "--teachers", "offline",
            "--limit", "4", "--max-new-tokens", "4", "--offline-latency-ms", "0", "5", "--eval-limit", "3",
            "--dtype", "float32", "--rounds", "2", "--out", "loop",
            "--train-config", str(REPO_ROOT / "configs" / "train" / "demo.yaml"),
            "--train", "{batch_size: 4, micro_batch_size: 2, max_steps: 2, max_length: 256}"]
    assert main(args) == 0
    out = tmp_path / "loop"
    summary = orjson.loads((out / "loop.json").read_bytes())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["student"] == str(Path("loop") / "round0" / "train" / "final")  # as --out says
    for r in (0, 1):
        assert summary["rounds"][r]["records"] > 0 and summary["rounds"][r]["test"]["total"] == 3
        for kind in ("false", "feedback", "rationale"):
            assert (out / f"round{r}" / f"{tiny_model_dir.name}_svamp_{kind}_round{r}.json").exists()
        assert (out / f"round{r}" / "report.md").exists()
    assert (out / "requests.sqlite").exists() and not (out / "round0" / "requests.sqlite").exists()
    assert main(args) == 0  # a rerun finds every stage done
