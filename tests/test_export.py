"""`fair gen`'s export of the paper's files streams committee.jsonl: its memory does not grow with the file."""

from __future__ import annotations

import tracemalloc

import orjson

from cli.pipeline import GenConfig, export
from fair.jsonl import append_jsonl, write_json
from fair.records import StudentAnswer
from gen.committee.run import CommitteeConfig

TEXT = "Subtract the eaten apples from the bought ones: 12 - 5 = 7. The answer is 7. " * 40  # ~3 KB


def record(i: int) -> dict:
    mistake = StudentAnswer(id=f"svamp-train-{i}", index=i, task="svamp", split="train", question=f"Question {i}?",
                            gold="7", prediction="8", extracted="8", correct=False, prompt_tokens=1,
                            generated_tokens=1, finish_reason="stop", solution="12 - 5")
    names = ("a", "b", "c")
    rationales = {n: {"text": f"{n} {i} {TEXT}", "error": None, "mean_score": 4.0, "accepted": True,
                      "reviews": {r: {"score": 4.0, "reply": f"[4] {TEXT}", "error": None} for r in names if r != n}}
                  for n in names}
    return {"id": mistake.id, "mistake": mistake.to_json(), "rationales": rationales, "usage": {},
            "feedback": {n: {"text": f"{n} feedback {i} {TEXT}", "error": None} for n in names}}


def test_export_streams_the_committee_file(tmp_path):
    path = tmp_path / "committee.jsonl"
    count = 600
    append_jsonl(path, (record(i) for i in range(count)))
    size = path.stat().st_size
    assert size > 10 * 2**20
    config, committee_config = GenConfig(task="svamp", student="tiny"), CommitteeConfig(task="svamp", out=str(path))

    tracemalloc.start()
    try:
        export(config, committee_config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 10, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB committee file"

    rationale = orjson.loads((tmp_path / "tiny_svamp_rationale_round0.json").read_bytes())
    feedback = orjson.loads((tmp_path / "tiny_svamp_feedback_round0.json").read_bytes())
    assert [r["id"] for r in rationale] == [f["id"] for f in feedback] == list(range(count))
    assert rationale[3]["b_rationale"] == [f"b 3 {TEXT}", 4, 4] and len(rationale[3]["correct_rationale"]) == 3
    assert feedback[5]["c_feedback"] == f"c feedback 5 {TEXT}"


def test_streamed_files_are_the_bytes_write_json_writes(tmp_path):
    from fair.jsonl import JsonArrayWriter

    items = [{"id": 1, "text": "a\nb", "scores": [1, 2]}, {"id": 2, "nested": {"k": [None, "é"]}}, {}]
    for case in (items, []):
        write_json(tmp_path / "whole.json", case)
        with JsonArrayWriter(tmp_path / "streamed.json") as out:
            for item in case:
                out.add(item)
        assert (tmp_path / "streamed.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
