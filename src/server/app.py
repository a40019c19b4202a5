"""The runbus HTTP API: ingest, query and files over a :class:`~server.store.Store`.

``make_app(store, data_dir=..., limits=...)`` builds the aiohttp application;
``server.main`` runs it. Every response body is JSON encoded with
``pipeline.jsoncodec`` (NaN and infinities as ``{"$nf": "NaN"}`` tags); every
error is ``{"error": {"code": ..., "message": ...}}``. Endpoints are listed in
docs/server-api.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from pipeline import jsoncodec

from .auth import KeyRing, Principal, Right
from .files import FileStorage, StoredFileNotFoundError, UnsafePathError, check_segment
from .files import parse_raw_path as parse_file_path
from .store import RunNotFoundError, RunRecord, SeqGapError, Series, Store, StoreError

COOKIE = "runbus_key"
API = "/api/v1"


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits; exceeding one is answered 413 naming it."""

    max_body_bytes: int = 32 * 1024 * 1024  # an events batch, after decompression
    max_batch_events: int = 10_000
    max_file_bytes: int = 1024 * 1024 * 1024
    max_page: int = 1000  # runs per page
    max_output_page: int = 10_000
    max_buckets: int = 10_000


STORE_KEY = web.AppKey("store", Store)
KEYS_KEY = web.AppKey("keys", KeyRing)
FILES_KEY = web.AppKey("files", FileStorage)
LIMITS_KEY = web.AppKey("limits", Limits)
PRINCIPAL_KEY = web.RequestKey("principal", Principal)


class ApiError(web.HTTPException):
    """An error answered as JSON ``{"error": {"code", "message", ...extra}}``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        self.status_code = status
        body = {"error": {"code": code, "message": message, **extra}}
        super().__init__(text=jsoncodec.dumps(body).decode(), content_type="application/json")


def json_response(obj: Any, status: int = 200) -> web.Response:
    """A JSON response with non-finite floats tagged."""
    return web.Response(body=jsoncodec.dumps(obj), status=status, content_type="application/json")


# ------------------------------------------------------------------ middleware

_PUBLIC = {f"{API}/health", "/login"}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into the JSON error shape."""
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPRedirection:
        raise
    except web.HTTPException as e:
        # aiohttp's own (404 no route, 405 method, 413 from its reader): same shape.
        code = re.sub(r"[^a-z]+", "_", (e.reason or "error").lower()).strip("_")
        raise ApiError(e.status, code, f"{e.reason}: {request.method} {request.path}") from e
    except UnsafePathError as e:
        raise ApiError(400, "unsafe_path", f"{e}; use a plain relative path") from e
    except RunNotFoundError as e:
        raise ApiError(404, "run_not_found", str(e)) from e
    except StoreError as e:
        raise ApiError(500, "store_error", f"{e}; retry later or check the server log") from e


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Require a valid key (Bearer header or login cookie) everywhere but health/login."""
    if request.path in _PUBLIC:
        return await handler(request)
    key = None
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        key = header[7:].strip()
    elif COOKIE in request.cookies:
        key = request.cookies[COOKIE]
    if not key:
        raise ApiError(
            401,
            "unauthenticated",
            "no API key; send 'Authorization: Bearer <key>' or open the login URL",
        )
    principal = request.app[KEYS_KEY].lookup(key)
    if principal is None:
        raise ApiError(401, "bad_key", "the API key is not known to this server; check it")
    request[PRINCIPAL_KEY] = principal
    return await handler(request)


def require(request: web.Request, project: str, right: Right) -> str:
    """Check the request's key on ``project``; return the project name."""
    principal = request[PRINCIPAL_KEY]
    if not principal.can(project, right):
        if right == "write" and principal.can(project, "read"):
            raise ApiError(
                403, "read_only", f"this key may only read project {project!r}; use a write key"
            )
        raise ApiError(403, "forbidden", f"this key has no rights on project {project!r}")
    return project


def _project(request: web.Request, right: Right) -> str:
    return require(request, request.match_info["project"], right)


# ------------------------------------------------------------------ helpers


def run_json(r: RunRecord) -> dict[str, Any]:
    """A run as the API returns it (the dataclass fields, plus ``id``)."""
    d = dataclasses.asdict(r)
    d["id"] = r.run_id
    return d


