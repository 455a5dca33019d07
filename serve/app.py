"""`fair serve`'s HTTP routes (FastAPI): OpenAI's files, batches and chat completions, committee jobs, the page.

    GET  /healthz                                   the only route without the bearer token
    GET  /                                          the page (serve/page.html); POST /login sets its cookie
    POST /v1/files  GET /v1/files[/{id}[/content]]  DELETE /v1/files/{id}
    POST /v1/batches  GET /v1/batches[/{id}]  POST /v1/batches/{id}/cancel
    POST /v1/chat/completions                       a teacher, through the shared gates and a cache; `stream: true`
                                                    as OpenAI's server-sent events (serve/chat.py)
    GET  /v1/models                                 the teachers
    POST /v1/fair/jobs  GET /v1/fair/jobs[/{id}]  POST /v1/fair/jobs/{id}/cancel  POST /v1/fair/jobs/{id}/resume
    GET  /v1/fair/jobs/{id}/events                  progress as server-sent events, until the job ends
    POST /v1/fair/estimate                          a job's spec: its cost and time before it runs (`fair estimate`)
    GET  /v1/fair/jobs/{id}/files[/{name}]          committee.jsonl, committee_stats.json, the paper's files
    GET  /v1/fair/jobs/{id}/records[/{n}]           committee.jsonl a page at a time, filtered (serve/reading.py)
    GET  /v1/fair/page                              what the page's forms offer (the committee, tasks, bounds)
    GET  /v1/fair/limits                            each gate: limits, use over the last minute, cool-down, 429s

Every body is capped by route before it is read (serve/limits.py). Auth (serve/auth.py) is a middleware, so that
it runs before anything reads a body: `Authorization: Bearer TOKEN`, or the page's session cookie (set by POST
/login; a change made with it must come from the page's own Origin). Errors are OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, whatever went wrong: a request the schema refuses is a 400 naming
the field, an unexpected error a 500 (a 503 when the process is out of descriptors or disk).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import re
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
import orjson
from fastapi import Body, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from fair.errors import FairError, out_of_resources
from fair.recipes import DEFAULT_FILTER, FILTERS, Filter
from fair.tasks import task_names
from fair.wire.batch import page, page_limit
from fair.wire.batch_api import MAX_FILES
from fair.wire.errors import ApiError
from gen.teachers.config import MAX_TEMPERATURE, Teacher
from gen.teachers.gates import gate_state
from serve import chat, uploads
from serve.auth import LOGIN, Auth, Sessions, cookie_name
from serve.batches import ServeFiles
from serve.budget import PRIORITY, Budget
from serve.config import ServeConfig, same_token
from serve.jobs import OPEN, Jobs
from serve.limits import CLOSE, BodyCap
from serve.reading import add_reading, job_run
from serve.store import Store

PAGE = Path(__file__).with_name("page.html")


class JobSpec(BaseModel):
    """A committee job; keys, base URLs and limits are the server's, so naming one is a 400 (extra fields)."""

    model_config = ConfigDict(extra="forbid")
    mistakes_file_id: str
    task: str = "svamp"
    teachers: list[str] | None = None  # a subset of the server's committee; default all
    prompts: Literal["fair", "paper"] = "fair"
    filter: Filter = DEFAULT_FILTER  # which rationales qualify (fair/recipes.py); gold and none send no review request
    samples: int = Field(1, ge=1, le=64)  # rationales per teacher and mistake
    # Every teacher's, over the server's YAML; each provider's own range is checked at submit (MAX_TEMPERATURE).
    teacher_temperature: float | None = Field(None, ge=0, le=max(MAX_TEMPERATURE.values()))
    threshold: float = Field(3.0, ge=1, le=5)
    window: int = Field(64, ge=1, le=4096)
    limit: int | None = Field(None, ge=1, le=2**53)  # the store keeps it as JSON (the page reads it too)
    priority: float = Field(1.0, ge=PRIORITY[0], le=PRIORITY[1])  # its weight in the shared gates' fair queues
    max_cost_usd: float | None = Field(None, gt=0)


class BatchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class Service:
    """What the routes share: the store, the budget, the jobs, the batches and the proxy's clients."""

    def __init__(self, config: ServeConfig, teachers: list[Teacher], token: str):
        self.config, self.token = config, token
        self.teachers = {t.name: t for t in teachers}

    async def start(self) -> None:
        """Everything that touches the state folder or the event loop: made when the app starts, not before."""
        self.store = Store(Path(self.config.state))
        self.budget = Budget(self.config.reserve)
        self.jobs = Jobs(self.store, self.budget, list(self.teachers.values()), self.config.teachers,
                         self.config.max_jobs, self.config.base_url)
        for path in self.store.sweep():
            print(f"fair serve: removed {path}, left without a record by the last stop", flush=True)
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=256))
        self.batches = ServeFiles(self.store, self.budget, list(self.teachers.values()), self.http,
                                  int(self.config.max_upload_mb * 2**20)).api
        interactive = self.budget.tenant("interactive", interactive=True)
        self.proxy = chat.Proxy(self.store.root / "proxy", self.teachers, self.http, interactive)
        jobs, batches = self.jobs.resume(), self.batches.resume()
        if jobs or batches:
            print(f"fair serve: resumed {len(jobs)} job(s) and {len(batches)} batch(es)", flush=True)

    async def stop(self) -> None:
        await self.jobs.close()
        await self.batches.close()
        await self.proxy.close()
        await self.http.aclose()
        self.store.close()


def make_app(config: ServeConfig, teachers: list[Teacher], token: str) -> FastAPI:
    service = Service(config, teachers, token)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.start()
        yield
        await service.stop()

    # No /docs or /redoc: they load unpinned JavaScript from a CDN into this authenticated origin. The schema
    # stays at /openapi.json, behind the token.
    app = FastAPI(title="fair serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    add_auth(app, service)
    app.add_middleware(BodyCap, max_upload=int(config.max_upload_mb * 2**20))  # outside auth: before any read
    add_errors(app)
    add_files(app, service)
    add_jobs(app, service)
    add_teachers(app, service)
    # service.jobs exists once the app starts
    add_reading(app, lambda job_id: job_run(service.jobs.folder(job_id), job_id), page_settings(teachers))
    return app


def page_settings(teachers: list[Teacher]) -> dict[str, Any]:
    """What the page's forms offer: this server's committee, the tasks, the job settings' choices and bounds."""
    return {
        "read_only": False,
        "teachers": [t.name for t in teachers],
        "tasks": task_names(),
        "prompts": list(get_args(JobSpec.model_fields["prompts"].annotation)),
        "filters": list(FILTERS),
        "default_filter": DEFAULT_FILTER,
        "priority": list(PRIORITY),
    }


@functools.cache
def page_headers() -> dict[str, str]:
    """The page's Content-Security-Policy: its own inline script and style (by their hashes) and requests to this
    server, nothing else. The page sets what it shows as text; this is the second wall: markup that ever slipped
    into it (a teacher's reply) would run nothing, load nothing and send nothing elsewhere. No site may frame it."""
    html = PAGE.read_text()

    def digest(tag: str) -> str:
        text = re.search(f"^<{tag}>(.*?)</{tag}>", html, re.DOTALL | re.MULTILINE).group(1)  # the element
        return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"

    policy = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
              "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def add_auth(app: FastAPI, service: Service) -> None:
    sessions = Sessions()
    app.add_middleware(Auth, token=service.token, sessions=sessions)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/login", include_in_schema=False)
    async def login(request: Request, token: str = Form("")) -> Response:
        if not same_token(token, service.token):
            return HTMLResponse(LOGIN, status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(cookie_name(request.scope), sessions.open(), httponly=True, samesite="strict")
        return response

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html", headers=page_headers())


def add_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=CLOSE if e.close else None)

    @app.exception_handler(FairError)
    async def fair_error(_: Request, e: FairError) -> JSONResponse:
        return JSONResponse(ApiError(400, str(e)).body(), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = f"{where}: {first.get('msg', 'invalid')}"
        if first.get("type") == "extra_forbidden":
            message = f"{where}: not a setting of this route (keys, base URLs and limits are the server's)"
        return JSONResponse(ApiError(400, message, where).body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception) -> JSONResponse:
        # Never the exception's text, which may name server paths; Starlette re-raises it to the log after.
        if out_of_resources(e):
            error = ApiError(503, "the server is short of file descriptors or disk space: retry later",
                             code="server_busy")
            return JSONResponse(error.body(), status_code=503, headers={"Retry-After": "5"})
        error = ApiError(500, "an unexpected error in the server (its log has the details)", code="server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(e.status_code, str(e.detail)).body(), status_code=e.status_code,
                            headers=e.headers)


UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(uploads.PURPOSES)},
                    },
                }
            }
        },
    }
}


