"""The runbus HTTP API: ingest, query and files over a :class:`~server.store.Store`.

``make_app(store, data_dir=..., limits=...)`` builds the aiohttp application;
``server.main`` runs it. Every response body is JSON encoded with
``pipeline.jsoncodec`` (NaN and infinities as ``{"$nf": "NaN"}`` tags); every
error is ``{"error": {"code": ..., "message": ...}}``. Endpoints are listed in
docs/server-api.md and described for tools in docs/openapi.yaml (served at
``GET /api/v1/openapi.yaml``; keep it in step with the routes here, which
tests/server/test_openapi.py checks).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import mimetypes
import re
import secrets
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import orjson
from aiohttp import web

from pipeline import jsoncodec

from .auth import KeyInputError, KeyNotFoundError, Keys, LastAdminKeyError, Principal, Right
from .files import FileStorage, StoredFileNotFoundError, UnsafePathError, check_segment
from .files import parse_raw_path as parse_file_path
from .openapi import PATH as OPENAPI_PATH
from .openapi import add_route as add_openapi_route
from .store import RunNotFoundError, RunRecord, SeqGapError, Series, Store, StoreError
from .ui import add_routes as add_ui_routes
from .ui import is_public as is_ui_path

log = logging.getLogger(__name__)

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
    max_values_page: int = 10_000


STORE_KEY = web.AppKey("store", Store)
KEYS_KEY = web.AppKey("keys", Keys)
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
    """A JSON response with non-finite floats tagged (gzipped by :func:`gzip_middleware`)."""
    body = jsoncodec.dumps(obj)
    return web.Response(body=body, status=status, content_type="application/json")


#: JSON bodies at least this big are gzipped for clients that accept it.
GZIP_MIN_BYTES = 1024
# Past this, compressing would hold the event loop for milliseconds: a thread does it.
_GZIP_INLINE_MAX = 256 * 1024


def _gzip(body: bytes) -> bytes:
    # Level 1: number text still shrinks 5-6x (series repeat their values across
    # first/min/max/last when raw), at several times the speed of aiohttp's
    # default level 6, which made a 20,000-point fetch 5x slower than unzipped.
    return zlib.compress(body, 1, wbits=31)


@web.middleware
async def gzip_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Gzip JSON answers of :data:`GZIP_MIN_BYTES` or more when the client accepts gzip."""
    resp = await handler(request)
    if (
        type(resp) is web.Response
        and resp.content_type == "application/json"
        and isinstance(resp.body, bytes)
        and len(resp.body) >= GZIP_MIN_BYTES
        and "Content-Encoding" not in resp.headers
        and "gzip" in request.headers.get("Accept-Encoding", "")
    ):
        body = resp.body
        if len(body) > _GZIP_INLINE_MAX:
            packed = await asyncio.get_running_loop().run_in_executor(None, _gzip, body)
        else:
            packed = _gzip(body)
        resp.body = packed
        resp.headers["Content-Encoding"] = "gzip"
        resp.headers["Vary"] = "Accept-Encoding"
    return resp


# ------------------------------------------------------------------ middleware

_PUBLIC = {f"{API}/health", "/login", OPENAPI_PATH}


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
        err = ApiError(e.status, code, f"{e.reason}: {request.method} {request.path}")
        if "Allow" in e.headers:
            # A 405 must say which methods the resource has (RFC 9110).
            err.headers["Allow"] = e.headers["Allow"]
        raise err from e
    except UnsafePathError as e:
        raise ApiError(400, "unsafe_path", f"{e}; use a plain relative path") from e
    except RunNotFoundError as e:
        raise ApiError(404, "run_not_found", str(e)) from e
    except StoreError as e:
        raise ApiError(500, "store_error", f"{e}; retry later or check the server log") from e
    except Exception as e:
        # A bug, not the client's doing: still the JSON error shape, and logged.
        log.exception("unhandled error on %s %s", request.method, request.path)
        raise ApiError(
            500, "internal_error", "the server failed on this request; see its log"
        ) from e


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Require a valid key (Bearer header or login cookie) everywhere but health, login
    and the web UI's own files (which hold nothing secret)."""
    if request.path in _PUBLIC or is_ui_path(request.path):
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
    principal = await request.app[KEYS_KEY].lookup(key)
    if principal is None:
        raise ApiError(
            401, "bad_key", "the API key is unknown to this server or was revoked; check it"
        )
    request[PRINCIPAL_KEY] = principal
    return await handler(request)