def series_json(s: Series) -> dict[str, Any]:
    """A series as the API returns it."""
    return dataclasses.asdict(s)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The (already decompressed) body, refused with 413 past ``limit`` bytes.

    aiohttp undoes ``Content-Encoding: gzip`` while streaming, so counting the
    stream's bytes bounds the decompressed size (a gzip bomb stops at the limit).
    """
    if (
        request.content_length is not None
        and request.content_length > limit
        and ("Content-Encoding" not in request.headers)
    ):
        raise _too_large("max_body_bytes", limit)
    return b"".join([chunk async for chunk in _chunks(request, limit, "max_body_bytes")])


async def _chunks(request: web.Request, limit: int, name: str) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; 413 naming ``name`` once past ``limit`` bytes."""
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return
        size += len(chunk)
        if size > limit:
            raise _too_large(name, limit)
        yield chunk


def _too_large(limit_name: str, limit: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"request exceeds {limit_name}={limit}; split it into smaller requests",
        limit=limit_name,
        max=limit,
    )


def _json_body(raw: bytes) -> Any:
    try:
        return jsoncodec.loads(raw) if raw else {}
    except orjson.JSONDecodeError as e:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {e}") from e


def _int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError as e:
        raise ApiError(400, "bad_param", f"{name}={raw!r} is not an integer") from e
    if not lo <= v <= hi:
        raise ApiError(400, "bad_param", f"{name}={v} is outside {lo}..{hi}")
    return v


def _float(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError as e:
        raise ApiError(400, "bad_param", f"{name}={raw!r} is not a number") from e


def _list(request: web.Request, name: str, *, required: bool) -> list[str]:
    items = [s for raw in request.query.getall(name, []) for s in raw.split(",") if s]
    if required and not items:
        raise ApiError(400, "bad_param", f"{name} is required (a comma list)")
    return items


_FILTER = re.compile(r"^([A-Za-z_][\w./-]*?)(>=|<=|!=|=|<|>|~)(.*)$", re.S)


def parse_filter(raw: str) -> tuple[str, str, Any]:
    """``field OP value`` with OP one of ``= != < <= > >= ~`` (``~`` is contains).

    The value is JSON when it parses (numbers, true, false, null, "quoted"),
    else the text itself.
    """
    m = _FILTER.match(raw)
    if m is None:
        raise ApiError(
            400, "bad_filter", f"filter {raw!r} is not 'field OP value' (OP: = != < <= > >= ~)"
        )
    field, op, text = m.groups()
    try:
        value: Any = jsoncodec.loads(text)
        if isinstance(value, dict | list):
            value = text
    except orjson.JSONDecodeError:
        value = text
    return field, "contains" if op == "~" else op, value


# ------------------------------------------------------------------ handlers


async def health(request: web.Request) -> web.Response:
    """Liveness: no auth, no store access."""
    return json_response({"ok": True})


async def login(request: web.Request) -> web.Response:
    """Exchange ``?token=<key>`` for an HttpOnly, SameSite=Strict cookie; redirect to /."""
    token = request.query.get("token", "")
    if not token or request.app[KEYS_KEY].lookup(token) is None:
        raise ApiError(401, "bad_key", "the login token is missing or unknown; check the URL")
    resp = web.HTTPFound("/")
    resp.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=request.secure,
        max_age=30 * 24 * 3600,
    )
    raise resp


async def root(request: web.Request) -> web.Response:
    """Who the key is (the web UI will live here)."""
    p = request[PRINCIPAL_KEY]
    return json_response({"key_id": p.key_id, "admin": p.admin, "projects": p.projects})


async def list_projects(request: web.Request) -> web.Response:
    """Projects the key can read."""
    p = request[PRINCIPAL_KEY]
    projects = await request.app[STORE_KEY].list_projects()
    return json_response(
        {"projects": [dataclasses.asdict(x) for x in projects if p.can_see(x.name)]}
    )


async def create_run(request: web.Request) -> web.Response:
    """Create or resume a run."""
    project = check_segment(_project(request, "write"), "project")
    body = _json_body(await read_body(request, request.app[LIMITS_KEY].max_body_bytes))
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    run_id = body.get("id") or secrets.token_hex(4)
    if not isinstance(run_id, str):
        raise ApiError(400, "bad_request", "id must be a string")
    check_segment(run_id, "run id")
    fields: dict[str, Any] = {}
    for name, types in (
        ("name", str),
        ("group", str),
        ("notes", str),
        ("config", dict),
        ("metadata", dict),
        ("tags", list),
    ):
        v = body.get(name)
        if v is not None and not isinstance(v, types):
            raise ApiError(400, "bad_request", f"{name} must be a {types.__name__} or null")
        fields[name] = v
    try:
        rec = await request.app[STORE_KEY].upsert_run(project, run_id, **fields)
    except ValueError as e:
        raise ApiError(400, "bad_request", str(e)) from e
    return json_response(run_json(rec))


