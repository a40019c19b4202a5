"""docs/openapi.yaml against the running server, on both stores.

schemathesis reads the document and, for every operation in it, sends requests
it generates (valid ones, invalid ones, and the document's examples) to a real
server on loopback, then checks every answer: no 5xx, a status the document
lists, a Content-Type it lists, a body its schema accepts, invalid input
refused, valid input not refused as invalid, and no data without a key.

The server runs on its own event loop in a background thread, because
schemathesis calls it synchronously from the test. It holds an admin key and a
seeded run: project ``mnist``, run ``abc123``, keys ``loss``/``acc`` and a file
``a.png``, the names the document's examples use, so the examples phase reads
real data. Generation is deterministic (a fixed seed, ``derandomize``), so CI
sends the same requests every time.

The plain tests below keep the document from drifting (it is valid OpenAPI
3.1, the server serves the docs file byte for byte, and the routes under
/api/v1 plus /login are exactly the documented paths and methods), then check
promises of the document that generated input reaches only by chance.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings

from pipeline import jsoncodec
from server.app import API, KEYS_KEY, Limits, make_app
from server.store import Store

StoreFactory = Callable[..., Awaitable[Store]]
T = TypeVar("T")

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
PROJECT = "mnist"
RUN = "abc123"

# schemathesis' default answers to valid input, plus 400 (a 5xx still fails the
# not_a_server_error check).
VALID_MAY_EARN = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
CONFIG = schemathesis.Config.from_dict(
    {
        # A fixed seed: the same requests on every run and machine, and editing
        # the test function does not change them (derandomize alone hashes it).
        "seed": 20260101,
        "generation": {
            "max-examples": 20,
            "deterministic": True,
            "database": "none",
            # The document bans NUL from names in the path and query (PostgreSQL
            # cannot store it) and says bodies store it as U+FFFD; both rules
            # are tested directly below, where the culprit can be checked.
            "allow-x00": False,
        },
        # Without links between operations in the document there is nothing
        # for the stateful phase to chain.
        "phases": {"stateful": {"enabled": False}},
        "operations": [
            {
                # Rules no schema can state: a filter's value must suit its
                # field (a number for `created`, text for `name`), and seqs
                # must increase within a batch. Input that is well-formed may
                # still earn its documented 400 there.
                "include-operation-id": ["listRuns", "appendEvents"],
                "checks": {"positive_data_acceptance": {"expected-statuses": VALID_MAY_EARN}},
            }
        ],
    }
)
schema = schemathesis.openapi.from_path(DOC, config=CONFIG)


class LiveServer:
    """The app over a store from ``store_factory``, on 127.0.0.1 in a background thread."""

    def __init__(self, store_factory: StoreFactory, data_dir: Path) -> None:
        self._factory = store_factory
        self._data_dir = data_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._store: Store | None = None
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.url = ""
        self.key = ""
        # One keep-alive session for all of schemathesis' requests: a new
        # connection per request would cost more than most requests do.
        self.session = requests.Session()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def start(self) -> None:
        self._store = await self._factory()
        self.app = make_app(self._store, data_dir=self._data_dir, limits=Limits())
        self.key = (await self.app[KEYS_KEY].create(admin=True, name="openapi test"))[0]
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = next(a[1] for a in self._runner.addresses if isinstance(a, tuple))
        self.url = f"http://127.0.0.1:{port}"
        await self._seed()

    async def _seed(self) -> None:
        """One run with history, non-numeric values, system metrics, output and a file."""
        runs = f"{self.url}{API}/projects/{PROJECT}/runs"
        events: list[list[Any]] = [
            ["metric", 1, 1000.0, {"name": "acc", "summary": ["max"], "goal": "maximize"}],
            ["config", 2, 1000.0, {"values": {"lr": 0.001, "batch": 64}}],
        ]
        for step in range(30):
            loss = math.nan if step == 7 else 1.0 / (step + 1)
            data: dict[str, Any] = {"loss": loss, "acc": step / 30, "note": f"step {step}"}
            events.append(["row", len(events) + 1, 1000.0 + step, {"step": step, "data": data}])
            events.append(
                ["stats", len(events) + 1, 1000.0 + step, {"values": {"cpu": 10.0 + step}}]
            )
        events += [
            ["output", len(events) + 1, 1001.0, {"stream": "stdout", "text": "epoch 1\nepoch 2\n"}],
            ["file", len(events) + 2, 1002.0, {"path": "a.png", "sha256": "0" * 64, "size": 4}],
            ["summary", len(events) + 3, 1003.0, {"values": {"loss": math.inf, "acc": 0.97}}],
        ]
        async with aiohttp.ClientSession(headers=self.auth) as http:
            for method, url, body in (
                ("POST", runs, {"id": RUN, "name": "bright-fox-1", "tags": ["baseline"]}),
                ("POST", f"{runs}/{RUN}/events", {"events": events}),
                ("PUT", f"{runs}/{RUN}/files/a.png", b"\x89PNG"),
            ):
                payload = body if isinstance(body, bytes) else jsoncodec.dumps(body)
                async with http.request(method, url, data=payload) as r:
                    assert r.status == 200, await r.text()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._store is not None:
            # Closed here, on the loop that opened it; the fixture's own close is then a no-op.
            await self._store.aclose()

    def close(self) -> None:
        self.session.close()
        try:
            self.call(self.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@pytest.fixture
def live(store_factory: StoreFactory, tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(store_factory, tmp_path / "data")
    try:
        server.call(server.start())
        yield server
    finally:
        server.close()


# The anyio backend runs the async store_factory fixture; the test itself is sync.
@pytest.mark.usefixtures("anyio_backend")
@schema.parametrize()
@settings(
    max_examples=20,
    derandomize=True,
    database=None,
    deadline=None,
    # One server per operation, shared by its examples, is the point of the fixture.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_server_conforms_to_document(case: schemathesis.Case, live: LiveServer) -> None:
    case.call_and_validate(base_url=live.url, session=live.session, headers=live.auth)


# ------------------------------------------------------------------ drift


def test_document_is_valid_openapi_3_1() -> None:
    assert schema.raw_schema["openapi"] == "3.1.0"
    schema.validate()  # against the OpenAPI 3.1 meta-schema; raises naming the fault


@pytest.mark.usefixtures("anyio_backend")
def test_served_document_is_the_docs_file(live: LiveServer) -> None:
    # No key: tools fetch the document before they have one.
    r = live.session.get(f"{live.url}{API}/openapi.yaml")
    assert (r.status_code, r.headers["Content-Type"]) == (200, "application/yaml")
    assert r.content == DOC.read_bytes()


def _documented() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return {
        (method.upper(), path)
        for path, item in schema.raw_schema["paths"].items()
        for method in item
        if method in methods
    }


def _api_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every API route: everything under /api/v1, and /login.

    The web UI's pages and files (``/``, ``/ui/...``) are HTML and assets, not API.
    aiohttp adds a HEAD route beside each GET; it answers like the GET.
    """
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and (path.startswith(f"{API}/") or path == "/login"):
            routes.add((route.method, path))
    return routes


