"""The response cache: WAL, round trips, what the key covers, in-flight rows after a kill, group commits."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from dataclasses import replace

from gen.teachers.cache import ResponseCache, key_for
from gen.teachers.config import Teacher
from gen.teachers.providers import ChatRequest, ChatResponse

TEACHER = Teacher(name="t", provider="openai", model="m1", base_url="http://127.0.0.1:8000/v1")
REQUEST = ChatRequest((("system", "be brief"), ("user", "2+2?")), temperature=0.0, top_p=1.0, max_tokens=64)


def test_wal_mode_and_round_trip(tmp_path):
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        assert cache.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cache.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        key = key_for(TEACHER, REQUEST)
        assert cache.get(key) is None and key not in cache
        cache.put(key, "t", ChatResponse("4", 12, 1))
        assert cache.get(key) == ChatResponse("4", 12, 1) and key in cache and len(cache) == 1
    with ResponseCache(tmp_path / "c.sqlite") as cache:  # and it is still there after reopening
        assert cache.get(key) == ChatResponse("4", 12, 1)


def test_key_covers_what_changes_the_reply():
    base = key_for(TEACHER, REQUEST)
    changed = [
        key_for(TEACHER, replace(REQUEST, messages=(("system", "be verbose"), ("user", "2+2?")))),
        key_for(TEACHER, replace(REQUEST, messages=(("user", "2+2?"),))),
        key_for(replace(TEACHER, model="m2"), REQUEST),
        key_for(replace(TEACHER, provider="gemini"), REQUEST),
        key_for(TEACHER, replace(REQUEST, temperature=0.7)),
        key_for(TEACHER, replace(REQUEST, top_p=0.9)),
        key_for(TEACHER, replace(REQUEST, max_tokens=65)),
        key_for(TEACHER, replace(REQUEST, sample=1)),
        key_for(replace(TEACHER, provider="gemini", thinking_budget=0), REQUEST),
        key_for(replace(TEACHER, provider="gemini", thinking_budget=512), REQUEST),
    ]
    assert len({base, *changed}) == len(changed) + 1
    # Not a local server's port (it changes between runs), the key's variable, or the teacher's name.
    same = [
        key_for(replace(TEACHER, base_url="http://127.0.0.1:9999/v1"), REQUEST),
        key_for(replace(TEACHER, api_key_env="OTHER_KEY", name="u"), REQUEST),
        key_for(TEACHER, replace(REQUEST, temperature=0)),  # int 0 and float 0.0 alike
    ]
    assert set(same) == {base}


def test_key_tells_endpoints_apart_but_not_a_local_servers_port():
    """A mock's or a proxy's replies are never reused for the real API (same model name, same folder); the
    simulator's port, new each run, changes nothing."""
    local = key_for(TEACHER, REQUEST)  # http://127.0.0.1:8000/v1
    real = key_for(replace(TEACHER, base_url=None), REQUEST)  # the provider's public endpoint
    proxy = key_for(replace(TEACHER, base_url="https://proxy.example.com/v1"), REQUEST)
    proxy_port = key_for(replace(TEACHER, base_url="https://proxy.example.com:8443/v1"), REQUEST)
    local_path = key_for(replace(TEACHER, base_url="http://127.0.0.1:8000/openai/v1"), REQUEST)
    assert len({local, real, proxy, proxy_port, local_path}) == 5
    for url in ("http://127.0.0.1:45123/v1", "http://localhost:8765/v1/", "http://[::1]:9000/v1"):
        assert key_for(replace(TEACHER, base_url=url), REQUEST) == local, url
    for url in ("https://api.openai.com/v1", "https://API.openai.com:443/v1/"):
        assert key_for(replace(TEACHER, base_url=url), REQUEST) == real, url


def test_inflight_rows_survive_a_crash_and_are_counted_once(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)

    async def go():
        await asyncio.gather(cache.mark_inflight("a", "t"), cache.mark_inflight("b", "t"))
        cache.put("b", "t", ChatResponse("done", 1, 1))  # answered: no longer in flight
        await cache.mark_inflight("c", "t")
        cache.finish("c")  # failed for good: no longer in flight

    asyncio.run(go())
    assert cache.inflight() == 1
    cache.db.close()  # "killed": no clean shutdown of the run
    cache = ResponseCache(path)
    assert cache.abandoned_inflight() == 1 and cache.inflight() == 0
    cache.close()
    with ResponseCache(path) as cache:
        assert cache.abandoned_inflight() == 0


