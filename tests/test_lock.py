"""One run per output folder: the lock itself (pid in the message, released by SIGKILL) and every stage that
takes it (mine, merge, committee, train, eval) failing at once, before it reads or writes anything."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fair.config import make_config
from fair.errors import FairError
from fair.lock import folder_lock

HOLD = "import sys, time; from fair.lock import folder_lock\nwith folder_lock(sys.argv[1], 'committee'):\n" \
       "    print('held', flush=True); time.sleep(60)"


def test_a_second_holder_fails_at_once_naming_the_first(tmp_path):
    with folder_lock(tmp_path, "mine"):
        with pytest.raises(FairError, match=rf"in use by another `fair mine` run \(pid {os.getpid()},"), \
                folder_lock(tmp_path, "mine"):
            pass
        with folder_lock(tmp_path, "committee"):  # stages lock apart: mine may extend what committee reads
            pass
    with folder_lock(tmp_path, "mine"):  # released at the end of the block
        pass
    assert (tmp_path / ".fair-mine.lock").read_text() == ""  # no pid of a finished run is left behind


def test_another_process_is_named_and_its_sigkill_releases_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FairError, match=rf"pid {holder.pid},"), folder_lock(tmp_path, "committee"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(tmp_path, "committee"):  # the dead run left its pid in the file, but no lock
        pass


# ----------------------------------------------------------------------------------------------------------
# Every stage takes its lock before anything else


def run_mine(tmp_path, data_dir, engine):
    from gen.mine import MineConfig, mine

    return mine(make_config(MineConfig, {"task": "svamp", "limit": 4, "out": str(tmp_path)}, "test"), engine)


def run_merge(tmp_path, data_dir, engine):
    from gen.merge import merge
    from gen.mine import MineConfig

    return merge(make_config(MineConfig, {"task": "svamp", "limit": 4, "out": str(tmp_path)}, "test"))


def run_committee(tmp_path, data_dir, engine):
    from gen.committee.run import CommitteeConfig
    from gen.committee.run import run_committee as run

    config = CommitteeConfig(task="svamp", mistakes=str(tmp_path / "mistakes.jsonl"),
                             out=str(tmp_path / "committee.jsonl"), progress=False)
    return asyncio.run(run(config, []))


def run_eval(tmp_path, data_dir, engine):
    from eval.evaluate import EvalConfig, evaluate

    return evaluate(make_config(EvalConfig, {"task": ["svamp"], "limit": 4, "out": str(tmp_path.parent)}, "test"),
                    engine)


def run_train(tmp_path, data_dir, engine):
    from train.train import TrainConfig, train

    return train(make_config(TrainConfig, {"task": "svamp", "committee": str(tmp_path / "committee.jsonl"),
                                           "out": str(tmp_path)}, "test"))


@pytest.mark.parametrize(("stage", "run", "folder"), [
    ("mine", run_mine, "run"), ("mine", run_merge, "run"), ("committee", run_committee, "run"),
    ("eval", run_eval, "svamp-test"), ("train", run_train, "run"),
])
def test_each_stage_refuses_a_held_folder_before_touching_it(tmp_path, data_dir, fake_engine_cls, stage, run,
                                                             folder):
    out = tmp_path / folder
    engine = fake_engine_cls(lambda prompt: "The answer is 1.")
    with folder_lock(out, stage):
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(FairError, match=rf"{out} is in use by another `fair {stage}` run \(pid {os.getpid()},"):
            run(out, data_dir, engine)
        assert sorted(p.name for p in out.iterdir()) == before and engine.calls == 0


def test_merge_refuses_while_a_shard_is_being_mined(tmp_path, data_dir):
    from gen.merge import merge
    from gen.mine import MineConfig

    for i in range(2):
        (tmp_path / f"shard-{i}-of-2").mkdir()
    with folder_lock(tmp_path / "shard-1-of-2", "mine"), \
            pytest.raises(FairError, match=r"shard-1-of-2 is in use by another `fair mine` run"):
        merge(make_config(MineConfig, {"task": "svamp", "out": str(tmp_path)}, "test"))
    assert not Path(tmp_path / "answers.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------
# Readers drop an id written twice (a file from before the lock, or joined by hand)


def test_readers_count_an_id_written_twice_once(tmp_path, data_dir):
    from cli.pipeline import GenConfig, export
    from eval.report import build_report
    from fair.jsonl import append_jsonl, read_jsonl
    from gen.committee.report import review_outcomes
    from gen.committee.run import CommitteeConfig, count_mistakes
    from gen.committee.run import run_committee as run
    from gen.teachers.config import load_committee
    from simulator.server import OfflineServer
    from tests.conftest import import_seed_mistakes

    once = import_seed_mistakes(tmp_path / "once", data_dir, count=3)
    twice = tmp_path / "mistakes.jsonl"
    append_jsonl(twice, (r for r in read_jsonl(once) for _ in range(2)))  # a, a, b, b, c, c
    config = CommitteeConfig(task="svamp", mistakes=str(twice), out=str(tmp_path / "committee.jsonl"), limit=3,
                             progress=False)
    assert count_mistakes(config) == 3 and count_mistakes(dataclasses.replace(config, limit=None)) == 3  # not 6
    with OfflineServer(port=0) as server:
        asyncio.run(run(config, load_committee("offline", server.url)))
    records = list(read_jsonl(config.out_path))
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in read_jsonl(once))  # 3 distinct, once each

    def outputs() -> tuple:
        export(GenConfig(task="svamp"), config)  # the paper's two files, beside committee.jsonl
        paper = sorted((p.name, p.read_bytes()) for p in tmp_path.glob("*_round0.json"))
        report = build_report(tmp_path, None, None, None, tmp_path / "report").read_text()
        return review_outcomes(config.out_path), paper, report

    single = outputs()
    append_jsonl(config.out_path, records)  # as two unlocked committee runs would have written them
    assert outputs() == single
