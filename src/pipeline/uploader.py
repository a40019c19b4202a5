"""Uploading a run directory to a runbus server, from its ``events.log``.

The event log is the source of truth, so uploading is a copy of the log that
can stop and restart anywhere: the server stores each run's events by sequence
number and skips any it already holds, so an upload resumes from the server's
``last_seq`` and a retried or overlapping batch never duplicates anything.
Both the live ``http`` sink and ``runbus sync`` use :class:`Uploader`.

Memory stays bounded however far behind the upload is: the log is read in
chunks of about :data:`CHUNK_BYTES` from the byte offset of the last frame the
server has fully accepted, and only one chunk's events (a few batches) are in
memory at a time.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from pipeline import events as ev
from pipeline import jsoncodec
from pipeline.eventlog import HEADER_SIZE, MAGIC, MAX_PAYLOAD, read_events
from pipeline.reader import EVENTS_FILE, run_id_of

log = logging.getLogger("runbus")

#: Bytes of ``events.log`` read (and parsed) at a time.
CHUNK_BYTES = 1024 * 1024
#: Events per request; the server's default limit is 10,000.
BATCH_EVENTS = 2000
#: Uncompressed bytes per request; the server's default limit is 32 MiB.
BATCH_BYTES = 4 * 1024 * 1024
#: Statuses worth retrying (besides connection errors and timeouts).
RETRY_STATUSES = frozenset({408, 429})
#: The longest ``Retry-After`` obeyed, so a bad header cannot park an upload for days.
MAX_RETRY_AFTER = 300.0
#: Bytes per second a file upload may be as slow as before it counts as failed:
#: its timeout is the request timeout plus its size at this rate.
MIN_UPLOAD_RATE = 128 * 1024
OUTPUT_FILE = "output.log"


class UploadError(Exception):
    """The server refused a request in a way retrying cannot fix (a 4xx other
    than 408/429), answered in a way no runbus server does (``bad_answer``),
    or the log cannot be uploaded as it is (a gap in it).

    ``status`` is the HTTP status (0 when the problem is local), ``code`` the
    server's error code; the message carries the server's own message.
    """

    #: Read by the sink runner: do not retry this.
    retryable = False

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


class RetriesExhaustedError(Exception):
    """A request kept failing with retryable errors ``max_attempts`` times."""


@dataclass
class _Batch:
    first: int
    last: int
    count: int
    body: bytes  # gzip-compressed JSON
    #: The metadata of a resumed segment that starts this batch: the run is
    #: reopened on the server just before the batch is sent.
    resume: dict[str, Any] | None = None


@dataclass
class _Chunk:
    """What one read of the log gave: batches to send and where the next read starts."""

    batches: list[_Batch]
    end: int  # absolute offset just past the last intact frame read
    log_last: int  # highest seq read
    files: list[tuple[str, str, int]]  # (path, sha256, size) of file events
    identity: dict[str, Any] | None  # metadata and config merged from the chunk's events
    corrupt: int
    grew: bool  # whether the read found any new frame
    read: int  # bytes of the log read to make it


def event_json(e: ev.Event) -> Any:
    """One stored event in the server's ``[kind, seq, ts, body]`` shape.

    Rows become ``{"step", "runtime", "data"}``; every other kind keeps its
    fields (less run id, seq, ts and kind). Non-finite floats are left as
    floats here: :func:`pipeline.jsoncodec.dumps` tags them when encoding.
    """
    kind = e.kind
    if kind == "row" or kind == "partial":
        body: dict[str, Any] = {"step": e.step, "runtime": e.runtime, "data": e.data}  # type: ignore[union-attr]
    else:
        body = {f: getattr(e, f) for f in e._fields[3:] if f != "kind"}
        if kind == "summary_set":
            body["deleted"] = list(body["deleted"])
        elif kind == "metric" and body.get("summary") is not None:
            body["summary"] = list(body["summary"])
    return [kind, e.seq, e.ts, body]


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) in seconds from now."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def log_last_seq(run_dir: Path) -> int:
    """The highest sequence number in a run's ``events.log`` (0 if none).

    Reads only the log's tail: events are numbered in file order, so the last
    intact frame holds the highest number.
    """
    path = run_dir / EVENTS_FILE
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    want = CHUNK_BYTES
    with path.open("rb") as f:
        while True:
            start = max(0, size - want)
            f.seek(start)
            data = f.read(size - start)
            pos = data.rfind(MAGIC)
            while pos != -1:
                found = read_events(data[pos:])
                if found.events:
                    return max(e.seq for e in found.events)
                pos = data.rfind(MAGIC, 0, pos)
            if start == 0 or want > MAX_PAYLOAD + HEADER_SIZE:
                return 0
            want *= 4


_T = TypeVar("_T")


async def _off_loop(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a worker thread, or right here once the interpreter is exiting.

    A script that never calls finish() is finished from atexit, after Python
    stopped starting worker threads (to_thread then raises RuntimeError); the
    reads are bounded chunks of a local file, so doing them on the loop then
    costs little and lets the upload complete.
    """
    try:
        return await asyncio.to_thread(fn, *args)
    except RuntimeError as e:
        if "shutdown" not in str(e):
            raise
        return fn(*args)