_NUL_MESSAGE = "contains a NUL character (U+0000), which the server cannot store; remove it"


@web.middleware
async def nul_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse NUL characters in path parameters and the query with 400 ``nul_character``.

    PostgreSQL cannot hold U+0000 in text or JSON while SQLite can: refusing it
    here keeps both stores answering alike, and never with a 500. JSON bodies
    keep their data instead, with U+FFFD in its place (see :func:`_without_nul`).
    """
    for name, value in request.match_info.items():
        if "\0" in value:
            raise ApiError(400, "nul_character", f"path parameter {name!r} {_NUL_MESSAGE}")
    for name, value in request.query.items():
        if "\0" in name or "\0" in value:
            raise ApiError(400, "nul_character", f"query parameter {name!r} {_NUL_MESSAGE}")
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
    # Shallow: dataclasses.asdict deep-copies every element of the arrays, which
    # made a 20,000-point raw series cost ~100 ms before a byte was sent.
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}


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


def _json_body(raw: bytes, *, untag: bool = True) -> Any:
    try:
        body = (jsoncodec.loads if untag else jsoncodec.loads_fast)(raw) if raw else {}
    except orjson.JSONDecodeError as e:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {e}") from e
    # JSON spells NUL only as this escape: the scan for it costs nothing on clean bodies.
    if b"\\u0000" in raw:
        body = _without_nul(body)
    return body


def _without_nul(obj: Any) -> Any:
    """``obj`` with every NUL in a string or object key replaced by U+FFFD.

    PostgreSQL cannot store U+0000. Refusing the body would stop an online run's
    upload for good over one stray byte of console output, so bodies keep every
    event and lose only the NUL itself; identifiers in the path and the query,
    which name things, are refused instead (see :func:`nul_middleware`).
    """
    if isinstance(obj, str):
        return obj.replace("\0", "\ufffd")
    if isinstance(obj, dict):
        return {k.replace("\0", "\ufffd"): _without_nul(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_without_nul(v) for v in obj]
    return obj


def _param(request: web.Request, name: str) -> str | None:
    """The one value of query parameter ``name`` (None when absent); 400 when repeated."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(
            400, "bad_param", f"{name} is given {len(values)} times; send it at most once"
        )
    return values[0] if values else None


def _int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = _param(request, name)
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
    raw = _param(request, name)
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


def _is_https(request: web.Request) -> bool:
    """Whether the client reached us over HTTPS, directly or through a TLS-terminating proxy.

    ``X-Forwarded-Proto`` is trusted from anyone: it only decides the Secure
    flag of the cookie sent back to the same client, so faking it changes
    nothing but the faker's own cookie.
    """
    if request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "")
    return proto.split(",")[0].strip().lower() == "https"


async def login(request: web.Request) -> web.Response:
    """Exchange a key for an HttpOnly, SameSite=Strict cookie; redirect to /.

    ``GET /login?token=<key>`` is the link ``runbus server`` prints; the UI's
    login form sends ``POST /login`` with a form field ``token``, which keeps
    the key out of the address bar and the history.
    """
    if request.method == "POST":
        try:
            form = await request.post()
        except ValueError as e:  # e.g. multipart without a boundary
            raise ApiError(
                400, "bad_request", f"the login form is malformed ({e}); send a urlencoded form"
            ) from e
        token = str(form.get("token", "")).strip()
        resp: web.HTTPFound | web.HTTPSeeOther = web.HTTPSeeOther("/")
    else:
        token = request.query.get("token", "")
        resp = web.HTTPFound("/")
    if not token or await request.app[KEYS_KEY].lookup(token) is None:
        raise ApiError(401, "bad_key", "the login token is missing or unknown; check the key")
    resp.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=_is_https(request),
        max_age=30 * 24 * 3600,
    )
    raise resp


