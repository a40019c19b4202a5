"""JSON encoding shared by every writer and reader of runbus data.

JSON has no NaN or infinity, and orjson writes them as ``null``, which would
lose them. runbus keeps them exact by writing a non-finite float as the tagged
object ``{"$nf": "NaN"}`` (or ``"Infinity"``, ``"-Infinity"``) and turning such
tags back into floats on read. History rows are flattened, so a dict in a row
value is always such a tag; in config and summary, ``$nf`` is a reserved key.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

TAG = "$nf"
_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def is_nonfinite(v: float) -> bool:
    """True for NaN, +inf and -inf (one subtraction: cheap on the hot path)."""
    return v - v != 0.0


def tag_float(v: float) -> dict[str, str]:
    """The tagged form of a non-finite float."""
    return {TAG: _NAMES[repr(v)]}


def has_nonfinite(obj: Any) -> bool:
    """Whether ``obj`` holds a non-finite float anywhere (dicts, lists, tuples)."""
    t = type(obj)
    if t is float:
        return bool(obj - obj != 0.0)
    if t is dict:
        return any(has_nonfinite(v) for v in obj.values())
    if t is list or t is tuple:
        return any(has_nonfinite(v) for v in obj)
    return False


def tag(obj: Any) -> Any:
    """A copy of ``obj`` with every non-finite float replaced by its tag."""
    t = type(obj)
    if t is float:
        return tag_float(obj) if obj - obj != 0.0 else obj
    if t is dict:
        return {k: tag(v) for k, v in obj.items()}
    if t is list or t is tuple:
        return [tag(v) for v in obj]
    return obj


def untag(obj: Any) -> Any:
    """The inverse of :func:`tag`: tags become floats again, recursively."""
    t = type(obj)
    if t is dict:
        if len(obj) == 1 and TAG in obj:
            name = obj[TAG]
            if name in _FLOATS:
                return _FLOATS[name]
        return {k: untag(v) for k, v in obj.items()}
    if t is list:
        return [untag(v) for v in obj]
    return obj


def dumps(obj: Any, *, pretty: bool = False) -> bytes:
    """Encode ``obj`` as JSON, keeping non-finite floats exact."""
    if has_nonfinite(obj):
        obj = tag(obj)
    opts = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    if pretty:
        opts |= orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
    return orjson.dumps(obj, option=opts)


def loads(data: bytes | str) -> Any:
    """Decode JSON written by :func:`dumps`."""
    return untag(orjson.loads(data))


def loads_fast(data: bytes | str) -> Any:
    """Decode without untagging (the caller untags where tags can appear)."""
    return orjson.loads(data)
