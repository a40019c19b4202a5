"""pipeline.plot through real runs: each chart is a table file plus a valid Vega-Lite spec."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipeline
from pipeline import jsoncodec, plot
from pipeline.media.table import Table
from pipeline.testing import QUIET_SETTINGS

SETTINGS = QUIET_SETTINGS


def log_and_read(tmp_path: Path, value: Any) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The row's plot reference and its table file, after one real run."""
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    run.log({"chart": value})
    run.finish()
    data = pipeline.read_run(run.dir)
    ref = data.history[0]["chart"]
    doc = jsoncodec.loads((data.path / ref["table"]["path"]).read_bytes())
    return ref, doc, data.path


def fields(node: Any) -> Iterator[str]:
    """Every ``field`` a spec names, outside views that bring their own data."""
    if isinstance(node, dict):
        if "values" in node.get("data", {}):
            return
        if isinstance(node.get("field"), str):
            yield node["field"]
        for key, value in node.items():
            if key != "transform":
                yield from fields(value)
    elif isinstance(node, list):
        for item in node:
            yield from fields(item)


def derived(spec: Any) -> set[str]:
    """Fields that transforms create (``as``), which are not table columns."""
    out: set[str] = set()
    if isinstance(spec, dict):
        for t in spec.get("transform", []):
            for w in t.get("window", []):
                out.add(w["as"])
        for value in spec.values():
            out |= derived(value)
    elif isinstance(spec, list):
        for item in spec:
            out |= derived(item)
    return out


def check_chart(ref: dict[str, Any], doc: dict[str, Any], chart: str) -> None:
    """A plot reference whose spec is Vega-Lite v5 over fields that exist in its table."""
    assert ref["_type"] == "plot"
    assert ref["chart"] == chart
    assert ref["table"]["_type"] == "table"
    assert ref["table"]["path"].startswith("media/table/chart_0_")
    assert ref["table"]["columns"] == doc["columns"]
    assert ref["table"]["rows"] == len(doc["data"])
    spec = ref["spec"]
    assert spec["$schema"] == "https://vega.github.io/schema/vega-lite/v5.json"
    assert spec["data"] == {"name": "table"}
    assert "mark" in spec or "layer" in spec
    named = {f.replace("\\", "") for f in fields(spec)} - derived(spec)
    assert named, "a chart names at least one field"
    assert named <= set(doc["columns"]), (named, doc["columns"])


@pytest.fixture
def metrics() -> Table:
    table = Table(columns=["epoch", "loss", "split.name"])
    for i in range(5):
        table.add_data(i, 1.0 / (i + 1), "train" if i % 2 else "val")
    return table


@pytest.mark.parametrize(
    ("make", "chart"),
    [
        (lambda t: plot.line(t, "epoch", "loss", title="Loss"), "line"),
        (lambda t: plot.line(t, "epoch", "loss", stroke="split.name"), "line"),
        (lambda t: plot.scatter(t, "epoch", "loss"), "scatter"),
        (lambda t: plot.bar(t, "split.name", "loss"), "bar"),
        (lambda t: plot.histogram(t, "loss"), "histogram"),
    ],
)
def test_charts_over_a_table(tmp_path: Path, metrics: Table, make: Any, chart: str) -> None:
    ref, doc, _ = log_and_read(tmp_path, make(metrics))
    check_chart(ref, doc, chart)
    assert doc["data"][0] == [0, 1.0, "val"]


def test_dotted_column_names_are_escaped(metrics: Table) -> None:
    spec = plot.bar(metrics, "split.name", "loss").spec
    assert spec["encoding"]["y"]["field"] == "split\\.name"


def test_unknown_column_names_the_columns(metrics: Table) -> None:
    with pytest.raises(ValueError, match=r"y='acc' is not a column.*\['epoch', 'loss'"):
        plot.line(metrics, "epoch", "acc")
    with pytest.raises(TypeError, match="Table"):
        plot.line({"epoch": [1]}, "epoch", "loss")  # type: ignore[arg-type]


def test_plot_table_is_copied_at_log(tmp_path: Path, metrics: Table) -> None:
    chart = plot.line(metrics, "epoch", "loss")
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    run.log({"chart": chart})
    metrics.add_data(99, 0.0, "x")
    run.finish()
    data = pipeline.read_run(run.dir)
    assert data.history[0]["chart"]["table"]["rows"] == 5
    assert data.summary["chart"]["chart"] == "line"


def test_line_series(tmp_path: Path) -> None:
    chart = plot.line_series(
        [0, 1, 2],
        [[1.0, 2.0, 3.0], np.array([3.0, math.nan, 1.0])],
        keys=["a", "b"],
        title="t",
        xname="epoch",
    )
    ref, doc, _ = log_and_read(tmp_path, chart)
    check_chart(ref, doc, "line_series")
    assert doc["columns"] == ["epoch", "key", "y"]
    assert doc["data"][:2] == [[0, "a", 1.0], [1, "a", 2.0]]
    assert math.isnan(doc["data"][4][2])
    # One xs per line.
    own = plot.line_series([[0, 1], [5, 6, 7]], [[1, 2], [3, 4, 5]])
    assert own.table.get_column("x") == [0, 1, 5, 6, 7]
    assert own.table.get_column("key") == ["line_0"] * 2 + ["line_1"] * 3


