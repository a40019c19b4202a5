"""Terminal rendering: sparklines, sketches, value and duration formatting, tables."""

from __future__ import annotations

import math
import sys

import pytest

from pipeline.render import (
    BLOCKS,
    SeriesSketch,
    display_width,
    format_duration,
    format_value,
    sparkline,
    summary_table,
    table,
)

# -- sparkline -------------------------------------------------------------------


def test_sparkline_empty_is_empty() -> None:
    assert sparkline([]) == ""


def test_sparkline_rising_series_spans_lowest_to_highest_block() -> None:
    line = sparkline([0, 1, 2, 3, 4, 5, 6, 7])
    assert line == BLOCKS


def test_sparkline_falling_series_is_reversed() -> None:
    assert sparkline([7.0, 3.0, 0.0]) == "█▄▁"


def test_sparkline_constant_series_is_a_flat_middle_line() -> None:
    line = sparkline([2.5] * 5)
    assert len(set(line)) == 1
    assert line[0] not in (BLOCKS[0], BLOCKS[-1])


@pytest.mark.parametrize("gap", [math.nan, math.inf, -math.inf, None])
def test_sparkline_nonfinite_and_missing_are_spaces(gap: float | None) -> None:
    line = sparkline([0.0, gap, 1.0])
    assert line == f"{BLOCKS[0]} {BLOCKS[-1]}"


def test_sparkline_all_gaps_is_all_spaces() -> None:
    assert sparkline([math.nan, None]) == "  "


def test_sparkline_downsamples_to_width_by_bucket_mean() -> None:
    values = [float(i) for i in range(1000)]
    line = sparkline(values, width=10)
    assert len(line) == 10
    assert line[0] == BLOCKS[0]
    assert line[-1] == BLOCKS[-1]
    assert list(line) == sorted(line)  # still rising after bucketing


def test_sparkline_bucket_mean_ignores_nan_inside_a_bucket() -> None:
    # Two buckets of two: [0, nan] -> 0 and [10, 10] -> 10.
    assert sparkline([0.0, math.nan, 10.0, 10.0], width=2) == BLOCKS[0] + BLOCKS[-1]


def test_sparkline_short_series_is_not_stretched() -> None:
    assert len(sparkline([1.0, 2.0, 3.0], width=24)) == 3


def test_sparkline_extreme_range_does_not_overflow() -> None:
    line = sparkline([-sys.float_info.max, 0.0, sys.float_info.max])
    assert line[0] == BLOCKS[0]
    assert line[-1] == BLOCKS[-1]
    assert line[1] in BLOCKS[3:5]


def test_sparkline_rejects_zero_width() -> None:
    with pytest.raises(ValueError, match="width"):
        sparkline([1.0], width=0)


# -- SeriesSketch ------------------------------------------------------------------


def test_sketch_keeps_short_series_exactly() -> None:
    s = SeriesSketch(width=8)
    for v in (3.0, 1.0, 2.0):
        s.add(v)
    assert s.values() == [3.0, 1.0, 2.0]


def test_sketch_memory_is_bounded_and_shape_is_kept() -> None:
    s = SeriesSketch(width=8)
    n = 100_000
    for i in range(n):
        s.add(float(i))
    vals = s.values()
    assert 8 <= len(vals) <= 2 * 8 + 1  # full buckets plus the one being filled
    assert vals == sorted(vals)
    assert vals[0] < n * 0.1
    assert vals[-1] > n * 0.9
    # The means are the means of contiguous runs of the input, so they stay
    # inside its range.
    assert min(vals) >= 0
    assert max(vals) <= n - 1


def test_sketch_bucket_means_are_exact_for_a_linear_series() -> None:
    s = SeriesSketch(width=2)  # at most 4 buckets
    for i in range(8):
        s.add(float(i))
    # 8 points into buckets of 2 once full: [0,1] [2,3] [4,5] [6,7].
    assert s.values() == [0.5, 2.5, 4.5, 6.5]


def test_sketch_nonfinite_values_are_gaps_not_poison() -> None:
    s = SeriesSketch(width=1)  # buckets merge after every two
    for v in (1.0, math.nan, 3.0, math.inf):
        s.add(v)
    vals = s.values()
    assert all(math.isfinite(v) for v in vals)
    s2 = SeriesSketch(width=4)
    s2.add(math.nan)
    assert math.isnan(s2.values()[0])
    assert sparkline(s2.values()) == " "


def test_sketch_len_and_empty() -> None:
    s = SeriesSketch()
    assert s.values() == []
    assert len(s) == 0
    s.add(1.0)
    assert len(s) == 1


def test_sketch_rejects_zero_width() -> None:
    with pytest.raises(ValueError, match="width"):
        SeriesSketch(width=0)


