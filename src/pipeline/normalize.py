"""Value normalisation at the call site: what can be stored, in what form.

Runs on the caller's thread so bad input raises where it was written, naming the
key; a call either passes whole or raises before anything is handed over. The
common case (a flat dict of floats and ints) is a single loop of type checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.jsoncodec import TAG as NONFINITE_TAG
from pipeline.media.base import Media, MediaList
from pipeline.names import NameChecker

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
#: numpy/torch arrays up to this many elements are stored as a list.
MAX_LIST = 32

_ACCEPTS = (
    "numbers, strings, bools, None, nested dicts, lists of scalars, numpy/torch scalars, "
    "and pipeline media (Image, Audio, Video, Html, Table, Histogram)"
)


def prepare_row(data: object, names: NameChecker) -> tuple[dict[str, Any], bool, bool]:
    """A private, flattened copy of ``data``, whether it holds NaN/inf, and
    whether it holds media (frozen here; encoded later, off this thread).

    Raises ``TypeError``/``ValueError`` naming the key for input that can never
    be stored.
    """
    if type(data) is not dict and not isinstance(data, Mapping):
        raise TypeError(
            f"run.log() takes a dict of metric names to values, not {type(data).__name__}"
        )
    seen = names.seen
    nonfinite = False
    for k, v in data.items():
        if k not in seen:
            if type(k) is not str:
                raise TypeError(
                    f"run.log(): metric names must be str, not {type(k).__name__} ({k!r})"
                )
            names.check(k)
        t = type(v)
        if t is float:
            if v - v != 0.0:
                nonfinite = True
        elif t is int:
            if not _INT_MIN <= v <= _INT_MAX:
                raise ValueError(_big_int(k))
        elif t is not str and t is not bool and v is not None:
            return _prepare_slow(data, names)
    return dict(data), nonfinite, False


def _big_int(key: str) -> str:
    return (
        f"run.log(): value of {key!r} is an integer outside the 64-bit range; "
        f"log float(x) or str(x) instead"
    )


def _prepare_slow(data: Mapping[Any, Any], names: NameChecker) -> tuple[dict[str, Any], bool, bool]:
    out: dict[str, Any] = {}
    _flatten_into(out, "", data, names)
    nonfinite = media = False
    for v in out.values():
        if _has_nonfinite_scalar(v):
            nonfinite = True
        elif isinstance(v, Media):
            media = True
    return out, nonfinite, media


def _has_nonfinite_scalar(v: Any) -> bool:
    if type(v) is float:
        return bool(v - v != 0.0)
    return type(v) is list and any(type(x) is float and x - x != 0.0 for x in v)


def _flatten_into(
    out: dict[str, Any], prefix: str, data: Mapping[Any, Any], names: NameChecker
) -> None:
    for k, v in data.items():
        if type(k) is not str:
            where = f" inside {prefix[:-1]!r}" if prefix else ""
            raise TypeError(
                f"run.log(): metric names must be str, not {type(k).__name__} ({k!r}){where}"
            )
        key = prefix + k
        if isinstance(v, Mapping):
            if not v:
                continue
            _flatten_into(out, key + "/", v, names)
            continue
        if key not in names.seen:
            names.check(key)
        out[key] = to_scalar_or_list(key, v)


def to_scalar(key: str, v: Any) -> Any:
    """A JSON scalar for ``v`` (numpy/torch scalars unwrapped), or raise naming ``key``."""
    t = type(v)
    if t is float or t is str or t is bool or v is None:
        return v
    if t is int:
        if not _INT_MIN <= v <= _INT_MAX:
            raise ValueError(_big_int(key))
        return v
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return to_scalar(key, int(v))
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    module = t.__module__.partition(".")[0]
    if module in ("numpy", "torch") and _size(v) == 1:
        return to_scalar(key, v.item())
    raise TypeError(
        f"run.log(): value of {key!r} has type {_type_name(v)}, which runbus can't store; "
        f"it stores {_ACCEPTS}. Convert it first (e.g. float(x))"
    )


def to_scalar_or_list(key: str, v: Any) -> Any:
    """Like :func:`to_scalar`, also taking short lists/tuples/arrays of scalars."""
    t = type(v)
    if isinstance(v, Media):
        return v._freeze()
    if t is list or t is tuple:
        if v and all(isinstance(x, Media) for x in v):
            return MediaList(list(v))._freeze()
        return [to_scalar(f"{key}[{i}]", x) for i, x in enumerate(v)]
    module = t.__module__.partition(".")[0]
    if module in ("numpy", "torch") and hasattr(v, "shape"):
        size = _size(v)
        if size == 1:
            return to_scalar(key, v.item())
        if len(v.shape) == 1 and size <= MAX_LIST:
            return [to_scalar(f"{key}[{i}]", x) for i, x in enumerate(v.tolist())]
        # Larger arrays are summarised as a histogram (copied now, binned later).
        from pipeline.media.histogram import Histogram

        return Histogram(v)._freeze()
    return to_scalar(key, v)


def to_config_dict(values: Any, what: str = "config") -> dict[str, Any]:
    """A validated deep copy of a whole config (or summary) update, keyed by str."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} must be a dict, not {type(values).__name__}")
    out: dict[str, Any] = {}
    for k, v in values.items():
        if not isinstance(k, str):
            raise TypeError(f"{what} keys must be str, not {type(k).__name__} ({k!r})")
        if k == NONFINITE_TAG:
            raise ValueError(_reserved(f"{what} key {k!r}"))
        out[k] = to_config(k, v)
    return out


def _reserved(what: str) -> str:
    # It would read back as a float: the tag keeps NaN/inf exact on disk.
    return f"{what} is reserved by runbus for NaN and infinity on disk; rename that key"


def to_config(key: str, v: Any) -> Any:
    """A JSON-storable deep copy of a config or summary value, or raise naming ``key``."""
    if isinstance(v, Mapping):
        out: dict[str, Any] = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"config key {key!r} holds a key of type {type(k).__name__} ({k!r}); "
                    f"config keys must be str"
                )
            if k == NONFINITE_TAG:
                raise ValueError(_reserved(f"config key {key!r}: its key {k!r}"))
            out[k] = to_config(f"{key}.{k}", x)
        return out
    if isinstance(v, list | tuple):
        return [to_config(f"{key}[{i}]", x) for i, x in enumerate(v)]
    t = type(v)
    module = t.__module__.partition(".")[0]
    if module in ("numpy", "torch") and hasattr(v, "tolist"):
        return to_config(key, v.tolist())
    try:
        return to_scalar(key, v)
    except TypeError:
        raise TypeError(
            f"value of {key!r} has type {_type_name(v)}, which runbus can't store in "
            f"config or summary; use numbers, strings, bools, None, lists and dicts of them"
        ) from None


def _size(v: Any) -> int:
    size = getattr(v, "size", None)
    if callable(size):  # torch: .size() is the shape
        return int(v.numel())
    return int(size) if size is not None else -1


def _type_name(v: Any) -> str:
    t = type(v)
    mod = t.__module__
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"