def add_files(app: FastAPI, service: Service) -> None:
    """OpenAI's Files and Batch API: fair/wire/batch_api.py's routes, with this app's schema and auth around."""

    @app.post("/v1/files", openapi_extra=UPLOAD_SCHEMA)
    async def upload(request: Request) -> dict[str, Any]:
        return await service.batches.upload(request.stream(), request.headers.get("content-type", ""))

    @app.get("/v1/files")
    async def list_files(limit: int = MAX_FILES, after: str | None = None) -> dict[str, Any]:
        return service.batches.list_files(limit, after)

    @app.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str) -> dict[str, Any]:
        return service.batches.retrieve_file(file_id)

    @app.get("/v1/files/{file_id}/content", response_class=FileResponse)
    async def file_content(file_id: str) -> Response:
        return service.batches.content(file_id)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> dict[str, Any]:
        return service.batches.delete_file(file_id)

    @app.post("/v1/batches")
    async def create_batch(spec: BatchSpec) -> dict[str, Any]:
        return service.batches.create(spec.model_dump())

    @app.get("/v1/batches")
    async def list_batches(limit: int = 20, after: str | None = None) -> dict[str, Any]:
        return service.batches.list_batches(limit, after)

    @app.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str) -> dict[str, Any]:
        return service.batches.retrieve(batch_id)

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> dict[str, Any]:
        return service.batches.cancel(batch_id)


def add_jobs(app: FastAPI, service: Service) -> None:

    @app.post("/v1/fair/jobs")
    async def submit_job(spec: JobSpec) -> dict[str, Any]:
        return await service.jobs.submit(spec.model_dump())

    @app.get("/v1/fair/jobs")
    async def list_jobs(limit: int = 20, after: str | None = None) -> dict[str, Any]:
        items, more = service.store.list("job", page_limit(limit), after)
        return page([service.jobs.view(d["id"]) for d in items], more)

    @app.get("/v1/fair/jobs/{job_id}")
    async def retrieve_job(job_id: str) -> dict[str, Any]:
        return service.jobs.view(job_id)

    @app.post("/v1/fair/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        return service.jobs.cancel(job_id)

    @app.post("/v1/fair/jobs/{job_id}/resume")
    async def resume_job(job_id: str) -> dict[str, Any]:
        return service.jobs.resume_job(job_id)

    @app.get("/v1/fair/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request) -> EventSourceResponse:
        service.jobs.get(job_id)  # a 404 before the stream starts

        async def events():
            last = None
            while not await request.is_disconnected():
                doc = service.jobs.view(job_id)
                if (data := orjson.dumps(doc).decode()) != last:
                    last = data
                    yield {"event": "progress", "data": data}
                if doc["status"] not in OPEN:
                    yield {"event": "end", "data": data}
                    return
                await asyncio.sleep(0.5)

        return EventSourceResponse(events())

    @app.post("/v1/fair/estimate")
    async def estimate_job(spec: JobSpec) -> dict[str, Any]:
        """What the job would cost and how long it would take (`fair estimate`), before it is submitted."""
        return await service.jobs.estimate(spec.model_dump())


def add_teachers(app: FastAPI, service: Service) -> None:
    @app.post("/v1/chat/completions", response_model=None, openapi_extra=chat.openapi(service.teachers))
    async def chat_completions(request: Request, body: Any = Body(...)) -> dict[str, Any] | Response:  # noqa: B008
        return await service.proxy.answer(body, request.is_disconnected)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": t.provider}
                for n, t in service.teachers.items()
            ],
        }

    @app.get("/v1/fair/limits")
    async def limits() -> dict[str, Any]:
        return {
            "reserve": service.config.reserve,
            "gates": [g for t in service.teachers.values() for g in gate_state(t)],
        }
