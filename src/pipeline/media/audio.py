"""``Audio``: samples in a numpy array, or an audio file, stored as a file.

Arrays are written as 16-bit PCM WAV with the standard library's ``wave``
module, on the media stage's worker thread; the calling thread only validates
(at construction) and copies (at ``log()``).
"""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.media import _optional
from pipeline.media.base import Media, MediaContext

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_SHAPES = "(N,) for mono or (N, C) for C channels"
_DTYPES = "float (-1.0..1.0) or int16"
#: More channels than this is almost surely a (C, N) array passed as (N, C).
MAX_CHANNELS = 32


class Audio(Media):
    """A sound for ``run.log``, stored as a WAV file (or the logged file as is).

    ``data`` is either a numpy array of shape (N,) (mono) or (N, C) (C channels,
    at most 32), dtype int16 (stored as is) or float, whose samples are scaled by
    32767 after clipping to [-1.0, 1.0] (NaN becomes silence), with
    ``sample_rate`` (Hz) required; or a path to an audio file, copied byte for
    byte (WAV files also have their rate, channels and length read into the
    reference; other formats are stored without them).

    ``caption`` is stored with the reference (``str()`` of it).

    Raises ``ValueError`` for a wrong shape, dtype or sample rate, ``TypeError``
    for anything else, ``FileNotFoundError`` for a path that is not a file and
    ``ImportError`` (naming the ``runbus[media]`` extra) if numpy is missing.
    """

    kind = "audio"

    _array: npt.NDArray[Any] | None
    _path: Path | None

    def __init__(self, data: Any, sample_rate: int | None = None, caption: object = None) -> None:
        self.caption = None if caption is None else str(caption)
        self._array = self._path = None
        if sample_rate is not None and (
            not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0
        ):
            raise ValueError(
                f"pipeline.Audio: sample_rate must be a positive int (Hz), not {sample_rate!r}"
            )
        self.sample_rate = sample_rate
        if isinstance(data, str | os.PathLike):
            self._path = _optional.existing_file(data, "pipeline.Audio")
            return
        _optional.require_numpy("pipeline.Audio")
        if not _optional.is_numpy_array(data):
            raise TypeError(
                f"pipeline.Audio takes a numpy array ({_SHAPES}) with sample_rate, or a path "
                f"to an audio file, not {type(data).__module__}.{type(data).__qualname__}"
            )
        if sample_rate is None:
            raise ValueError("pipeline.Audio: sample_rate (Hz) is required for array data")
        shape = tuple(data.shape)
        if not (
            (len(shape) == 1 and shape[0] > 0)
            or (len(shape) == 2 and shape[0] > 0 and 1 <= shape[1] <= MAX_CHANNELS)
        ):
            hint = ""
            if len(shape) == 2 and shape[0] <= MAX_CHANNELS < shape[1]:
                hint = "; for channels-first (C, N) data pass arr.T"
            raise ValueError(
                f"pipeline.Audio takes arrays of shape {_SHAPES}, C <= {MAX_CHANNELS}, "
                f"not {shape}{hint}"
            )
        if not (data.dtype.kind == "f" or data.dtype.name == "int16"):
            raise ValueError(f"pipeline.Audio takes sample dtypes {_DTYPES}, not {data.dtype}")
        self._array = data

    def __repr__(self) -> str:
        if self._array is not None:
            return f"Audio({self._array.shape} {self._array.dtype}, {self.sample_rate} Hz)"
        return f"Audio({str(self._path)!r})"

    def _freeze(self) -> Audio:
        frozen = Audio.__new__(Audio)
        frozen.caption, frozen.sample_rate = self.caption, self.sample_rate
        frozen._path = self._path
        frozen._array = self._array.copy() if self._array is not None else None
        return frozen

    def _encode(self, ctx: MediaContext) -> dict[str, Any]:
        ref: dict[str, Any]
        if self._array is not None:
            assert self.sample_rate is not None
            data = wav_bytes(self._array, self.sample_rate)
            ref = {"_type": self.kind, **ctx.write(self.kind, "wav", data), **_wav_info(data)}
        else:
            assert self._path is not None
            data = self._path.read_bytes()
            ext = self._path.suffix.lower().lstrip(".") or "bin"
            info = _wav_info(data) if data[:4] == b"RIFF" and data[8:12] == b"WAVE" else {}
            if ext == "wave":
                ext = "wav"
            ref = {"_type": self.kind, **ctx.write(self.kind, ext, data)}
            ref.update(info or {"format": ext})
        if self.caption is not None:
            ref["caption"] = self.caption
        return ref


def wav_bytes(samples: npt.NDArray[Any], sample_rate: int) -> bytes:
    """A 16-bit PCM WAV file of ``samples`` ((N,) or (N, C); float or int16)."""
    pcm = to_int16(samples)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        # WAV is little-endian and interleaved: a C-ordered (N, C) array is exactly that.
        w.writeframes(pcm.astype("<i2", copy=False).tobytes())
    return buf.getvalue()


def to_int16(samples: npt.NDArray[Any]) -> npt.NDArray[np.int16]:
    """Samples as int16: floats clipped to [-1, 1] (NaN to 0) and scaled by 32767."""
    import numpy as np

    if samples.dtype == np.int16:
        return samples
    # Clipping, not raising: mixed or normalised audio often peaks a hair over
    # 1.0, and clipping is what any 16-bit writer (or DAC) does with it.
    x = np.nan_to_num(samples.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.rint(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


def _wav_info(data: bytes) -> dict[str, Any]:
    with wave.open(io.BytesIO(data), "rb") as w:
        rate, channels, samples = w.getframerate(), w.getnchannels(), w.getnframes()
    return {
        "sample_rate": rate,
        "channels": channels,
        "samples": samples,
        "duration": samples / rate if rate else 0.0,
        "format": "wav",
    }
