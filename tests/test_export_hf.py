"""`fair export --format hf`: a committee run as a dataset that `datasets` loads and TRL trains on as it is, with
its card; memory bounded by the row group; `--push-to-hub` private by default, the token never shown."""

from __future__ import annotations

import random
import traceback
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cli.main import main
from fair.config import save_config
from fair.errors import FairError
from fair.jsonl import append_jsonl, write_json
from fair.records import StudentAnswer
from fair.tasks import get_task
from gen.committee.run import CommitteeConfig
from gen.export import ExportConfig, export
from tests.conftest import HUB_TOKEN
from train.data import build_examples, load_records

SVAMP = get_task("svamp")
NAMES = ("careful", "sloppy", "harsh")


def reply(text: str | None, **flags) -> dict:
    return {"text": text, "error": None if text is not None else "HTTP 500", "truncated": False, "refused": None} | flags


def record(i: int, filler: str = "") -> dict:
    """A committee record of mistake i: sloppy's feedback fails every 5th, harsh's rationale is cut off every 4th,
    careful's is rejected every 3rd (every 6th mistake then has no accepted rationale at all)."""
    mistake = StudentAnswer(id=f"svamp-train-{i}", index=i, task="svamp", split="train",
                            question=f"Tom has {i} apples and buys 3 more. How many apples has he? {filler}",
                            gold=str(i + 3), prediction=f"{i} - 3 = {i - 3}", extracted=str(i - 3), correct=False,
                            prompt_tokens=40, generated_tokens=9, finish_reason="stop", solution=f"( {i} + 3 )")
    rationales = {}
    for n in NAMES:
        entry = reply(f"{n}: {i} + 3 = {i + 3}. The answer is {i + 3}. {filler}",
                      truncated=n == "harsh" and i % 4 == 0)
        scores = {r: (2.0 if n == "careful" and i % 3 == 0 else 4.0) for r in NAMES if r != n}
        accepted = not entry["truncated"] and not (n == "careful" and i % 3 == 0) and not (n == "sloppy" and i % 2 == 0)
        rationales[n] = entry | {"mean_score": sum(scores.values()) / 2, "accepted": accepted,
                                 "reviews": {r: {"score": s, "reply": f"[{s:g}]", "error": None, "truncated": False,
                                                 "refused": None} for r, s in scores.items()}}
    feedback = {n: reply(None if n == "sloppy" and i % 5 == 0 else f"{n} feedback on {i}: add, do not subtract.")
                for n in NAMES}
    usage = {n: {"input_tokens": 100, "output_tokens": 50, "cached_input_tokens": 0, "cache_write_tokens": 0,
                 "cost": 0.001} for n in NAMES}
    return {"id": mistake.id, "mistake": mistake.to_json(), "feedback": feedback, "rationales": rationales,
            "usage": usage, "prompts": "fair-v3", "threshold": 3.0}


def committee_folder(folder: Path, count: int, filler: str = "") -> Path:
    """A run folder as `fair committee` leaves it, the records in the shuffled order replies finish in."""
    order = list(range(count))
    random.Random(1).shuffle(order)
    append_jsonl(folder / "committee.jsonl", (record(i, filler) for i in order))
    # committee.yaml names today's default filter; the records, with no filter field, ran the paper's (review):
    # the card says what the messages were built under, the records' filter.
    save_config(CommitteeConfig(task="svamp", student="smollm2-135m", teachers="offline"), folder / "committee.yaml")
    write_json(folder / "committee_stats.json", {"budget": {"max_cost_usd": None, "spent_usd": 0.25}})
    return folder


def load(out: Path, shape: str, cache: Path):
    from datasets import load_dataset

    return load_dataset(str(out), shape, split="train", cache_dir=str(cache))


