"""``Table``: named columns of rows, stored as a JSON file next to the run.

The file is ``media/table/<key>_<step>_<hash>.table.json``, written with
:mod:`pipeline.jsoncodec` (so NaN and +-inf in cells read back exact)::

    {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]], "rows_cut": 0}

and the history row keeps a reference ``{"_type": "table", "path", "sha256",
"size", "rows", "columns", "ncols", "rows_cut"}``. Cells hold numbers, strings,
bools, None, numpy scalars, or media (``Image`` and friends): a media cell is
encoded as its own file and the cell holds its reference.

At ``log()`` time the rows are copied (a tuple per row; the cells themselves
are immutable scalars, and media cells are frozen), which is all the calling
thread pays; the JSON encoding and the file happen on the media worker.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any, cast

import orjson

from pipeline import jsoncodec
from pipeline.media.base import Media, MediaContext

#: Rows a table keeps by default; ``Table(max_rows=...)`` changes it.
DEFAULT_MAX_ROWS = 10_000

#: Cell types stored as they are.
_PLAIN: frozenset[type] = frozenset({int, float, str, bool, type(None)})
_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's line, not at runbus.

    The call depth from ``run.log`` down to a table's freeze varies, so the
    frames inside the ``pipeline`` package are counted instead of guessed.
    """
    frame = sys._getframe(2)  # the caller of the function that warns
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PKG):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _is_plain_scalar(value: object) -> bool:
    """numpy scalars (converted with ``.item()`` when the file is written)."""
    t = type(value)
    return t.__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0