def test_a_put_survives_a_process_kill(tmp_path):
    path = tmp_path / "c.sqlite"
    code = (
        "import asyncio, os, sys\n"
        "from gen.teachers.cache import ResponseCache\n"
        "from gen.teachers.providers import ChatResponse\n"
        "c = ResponseCache(sys.argv[1])\n"
        "async def go():\n"
        "    await c.mark_inflight('sent', 't'); await c.mark_inflight('kept', 't')\n"
        "    c.put('kept', 't', ChatResponse('x', 3, 4)); c.flush()\n"
        "asyncio.run(go())\n"
        "os._exit(9)  # no close, no atexit, no flush\n"
    )
    assert subprocess.run([sys.executable, "-c", code, str(path)], timeout=60).returncode == 9
    with ResponseCache(path) as cache:
        assert cache.get("kept") == ChatResponse("x", 3, 4)
        assert cache.abandoned_inflight() == 1  # 'sent' may have reached the provider


def test_many_puts_in_a_loop_commit_in_groups(tmp_path):
    async def go(cache):
        for i in range(1000):
            cache.put(f"k{i}", "t", ChatResponse(str(i), i, i))
        assert cache.get("k999") == ChatResponse("999", 999, 999) and "k999" in cache  # before its commit
        return cache.commits

    with ResponseCache(tmp_path / "c.sqlite", max_pending=300) as cache:
        assert asyncio.run(go(cache)) == 3  # 3 full groups of 300; the last 100 wait for the flush interval
    with ResponseCache(tmp_path / "c.sqlite") as cache:  # and close() committed those
        assert len(cache) == 1000


REPLIES = [
    ChatResponse("4", 12, 1, cached_input_tokens=8),
    ChatResponse("", 4100, 3, cache_write_tokens=4000, refusal="refusal"),
    ChatResponse("", 20, 868, truncated=True),
    ChatResponse("The answer is", 20, 768, truncated=True, batch=True),
    ChatResponse("", 7, 0, refusal="SAFETY"),
]


def test_refusals_truncations_and_cache_counts_are_stored(tmp_path):
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        for i, reply in enumerate(REPLIES):
            cache.put(f"k{i}", "t", reply)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        assert [cache.get(f"k{i}") for i in range(len(REPLIES))] == REPLIES


def test_an_old_cache_file_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema with the batch column and nothing after it
        db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, teacher TEXT NOT NULL, text TEXT NOT NULL, "
                   "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, created REAL NOT NULL, "
                   "batch INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO responses VALUES ('old', 't', 'four', 3, 1, 0, 1)")
    with ResponseCache(path) as cache:
        assert cache.get("old") == ChatResponse("four", 3, 1, batch=True)
        cache.put("new", "t", REPLIES[1])
    with ResponseCache(path) as cache:
        assert cache.get("new") == REPLIES[1] and cache.get("old").refusal is None


FULL_DISK = '''
import asyncio, resource, signal, sqlite3, sys
from gen.teachers.cache import ResponseCache
from gen.teachers.providers import ChatResponse

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over RLIMIT_FSIZE fails with EFBIG instead of killing


async def main(path):
    cache = ResponseCache(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))  # the disk is full
    cache.put("paid", "t", ChatResponse("x" * 2**20, 1, 1))
    try:
        await cache.mark_inflight("refused", "t")
    except sqlite3.Error:
        print("refused")
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is back
    await cache.mark_inflight("later", "t")
    cache.close()

asyncio.run(main(sys.argv[1]))
'''


def test_a_full_disk_refuses_the_marks_it_held_and_the_cache_works_again_once_space_returns(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: the commit fails, the request waiting on it is not sent, the reply
    already paid stays pending, and the next commit after space returns holds both it and the next mark."""
    path = tmp_path / "c.sqlite"
    run = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["refused"]
    with ResponseCache(path) as cache:
        assert cache.get("paid").text == "x" * 2**20
        assert cache.abandoned_inflight() == 1  # "later", marked and never answered; "refused" never marked
