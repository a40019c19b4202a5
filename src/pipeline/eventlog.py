"""The ``events.log`` format: append-only, checksummed frames of events.

A frame is a 16-byte header followed by a JSON payload::

    offset 0   4 bytes   magic  b"\\x00rb1"
    offset 4   1 byte    flags  (bit 0: payload is zlib-compressed)
    offset 5   3 bytes   zero
    offset 8   u32 LE    payload length in bytes
    offset 12  u32 LE    CRC-32 of bytes 4..12 and the payload

The magic starts with a NUL byte, which JSON text never contains, so after a
damaged region the reader finds the next frame exactly. A frame whose checksum
fails is skipped and counted; a frame cut short by the end of the file (a write
torn by a crash) is ignored and reported as a torn tail.

The payload is ``{"shapes": [[key, ...], ...], "ev": [event, ...]}``. Each event
is ``[kind, seq, ts, body]``. History rows are stored column-wise against the
frame's shape table, which keeps key names out of every row::

    ["row", seq, ts, [step, shape_index, runtime, value, value, ...]]

Every other kind stores its fields (less run id, seq, ts and kind) as a JSON
object. Non-finite floats use the tags of :mod:`pipeline.jsoncodec`. Nothing in
a frame refers to another frame, so every intact frame reads on its own.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import events as ev
from pipeline.jsoncodec import has_nonfinite, tag, untag

MAGIC = b"\x00rb1"
HEADER = struct.Struct("<4sB3xII")
HEADER_SIZE = HEADER.size  # 16
FLAG_ZLIB = 0x01
#: A payload larger than this is refused on read (a damaged length field).
MAX_PAYLOAD = 256 * 1024 * 1024

_ROW_KINDS = ("row", "partial")
_FIELDS: dict[str, tuple[str, ...]] = {}
_CLASSES: dict[str, Any] = {}
for _cls in (
    ev.Refused,
    ev.Summary,
    ev.SummaryUpdate,
    ev.ConfigUpdate,
    ev.MetricDef,
    ev.Stats,
    ev.Output,
    ev.FileSaved,
    ev.Metadata,
    ev.Finish,
):
    _kind = _cls._field_defaults["kind"]
    _CLASSES[_kind] = _cls
    _FIELDS[_kind] = tuple(f for f in _cls._fields if f not in ("run_id", "seq", "ts", "kind"))


def encode_payload(events: Iterable[ev.Event]) -> bytes:
    """The JSON payload of one frame holding ``events`` (controls are skipped)."""
    shapes: dict[tuple[str, ...], int] = {}
    out: list[Any] = []
    append = out.append
    for e in events:
        kind = e.kind
        if kind == "row" or kind == "partial":
            data = e.data  # type: ignore[union-attr]
            shape = tuple(data)
            idx = shapes.get(shape)
            if idx is None:
                idx = shapes[shape] = len(shapes)
            values = tag(list(data.values())) if e.nonfinite else data.values()  # type: ignore[union-attr]
            append((kind, e.seq, e.ts, [e.step, idx, e.runtime, *values]))  # type: ignore[union-attr]
        elif kind in _FIELDS:
            fields = {f: getattr(e, f) for f in _FIELDS[kind]}
            if has_nonfinite(fields):
                fields = tag(fields)
            append((kind, e.seq, e.ts, fields))
    return orjson.dumps(
        {"shapes": list(shapes), "ev": out},
        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY,
    )


def encode_frame(payload: bytes, *, compress: bool = False) -> bytes:
    """Wrap a payload in a frame header (optionally zlib-compressing it)."""
    flags = 0
    if compress:
        payload = zlib.compress(payload, 1)
        flags |= FLAG_ZLIB
    head = HEADER.pack(MAGIC, flags, len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(head[4:12]))
    return head[:12] + struct.pack("<I", crc) + payload


def encode_events(events: Iterable[ev.Event], *, compress: bool = False) -> bytes:
    """One complete frame holding ``events``."""
    return encode_frame(encode_payload(events), compress=compress)


def decode_payload(payload: bytes, run_id: str) -> list[ev.Event]:
    """Events from one frame's (decompressed) payload."""
    doc = orjson.loads(payload)
    shapes = [tuple(s) for s in doc["shapes"]]
    events: list[ev.Event] = []
    append = events.append
    for kind, seq, ts, body in doc["ev"]:
        if kind in _ROW_KINDS:
            values = body[3:]
            nonfinite = False
            for v in values:
                # A tag can sit at the top level or inside a list value.
                if type(v) is dict or type(v) is list:
                    values = untag(values)
                    nonfinite = has_nonfinite(values)
                    break
            data = dict(zip(shapes[body[1]], values, strict=True))
            cls = ev.HistoryRow if kind == "row" else ev.PartialRow
            append(cls(run_id, seq, ts, body[0], body[2], data, nonfinite))
        elif kind in _CLASSES:
            fields = untag(body)
            for name in ("summary", "deleted"):
                if isinstance(fields.get(name), list):
                    fields[name] = tuple(fields[name])
            append(_CLASSES[kind](run_id, seq, ts, **fields))
        # Unknown kinds come from a newer writer: skipped, not an error.
    return events


