"""A TCP proxy with switchable network faults, for testing the online client.

:class:`FaultProxy` listens on 127.0.0.1 and forwards every connection to an
upstream port (the loopback server). It sees only bytes, but the client speaks
HTTP/1.1 without pipelining, so a request starts when the client sends bytes
after the previous response began, and its first line names it: a
:class:`Fault` can pick requests by a substring of that line (``"/events"``).

Faults, each for the next ``times`` matching requests (or until cleared):

- ``reset``: forward ``after_bytes`` of the request, then reset both
  connections (RST): the server never sees the whole request.
- ``close``: the same with an orderly close (FIN).
- ``drop_response``: forward the whole request, but close the client's
  connection instead of answering it: the server did the work, the client
  never hears so.
- ``truncate``: forward ``after_bytes`` of the response, then close.
- ``stall``: hold the response for ``seconds`` (or until :meth:`clear`), as a
  server slower than the client's request timeout would.
- ``hold``: hold the request for ``seconds`` (or until :meth:`clear`) before
  the server sees it, as a slow uplink would.
- ``blackhole``: swallow the request; never answer (nor connect upstream).

The proxy runs its own event loop in a daemon thread, so tests drive it from
plain synchronous code, beside a run's pipeline thread and the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal

FaultMode = Literal["reset", "close", "drop_response", "truncate", "stall", "hold", "blackhole"]
#: SO_LINGER on, 0 seconds: closing the socket sends RST instead of FIN.
_RST = struct.pack("ii", 1, 0)
MODES: tuple[FaultMode, ...] = (
    "reset",
    "close",
    "drop_response",
    "truncate",
    "stall",
    "hold",
    "blackhole",
)


@dataclass
class Fault:
    """What to do to requests whose first line contains ``match``.

    ``times``: how many requests it hits (None: every one until cleared).
    ``after_bytes``: for ``reset``/``close``, request bytes forwarded before the
    cut; for ``truncate``, response bytes forwarded. ``seconds``: how long
    ``stall`` holds a response, ``hold`` a request.
    """

    mode: FaultMode
    match: str = ""
    times: int | None = 1
    after_bytes: int = 0
    seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Fault(mode={self.mode!r}): use one of {', '.join(MODES)}")


class _Conn:
    """One client connection and what the request on it is going through."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.handler = asyncio.current_task()  # client -> server
        self.upstream: asyncio.StreamWriter | None = None
        self.pump: asyncio.Task[None] | None = None  # server -> client
        self.phase = "idle"  # idle -> request -> response -> request ...
        self.fault: Fault | None = None  # the fault of the request in flight
        self.request_bytes = 0
        self.response_bytes = 0
        self.dead = False


class FaultProxy:
    """A loopback TCP proxy to ``127.0.0.1:upstream_port`` with :class:`Fault` injection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        #: The first line of every request seen, in order.
        self.requests: list[str] = []
        #: ``(mode, request line)`` of every request a fault hit.
        self.hits: list[tuple[str, str]] = []
        self._faults: list[Fault] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._release = self._call(self._make_event())
        self._server: asyncio.Server = self._call(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._conns: set[_Conn] = set()

    @property
    def url(self) -> str:
        """The proxy's base URL: give it to the client instead of the server's."""
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)  # type: ignore[arg-type]

    @staticmethod
    async def _make_event() -> asyncio.Event:
        return asyncio.Event()

    # -- control (from any thread) ------------------------------------------------

    def arm(self, fault: Fault) -> None:
        """Add ``fault``; earlier faults that match a request take it first."""
        with self._cond:
            self._faults.append(fault)
        self._loop.call_soon_threadsafe(self._release.clear)

    def clear(self) -> None:
        """Remove every fault and let stalled responses through."""
        with self._cond:
            self._faults.clear()
        self._loop.call_soon_threadsafe(self._release.set)

    def wait_hits(self, n: int, timeout: float = 20.0) -> None:
        """Block until faults have hit ``n`` requests in all; AssertionError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.hits) >= n, timeout):
                raise AssertionError(
                    f"faults hit {len(self.hits)} request(s), not {n}, within {timeout:g} s; "
                    f"requests seen: {self.requests[-10:]}"
                )

    def close(self) -> None:
        """Stop listening, drop every connection and end the proxy's thread."""
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> None:
        self._server.close()
        self._release.set()
        conns = list(self._conns)
        for conn in conns:
            self._cut(conn, reset=False)
        # A handler parked in a hold or a read would outlive the loop and be
        # destroyed pending: end each one here and wait for it.
        tasks = [t for c in conns for t in (c.handler, c.pump) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    # -- the proxy ------------------------------------------------------------------

    def _take(self, line: str) -> Fault | None:
        with self._cond:
            self.requests.append(line)
            for i, fault in enumerate(self._faults):
                if fault.match in line:
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            del self._faults[i]
                    self.hits.append((fault.mode, line))
                    self._cond.notify_all()
                    return fault
        return None

    def _cut(self, conn: _Conn, *, reset: bool) -> None:
        conn.dead = True
        for writer in (conn.client, conn.upstream):
            if writer is None or writer.is_closing():
                continue
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                writer.transport.abort()
            else:
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            while not conn.dead:
                data = await reader.read(65536)
                if not data:
                    break
                if conn.phase != "request":
                    # No pipelining in HTTP/1.1 clients: bytes sent after a
                    # response began are the next request.
                    conn.phase = "request"
                    conn.request_bytes = 0
                    line = data.split(b"\r\n", 1)[0].decode("latin-1")
                    conn.fault = self._take(line)
                    if conn.fault is not None and conn.fault.mode == "hold":
                        await self._held(conn.fault)
                fault = conn.fault
                if fault is not None and fault.mode == "blackhole":
                    continue
                if fault is not None and fault.mode in ("reset", "close"):
                    room = fault.after_bytes - conn.request_bytes
                    if len(data) >= room:
                        await self._forward(conn, data[: max(0, room)])
                        self._cut(conn, reset=fault.mode == "reset")
                        break
                await self._forward(conn, data)
                conn.request_bytes += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            self._cut(conn, reset=False)
            if conn.pump is not None:
                conn.pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await conn.pump
            self._conns.discard(conn)

    async def _forward(self, conn: _Conn, data: bytes) -> None:
        if data and conn.upstream is None:
            # Connected at the first request forwarded, so a blackholed
            # connection never reaches the server.
            ureader, conn.upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            conn.pump = asyncio.create_task(self._respond(conn, ureader))
        if data and conn.upstream is not None and not conn.dead:
            conn.upstream.write(data)
            await conn.upstream.drain()

    async def _held(self, fault: Fault) -> None:
        """Wait ``fault.seconds``, or until :meth:`clear`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), fault.seconds)

    async def _respond(self, conn: _Conn, ureader: asyncio.StreamReader) -> None:
        """Server to client, applying the response side of the request's fault."""
        try:
            while not conn.dead:
                data = await ureader.read(65536)
                if not data:
                    break
                if conn.phase == "request":
                    conn.phase = "response"
                    conn.response_bytes = 0
                    fault = conn.fault
                    if fault is not None and fault.mode == "drop_response":
                        break
                    if fault is not None and fault.mode == "stall":
                        await self._held(fault)
                        if conn.client.is_closing():
                            break
                fault = conn.fault
                if fault is not None and fault.mode == "truncate":
                    room = fault.after_bytes - conn.response_bytes
                    if len(data) >= room:
                        conn.client.write(data[: max(0, room)])
                        await conn.client.drain()
                        break
                conn.response_bytes += len(data)
                conn.client.write(data)
                await conn.client.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._cut(conn, reset=False)
