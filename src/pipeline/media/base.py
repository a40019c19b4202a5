"""The base of every rich value (images, audio, tables, ...) and how it is stored.

A media object is frozen on the caller's thread when it is logged (arrays are
copied, so mutating them afterwards changes nothing; that copy is all the
caller pays) and encoded later, off the calling thread, by the media stage:
files go to ``media/<kind>/<key>_<step>_<hash>.<ext>`` and the history row
keeps a small JSON reference (``_type``, ``path``, ``sha256``, ``size`` and
per-kind fields).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline import events as ev


class Media:
    """A rich value for ``run.log``: subclasses are the public media types."""

    #: The ``_type`` of its reference in a row, and its folder under ``media/``.
    kind: ClassVar[str] = "media"

    def _freeze(self) -> Media:
        """A private copy of whatever the caller could still change (caller's thread)."""
        return self

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        """Write files through ``ctx`` and return the row's JSON reference (worker thread)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be stored")

    def _nbytes(self) -> int:
        """Bytes of array copies held until encoded (bounds the media backlog)."""
        total = 0
        for v in vars(self).values():
            module = type(v).__module__.partition(".")[0]
            if module == "numpy":
                total += int(getattr(v, "nbytes", 0))
            elif module == "PIL":  # a copied PIL image: width x height x bands
                total += int(v.width) * int(v.height) * len(v.getbands())
        return total


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class MediaContext:
    """Where and under which name one logged media value is stored."""

    run_id: str
    run_dir: Path
    key: str
    step: int
    #: Files written so far, announced as ``FileSaved`` events by the stage.
    saved: list[ev.FileSaved] = field(default_factory=list)
    #: Added to every file name written through this context (list items: ``i3``).
    suffix: str = ""

    def write(self, kind: str, ext: str, data: bytes, *, suffix: str = "") -> dict[str, Any]:
        """Store ``data`` as a media file; return ``{"path", "sha256", "size"}``.

        The name is ``<key>_<step>[_suffix]_<hash>.<ext>`` under ``media/<kind>/``
        (``/`` in the key becomes ``.``), written to a temp file and renamed, so a
        crash never leaves half a file under the final name.
        """
        digest = hashlib.sha256(data).hexdigest()
        stem = _UNSAFE.sub("_", self.key.replace("/", "."))
        parts = [p for p in (self.suffix, suffix) if p]
        extra = "".join(f"_{p}" for p in parts)
        rel = Path("media") / kind / f"{stem}_{self.step}{extra}_{digest[:12]}.{ext}"
        path = self.run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        self.saved.append(
            ev.FileSaved(self.run_id, 0, time.time(), rel.as_posix(), digest, len(data))
        )
        return {"path": rel.as_posix(), "sha256": digest, "size": len(data)}


class MediaList(Media):
    """Several media values logged under one key (e.g. a list of images)."""

    kind = "list"

    def __init__(self, items: list[Media]) -> None:
        self.items = items

    def _freeze(self) -> MediaList:
        return MediaList([m._freeze() for m in self.items])

    def _nbytes(self) -> int:
        return sum(m._nbytes() for m in self.items)

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        refs = []
        for i, item in enumerate(self.items):
            # Same key and step, an item suffix: <key>_<step>_i<i>_<hash>.<ext>
            sub = MediaContext(ctx.run_id, ctx.run_dir, ctx.key, ctx.step, ctx.saved, f"i{i}")
            refs.append(item._encode(sub))
        kinds = {r.get("_type") for r in refs}
        of = kinds.pop() if len(kinds) == 1 else "mixed"
        return {"_type": "list", "of": of, "items": refs}


def encode_values(
    run_id: str, run_dir: Path, data: dict[str, Any], step: int
) -> tuple[dict[str, Any], list[ev.FileSaved], list[tuple[str, BaseException]]]:
    """Encode every media value of a row (worker thread).

    Returns the row with references in place of media, the files written, and
    the keys that failed with their errors (those keys are left out of the row,
    the rest of the row is kept).
    """
    out: dict[str, Any] = {}
    saved: list[ev.FileSaved] = []
    failed: list[tuple[str, BaseException]] = []
    for key, value in data.items():
        if not isinstance(value, Media):
            out[key] = value
            continue
        ctx = MediaContext(run_id, run_dir, key, step, saved)
        try:
            ref = value._encode(ctx)
        except Exception as exc:  # one bad value must not cost the rest of the row
            failed.append((key, exc))
            continue
        ref.setdefault("_type", value.kind)
        out[key] = ref
    return out, saved, failed
