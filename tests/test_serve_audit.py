"""The hostile audit's findings against `fair serve` (issue 26), each reproduced: an empty token file left by a
failed start, unbounded request bodies, idle sockets, unbounded priorities, world-readable state."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
from pathlib import Path

import httpx
import pytest

from fair.errors import FairError
from serve.config import bearer_token, same_token
from simulator.server import OfflineServer
from tests.serve_util import Served, teachers_yaml

pytestmark = pytest.mark.timeout(120)

STRONG = "k9Q2x7LmPz4Rw8Tn1Vb6Yc3Hd5Jf0Gs2Ua9Ee7Ii4Oo"  # 44 characters, 32 distinct


def raw(url: str, request: bytes, timeout: float = 20.0) -> bytes:
    """Send `request` as is (httpx refuses headers such as `Bearer ` with nothing after it), 64 KB at a time
    until the server answers or closes; the reply, read until the server closes the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        for start in range(0, len(request), 2**16):
            if select.select([sock], [], [], 0)[0]:
                break  # answered (or closed) before the whole request was sent
            try:
                sock.sendall(request[start:start + 2**16])
            except OSError:
                break
        reply = b""
        with contextlib.suppress(ConnectionResetError):  # a close with our bytes unread resets after the reply
            while chunk := sock.recv(65536):
                reply += chunk
        return reply