class Table(Media):
    """A table for ``run.log``: ``Table(columns=[...], data=[[...], ...])``.

    Or ``Table(dataframe=df)`` from a pandas DataFrame (or anything with
    ``.columns`` and ``.itertuples()``/``.to_dict()``; pandas itself is not
    needed). ``add_data(*row)`` appends a row. At most ``max_rows`` rows
    (10,000 by default; ``None`` for no cap) are stored: a larger table is cut
    with a ``RuntimeWarning`` when it is logged, and the number cut is kept in
    the file (``rows_cut``).

    Raises ``ValueError`` for a row whose length is not the number of columns
    (naming both), duplicate column names, or ``max_rows`` below 1;
    ``TypeError`` for a cell runbus can't store (at ``log()``, naming the
    column) and for a ``dataframe`` without columns and rows.
    """

    kind = "table"

    def __init__(
        self,
        columns: Sequence[Any] | None = None,
        data: Iterable[Sequence[Any]] | Any = None,
        rows: Iterable[Sequence[Any]] | None = None,
        dataframe: Any = None,
        max_rows: int | None = DEFAULT_MAX_ROWS,
    ) -> None:
        if max_rows is not None and (type(max_rows) is not int or max_rows < 1):
            raise ValueError(f"Table: max_rows must be an int >= 1 or None, not {max_rows!r}")
        self.max_rows = max_rows
        self.rows_cut = 0
        if data is not None and rows is not None:
            raise TypeError("Table: pass data= or rows= (they are the same), not both")
        if rows is not None:
            data = rows
        if dataframe is not None:
            if columns is not None or data is not None:
                raise TypeError("Table: pass dataframe= alone, or columns= with data=")
            columns, data = _from_dataframe(dataframe)
        if columns is None:
            if data is not None:
                raise ValueError("Table: data needs column names: pass columns=[...]")
            columns = []
        self.columns: list[str] = _check_columns(columns)
        if hasattr(data, "tolist") and hasattr(data, "shape"):  # a 2-D numpy array
            data = data.tolist()
        #: The rows, as given (each a list or tuple); copied when the table is logged.
        self.data: list[Sequence[Any]] = list(data) if data is not None else []
        _check_lengths(self.data, len(self.columns), "Table")

    @property
    def ncols(self) -> int:
        """The number of columns."""
        return len(self.columns)

    def add_data(self, *row: Any) -> None:
        """Append one row (one value per column; ``ValueError`` otherwise)."""
        if len(row) != len(self.columns):
            raise ValueError(
                f"Table.add_data: expected {len(self.columns)} values (columns "
                f"{', '.join(self.columns)}), got {len(row)}"
            )
        self.data.append(row)

    def add_column(self, name: str, data: Sequence[Any]) -> None:
        """Append a column: one value per existing row (``ValueError`` otherwise)."""
        name = str(name)
        if name in self.columns:
            raise ValueError(f"Table.add_column: there is already a column {name!r}")
        if self.columns and len(data) != len(self.data):
            raise ValueError(
                f"Table.add_column: expected {len(self.data)} values (one per row), got {len(data)}"
            )
        if not self.columns:
            self.data = [() for _ in data]
        self.columns.append(name)
        self.data = [(*row, value) for row, value in zip(self.data, data, strict=True)]

    def get_column(self, name: str) -> list[Any]:
        """The values of column ``name`` (``KeyError`` if there is none)."""
        try:
            i = self.columns.index(name)
        except ValueError:
            raise KeyError(f"Table has no column {name!r}; its columns: {self.columns}") from None
        return [row[i] for row in self.data]

    def _freeze(self) -> Table:
        rows = self.data
        cut = 0
        if self.max_rows is not None and len(rows) > self.max_rows:
            cut = len(rows) - self.max_rows
            rows = rows[: self.max_rows]
            warnings.warn(
                f"runbus: a Table with {len(self.data):,} rows was logged, more than its cap "
                f"of {self.max_rows:,}: the first {self.max_rows:,} are stored and {cut:,} cut. "
                f"Pass Table(..., max_rows={len(self.data)}) (or max_rows=None) to keep them all",
                RuntimeWarning,
                stacklevel=_user_stacklevel(),
            )
        # A tuple per row: rows added or changed after log() don't reach the copy.
        # Tuples, not lists: map(tuple) runs in C, a row that already is a tuple
        # (add_data) is reused as is, and the garbage collector stops tracking a
        # tuple of scalars, so queued tables don't lengthen later collections.
        copied: list[tuple[Any, ...]] = list(map(tuple, rows))
        _check_lengths(copied, len(self.columns), "Table")
        frozen = Table.__new__(Table)
        frozen.columns = list(self.columns)
        frozen.max_rows = None
        frozen.rows_cut = cut
        frozen._convert = False
        types = set(map(type, chain.from_iterable(copied)))
        if not types <= _PLAIN:
            copied = self._freeze_cells(copied, types - _PLAIN)
            frozen._convert = True
        frozen.data = cast(list[Sequence[Any]], copied)
        return frozen

    _convert: bool = False  # whether some cells need turning into JSON values when written

    def _freeze_cells(self, rows: list[tuple[Any, ...]], odd: set[type]) -> list[tuple[Any, ...]]:
        """``rows`` with media cells frozen; raise for cells that can't be stored."""
        check = not all(issubclass(t, Media) for t in odd)
        has_media = any(issubclass(t, Media) for t in odd)
        out = rows
        for i, row in enumerate(rows):
            if check:
                for j, cell in enumerate(row):
                    if (
                        type(cell) not in _PLAIN
                        and not isinstance(cell, Media)
                        and not _is_plain_scalar(cell)
                    ):
                        raise TypeError(
                            f"Table: column {self.columns[j]!r} holds a {_type_name(cell)}, "
                            f"which runbus can't store in a table; cells may be numbers, "
                            f"strings, bools, None or media (Image, Audio, ...). Convert it "
                            f"first (e.g. str(x))"
                        )
            if has_media and any(isinstance(cell, Media) for cell in row):
                if out is rows:
                    out = list(rows)
                out[i] = tuple(c._freeze() if isinstance(c, Media) else c for c in row)
        return out

    def _rows_for_json(self, ctx: MediaContext) -> list[Sequence[Any]]:
        """The rows with numpy scalars unwrapped and media cells encoded to references."""
        if not self._convert:
            return self.data
        out: list[Sequence[Any]] = []
        for i, row in enumerate(self.data):
            new = []
            for j, cell in enumerate(row):
                if isinstance(cell, Media):
                    # Files of cells are announced with the row's (the same ``saved`` list).
                    key = f"{ctx.key}_r{i}_c{j}"
                    sub = MediaContext(ctx.run_id, ctx.run_dir, key, ctx.step, ctx.saved)
                    ref = cell._encode(sub)
                    ref.setdefault("_type", cell.kind)
                    new.append(ref)
                elif type(cell) in _PLAIN:
                    new.append(cell)
                else:  # numpy scalar: .item() gives the Python float/int/bool/str
                    new.append(cell.item())
            out.append(new)
        return out

    def _write(self, ctx: MediaContext) -> dict[str, Any]:
        """Write the table file; return its reference (``_type`` "table")."""
        rows = self._rows_for_json(ctx)
        doc = {"columns": self.columns, "data": _tag_rows(rows), "rows_cut": self.rows_cut}
        ref = ctx.write("table", "table.json", orjson.dumps(doc, option=_JSON_OPTS))
        ref.update(
            _type="table",
            rows=len(self.data),
            columns=list(self.columns),
            ncols=len(self.columns),
            rows_cut=self.rows_cut,
        )
        return ref

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        return self._write(ctx)

    def __repr__(self) -> str:
        return f"Table(columns={self.columns!r}, rows={len(self.data)})"