async def append_events(request: web.Request) -> web.Response:
    """Append a batch of ``[kind, seq, ts, body]`` events; idempotent by seq."""
    project = _project(request, "write")
    run_id = request.match_info["run_id"]
    limits = request.app[LIMITS_KEY]
    body = _json_body(await read_body(request, limits.max_body_bytes))
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list):
        raise ApiError(400, "bad_request", 'body must be {"events": [[kind, seq, ts, body], ...]}')
    if len(events) > limits.max_batch_events:
        raise _too_large("max_batch_events", limits.max_batch_events)
    batch: list[tuple[str, int, float, Any]] = []
    for i, ev in enumerate(events):
        if (
            not isinstance(ev, list)
            or len(ev) != 4
            or not isinstance(ev[0], str)
            or type(ev[1]) is not int
            or type(ev[2]) not in (int, float)
        ):
            raise ApiError(
                400, "bad_event", f"event {i} is not [kind: str, seq: int, ts: number, body]"
            )
        batch.append((ev[0], ev[1], float(ev[2]), ev[3]))
    try:
        last = await request.app[STORE_KEY].append_events(project, run_id, batch)
    except SeqGapError as e:
        raise ApiError(409, "seq_gap", str(e), expected=e.expected) from e
    except RunNotFoundError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ApiError(400, "bad_event", f"events rejected: {e}") from e
    return json_response({"last_seq": last})


async def last_seq(request: web.Request) -> web.Response:
    """The highest stored seq of a run (0 if unknown): where a client resumes."""
    project = _project(request, "read")
    return json_response(
        {"last_seq": await request.app[STORE_KEY].last_seq(project, request.match_info["run_id"])}
    )


async def list_runs(request: web.Request) -> web.Response:
    """A page of a project's runs, filtered and sorted."""
    project = _project(request, "read")
    lim = request.app[LIMITS_KEY]
    filters = [parse_filter(f) for f in request.query.getall("filter", [])]
    try:
        runs, total = await request.app[STORE_KEY].list_runs(
            project,
            filters=filters,
            sort=request.query.get("sort", "-created"),
            limit=_int(request, "limit", 50, 1, lim.max_page) or 50,
            offset=_int(request, "offset", 0, 0, 2**31) or 0,
        )
    except ValueError as e:
        raise ApiError(400, "bad_query", str(e)) from e
    return json_response({"runs": [run_json(r) for r in runs], "total": total})


async def get_run(request: web.Request) -> web.Response:
    """One run."""
    project = _project(request, "read")
    run_id = request.match_info["run_id"]
    rec = await request.app[STORE_KEY].get_run(project, run_id)
    if rec is None:
        raise ApiError(404, "run_not_found", f"run {project}/{run_id} does not exist")
    return json_response(run_json(rec))


async def _series(request: web.Request, run_ids: list[str], source: str) -> web.Response:
    project = _project(request, "read")
    lim = request.app[LIMITS_KEY]
    try:
        result = await request.app[STORE_KEY].history(
            project,
            run_ids,
            _list(request, "keys", required=True),
            x=request.query.get("x", "_step"),
            buckets=_int(request, "buckets", 1000, 1, lim.max_buckets) or 1000,
            x_min=_float(request, "x_min"),
            x_max=_float(request, "x_max"),
            after=_int(request, "after", None, -(2**62), 2**62),
            source="system" if source == "system" else "history",
        )
    except ValueError as e:
        raise ApiError(400, "bad_query", str(e)) from e
    return json_response({"series": [series_json(s) for s in result.values()]})


async def run_history(request: web.Request) -> web.Response:
    """History series of one run."""
    return await _series(request, [request.match_info["run_id"]], "history")


async def run_system(request: web.Request) -> web.Response:
    """System metric series of one run."""
    return await _series(request, [request.match_info["run_id"]], "system")


async def project_history(request: web.Request) -> web.Response:
    """History series of several runs (``runs=id1,id2``)."""
    return await _series(request, _list(request, "runs", required=True), "history")


async def project_system(request: web.Request) -> web.Response:
    """System series of several runs."""
    return await _series(request, _list(request, "runs", required=True), "system")


async def output(request: web.Request) -> web.Response:
    """Console lines after ``after_line``; ``next`` is the cursor to pass back."""
    project = _project(request, "read")
    lim = request.app[LIMITS_KEY]
    after = _int(request, "after_line", 0, 0, 2**62) or 0
    lines = await request.app[STORE_KEY].output(
        project,
        request.match_info["run_id"],
        after_line=after,
        limit=_int(request, "limit", 1000, 1, lim.max_output_page) or 1000,
    )
    return json_response(
        {
            "lines": [dataclasses.asdict(x) for x in lines],
            "next": lines[-1].line_no if lines else after,
        }
    )


