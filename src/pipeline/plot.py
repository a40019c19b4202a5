"""Charts for ``run.log``: a :class:`~pipeline.media.table.Table` plus a Vega-Lite spec.

Every function here returns a :class:`Plot`, a media value that stores its
table as a table file (``media/table/<key>_<step>_<hash>.table.json``, the same
format as a logged ``Table``) and embeds its Vega-Lite v5 spec in the row's
reference, so any Vega-Lite renderer draws it without another fetch::

    {"_type": "plot", "chart": "line", "table": {<table reference>}, "spec": {...}}

The spec's data is the named data set ``"table"``
(``"data": {"name": "table"}``): a renderer binds it to the table's rows as
objects keyed by column name. Field names in the spec are the table's column
names, with Vega-Lite's special characters (``.``, ``[``, ``]``) escaped.

``line``, ``scatter``, ``bar`` and ``histogram`` chart columns of a table you
built; ``line_series``, ``confusion_matrix``, ``pr_curve`` and ``roc_curve``
build the table for you (the curves with numpy, without scikit-learn, with the
same semantics); ``custom`` puts your own spec over a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

import orjson

from pipeline import jsoncodec
from pipeline.media.base import Media, MediaContext
from pipeline.media.table import Table

__all__ = [
    "Plot",
    "bar",
    "confusion_matrix",
    "custom",
    "histogram",
    "line",
    "line_series",
    "pr_curve",
    "roc_curve",
    "scatter",
]

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
#: The most points a PR or ROC curve keeps per class (evenly spaced, ends kept).
MAX_CURVE_POINTS = 1000
#: Top-level keys that make a dict a Vega-Lite view (single, layered or composed).
_VIEW_KEYS = ("mark", "layer", "concat", "hconcat", "vconcat", "facet", "repeat")


class Plot(Media):
    """A chart: a table and a Vega-Lite v5 spec over its columns.

    Made by the functions of :mod:`pipeline.plot`; ``.table`` and ``.spec``
    are the parts. Logged, the table is written as a table file and the spec
    is embedded in the row's reference (``_type`` "plot").
    """

    kind = "plot"

    def __init__(self, table: Table, spec: dict[str, Any], chart: str = "custom") -> None:
        self.table = table
        self.spec = spec
        self.chart = chart

    def _freeze(self) -> Plot:
        # The spec is copied too: custom() hands back the user's dict otherwise.
        return Plot(self.table._freeze(), orjson.loads(orjson.dumps(self.spec)), self.chart)

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        return {
            "_type": "plot",
            "chart": self.chart,
            "table": self.table._write(ctx),
            "spec": self.spec,
        }

    def __repr__(self) -> str:
        return f"Plot({self.chart!r}, {self.table!r})"


# -- helpers -------------------------------------------------------------------


def field(name: str) -> str:
    """A column name as a Vega-Lite field (``.``, ``[`` and ``]`` escaped)."""
    return name.replace("\\", "\\\\").replace(".", "\\.").replace("[", "\\[").replace("]", "\\]")


def _spec(title: str | None, **view: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"$schema": SCHEMA, "data": {"name": "table"}}
    if title:
        spec["title"] = title
    spec.update(view)
    return spec


def _column(table: Table, name: str, role: str, fn: str) -> str:
    if not isinstance(table, Table):
        raise TypeError(f"plot.{fn}: expected a pipeline Table, not {type(table).__name__}")
    if name not in table.columns:
        raise ValueError(
            f"plot.{fn}: {role}={name!r} is not a column of the table; its columns: {table.columns}"
        )
    return name


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is in the media extra
        raise ImportError(
            "pipeline.plot needs numpy for this chart: pip install 'runbus[media]'"
        ) from None
    return numpy


def _flat_list(values: Any, what: str, fn: str) -> list[Any]:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"plot.{fn}: {what} must be a sequence, not {type(values).__name__}")
    return list(values)


# -- charts over a table you built ---------------------------------------------


def line(table: Table, x: str, y: str, stroke: str | None = None, title: str | None = None) -> Plot:
    """A line chart of column ``y`` over column ``x`` (one line per ``stroke`` value).

    Raises ``ValueError`` if a named column is not in the table.
    """
    enc: dict[str, Any] = {
        "x": {"field": field(_column(table, x, "x", "line")), "type": "quantitative"},
        "y": {"field": field(_column(table, y, "y", "line")), "type": "quantitative"},
    }
    if stroke is not None:
        enc["color"] = {"field": field(_column(table, stroke, "stroke", "line")), "type": "nominal"}
    return Plot(table, _spec(title, mark={"type": "line", "tooltip": True}, encoding=enc), "line")


def scatter(table: Table, x: str, y: str, title: str | None = None) -> Plot:
    """A scatter plot of column ``y`` against column ``x``."""
    enc = {
        "x": {"field": field(_column(table, x, "x", "scatter")), "type": "quantitative"},
        "y": {"field": field(_column(table, y, "y", "scatter")), "type": "quantitative"},
    }
    return Plot(
        table, _spec(title, mark={"type": "point", "tooltip": True}, encoding=enc), "scatter"
    )


def bar(table: Table, label: str, value: str, title: str | None = None) -> Plot:
    """A horizontal bar per row: column ``value`` as the length, ``label`` as the name."""
    enc = {
        "y": {
            "field": field(_column(table, label, "label", "bar")),
            "type": "nominal",
            "sort": None,
        },
        "x": {"field": field(_column(table, value, "value", "bar")), "type": "quantitative"},
    }
    return Plot(table, _spec(title, mark={"type": "bar", "tooltip": True}, encoding=enc), "bar")


def histogram(table: Table, value: str, title: str | None = None, num_bins: int = 64) -> Plot:
    """A histogram of column ``value`` (binned by the renderer, at most ``num_bins`` bins)."""
    enc = {
        "x": {
            "field": field(_column(table, value, "value", "histogram")),
            "type": "quantitative",
            "bin": {"maxbins": num_bins},
        },
        "y": {"aggregate": "count", "type": "quantitative"},
    }
    return Plot(
        table, _spec(title, mark={"type": "bar", "tooltip": True}, encoding=enc), "histogram"
    )


def custom(table: Table, spec: dict[str, Any]) -> Plot:
    """Your own Vega-Lite spec over ``table``.

    The spec reads the table as the named data set ``"table"``; a spec without
    ``data`` gets ``{"name": "table"}``, and ``$schema`` defaults to Vega-Lite
    v5. Raises ``ValueError`` unless ``spec`` is a JSON-storable dict with a
    ``mark`` or a ``layer`` (or another view composition: concat, facet, repeat).
    """
    if not isinstance(table, Table):
        raise TypeError(f"plot.custom: expected a pipeline Table, not {type(table).__name__}")
    if not isinstance(spec, dict):
        raise ValueError(
            f"plot.custom: spec must be a dict (a Vega-Lite spec), not {type(spec).__name__}"
        )
    if not any(k in spec for k in _VIEW_KEYS):
        raise ValueError(
            f"plot.custom: spec is not a Vega-Lite view: expected a 'mark' or 'layer' key "
            f"(or one of {', '.join(_VIEW_KEYS[2:])}), got keys {sorted(spec)}"
        )
    try:
        nonfinite = jsoncodec.has_nonfinite(spec)
        copied = orjson.loads(orjson.dumps(spec))
    except TypeError as exc:
        raise ValueError(f"plot.custom: spec must hold only JSON values ({exc})") from None
    if nonfinite:
        raise ValueError("plot.custom: spec holds NaN or infinity, which Vega-Lite can't read")
    out = {"$schema": SCHEMA, "data": {"name": "table"}}
    out.update(copied)
    return Plot(table, out, "custom")


# -- charts that build their own table -----------------------------------------


def line_series(
    xs: Any,
    ys: Any,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    xname: str = "x",
) -> Plot:
    """Several lines in one chart: ``ys[i]`` over ``xs`` (shared) or ``xs[i]``.

    The table has columns ``xname``, ``"key"`` (the line's name, ``keys[i]``
    or ``line_<i>``) and ``"y"``. Raises ``ValueError`` when lengths disagree.
    """
    fn = "line_series"
    ys_list = [_flat_list(y, f"ys[{i}]", fn) for i, y in enumerate(_flat_list(ys, "ys", fn))]
    xs_list = _flat_list(xs, "xs", fn)
    if xs_list and all(isinstance(x, Sequence) and not isinstance(x, str) for x in xs_list):
        if len(xs_list) != len(ys_list):
            raise ValueError(
                f"plot.line_series: xs holds {len(xs_list)} sequences; expected one per line "
                f"({len(ys_list)}) or a single shared sequence"
            )
        per_line = [list(x) for x in xs_list]
    else:
        per_line = [xs_list] * len(ys_list)
    if keys is None:
        names = [f"line_{i}" for i in range(len(ys_list))]
    else:
        names = [str(k) for k in _flat_list(keys, "keys", fn)]
        if len(names) != len(ys_list):
            raise ValueError(
                f"plot.line_series: expected {len(ys_list)} keys (one per line), got {len(names)}"
            )
    if xname in ("key", "y"):
        raise ValueError(f"plot.line_series: xname {xname!r} clashes with the columns 'key'/'y'")
    rows: list[tuple[Any, ...]] = []
    for i, (x, y) in enumerate(zip(per_line, ys_list, strict=True)):
        if len(x) != len(y):
            raise ValueError(
                f"plot.line_series: ys[{i}] has {len(y)} values; expected {len(x)} "
                f"(as many as its xs)"
            )
        name = names[i]
        # Tuples built by zip in C; the table's freeze keeps them as they are.
        rows.extend(zip(x, repeat(name), y))
    table = Table(columns=[xname, "key", "y"], data=rows, max_rows=None)
    enc = {
        "x": {"field": field(xname), "type": "quantitative", "title": xname},
        "y": {"field": "y", "type": "quantitative"},
        "color": {"field": "key", "type": "nominal", "title": None},
    }
    return Plot(
        table, _spec(title, mark={"type": "line", "tooltip": True}, encoding=enc), "line_series"
    )


def confusion_matrix(
    y_true: Any = None,
    preds: Any = None,
    probs: Any = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Plot:
    """A confusion matrix: counts of (actual, predicted) class pairs.

    ``y_true`` and ``preds`` hold class indices (into ``class_names``); pass
    ``probs`` (one row of class scores per sample) instead of ``preds`` to
    predict the highest-scoring class. Without ``class_names`` the classes are
    the sorted distinct values seen, named by ``str``. The table has columns
    ``Actual``, ``Predicted``, ``nPredictions``, with every pair (zeros too).
    Raises ``ValueError`` for lengths or indices that don't fit.
    """
    fn = "confusion_matrix"
    if y_true is None:
        raise ValueError("plot.confusion_matrix: y_true is required")
    if (preds is None) == (probs is None):
        raise ValueError("plot.confusion_matrix: pass either preds or probs, not both or neither")
    truth = _flat_list(y_true, "y_true", fn)
    if probs is not None:
        np = _numpy()
        scores = np.asarray(probs.detach().cpu().numpy() if hasattr(probs, "detach") else probs)
        if scores.ndim != 2 or scores.shape[0] != len(truth):
            raise ValueError(
                f"plot.confusion_matrix: probs must have shape ({len(truth)}, n_classes); "
                f"got {scores.shape}"
            )
        if class_names is not None and scores.shape[1] != len(class_names):
            raise ValueError(
                f"plot.confusion_matrix: probs has {scores.shape[1]} columns; expected "
                f"{len(class_names)} (one per class name)"
            )
        predicted = scores.argmax(axis=1).tolist()
    else:
        predicted = _flat_list(preds, "preds", fn)
    if len(predicted) != len(truth):
        raise ValueError(
            f"plot.confusion_matrix: preds has {len(predicted)} values; expected {len(truth)} "
            f"(as many as y_true)"
        )
    if class_names is not None:
        names = [str(c) for c in class_names]
        n = len(names)
        for what, values in (("y_true", truth), ("preds", predicted)):
            for v in values:
                if type(v) is not int or not 0 <= v < n:
                    raise ValueError(
                        f"plot.confusion_matrix: {what} holds {v!r}; expected class indices "
                        f"0..{n - 1} (one per class name)"
                    )
        index = list(range(n))
        lookup: dict[Any, int] = {i: i for i in index}
    else:
        classes = sorted(set(truth) | set(predicted), key=lambda v: (str(type(v)), v))
        names = [str(c) for c in classes]
        lookup = {c: i for i, c in enumerate(classes)}
        n = len(classes)
    counts = [[0] * n for _ in range(n)]
    for t, p in zip(truth, predicted, strict=True):
        counts[lookup[t]][lookup[p]] += 1
    rows = [[names[i], names[j], counts[i][j]] for i in range(n) for j in range(n)]
    table = Table(columns=["Actual", "Predicted", "nPredictions"], data=rows, max_rows=None)
    order = {"sort": names}
    spec = _spec(
        title or "Confusion matrix",
        encoding={
            "x": {"field": "Predicted", "type": "nominal", **order},
            "y": {"field": "Actual", "type": "nominal", **order},
        },
        layer=[
            {
                "mark": {"type": "rect", "tooltip": True},
                "encoding": {"color": {"field": "nPredictions", "type": "quantitative"}},
            },
            {
                "mark": {"type": "text"},
                "encoding": {"text": {"field": "nPredictions", "type": "quantitative"}},
            },
        ],
    )
    return Plot(table, spec, "confusion_matrix")


def _curve_inputs(
    y_true: Any, y_probas: Any, labels: Sequence[str] | None, fn: str
) -> tuple[Any, Any, list[tuple[str, Any]]]:
    """numpy, the score matrix, and per class its name and 0/1 truth vector."""
    np = _numpy()
    truth = np.asarray(_flat_list(y_true, "y_true", fn))
    scores = np.asarray(
        y_probas.detach().cpu().numpy() if hasattr(y_probas, "detach") else y_probas
    )
    if scores.ndim == 1:  # binary: the score of class 1
        scores = np.stack([1.0 - scores, scores], axis=1)
    if scores.ndim != 2 or scores.shape[0] != truth.shape[0]:
        raise ValueError(
            f"plot.{fn}: y_probas must have shape ({truth.shape[0]}, n_classes) (or "
            f"({truth.shape[0]},) for two classes); got {scores.shape}"
        )
    if scores.dtype.kind not in "biuf":
        raise ValueError(f"plot.{fn}: y_probas must hold numbers, got dtype {scores.dtype}")
    k = scores.shape[1]
    if labels is not None and len(labels) != k:
        raise ValueError(
            f"plot.{fn}: expected {k} labels (one per column of y_probas), got {len(labels)}"
        )
    names = [str(lab) for lab in labels] if labels is not None else [str(i) for i in range(k)]
    by_name = truth.dtype.kind in "USO" and labels is not None
    classes = []
    for i in range(k):
        # y_true holds class indices (columns of y_probas), or label names if it holds strings.
        positive = truth == (names[i] if by_name else i)
        classes.append((names[i], positive))
    return np, scores.astype(np.float64), classes


def _binary_counts(np: Any, positive: Any, score: Any) -> tuple[Any, Any, Any]:
    """True and false positives at each distinct threshold, highest first (as scikit-learn)."""
    order = np.argsort(score, kind="mergesort")[::-1]
    score = score[order]
    hit = positive[order].astype(np.float64)
    distinct = np.where(np.diff(score))[0]
    ends = np.r_[distinct, hit.size - 1]
    tps = np.cumsum(hit)[ends]
    fps = 1 + ends - tps
    return tps, fps, score[ends]


def _downsample(np: Any, n: int) -> Any:
    """Indices of at most MAX_CURVE_POINTS evenly spaced points, both ends kept."""
    if n <= MAX_CURVE_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_CURVE_POINTS).round().astype(np.int64))


def _curve_plot(
    rows: list[tuple[Any, ...]], xname: str, yname: str, title: str, chart: str, diagonal: bool
) -> Plot:
    table = Table(columns=["class", xname, yname], data=rows, max_rows=None)
    line_view: dict[str, Any] = {
        "mark": {"type": "line", "tooltip": True},
        "encoding": {
            "x": {"field": xname, "type": "quantitative", "scale": {"domain": [0, 1]}},
            "y": {"field": yname, "type": "quantitative", "scale": {"domain": [0, 1]}},
            "color": {"field": "class", "type": "nominal"},
            "order": {"field": "__index", "type": "quantitative"},
        },
    }
    # Draw in table order (the curve's), not sorted by x: Vega-Lite's line default.
    line_view["transform"] = [{"window": [{"op": "row_number", "as": "__index"}]}]
    if diagonal:  # the chance line of a ROC chart
        spec = _spec(
            title,
            layer=[
                line_view,
                {
                    "data": {"values": [{xname: 0, yname: 0}, {xname: 1, yname: 1}]},
                    "mark": {"type": "line", "strokeDash": [4, 4], "color": "gray"},
                    "encoding": {
                        "x": {"field": xname, "type": "quantitative"},
                        "y": {"field": yname, "type": "quantitative"},
                    },
                },
            ],
        )
    else:
        spec = _spec(title, **line_view)
    return Plot(table, spec, chart)


def pr_curve(
    y_true: Any,
    y_probas: Any,
    labels: Sequence[str] | None = None,
    classes_to_plot: Sequence[int] | None = None,
    title: str | None = None,
) -> Plot:
    """Precision-recall curves, one per class (one-vs-rest), as scikit-learn computes them.

    ``y_true`` holds class indices (columns of ``y_probas``), or label names
    when ``labels`` is given; ``y_probas`` has a row of class scores per sample
    (or one score per sample for two classes). A class with no positive sample
    has no curve. At most 1000 points per class are kept. Table columns:
    ``class``, ``recall``, ``precision``.
    """
    np, scores, classes = _curve_inputs(y_true, y_probas, labels, "pr_curve")
    rows: list[tuple[Any, ...]] = []
    for i, (name, positive) in enumerate(classes):
        if classes_to_plot is not None and i not in classes_to_plot:
            continue
        if not positive.any():
            continue
        tps, fps, _ = _binary_counts(np, positive, scores[:, i])
        precision = tps / (tps + fps)
        recall = tps / tps[-1]
        # Lowest threshold last -> reversed, then the (recall 0, precision 1) end point.
        precision = np.r_[precision[::-1], 1.0]
        recall = np.r_[recall[::-1], 0.0]
        keep = _downsample(np, recall.size)
        rows.extend(zip(repeat(name), recall[keep].tolist(), precision[keep].tolist()))
    return _curve_plot(
        rows, "recall", "precision", title or "Precision v. Recall", "pr_curve", False
    )


def roc_curve(
    y_true: Any,
    y_probas: Any,
    labels: Sequence[str] | None = None,
    classes_to_plot: Sequence[int] | None = None,
    title: str | None = None,
) -> Plot:
    """ROC curves, one per class (one-vs-rest), as scikit-learn computes them.

    Inputs as :func:`pr_curve`. A class without both positive and negative
    samples has no curve. Collinear points are dropped (scikit-learn's
    ``drop_intermediate``), then at most 1000 points per class are kept. Table
    columns: ``class``, ``fpr``, ``tpr``.
    """
    np, scores, classes = _curve_inputs(y_true, y_probas, labels, "roc_curve")
    rows: list[tuple[Any, ...]] = []
    for i, (name, positive) in enumerate(classes):
        if classes_to_plot is not None and i not in classes_to_plot:
            continue
        if not positive.any() or positive.all():
            continue
        tps, fps, _ = _binary_counts(np, positive, scores[:, i])
        if tps.size > 2:  # drop points on a straight line between their neighbours
            keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
            tps, fps = tps[keep], fps[keep]
        tpr = np.r_[0.0, tps / tps[-1]]
        fpr = np.r_[0.0, fps / fps[-1]]
        keep = _downsample(np, fpr.size)
        rows.extend(zip(repeat(name), fpr[keep].tolist(), tpr[keep].tolist()))
    return _curve_plot(rows, "fpr", "tpr", title or "ROC", "roc_curve", True)
