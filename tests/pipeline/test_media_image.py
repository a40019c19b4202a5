"""pipeline.Image through real runs: what is logged is what is stored, and read back."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipeline
from pipeline.media import _optional
from pipeline.media.image import Image
from pipeline.testing import QUIET_SETTINGS

PIL = pytest.importorskip("PIL.Image")

SETTINGS = QUIET_SETTINGS


def log_and_read(tmp_path: Path, *rows: dict[str, Any]) -> pipeline.RunData:
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    for row in rows:
        run.log(row)
    run.finish()
    return pipeline.read_run(run.dir)


def pixels(ref: dict[str, Any]) -> np.ndarray:
    with PIL.open(ref["local_path"]) as im:
        return np.asarray(im)


def check_file(data: pipeline.RunData, ref: dict[str, Any]) -> bytes:
    """The reference's file exists, is listed, and matches its sha256 and size."""
    raw = Path(ref["local_path"]).read_bytes()
    assert ref["local_path"] == str(data.path / ref["path"])
    assert ref["path"] in data.files
    assert ref["path"].startswith("media/image/")
    assert hashlib.sha256(raw).hexdigest() == ref["sha256"]
    assert len(raw) == ref["size"]
    return raw


def rgb(h: int = 24, w: int = 32, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


# -- arrays ----------------------------------------------------------------------------


def test_uint8_rgb_round_trips_with_its_reference(tmp_path: Path) -> None:
    arr = rgb()
    data = log_and_read(tmp_path, {"img": Image(arr, caption="x"), "loss": 0.5})
    row = data.history[0]
    assert row["loss"] == 0.5
    ref = row["img"]
    check_file(data, ref)
    assert {k: ref[k] for k in ("_type", "width", "height", "format", "caption")} == {
        "_type": "image",
        "width": 32,
        "height": 24,
        "format": "png",
        "caption": "x",
    }
    assert ref["path"].endswith(".png")
    assert "img_0_" in ref["path"]
    np.testing.assert_array_equal(pixels(ref), arr)


@pytest.mark.parametrize(
    ("arr", "mode"),
    [
        (rgb(c=1)[..., 0], "L"),
        (rgb(c=1), "L"),
        (rgb(c=4), "RGBA"),
    ],
    ids=["HxW", "HxWx1", "HxWx4"],
)
def test_grey_and_rgba_arrays(tmp_path: Path, arr: np.ndarray, mode: str) -> None:
    ref = log_and_read(tmp_path, {"img": Image(arr)}).history[0]["img"]
    with PIL.open(ref["local_path"]) as im:
        assert im.mode == mode
        got = np.asarray(im)
    np.testing.assert_array_equal(got, arr.reshape(got.shape))
    assert "caption" not in ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_in_unit_range_is_scaled_and_rounded(tmp_path: Path, dtype: Any) -> None:
    arr = np.linspace(0.0, 1.0, 24 * 32 * 3).reshape(24, 32, 3).astype(dtype)
    ref = log_and_read(tmp_path, {"img": Image(arr)}).history[0]["img"]
    want = (arr.astype(np.float64) * 255.0 + 0.5).astype(np.uint8)
    got = pixels(ref)
    assert got[0, 0, 0] == 0
    assert got[-1, -1, -1] == 255
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float16/32 rounding


def test_array_mutated_after_log_changes_nothing_stored(tmp_path: Path) -> None:
    arr = rgb()
    want = arr.copy()
    view = arr[::2]  # writes through a view must not reach the stored copy either
    img = Image(arr)
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    run.log({"img": img})
    arr[:] = 0
    view[:] = 7
    run.log({"img": img})  # the same object logged again stores the array as it is now
    run.finish()
    data = pipeline.read_run(run.dir)
    np.testing.assert_array_equal(pixels(data.history[0]["img"]), want)
    assert pixels(data.history[1]["img"])[1, 0, 0] == 0
    assert pixels(data.history[1]["img"])[0, 0, 0] == 7


def test_non_contiguous_array_is_stored_as_seen(tmp_path: Path) -> None:
    arr = rgb(32, 24).transpose(1, 0, 2)  # Fortran-ordered view
    ref = log_and_read(tmp_path, {"img": Image(arr)}).history[0]["img"]
    np.testing.assert_array_equal(pixels(ref), arr)


def test_list_of_images_under_one_key(tmp_path: Path) -> None:
    arrs = [rgb(seed=i) for i in range(3)]
    data = log_and_read(tmp_path, {"imgs": [Image(a, caption=str(i)) for i, a in enumerate(arrs)]})
    ref = data.history[0]["imgs"]
    assert ref["_type"] == "list"
    assert ref["of"] == "image"
    assert [item["caption"] for item in ref["items"]] == ["0", "1", "2"]
    for item, arr in zip(ref["items"], arrs, strict=True):
        check_file(data, item)
        np.testing.assert_array_equal(pixels(item), arr)


# -- PIL images and files ----------------------------------------------------------------


def test_pil_image_is_copied_at_log(tmp_path: Path) -> None:
    im = PIL.fromarray(rgb())
    want = np.asarray(im).copy()
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    run.log({"img": Image(im)})
    im.paste((0, 0, 0), (0, 0, 32, 24))
    run.finish()
    ref = pipeline.read_run(run.dir).history[0]["img"]
    np.testing.assert_array_equal(pixels(ref), want)


def test_pil_mode_png_cannot_hold_is_converted(tmp_path: Path) -> None:
    im = PIL.new("CMYK", (8, 4), (0, 255, 0, 0))
    ref = log_and_read(tmp_path, {"img": Image(im)}).history[0]["img"]
    with PIL.open(ref["local_path"]) as out:
        assert out.mode == "RGB"
        assert out.size == (8, 4)


@pytest.mark.parametrize(("fmt", "ext", "name"), [("PNG", "png", "png"), ("JPEG", "jpg", "jpeg")])
def test_png_and_jpeg_files_are_copied_byte_for_byte(
    tmp_path: Path, fmt: str, ext: str, name: str
) -> None:
    src = tmp_path / f"in.{ext}"
    PIL.fromarray(rgb()).save(src, format=fmt)
    data = log_and_read(tmp_path, {"img": Image(src)})
    ref = data.history[0]["img"]
    assert check_file(data, ref) == src.read_bytes()
    assert ref["format"] == name
    assert ref["path"].endswith(f".{ext}")
    assert (ref["width"], ref["height"]) == (32, 24)


def test_other_formats_become_png(tmp_path: Path) -> None:
    src = tmp_path / "in.bmp"
    arr = rgb()
    PIL.fromarray(arr).save(src)
    ref = log_and_read(tmp_path, {"img": Image(str(src))}).history[0]["img"]
    assert ref["format"] == "png"
    assert ref["path"].endswith(".png")
    np.testing.assert_array_equal(pixels(ref), arr)


def bad_values(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "could not be stored" in r.getMessage()]


def test_file_gone_before_encoding_is_reported_and_row_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "gone.png"
    PIL.fromarray(rgb()).save(src)
    img = Image(src)
    src.unlink()
    with caplog.at_level(logging.WARNING, logger="runbus"):
        data = log_and_read(tmp_path, {"a": 1}, {"img": img, "loss": 2.0})
    assert "img" not in data.history[1]
    assert data.history[1]["loss"] == 2.0
    assert any("'img' at step 1" in m and "gone.png" in m for m in bad_values(caplog))


def test_corrupt_file_is_reported_and_row_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "bad.png"
    src.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with caplog.at_level(logging.WARNING, logger="runbus"):
        data = log_and_read(tmp_path, {"img": Image(src), "loss": 2.0})
    assert "img" not in data.history[0]
    assert data.history[0]["loss"] == 2.0
    assert any("'img' at step 0" in m for m in bad_values(caplog))
    assert not [f for f in data.files if f.startswith("media/")]


# -- bad input: raised at construction -------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "hint"),
    [
        ((3, 24, 32), "transpose(1, 2, 0)"),
        ((24, 32, 2), ""),
        ((24,), ""),
        ((2, 24, 32, 3), ""),
        ((0, 32), ""),
    ],
)
def test_wrong_shape_raises_naming_expected_shapes(shape: tuple[int, ...], hint: str) -> None:
    with pytest.raises(ValueError, match=r"HxW, HxWx1, HxWx3") as err:
        Image(np.zeros(shape, np.uint8))
    assert str(shape) in str(err.value)
    assert hint in str(err.value)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.bool_, np.complex64])
