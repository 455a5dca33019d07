"""The hostile audit's findings against `fair serve` (issue 26), each reproduced: an empty token file left by a
failed start, unbounded request bodies, idle sockets, unbounded priorities, world-readable state."""

from __future__ import annotations

import os
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
    """Send `request` as is (httpx refuses headers such as `Bearer ` with nothing after it); the reply's head."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        return sock.recv(65536)


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
    assert raw(url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \r\n\r\n").startswith(b"HTTP/1.1 401")
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer"}).status_code == 401
    assert httpx.get(url + "/v1/models", cookies={"fair_serve_token": ""}).status_code == 401
    login = httpx.post(url + "/login", data={"token": ""})
    assert login.status_code == 401 and "set-cookie" not in login.headers
    token = (own_token.state / "token").read_text().strip()
    assert len(token) >= 43
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def modes(root: Path) -> set[tuple[str, int]]:
    return {(p.name, stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}
