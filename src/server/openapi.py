"""The API's OpenAPI document, served without a key at ``GET /api/v1/openapi.yaml``.

There is one copy of the document: ``docs/openapi.yaml``, beside the prose API
reference, where the issue asks for it and where readers of the docs look. The
``server`` package reaches it through ``server/openapi.yaml``, a symbolic link
to that file declared as package data. An editable install (``pip install -e
.``) reads through the link; building a wheel or an sdist copies the linked
bytes into the archive (setuptools follows links), so an installed server
ships the same document. The alternatives were worse: the source of truth in
``src/server/`` with docs pointing at it would move the document out of docs/,
and a build step copying it would leave two copies that can drift.

The bytes are served as they are, with no YAML parser at run time, so the
served document is the docs file byte for byte (tests/server/test_openapi.py
checks this, and that every API route is in the document and the reverse).
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

#: Where the document is served; public, like the health check.
PATH = "/api/v1/openapi.yaml"
#: RFC 9512's media type for YAML.
MEDIA_TYPE = "application/yaml"


@functools.cache
def document() -> bytes:
    """The OpenAPI document's bytes (read once from the package data)."""
    return resources.files("server").joinpath("openapi.yaml").read_bytes()


def add_route(app: web.Application) -> None:
    """Serve :func:`document` at :data:`PATH` on ``app``.

    The file is read here, while the app is built, so no request waits on disk.
    """
    body = document()

    async def openapi_document(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=MEDIA_TYPE)

    app.router.add_get(PATH, openapi_document)
