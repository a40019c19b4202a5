"""Lazy imports of the optional media packages (numpy, Pillow, imageio-ffmpeg),
and the input checks the file-backed media types share.

runbus imports without them; a media type checks for what it needs when it is
constructed, so a missing package raises ``ImportError`` at the user's call
site, naming the extra to install, instead of failing later in the background.
Callers then import the module themselves (a ``sys.modules`` lookup), which keeps
the real types visible to mypy.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

MEDIA_EXTRA = "pip install 'runbus[media]'"

# Modules already found: after the first check the hot path is one set lookup.
_found: set[str] = set()


def _require(module: str, package: str, what: str, install: str) -> None:
    if module in _found:
        return
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the {package} package, which is not installed; {install}"
        ) from exc
    _found.add(module)


def require_numpy(what: str) -> None:
    """Raise ``ImportError`` naming the media extra unless numpy imports."""
    _require("numpy", "numpy", what, MEDIA_EXTRA)


def require_pillow(what: str) -> None:
    """Raise ``ImportError`` naming the media extra unless Pillow imports."""
    _require("PIL.Image", "Pillow", what, MEDIA_EXTRA)


def require_mp4(what: str) -> None:
    """Raise ``ImportError`` naming what to install unless an MP4 encoder is there."""
    _require(
        "imageio_ffmpeg",
        "imageio-ffmpeg",
        what,
        "pip install imageio-ffmpeg (it ships an ffmpeg binary), or use format='gif'",
    )


def is_numpy_array(value: object) -> bool:
    """Whether ``value`` is a numpy array; only if numpy is loaded can it be one."""
    mod = sys.modules.get("numpy")
    return mod is not None and isinstance(value, mod.ndarray)


def is_pil_image(value: object) -> bool:
    """Whether ``value`` is a PIL image; only if PIL is loaded can it be one."""
    mod = sys.modules.get("PIL.Image")
    return mod is not None and isinstance(value, mod.Image)


def existing_file(value: str | os.PathLike[str], what: str) -> Path:
    """``value`` as an absolute path to a file, or ``FileNotFoundError`` naming it.

    Checked at construction so a typo fails at the call site; the file is read
    later, off the calling thread (a file removed in between is reported by the
    media stage with its key and step).
    """
    path = Path(value).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {str(value)!r}")
    return path
