"""Committee jobs (/v1/fair/jobs): gen/committee/run.py's run, one per job folder, inside the server's event loop.

A job is a mistakes file (uploaded with purpose fair-mistakes) and the run's settings (task, teachers, prompts,
filter, samples, teacher_temperature, threshold, window, limit), plus a priority (its weight in the shared gates'
fair queues, serve/budget.py) and an optional max_cost_usd. Its folder holds what `fair committee` writes:
committee.jsonl, the response cache requests.sqlite, committee.yaml, committee_stats.json, and at the end the
paper's two files. So a job keeps
the committee's exactly-once promise: a server killed with SIGKILL and restarted resumes every unfinished job by
itself, finished mistakes are skipped, cached replies are free, and only the requests in flight at the kill can
be sent twice; each restart adds that count to the job's `repeated_after_restart`.

Statuses: queued -> in_progress -> completed | failed | cancelled | stopped (the run stopped cleanly, its error
the one line saying why: max_cost_usd reached, the committee's own budget, gen/teachers/budget.py, over
everything the job's folder has spent, restarts included, so that no request is sent that could take it past the
cap; or a teacher's account out of quota; committee_stats.json says which). Cancel stops sending and
keeps the partial output. Progress (done/total, requests, cache hits, retries, 429s, failures, tokens, cost, an
estimated final cost and an ETA) is read live from the run's clients and saved to the store once a second;
counters of runs before a restart are kept as `previous`, so cost and requests add up across restarts.

At most `max_running` jobs run at once (serve's max_jobs): each holds a response cache, its output files and up to
its teachers' concurrency in connections, so a flood of submissions must queue, not run the process out of file
descriptors. Queued jobs start oldest first as running ones end; cancelling a queued job ends it at once.

A job that failed for want of disk, descriptors or memory (fair/errors.py's out_of_resources) is `resumable`, as a
stopped one is: POST /v1/fair/jobs/{id}/resume queues it again once the machine has recovered, and it goes on as
after a restart (finished mistakes skipped, cached replies free). A failed job's error is one line that names its
files without the server's paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import anyio

from fair.config import save_config
from fair.errors import FairError, out_of_resources
from fair.jsonl import read_jsonl
from fair.paper import write_paper_files
from fair.recipes import PAPER_FILTER
from fair.tasks import get_task
from fair.wire.errors import ApiError
from gen.committee.estimate import EstimateConfig, committee_estimate
from gen.committee.report import write_stats
from gen.committee.run import (
    CommitteeConfig,
    Hooks,
    RunStopped,
    count_mistakes,
    finished_ids,
    run_committee,
)
from gen.teachers.client import TeacherClient
from gen.teachers.config import Teacher
from serve.budget import Budget
from serve.store import Store, new_id

OPEN = ("queued", "in_progress", "cancelling")
COUNTERS = (
    "requests",
    "cache_hits",
    "retries",
    "rate_limited",
    "failures",
    "input_tokens",
    "output_tokens",
    "cost",
)
SAVE_EVERY_S = 1.0
JOB_RECIPE = ("filter", "samples", "teacher_temperature", "threshold")  # a spec's settings of the run's recipe
STEM = "student"  # the paper's files: student_<task>_{feedback,rationale}_round0.json
ESTIMATING = anyio.CapacityLimiter(4)  # estimates reading their files at once; the others wait without a thread


def job_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec's recipe. A job stored before its spec had filter, samples and teacher_temperature ran the paper's
    filter (the default then, not now) and one sample at its YAML's temperatures."""
    return {name: spec.get(name, PAPER_FILTER if name == "filter" else getattr(CommitteeConfig, name))
            for name in JOB_RECIPE}


@dataclasses.dataclass
class Live:
    """A running job's view of its run: its clients (their stats) and its records so far."""

    clients: dict[str, TeacherClient]
    total: int
    skipped: int = 0
    written: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    saved: float = 0.0