@pytest.mark.usefixtures("anyio_backend")
def test_every_api_route_is_documented_and_every_documented_one_exists(
    live: LiveServer,
) -> None:
    assert live.app is not None
    routes = _api_routes(live.app)
    documented = _documented()
    assert routes - documented == set(), "routes missing from docs/openapi.yaml"
    assert documented - routes == set(), "documented operations the server does not have"


# ------------------------------------------------------------------ what the document promises

EVENTS = f"{API}/projects/{PROJECT}/runs/{RUN}/events"


def _post_events(live: LiveServer, *events: list[Any]) -> tuple[int, Any]:
    r = live.session.post(
        live.url + EVENTS, data=jsoncodec.dumps({"events": list(events)}), headers=live.auth
    )
    return r.status_code, r.json()


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize(
    ("event", "culprit"),
    [
        (["finish", 66, 1.0, {"exit_code": 2**40}], "body.exit_code"),
        (["row", 66, 1.0, {"step": 0, "data": 5}], "body.data"),
        (["row", 66, 1.0, {"step": -1, "data": {}}], "body.step"),
        (["file", 66, 1.0, {"path": "a", "sha256": "0" * 64}], "body.size"),
        (["refused", 66, 1.0, [1, 2]], "body must be an object"),
        (["row", 2**63, 1.0, {"step": 0, "data": {}}], "seq"),
        (["", 66, 1.0, {}], "kind"),
    ],
)
def test_bad_event_is_a_400_naming_it_and_stores_nothing(
    live: LiveServer, event: list[Any], culprit: str
) -> None:
    # The store cannot use any of these: left to it, each was a 500 (or an overflow).
    status, body = _post_events(live, ["output", 66, 1.0, {"text": "ok"}], event)
    assert status == 400, body
    assert body["error"]["code"] == "bad_event"
    assert culprit in body["error"]["message"]
    assert "event 1" in body["error"]["message"]
    r = live.session.get(f"{live.url}{EVENTS[: -len('/events')]}/last_seq", headers=live.auth)
    assert r.json() == {"last_seq": 65}


