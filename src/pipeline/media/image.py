"""``Image``: a numpy array, a PIL image or an image file, stored as a file.

The calling thread validates (at construction) and copies (at ``log()``); the
PNG encoding runs later on the media stage's worker thread.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.media import _optional
from pipeline.media.base import Media, MediaContext

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image as PILImage

_SHAPES = "HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)"
_DTYPES = "uint8 (0..255) or float (0.0..1.0)"
#: Formats kept as they are when an image file is logged; others become PNG.
_KEPT = {"PNG": ("png", "png"), "JPEG": ("jpeg", "jpg"), "GIF": ("gif", "gif")}
#: Pillow modes PNG can hold; any other mode is converted before saving.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}


class Image(Media):
    """An image for ``run.log``, stored as a PNG (or the logged file's format).

    ``data`` is one of:

    - a numpy array of shape HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), dtype
      uint8 (stored as is) or float with every value in [0, 1] (scaled to 0..255
      and rounded);
    - a PIL image (any mode; modes PNG cannot hold are converted to RGB/RGBA);
    - a path to an image file: PNG, JPEG and GIF files are copied byte for byte,
      any other format Pillow reads is converted to PNG.

    ``caption`` is stored with the reference (``str()`` of it).

    Raises ``ValueError`` for an array of the wrong shape, dtype or range,
    ``TypeError`` for anything else that is not an image, ``FileNotFoundError``
    for a path that is not a file, and ``ImportError`` (naming the
    ``runbus[media]`` extra) when Pillow is not installed.
    """

    kind = "image"

    _array: npt.NDArray[Any] | None
    _pil: PILImage.Image | None
    _path: Path | None

    def __init__(self, data: Any, caption: object = None) -> None:
        _optional.require_pillow("pipeline.Image")
        self.caption = None if caption is None else str(caption)
        self._array = self._pil = self._path = None
        if _optional.is_numpy_array(data):
            self._array = check_image_array(data, "pipeline.Image")
        elif _optional.is_pil_image(data):
            self._pil = data
        elif isinstance(data, str | os.PathLike):
            self._path = _optional.existing_file(data, "pipeline.Image")
        else:
            raise TypeError(
                f"pipeline.Image takes a numpy array ({_SHAPES}), a PIL image or a path to "
                f"an image file, not {type(data).__module__}.{type(data).__qualname__}; "
                f"convert tensors with .numpy() (channels last)"
            )

    def __repr__(self) -> str:
        if self._array is not None:
            what = "x".join(map(str, self._array.shape)) + f" {self._array.dtype}"
        elif self._pil is not None:
            what = f"PIL {self._pil.mode} {self._pil.width}x{self._pil.height}"
        else:
            what = repr(str(self._path))
        cap = f", caption={self.caption!r}" if self.caption is not None else ""
        return f"Image({what}{cap})"

    def _freeze(self) -> Image:
        # Built without __init__: the input was validated at construction, and
        # this runs inside run.log(), where every microsecond is the caller's.
        frozen = Image.__new__(Image)
        frozen.caption = self.caption
        # ndarray.copy() is C-ordered and owns its memory: later writes to the
        # caller's array (or to a view of it) cannot reach it.
        frozen._array = self._array.copy() if self._array is not None else None
        frozen._pil = self._pil.copy() if self._pil is not None else None
        frozen._path = self._path  # read on the worker: the file's bytes are the copy
        return frozen

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        from PIL import Image as PILImage

        if self._array is not None:
            im = PILImage.fromarray(to_uint8(self._array))
            data, fmt, ext = _png(im), "png", "png"
        elif self._pil is not None:
            im = self._pil
            data, fmt, ext = _png(im), "png", "png"
        else:
            assert self._path is not None
            raw = self._path.read_bytes()
            with PILImage.open(io.BytesIO(raw)) as im:
                im.load()  # a truncated or corrupt file fails here, not in the UI
                kept = _KEPT.get(im.format or "")
                if kept is not None:
                    data, (fmt, ext) = raw, kept
                else:
                    data, fmt, ext = _png(im), "png", "png"
                size = im.size
            return self._ref(ctx.write(self.kind, ext, data), size, fmt)
        return self._ref(ctx.write(self.kind, ext, data), im.size, fmt)

    def _ref(self, file: dict[str, Any], size: tuple[int, int], fmt: str) -> dict[str, Any]:
        ref: dict[str, Any] = {"_type": self.kind, **file}
        ref["width"], ref["height"] = size
        ref["format"] = fmt
        if self.caption is not None:
            ref["caption"] = self.caption
        return ref


def check_image_array(a: npt.NDArray[Any], what: str) -> npt.NDArray[Any]:
    """``a`` if it is a storable image, else ``ValueError`` naming what was expected.

    Float arrays are scanned for their range here, on the caller's thread, so a
    wrong range fails at the call site rather than being clipped silently: an
    image in [0, 255] or [-1, 1] passed as float is a bug worth hearing about.
    """
    shape = tuple(a.shape)
    ok_shape = (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))) and all(
        n > 0 for n in shape[:2]
    )
    if not ok_shape:
        hint = ""
        if len(shape) == 3 and shape[0] in (1, 3, 4):
            hint = "; for channels-first (CxHxW) data pass arr.transpose(1, 2, 0)"
        raise ValueError(f"{what} takes arrays of shape {_SHAPES}, not {shape}{hint}")
    return check_pixels(a, what)


def check_pixels(a: npt.NDArray[Any], what: str) -> npt.NDArray[Any]:
    """``a`` if its dtype (and, for floats, its range) is storable as 8-bit pixels."""
    kind = a.dtype.kind
    if kind == "u" and a.dtype.itemsize == 1:
        return a
    if kind == "f":
        lo, hi = float(a.min()), float(a.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(
                f"{what}: float pixel values must lie in [0.0, 1.0], but this {a.dtype} array "
                f"spans [{lo}, {hi}]; rescale it (x / 255 for 0..255 data), "
                f"np.clip(x, 0, 1) it, or pass uint8"
            )
        return a
    raise ValueError(
        f"{what} takes pixel dtypes {_DTYPES}, not {a.dtype}; "
        f"for 0..255 integer data pass arr.astype(np.uint8)"
    )


def to_uint8(a: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Pixels as uint8 (floats in [0, 1] scaled and rounded), a trailing 1-channel dropped."""
    import numpy as np

    if a.dtype != np.uint8:
        a = (a * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


def _png(im: PILImage.Image) -> bytes:
    if im.mode not in _PNG_MODES:
        # F (32-bit float) has no PNG form; grey is the nearest that keeps it grey.
        im = im.convert("L" if im.mode == "F" else "RGBA" if "A" in im.mode else "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