#: As :func:`pipeline.jsoncodec.dumps` writes (which the table file must read back with).
_JSON_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_is_float = float.__instancecheck__


def _tag_rows(rows: list[Sequence[Any]]) -> list[Sequence[Any]]:
    """``rows`` with NaN/inf cells in :mod:`pipeline.jsoncodec`'s tagged form.

    ``jsoncodec.dumps`` would walk every cell in Python, which on the media
    worker holds the GIL long enough to slow the training thread (measured:
    a 10,000-row table's log() p50 went from 3 ms to 50 ms next to it). A sum
    of the float cells is computed in C and is finite exactly when every cell
    is (NaN and inf propagate; an overflow to inf only costs a needless scan),
    so the common all-finite table goes straight to orjson.
    """
    total = sum(filter(_is_float, chain.from_iterable(rows)), 0.0)
    if total - total == 0.0:
        return rows
    out: list[Sequence[Any]] = []
    for row in rows:
        s = sum(filter(_is_float, row), 0.0)
        out.append(row if s - s == 0.0 else jsoncodec.tag(row))
    return out


def _check_columns(columns: Sequence[Any]) -> list[str]:
    if isinstance(columns, str) or not isinstance(columns, Iterable):
        raise TypeError(f"Table: columns must be a list of names, not {type(columns).__name__}")
    names = [str(c) for c in columns]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"Table: column names must be unique; repeated: {dup}")
    return names


def _check_lengths(rows: Sequence[Sequence[Any]], ncols: int, where: str) -> None:
    # One C-level pass for the common case; the slow loop only finds the culprit.
    lengths = set(map(len, rows))
    if lengths and lengths != {ncols}:
        for i, row in enumerate(rows):
            if len(row) != ncols:
                raise ValueError(
                    f"{where}: row {i} has {len(row)} values; expected {ncols} (one per column)"
                )


def _from_dataframe(df: Any) -> tuple[list[str], list[Sequence[Any]]]:
    """Column names and rows of a pandas (or pandas-like) DataFrame."""
    if not hasattr(df, "columns"):
        raise TypeError(
            f"Table: dataframe= takes a pandas DataFrame (pip install pandas) or an object "
            f"with .columns and .itertuples()/.to_dict(), not {type(df).__name__}"
        )
    columns = [str(c) for c in df.columns]
    if hasattr(df, "to_numpy") and hasattr(df, "itertuples"):
        # pandas: an object array holds Python scalars (int, float, bool, str), and
        # .tolist() builds the rows in C, about twice as fast as itertuples.
        return columns, df.to_numpy(dtype=object).tolist()
    if hasattr(df, "itertuples"):  # yields Python scalars, index left out
        return columns, list(df.itertuples(index=False, name=None))
    if hasattr(df, "to_dict"):  # e.g. polars: {column: values}
        by_column = df.to_dict()
        values = [list(v.values()) if isinstance(v, dict) else list(v) for v in by_column.values()]
        return columns, [tuple(r) for r in zip(*values, strict=True)]
    raise TypeError(
        f"Table: dataframe= needs .itertuples() or .to_dict() to read rows; "
        f"{type(df).__name__} has neither (pip install pandas for DataFrames)"
    )


def _type_name(v: Any) -> str:
    t = type(v)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