# -- format_value --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (42, "42"),
        (-7, "-7"),
        (0.1, "0.1"),
        (1.0, "1"),
        (0.123456789, "0.123457"),
        (123456.789, "123457"),
        (1.5e-7, "1.5e-7"),
        (2.5e10, "2.5e10"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (True, "True"),
        (None, "None"),
        ({"min": 0.1, "max": 0.9}, "min=0.1 max=0.9"),
        ({"min": math.nan, "max": math.inf}, "min=nan max=inf"),
        ([1, 2.5], "[1, 2.5]"),
        ("hello", "hello"),
    ],
)
def test_format_value(value: object, expected: str) -> None:
    assert format_value(value) == expected


def test_format_value_huge_int_is_compact() -> None:
    assert format_value(10**20) == "1e20"
    assert len(format_value(10**400)) <= 32  # beyond float range: truncated digits


def test_format_value_exponent_form_parses_back() -> None:
    for v in (1.5e-7, 6.02214076e23, -3.2e-300):
        assert math.isclose(float(format_value(v)), v, rel_tol=1e-5)


def test_format_value_truncates_long_strings_with_ellipsis() -> None:
    s = format_value("x" * 100, max_len=10)
    assert s == "x" * 9 + "…"
    assert display_width(s) == 10
    assert format_value("x" * 100, max_len=0) == "x" * 100


def test_format_value_keeps_one_line() -> None:
    assert "\n" not in format_value("a\nb\tc")


# -- format_duration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0.0s"),
        (12.34, "12.3s"),
        (59.9, "59.9s"),
        (59.97, "1m00s"),
        (245, "4m05s"),
        (3599.4, "59m59s"),
        (7380, "2h03m"),
        (90000, "25h00m"),
        (-3, "0.0s"),
        (None, "-"),
        (math.nan, "-"),
    ],
)
def test_format_duration(seconds: float | None, expected: str) -> None:
    assert format_duration(seconds) == expected


# -- table ------------------------------------------------------------------------------


def test_table_aligns_columns() -> None:
    out = table([["loss", "0.1"], ["accuracy", "0.95"]], ["metric", "value"])
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["metric", "value"]
    assert set(lines[1].replace(" ", "")) == {"─"}
    # The value column starts at the same offset on every line.
    col = lines[0].index("value")
    assert lines[2][col:] == "0.1"
    assert lines[3][col:] == "0.95"


def test_table_right_alignment_and_short_rows() -> None:
    out = table([["a", "1"], ["b"]], ["k", "count"], align=["<", ">"])
    lines = out.splitlines()
    assert lines[2].endswith("    1")
    assert lines[3] == "b"  # padding past the last cell is stripped


def test_table_counts_wide_and_block_characters_by_columns() -> None:
    out = table([["学习率", "x"], [BLOCKS, "y"]], ["name", "v"])
    lines = out.splitlines()
    # 学习率 is 6 columns; the block run is 8: the second column lines up.
    assert display_width(lines[2].split("x")[0]) == display_width(lines[3].split("y")[0])


def test_table_rejects_rows_wider_than_headers() -> None:
    with pytest.raises(ValueError, match="cells"):
        table([["a", "b", "c"]], ["one", "two"])


# -- summary_table -------------------------------------------------------------------


def test_summary_table_merges_summary_and_series_sorted() -> None:
    out = summary_table(
        {"loss": 0.25, "best": 0.97, "_runtime": 3.0},
        {"loss": [1.0, 0.5, 0.25], "acc": [0.1, 0.2]},
    )
    lines = out.splitlines()
    names = [line.split()[0] for line in lines[2:]]
    assert names == ["acc", "best", "loss"]  # sorted; "_" keys are runbus's own
    loss = lines[4]
    assert "0.25" in loss
    assert "█▃▁" in loss


def test_summary_table_caps_rows() -> None:
    summary = {f"m{i:03d}": i for i in range(50)}
    out = summary_table(summary, {}, max_rows=40)
    lines = out.splitlines()
    assert len(lines) == 2 + 40 + 1
    assert lines[-1] == "... 10 more"


def test_summary_table_empty() -> None:
    assert summary_table({}, {}) == ""


def test_a_constant_series_averaged_by_the_sketch_draws_flat() -> None:
    from pipeline.render import SeriesSketch, sparkline

    sketch = SeriesSketch()
    for _ in range(1000):
        sketch.add(0.05)  # bucket means of 0.05 differ in the last bits
    line = sparkline(sketch.values())
    assert set(line) == {"▄"}


def test_media_references_render_as_short_tags() -> None:
    from pipeline.render import format_value

    assert format_value({"_type": "image", "width": 64, "height": 32, "path": "x"}) == (
        "<image 64x32>"
    )
    assert format_value({"_type": "table", "rows": 8, "ncols": 3}) == "<table 8x3>"
    assert format_value({"_type": "histogram", "counts": [1, 2], "bins": [0, 1, 2]}) == (
        "<histogram 3 values>"
    )
    assert format_value({"_type": "plot", "chart": "line"}) == "<plot line>"
    assert format_value({"min": 0.5, "max": 1}) == "min=0.5 max=1"
