"""pipeline.Video, Audio and Html through real runs: stored, referenced, read back."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipeline
from pipeline.media import _optional
from pipeline.media.audio import Audio
from pipeline.media.html import Html
from pipeline.media.video import Video
from pipeline.testing import QUIET_SETTINGS

PIL = pytest.importorskip("PIL.Image")

SETTINGS = QUIET_SETTINGS
HAVE_FFMPEG = importlib.util.find_spec("imageio_ffmpeg") is not None


def log_and_read(tmp_path: Path, *rows: dict[str, Any]) -> pipeline.RunData:
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    for row in rows:
        run.log(row)
    run.finish()
    return pipeline.read_run(run.dir)


def stored(data: pipeline.RunData, ref: dict[str, Any], kind: str) -> bytes:
    """The reference's file: present, listed, under media/<kind>/, sha256 and size right."""
    raw = Path(ref["local_path"]).read_bytes()
    assert ref["_type"] == kind
    assert ref["path"] in data.files
    assert ref["path"].startswith(f"media/{kind}/")
    assert hashlib.sha256(raw).hexdigest() == ref["sha256"]
    assert len(raw) == ref["size"]
    return raw


def frames(t: int = 5, h: int = 12, w: int = 16, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, c), dtype=np.uint8)


def gif_frames(path: str) -> list[np.ndarray]:
    out = []
    with PIL.open(path) as im:
        for i in range(im.n_frames):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")))
    return out


# -- Video -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["THWC", "TCHW"])
def test_video_array_becomes_a_gif(tmp_path: Path, layout: str) -> None:
    arr = frames()
    logged = arr if layout == "THWC" else arr.transpose(0, 3, 1, 2)
    data = log_and_read(tmp_path, {"vid": Video(logged, fps=5, caption="c")})
    ref = data.history[0]["vid"]
    stored(data, ref, "video")
    assert ref["path"].endswith(".gif")
    assert {k: ref[k] for k in ("width", "height", "frames", "fps", "duration", "format")} == {
        "width": 16,
        "height": 12,
        "frames": 5,
        "fps": 5,
        "duration": 1.0,
        "format": "gif",
    }
    assert ref["caption"] == "c"
    got = gif_frames(ref["local_path"])
    assert len(got) == 5
    assert got[0].shape == (12, 16, 3)
    with PIL.open(ref["local_path"]) as im:
        assert im.info["duration"] == 200


def test_video_grey_and_float_frames(tmp_path: Path) -> None:
    grey = np.zeros((3, 1, 8, 8), np.float32)
    for t in range(3):
        grey[t] = t / 2  # 0, 0.5, 1
    ref = log_and_read(tmp_path, {"vid": Video(grey)}).history[0]["vid"]
    assert ref["fps"] == 4
    assert ref["duration"] == 0.75
    got = gif_frames(ref["local_path"])
    assert [int(f[0, 0, 0]) for f in got] == [0, 128, 255]


def test_video_mutated_after_log_changes_nothing_stored(tmp_path: Path) -> None:
    arr = np.zeros((2, 4, 4, 3), np.uint8)
    arr[1] = 255
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    run.log({"vid": Video(arr)})
    arr[:] = 100
    run.finish()
    got = gif_frames(pipeline.read_run(run.dir).history[0]["vid"]["local_path"])
    assert [int(f[0, 0, 0]) for f in got] == [0, 255]


def test_gif_file_is_copied_and_measured(tmp_path: Path) -> None:
    src = tmp_path / "in.gif"
    ims = [PIL.fromarray(f) for f in frames(4)]
    ims[0].save(src, save_all=True, append_images=ims[1:], duration=100, loop=0)
    data = log_and_read(tmp_path, {"vid": Video(src)})
    ref = data.history[0]["vid"]
    assert stored(data, ref, "video") == src.read_bytes()
    assert (ref["frames"], ref["width"], ref["height"], ref["format"]) == (4, 16, 12, "gif")
    assert ref["duration"] == pytest.approx(0.4)
    assert ref["fps"] == pytest.approx(10)


@pytest.mark.skipif(not HAVE_FFMPEG, reason="imageio-ffmpeg not installed")
def test_video_mp4_when_an_encoder_is_installed(tmp_path: Path) -> None:
    data = log_and_read(tmp_path, {"vid": Video(frames(8, 13, 17), fps=8, format="mp4")})
    ref = data.history[0]["vid"]
    raw = stored(data, ref, "video")
    assert raw[4:8] == b"ftyp"
    assert ref["path"].endswith(".mp4")
    assert (ref["frames"], ref["width"], ref["height"], ref["format"]) == (8, 17, 13, "mp4")