async def list_files(request: web.Request) -> web.Response:
    """Files the run reported (``file`` events); ``stored`` says whether bytes were uploaded."""
    project = _project(request, "read")
    run_id = request.match_info["run_id"]
    records = await request.app[STORE_KEY].files(project, run_id)
    storage = request.app[FILES_KEY]

    def stored() -> list[bool]:
        return [storage.exists(project, run_id, f.path) for f in records]

    flags = await asyncio.to_thread(stored)
    return json_response(
        {
            "files": [
                dataclasses.asdict(f) | {"stored": s} for f, s in zip(records, flags, strict=True)
            ]
        }
    )


def _file_path(request: web.Request) -> list[str]:
    """The file path from the *raw* URL, so encoded separators are seen, not decoded away."""
    raw = request.raw_path.split("?", 1)[0]
    marker = "/files/"
    i = raw.find(marker, len(f"{API}/projects/"))
    if i < 0:
        raise ApiError(400, "unsafe_path", "missing file path")
    return parse_file_path(raw[i + len(marker) :])


async def put_file(request: web.Request) -> web.Response:
    """Store the raw body as a run file; the server chooses the location."""
    project = _project(request, "write")
    run_id = request.match_info["run_id"]
    path = _file_path(request)
    limit = request.app[LIMITS_KEY].max_file_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large("max_file_bytes", limit)
    if await request.app[STORE_KEY].get_run(project, run_id) is None:
        raise ApiError(404, "run_not_found", f"run {project}/{run_id} does not exist; create it")
    storage = request.app[FILES_KEY]
    dfd, ffd, tmp = await asyncio.to_thread(storage.open_temp, project, run_id, path)
    h = hashlib.sha256()
    size = 0
    try:
        async for chunk in _chunks(request, limit, "max_file_bytes"):
            size += len(chunk)
            h.update(chunk)
            await asyncio.to_thread(storage.write, ffd, chunk)
    except BaseException:
        await asyncio.to_thread(storage.abort, dfd, ffd, tmp)
        raise
    await asyncio.to_thread(storage.commit, dfd, ffd, tmp, path[-1])
    return json_response({"path": "/".join(path), "size": size, "sha256": h.hexdigest()})


async def get_file(request: web.Request) -> web.Response:
    """Download a stored run file."""
    project = _project(request, "read")
    run_id = request.match_info["run_id"]
    path = _file_path(request)
    try:
        data = await asyncio.to_thread(request.app[FILES_KEY].read, project, run_id, path)
    except StoredFileNotFoundError as e:
        raise ApiError(
            404, "file_not_found", f"no bytes stored for {'/'.join(path)!r}; upload it first"
        ) from e
    return web.Response(body=data, content_type="application/octet-stream")


# ------------------------------------------------------------------ factory


def make_app(
    store: Store, *, data_dir: Path | str, limits: Limits | None = None
) -> web.Application:
    """The aiohttp application over ``store``, keeping keys and files under ``data_dir``.

    The store is not closed with the app: whoever opened it closes it.
    """
    data_dir = Path(data_dir)
    limits = limits or Limits()
    # Our own readers enforce the limits (with a JSON 413); aiohttp's limit only
    # backs them up for handlers that call request.read().
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=max(limits.max_body_bytes, 1024),
    )
    app[STORE_KEY] = store
    app[KEYS_KEY] = KeyRing(data_dir)
    app[FILES_KEY] = FileStorage(data_dir)
    app[LIMITS_KEY] = limits
    r = app.router
    r.add_get(f"{API}/health", health)
    r.add_get("/login", login)
    r.add_get("/", root)
    r.add_get(f"{API}/projects", list_projects)
    base = f"{API}/projects/{{project}}"
    run = f"{base}/runs/{{run_id}}"
    r.add_post(f"{base}/runs", create_run)
    r.add_get(f"{base}/runs", list_runs)
    r.add_get(f"{base}/history", project_history)
    r.add_get(f"{base}/system", project_system)
    r.add_get(run, get_run)
    r.add_post(f"{run}/events", append_events)
    r.add_get(f"{run}/last_seq", last_seq)
    r.add_get(f"{run}/history", run_history)
    r.add_get(f"{run}/system", run_system)
    r.add_get(f"{run}/output", output)
    r.add_get(f"{run}/files", list_files)
    r.add_put(f"{run}/files/{{path:.+}}", put_file)
    r.add_get(f"{run}/files/{{path:.+}}", get_file)
    return app