def test_line_series_bad_lengths() -> None:
    with pytest.raises(ValueError, match=r"ys\[1\] has 2 values; expected 3"):
        plot.line_series([0, 1, 2], [[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match=r"expected 2 keys.*got 1"):
        plot.line_series([0], [[1], [2]], keys=["a"])
    with pytest.raises(ValueError, match="one per line"):
        plot.line_series([[0], [1], [2]], [[1], [2]])


def test_confusion_matrix(tmp_path: Path) -> None:
    chart = plot.confusion_matrix(
        y_true=[0, 1, 2, 2, 1], preds=[0, 2, 2, 2, 1], class_names=["cat", "dog", "fox"]
    )
    ref, doc, _ = log_and_read(tmp_path, chart)
    check_chart(ref, doc, "confusion_matrix")
    assert doc["columns"] == ["Actual", "Predicted", "nPredictions"]
    cells = {(a, p): n for a, p, n in doc["data"]}
    assert len(cells) == 9
    assert cells[("cat", "cat")] == 1
    assert cells[("dog", "fox")] == 1
    assert cells[("dog", "dog")] == 1
    assert cells[("fox", "fox")] == 2
    assert sum(cells.values()) == 5


def test_confusion_matrix_from_probs_and_labels() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    chart = plot.confusion_matrix(y_true=[0, 1, 1], probs=probs)
    cells = {(a, p): n for a, p, n in chart.table.data}
    assert cells == {("0", "0"): 1, ("0", "1"): 0, ("1", "0"): 1, ("1", "1"): 1}
    named = plot.confusion_matrix(y_true=["b", "a"], preds=["a", "a"])
    assert {(a, p): n for a, p, n in named.table.data}[("b", "a")] == 1
    with pytest.raises(ValueError, match="expected 3"):
        plot.confusion_matrix(y_true=[0, 1, 1], preds=[0, 1])
    with pytest.raises(ValueError, match=r"shape \(3, n_classes\)"):
        plot.confusion_matrix(y_true=[0, 1, 1], probs=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"holds 2; expected class indices 0\.\.1"):
        plot.confusion_matrix(y_true=[0, 2], preds=[0, 1], class_names=["a", "b"])
    with pytest.raises(ValueError, match="either preds or probs"):
        plot.confusion_matrix(y_true=[0])


def _auc(xs: list[float], ys: list[float]) -> float:
    return float(np.trapezoid(ys, xs)) if hasattr(np, "trapezoid") else float(np.trapz(ys, xs))


def test_roc_curve_matches_known_values(tmp_path: Path) -> None:
    # scikit-learn's documented example: roc_curve([1, 1, 2, 2], [.1, .4, .35, .8], pos_label=2)
    # gives fpr [0, 0, .5, .5, 1], tpr [0, .5, .5, 1, 1].
    y = [0, 0, 1, 1]
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    chart = plot.roc_curve(y, np.stack([1 - p1, p1], axis=1), labels=["neg", "pos"])
    ref, doc, _ = log_and_read(tmp_path, chart)
    check_chart(ref, doc, "roc_curve")
    pos = [(f, t) for c, f, t in doc["data"] if c == "pos"]
    assert pos == [(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]


def test_pr_curve_matches_known_values(tmp_path: Path) -> None:
    # scikit-learn's documented example: precision_recall_curve([0, 0, 1, 1], [.1, .4, .35, .8])
    # gives precision [.5, .667, .5, 1, 1], recall [1, 1, .5, .5, 0].
    chart = plot.pr_curve([0, 0, 1, 1], np.array([0.1, 0.4, 0.35, 0.8]))
    ref, doc, _ = log_and_read(tmp_path, chart)
    check_chart(ref, doc, "pr_curve")
    one = [(r, p) for c, r, p in doc["data"] if c == "1"]
    assert [r for r, _ in one] == [1.0, 1.0, 0.5, 0.5, 0.0]
    assert [p for _, p in one] == pytest.approx([0.5, 2 / 3, 0.5, 1.0, 1.0])


def test_curves_are_capped_and_sane_on_big_inputs() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=20_000)
    probas = rng.random((20_000, 3)) + np.eye(3)[y] * 0.5
    probas /= probas.sum(axis=1, keepdims=True)
    roc = plot.roc_curve(y, probas, labels=["a", "b", "c"])
    pr = plot.pr_curve(y, probas, classes_to_plot=[1])
    for name in ("a", "b", "c"):
        pts = [(f, t) for c, f, t in roc.table.data if c == name]
        assert 2 < len(pts) <= plot.MAX_CURVE_POINTS
        assert pts[0] == (0.0, 0.0)
        assert pts[-1] == (1.0, 1.0)
        assert 0.75 < _auc([f for f, _ in pts], [t for _, t in pts]) < 1.0
    assert set(pr.table.get_column("class")) == {"1"}
    assert len(pr.table.data) <= plot.MAX_CURVE_POINTS


def test_curve_bad_input() -> None:
    with pytest.raises(ValueError, match=r"shape \(3, n_classes\).*got \(2, 2\)"):
        plot.roc_curve([0, 1, 1], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"expected 2 labels.*got 3"):
        plot.pr_curve([0, 1], np.zeros((2, 2)), labels=["a", "b", "c"])


def test_custom_spec(tmp_path: Path, metrics: Table) -> None:
    spec = {"mark": "area", "encoding": {"x": {"field": "epoch", "type": "quantitative"}}}
    chart = plot.custom(metrics, spec)
    spec["mark"] = "changed"
    ref, doc, _ = log_and_read(tmp_path, chart)
    check_chart(ref, doc, "custom")
    assert ref["spec"]["mark"] == "area"


def test_custom_spec_validation(metrics: Table) -> None:
    with pytest.raises(ValueError, match="must be a dict"):
        plot.custom(metrics, "mark: line")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a 'mark' or 'layer'"):
        plot.custom(metrics, {"encoding": {}})
    with pytest.raises(ValueError, match="JSON values"):
        plot.custom(metrics, {"mark": object()})
    with pytest.raises(ValueError, match="NaN"):
        plot.custom(metrics, {"mark": "line", "opacity": math.nan})
