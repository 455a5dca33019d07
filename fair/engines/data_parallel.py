"""Data parallelism for any engine: one replica per device group, each in its own process.

vLLM's `LLM` runs in one process and refuses `data_parallel_size > 1` there, so, like vLLM's own offline
example, we start one process per replica and pin each to its GPUs with CUDA_VISIBLE_DEVICES. The same
class wraps the transformers engine, which is how the tests exercise it on a CPU.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
from collections.abc import Callable
from typing import Any

from transformers import AutoTokenizer

from fair.engines.base import Generation, Sampling
from fair.errors import FairError
from fair.models import resolve_model


class DataParallelEngine:
    def __init__(
        self,
        factory: Callable[..., Any],
        model: str,
        kwargs: dict[str, Any],
        replicas: int,
        gpus_per_replica: int = 1,
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(replicas * gpus_per_replica)]
        if len(gpus) < replicas * gpus_per_replica:
            raise FairError(f"{replicas} replicas x {gpus_per_replica} GPUs need more than the visible GPUs {visible}")
        context = mp.get_context("spawn")  # never fork a process that may hold CUDA or vLLM state
        self.connections, self.processes = [], []
        for rank in range(replicas):
            devices = ",".join(gpus[rank * gpus_per_replica : (rank + 1) * gpus_per_replica])
            parent, child = context.Pipe()
            process = context.Process(target=serve_replica, args=(factory, model, kwargs, devices, child))
            process.start()
            self.connections.append(parent)
            self.processes.append(process)
        atexit.register(self.close)
        for reply in self._receive_all():
            if reply != "ready":
                raise FairError(f"an engine replica failed to start: {reply}")

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        replicas = len(self.connections)
        for rank, connection in enumerate(self.connections):  # strided shards keep the replicas' loads even
            connection.send((prompts[rank::replicas], sampling))
        results: list[Generation | None] = [None] * len(prompts)
        for rank, reply in enumerate(self._receive_all()):
            if isinstance(reply, BaseException):
                raise FairError(f"engine replica {rank} failed: {reply}")
            results[rank::replicas] = reply
        return results  # type: ignore[return-value]

    def _receive_all(self) -> list[Any]:
        return [connection.recv() for connection in self.connections]

    def close(self) -> None:
        for connection, process in zip(self.connections, self.processes, strict=True):
            if process.is_alive():
                connection.send(None)
                process.join(timeout=60)
        self.connections, self.processes = [], []


def serve_replica(factory: Callable[..., Any], model: str, kwargs: dict[str, Any], devices: str, connection) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        engine = factory(model, **kwargs)
    except Exception as e:  # report to the parent, which raises it with context
        connection.send(repr(e))
        return
    connection.send("ready")
    while (request := connection.recv()) is not None:
        prompts, sampling = request
        try:
            connection.send(engine.generate(prompts, sampling))
        except Exception as e:
            connection.send(e)
