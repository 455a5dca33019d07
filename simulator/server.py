"""The offline committee served: the simulator's answer pipeline (simulator/simulator.py) behind its HTTP side
(simulator/app.py, Starlette on uvicorn in a thread of its own), what `fair teachers serve` runs.

    with OfflineServer(port=0) as server:
        httpx.post(server.url + "/v1/chat/completions", json=...)
"""

from __future__ import annotations

from typing import Any

from fair.wire.listen import http_url
from simulator.simulator import Simulator


class OfflineServer(Simulator):
    """The simulator listening on host:port (0 picks a free one) from `start` (or `with`) until `stop`."""

    listener: Any = None  # simulator.app.Listener once started

    def start(self) -> OfflineServer:
        if self.listener is None:
            from simulator.app import Listener  # the ASGI stack, imported only by a simulator that serves

            self.listener = Listener(self).start()
            if self.log_path:
                self.log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop)
        return self

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        with self.lock:
            if self.log_file:
                self.log_file.close()
                self.log_file = None

    def __enter__(self) -> OfflineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.listener.port if self.listener else self.requested_port

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)
