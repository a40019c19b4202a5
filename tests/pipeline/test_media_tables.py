"""Histogram and Table through real runs: what is stored, read back, and refused."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipeline
from pipeline import jsoncodec
from pipeline.media.base import Media, MediaContext
from pipeline.media.histogram import MAX_BINS, Histogram, _bin_list
from pipeline.media.table import Table
from pipeline.testing import QUIET_SETTINGS

SETTINGS = QUIET_SETTINGS


def start(tmp_path: Path) -> pipeline.Run:
    return pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)


def finished(run: pipeline.Run) -> pipeline.RunData:
    run.finish()
    return pipeline.read_run(run.dir)


def table_file(run_dir: Path, ref: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = jsoncodec.loads((run_dir / ref["path"]).read_bytes())
    return doc


# -- Histogram -------------------------------------------------------------------


def test_histogram_from_list_is_inline_with_numpy_counts(tmp_path: Path) -> None:
    values = [0.5, 1.0, 1.5, 2.0, 2.0, 3.0, math.nan, math.inf, -math.inf]
    run = start(tmp_path)
    run.log({"h": Histogram(values, num_bins=4)})
    data = finished(run)
    ref = data.history[0]["h"]
    counts, edges = np.histogram([0.5, 1.0, 1.5, 2.0, 2.0, 3.0], bins=4)
    assert ref == {
        "_type": "histogram",
        "bins": edges.tolist(),
        "counts": counts.tolist(),
        "dropped": 3,
    }
    assert not (data.path / "media").exists()  # inline: no file


def test_histogram_from_array_matches_numpy(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).normal(size=(50, 40)).astype(np.float32)
    arr[0, 0] = np.nan
    run = start(tmp_path)
    run.log({"w": Histogram(arr)})
    ref = finished(run).history[0]["w"]
    finite = arr[np.isfinite(arr)]
    counts, edges = np.histogram(finite, bins=64)
    assert ref["counts"] == counts.tolist()
    assert ref["bins"] == pytest.approx(edges.tolist())
    assert ref["dropped"] == 1
    assert sum(ref["counts"]) == arr.size - 1


@pytest.mark.parametrize("n", [0, 1, 2, 17, 1000])
@pytest.mark.parametrize("bins", [1, 3, 64, MAX_BINS])
def test_pure_python_binning_agrees_with_numpy(n: int, bins: int) -> None:
    values = np.random.default_rng(n).standard_cauchy(size=n).tolist()
    counts, edges, dropped = _bin_list(values, bins)
    want_counts, want_edges = np.histogram(values, bins=bins)
    assert counts == want_counts.tolist()
    assert edges == pytest.approx(want_edges.tolist())
    assert dropped == 0


def test_histogram_copies_at_construction(tmp_path: Path) -> None:
    arr = np.zeros(100)
    values = [0.0] * 100
    run = start(tmp_path)
    run.log({"a": Histogram(arr), "l": Histogram(values)})
    arr[:] = 5.0
    values[:] = [5.0] * 100
    data = finished(run)
    for key in ("a", "l"):
        ref = data.history[0][key]
        assert ref["bins"][0] == -0.5
        assert ref["bins"][-1] == 0.5
        assert sum(ref["counts"]) == 100


def test_precomputed_and_from_array(tmp_path: Path) -> None:
    counts, edges = np.histogram(np.arange(10), bins=5)
    arr = np.array([1.0, 2.0, np.nan, 4.0])
    run = start(tmp_path)
    run.log({"pre": Histogram(np_histogram=(counts, edges)), "fast": Histogram.from_array(arr, 2)})
    row = finished(run).history[0]
    assert row["pre"] == {
        "_type": "histogram",
        "bins": edges.astype(float).tolist(),
        "counts": counts.tolist(),
        "dropped": 0,
    }
    assert row["fast"]["counts"] == [2, 1]
    assert row["fast"]["dropped"] == 1


def test_histogram_summary_is_the_last_value(tmp_path: Path) -> None:
    run = start(tmp_path)
    run.log({"h": Histogram([1.0, 2.0], num_bins=2)})
    run.log({"h": Histogram([5.0, 6.0, 7.0], num_bins=3)})
    data = finished(run)
    assert data.summary["h"] == data.history[-1]["h"]
    assert data.summary["h"]["counts"] == [1, 1, 1]


def test_histogram_bad_input() -> None:
    with pytest.raises(ValueError, match="from 1 to 512"):
        Histogram([1.0], num_bins=513)
    with pytest.raises(ValueError, match="from 1 to 512"):
        Histogram([1.0], num_bins=0)
    with pytest.raises(ValueError, match="expected 4 edges for 3 counts, got 3"):
        Histogram(np_histogram=([1, 2, 3], [0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="item 1 is str"):
        Histogram([1.0, "x"])
    with pytest.raises(ValueError, match="dtype"):
        Histogram(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="either"):
        Histogram()
    with pytest.raises(ValueError, match="counts must be finite"):
        Histogram(np_histogram=([1, -1], [0.0, 1.0, 2.0]))


def test_all_nonfinite_histogram_is_empty_not_an_error(tmp_path: Path) -> None:
    run = start(tmp_path)
    run.log({"h": Histogram([math.nan, math.inf], num_bins=2)})
    ref = finished(run).history[0]["h"]
    assert ref["counts"] == [0, 0]
    assert ref["dropped"] == 2


# -- Table ---------------------------------------------------------------------


def test_table_round_trips_exactly(tmp_path: Path) -> None:
    rows = [
        [1, 0.5, "a", True, None],
        [2, math.nan, "b", False, math.inf],
        [np.int64(3), np.float32(-math.inf), np.str_("c"), np.bool_(True), -0.0],
    ]
    run = start(tmp_path)
    run.log({"eval/t": Table(columns=["i", "f", "s", "b", "n"], data=rows)})
    data = finished(run)
    ref = data.history[0]["eval/t"]
    assert ref["_type"] == "table"
    assert ref["path"].startswith("media/table/eval.t_0_")
    assert ref["path"].endswith(".table.json")
    assert (ref["rows"], ref["columns"], ref["ncols"]) == (3, ["i", "f", "s", "b", "n"], 5)
    raw = (data.path / ref["path"]).read_bytes()
    assert (ref["size"], len(ref["sha256"])) == (len(raw), 64)
    doc = table_file(data.path, ref)
    assert doc["columns"] == ["i", "f", "s", "b", "n"]
    assert doc["rows_cut"] == 0
    got = doc["data"]
    assert got[0] == [1, 0.5, "a", True, None]
    assert math.isnan(got[1][1])
    assert got[1][4] == math.inf
    assert got[2][:4] == [3, -math.inf, "c", True]
    assert type(got[2][0]) is int
    assert type(got[2][3]) is bool


def test_add_data_and_mutation_after_log_change_nothing(tmp_path: Path) -> None:
    table = Table(columns=["a", "b"])
    table.add_data(1, "x")
    row = [2, "y"]
    table.data.append(row)
    run = start(tmp_path)
    run.log({"t": table})
    table.add_data(3, "z")
    row[0] = 99
    table.columns[0] = "changed"
    run.log({"t": table})
    data = finished(run)
    first = table_file(data.path, data.history[0]["t"])
    second = table_file(data.path, data.history[1]["t"])
    assert first == {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]], "rows_cut": 0}
    assert second["data"] == [[1, "x"], [99, "y"], [3, "z"]]
    assert data.summary["t"]["rows"] == 3


def test_row_cap_cuts_with_a_clear_warning(tmp_path: Path) -> None:
    table = Table(columns=["i"], data=[[i] for i in range(12)], max_rows=10)
    run = start(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"12 rows.*cap of 10.*2 cut.*max_rows=12") as rec:
        run.log({"t": table})
    assert rec[0].filename == __file__  # points at the user's log() line
    data = finished(run)
    ref = data.history[0]["t"]
    assert (ref["rows"], ref["rows_cut"]) == (10, 2)
    assert table_file(data.path, ref)["data"] == [[i] for i in range(10)]


def test_default_cap_is_ten_thousand(tmp_path: Path) -> None:
    run = start(tmp_path)
    with pytest.warns(RuntimeWarning, match="10,000"):
        run.log({"t": Table(columns=["i"], data=[[i] for i in range(10_001)])})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log({"u": Table(columns=["i"], data=[[i] for i in range(10_001)], max_rows=None)})
    data = finished(run)
    assert data.history[0]["t"]["rows"] == 10_000
    assert data.history[1]["u"]["rows"] == 10_001


def test_table_bad_input(tmp_path: Path) -> None:
    table = Table(columns=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"expected 3 values.*got 2"):
        table.add_data(1, 2)
    with pytest.raises(ValueError, match="row 1 has 1 values; expected 2"):
        Table(columns=["a", "b"], data=[[1, 2], [3]])
    with pytest.raises(ValueError, match="unique"):
        Table(columns=["a", "a"])
    with pytest.raises(ValueError, match="max_rows"):
        Table(columns=["a"], max_rows=0)
    with pytest.raises(ValueError, match="columns="):
        Table(data=[[1]])
    with pytest.raises(TypeError, match="itertuples"):
        Table(dataframe=object())
    bad = Table(columns=["a", "when"], data=[[1, object()]])
    run = start(tmp_path)
    with pytest.raises(TypeError, match="'when' holds a object"):
        run.log({"t": bad})
    # A row made too short after construction is refused at log() too.
    ok = Table(columns=["a"], data=[[1]])
    ok.data.append([])
    with pytest.raises(ValueError, match="row 1 has 0 values; expected 1"):
        run.log({"t": ok})
    assert finished(run).history == []


def test_dataframe_and_numpy_data(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"x": [1, 2], "y": [0.5, np.nan], "name": ["a", "b"]})
    run = start(tmp_path)
    run.log({"df": Table(dataframe=df), "np": Table(columns=["p", "q"], data=np.eye(2))})
    data = finished(run)
    doc = table_file(data.path, data.history[0]["df"])
    assert doc["columns"] == ["x", "y", "name"]
    assert doc["data"][0] == [1, 0.5, "a"]
    assert math.isnan(doc["data"][1][1])
    assert table_file(data.path, data.history[0]["np"])["data"] == [[1.0, 0.0], [0.0, 1.0]]


def test_add_and_get_column() -> None:
    table = Table(columns=["a"], data=[[1], [2]])
    table.add_column("b", ["x", "y"])
    assert table.get_column("b") == ["x", "y"]
    assert table.columns == ["a", "b"]
    with pytest.raises(ValueError, match="expected 2 values"):
        table.add_column("c", [1])
    with pytest.raises(KeyError, match="no column 'z'"):
        table.get_column("z")


class _Blob(Media):
    """A stand-in media type (the real Image lives elsewhere): one file per value."""

    kind = "blob"

    def __init__(self, payload: bytearray) -> None:
        self.payload = payload

    def _freeze(self) -> _Blob:
        return _Blob(bytearray(self.payload))

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        return ctx.write("blob", "bin", bytes(self.payload))


def test_media_cells_are_frozen_encoded_and_referenced(tmp_path: Path) -> None:
    payload = bytearray(b"first")
    table = Table(columns=["id", "thing"], data=[[0, _Blob(payload)], [1, None]])
    run = start(tmp_path)
    run.log({"t": table})
    payload[:] = b"later"
    data = finished(run)
    cell = table_file(data.path, data.history[0]["t"])["data"][0][1]
    assert cell["_type"] == "blob"
    assert cell["path"].startswith("media/blob/t_r0_c1_0_")
    assert (data.path / cell["path"]).read_bytes() == b"first"
    assert cell["path"] in data.files
