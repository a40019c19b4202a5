"""What the server's HTTP test suites share: one request with a bearer key, and event rows."""

from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL

from pipeline import jsoncodec


async def request(
    session: aiohttp.ClientSession, base: str, method: str, path: str, key: str | None, **kw: Any
) -> tuple[aiohttp.ClientResponse, bytes]:
    """The response and its body bytes.

    ``key`` goes in ``Authorization: Bearer``; ``json=`` is encoded with
    jsoncodec (NaN and infinities tagged, as the client sends them); the path
    is sent byte for byte, so ``..`` and ``%2F`` reach the server unnormalised.
    """
    headers = dict(kw.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if "json" in kw:
        kw["data"] = jsoncodec.dumps(kw.pop("json"))
        headers["Content-Type"] = "application/json"
    url = URL(base + path, encoded=True)
    async with session.request(method, url, headers=headers, **kw) as r:
        return r, await r.read()


def row(seq: int, step: int, data: dict[str, Any]) -> list[Any]:
    """A ``row`` event as the client sends it: ``[kind, seq, ts, body]``."""
    return ["row", seq, 1000.0 + step, {"step": step, "runtime": float(step), "data": data}]