async def whoami(request: web.Request) -> web.Response:
    """Who the key is: its id, whether it is admin, its projects and rights."""
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
    run_id = body.get("id")
    if run_id is None or run_id == "":
        run_id = secrets.token_hex(4)
    elif not isinstance(run_id, str):
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


_INT64_MAX = 2**63 - 1
_INT32 = (-(2**31), 2**31 - 1)
_NUMBER = (int, float)
#: A body field's accepted types, whether it is required, and an integer range.
_Field: TypeAlias = tuple[tuple[type, ...], bool, tuple[int, int] | None]
# What the store reads from each known kind's body: field -> (types, required,
# integer range). Checked here so that a body the store cannot use is a 400
# naming the field, never an AttributeError or a database overflow (500).
# Kinds not listed (``refused``, kinds of newer clients) only refresh the heartbeat.
_ROW: dict[str, _Field] = {
    "step": ((int,), True, (0, _INT64_MAX)),
    "runtime": ((*_NUMBER, type(None)), False, None),
    "data": ((dict,), True, None),
}
_VALUES: dict[str, _Field] = {"values": ((dict,), True, None)}
_EVENT_BODIES: dict[str, dict[str, _Field]] = {
    "row": _ROW,
    "partial": _ROW,
    "stats": {**_VALUES, "runtime": _ROW["runtime"]},
    "config": _VALUES,
    "summary": _VALUES,
    "metadata": _VALUES,
    "summary_set": {**_VALUES, "deleted": ((list, type(None)), False, None)},
    "metric": {"name": ((str,), True, None)},
    "output": {"stream": ((str,), False, None), "text": ((str,), False, None)},
    "file": {
        "path": ((str,), True, None),
        "sha256": ((str,), True, None),
        "size": ((int,), True, (0, _INT64_MAX)),
    },
    "finish": {"exit_code": ((int,), False, _INT32)},
}


def _integral(v: Any) -> int | None:
    """``v`` as an int when it is a whole number (JSON's ``3.0`` is 3), else None; never a bool."""
    if type(v) is int:
        return v
    if type(v) is float and v.is_integer():
        return int(v)
    return None