@pytest.mark.usefixtures("anyio_backend")
def test_whole_float_seq_and_step_are_integers(live: LiveServer) -> None:
    # JSON Schema counts 66.0 as an integer, and so does the server.
    assert _post_events(live, ["row", 66.0, 1.0, {"step": 30.0, "data": {"loss": 0.5}}]) == (
        200,
        {"last_seq": 66},
    )


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize(
    ("method", "path", "body", "culprit"),
    [
        ("GET", f"{API}/projects/a%00b/runs", None, "path parameter 'project'"),
        ("GET", f"{API}/projects/{PROJECT}/runs/{RUN}/history?keys=lo%00ss", None, "'keys'"),
    ],
)
def test_nul_is_refused_alike_on_both_stores(
    live: LiveServer, method: str, path: str, body: Any, culprit: str
) -> None:
    # PostgreSQL cannot store U+0000 and SQLite can: the API refuses it in names
    # (path and query) before either store sees it.
    data = None if body is None else jsoncodec.dumps(body)
    r = live.session.request(method, live.url + path, data=data, headers=live.auth)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "nul_character"
    assert culprit in r.json()["error"]["message"]


@pytest.mark.usefixtures("anyio_backend")
def test_wrong_method_is_a_405_with_allow(live: LiveServer) -> None:
    r = live.session.delete(f"{live.url}{API}/health")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]


@pytest.mark.usefixtures("anyio_backend")
def test_malformed_login_form_is_a_400(live: LiveServer) -> None:
    r = live.session.post(
        f"{live.url}/login",
        data=b"token=x",
        headers={"Content-Type": "multipart/form-data"},  # no boundary
        allow_redirects=False,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_request"


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("keys=loss&buckets=10&buckets=20", 400),  # which one? refused, never guessed
        ("keys=loss&x=_step&x=_runtime", 400),
        ("keys=loss&x=&buckets=&x_min=&x_max=&after=", 200),  # empty: the defaults
    ],
)
def test_query_parameters_are_given_once_and_empty_means_default(
    live: LiveServer, query: str, status: int
) -> None:
    r = live.session.get(
        f"{live.url}{API}/projects/{PROJECT}/runs/{RUN}/history?{query}", headers=live.auth
    )
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["code"] == "bad_param"
        assert "at most once" in r.json()["error"]["message"]
    else:
        series = jsoncodec.loads(r.content)["series"]
        assert [s["x"] for s in series] == [list(range(30))]


@pytest.mark.usefixtures("anyio_backend")
def test_nul_in_event_data_is_kept_as_a_replacement_character(live: LiveServer) -> None:
    # A stray NUL in console output or a config value must not stop a run's
    # upload (a 400 is never retried): the event is stored, the NUL becomes U+FFFD.
    status, body = _post_events(
        live,
        ["config", 66, 1.0, {"values": {"a\0": "x\0y"}}],
        ["output", 67, 1.0, {"stream": "stdout", "text": "bar\0baz\n"}],
    )
    assert (status, body) == (200, {"last_seq": 67})
    run_url = live.url + EVENTS[: -len("/events")]
    config = live.session.get(run_url, headers=live.auth).json()["config"]
    assert config["a\ufffd"] == "x\ufffdy"
    lines = live.session.get(f"{run_url}/output", headers=live.auth).json()["lines"]
    assert lines[-1]["text"] == "bar\ufffdbaz"