def test_a_zero_byte_token_file_from_a_failed_start_is_replaced_not_trusted(tmp_path, monkeypatch):
    monkeypatch.delenv("FAIR_SERVE_TOKEN", raising=False)
    (tmp_path / "token").write_bytes(b"")
    token = bearer_token(tmp_path, "127.0.0.1")
    assert len(token) >= 43 and (tmp_path / "token").read_text().strip() == token
    assert stat.S_IMODE(os.stat(tmp_path / "token").st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp"))


def test_a_short_token_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("FAIR_SERVE_TOKEN", raising=False)
    (tmp_path / "token").write_text("abc\n")
    with pytest.raises(FairError, match="token.*too short"):
        bearer_token(tmp_path, "127.0.0.1")
    monkeypatch.setenv("FAIR_SERVE_TOKEN", "short-but-16char")  # loopback: 16 characters will do
    assert bearer_token(tmp_path, "127.0.0.1") == "short-but-16char"
    with pytest.raises(FairError, match="FAIR_SERVE_TOKEN.*too short"):
        bearer_token(tmp_path, "0.0.0.0")  # off loopback: 32 bytes of entropy
    monkeypatch.setenv("FAIR_SERVE_TOKEN", "a" * 64)
    with pytest.raises(FairError, match="FAIR_SERVE_TOKEN.*too short"):
        bearer_token(tmp_path, "0.0.0.0")  # long but one character repeated
    monkeypatch.setenv("FAIR_SERVE_TOKEN", "tiny")
    with pytest.raises(FairError, match="FAIR_SERVE_TOKEN.*too short"):
        bearer_token(tmp_path, "127.0.0.1")
    monkeypatch.setenv("FAIR_SERVE_TOKEN", STRONG)
    assert bearer_token(tmp_path, "0.0.0.0") == STRONG


def test_an_empty_token_never_matches():
    assert not same_token("", "")
    assert not same_token(None, "")
    assert not same_token("", STRONG)


@pytest.fixture(scope="module")
def own_token(tmp_path_factory, data_dir):
    """A server without FAIR_SERVE_TOKEN whose state folder holds the 0-byte token file of a failed start."""
    folder = tmp_path_factory.mktemp("audit")
    state = folder / "state"
    state.mkdir()
    (state / "token").write_bytes(b"")
    with OfflineServer(port=0, data_dir=data_dir) as sim, Served(
        state, teachers_yaml(folder, sim.url), sim.url, token=None
    ) as served:
        yield served


def test_a_server_started_over_an_empty_token_file_refuses_empty_credentials(own_token):
    url = own_token.url
    assert raw(url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 401")
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer"}).status_code == 401
    assert httpx.get(url + "/v1/models", cookies={"fair_serve_session": ""}).status_code == 401
    login = httpx.post(url + "/login", data={"token": ""})
    assert login.status_code == 401 and "set-cookie" not in login.headers
    token = (own_token.state / "token").read_text().strip()
    assert len(token) >= 43
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def modes(root: Path) -> set[tuple[str, int]]:
    """(name, mode) of `root` and everything under it."""
    return {(p.name, stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


def head(path: str, token: str, length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{framing}\r\n{extra}\r\n").encode()


@pytest.mark.parametrize(
    ("path", "length", "kind"),
    [
        ("/login", 2000, "application/x-www-form-urlencoded"),
        ("/login", 858 * 2**20, "application/x-www-form-urlencoded"),
        ("/v1/chat/completions", 2**30, "application/json"),
        ("/v1/fair/jobs", 64 * 2**20, "application/json"),
        ("/v1/files", 2**30, "multipart/form-data; boundary=x"),
    ],
)
def test_a_body_over_its_routes_cap_is_a_413_before_it_is_read(own_token, path, length, kind):
    token = (own_token.state / "token").read_text().strip()
    reply = raw(own_token.url, head(path, token, length, f"Content-Type: {kind}\r\n") + b"token=" + b"x" * 500)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert b"larger than this route's limit" in reply


@pytest.mark.parametrize(
    ("path", "chunk"), [("/login", 4096), ("/v1/chat/completions", 2**20), ("/v1/fair/jobs", 2**20)]
)
def test_a_chunked_body_is_cut_off_at_its_routes_cap(own_token, path, chunk):
    """No Content-Length: the server answers 413 once the body passes the cap, without waiting for its end."""
    token = (own_token.state / "token").read_text().strip()
    kind = "application/x-www-form-urlencoded" if path == "/login" else "application/json"
    body = b"".join(f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n" for _ in range(20))  # no last chunk
    reply = raw(own_token.url, head(path, token, None, f"Content-Type: {kind}\r\n") + body)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]


def test_a_form_of_many_small_fields_is_refused(own_token):
    token = (own_token.state / "token").read_text().strip()
    fields = {f"f{i}": "1" for i in range(100)}
    response = httpx.post(own_token.url + "/v1/files", headers={"Authorization": f"Bearer {token}"},
                          data={"purpose": "batch", **fields}, files={"file": ("a.jsonl", b"{}\n")})
    assert response.status_code == 400 and "too many form fields" in response.json()["error"]["message"]


def test_state_files_and_folders_are_the_users_alone(own_token):
    token = (own_token.state / "token").read_text().strip()
    response = httpx.post(own_token.url + "/v1/files", headers={"Authorization": f"Bearer {token}"},
                          data={"purpose": "fair-mistakes"}, files={"file": ("m.jsonl", b"not json\n")})
    assert response.status_code == 400  # refused, but the server has made its folders and database meanwhile
    found = modes(own_token.state)
    assert {n for n, m in found if m not in (0o600, 0o700)} == set(), sorted(found)
    assert {"state", "files", "jobs", "serve.sqlite", "token"} <= {n for n, _ in found}


def test_healthz_answers_under_a_flood_of_idle_sockets(tmp_path, data_dir):
    """More silent connections than the server has descriptors: the oldest idle ones make room for new ones."""
    nofile = 640
    with OfflineServer(port=0, data_dir=data_dir) as sim, Served(
        tmp_path / "state", teachers_yaml(tmp_path, sim.url), sim.url, nofile=nofile
    ) as served:
        host, port = served.url.removeprefix("http://").rsplit(":", 1)
        flood = []
        try:
            for _ in range(nofile + 200):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex((host, int(port)))  # no handshake wait: the backlog may be full
                flood.append(sock)
            reply = raw(served.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=10)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        finally:
            for sock in flood:
                sock.close()
        log = (tmp_path / "state.log").read_text()
        assert "out of system resource" not in log, log[-2000:]


def test_headers_over_the_limit_are_refused_before_they_are_read(own_token):
    pad = b"X-Pad: " + b"a" * 2**20 + b"\r\n"
    reply = raw(own_token.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + pad * 8 + b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]


def test_the_cookie_is_a_session_not_the_token_and_changes_need_the_pages_origin(own_token):
    token = (own_token.state / "token").read_text().strip()
    with httpx.Client(base_url=own_token.url) as browser:
        login = browser.post("/login", data={"token": token})
        assert login.status_code == 303
        session = browser.cookies["fair_serve_session"]
        assert token not in login.headers["set-cookie"] and len(session) >= 43
        assert browser.get("/v1/fair/jobs").status_code == 200  # a read needs no Origin
        cancel = "/v1/fair/jobs/job-none/cancel"
        refused = browser.post(cancel, content=b"{}", headers={"content-type": "text/plain"})  # a cross-site form
        assert refused.status_code == 403 and "Origin" in refused.json()["error"]["message"]
        assert browser.post(cancel, headers={"origin": "http://evil.example"}).status_code == 403
        assert browser.post(cancel, headers={"origin": own_token.url}).status_code == 404  # the page: let through
    bearer = {"Authorization": f"Bearer {token}"}  # API clients send no Origin and need none
    assert httpx.post(own_token.url + "/v1/fair/jobs/job-none/cancel", headers=bearer).status_code == 404
    assert httpx.get(own_token.url + "/v1/models", cookies={"fair_serve_session": token}).status_code == 401


def test_no_docs_page_loads_a_cdns_javascript_and_the_schema_stays_behind_the_token(own_token):
    token = (own_token.state / "token").read_text().strip()
    bearer = {"Authorization": f"Bearer {token}"}
    for path in ("/docs", "/redoc"):
        assert httpx.get(own_token.url + path, headers=bearer).status_code == 404
    assert httpx.get(own_token.url + "/openapi.json").status_code == 401
    assert httpx.get(own_token.url + "/openapi.json", headers=bearer).json()["paths"]


def test_fair_committee_server_writes_only_a_jobs_files_and_keeps_the_local_token_local(tmp_path, monkeypatch):
    from serve import remote

    for bad in ("../../.bashrc", "/etc/passwd", "sub/x_round0.json", ".x_round0.json", "notes.txt", None):
        with pytest.raises(FairError, match="not one of a job's outputs"):
            remote.output_name(bad)
    assert remote.output_name("student_svamp_feedback_round0.json") == "student_svamp_feedback_round0.json"
    monkeypatch.delenv("FAIR_SERVE_TOKEN", raising=False)
    monkeypatch.setattr(remote, "LOCAL_TOKEN", tmp_path / "token")
    (tmp_path / "token").write_text(STRONG + "\n")
    assert remote.client_token("http://127.0.0.1:8765") == STRONG
    with pytest.raises(FairError, match="FAIR_SERVE_TOKEN"):
        remote.client_token("https://committee.example.org")  # the local token is not sent to another host


def test_urls_name_an_ipv6_host_in_brackets():
    from fair.wire.listen import http_url

    assert http_url("::1", 8765) == "http://[::1]:8765" and http_url("127.0.0.1", 80) == "http://127.0.0.1:80"


def test_fair_teachers_serve_warns_when_it_binds_beyond_loopback(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    port_file = tmp_path / "port"
    process = subprocess.Popen([sys.executable, "-m", "simulator.cli", "--host", "0.0.0.0", "--port", "0",
                                "--port-file", str(port_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert "warning: 0.0.0.0 is not loopback" in err, err[-2000:]


def test_a_state_folder_with_foreign_files_is_refused_untouched(tmp_path):
    import subprocess
    import sys

    state = tmp_path / "home"
    (state / "jobs").mkdir(parents=True)
    (state / "notes.txt").write_text("mine")
    (state / "jobs" / "plan.md").write_text("mine too")
    os.chmod(state / "notes.txt", 0o644)
    run = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--state", str(state), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "jobs/plan.md, notes.txt" in lines[0] and "not fair serve's" in lines[0], run.stderr
    assert (state / "notes.txt").read_text() == "mine" and (state / "jobs" / "plan.md").exists()
    assert stat.S_IMODE((state / "notes.txt").stat().st_mode) == 0o644  # not even its mode changed


def test_a_kills_leftovers_are_swept_and_nothing_else(tmp_path):
    from serve.store import Store, foreign

    store = Store(tmp_path)
    (tmp_path / "files" / "file-0123456789abcdef01234567.partial").write_text("torn")
    (tmp_path / "jobs" / "job-0123456789abcdef01234567").mkdir()
    assert foreign(tmp_path) == []
    assert sorted(store.sweep()) == ["files/file-0123456789abcdef01234567.partial",
                                     "jobs/job-0123456789abcdef01234567"]
    (tmp_path / "jobs" / "keep.txt").write_text("x")
    assert foreign(tmp_path) == ["jobs/keep.txt"] and store.sweep() == [] and (tmp_path / "jobs" / "keep.txt").exists()
    store.close()
