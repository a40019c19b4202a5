"""The http sink: streams a run to a runbus server, from the run's own ``events.log``.

The sink does not send the events it is handed. ``write`` only notes the
highest sequence number it has seen; a background task uploads the run
directory's ``events.log`` (the disk sink's copy, fsynced at every flush) with
:class:`pipeline.uploader.Uploader`. So:

- a network outage or a server restart loses and duplicates nothing: the
  upload resumes from the server's ``last_seq``, and the server skips seqs it
  already holds;
- memory stays bounded however long the outage (the backlog is on disk);
- ``log()`` is never slowed: ``write`` and ``flush`` return at once, so the
  runner's queue never fills because of the network.

``aclose`` uploads what is left for at most ``upload_timeout`` seconds, then
says on stderr how many events are left and the ``runbus sync`` command that
sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

import aiohttp

from pipeline import events as ev
from pipeline.runinfo import RunInfo
from pipeline.uploader import RetriesExhaustedError, Uploader, UploadError
from sinks.base import SinkClosedError

log = logging.getLogger("runbus")

_STORED = ev.STORED_KINDS


class HttpSink:
    """Uploads the run to ``server`` with ``api_key``, at most about a second behind.

    ``upload_timeout``: seconds ``aclose`` waits for the upload to finish.
    ``poll_interval``: how often the uploader looks for new frames while it
    knows of events the disk sink has not written yet.
    ``request_timeout``, ``backoff_base``, ``backoff_max``: passed to the
    :class:`~pipeline.uploader.Uploader` (how long one request may take; how
    long retries wait).
    Raises ``ValueError`` for a server that is not an http(s) URL.
    """

    name = "http"

    def __init__(
        self,
        server: str,
        api_key: str | None,
        *,
        project: str | None = None,
        upload_timeout: float = 30.0,
        poll_interval: float = 0.2,
        idle_interval: float = 1.0,
        request_timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        stderr: TextIO | None = None,
    ) -> None:
        if not isinstance(server, str) or not server.startswith(("http://", "https://")):
            raise ValueError(f"HttpSink(server={server!r}): give an http:// or https:// URL")
        if not (isinstance(upload_timeout, int | float) and upload_timeout >= 0):
            raise ValueError(f"HttpSink(upload_timeout={upload_timeout!r}): use seconds >= 0")
        for field, value in (
            ("request_timeout", request_timeout),
            ("backoff_base", backoff_base),
            ("backoff_max", backoff_max),
        ):
            if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"HttpSink({field}={value!r}): use seconds > 0")
        self.server = server.rstrip("/")
        self.api_key = api_key
        self.project = project
        self.upload_timeout = float(upload_timeout)
        self.poll_interval = poll_interval
        self.idle_interval = idle_interval
        self.request_timeout = float(request_timeout)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self._stderr = stderr
        self._target = 0  # highest stored seq handed to write()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._uploader: Uploader | None = None
        self._session: aiohttp.ClientSession | None = None
        self._run: RunInfo | None = None
        self._error: UploadError | None = None
        self._outage = False
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpSink({self.server!r})"

    @property
    def uploader(self) -> Uploader | None:
        """The run's :class:`~pipeline.uploader.Uploader` once opened: its counters
        (``server_last``, ``sent``, ``retries``, ``last_retry``, ``peak_held_bytes``)
        say how the upload goes."""
        return self._uploader

    # -- protocol ------------------------------------------------------------

    async def open(self, run: RunInfo) -> None:
        """Start the background upload of ``run``'s directory."""
        if not run.dir.is_dir():
            # Without the disk sink's log there is nothing to upload from.
            raise UploadError(0, "no_run_dir", f"run directory {run.dir} does not exist")
        self._run = run
        self._target = run.last_seq
        self._session = aiohttp.ClientSession()
        self._uploader = Uploader(
            self.server,
            self.api_key,
            self.project or run.project,
            run.dir,
            session=self._session,
            run_id=run.id,
            max_attempts=None,  # keep trying; aclose's deadline bounds the wait
            request_timeout=self.request_timeout,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            on_retry=self._on_retry,
        )
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="runbus-http")

    async def write(self, batch: Sequence[ev.Event]) -> None:
        """Note that events up to the batch's last seq exist (the upload reads them from disk)."""
        if self._closed:
            raise SinkClosedError("http sink is closed")
        for e in reversed(batch):
            if e.kind in _STORED:
                if e.seq > self._target:
                    self._target = e.seq
                break

    async def flush(self) -> None:
        """Wake the uploader for a pass; never waits for the network.

        Waiting here would hold the runner's queue (and so ``log()``) hostage
        to the server. Raises the upload's :class:`UploadError` once the server
        has refused it for good (a bad key, no rights), so the run's metadata
        reports the sink as failed.
        """
        if self._closed:
            raise SinkClosedError("http sink is closed")
        if self._error is not None:
            raise self._error
        self._wake.set()

    async def aclose(self) -> None:
        """Upload what is left for at most ``upload_timeout`` seconds; report what is not sent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        up = self._uploader
        reason = ""
        try:
            if up is not None and self._error is None:
                try:
                    async with asyncio.timeout(self.upload_timeout):
                        await self._drain(up)
                        await up.upload_files(output=True)
                except TimeoutError:
                    reason = f"within {self.upload_timeout:g} s"
                except UploadError as e:
                    self._error = e
                except (aiohttp.ClientError, RetriesExhaustedError, OSError) as e:
                    reason = f"({e})"
            if self._error is not None:
                reason = f"(the server refused: {self._error})"
            if up is not None:
                self._report(up, reason)
        finally:
            if self._session is not None:
                await self._session.close()

    # -- background ------------------------------------------------------------

    async def _drain(self, up: Uploader) -> None:
        """Upload until the server holds every event handed to ``write``."""
        while True:
            await up.push()
            if up.server_last >= self._target:
                return
            # The disk sink has not written them yet (it is flushing or closing).
            await asyncio.sleep(self.poll_interval)

    async def _loop(self) -> None:
        up = self._uploader
        assert up is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.idle_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                # A flush wakes us while the disk sink flushes beside us: poll a
                # little until its frames land, so we trail it by well under a second.
                for _ in range(max(1, int(self.idle_interval / self.poll_interval))):
                    await up.push()
                    if up.server_last >= self._target:
                        break
                    await asyncio.sleep(self.poll_interval)
                if up.files_pending:
                    await up.upload_files()
                if self._outage:
                    self._outage = False
                    log.warning("runbus: the upload to %s is going again", self.server)
            except UploadError as e:
                self._error = e
                log.warning(
                    "runbus: the server %s refused the upload of run %s: %s. The run "
                    "goes on offline; fix the cause and run `runbus sync %s`.",
                    self.server,
                    up.run_id,
                    e,
                    up.run_dir,
                )
                return
            except (aiohttp.ClientError, RetriesExhaustedError, OSError) as e:
                self._on_retry(str(e), self.idle_interval)
                await asyncio.sleep(self.idle_interval)

    def _on_retry(self, reason: str, delay: float) -> None:
        # One warning per outage, not one per retry: an outage can last hours.
        if not self._outage:
            self._outage = True
            log.warning(
                "runbus: cannot upload to %s (%s); retrying in the background. "
                "Nothing is lost: the run is kept in its directory.",
                self.server,
                reason,
            )

    def _report(self, up: Uploader, reason: str) -> None:
        left = max(0, self._target - up.server_last)
        files = len(up.files_pending)
        if not left and not files and not reason:
            return
        if left or files:
            what = f"{left} event(s)" + (f" and {files} file(s)" if files else "")
        else:
            what = "output.log"
        out = self._stderr or sys.stderr
        print(
            f"runbus: {what} of run {up.run_id} were not uploaded to {self.server} {reason}.\n"
            f"They are safe in {up.run_dir}; send them with:\n"
            f"  runbus sync {up.run_dir}",
            file=out,
            flush=True,
        )
