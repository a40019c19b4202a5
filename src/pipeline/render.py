"""Terminal rendering shared by the stdout sink and the ``runbus`` CLI.

Everything here is pure (strings in, strings out) and uses only the standard
library, so the CLI can import it without paying for the pipeline.
"""

from __future__ import annotations

import contextlib
import math
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BLOCKS",
    "SeriesSketch",
    "display_width",
    "format_duration",
    "format_value",
    "is_number",
    "sparkline",
    "summary_table",
    "table",
]

#: The eight block characters of a sparkline, lowest first.
BLOCKS = "▁▂▃▄▅▆▇█"
_MID = BLOCKS[len(BLOCKS) // 2 - 1]  # a constant series draws as a flat middle line
_ELLIPSIS = "…"


def is_number(v: object) -> bool:
    """Whether ``v`` is an int or float that belongs in a chart (bools are not)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(v: float | None) -> bool:
    return v is not None and v - v == 0.0


def _bucket_means(values: Sequence[float | None], width: int) -> list[float | None]:
    """``values`` reduced to ``width`` buckets, each the mean of its finite values.

    A bucket holding no finite value stays a gap (None), so a NaN never turns a
    whole bucket into a gap unless it is all there is.
    """
    n = len(values)
    return [_safe_mean(values[i * n // width : (i + 1) * n // width]) for i in range(width)]


def _safe_mean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values without overflowing near the float limits."""
    finite = [v for v in values if v is not None and v - v == 0.0]
    if not finite:
        return None
    return math.fsum(v / len(finite) for v in finite)


def sparkline(values: Sequence[float | None], width: int = 24) -> str:
    """A one-line chart of ``values`` drawn with the blocks ``▁▂▃▄▅▆▇█``.

    Longer series are downsampled to ``width`` buckets (mean of each bucket).
    NaN, infinities and None draw as a space; a constant series draws as a flat
    middle line; an empty series gives ``""``.

    Raises:
        ValueError: ``width`` is less than 1.
    """
    if width < 1:
        raise ValueError(f"sparkline width must be at least 1, got {width!r}")
    if not values:
        return ""
    points = _bucket_means(values, width) if len(values) > width else list(values)
    finite = [v for v in points if v is not None and v - v == 0.0]
    if not finite:
        return " " * len(points)
    lo, hi = min(finite), max(finite)
    # Averaging a constant leaves rounding noise; noise is not a shape to draw.
    if hi / 2 - lo / 2 <= 1e-9 * max(abs(hi), abs(lo)):
        return "".join(_MID if _finite(v) else " " for v in points)
    top = len(BLOCKS) - 1
    # Scale by halves so a span near the float limits cannot overflow to inf.
    half_span = hi / 2 - lo / 2
    chars = []
    for v in points:
        if v is None or v - v != 0.0:
            chars.append(" ")
            continue
        frac = (v / 2 - lo / 2) / half_span
        chars.append(BLOCKS[min(top, max(0, round(frac * top)))])
    return "".join(chars)


class SeriesSketch:
    """Bounded-memory history of one metric, enough to draw its sparkline.

    Points are averaged into buckets of ``stride`` values. When ``2 * width``
    buckets are full, adjacent pairs merge and the stride doubles, so memory
    stays at most ``2 * width`` buckets (plus the one being filled) however
    long the run, and at least ``width`` once that many values came. Non-finite values
    are gaps: they do not pull a bucket's mean, and a bucket of nothing else
    reads back as NaN (a space in the sparkline).
    """

    __slots__ = (
        "_cap",
        "_counts",
        "_pending_count",
        "_pending_n",
        "_pending_sum",
        "_stride",
        "_sums",
    )

    def __init__(self, width: int = 24) -> None:
        if width < 1:
            raise ValueError(f"SeriesSketch width must be at least 1, got {width!r}")
        self._cap = 2 * width
        # Per bucket: the sum and count of its finite values (a count of 0 is a gap).
        self._sums: list[float] = []
        self._counts: list[int] = []
        self._stride = 1
        self._pending_sum = 0.0
        self._pending_count = 0  # finite values in the bucket being filled
        self._pending_n = 0  # all values in the bucket being filled

    def add(self, v: float) -> None:
        """Append one value."""
        if self._pending_n == 0 and len(self._sums) >= self._cap:
            # Compact only when a new bucket starts, so up to 2 * width full
            # buckets are kept rather than just width after each merge.
            self._compact()
        if _finite(v):
            self._pending_sum += v
            self._pending_count += 1
        self._pending_n += 1
        if self._pending_n < self._stride:
            return
        self._sums.append(self._pending_sum)
        self._counts.append(self._pending_count)
        self._pending_sum, self._pending_count, self._pending_n = 0.0, 0, 0

    def _compact(self) -> None:
        sums, counts = self._sums, self._counts
        self._sums = [sums[i] + sums[i + 1] for i in range(0, len(sums) - 1, 2)]
        self._counts = [counts[i] + counts[i + 1] for i in range(0, len(counts) - 1, 2)]
        self._stride *= 2

    def values(self) -> list[float]:
        """The bucket means, oldest first (NaN for a bucket with no finite value)."""
        out = [s / c if c else math.nan for s, c in zip(self._sums, self._counts, strict=True)]
        if self._pending_n:
            c = self._pending_count
            out.append(self._pending_sum / c if c else math.nan)
        return out

    def __len__(self) -> int:
        return len(self._sums) + (1 if self._pending_n else 0)


def _format_float(v: float) -> str:
    if v != v:
        return "nan"
    if v in (math.inf, -math.inf):
        return "inf" if v > 0 else "-inf"
    s = f"{v:.6g}"
    if "e" in s:
        # "1.5e-07" -> "1.5e-7": shorter, and still parses with float().
        mantissa, exp = s.split("e")
        s = f"{mantissa}e{int(exp)}"
    return s


def _truncate(s: str, max_len: int) -> str:
    if max_len < 1 or display_width(s) <= max_len:
        return s
    out, used = [], 0
    for ch in s:
        w = _char_width(ch)
        if used + w > max_len - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + _ELLIPSIS


def format_value(v: Any, max_len: int = 32) -> str:
    """A compact, single-line rendering of a logged value.

    Floats get at most 6 significant digits; ints stay ints (very large ones
    switch to exponent form); NaN and infinities read ``nan``, ``inf``,
    ``-inf``; dicts (such as ``{"min": .., "max": ..}`` summaries) read
    ``min=0.1 max=0.9``; strings and anything else longer than ``max_len``
    columns end with an ellipsis (``max_len`` < 1 disables truncation).
    """
    if isinstance(v, bool) or v is None:
        s = str(v)
    elif isinstance(v, float):
        s = _format_float(v)
    elif isinstance(v, int):
        s = str(v)
        if len(s) > 12:
            with contextlib.suppress(OverflowError):  # beyond float range: keep digits
                s = _format_float(float(v))
    elif isinstance(v, Mapping) and isinstance(v.get("_type"), str):
        s = _format_media(v)
    elif isinstance(v, Mapping):
        s = " ".join(f"{k}={format_value(x, 0)}" for k, x in v.items())
    elif isinstance(v, list | tuple):
        s = "[" + ", ".join(format_value(x, 0) for x in v) + "]"
    else:
        s = str(v)
    # Control characters would break the table layout.
    if any(ch in s for ch in "\n\r\t"):
        s = s.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("\t", " ")
    return _truncate(s, max_len)


def _format_media(ref: Mapping[str, Any]) -> str:
    """A media reference as a short tag: ``<image 64x64>``, ``<table 8x3>``."""
    kind = ref["_type"]
    if kind in ("image", "video") and "width" in ref and "height" in ref:
        return f"<{kind} {ref['width']}x{ref['height']}>"
    if kind == "table" and "rows" in ref:
        return f"<table {ref['rows']}x{ref.get('ncols', '?')}>"
    if kind == "histogram" and isinstance(ref.get("counts"), list):
        return f"<histogram {sum(ref['counts'])} values>"
    if kind == "list" and isinstance(ref.get("items"), list):
        return f"<{len(ref['items'])} x {ref.get('of', 'media')}>"
    if kind == "plot" and "chart" in ref:
        return f"<plot {ref['chart']}>"
    return f"<{kind}>"


def format_duration(seconds: float | None) -> str:
    """``12.3s``, ``4m05s`` or ``2h03m``; ``-`` for None or NaN; negatives clamp to 0."""
    if seconds is None or seconds != seconds:
        return "-"
    if seconds == math.inf:
        return "inf"
    seconds = max(0.0, float(seconds))
    if seconds < 59.95:  # beyond this "60.0s" would print; go to minutes instead
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    minutes = whole // 60
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    # Block elements and box drawing are "ambiguous" width; Western terminals
    # draw them one column wide, which is what we assume.
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(s: str) -> int:
    """Terminal columns ``s`` occupies (wide CJK characters count 2, combining 0)."""
    if s.isascii():
        return len(s)
    return sum(_char_width(ch) for ch in s)


def _pad(s: str, width: int, align: str) -> str:
    gap = " " * (width - display_width(s))
    return gap + s if align == ">" else s + gap


def table(
    rows: Sequence[Sequence[str]],
    headers: Sequence[str],
    align: Sequence[str] | None = None,
) -> str:
    """Aligned columns with a header and a rule under it, no trailing newline.

    ``align`` gives ``"<"`` (left, the default) or ``">"`` (right) per column.
    Rows shorter than the header are padded with empty cells.

    Raises:
        ValueError: a row has more cells than there are headers.
    """
    ncols = len(headers)
    for r in rows:
        if len(r) > ncols:
            raise ValueError(f"table row has {len(r)} cells but only {ncols} headers: {r!r}")
    aligns = list(align or []) + ["<"] * (ncols - len(align or []))
    full = [list(r) + [""] * (ncols - len(r)) for r in rows]
    widths = [display_width(h) for h in headers]
    for r in full:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], display_width(cell))
    lines = [
        "  ".join(_pad(h, widths[i], aligns[i]) for i, h in enumerate(headers)).rstrip(),
        "  ".join("─" * w for w in widths),
    ]
    for r in full:
        lines.append("  ".join(_pad(c, widths[i], aligns[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def summary_table(
    summary: Mapping[str, Any],
    series: Mapping[str, Sequence[float | None]],
    *,
    max_rows: int | None = None,
    width: int = 24,
) -> str:
    """The metric | summary | history table of a run, sorted by metric name.

    Metrics are the union of ``summary`` keys and ``series`` keys, less keys
    starting with ``_`` (reserved for runbus). With ``max_rows``, the rest is
    folded into a final ``... N more`` line. Empty string when there is nothing.
    """
    keys = sorted(k for k in {*summary, *series} if not k.startswith("_"))
    if not keys:
        return ""
    shown = keys if max_rows is None else keys[:max_rows]
    rows = [
        [
            _truncate(k, 40),
            format_value(summary[k]) if k in summary else "",
            sparkline(series.get(k, ()), width),
        ]
        for k in shown
    ]
    out = table(rows, ["metric", "summary", "history"])
    if len(shown) < len(keys):
        out += f"\n... {len(keys) - len(shown)} more"
    return out
