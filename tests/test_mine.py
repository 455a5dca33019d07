"""fair mine: mistakes and stats, exactly-once resume, settings guard, paper export/import."""

from __future__ import annotations

import orjson
import pytest

from fair.config import make_config
from fair.errors import FairError
from fair.jsonl import read_jsonl
from gen.mine import MineConfig, mine
from tests.conftest import svamp_reply


def config(tmp_path, **overrides) -> MineConfig:
    values = {"task": "svamp", "limit": 24, "chunk_size": 5, "out": str(tmp_path / "out")} | overrides
    return make_config(MineConfig, values, source="test")


def test_mine_writes_mistakes_stats_and_config(tmp_path, data_dir, fake_engine_cls):
    engine = fake_engine_cls(svamp_reply())
    stats = mine(config(tmp_path), engine)
    out = tmp_path / "out"
    answers = list(read_jsonl(out / "answers.jsonl"))
    mistakes = list(read_jsonl(out / "mistakes.jsonl"))
    assert len(answers) == 24 and len({a["id"] for a in answers}) == 24
    assert {m["id"] for m in mistakes} == {a["id"] for a in answers if not a["correct"]}
    assert all(m["extracted"] == "-1" and m["gold"] != "-1" for m in mistakes)
    assert stats["total"] == 24 and stats["mistakes"] == len(mistakes) and 0 < len(mistakes) < 24
    assert stats["accuracy"] == pytest.approx((24 - len(mistakes)) / 24)
    assert orjson.loads((out / "stats.json").read_bytes())["mistakes"] == len(mistakes)
    assert "task: svamp" in (out / "config.yaml").read_text()
    first = mistakes[0]
    assert {"id", "index", "question", "gold", "prediction", "extracted", "correct", "solution"} <= set(first)


def test_resume_after_interrupt_finishes_each_id_exactly_once(tmp_path, data_dir, fake_engine_cls):
    interrupted = fake_engine_cls(svamp_reply(), fail_after_calls=2)
    with pytest.raises(KeyboardInterrupt):
        mine(config(tmp_path), interrupted)
    assert len(list(read_jsonl(tmp_path / "out" / "answers.jsonl"))) == 10  # two chunks of 5 were saved

    resumed = fake_engine_cls(svamp_reply())
    stats = mine(config(tmp_path), resumed)
    assert len(resumed.prompts_seen) == 14  # only the unfinished ids are asked again
    ids = [a["id"] for a in read_jsonl(tmp_path / "out" / "answers.jsonl")]
    assert len(ids) == len(set(ids)) == 24 == stats["total"]

    again = fake_engine_cls(svamp_reply())
    mine(config(tmp_path), again)
    assert again.calls == 0


def test_resume_repairs_a_torn_line_and_a_kill_between_the_two_writes(tmp_path, data_dir, fake_engine_cls):
    mine(config(tmp_path, limit=10), fake_engine_cls(svamp_reply()))
    out = tmp_path / "out"
    answers = (out / "answers.jsonl").read_bytes().splitlines(keepends=True)
    mistakes = list(read_jsonl(out / "mistakes.jsonl"))
    last_mistake = mistakes[-1]["id"]
    # Simulate a kill after the mistakes write but before the answers write, mid-way through a line.
    kept = [line for line in answers if orjson.loads(line)["id"] != last_mistake]
    (out / "answers.jsonl").write_bytes(b"".join(kept) + b'{"id": "chal-')
    resumed = fake_engine_cls(svamp_reply())
    stats = mine(config(tmp_path, limit=10), resumed)
    assert resumed.calls == 0  # the mistake on disk proves the id was answered
    assert stats["total"] == 10
    mine(config(tmp_path, limit=12), resumed)
    ids = [a["id"] for a in read_jsonl(out / "answers.jsonl")]
    assert len(ids) == len(set(ids)) == 11  # 9 intact + 2 new; the torn line was dropped, not parsed


def test_resume_with_other_settings_is_refused(tmp_path, data_dir, fake_engine_cls):
    mine(config(tmp_path, limit=4), fake_engine_cls(svamp_reply()))
    with pytest.raises(FairError, match="other settings.*max_new_tokens"):
        mine(config(tmp_path, limit=4, max_new_tokens=7), fake_engine_cls(svamp_reply()))


def test_export_seed_matches_the_papers_schema(tmp_path, data_dir, fake_engine_cls):
    mine(config(tmp_path, limit=8, export_seed=True), fake_engine_cls(svamp_reply()))
    exported = orjson.loads((tmp_path / "out" / "smollm2-135m_svamp_false_round0.json").read_bytes())
    seed = orjson.loads((data_dir / "seed" / "Llama-2-7b-chat-hf_svamp_false_round0.json").read_bytes())
    assert exported and all(set(r) == set(seed[0]) for r in exported)
    assert all(isinstance(r["id"], int) and r["student_wrong_final_answer"] == "-1" for r in exported)


def test_a_later_round_names_the_papers_file_by_its_first_student_and_round(tmp_path, data_dir, fake_engine_cls):
    """`fair loop` mines round r's trained student (a folder named final) under the first student's name."""
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    mine(config(tmp_path, limit=4, export_seed=True, model=str(tmp_path / "final"), paper_student="Llama-2-7b-chat-hf",
                paper_round=2), fake_engine_cls(svamp_reply()))
    assert [p.name for p in (tmp_path / "out").glob("*.json") if "round" in p.name] == [
        "Llama-2-7b-chat-hf_svamp_false_round2.json"]


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(FairError, match="unknown task 'svmap'.*did you mean 'svamp'"):
        config(tmp_path, task="svmap")
    with pytest.raises(FairError, match="batch_size must be at least 1"):
        config(tmp_path, batch_size=0)
    with pytest.raises(FairError, match="unknown setting 'batchsize'"):
        config(tmp_path, batchsize=3)
    with pytest.raises(FairError, match="has no split 'dev'"):
        mine(config(tmp_path, split="dev"))