def test_wrong_dtype_raises_naming_expected_dtypes(dtype: Any) -> None:
    with pytest.raises(ValueError, match=r"uint8 .* float") as err:
        Image(np.zeros((4, 4, 3), dtype))
    assert str(np.dtype(dtype)) in str(err.value)


@pytest.mark.parametrize("bad", [255.0, -0.1, float("nan")])
def test_float_out_of_range_raises_naming_the_range(bad: float) -> None:
    arr = np.full((4, 4), 0.5)
    arr[1, 1] = bad
    with pytest.raises(ValueError, match=r"\[0\.0, 1\.0\]"):
        Image(arr)


def test_not_an_image_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"numpy array .* PIL image .* path"):
        Image([[0, 1], [1, 0]])


def test_missing_file_raises_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        Image(tmp_path / "nope.png")


def test_missing_pillow_raises_import_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "PIL.Image", None)  # makes `import PIL.Image` fail
    monkeypatch.setattr(_optional, "_found", set())
    with pytest.raises(ImportError, match=r"Pillow.*pip install 'runbus\[media\]'"):
        Image(rgb())


def test_bad_image_in_log_call_stores_nothing(tmp_path: Path) -> None:
    run = pipeline.init(project="p", dir=tmp_path, settings=SETTINGS)
    with pytest.raises(ValueError, match="HxW"):
        run.log({"img": Image(np.zeros((3, 3, 5), np.uint8)), "loss": 1.0})
    run.log({"loss": 2.0})
    run.finish()
    data = pipeline.read_run(run.dir)
    assert [r["loss"] for r in data.history] == [2.0]
    assert data.history[0]["_step"] == 0


def test_media_waiting_for_encoding_is_bounded_by_bytes(tmp_path: Path) -> None:
    limit = 1024 * 1024
    run = pipeline.init(
        project="p",
        dir=tmp_path,
        settings={**SETTINGS, "max_media_bytes": limit},
    )
    frame = np.zeros((256, 256, 3), dtype=np.uint8)  # 196,608 bytes a copy
    for i in range(40):
        frame[0, 0, 0] = i
        run.log({"img": pipeline.Image(frame)})
        # log() returns only once the copies waiting for the encoder fit the budget.
        assert run._source.media_bytes <= limit
    run.finish()
    data = pipeline.read_run(run.dir)
    assert len(data.history) == 40
    assert all(Path(r["img"]["local_path"]).exists() for r in data.history)
