"""The listening socket the service and the simulator both serve on.

Bound here, before uvicorn starts, so that a port of 0 is known at once (the simulator's URL, `fair serve
--port-file`) and a port already taken is one clear line, not a traceback from inside the server's loop.
Also what both say about where they listen: the URL (an IPv6 address in brackets) and whether only this machine
can reach it (loopback).
"""

from __future__ import annotations

import ipaddress
import socket

from fair.errors import FairError


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket listening on host:port (an IPv6 address when the host has a colon); `backlog` connections
    may wait to be accepted."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise FairError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(backlog)
    return sock


def http_url(host: str, port: int) -> str:
    """http://host:port, an IPv6 address in brackets (http://[::1]:8765)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (a name or an address)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