class Jobs:
    def __init__(self, store: Store, budget: Budget, teachers: list[Teacher], committee: str, max_running: int = 4,
                 base_url: str | None = None):
        self.store, self.budget, self.committee, self.base_url = store, budget, committee, base_url
        self.teachers = {t.name: t for t in teachers}
        self.max_running = max_running
        self.tasks: dict[str, asyncio.Task] = {}  # the jobs running, at most max_running
        self.waiting: deque[str] = deque()  # queued jobs, oldest first
        self.live: dict[str, Live] = {}
        self.cancelled: set[str] = set()

    # -- the API -----------------------------------------------------------------------------------------

    async def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        source = self.source(spec)
        job_id = new_id("job")
        folder = self.store.folder("job", job_id)
        try:
            config = self.config(spec, folder)
            config.sampled(self.chosen(spec))  # a 400 now, not a job whose every request the API refuses
        except FairError as e:
            raise ApiError(400, str(e)) from None
        # Reading the mistakes file is off the event loop: a large one must not keep every other request waiting.
        await anyio.to_thread.run_sync(self.check_task, self.store.root / source["path"], config)
        folder.mkdir()
        link(self.store.root / source["path"], config.mistakes_path)  # before the row: see serve/store.py
        total = await anyio.to_thread.run_sync(count_mistakes, config)
        doc = {
            "id": job_id,
            "object": "fair.job",
            "created_at": time.time(),
            "status": "queued",
            "spec": spec,
            "progress": {"done": 0, "total": total},
            "previous": {},
            "restarts": 0,
            "repeated_after_restart": 0,
            "error": None,
            "finished_at": None,
        }
        self.store.add("job", doc)
        self.start(job_id)
        return self.view(job_id)

    async def estimate(self, spec: dict[str, Any]) -> dict[str, Any]:
        """`fair estimate` of a job's spec, over its uploaded mistakes (at most `limit` of them) and its teachers: the
        store is read here, on the loop; the file (read three times: its task, its count, a sample) in a thread, at
        most ESTIMATING at once: never in the loop's default threads, which the rest of the server needs (the
        teachers' DNS lookups), nor in more of anyio's than a few (its file downloads)."""
        path, teachers = self.store.root / self.source(spec)["path"], self.chosen(spec)
        result = await anyio.to_thread.run_sync(self.price, spec, path, teachers, limiter=ESTIMATING)
        # Named as the user knows them, not by the server's paths.
        limit = f", at most limit {spec['limit']}" if spec["limit"] else ""
        return result | {"teachers_file": Path(self.committee).stem,
                         "mistakes_source": f"{spec['mistakes_file_id']}{limit}"}

    def price(self, spec: dict[str, Any], path: Path, teachers: list[Teacher]) -> dict[str, Any]:
        try:
            mistakes = count_mistakes(CommitteeConfig(task=spec["task"], mistakes=str(path), limit=spec["limit"]))
            job = self.config(spec, Path())
            config = EstimateConfig(task=spec["task"], teachers=self.committee, mistakes=str(path),
                                    num_mistakes=mistakes, prompts=job.prompts, filter=job.filter, samples=job.samples)
            teachers = job.sampled(teachers)  # what a submit would refuse, an estimate refuses too
        except FairError as e:
            raise ApiError(400, str(e)) from None
        self.check_task(path, config.committee)
        return committee_estimate(config, teachers)

    def source(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The uploaded mistakes file a spec names; a 400 unless it is one."""
        source = self.store.get("file", spec["mistakes_file_id"])
        if source is None or source["purpose"] != "fair-mistakes":
            raise ApiError(
                400,
                f"mistakes_file_id {spec['mistakes_file_id']!r} is not a fair-mistakes file of "
                f"this server (POST /v1/files with purpose=fair-mistakes)",
                "mistakes_file_id",
            )
        return source

    def chosen(self, spec: dict[str, Any]) -> list[Teacher]:
        """The teachers a spec names (all when none); a 400 naming any this server's committee lacks."""
        unknown = sorted(set(spec["teachers"] or ()) - set(self.teachers))
        if unknown:
            raise ApiError(
                400,
                f"teachers {', '.join(unknown)} are not in this server's committee "
                f"(known: {', '.join(self.teachers)})",
                "teachers",
            )
        return [t for name, t in self.teachers.items() if not spec["teachers"] or name in spec["teachers"]]

    def cancel(self, job_id: str) -> dict[str, Any]:
        doc = self.get(job_id)
        if job_id in self.waiting:  # never started: nothing to stop
            self.waiting.remove(job_id)
            self.store.update("job", job_id, status="cancelled", finished_at=time.time())
        elif doc["status"] in OPEN:
            self.cancelled.add(job_id)
            self.store.update("job", job_id, status="cancelling")
            if task := self.tasks.get(job_id):
                task.cancel()
        return self.view(job_id)

    def resume_job(self, job_id: str) -> dict[str, Any]:
        """A stopped job, or one that failed for want of disk, descriptors or memory, runs again: its finished
        mistakes are skipped and its cached replies are free, as after a restart (nothing is paid twice)."""
        doc = self.get(job_id)
        if not (doc["status"] == "stopped" or doc["status"] == "failed" and doc.get("resumable")):
            raise ApiError(409, f"job {job_id} is {doc['status']}: only a stopped job, or one that failed for want "
                           "of disk, descriptors or memory, can be resumed", "job_id")
        previous = {k: doc["progress"].get(k, 0) for k in COUNTERS}
        self.store.update("job", job_id, status="queued", error=None, resumable=False, finished_at=None,
                          previous=previous)
        self.start(job_id)
        return self.view(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        if (doc := self.store.get("job", job_id)) is None:
            raise ApiError(404, f"no job {job_id!r}", "job_id")
        return doc

    def view(self, job_id: str) -> dict[str, Any]:
        """The job's document with live progress when it runs (the store's copy lags by up to a second)."""
        doc = self.get(job_id)
        if (live := self.live.get(job_id)) is not None:
            doc["progress"] = self.progress(live, doc["previous"], doc["spec"])
        return doc

    def folder(self, job_id: str) -> Path:
        self.get(job_id)
        return self.store.folder("job", job_id)

    # -- running -----------------------------------------------------------------------------------------

    def resume(self) -> list[str]:
        """At start-up: every job that was open when the server stopped runs again, oldest first (a cancelling
        one ends)."""
        resumed = []
        for doc in reversed(self.store.list("job", limit=1_000_000)[0]):
            if doc["status"] == "cancelling":
                self.store.update("job", doc["id"], status="cancelled", finished_at=time.time())
            elif doc["status"] in OPEN:
                previous = {k: doc["progress"].get(k, 0) for k in COUNTERS}
                self.store.update("job", doc["id"], previous=previous, restarts=doc["restarts"] + 1)
                self.start(doc["id"])
                resumed.append(doc["id"])
        return resumed

    def start(self, job_id: str) -> None:
        """Run the job now if fewer than max_running run, else once the jobs queued before it have started."""
        self.waiting.append(job_id)
        self.fill()

    def fill(self) -> None:
        while self.waiting and len(self.tasks) < self.max_running:
            job_id = self.waiting.popleft()
            self.tasks[job_id] = asyncio.get_running_loop().create_task(self.run(job_id), name=job_id)

    async def run(self, job_id: str) -> None:
        doc = self.store.update("job", job_id, status="in_progress")
        spec, folder = doc["spec"], self.store.folder("job", job_id)
        config = self.config(spec, folder)
        tenant = self.budget.tenant(job_id, spec["priority"])
        hooks = Hooks(
            admission=tenant,
            started=lambda repeated, clients: self.started(job_id, config, repeated, clients),
            written=lambda clients, written: self.written(job_id, written),
        )
        status, error, resumable = "completed", None, False
        try:
            # Here, where a failure ends the job: the server's committee file may have changed since the submit.
            teachers = config.sampled(self.chosen(spec))
            write_stats(config.out_path, await run_committee(config, teachers, hooks))
            write_paper_files(get_task(config.task), config.out_path, f"{STEM}_{get_task(config.task).name}")
        except RunStopped as stop:  # its budget reached, or a teacher out of quota: resumable, nothing lost
            write_stats(config.out_path, stop.result)
            status, error = "stopped", str(stop)
        except asyncio.CancelledError:
            if job_id not in self.cancelled:  # the server is stopping: the job stays open and resumes
                self.save(job_id)
                raise
            status = "cancelled"
        except Exception as e:  # noqa: BLE001 (one job's failure must not stop the server)
            status, error = "failed", self.error_line(e, folder)
            resumable = out_of_resources(e)
        finally:
            self.tasks.pop(job_id, None)
            tenant.close()
            self.fill()
        self.save(job_id, status=status, error=error, finished_at=time.time(), resumable=resumable)
        self.live.pop(job_id, None)

    def error_line(self, e: Exception, folder: Path) -> str:
        """The one line a failed job shows: its own files by name, the state folder as STATE, no server path."""
        line = str(e) if isinstance(e, FairError) else f"{type(e).__name__}: {e}"
        return line.replace(f"{folder}/", "").replace(str(self.store.root.resolve()), "STATE").replace(
            str(self.store.root), "STATE")

    def started(
        self, job_id: str, config: CommitteeConfig, repeated: int, clients: dict[str, TeacherClient]
    ) -> None:
        doc = self.get(job_id)
        # Over the run's own, which names this server's paths.
        save_config(self.shareable(doc["spec"]), config.out_path.with_name("committee.yaml"))
        self.live[job_id] = Live(
            clients,
            count_mistakes(config),
            skipped=len(finished_ids(config.out_path)),
        )
        self.store.update("job", job_id, repeated_after_restart=doc["repeated_after_restart"] + repeated)

    def written(self, job_id: str, written: int) -> None:
        live = self.live[job_id]
        live.written = written
        if time.monotonic() - live.saved >= SAVE_EVERY_S:
            self.save(job_id)

    def save(self, job_id: str, **changes: Any) -> None:
        if (live := self.live.get(job_id)) is not None:
            live.saved = time.monotonic()
            doc = self.get(job_id)
            changes["progress"] = self.progress(live, doc["previous"], doc["spec"])
        self.store.update("job", job_id, **changes)

    def progress(self, live: Live, previous: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        stats = [c.stats for c in live.clients.values()]
        counts = {k: previous.get(k, 0) + sum(getattr(s, k) for s in stats) for k in COUNTERS}
        counts["cost"] = round(counts["cost"], 10)
        done, seconds = live.skipped + live.written, time.monotonic() - live.started
        rate = live.written / seconds if seconds > 0 else 0.0
        return {
            "done": done,
            "total": live.total,
            **counts,
            "estimated_cost": round(counts["cost"] / done * live.total, 6) if done else None,
            "eta_s": round((live.total - done) / rate, 1) if rate > 0 else None,
            "max_cost_usd": spec["max_cost_usd"],
        }

    async def close(self) -> None:
        self.waiting.clear()  # queued in the store: they start at the next start, not as the running ones stop
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- helpers -----------------------------------------------------------------------------------------

    def config(self, spec: dict[str, Any], folder: Path) -> CommitteeConfig:
        return CommitteeConfig(
            task=spec["task"],
            mistakes=str(folder / "mistakes.jsonl"),
            out=str(folder / "committee.jsonl"),
            teachers=self.committee,
            **job_recipe(spec),
            window=spec["window"],
            limit=spec["limit"],
            max_cost_usd=spec["max_cost_usd"],
            progress=False,
        )

    def shareable(self, spec: dict[str, Any]) -> CommitteeConfig:
        """The job's settings as its committee.yaml tells them to whoever downloads it: its files by name (beside
        it), the server's committee by name and the server's base_url (where its teachers were sent), the job's
        priority, and no student (the server knows only the mistakes file)."""
        return dataclasses.replace(self.config(spec, Path()), student="unknown", teachers=Path(self.committee).name,
                                   base_url=self.base_url, priority=spec["priority"])

    def check_task(self, path: Path, config: CommitteeConfig) -> None:
        task = get_task(config.task).name
        for i, record in enumerate(read_jsonl(path)):
            if record.get("task") != task:
                raise ApiError(
                    400,
                    f"mistakes record {i}: task {record.get('task')!r}, but the job's task is {task!r}",
                    "task",
                )


def link(source: Path, target: Path) -> None:
    """The job's own copy of its mistakes file: a hard link where the file system allows one."""
    with contextlib.suppress(FileExistsError):
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