@dataclass
class ReadResult:
    """What :func:`read_events` found in an event log."""

    events: list[ev.Event] = field(default_factory=list)
    frames: int = 0
    #: Damaged regions skipped (checksum or decode failure) with intact data after.
    corrupt: int = 0
    #: Byte offsets of the damaged regions, for reporting.
    corrupt_offsets: list[int] = field(default_factory=list)
    #: Bytes at the end that do not form a whole frame (a write cut short).
    torn_bytes: int = 0
    #: Offset just past the last intact frame: where an appender may continue.
    valid_end: int = 0


def _frame_at(data: bytes, pos: int, *, check_magic: bool = True) -> tuple[bytes, int] | str:
    """The payload and end offset of a valid frame at ``pos``, or why not."""
    n = len(data)
    if pos + HEADER_SIZE > n:
        return "short"
    magic, flags, length, crc = HEADER.unpack_from(data, pos)
    if check_magic and magic != MAGIC:
        return "magic"
    end = pos + HEADER_SIZE + length
    if length > MAX_PAYLOAD:
        return "bad"
    if end > n:
        return "short"
    payload = data[pos + HEADER_SIZE : end]
    if zlib.crc32(payload, zlib.crc32(data[pos + 4 : pos + 12])) != crc:
        return "bad"
    if flags & FLAG_ZLIB:
        try:
            payload = zlib.decompress(payload)
        except zlib.error:
            return "bad"
    return payload, end


def _next_valid(data: bytes, start: int) -> int:
    """Offset of the next intact frame at or after ``start``, or -1."""
    pos = data.find(MAGIC, start)
    while pos != -1:
        if not isinstance(_frame_at(data, pos), str):
            return pos
        pos = data.find(MAGIC, pos + 1)
    return -1


def read_events(data: bytes, run_id: str = "") -> ReadResult:
    """Parse a whole event log. Never raises on damaged or truncated input."""
    res = ReadResult()
    pos = 0
    n = len(data)
    while pos < n:
        got = _frame_at(data, pos)
        if not isinstance(got, str):
            payload, end = got
            try:
                decoded = decode_payload(payload, run_id)
            except (
                orjson.JSONDecodeError,
                KeyError,
                TypeError,
                ValueError,
                IndexError,
                AttributeError,  # a checksummed body of the wrong JSON type
            ):
                res.corrupt += 1
                res.corrupt_offsets.append(pos)
            else:
                res.events.extend(decoded)
                res.frames += 1
                if not run_id:
                    run_id = _run_id_of(decoded)
                    if run_id:
                        res.events[:] = [_with_run_id(e, run_id) for e in res.events]
            res.valid_end = end
            pos = end
            continue
        nxt = _next_valid(data, pos + 1)
        if nxt == -1:
            # Nothing intact follows. A complete frame that fails its checksum
            # is damage (the checksum does not cover the magic, so a whole frame
            # with only its magic damaged is damage too); anything cut short by
            # the end of file is a torn write.
            if got == "bad" or (
                got == "magic" and not isinstance(_frame_at(data, pos, check_magic=False), str)
            ):
                res.corrupt += 1
                res.corrupt_offsets.append(pos)
            else:
                res.torn_bytes = n - pos
            break
        res.corrupt += 1
        res.corrupt_offsets.append(pos)
        pos = nxt
    return res


def _run_id_of(events: Sequence[ev.Event]) -> str:
    for e in events:
        if e.kind == "metadata":
            values = e.values  # type: ignore[union-attr]
            rid = values.get("id") if isinstance(values, dict) else None
            if isinstance(rid, str):
                return rid
    return ""


def _with_run_id(e: ev.Event, run_id: str) -> ev.Event:
    return e if e.run_id else e._replace(run_id=run_id)
