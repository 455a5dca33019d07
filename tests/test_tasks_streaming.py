"""Tasks declared in YAML, read at scale and resumed: a corpus streams through `fair mine` in bounded memory and
resumes, a Parquet file of one row group streams too, and a task file edited since a folder's answers is refused."""

from __future__ import annotations

import tracemalloc

import pytest

from fair.config import make_config
from fair.engines.base import Generation
from fair.errors import FairError
from fair.jsonl import read_jsonl
from fair.tasks import get_task
from gen.mine import MineConfig, mine
from tests.conftest import declare


class CountingEngine:
    """Replies "The answer is 3." to every prompt and keeps nothing but counts (a FakeEngine keeps every prompt)."""

    tokenizer = None

    def __init__(self, fail_after_calls: int | None = None):
        self.calls = self.prompts = 0
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts, sampling):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt
        self.calls, self.prompts = self.calls + 1, self.prompts + len(prompts)
        return [Generation("The answer is 3.", 10, 5, "stop") for _ in prompts]


def test_a_corpus_streams_through_mining_and_resumes_in_memory_far_below_its_size(tmp_path):
    rows = 3000
    filler = " ".join(f"word{k}" for k in range(400))  # about 3 KB a question: the file is about 9 MB
    with (tmp_path / "big.csv").open("w") as f:
        f.write("question,answer\n")
        f.writelines(f"Question {i}: {filler}?,{i % 7}\n" for i in range(rows))
    size = (tmp_path / "big.csv").stat().st_size
    task = declare(tmp_path, "splits: {train: big.csv}\nanswer_kind: number\n", "big")
    config = make_config(MineConfig, {"task": str(task), "chunk_size": 32, "out": str(tmp_path / "out")}, source="test")

    with pytest.raises(KeyboardInterrupt):
        mine(config, CountingEngine(fail_after_calls=20))
    engine = CountingEngine()
    tracemalloc.start()
    try:
        stats = mine(config, engine)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert engine.prompts == rows - 20 * 32  # the resumed run asks only what the first did not finish
    assert stats["total"] == rows and stats["correct"] == len(range(3, rows, 7))
    ids = [a["id"] for a in read_jsonl(tmp_path / "out" / "answers.jsonl")]
    assert len(ids) == len(set(ids)) == rows
    # Holding the split's examples alone would take more than the file; a chunk of 32 takes about 0.25 MB.
    assert peak < size / 5, f"peak {peak / 2**20:.1f} MB of Python memory for a {size / 2**20:.1f} MB corpus"


def test_a_parquet_file_of_one_row_group_streams_in_memory_far_below_its_size(tmp_path):
    """Writers put up to a million rows in one row group (pyarrow's and pandas' default), and pyarrow reads a
    row group's columns whole before its first batch unless told to read them through a buffer."""
    import random

    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rng = random.Random(0)
    rows = 10_000  # about 2 KB of question each that no compression shrinks: a file of about 19 MB
    pq.write_table(pa.table({"question": [rng.randbytes(1000).hex() for _ in range(rows)],
                             "answer": [str(i) for i in range(rows)]}), tmp_path / "big.parquet")
    size = (tmp_path / "big.parquet").stat().st_size
    assert pq.ParquetFile(tmp_path / "big.parquet").num_row_groups == 1
    task = get_task(str(declare(tmp_path, "splits: {train: big.parquet}\nanswer_kind: number\n", "big")))
    peak = count = 0
    for example in task.examples("train"):  # Arrow's own pool: tracemalloc does not see it
        peak, count = max(peak, pa.total_allocated_bytes()), count + (example.gold == str(count))
    assert count == rows
    assert peak < size / 2, f"Arrow held {peak / 2**20:.1f} MB reading a {size / 2**20:.1f} MB file"


def test_a_task_file_edited_since_a_folders_answers_is_refused_on_a_resume(tmp_path):
    """The folder's settings name the task file, not what it says: answers to the old prompt or graded by the old
    kind must not be joined by answers to the new (mining and evaluation resume by id)."""
    (tmp_path / "d.csv").write_text("question,answer\n" + "".join(f"{i}+1?,{i + 1}\n" for i in range(4)))
    task = declare(tmp_path, "splits: {train: d.csv}\nanswer_kind: number\n", "quiz")
    config = make_config(MineConfig, {"task": str(task), "limit": 2, "out": str(tmp_path / "out")}, source="test")
    mine(config, CountingEngine())
    task.write_text("splits: {train: d.csv}\nanswer_kind: number\nprompt: 'Q: {question}'\n")
    grown = make_config(MineConfig, {"task": str(task), "limit": 4, "out": str(tmp_path / "out")}, source="test")
    with pytest.raises(FairError, match=r"other settings \(task prompt changed\)"):
        mine(grown, CountingEngine())
    task.write_text("splits: {train: d.csv}\nanswer_kind: number   # the same task, said again\n")
    engine = CountingEngine()
    assert mine(grown, engine)["total"] == 4 and engine.prompts == 2
