"""``Histogram``: a distribution of values, stored inline in the history row.

A histogram is small (at most 512 bins), so unlike the other media it writes no
file: its reference *is* the data, ``{"_type": "histogram", "bins": [edges],
"counts": [...], "dropped": n}``. Binning is the expensive part, so it happens
in ``_encode`` on the media worker; constructing one only copies the values
(that copy is all the calling thread pays). Non-finite values (NaN, +-inf) can't
be placed in a bin: they are dropped and counted in ``dropped``.

Binning follows ``numpy.histogram`` (equal-width bins over ``[min, max]``, the
last bin closed), in pure Python for lists so numpy stays optional, and with
numpy for arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from pipeline.media.base import Media, MediaContext

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: Bins when none are asked for (as in W&B).
DEFAULT_BINS = 64
#: The most bins a histogram may have: it is stored inline in every row it is in.
MAX_BINS = 512


def _check_bins(num_bins: object) -> int:
    if type(num_bins) is not int or not 1 <= num_bins <= MAX_BINS:
        raise ValueError(
            f"Histogram: num_bins must be an int from 1 to {MAX_BINS}, not {num_bins!r}"
        )
    return num_bins


def _is_array(value: object) -> bool:
    module = type(value).__module__.partition(".")[0]
    return module in ("numpy", "torch") and hasattr(value, "shape")


def _to_numpy(value: Any) -> np.ndarray[Any, Any]:
    """A flat float copy of a numpy array or torch tensor (``ValueError`` for other dtypes)."""
    import numpy as np

    if hasattr(value, "detach"):  # torch: off the autograd graph and the device first
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise ValueError(
            f"Histogram: expected an array of numbers (bool, int or float dtype), "
            f"got dtype {arr.dtype}"
        )
    # astype always copies here: the caller may change its array after log().
    return arr.astype(np.float64 if kind != "f" else arr.dtype, copy=True).reshape(-1)


def _bin_list(values: list[float], num_bins: int) -> tuple[list[int], list[float], int]:
    """``numpy.histogram(values, num_bins)`` in pure Python, non-finite values dropped."""
    finite = [v for v in values if v - v == 0.0]
    dropped = len(values) - len(finite)
    if finite:
        lo, hi = min(finite), max(finite)
    else:
        lo, hi = 0.0, 1.0
    if lo == hi:  # numpy's rule: one value gets a unit-wide range around it
        lo, hi = lo - 0.5, hi + 0.5
    width = hi - lo
    edges = [lo + width * i / num_bins for i in range(num_bins + 1)]
    edges[-1] = hi
    counts = [0] * num_bins
    norm = num_bins / width
    last = num_bins - 1
    for v in finite:
        i = int((v - lo) * norm)
        if i > last:
            i = last
        # Rounding can put a value one bin off its edges: correct like numpy does.
        if i > 0 and v < edges[i]:
            i -= 1
        elif i < last and v >= edges[i + 1]:
            i += 1
        counts[i] += 1
    return counts, edges, dropped


def _bin_array(arr: np.ndarray[Any, Any], num_bins: int) -> tuple[list[int], list[float], int]:
    import numpy as np

    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    dropped = int(arr.size - finite.size)
    counts, edges = np.histogram(finite, bins=num_bins)
    return counts.tolist(), edges.astype(np.float64).tolist(), dropped


class Histogram(Media):
    """A histogram of values, stored inline in the row (no file).

    ``Histogram(values, num_bins=64)`` from a list/tuple of numbers (no numpy
    needed), a numpy array or a torch tensor (any shape, flattened); or
    ``Histogram(np_histogram=(counts, edges))`` from bins you computed. Values
    are copied now, so changing them later changes nothing; NaN and +-inf are
    dropped and counted (``dropped``).

    Raises ``ValueError`` for ``num_bins`` outside 1..512, for values that are
    not numbers, and for ``np_histogram`` whose edges are not one longer than
    its counts; ``TypeError`` when neither or both sources are given.
    """

    kind = "histogram"

    def __init__(
        self,
        sequence: Sequence[float] | Any = None,
        np_histogram: tuple[Any, Any] | None = None,
        num_bins: int = DEFAULT_BINS,
        *,
        dropped: int = 0,
    ) -> None:
        self.num_bins = _check_bins(num_bins)
        self._values: list[float] | None = None
        self._array: npt.NDArray[Any] | None = None
        self._binned: tuple[list[int], list[float], int] | None = None
        if (sequence is None) == (np_histogram is None):
            raise TypeError("Histogram: pass either a sequence of values or np_histogram=")
        if np_histogram is not None:
            counts, edges, _ = _check_precomputed(np_histogram)
            if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
                raise ValueError(f"Histogram(dropped=...) must be a count >= 0, not {dropped!r}")
            # Precomputed bins may come from values that had NaN/inf left out.
            self._binned = (counts, edges, dropped)
        elif _is_array(sequence):
            self._array = _to_numpy(sequence)
        elif isinstance(sequence, list | tuple | range):
            self._values = _floats(sequence)
        else:
            raise TypeError(
                f"Histogram: expected a list, tuple, numpy array or torch tensor of numbers, "
                f"not {type(sequence).__name__}"
            )

    @classmethod
    def from_array(cls, arr: Any, num_bins: int = DEFAULT_BINS) -> Histogram:
        """Bin a numpy array (or torch tensor) now, keeping only the bins.

        For callers that produce many large arrays (``run.watch``): the
        histogram holds ``num_bins`` counts instead of a copy of ``arr``.
        Non-finite values are dropped and counted.
        """
        hist = cls.__new__(cls)
        hist.num_bins = _check_bins(num_bins)
        hist._values = hist._array = None
        hist._binned = _bin_array(_to_numpy(arr), num_bins)
        return hist

    def bins(self) -> tuple[list[int], list[float], int]:
        """``(counts, edges, dropped)``, binning now if that has not happened yet."""
        if self._binned is None:
            if self._array is not None:
                self._binned = _bin_array(self._array, self.num_bins)
                self._array = None  # the bins replace the copy: free it
            else:
                self._binned = _bin_list(self._values or [], self.num_bins)
                self._values = None
        return self._binned

    def _freeze(self) -> Histogram:
        # The values were copied at construction and nothing outside can reach them.
        return self

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        counts, edges, dropped = self.bins()
        return {"_type": "histogram", "bins": edges, "counts": counts, "dropped": dropped}

    def __repr__(self) -> str:
        return f"Histogram(num_bins={self.num_bins})"


def _floats(seq: Sequence[Any]) -> list[float]:
    """A float copy of a flat sequence of numbers (``ValueError`` naming the first bad one)."""
    try:
        return [float(v) for v in seq]
    except (TypeError, ValueError):
        for i, v in enumerate(seq):
            if isinstance(v, str) or (not isinstance(v, int | float) and not hasattr(v, "item")):
                raise ValueError(
                    f"Histogram: expected numbers, but item {i} is {type(v).__name__} ({v!r:.40})"
                ) from None
        raise


def _check_precomputed(np_histogram: Any) -> tuple[list[int], list[float], int]:
    try:
        counts_in, edges_in = np_histogram
    except (TypeError, ValueError):
        raise ValueError(
            "Histogram: np_histogram must be a pair (counts, edges), as numpy.histogram returns"
        ) from None
    counts = counts_in.tolist() if hasattr(counts_in, "tolist") else list(counts_in)
    edges = _floats(edges_in.tolist() if hasattr(edges_in, "tolist") else list(edges_in))
    if len(edges) != len(counts) + 1:
        raise ValueError(
            f"Histogram: np_histogram needs one more edge than counts: expected "
            f"{len(counts) + 1} edges for {len(counts)} counts, got {len(edges)}"
        )
    if not 1 <= len(counts) <= MAX_BINS:
        raise ValueError(
            f"Histogram: np_histogram has {len(counts)} bins; expected 1 to {MAX_BINS}"
        )
    for i, c in enumerate(counts):
        if isinstance(c, bool) or not isinstance(c, int | float) or not c >= 0 or math.isinf(c):
            raise ValueError(
                f"Histogram: np_histogram counts must be finite numbers >= 0; count {i} is {c!r}"
            )
    if not all(math.isfinite(e) for e in edges) or any(b < a for a, b in pairwise(edges)):
        raise ValueError("Histogram: np_histogram edges must be finite and non-decreasing")
    return counts, edges, 0
