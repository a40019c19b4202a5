"""``pipeline.Api``: a small synchronous client of the server's query API, for scripts.

It uses only the standard library (``urllib``), so reading results needs
nothing beyond runbus itself. Responses are decoded with
:mod:`pipeline.jsoncodec`, so NaN and infinities come back as floats.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from pipeline import jsoncodec


class ApiError(Exception):
    """The server answered with an error; ``status`` and ``code`` say which."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code


class Api:
    """Query a runbus server: ``Api(server, api_key).runs("mnist")``.

    ``server``/``api_key`` default to ``$RUNBUS_SERVER``/``$RUNBUS_API_KEY``,
    then the stored ``runbus login``. Raises ``ValueError`` when no server is
    known, :class:`ApiError` for error answers, ``OSError`` when unreachable.
    """

    def __init__(
        self, server: str | None = None, api_key: str | None = None, *, timeout: float = 30.0
    ) -> None:
        from pipeline.sync import resolve_credentials

        srv, key = resolve_credentials(server, api_key)
        if srv is None:
            raise ValueError(
                "Api(server=None): no server; pass server=, set $RUNBUS_SERVER, "
                "or run `runbus login URL`"
            )
        self.server = srv.rstrip("/")
        self.api_key = key
        self.timeout = timeout

    def _get(self, path: str, params: Sequence[tuple[str, Any]] = ()) -> Any:
        query = urlencode([(k, v) for k, v in params if v is not None])
        url = f"{self.server}/api/v1{path}" + (f"?{query}" if query else "")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        req = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return jsoncodec.loads(resp.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = jsoncodec.loads(raw)["error"]
                raise ApiError(e.code, str(err["code"]), str(err["message"])) from None
            except (ValueError, KeyError, TypeError):
                raise ApiError(e.code, "http_error", raw[:200].decode("utf-8", "replace")) from e

    @staticmethod
    def _p(project: str) -> str:
        return f"/projects/{quote(project, safe='')}"

    def projects(self) -> list[dict[str, Any]]:
        """Projects the key can read: ``[{"name", "run_count", "last_activity"}]``."""
        return list(self._get("/projects")["projects"])

    def runs(
        self,
        project: str,
        filters: Sequence[str] | Mapping[str, Any] | None = None,
        sort: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Runs of ``project`` as dicts (see docs/server-api.md for the fields).

        ``filters``: ``["config.lr>=0.01", "state=finished"]``, or a mapping of
        field to value meaning equality. ``sort``: a field, ``-`` for descending.
        """
        if isinstance(filters, Mapping):
            items = [f"{k}={jsoncodec.dumps(v).decode()}" for k, v in filters.items()]
        elif isinstance(filters, str):
            items = [filters]
        else:
            items = list(filters or ())
        params: list[tuple[str, Any]] = [("filter", f) for f in items]
        params += [("sort", sort), ("limit", limit), ("offset", offset)]
        return list(self._get(f"{self._p(project)}/runs", params)["runs"])

    def run(self, project: str, run_id: str) -> dict[str, Any]:
        """One run's record."""
        got: dict[str, Any] = self._get(f"{self._p(project)}/runs/{quote(run_id, safe='')}")
        return got

    def history(
        self,
        project: str,
        run_id: str,
        keys: Sequence[str] | None = None,
        x: str = "_step",
        buckets: int | None = None,
    ) -> list[dict[str, Any]]:
        """History rows ``{x: ..., key: value, ...}`` in x order.

        ``keys`` default to the run's summary keys. With ``buckets`` the server
        downsamples to about that many points per key and each value is the
        bucket's last (``key/min`` and ``key/max`` are added); without it every
        point comes back, fetched page by page with the server's cursor.
        """
        if keys is None:
            summary = self.run(project, run_id).get("summary") or {}
            keys = [k for k in summary if not k.startswith("_")]
        if not keys:
            return []
        path = f"{self._p(project)}/runs/{quote(run_id, safe='')}/history"
        base: list[tuple[str, Any]] = [("keys", ",".join(keys)), ("x", x)]
        rows: dict[Any, dict[str, Any]] = {}

        def merge(series: list[dict[str, Any]], with_range: bool) -> None:
            for s in series:
                key = s["key"]
                for i, xv in enumerate(s["x"]):
                    row = rows.setdefault(xv, {x: xv})
                    row[key] = s["last"][i]
                    if with_range:
                        row[f"{key}/min"] = s["min"][i]
                        row[f"{key}/max"] = s["max"][i]

        if buckets is not None:
            got = self._get(path, [*base, ("buckets", buckets)])
            merge(got["series"], any(s.get("downsampled") for s in got["series"]))
        else:
            after = -1  # steps start at 0: everything, raw, in pages
            while True:
                got = self._get(path, [*base, ("after", after)])
                series = got["series"]
                if not series:
                    break
                merge(series, False)
                cursors = [int(s["cursor"]) for s in series if s.get("cursor") is not None]
                # Continue from the key furthest behind; the others repeat harmlessly.
                nxt = min(cursors) if cursors else after
                if nxt <= after:
                    break
                after = nxt
        return [rows[k] for k in sorted(rows, key=_sort_key)]


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))
