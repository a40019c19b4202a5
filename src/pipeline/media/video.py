"""``Video``: frames in a numpy array, or a video file, stored as a file.

Frames are encoded as an animated GIF with Pillow, or as MP4 (H.264) through
imageio-ffmpeg when asked for and installed, on the media stage's worker
thread; the calling thread only validates (at construction) and copies (at
``log()``).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.media import _optional
from pipeline.media.base import Media, MediaContext
from pipeline.media.image import check_pixels

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_SHAPES = "TxCxHxW or TxHxWxC with C = 1 (grey) or 3 (RGB)"
FORMATS = ("gif", "mp4")


class Video(Media):
    """A video for ``run.log``, stored as a GIF (default) or MP4 file.

    ``data`` is either a numpy array of frames, shape TxCxHxW or TxHxWxC with
    C = 1 or 3, dtype uint8 or float in [0, 1] (as for :class:`Image`), or a
    path to a video file, copied byte for byte (GIF files also have their size,
    frame count and duration read into the reference; MP4/WebM files too when
    imageio-ffmpeg is installed).

    The layout is read from the shape: channels-first (the W&B and PyTorch
    convention) when axis 1 is 1 or 3, else channels-last when the last axis is.

    ``fps`` (default 4) sets the playback rate. ``format`` is ``"gif"`` (default,
    Pillow only) or ``"mp4"`` (needs ``pip install imageio-ffmpeg``). GIF stores
    frame delays in hundredths of a second, so rates above 50 fps play slower
    in most viewers, and consecutive identical frames are merged into one
    longer frame; ``frames`` in the reference counts the frames you logged.

    Raises ``ValueError`` for a wrong shape, dtype, range, fps or format,
    ``TypeError`` for anything else, ``FileNotFoundError`` for a path that is
    not a file, and ``ImportError`` naming what to install when Pillow (or, for
    MP4, imageio-ffmpeg) is missing.
    """

    kind = "video"

    _array: npt.NDArray[Any] | None
    _path: Path | None

    def __init__(
        self, data: Any, fps: float = 4, format: str = "gif", caption: object = None
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"pipeline.Video: format must be one of {FORMATS}, not {format!r}")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= 1000:
            raise ValueError(f"pipeline.Video: fps must be a number in (0, 1000], not {fps!r}")
        self.fps, self.format = fps, format
        self.caption = None if caption is None else str(caption)
        self._array = self._path = None
        if isinstance(data, str | os.PathLike):
            self._path = _optional.existing_file(data, "pipeline.Video")
            return
        if not _optional.is_numpy_array(data):
            raise TypeError(
                f"pipeline.Video takes a numpy array ({_SHAPES}) or a path to a video file, "
                f"not {type(data).__module__}.{type(data).__qualname__}"
            )
        if format == "mp4":
            _optional.require_mp4("pipeline.Video(format='mp4')")
        else:
            _optional.require_pillow("pipeline.Video")
        shape = tuple(data.shape)
        if len(shape) != 4 or not all(shape) or (shape[1] not in (1, 3) and shape[3] not in (1, 3)):
            raise ValueError(f"pipeline.Video takes arrays of shape {_SHAPES}, not {shape}")
        self._array = check_pixels(data, "pipeline.Video")

    def __repr__(self) -> str:
        what = self._array.shape if self._array is not None else repr(str(self._path))
        return f"Video({what}, fps={self.fps}, format={self.format!r})"

    def _freeze(self) -> Video:
        frozen = Video.__new__(Video)
        frozen.fps, frozen.format, frozen.caption = self.fps, self.format, self.caption
        frozen._path = self._path
        frozen._array = self._array.copy() if self._array is not None else None
        return frozen

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        ref: dict[str, Any]
        if self._array is not None:
            frames = frames_last(to_uint8_frames(self._array))
            t, h, w = frames.shape[:3]
            data = _gif(frames, self.fps) if self.format == "gif" else _mp4(frames, self.fps)
            ref = {"_type": self.kind, **ctx.write(self.kind, self.format, data)}
            ref.update(width=w, height=h, frames=t, fps=self.fps, duration=t / self.fps)
            ref["format"] = self.format
        else:
            assert self._path is not None
            data = self._path.read_bytes()
            ext = self._path.suffix.lower().lstrip(".") or "bin"
            ref = {"_type": self.kind, **ctx.write(self.kind, ext, data)}
            ref.update(_probe(self._path, ext))
            ref["format"] = ext
        if self.caption is not None:
            ref["caption"] = self.caption
        return ref


def to_uint8_frames(a: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Frames as uint8, floats in [0, 1] scaled and rounded (layout unchanged)."""
    import numpy as np

    return a if a.dtype == np.uint8 else (a * 255.0 + 0.5).astype(np.uint8)


def frames_last(a: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """TxHxWx3 RGB frames, C-ordered, from either layout (grey repeated to RGB)."""
    import numpy as np

    if a.shape[1] in (1, 3):  # channels first: the W&B / PyTorch convention wins a tie
        a = a.transpose(0, 2, 3, 1)
    if a.shape[3] == 1:
        a = np.repeat(a, 3, axis=3)
    return np.ascontiguousarray(a)


def _gif(frames: npt.NDArray[np.uint8], fps: float) -> bytes:
    from PIL import Image as PILImage

    images = [PILImage.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=1000.0 / fps,
        loop=0,  # loop forever, as video previews do
    )
    return buf.getvalue()


def _mp4(frames: npt.NDArray[np.uint8], fps: float) -> bytes:
    import imageio_ffmpeg  # type: ignore[import-not-found,import-untyped,unused-ignore]

    h, w = frames.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="runbus-video-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        writer = imageio_ffmpeg.write_frames(
            path,
            (w, h),
            pix_fmt_in="rgb24",
            fps=fps,
            codec="libx264",
            # yuv420p (what browsers play) needs even sides: pad by one pixel
            # rather than let imageio-ffmpeg rescale the frames.
            macro_block_size=1,
            output_params=["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-movflags", "+faststart"],
        )
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
        return Path(path).read_bytes()


def _probe(path: Path, ext: str) -> dict[str, Any]:
    """Size, frames, fps and duration of a logged video file, where they can be read."""
    if ext == "gif":
        _optional.require_pillow("pipeline.Video")
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            w, h = im.size
            n = getattr(im, "n_frames", 1)
            ms = 0
            for i in range(n):
                im.seek(i)
                ms += int(im.info.get("duration", 0))
        duration = ms / 1000.0
        fps = n / duration if duration else None
        return {"width": w, "height": h, "frames": n, "fps": fps, "duration": duration}
    try:
        import imageio_ffmpeg  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return {}  # stored without its measurements; the file itself is intact
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    finally:
        reader.close()
    w, h = meta.get("size", (None, None))
    fps, duration = meta.get("fps"), meta.get("duration")
    frames = round(fps * duration) if fps and duration else None
    return {"width": w, "height": h, "frames": frames, "fps": fps, "duration": duration}
