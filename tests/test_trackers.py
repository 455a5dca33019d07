"""fair train --report-to: every step's numbers and the end's reach TensorBoard, W&B, MLflow and trackio, each
in its offline mode and read back from what it wrote; a resume and the evaluation after training continue the
same runs; a tracker not installed is one line before anything is trained."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from fair.errors import FairError
from fair.jsonl import read_jsonl
from tests.conftest import tiny_train_config

ALL = ("tensorboard", "wandb", "mlflow", "trackio")


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> Path:
    """Every tracker kept on disk in a folder of this module's. trackio reads TRACKIO_DIR when first imported,
    so it is set before that, for the whole module (this file is the suite's only user of trackio)."""
    root = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        env.setenv("MLFLOW_TRACKING_URI", f"file:{root / 'mlruns'}")
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3's file store: no database to migrate in a test
        env.setenv("TRACKIO_DIR", str(root / "trackio"))
        import trackio.utils

        if root / "trackio" != trackio.utils.TRACKIO_DIR:
            pytest.skip("trackio was imported before this module set TRACKIO_DIR")
        yield root


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_every_tracker_gets_each_step_the_end_and_the_evaluation(offline, tmp_path, tiny_model_dir, data_dir, capsys):
    from mlflow.tracking import MlflowClient
    from trackio.sqlite_storage import SQLiteStorage

    from train.trackers import PROJECT, report_evaluation
    from train.train import train

    config = tiny_train_config(tmp_path, tiny_model_dir, data_dir, max_steps=2, report_to="tensorboard,wandb,mlflow,trackio")
    assert config.report_to == ALL
    train(config)
    ids = json.loads((Path(config.out) / "trackers.json").read_text())
    train(dataclasses.replace(config, max_steps=3))  # the same command, one step more: it resumes at step 2
    assert json.loads((Path(config.out) / "trackers.json").read_text()) == ids  # the same runs, continued
    # As if killed after step 3 was reported but before its checkpoint landed: the rerun takes step 3 again,
    # and every tracker still holds one value a step.
    shutil.rmtree(Path(config.out) / "checkpoints" / "step-3")
    train(dataclasses.replace(config, max_steps=3))
    report_evaluation(dataclasses.replace(config, max_steps=3),
                      [{"task": "svamp", "split": "test", "accuracy": 0.25, "total": 4}])

    printed = capsys.readouterr()
    assert "step 3/3 loss " in printed.out  # the console line stays, and the progress line (stderr: not a terminal)
    assert re.search(r"^train: 3/3 step \(100%\), .* elapsed, ETA 00:00, loss=\d", printed.err, re.M)
    log = list(read_jsonl(Path(config.out) / "log.jsonl"))
    losses = [(r["step"], r["loss"]) for r in log]
    assert [s for s, _ in losses] == [1, 2, 3] and all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in log)

    board = Path(config.out) / "tensorboard"
    assert scalars(board, "train/loss") == [(s, pytest.approx(v, rel=1e-6)) for s, v in losses]
    for tag in ("train/feedback_loss", "train/rationale_loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                "train/target_tokens_per_s"):
        assert [s for s, _ in scalars(board, tag)] == [1, 2, 3], tag
    assert [s for s, _ in scalars(board, "train/seconds")] == [2, 3]  # each run's end
    assert scalars(board, "eval/svamp-test/accuracy") == [(3, 0.25)]

    history = MlflowClient().get_metric_history(ids["mlflow"], "train/loss")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v)) for s, v in losses]
    assert MlflowClient().get_run(ids["mlflow"]).data.params["alpha"] == "0.5"
    assert MlflowClient().get_metric_history(ids["mlflow"], "eval/svamp-test/accuracy")[0].value == 0.25

    rows = SQLiteStorage.get_logs(PROJECT, ids["trackio"])
    assert [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r] == [
        (s, pytest.approx(v)) for s, v in losses]
    assert [r["eval/svamp-test/accuracy"] for r in rows if "eval/svamp-test/accuracy" in r] == [0.25]

    # W&B's offline runs are binary records (synced later by `wandb sync`); its metric names are in them as written
    # Sessions started within one second share a timestamp; W&B then names the later folders <id>-1, <id>-2
    runs = sorted((Path(config.out) / "wandb").glob(f"offline-run-*-{ids['wandb']}*/run-{ids['wandb']}.wandb"))
    assert len(runs) == 4  # the training, two resumes and the evaluation: one W&B run (one id), four sessions
    written = b"".join(r.read_bytes() for r in runs)
    assert all(name.encode() in written for name in ("train/loss", "train/grad_norm", "eval/svamp-test/accuracy"))


