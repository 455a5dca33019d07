"""JSON Lines: the reader and the tail repair agree on which records are finished."""

from __future__ import annotations

import orjson
import pytest

from fair.errors import FairError
from fair.jsonl import JsonlAppender, append_jsonl, read_jsonl, scan_jsonl


def ids(path) -> list[str]:
    return [r["id"] for r in read_jsonl(path)]


@pytest.mark.parametrize("tail", [b'{"id": "b"}', b'{"id": "b"}  ', b'{"id": "b", "text": "x}"}'])
def test_a_complete_last_record_without_its_newline_survives_the_next_append(tmp_path, tail):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": "a"}\n' + tail)  # a kill between the record and its newline, or a hand edit
    assert ids(path) == ["a", "b"]  # the reader counts b as done, so a resumed run will not redo it ...
    append_jsonl(path, [{"id": "c"}])
    assert ids(path) == ["a", "b", "c"]  # ... and the repair before the append must not drop it
    with JsonlAppender(path) as out:  # the streaming writer repairs the same way
        out.write([{"id": "d"}])
    assert ids(path) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("tail", [b'{"id": "b", "te', b'{"id": "b"', b'{"id": "b", "text": "}'])
def test_a_torn_last_record_is_not_done_and_is_dropped(tmp_path, tail):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": "a"}\n' + tail)
    assert ids(path) == ["a"]
    append_jsonl(path, [{"id": "b"}])
    assert ids(path) == ["a", "b"]


def test_a_bad_line_inside_the_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(FairError, match=r"a.jsonl:2: not valid JSON"):
        ids(path)


def test_a_byte_order_mark_before_the_first_record_is_read_past(tmp_path):
    # Windows PowerShell's `Out-File -Encoding utf8` writes one: a user's data file may open with it
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    with path.open("rb") as f:  # the offsets a reader seeks to hold the records, not the mark
        for offset, record in scan_jsonl(path):
            f.seek(offset)
            assert orjson.loads(f.readline()) == record