def check_event(i: int, ev: Any) -> tuple[str, int, float, Any]:
    """Event ``i`` of a batch as ``(kind, seq, ts, body)``; 400 ``bad_event`` naming the fault."""
    seq = _integral(ev[1]) if isinstance(ev, list) and len(ev) == 4 else None
    if seq is None or not isinstance(ev[0], str) or type(ev[2]) not in _NUMBER:
        raise ApiError(
            400, "bad_event", f"event {i} is not [kind: str, seq: int, ts: number, body]"
        )
    kind, _, ts, body = ev
    if not kind:
        raise ApiError(400, "bad_event", f"event {i}: the kind is empty")
    if not 1 <= seq <= _INT64_MAX:
        raise ApiError(400, "bad_event", f"event {i}: seq {seq} is outside 1..{_INT64_MAX}")
    if not math.isfinite(ts):
        raise ApiError(400, "bad_event", f"event {i}: ts must be a finite number of seconds")
    if not isinstance(body, dict):
        raise ApiError(400, "bad_event", f"event {i} ({kind}): the body must be an object")
    for name, (types, required, bounds) in _EVENT_BODIES.get(kind, {}).items():
        if name not in body:
            if required:
                raise ApiError(400, "bad_event", f"event {i} ({kind}): body.{name} is missing")
            continue
        v = body[name]
        if int in types and _integral(v) is not None:
            v = body[name] = _integral(v)
        # bool is an int to isinstance, never a valid number here.
        if isinstance(v, bool) or not isinstance(v, types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ApiError(
                400,
                "bad_event",
                f"event {i} ({kind}): body.{name} must be {wanted}, got {type(v).__name__}",
            )
        if isinstance(v, float) and not math.isfinite(v):
            raise ApiError(400, "bad_event", f"event {i} ({kind}): body.{name} must be finite")
        if bounds is not None and isinstance(v, int) and not bounds[0] <= v <= bounds[1]:
            raise ApiError(
                400,
                "bad_event",
                f"event {i} ({kind}): body.{name}={v} is outside {bounds[0]}..{bounds[1]}",
            )
    return kind, seq, float(ts), body


async def append_events(request: web.Request) -> web.Response:
    """Append a batch of ``[kind, seq, ts, body]`` events; idempotent by seq."""
    project = _project(request, "write")
    run_id = request.match_info["run_id"]
    limits = request.app[LIMITS_KEY]
    # Tags stay undecoded: the store turns a tagged number back into its float
    # and writes JSON columns with the same tags, and walking a 10,000-value
    # batch to untag it cost ~4 ms, a tenth of its whole ingest time.
    body = _json_body(await read_body(request, limits.max_body_bytes), untag=False)
    events = body.get("events") if isinstance(body, dict) else None
    if not isinstance(events, list):
        raise ApiError(400, "bad_request", 'body must be {"events": [[kind, seq, ts, body], ...]}')
    if len(events) > limits.max_batch_events:
        raise _too_large("max_batch_events", limits.max_batch_events)
    batch = [check_event(i, ev) for i, ev in enumerate(events)]
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
            sort=_param(request, "sort") or "-created",  # empty: the default, as for numbers
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
            x=_param(request, "x") or "_step",
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


async def run_keys(request: web.Request) -> web.Response:
    """The keys a run logged: ``history`` (numbers), ``values`` (anything else), ``system``."""
    project = _project(request, "read")
    run_id = request.match_info["run_id"]
    store = request.app[STORE_KEY]
    if await store.get_run(project, run_id) is None:
        raise ApiError(404, "run_not_found", f"run {project}/{run_id} does not exist")
    keys = await store.run_keys(project, run_id)
    return json_response({name: keys.get(name, []) for name in ("history", "values", "system")})


async def run_values(request: web.Request) -> web.Response:
    """Non-numeric row values (media references, text...) of some keys, by step.

    ``next`` is the last step returned (pass it back as ``after_step``), null
    when nothing is new.
    """
    project = _project(request, "read")
    lim = request.app[LIMITS_KEY]
    rows = await request.app[STORE_KEY].values(
        project,
        request.match_info["run_id"],
        _list(request, "keys", required=True),
        after_step=_int(request, "after_step", None, -(2**62), 2**62),
        limit=_int(request, "limit", 1000, 1, lim.max_values_page) or 1000,
    )
    return json_response(
        {
            "values": [{"key": k, "step": step, "value": v} for k, step, v in rows],
            "next": rows[-1][1] if rows else None,
        }
    )


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


# Types a browser may show inline; any other text is served as text/plain (so
# a logged .js file can never run as a script) and the rest as octet-stream.
_INLINE_TYPES = frozenset({"application/json", "application/pdf", "text/html", "text/csv"})
_TEXT_SUFFIXES = frozenset({".log", ".patch", ".diff", ".txt", ".md", ".yaml", ".yml", ".toml"})


def file_content_type(name: str) -> str:
    """The Content-Type a run file is served with, guessed from its name."""
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    if suffix == ".wav":
        return "audio/wav"  # mimetypes says audio/x-wav on some platforms
    guessed = mimetypes.guess_type(name, strict=False)[0]
    if guessed is None:
        guessed = "text/plain" if suffix in _TEXT_SUFFIXES else "application/octet-stream"
    major = guessed.split("/", 1)[0]
    if major in ("image", "video", "audio") or guessed in _INLINE_TYPES:
        pass
    elif major == "text" or guessed.endswith(("+json", "+xml", "/xml", "javascript")):
        guessed = "text/plain"
    else:
        guessed = "application/octet-stream"
    if guessed.startswith("text/") or guessed == "application/json":
        guessed += "; charset=utf-8"
    return guessed


async def get_file(request: web.Request) -> web.Response:
    """Download a stored run file, typed by its name; ``?download=1`` saves it as a file."""
    project = _project(request, "read")
    run_id = request.match_info["run_id"]
    path = _file_path(request)
    try:
        data = await asyncio.to_thread(request.app[FILES_KEY].read, project, run_id, path)
    except StoredFileNotFoundError as e:
        raise ApiError(
            404, "file_not_found", f"no bytes stored for {'/'.join(path)!r}; upload it first"
        ) from e
    headers = {
        "Content-Type": file_content_type(path[-1]),
        # Logged files are the run's, not ours: never sniffed into another type,
        # and an HTML or SVG file opened directly runs sandboxed (no scripts,
        # no access to this origin and its API).
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
        # Media file names carry a hash of their content (docs/media.md), so they never
        # change: a step slider moving back and forth fetches each image once.
        "Cache-Control": "private, max-age=31536000, immutable"
        if path[0] == "media"
        else "private, no-cache",
    }
    if request.query.get("download") not in (None, "", "0"):
        quoted = urllib.parse.quote(path[-1], safe="")
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quoted}"
    return web.Response(body=data, headers=headers)


