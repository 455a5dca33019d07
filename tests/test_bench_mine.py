"""make bench-mine (bench/bench_mine.py): the page generated from a results file carries its numbers, and a
results file names the commit and the machine it came from (bench/provenance.py)."""

from __future__ import annotations

import re

from bench.bench_mine import render
from bench.provenance import commit, machine
from fair.jsonl import write_json


def results() -> dict:
    ceiling = {"shape": [64, 576, 1536], "gflops": 300.0, "tokens_per_s": 1111.1}
    rows = [{"engine": name, "dtype": dtype, "questions": 64, "startup_s": 1.0, "generate_s": 10.0,
             "generated_tokens": tokens, "tokens_per_s": tokens / 10, "vs_paper": 1.0, "vs_continuous_fp32": ratio,
             "of_bf16_decode_ceiling": tokens / 10 / 1111.1}
            for name, dtype, tokens, ratio in [("fp32 eager", "float32", 1500, 1.0), ("bf16 fast", "bfloat16", 3210, 2.14)]]
    return {"commit": "abc1234", "command": "python bench/bench_mine.py", "load_average_before": [1.0, 1.1, 1.2],
            "load_average_after": [1.5, 1.4, 1.3],
            "machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 2, "torch": "2.13", "cpu_flags": ["avx512_bf16"]},
            "settings": {"questions": 64, "paper_questions": 16, "max_new_tokens": 256},
            "ceilings": {"float32 decode": ceiling | {"gflops": 150.0}, "bfloat16 decode": ceiling},
            "rows": rows, "agreement": {"bf16 fast": {"reference": "bf16 static", "questions": 64,
                                                      "identical_texts": 12, "same_verdicts": 60}}}


def test_the_page_is_the_results_files_numbers(tmp_path):
    source = tmp_path / "mine.json"
    write_json(source, results())
    page = render(source, tmp_path / "mine.md").read_text()
    assert "commit abc1234" in page and "Test CPU" in page and "[1.0, 1.1, 1.2] before" in page
    assert "bf16 multiplies 2.00x as fast as fp32 at the decode shape" in page
    assert re.search(r"\| bf16 fast \| bfloat16 \| 64 \| 1\.0 \| 10\.0 \| 3,210 \| 321\.0 \| 1\.00x \| 2\.14x \| 28\.9% \|", page)
    assert "| bf16 fast | bf16 static | 12/64 | 60/64 |" in page


def test_a_results_file_names_its_commit_and_machine():
    assert re.fullmatch(r"[0-9a-f]{7,}(\+uncommitted changes)?", commit())
    found = machine()
    assert found["cores"] >= 1 and found["auto"]["dtype"] in ("float32", "bfloat16")
    assert set(found["cpu_flags"]) <= {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                                       "amx_bf16", "amx_int8"}