def test_both_shapes_load_with_datasets_and_the_messages_are_what_training_builds(tmp_path):
    folder = committee_folder(tmp_path / "run", 20)
    out = export(ExportConfig(folder=str(folder), teacher="mixed", seed=3, shard_rows=7, row_group_rows=2,
                              progress=False))
    assert sorted(p.name for p in (out / "records").iterdir()) == [f"train-0000{k}-of-00003.parquet" for k in range(3)]

    records = load(out, "records", tmp_path / "cache")
    assert [r["mistake"]["index"] for r in records] == list(range(20))  # the split's order, as training reads them
    row = records[4]
    assert row["feedback"][0] == {"teacher": "careful", **reply("careful feedback on 4: add, do not subtract.")}
    harsh = row["rationales"][2]
    assert (harsh["teacher"], harsh["truncated"], harsh["accepted"]) == ("harsh", True, False)
    assert harsh["reviews"][0]["reviewer"] == "careful" and harsh["reviews"][0]["score"] == 4.0
    assert row["usage"][1] == {"teacher": "sloppy", "input_tokens": 100, "output_tokens": 50,
                               "cached_input_tokens": 0, "cache_write_tokens": 0, "cost": 0.001}
    assert records[5]["feedback"][1]["text"] is None and records[3]["rationales"][0]["mean_score"] == 2.0

    examples, report = build_examples(load_records(folder / "committee.jsonl", SVAMP), SVAMP, "mixed", 3)
    messages = load(out, "messages", tmp_path / "cache")
    assert [(m["messages"], m["id"], m["kind"], m["teacher"]) for m in messages] == [
        ([{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.completion}], e.mistake_id,
         e.kind, e.teacher) for e in examples]
    assert report.skipped == {"no accepted rationale": 2}  # mistakes 0 and 12

    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "other" and header["size_categories"] == ["n<1K"]
    assert {c["config_name"]: c["data_files"][0]["path"] for c in header["configs"]} == {
        "messages": "messages/train-*.parquet", "records": "records/train-*.parquet"}
    for fact in ("`svamp` (`ChilleD/SVAMP`), split train", "`smollm2-135m`", "`careful` sim-careful (openai)",
                 "fair-v3", "review: a rationale is accepted when the mean of its peers' valid review scores is above 3.0", "--teacher mixed --seed 3", f"{len(examples)} messages rows",
                 "billed $0.0600", "spent $0.2500", "None recorded", "left out of messages: 2 (no accepted rationale)"):
        assert fact in card, fact