def test_tracker_names_are_a_comma_list_or_a_list_and_unknown_ones_are_refused():
    from train.trackers import tracker_names

    assert tracker_names("tensorboard, mlflow") == ("tensorboard", "mlflow")
    assert tracker_names(["wandb", "tensorboard,wandb"]) == ("wandb", "tensorboard")
    assert tracker_names(()) == ()
    with pytest.raises(FairError, match=r"unknown report_to 'tensorbord' \(choose from tensorboard, wandb"):
        tracker_names("tensorbord")


def test_a_tracker_not_installed_is_one_line_naming_the_extra(monkeypatch):
    from train.train import TrainConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(FairError, match=r"^report_to wandb needs the wandb package, which is not installed: "
                                        r"pip install -e \.\[track\]$"):
        TrainConfig(report_to=("tensorboard", "wandb"))


def test_a_tracker_that_cannot_open_is_one_line_without_its_secrets(tmp_path, monkeypatch):
    """A tracker's own error may quote its server's address as given, credentials and all (mlflow's does:
    `API request to http://user:token@host/... failed`), or a key; the one line keeps neither, nor its cause."""
    from train import trackers

    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789")

    def refused(error: Exception):
        def open_run(*args):
            raise error
        return open_run

    monkeypatch.setitem(trackers.TRACKERS, "mlflow", refused(RuntimeError(
        "API request to https://alice:s3cret-pass@mlflow.example.com/api/2.0 failed\nwith wandb-key-0123456789")))
    with pytest.raises(FairError) as info:
        trackers.open_trackers(("mlflow",), tmp_path, {}, 1)
    assert str(info.value) == ("report_to mlflow: could not open its run: RuntimeError: API request to "
                               "https://***@mlflow.example.com/api/2.0 failed")
    assert info.value.__cause__ is None  # a traceback printed from it would show them again
    monkeypatch.setitem(trackers.TRACKERS, "mlflow", refused(ValueError("bad key wandb-key-0123456789")))
    with pytest.raises(FairError, match=r"ValueError: bad key \*\*\*$"):
        trackers.open_trackers(("mlflow",), tmp_path, {}, 1)


def test_the_command_line_takes_a_comma_list_or_the_flag_repeated():
    from fair.config import build_config, config_parser
    from train.train import TrainConfig

    def report_to(*argv: str) -> tuple[str, ...]:
        return build_config(TrainConfig, config_parser(TrainConfig, "fair train", None).parse_args(argv)).report_to

    assert report_to("--report-to", "tensorboard,wandb") == ("tensorboard", "wandb")
    assert report_to("--report-to", "tensorboard", "--report-to", "mlflow") == ("tensorboard", "mlflow")
    assert report_to("report_to=trackio") == ("trackio",)
    assert report_to() == ()


def test_only_rank_zero_reports(tmp_path, tiny_model_dir, data_dir):
    """Under DeepSpeed every rank runs the loop; the others neither open a tracker nor write a line."""
    from train.distributed import Dist
    from train.trackers import RunLog

    config = tiny_train_config(tmp_path, tiny_model_dir, data_dir, report_to="tensorboard")
    record = {"step": 1, "loss": 1.0, "lr": 1e-3, "target_tokens_per_s": 10.0}
    with RunLog(config, 0, 4, Dist(rank=1)) as log:
        log.step(record)
        log.end({"steps": 4, "seconds_this_run": 1.0, "examples": 8})
    assert not Path(config.out).exists()


def test_naming_the_trackers_imports_none_of_them():
    """Checked in a fresh interpreter (this one may have imported them): TrainConfig's check of the names finds
    the packages without importing them; only a run that reports imports its trackers."""
    import subprocess
    import sys

    code = ("import sys; from train.trackers import tracker_names; tracker_names('tensorboard,wandb,mlflow,trackio'); "
            "print(sorted({'tensorboard', 'wandb', 'mlflow', 'trackio'} & set(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1])
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