def test_mp4_without_an_encoder_raises_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    monkeypatch.setattr(_optional, "_found", set())
    with pytest.raises(ImportError, match="pip install imageio-ffmpeg"):
        Video(frames(), format="mp4")


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((4, 8, 8), np.uint8), r"TxCxHxW or TxHxWxC"),
        (np.zeros((4, 2, 8, 8), np.uint8), r"\(4, 2, 8, 8\)"),
        (np.zeros((4, 8, 8, 3), np.int32), r"uint8 .* float.*int32"),
        (np.full((4, 8, 8, 3), 2.0), r"\[0\.0, 1\.0\]"),
    ],
)
def test_video_bad_arrays_raise_value_error(arr: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Video(arr)


@pytest.mark.parametrize(("kwargs", "match"), [({"fps": 0}, "fps"), ({"format": "avi"}, "gif")])
def test_video_bad_options_raise_value_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Video(frames(), **kwargs)


# -- Audio -------------------------------------------------------------------------------


def read_wav(path: str) -> tuple[int, int, np.ndarray]:
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return w.getframerate(), w.getnchannels(), pcm.reshape(-1, w.getnchannels())


def test_audio_float_mono_round_trips_through_wave(tmp_path: Path) -> None:
    t = np.arange(800) / 8000
    sig = 0.5 * np.sin(2 * np.pi * 440 * t)
    data = log_and_read(tmp_path, {"snd": Audio(sig, sample_rate=8000, caption="la")})
    ref = data.history[0]["snd"]
    stored(data, ref, "audio")
    assert {
        k: ref[k] for k in ("sample_rate", "channels", "samples", "duration", "format", "caption")
    } == {
        "sample_rate": 8000,
        "channels": 1,
        "samples": 800,
        "duration": 0.1,
        "format": "wav",
        "caption": "la",
    }
    rate, channels, pcm = read_wav(ref["local_path"])
    assert (rate, channels) == (8000, 1)
    np.testing.assert_array_equal(pcm[:, 0], np.rint(sig * 32767).astype(np.int16))


def test_audio_int16_stereo_is_stored_exactly(tmp_path: Path) -> None:
    sig = np.random.default_rng(1).integers(-32768, 32768, (1000, 2), dtype=np.int16)
    ref = log_and_read(tmp_path, {"snd": Audio(sig, sample_rate=16000)}).history[0]["snd"]
    assert (ref["channels"], ref["samples"]) == (2, 1000)
    _, _, pcm = read_wav(ref["local_path"])
    np.testing.assert_array_equal(pcm, sig)


def test_audio_float_is_clipped_and_nan_is_silence(tmp_path: Path) -> None:
    sig = np.array([1.5, -2.0, np.nan, 1.0, -1.0])
    ref = log_and_read(tmp_path, {"snd": Audio(sig, sample_rate=100)}).history[0]["snd"]
    assert read_wav(ref["local_path"])[2][:, 0].tolist() == [32767, -32767, 0, 32767, -32767]


def test_audio_mutated_after_log_changes_nothing_stored(tmp_path: Path) -> None:
    sig = np.full(100, 1000, np.int16)
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    run.log({"snd": Audio(sig, sample_rate=100)})
    sig[:] = 0
    run.finish()
    ref = pipeline.read_run(run.dir).history[0]["snd"]
    assert set(read_wav(ref["local_path"])[2][:, 0].tolist()) == {1000}


def test_audio_wav_file_is_copied_and_measured(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(b"\x01\x00" * 2 * 2205)
    data = log_and_read(tmp_path, {"snd": Audio(src)})
    ref = data.history[0]["snd"]
    assert stored(data, ref, "audio") == src.read_bytes()
    assert (ref["sample_rate"], ref["channels"], ref["samples"]) == (22050, 2, 2205)
    assert ref["duration"] == pytest.approx(0.1)


def test_audio_other_file_is_copied_with_its_format(tmp_path: Path) -> None:
    src = tmp_path / "in.mp3"
    src.write_bytes(b"ID3 not really an mp3")
    data = log_and_read(tmp_path, {"snd": Audio(str(src))})
    ref = data.history[0]["snd"]
    assert stored(data, ref, "audio") == src.read_bytes()
    assert ref["format"] == "mp3"
    assert ref["path"].endswith(".mp3")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data": np.zeros(10)}, "sample_rate .* required"),
        ({"data": np.zeros(10), "sample_rate": 0}, "positive int"),
        ({"data": np.zeros(10), "sample_rate": 44100.0}, "positive int"),
        ({"data": np.zeros((2, 44100)), "sample_rate": 8000}, r"\(N,\).*arr\.T"),
        ({"data": np.zeros((4, 2, 2)), "sample_rate": 8000}, r"\(N, C\)"),
        ({"data": np.zeros(10, np.int32), "sample_rate": 8000}, "int16.*int32"),
    ],
)
def test_audio_bad_input_raises_value_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Audio(**kwargs)


