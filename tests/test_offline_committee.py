"""`fair committee` against the simulator's failure replies, all three APIs at once (the offline committee speaks
OpenAI, Gemini and Anthropic): refusals and truncations are recorded and counted as the simulator sent them,
cached input is counted as the simulator reported it, and an account out of quota stops the run cleanly; a rerun
against a server with credit finishes it."""

from __future__ import annotations

import orjson
import pytest

from cli.main import main
from fair.jsonl import read_jsonl
from simulator.server import OfflineServer
from tests.conftest import import_seed_mistakes

pytestmark = pytest.mark.timeout(120)


def committee(capsys, url: str, mistakes, out, *extra: str) -> tuple[int, str]:
    code = main(["committee", "--task", "svamp", "--teachers", "offline", "--base-url", url, "--mistakes",
                 str(mistakes), "--out", str(out), "--no-progress", *extra])
    return code, capsys.readouterr().err


def test_refusals_truncations_and_cached_input_are_counted_as_sent(tmp_path, data_dir, capsys):
    mistakes, log = import_seed_mistakes(tmp_path, data_dir, count=8), tmp_path / "server.log"
    with OfflineServer(port=0, data_dir=data_dir, seed=3, p_refusal=0.1, p_truncate=0.1, cache_min_tokens=64,
                       cache_block_tokens=32, log_path=log) as server:
        code, err = committee(capsys, server.url, mistakes, tmp_path / "committee.jsonl")
        counters = dict(server.counters)
    assert code == 0, err
    stats = orjson.loads((tmp_path / "committee_stats.json").read_bytes())["teachers"]
    sent = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert counters["refusal"] > 0 and counters["truncate"] > 0
    assert sum(t["refused"] for t in stats.values()) == counters["refusal"]  # each once: a reply, never re-sent
    assert sum(t["truncated"] for t in stats.values()) == counters["truncate"]
    assert sum(t["cached_input_tokens"] for t in stats.values()) == sum(e.get("cached_tokens", 0) for e in sent) > 0
    records = list(read_jsonl(tmp_path / "committee.jsonl"))
    assert len(records) == 8
    rationales = [r for record in records for r in record["rationales"].values()]
    assert any(r.get("refused") or r.get("truncated") for r in rationales)
    assert not any(r["accepted"] for r in rationales if r.get("refused") or r.get("truncated"))
    # The report counts the same: refused and cut-off replies per teacher, in the committee table.
    assert main(["report", "--gen-dir", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    table = committee_table((tmp_path / "report" / "report.md").read_text())
    assert sum(refused_count(row["refused"]) for row in table.values()) == counters["refusal"]
    assert sum(int(row["cut off"]) for row in table.values()) == counters["truncate"]
    assert {name: int(row["cut off"]) for name, row in table.items()} == {
        name: t["truncated"] for name, t in stats.items()}


def committee_table(report: str) -> dict[str, dict[str, str]]:
    """report.md's committee table: teacher -> column -> cell."""
    lines = report.split("## Committee", 1)[1].strip().split("\n\n", 1)[0].splitlines()  # the first table
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def refused_count(cell: str) -> int:
    """'3 SAFETY, 1 refusal' -> 4; '0' -> 0."""
    return sum(int(part.split()[0]) for part in cell.split(","))


def test_a_quota_stop_then_a_rerun_with_credit(tmp_path, data_dir, capsys):
    mistakes, out = import_seed_mistakes(tmp_path, data_dir, count=6), tmp_path / "committee.jsonl"
    with OfflineServer(port=0, data_dir=data_dir, quota_after=30) as server:  # 12 requests a mistake, 2 at a time
        code, err = committee(capsys, server.url, mistakes, out, "--window", "2")
        assert server.counters["quota"] > 0
    assert code == 2 and "out of quota" in err.strip().splitlines()[-1]
    written = out.read_bytes()
    assert 0 < len(written.splitlines()) < 6
    stats = orjson.loads((tmp_path / "committee_stats.json").read_bytes())  # written at the stop, saying why
    assert "out of quota" in stats["stopped"] and stats["written"] == len(written.splitlines())
    assert sum(t["requests"] for t in stats["teachers"].values()) >= 30
    with OfflineServer(port=0, data_dir=data_dir) as server:
        code, err = committee(capsys, server.url, mistakes, out)
    assert code == 0, err
    assert out.read_bytes().startswith(written) and len(list(read_jsonl(out))) == 6
