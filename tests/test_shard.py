"""Sharded mining: shards partition the split, resume on their own, and `fair merge` rebuilds exactly what one
unsharded run writes, or refuses in one line (missing shard, missing or duplicated id, other settings).
The launchers run with a fake `fair` that records what it was asked to do."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

from cli.main import main
from fair.config import make_config
from fair.errors import FairError
from fair.jsonl import read_jsonl
from fair.tasks import get_task
from gen.committee.run import CommitteeConfig
from gen.merge import merge
from gen.mine import MineConfig, mine, shard_examples
from tests.conftest import ROOT, svamp_reply


def config(out: Path, **overrides) -> MineConfig:
    values = {"task": "svamp", "limit": 24, "chunk_size": 5, "out": str(out)} | overrides
    return make_config(MineConfig, values, source="test")


def mine_shards(out: Path, count: int, engine_cls, **overrides) -> None:
    for i in range(count):
        mine(config(out, shard=f"{i}/{count}", **overrides), engine_cls(svamp_reply()))


def test_shards_partition_the_split_and_ignore_the_limit(data_dir):
    examples = get_task("svamp").load("train")
    for count in (1, 3, 4, 7):
        shards = [list(shard_examples(examples[:24], (i, count))) for i in range(count)]
        ids = [e.id for shard in shards for e in shard]
        assert sorted(ids) == sorted(e.id for e in examples[:24]) and len(ids) == len(set(ids))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        # A larger --limit only extends each shard: what a shard already answered stays its own.
        for i in range(count):
            smaller = list(shard_examples(examples[:10], (i, count)))
            assert smaller == list(shard_examples(examples[:24], (i, count)))[: len(smaller)]


@pytest.mark.parametrize("shard", ["4/4", "1", "a/3", "-1/3", "1/0"])
def test_a_bad_shard_is_a_one_line_error(tmp_path, shard):
    with pytest.raises(FairError, match="shard must be 'i/N' with 0 <= i < N"):
        config(tmp_path, shard=shard)


def test_shard_folders_sit_in_the_run_folder_the_committee_reads():
    run = MineConfig(task="svamp")
    assert MineConfig(task="svamp", shard="1/4").out_dir == run.run_dir / "shard-1-of-4"
    assert CommitteeConfig(task="svamp").mistakes_path == run.out_dir / "mistakes.jsonl"


def test_merged_shards_equal_an_unsharded_run(tmp_path, data_dir, fake_engine_cls):
    single = mine(config(tmp_path / "single"), fake_engine_cls(svamp_reply()))
    mine_shards(tmp_path / "sharded", 3, fake_engine_cls)
    # A kill between mine's two writes leaves a mistake without its line in answers.jsonl: still answered.
    shard = tmp_path / "sharded" / "shard-1-of-3"
    mistake = next(read_jsonl(shard / "mistakes.jsonl"))["id"]
    kept = [line for line in (shard / "answers.jsonl").read_bytes().splitlines(keepends=True)
            if orjson.loads(line)["id"] != mistake]
    (shard / "answers.jsonl").write_bytes(b"".join(kept))
    merged = merge(config(tmp_path / "sharded"))
    for name in ("answers.jsonl", "mistakes.jsonl"):  # same records, same split order, byte for byte
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    same = [k for k in single if k != "this_run"]
    assert {k: merged[k] for k in same} == {k: single[k] for k in same}
    assert merged["shards"] == 3 and 0 < merged["mistakes"] < 24
    assert merged["this_run"]["generated_tokens"] == 5 * 24  # the fake engine's 5 tokens per answer
    # The merged folder is a finished unsharded run: mining it again asks the student nothing.
    again = fake_engine_cls(svamp_reply())
    assert mine(config(tmp_path / "sharded"), again)["total"] == 24 and again.calls == 0


def test_each_shard_resumes_on_its_own(tmp_path, data_dir, fake_engine_cls):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # shard 1 of 2 (12 rows, chunks of 5) is killed after one chunk
        mine(config(out, shard="1/2"), fake_engine_cls(svamp_reply(), fail_after_calls=1))
    mine(config(out, shard="0/2"), fake_engine_cls(svamp_reply()))
    resumed = fake_engine_cls(svamp_reply())
    mine(config(out, shard="1/2"), resumed)
    assert len(resumed.prompts_seen) == 7  # only shard 1's unfinished rows
    for shard in ("0/2", "1/2"):
        again = fake_engine_cls(svamp_reply())
        assert mine(config(out, shard=shard), again)["total"] == 12 and again.calls == 0
    assert merge(config(out))["total"] == 24


def test_merge_finds_a_missing_shard_and_missing_ids(tmp_path, data_dir, fake_engine_cls):
    out = tmp_path / "run"
    mine_shards(out, 3, fake_engine_cls)
    (out / "shard-1-of-3").rename(tmp_path / "elsewhere")
    with pytest.raises(FairError, match=r"missing shard folder\(s\) shard-1-of-3"):
        merge(config(out))
    (tmp_path / "elsewhere").rename(out / "shard-1-of-3")

    answers = out / "shard-2-of-3" / "answers.jsonl"
    lines = answers.read_bytes().splitlines(keepends=True)
    lost = orjson.loads(lines[-1])
    answers.write_bytes(b"".join(lines[:-1]))
    (out / "shard-2-of-3" / "mistakes.jsonl").write_bytes(b"".join(
        line for line in (out / "shard-2-of-3" / "mistakes.jsonl").read_bytes().splitlines(keepends=True)
        if orjson.loads(line)["id"] != lost["id"]))
    with pytest.raises(FairError, match=rf"1 id\(s\) .* no answer .* {lost['id']} \(shard-2-of-3\)"):
        merge(config(out))
    assert not (out / "answers.jsonl").exists() and not list(out.glob("*.merging"))


def test_merge_finds_a_duplicated_id(tmp_path, data_dir, fake_engine_cls):
    out = tmp_path / "run"
    mine_shards(out, 2, fake_engine_cls)
    stray = (out / "shard-0-of-2" / "answers.jsonl").read_bytes().splitlines(keepends=True)[0]
    with (out / "shard-1-of-2" / "answers.jsonl").open("ab") as f:
        f.write(stray)
    with pytest.raises(FairError, match=rf"1 id\(s\) answered by more than one shard, e\.g\. "
                                        rf"{orjson.loads(stray)['id']} \(shard-0-of-2 and shard-1-of-2\)"):
        merge(config(out))


def test_merge_checks_settings_and_never_overwrites_without_force(tmp_path, data_dir, fake_engine_cls):
    out = tmp_path / "run"
    mine_shards(out, 2, fake_engine_cls)
    with pytest.raises(FairError, match=r"shard-0-of-2/config.yaml: made with limit=24, but this merge has "
                                        r"limit=30"):
        merge(config(out, limit=30))
    saved = out / "shard-1-of-2" / "config.yaml"
    saved.write_text(saved.read_text().replace("max_new_tokens: 512", "max_new_tokens: 64"))
    with pytest.raises(FairError, match=r"shard-1-of-2/config.yaml: made with max_new_tokens=64"):
        merge(config(out))
    saved.write_text(saved.read_text().replace("max_new_tokens: 64", "max_new_tokens: 512"))
    definition = out / "shard-1-of-2" / "task_definition.yaml"  # the task's version (a declared task's keys)
    definition.write_text(definition.read_text().replace("version: 1", "version: 0"))
    with pytest.raises(FairError, match=r"shard-1-of-2/task_definition.yaml: mined with another definition of task"):
        merge(config(out))
    definition.write_text(definition.read_text().replace("version: 0", "version: 1"))

    merge(config(out))
    assert (out / "task_definition.yaml").read_text() == definition.read_text()  # the run describes itself
    with pytest.raises(FairError, match="already holds answers.jsonl .* --force"):
        merge(config(out))
    assert merge(config(out), force=True)["total"] == 24


def test_mine_and_merge_through_the_cli(tmp_path, data_dir, tiny_model_dir, capsys):
    flags = ["--task", "svamp", "--model", str(tiny_model_dir), "--engine", "hf", "--limit", "5",
             "--max-new-tokens", "4", "--out", str(tmp_path / "run")]
    assert main(["merge", *flags]) == 2 and "no shard folders" in capsys.readouterr().err
    for shard in ("0/2", "1/2"):
        assert main(["mine", *flags, "--shard", shard]) == 0
    assert main(["merge", *flags]) == 0 and "merged 2 shards" in capsys.readouterr().out
    assert [a["index"] for a in read_jsonl(tmp_path / "run" / "answers.jsonl")] == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------------
# Launchers, with a fake `fair` that logs its GPUs and arguments (and fails when asked to)

FAKE_FAIR = """#!/usr/bin/env bash
echo "$CUDA_VISIBLE_DEVICES|$*" >> "$FAKE_LOG"
[[ " $* " != *" --shard $FAIL_SHARD "* ]]
"""


def run_launcher(tmp_path: Path, script: str, args: list[str], **env: str) -> tuple[int, list[str]]:
    tmp_path.mkdir(exist_ok=True)
    fake = tmp_path / "fair"
    fake.write_text(FAKE_FAIR)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    environ = {**os.environ, "FAIR": str(fake), "FAKE_LOG": str(log), "FAIL_SHARD": "none",
               "CUDA_VISIBLE_DEVICES": "", "LOG_DIR": str(tmp_path / "logs"), **env}
    done = subprocess.run(["bash", str(ROOT / "launch" / script), *args], env=environ, capture_output=True,
                          text=True, timeout=30)
    return done.returncode, sorted(log.read_text().splitlines()) if log.exists() else []


def test_launchers_parse():
    for script in ("mine_gpus.sh", "mine_array.sbatch"):
        assert subprocess.run(["bash", "-n", str(ROOT / "launch" / script)]).returncode == 0


def test_mine_gpus_runs_one_shard_per_gpu_group_then_merges(tmp_path):
    code, calls = run_launcher(tmp_path, "mine_gpus.sh", ["--task", "gsm8k", "limit=8"], GPUS="0,1,2,3,4",
                               TP="2")
    assert code == 0
    mines = [c for c in calls if "|mine " in c]
    assert mines == ["0,1|mine --shard 0/2 --tensor-parallel-size 2 --task gsm8k limit=8",
                     "2,3|mine --shard 1/2 --tensor-parallel-size 2 --task gsm8k limit=8"]
    assert [c.split("|")[1] for c in calls if "|merge " in c] == ["merge --task gsm8k limit=8"]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["mine-shard-0-of-2.log", "mine-shard-1-of-2.log"]


def test_mine_gpus_does_not_merge_after_a_failed_shard(tmp_path):
    code, calls = run_launcher(tmp_path, "mine_gpus.sh", ["--task", "svamp"], GPUS="0,1,2", FAIL_SHARD="1/3")
    assert code == 1
    assert len(calls) == 3 and not any("|merge " in c for c in calls)
    code, calls = run_launcher(tmp_path / "again", "mine_gpus.sh", ["--shard", "0/2"], GPUS="0")
    assert code == 2 and calls == []


def test_array_task_mines_its_shard(tmp_path):
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_GPUS_ON_NODE": "2",
           "SLURM_SUBMIT_DIR": str(tmp_path)}
    code, calls = run_launcher(tmp_path, "mine_array.sbatch", ["--task", "gsm8k"], **env)
    assert code == 0 and calls == ["|mine --shard 5/8 --tensor-parallel-size 2 --task gsm8k"]
    code, calls = run_launcher(tmp_path / "again", "mine_array.sbatch", [], **env, SHARDS="16")
    assert code == 0 and calls == ["|mine --shard 5/16 --tensor-parallel-size 2"]


@pytest.mark.slow
def test_mine_gpus_for_real_on_a_cpu(tmp_path, data_dir, tiny_model_dir):
    """The real `fair`, two shards of a tiny model (CUDA_VISIBLE_DEVICES means nothing on a CPU), then merge."""
    env = {**os.environ, "GPUS": "0,1", "LOG_DIR": str(tmp_path / "logs")}
    flags = ["--task", "svamp", "--model", str(tiny_model_dir), "--engine", "hf", "--limit", "6",
             "--max-new-tokens", "4", "--out", str(tmp_path / "run")]
    done = subprocess.run(["bash", str(ROOT / "launch" / "mine_gpus.sh"), *flags], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr + "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert "merged 2 shards" in done.stdout
    assert [a["index"] for a in read_jsonl(tmp_path / "run" / "answers.jsonl")] == list(range(6))