def test_audio_not_an_array_raises_type_error() -> None:
    with pytest.raises(TypeError, match="numpy array"):
        Audio([0.0, 0.1], sample_rate=8000)


# -- Html --------------------------------------------------------------------------------


def test_html_string_is_stored_exactly(tmp_path: Path) -> None:
    text = "<p>héllo {braces}</p>"
    data = log_and_read(tmp_path, {"page": Html(text)})
    ref = data.history[0]["page"]
    assert stored(data, ref, "html") == text.encode("utf-8")
    assert ref["path"].endswith(".html")
    assert ref["size"] == len(text.encode("utf-8"))


def test_html_inject_wraps_a_fragment_in_a_page(tmp_path: Path) -> None:
    data = log_and_read(
        tmp_path,
        {"frag": Html("<b>x</b>", inject=True), "page": Html("<html><b>y</b></html>", inject=True)},
    )
    frag = Path(data.history[0]["frag"]["local_path"]).read_text("utf-8")
    assert frag.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in frag
    assert "<b>x</b>" in frag
    page = Path(data.history[0]["page"]["local_path"]).read_text("utf-8")
    assert page == "<html><b>y</b></html>"


@pytest.mark.parametrize("as_str", [True, False])
def test_html_file_is_read(tmp_path: Path, as_str: bool) -> None:
    src = tmp_path / "report.html"
    src.write_bytes(b"<h1>report</h1>\xff")  # not UTF-8: still stored byte for byte
    data = log_and_read(tmp_path, {"page": Html(str(src) if as_str else src)})
    assert stored(data, data.history[0]["page"], "html") == src.read_bytes()


def test_html_bad_input_raises(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="str or a path"):
        Html(b"<p>bytes</p>")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=r"missing\.html"):
        Html(tmp_path / "missing.html")


def test_html_file_gone_before_encoding_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "r.html"
    src.write_text("<p>x</p>")
    page = Html(src)
    src.unlink()
    with caplog.at_level(logging.WARNING, logger="runbus"):
        data = log_and_read(tmp_path, {"page": page, "loss": 1.0})
    assert "page" not in data.history[0]
    assert data.history[0]["loss"] == 1.0
    assert any("'page' at step 0" in r.getMessage() for r in caplog.records)


# -- mixed ---------------------------------------------------------------------------------


def test_every_kind_in_one_row(tmp_path: Path) -> None:
    data = log_and_read(
        tmp_path,
        {
            "vid": Video(frames(2)),
            "snd": Audio(np.zeros(10), sample_rate=10),
            "page": Html("<i>i</i>"),
            "x": 1,
        },
    )
    row = data.history[0]
    assert [row[k]["_type"] for k in ("vid", "snd", "page")] == ["video", "audio", "html"]
    assert len([f for f in data.files if f.startswith("media/")]) == 3


@pytest.mark.skipif(not HAVE_FFMPEG, reason="imageio-ffmpeg not installed")
def test_mp4_file_is_copied_and_measured(tmp_path: Path) -> None:
    first = log_and_read(tmp_path / "a", {"vid": Video(frames(8), fps=8, format="mp4")})
    src = Path(first.history[0]["vid"]["local_path"])
    data = log_and_read(tmp_path / "b", {"vid": Video(src)})
    ref = data.history[0]["vid"]
    assert stored(data, ref, "video") == src.read_bytes()
    assert (ref["width"], ref["height"], ref["frames"], ref["format"]) == (16, 12, 8, "mp4")
    assert ref["fps"] == pytest.approx(8)
    assert ref["duration"] == pytest.approx(1.0)