def test_the_messages_go_through_trl_as_they_are(tmp_path, tiny_model_dir):
    """TRL's SFTTrainer prepares the messages shape with the student's chat template: each row's tokens begin with
    exactly the prompt and completion `fair train` trains on (its end token included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from train.data import tokenize_examples

    folder = committee_folder(tmp_path / "run", 6)
    out = export(ExportConfig(folder=str(folder), teacher="all", progress=False))
    messages = load(out, "messages", tmp_path / "cache")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), train_dataset=messages,
                         processing_class=tokenizer,
                         args=SFTConfig(output_dir=str(tmp_path / "sft"), report_to=[], max_length=1024,
                                        per_device_train_batch_size=4, use_cpu=True, bf16=False,
                                        save_strategy="no"))
    prepared = trainer.train_dataset
    examples, _ = build_examples(load_records(folder / "committee.jsonl", SVAMP), SVAMP, "all", 0)
    ours, _ = tokenize_examples(examples, tokenizer, 1024)
    assert len(prepared) == len(ours) == len(messages) > 6
    for row, mine in zip(prepared, ours, strict=True):
        assert row["input_ids"][: len(mine.input_ids)] == mine.input_ids
    batch = trainer.data_collator([prepared[i] for i in range(4)])
    assert batch["input_ids"].shape == batch["labels"].shape and batch["input_ids"].shape[0] == 4
    loss = trainer.model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}).loss
    assert loss.isfinite()


def test_memory_is_one_row_group_whatever_the_file(tmp_path):
    folder = committee_folder(tmp_path / "run", 600, filler="x" * 5000)
    size = (folder / "committee.jsonl").stat().st_size
    assert size > 10 * 2**20
    tracemalloc.start()
    try:
        out = export(ExportConfig(folder=str(folder), row_group_rows=20, progress=False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 10, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB committee file"
    import pyarrow.parquet as pq

    [shard] = (out / "records").iterdir()
    assert pq.ParquetFile(shard).metadata.num_row_groups == 30


def test_bad_input_is_one_line_and_leaves_the_last_export_whole(tmp_path, capsys):
    folder = committee_folder(tmp_path / "run", 4)
    assert main(["export", str(folder), "--format", "hf", "--no-progress"]) == 0
    before = sorted(p.relative_to(folder) for p in (folder / "hf").rglob("*"))
    bad = record(9)
    del bad["rationales"]
    append_jsonl(folder / "committee.jsonl", [bad])
    assert main(["export", str(folder), "--format", "hf", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fair export: error: {folder / 'committee.jsonl'} record 4 (id 'svamp-train-9'): missing or "
                   "malformed field 'rationales'")
    assert sorted(p.relative_to(folder) for p in (folder / "hf").rglob("*")) == before
    assert main(["export", str(tmp_path / "nowhere"), "--format", "hf"]) == 2
    assert "no committee file" in capsys.readouterr().err
    for out in (folder, tmp_path):  # a folder that is not an export is never replaced, the run's least of all
        assert main(["export", str(folder), "--format", "hf", "--out", str(out)]) == 2
        assert "is not an earlier export" in capsys.readouterr().err
    assert (folder / "committee.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------
# --push-to-hub, against a fake HfApi (tests/conftest.py): no network here


def test_push_to_hub_uploads_the_folder_to_a_private_repository(tmp_path, hub, capsys):
    folder = committee_folder(tmp_path / "run", 3)
    assert main(["export", str(folder), "--format", "hf", "--push-to-hub", "me/svamp-fair", "--no-progress"]) == 0
    files = ["README.md", "messages/train-00000-of-00001.parquet", "records/train-00000-of-00001.parquet"]
    assert hub.calls == [("create_repo", "me/svamp-fair", "dataset", True, True),
                         ("upload_folder", "me/svamp-fair", "dataset", files)]
    out = capsys.readouterr()
    assert "uploaded" in out.out and "(private)" in out.out and HUB_TOKEN not in out.out + out.err

    hub.calls, hub.repos["me/open"] = [], False  # an existing public repository takes --public
    assert main(["export", str(folder), "--format", "hf", "--push-to-hub", "me/open", "--no-progress"]) == 2
    assert "exists and is public: pass --public" in capsys.readouterr().err
    assert [c[0] for c in hub.calls] == ["create_repo"]
    assert main(["export", str(folder), "--format", "hf", "--push-to-hub", "me/open", "--public", "--no-progress"]) == 0
    assert hub.calls[-2:] == [("create_repo", "me/open", "dataset", False, True),
                              ("upload_folder", "me/open", "dataset", files)]
    assert "(public)" in capsys.readouterr().out


def test_a_failed_upload_is_one_line_without_the_token(tmp_path, hub, capsys):
    from huggingface_hub.errors import HfHubHTTPError

    response = SimpleNamespace(headers={}, status_code=401, request=None)  # what the error reads of a response
    hub.fail = HfHubHTTPError(f"401 Unauthorized: invalid token\nAuthorization: Bearer {HUB_TOKEN}", response=response)
    folder = committee_folder(tmp_path / "run", 3)
    config = ExportConfig(folder=str(folder), push_to_hub="me/svamp-fair", progress=False)
    with pytest.raises(FairError) as caught:
        export(config)
    shown = "".join(traceback.format_exception(caught.value))
    assert "401 Unauthorized" in shown and "[token]" in shown and HUB_TOKEN not in shown
    assert main(["export", str(folder), "--format", "hf", "--push-to-hub", "me/x", "--no-progress"]) == 2
    out = capsys.readouterr()
    assert HUB_TOKEN not in out.out + out.err and len(out.err.strip().splitlines()) == 1