# ------------------------------------------------------------------ keys


def _admin_only(request: web.Request) -> None:
    if not request[PRINCIPAL_KEY].admin:
        raise ApiError(403, "admin_only", "managing API keys needs an admin key")


async def list_keys(request: web.Request) -> web.Response:
    """Every API key (admin): id, name, rights, dates; never the key or its hash."""
    _admin_only(request)
    keys = await request.app[KEYS_KEY].list_keys()
    return json_response({"keys": [k.as_json() for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    """Create a key (admin) from ``{name, admin?, projects}``; the key is in this answer only."""
    _admin_only(request)
    body = _json_body(await read_body(request, request.app[LIMITS_KEY].max_body_bytes))
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    unknown = sorted(set(body) - {"name", "admin", "projects"})
    if unknown:
        raise ApiError(
            400, "bad_request", f"unknown field(s) {unknown}; expected name, admin, projects"
        )
    try:
        key, info = await request.app[KEYS_KEY].create(
            name="" if body.get("name") is None else body["name"],
            admin=body.get("admin", False),
            projects=body.get("projects") or {},
        )
    except KeyInputError as e:
        raise ApiError(400, "bad_request", str(e)) from e
    return json_response({"key": key, **info.as_json()}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a key (admin); every server process refuses it within the cache TTL."""
    _admin_only(request)
    try:
        info = await request.app[KEYS_KEY].revoke(request.match_info["key_id"])
    except KeyNotFoundError as e:
        raise ApiError(404, "key_not_found", str(e)) from e
    except LastAdminKeyError as e:
        raise ApiError(409, "last_admin_key", str(e)) from e
    return json_response(info.as_json())


# ------------------------------------------------------------------ factory


def make_app(
    store: Store, *, data_dir: Path | str, limits: Limits | None = None
) -> web.Application:
    """The aiohttp application over ``store`` (runs and API keys), files under ``data_dir``.

    The store is not closed with the app: whoever opened it closes it.
    """
    data_dir = Path(data_dir)
    limits = limits or Limits()
    # Our own readers enforce the limits (with a JSON 413); aiohttp's limit only
    # backs them up for handlers that call request.read().
    app = web.Application(
        middlewares=[gzip_middleware, error_middleware, auth_middleware, nul_middleware],
        client_max_size=max(limits.max_body_bytes, 1024),
    )
    app[STORE_KEY] = store
    app[KEYS_KEY] = Keys(store)
    app[FILES_KEY] = FileStorage(data_dir)
    app[LIMITS_KEY] = limits
    r = app.router
    r.add_get(f"{API}/health", health)
    add_openapi_route(app)
    r.add_get("/login", login)
    r.add_post("/login", login)
    r.add_get(f"{API}/whoami", whoami)
    add_ui_routes(app)
    r.add_get(f"{API}/projects", list_projects)
    r.add_get(f"{API}/keys", list_keys)
    r.add_post(f"{API}/keys", create_key)
    r.add_delete(f"{API}/keys/{{key_id}}", revoke_key)
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
    r.add_get(f"{run}/keys", run_keys)
    r.add_get(f"{run}/values", run_values)
    r.add_get(f"{run}/files", list_files)
    r.add_put(f"{run}/files/{{path:.+}}", put_file)
    r.add_get(f"{run}/files/{{path:.+}}", get_file)
    return app