#: Bytes read at a time when a file is uploaded.
FILE_CHUNK = 256 * 1024


async def _file_chunks(path: Path) -> AsyncGenerator[bytes, None]:
    """A file's bytes in chunks, read off the loop (see :func:`_off_loop`).

    Sent as a chunked body rather than handing aiohttp the open file, whose
    reads go through the default executor and so fail at interpreter exit.
    """
    with path.open("rb") as f:
        while chunk := await _off_loop(f.read, FILE_CHUNK):
            yield chunk


class Uploader:
    """Uploads one run directory to a server, resuming where the server left off.

    ``project``: where the run goes (None: the project in the run's metadata,
    else ``uncategorized``). ``session``: an ``aiohttp.ClientSession`` to use
    (one is created, and closed by :meth:`aclose`, when None).
    ``max_attempts``: tries of one request before :class:`RetriesExhaustedError`
    (None: keep trying; a live sink does, bounded by its own deadline).
    ``request_timeout``: seconds one request may take, answer included.
    ``backoff_base``/``backoff_max``: the first retry waits about
    ``backoff_base`` seconds, each next one twice as long, at most ``backoff_max``.
    ``on_retry(reason, delay)``: told about each retry, for reporting.
    ``on_progress(uploader)``: called after each accepted batch.

    Methods raise :class:`UploadError` for errors retrying cannot fix.
    """

    def __init__(
        self,
        server: str,
        api_key: str | None,
        project: str | None,
        run_dir: str | os.PathLike[str],
        *,
        session: aiohttp.ClientSession | None = None,
        run_id: str | None = None,
        max_attempts: int | None = 8,
        request_timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        batch_events: int = BATCH_EVENTS,
        batch_bytes: int = BATCH_BYTES,
        on_retry: Callable[[str, float], None] | None = None,
        on_progress: Callable[[Uploader], None] | None = None,
    ) -> None:
        if not isinstance(server, str) or not server.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http:// or https:// URL, not {server!r}")
        self.server = server.rstrip("/")
        self.api_key = api_key
        self.project = project
        self.run_dir = Path(run_dir)
        self.run_id = run_id or run_id_of(self.run_dir)
        self.max_attempts = max_attempts
        self.request_timeout = request_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.batch_events = batch_events
        self.batch_bytes = batch_bytes
        self.on_retry = on_retry
        self.on_progress = on_progress
        self._session = session
        self._own_session = session is None
        self._lock = asyncio.Lock()
        self._started = False
        #: Byte offset just past the last frame whose events the server holds.
        self._offset = 0
        #: The highest seq the server holds, as far as this uploader knows.
        self.server_last = 0
        #: The highest seq read from the log so far.
        self.log_last = 0
        #: Events this uploader sent that the server stored.
        self.sent = 0
        #: Damaged frames skipped in the log.
        self.corrupt = 0
        #: Files named by ``file`` events not yet uploaded: path -> (sha256, size).
        self.files_pending: dict[str, tuple[str, int]] = {}
        self.files_sent = 0
        #: Files that could not be uploaded (missing locally, outside the run directory).
        self.files_skipped: list[str] = []
        #: Requests retried (each retry counts once), and why the last one was.
        self.retries = 0
        self.last_retry: str | None = None
        #: Bytes of the log held in memory now (read, then compressed batches
        #: waiting to be sent), and the most ever held: bounded by the chunk
        #: size, however far behind the upload is.
        self.held_bytes = 0
        self.peak_held_bytes = 0
        self._files_done: set[str] = set()
        self._gap_expected: int | None = None

    # ------------------------------------------------------------------ HTTP

    def _url(self, path: str) -> URL:
        # Paths are built from quoted segments; tell yarl not to re-encode them.
        return URL(self.server + path, encoded=True)

    def _run_path(self, suffix: str = "") -> str:
        assert self.project is not None
        p = quote(self.project, safe="")
        return f"/api/v1/projects/{p}/runs/{quote(self.run_id, safe='')}{suffix}"

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Callable[[], AsyncGenerator[bytes, None]] | None = None,
        headers: dict[str, str] | None = None,
        passthrough: frozenset[int] = frozenset(),
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """One API call with retries; ``(status, decoded JSON)`` for 2xx and ``passthrough``.

        Connection errors, timeouts, 408, 429 and 5xx are retried with
        exponential backoff and full jitter, or after ``Retry-After`` when the
        server sends one. Other statuses raise :class:`UploadError` with the
        server's message. ``body`` may be a callable returning a fresh chunk
        stream for each attempt (a file: see :func:`_file_chunks`).
        ``timeout``: seconds for one attempt (default ``request_timeout``).
        """
        session = await self._get_session()
        hdrs = dict(headers or {})
        if self.api_key:
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        limit = self.request_timeout if timeout is None else timeout
        attempt = 0
        while True:
            retry_after: float | None = None
            data = body() if callable(body) else body
            try:
                async with session.request(
                    method,
                    self._url(path),
                    data=data,
                    headers=hdrs,
                    timeout=aiohttp.ClientTimeout(total=limit),
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    if status < 300 or status in passthrough:
                        return status, _decode(raw)
                    code, message, payload = _error_of(status, raw)
                    if status not in RETRY_STATUSES and status < 500:
                        raise UploadError(
                            status,
                            code,
                            f"{method} {path}: HTTP {status} {code}: {message}",
                            payload,
                        )
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                    reason = f"HTTP {status} {code}: {message}"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
                reason = f"{type(e).__name__}: {e}"
            except TimeoutError:
                reason = f"no answer within {limit:g} s"
            finally:
                if data is not None and not isinstance(data, bytes):
                    await data.aclose()  # closes the file opened for this attempt
            attempt += 1
            if self.max_attempts is not None and attempt >= self.max_attempts:
                raise RetriesExhaustedError(
                    f"{method} {self.server}{path} failed {attempt} times; last: {reason}"
                )
            if retry_after is not None:
                delay = retry_after
            else:
                # Full jitter: clients that failed together do not retry together.
                cap = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
                delay = random.uniform(cap / 2, cap)
            self.retries += 1
            self.last_retry = reason
            if self.on_retry is not None:
                self.on_retry(reason, delay)
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ log

    def _read_chunk(self, offset: int, server_last: int, want_identity: bool) -> _Chunk:
        """Parse the log from ``offset`` (in a worker thread) into batches to send."""
        path = self.run_dir / EVENTS_FILE
        want = CHUNK_BYTES
        with path.open("rb") as f:
            while True:
                f.seek(offset)
                data = f.read(want)
                found = read_events(data, self.run_id)
                # A frame larger than the chunk reads as a torn tail: read more.
                if found.valid_end > 0 or len(data) < want or want > MAX_PAYLOAD:
                    break
                want *= 4
        read = len(data)
        del data
        batches: list[_Batch] = []
        parts: list[bytes] = []
        size = 0
        first = 0
        last = 0
        files: list[tuple[str, str, int]] = []
        identity: dict[str, Any] | None = None
        log_last = 0
        limit_n, limit_b = self.batch_events, self.batch_bytes
        resume: dict[str, Any] | None = None

        def cut() -> None:
            nonlocal parts, size, resume
            body = b'{"events":[' + b",".join(parts) + b"]}"
            batches.append(_Batch(first, last, len(parts), gzip.compress(body, 5), resume))
            parts, size, resume = [], 0, None

        for e in found.events:
            seq = e.seq
            log_last = max(log_last, seq)
            kind = e.kind
            if kind == "file":
                files.append((e.path, e.sha256, e.size))  # type: ignore[union-attr]
            elif want_identity and kind in ("metadata", "config"):
                # Identity is spread over the first metadata events (probes, then init's).
                if identity is None:
                    identity = {}
                identity.setdefault(kind, {}).update(e.values)  # type: ignore[union-attr]
            if seq <= server_last:
                continue  # the server holds it (resumed upload, or a sync beside us)
            encoded = jsoncodec.dumps(event_json(e))
            resumed = kind == "metadata" and "resumed" in e.values  # type: ignore[union-attr]
            if parts and (resumed or len(parts) >= limit_n or size + len(encoded) > limit_b):
                cut()
            if resumed:
                resume = dict(e.values)  # type: ignore[union-attr]
            if not parts:
                first = seq
            parts.append(encoded)
            size += len(encoded) + 1
            last = seq
        if parts:
            cut()
        return _Chunk(
            batches=batches,
            end=offset + found.valid_end,
            log_last=log_last,
            files=files,
            identity=identity,
            corrupt=found.corrupt,
            grew=found.valid_end > 0,
            read=read,
        )

    def _log_size(self) -> int:
        try:
            return (self.run_dir / EVENTS_FILE).stat().st_size
        except FileNotFoundError:
            return 0

    # ------------------------------------------------------------------ upload

    async def _start(self) -> bool:
        """Ask the server where it stands, and create the run if it holds none of it."""
        if self._log_size() == 0:
            return False  # nothing written yet: the identity is not known
        head = await _off_loop(self._read_chunk, 0, 2**62, True)
        self._hold(head.read, 0)
        ident = head.identity or {}
        meta: dict[str, Any] = ident.get("metadata", {})
        if not self.run_id:
            rid = meta.get("id")
            self.run_id = rid if isinstance(rid, str) else ""
        if not self.run_id:
            raise UploadError(0, "no_run_id", f"{self.run_dir}: the run's id is not in its log")
        if self.project is None:
            proj = meta.get("project")
            self.project = proj if isinstance(proj, str) and proj else "uncategorized"
        status, got = await self.request("GET", self._run_path("/last_seq"))
        self.server_last = self._last_seq_in(status, got, "GET /last_seq")
        if self.server_last == 0:
            create = self._run_fields(meta)
            if "config" in ident:
                create["config"] = ident["config"]
            if meta:
                create["metadata"] = meta
            await self._create(create)
        # Else the run is there, and its events keep it current. Creating it
        # again would reopen it (a finished run would read as running, as
        # nothing is left to finish it), and put the head's config and
        # metadata back over what later events changed. Only a resumed
        # segment reopens it, just before its events are sent (see _push).
        self._started = True
        return True

    def _run_fields(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The create-run body's identity fields, from a run's metadata."""
        fields: dict[str, Any] = {"id": self.run_id}
        for field, types in (("name", str), ("group", str), ("notes", str), ("tags", list)):
            value = meta.get(field)
            if isinstance(value, types):
                fields[field] = value
        return fields

    async def _create(self, body: dict[str, Any]) -> None:
        """Create the run, or reopen it (state running) when the server has it."""
        assert self.project is not None
        await self.request(
            "POST",
            f"/api/v1/projects/{quote(self.project, safe='')}/runs",
            body=jsoncodec.dumps(body),
            headers={"Content-Type": "application/json"},
        )

    async def push(self) -> int:
        """Send every event in the log the server lacks; return how many were stored.

        Safe to call again at any time (and beside another uploader of the
        same run): it reads only what is new since the last accepted frame.
        """
        async with self._lock:
            try:
                return await self._push()
            finally:
                self.held_bytes = 0  # a failed pass drops its chunk too

    async def _push(self) -> int:
        if not self._started and not await self._start():
            return 0
        stored = 0
        while self._log_size() > self._offset:
            chunk = await _off_loop(self._read_chunk, self._offset, self.server_last, False)
            self.log_last = max(self.log_last, chunk.log_last)
            self._hold(chunk.read, sum(len(b.body) for b in chunk.batches))
            for path, sha, size in chunk.files:
                if path not in self._files_done:
                    self.files_pending[path] = (sha, size)
            restarted = False
            for batch in chunk.batches:
                if batch.last <= self.server_last:
                    self.held_bytes -= len(batch.body)
                    continue
                if batch.resume is not None:
                    await self._create(self._run_fields(batch.resume))
                status, got = await self.request(
                    "POST",
                    self._run_path("/events"),
                    body=batch.body,
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                    passthrough=frozenset({409}),
                )
                if status == 409:
                    self._seq_gap(got)
                    restarted = True
                    break
                self._gap_expected = None
                self.held_bytes -= len(batch.body)
                new_last = self._last_seq_in(status, got, "POST /events")
                # Seqs have no gaps: what the server's last_seq moved by is what it stored.
                n = max(0, min(new_last, batch.last) - max(self.server_last, batch.first - 1))
                stored += n
                self.sent += n
                self.server_last = max(self.server_last, new_last)
                if self.on_progress is not None:
                    self.on_progress(self)
            if restarted:
                continue
            if not chunk.grew:
                break  # only a torn (still being written) frame is left
            self.corrupt += chunk.corrupt
            self._offset = chunk.end
        return stored

    def _last_seq_in(self, status: int, got: Any, what: str) -> int:
        """The ``last_seq`` of a 2xx answer; UploadError if the answer has none."""
        value = got.get("last_seq") if isinstance(got, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # A 2xx without it is not a runbus server (a login page, a proxy's answer).
        raise UploadError(
            status,
            "bad_answer",
            f"{what} to {self.server} answered {status} without a last_seq ({str(got)[:100]!r}); "
            "check that the URL is the runbus server's",
        )

    def _hold(self, read: int, batches: int) -> None:
        """Account a chunk: ``read`` log bytes were in memory beside its ``batches`` bytes."""
        self.peak_held_bytes = max(self.peak_held_bytes, read + batches)
        self.held_bytes = batches

    def _seq_gap(self, got: Any) -> None:
        """The server holds less than we thought: resend from where it says."""
        err = got.get("error", {}) if isinstance(got, dict) else {}
        expected = err.get("expected")
        if not isinstance(expected, int):
            raise UploadError(409, "seq_gap", f"seq gap without 'expected': {got!r}")
        if self._gap_expected == expected:
            # We re-read the whole log and still cannot send this event: the
            # log lacks it (a damaged frame). Retrying would loop forever.
            raise UploadError(
                409,
                "seq_gap",
                f"{self.run_dir}/{EVENTS_FILE} has no event {expected} (a damaged frame?); "
                f"the server holds events up to {expected - 1} and cannot take later ones",
            )
        self._gap_expected = expected
        self.server_last = expected - 1
        self._offset = 0  # where seq ``expected`` lies is not known: re-read from the start

    async def upload_files(self, *, output: bool = False) -> int:
        """Upload files named by ``file`` events that the server has no bytes for.

        ``output``: also upload ``output.log`` (at the end of a run: it grows
        until then). Returns how many files were uploaded.
        """
        if not self._started:
            return 0
        stored: dict[str, str] = {}
        if self.files_pending:
            _, got = await self.request("GET", self._run_path("/files"))
            for f in got.get("files", []) if isinstance(got, dict) else []:
                if f.get("stored"):
                    stored[str(f.get("path"))] = str(f.get("sha256"))
        todo = [(p, sha) for p, (sha, _) in self.files_pending.items()]
        if output and (self.run_dir / OUTPUT_FILE).is_file():
            todo.append((OUTPUT_FILE, ""))
        sent = 0
        for path, sha in todo:
            if path != OUTPUT_FILE and stored.get(path) == sha:
                self._file_done(path)
                continue
            local = self._local_file(path)
            if local is None:
                self.files_skipped.append(path)
                self._file_done(path)
                continue
            segments = "/".join(quote(s, safe="") for s in path.split("/"))
            await self.request(
                "PUT",
                self._run_path(f"/files/{segments}"),
                body=functools.partial(_file_chunks, local),
                headers={"Content-Type": "application/octet-stream"},
                # A big file on a slow link must not time out (and restart) for ever.
                timeout=self.request_timeout + local.stat().st_size / MIN_UPLOAD_RATE,
            )
            self._file_done(path)
            sent += 1
        self.files_sent += sent
        return sent

    def _file_done(self, path: str) -> None:
        self.files_pending.pop(path, None)
        if path != OUTPUT_FILE:
            self._files_done.add(path)

    def _local_file(self, rel: str) -> Path | None:
        """The run file ``rel`` names, if it is a regular file inside the run directory."""
        root = self.run_dir.resolve()
        try:
            target = (root / rel).resolve()
            target.relative_to(root)
        except (ValueError, OSError):
            log.warning("runbus: not uploading %r: it is outside the run directory", rel)
            return None
        if not target.is_file():
            log.warning("runbus: not uploading %r: no such file in %s", rel, self.run_dir)
            return None
        return target

    async def sync(self) -> None:
        """Upload everything: events, recorded files and ``output.log``."""
        await self.push()
        await self.upload_files(output=self.sent > 0 or not await self._has_output())

    async def _has_output(self) -> bool:
        """Whether the server has ``output.log`` bytes (so a repeated sync sends nothing)."""
        if not self._started or not (self.run_dir / OUTPUT_FILE).is_file():
            return True
        status, _ = await self.request(
            "HEAD", self._run_path(f"/files/{OUTPUT_FILE}"), passthrough=frozenset({404})
        )
        return status < 300

    def pending(self, target: int | None = None) -> int:
        """Events up to ``target`` (default: the log's last) the server does not hold."""
        top = self.log_last if target is None else target
        return max(0, top - self.server_last)

    async def aclose(self) -> None:
        """Close the HTTP session if this uploader created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return jsoncodec.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _error_of(status: int, raw: bytes) -> tuple[str, str, Any]:
    """``(code, message, body)`` of an error response, JSON or not."""
    body = _decode(raw)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return str(err.get("code", "error")), str(err.get("message", "")), body
    text = raw[:200].decode("utf-8", "replace").strip()
    return "http_error", text or f"HTTP {status}", body
