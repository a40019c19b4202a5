"""``Html``: an HTML document or fragment, stored as an ``.html`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.media import _optional
from pipeline.media.base import Media, MediaContext

# Wraps a fragment so a browser (or the UI's sandboxed iframe) reads it as UTF-8.
_PAGE = (
    '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n</head>\n'
    "<body>\n{}\n</body>\n</html>\n"
)


class Html(Media):
    """HTML for ``run.log``, stored as a file under ``media/html/``.

    ``data`` is the HTML as a ``str``, or a ``pathlib.Path`` (any
    ``os.PathLike``) to an HTML file, read on the worker thread. A ``str`` with
    no ``<`` in it that names an existing file is taken as a path too, so
    ``Html("report.html")`` does what it says.

    With ``inject=True`` a fragment (text without an ``<html`` tag) is wrapped
    in a minimal UTF-8 page; by default the text is stored exactly as given.

    Raises ``TypeError`` for anything but a str or path, ``FileNotFoundError``
    for a path that is not a file.
    """

    kind = "html"

    def __init__(self, data: str | os.PathLike[str], inject: bool = False) -> None:
        self.inject = inject
        self._text: str | None = None
        self._path: Path | None = None
        if isinstance(data, str) and ("<" in data or not os.path.isfile(data)):
            self._text = data
        elif isinstance(data, str | os.PathLike):
            self._path = _optional.existing_file(data, "pipeline.Html")
        else:
            raise TypeError(
                f"pipeline.Html takes HTML as a str or a path to an HTML file, "
                f"not {type(data).__module__}.{type(data).__qualname__}"
            )

    def __repr__(self) -> str:
        if self._text is not None:
            return f"Html({len(self._text)} chars)"
        return f"Html({str(self._path)!r})"

    # _freeze: the base class's (return self) is right: str and Path are immutable.

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        if self._text is not None:
            data = self._text.encode("utf-8")
        else:
            assert self._path is not None
            data = self._path.read_bytes()  # stored byte for byte, whatever its encoding
        if self.inject:
            text = data.decode("utf-8", errors="replace")
            if "<html" not in text[:1024].lower():
                data = _PAGE.format(text).encode("utf-8")
        return {"_type": self.kind, **ctx.write(self.kind, "html", data)}
