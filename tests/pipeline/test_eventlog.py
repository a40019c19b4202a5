"""The ``events.log`` format keeps what was written and survives damage.

These tests build frames from real event records and damage them the ways a
crash, a power loss or a bad disk would: a cut anywhere, a flipped bit, garbage,
a zero-filled tail. Whatever the damage, the reader must not raise, must return
every intact frame (before and after the damage) and nothing that was not
written, and must say what it skipped.
"""

from __future__ import annotations

import math
import random
import string
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import events as ev
from pipeline.eventlog import (
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    ReadResult,
    encode_events,
    encode_frame,
    read_events,
)
from pipeline.jsoncodec import has_nonfinite

RID = "r1a2b3"
NAN, INF = math.nan, math.inf
T0 = 1_700_000_000.0

# Offsets inside a frame header (see the module docstring of pipeline.eventlog).
LENGTH_FIELD = range(8, 12)


def sample_frames() -> list[list[ev.Event]]:
    """Frames of every stored kind, the way a run writes them, NaN/inf included.

    Five frames, so there is a middle frame with intact frames on both sides.
    """
    return [
        [
            ev.Metadata(RID, 1, T0, {"id": RID, "project": "crash", "args": ["--lr", "0.1"]}),
            ev.ConfigUpdate(
                RID,
                2,
                T0 + 0.001,
                {"lr": 1e-3, "layers": [64, 32], "opt": {"name": "adam", "eps": 1e-8}, "m": NAN},
            ),
            ev.MetricDef(
                RID, 3, T0 + 0.002, "val/*", "epoch", True, False, ("max", "mean"), "maximize"
            ),
            ev.MetricDef(RID, 4, T0 + 0.003, "loss", None, False, True, None, None),
        ],
        [
            ev.HistoryRow(RID, 5, T0 + 1.0, 0, 1.0, {"loss": 0.5, "acc": 0.1, "epoch": 0}, False),
            ev.HistoryRow(
                RID, 6, T0 + 1.5, 1, 1.5, {"loss": NAN, "acc": INF, "grad": -INF, "epoch": 0}, True
            ),
            ev.HistoryRow(
                RID,
                7,
                T0 + 2.0,
                2,
                2.0,
                {"loss": 0.25, "note": "ok", "flag": True, "none": None, "h": [1.0, NAN, -INF]},
                True,
            ),
        ],
        [
            ev.PartialRow(RID, 8, T0 + 2.5, 3, 2.5, {"loss": 0.2}, False),
            ev.Refused(
                RID, 9, T0 + 2.6, 1, 3, {"loss": 9.0, "bad": NAN}, "step 1 < current step 3"
            ),
            ev.Stats(RID, 10, T0 + 2.7, 2.7, {"cpu": 12.5, "gpu.0.temp": NAN, "disk": -0.0}),
            # NUL and control characters in text must not look like a frame start.
            ev.Output(RID, 11, T0 + 2.8, "stdout", "epoch 1\r\x1b[K done\n\x00rb1 é ✓"),
            ev.FileSaved(RID, 12, T0 + 2.9, "media/images/a_0.png", "ab" * 32, 1234),
        ],
        [
            ev.HistoryRow(RID, 13, T0 + 3.0, 3, 3.0, {"loss": 0.2, "acc": 0.5}, False),
            ev.Summary(
                RID, 14, T0 + 3.1, {"loss": 0.2, "acc": {"max": 0.5, "min": 0.1}, "b": -INF}
            ),
            ev.SummaryUpdate(RID, 15, T0 + 3.2, {"best_accuracy": 0.97}, ("old",)),
        ],
        [
            ev.Metadata(RID, 16, T0 + 4.0, {"state": "finished", "refused": 1}),
            ev.Finish(RID, 17, T0 + 4.1, 0),
        ],
    ]


def build_log(
    frames: Sequence[Sequence[ev.Event]], *, compress: bool = False
) -> tuple[bytes, list[int]]:
    """The log bytes and the start offset of each frame (plus the end of file)."""
    out = bytearray()
    starts = []
    for frame in frames:
        starts.append(len(out))
        out += encode_events(frame, compress=compress)
    starts.append(len(out))
    return bytes(out), starts


def keys(events: Sequence[ev.Event]) -> list[str]:
    """Events as comparable text: repr keeps NaN, the sign of zero and int vs float apart."""
    return [repr(e) for e in events]


def flat(frames: Sequence[Sequence[ev.Event]]) -> list[ev.Event]:
    return [e for frame in frames for e in frame]


def assert_clean(res: ReadResult, data: bytes) -> None:
    assert res.corrupt == 0
    assert res.corrupt_offsets == []
    assert res.torn_bytes == 0
    assert res.valid_end == len(data)


# --- round trip -------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_every_event_kind_reads_back_equal(compress: bool) -> None:
    frames = sample_frames()
    data, _ = build_log(frames, compress=compress)
    res = read_events(data, RID)
    assert keys(res.events) == keys(flat(frames))
    assert res.frames == len(frames)
    assert_clean(res, data)


def test_non_finite_floats_stay_exact() -> None:
    # Spelled out (not only via repr) because this is the promise users rely on.
    res = read_events(build_log(sample_frames())[0], RID)
    rows = {e.step: e for e in res.events if isinstance(e, ev.HistoryRow)}
    row = rows[1].data
    assert math.isnan(row["loss"])
    assert row["acc"] == math.inf
    assert row["grad"] == -math.inf
    assert rows[1].nonfinite
    h = rows[2].data["h"]
    assert h[0] == 1.0
    assert math.isnan(h[1])
    assert h[2] == -math.inf
    config = next(e for e in res.events if isinstance(e, ev.ConfigUpdate))
    assert math.isnan(config.values["m"])
    refused = next(e for e in res.events if isinstance(e, ev.Refused))
    assert math.isnan(refused.data["bad"])
    summary = next(e for e in res.events if isinstance(e, ev.Summary))
    assert summary.values["b"] == -math.inf


def test_compressed_and_plain_frames_mix_in_one_log() -> None:
    frames = sample_frames()
    data = b"".join(encode_events(f, compress=i % 2 == 1) for i, f in enumerate(frames))
    res = read_events(data, RID)
    assert keys(res.events) == keys(flat(frames))
    assert_clean(res, data)


def test_run_id_is_taken_from_the_metadata_when_not_given() -> None:
    # A reader that only has the file (e.g. `runbus sync`) still gets the run id.
    frames = sample_frames()
    res = read_events(build_log(frames)[0])
    assert keys(res.events) == keys(flat(frames))


def test_an_empty_frame_is_a_frame() -> None:
    data = encode_events([]) + encode_events(sample_frames()[4])
    res = read_events(data, RID)
    assert res.frames == 2
    assert keys(res.events) == keys(sample_frames()[4])
    assert_clean(res, data)


# --- truncation (kill -9 in the middle of a write) ---------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_truncation_at_every_offset_of_the_last_two_frames(compress: bool) -> None:
    frames = sample_frames()
    data, starts = build_log(frames, compress=compress)
    for cut in range(starts[-3], len(data) + 1):
        res = read_events(data[:cut], RID)
        whole = max(i for i, s in enumerate(starts) if s <= cut)  # frames fully before the cut
        expected = flat(frames[:whole])
        assert keys(res.events) == keys(expected), cut
        assert res.frames == whole, cut
        assert res.corrupt == 0, cut
        assert res.torn_bytes == cut - starts[whole], cut
        assert res.valid_end == starts[whole], cut


def test_appending_at_valid_end_after_a_torn_write_heals_the_log() -> None:
    # What a resumed run does: cut the torn tail at valid_end, then append.
    frames = sample_frames()
    data, starts = build_log(frames)
    torn = data[: starts[-2] + 7]
    res = read_events(torn, RID)
    assert res.valid_end == starts[-2]
    healed = torn[: res.valid_end] + encode_events(frames[-1])
    again = read_events(healed, RID)
    assert keys(again.events) == keys(flat(frames))
    assert_clean(again, healed)


# --- bit flips (a bad disk, a bad copy) -------------------------------------


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("compress", [False, True])
def test_any_bit_flip_in_a_middle_frame_loses_only_that_frame(compress: bool) -> None:
    frames = sample_frames()
    data, starts = build_log(frames, compress=compress)
    mid = 2
    expected = keys(flat(frames[:mid] + frames[mid + 1 :]))
    for bit in range(starts[mid] * 8, starts[mid + 1] * 8):
        res = read_events(flip(data, bit), RID)
        assert keys(res.events) == expected, bit
        assert res.corrupt == 1, bit
        assert res.corrupt_offsets == [starts[mid]], bit
        assert res.torn_bytes == 0, bit
        assert res.valid_end == len(data), bit


@pytest.mark.parametrize("compress", [False, True])
def test_any_bit_flip_in_the_last_frame_is_reported(compress: bool) -> None:
    frames = sample_frames()
    data, starts = build_log(frames, compress=compress)
    last = starts[-2]
    expected = keys(flat(frames[:-1]))
    for bit in range(last * 8, len(data) * 8):
        damaged = flip(data, bit)
        res = read_events(damaged, RID)
        assert keys(res.events) == expected, bit
        assert res.valid_end == last, bit
        # Only a length that now reaches past the end of file looks like a write
        # cut short; any other flip leaves a whole frame that fails its check.
        (length,) = struct.unpack_from("<I", damaged, last + 8)
        looks_torn = bit // 8 - last in LENGTH_FIELD and (
            length <= MAX_PAYLOAD and last + HEADER_SIZE + length > len(data)
        )
        if looks_torn:
            assert (res.corrupt, res.torn_bytes) == (0, len(data) - last), bit
        else:
            assert (res.corrupt, res.torn_bytes) == (1, 0), bit
            assert res.corrupt_offsets == [last], bit


def test_a_zeroed_payload_under_an_intact_header_is_reported() -> None:
    # Power loss can persist the header's page and not the payload's.
    frames = sample_frames()
    data, starts = build_log(frames)
    damaged = data[: starts[-2] + HEADER_SIZE] + bytes(len(data) - starts[-2] - HEADER_SIZE)
    res = read_events(damaged, RID)
    assert keys(res.events) == keys(flat(frames[:-1]))
    assert res.corrupt == 1
    assert res.valid_end == starts[-2]


# --- garbage and empty files -------------------------------------------------


def _garbage() -> list[bytes]:
    rng = random.Random(7)
    frame = encode_events(sample_frames()[1])
    return [
        b"this is not a frame",
        bytes(rng.randrange(256) for _ in range(200)),  # NUL bytes included
        MAGIC,  # a lone frame start
        MAGIC + b"\x00" * 4 + struct.pack("<II", 10, 0) + b"0123456789",  # bad checksum
        MAGIC + b"\x00" * 4 + struct.pack("<II", 2**31, 0),  # absurd length
        frame[: len(frame) // 2],  # a torn write that was not cut before appending
        bytes(4096),
    ]


@pytest.mark.parametrize("junk", _garbage(), ids=lambda b: f"{len(b)}B")
def test_garbage_between_frames_is_skipped_and_counted(junk: bytes) -> None:
    frames = sample_frames()
    data, starts = build_log(frames)
    damaged = data[: starts[2]] + junk + data[starts[2] :]
    res = read_events(damaged, RID)
    assert keys(res.events) == keys(flat(frames))
    assert res.corrupt == 1
    assert res.corrupt_offsets == [starts[2]]
    assert res.torn_bytes == 0
    assert res.valid_end == len(damaged)


@pytest.mark.parametrize("compress", [False, True])
def test_zero_filled_tail_after_power_loss_is_a_torn_tail(compress: bool) -> None:
    frames = sample_frames()
    data, _ = build_log(frames, compress=compress)
    for tail in (1, HEADER_SIZE - 1, HEADER_SIZE, 4096):
        res = read_events(data + bytes(tail), RID)
        assert keys(res.events) == keys(flat(frames)), tail
        assert res.corrupt == 0, tail
        assert res.torn_bytes == tail, tail
        assert res.valid_end == len(data), tail


def test_torn_frame_followed_by_zeros_is_reported() -> None:
    # A torn write and then zeros (power loss) looks like a whole frame with a bad
    # payload once the zeros cover its length: either report is fair, silence is not.
    frames = sample_frames()
    data, starts = build_log(frames)
    for cut in (starts[-2] + 3, starts[-2] + 20):
        res = read_events(data[:cut] + bytes(512), RID)
        assert keys(res.events) == keys(flat(frames[:-1])), cut
        assert res.corrupt + (res.torn_bytes > 0) == 1, cut
        assert res.valid_end == starts[-2], cut


def test_empty_file() -> None:
    res = read_events(b"", RID)
    assert res == ReadResult()


@pytest.mark.parametrize(
    "junk",
    [
        b"x",
        b"{}\n" * 50,
        bytes(100),
        MAGIC,
        MAGIC * 100,
        bytes(random.Random(3).randrange(256) for _ in range(10_000)),
    ],
    ids=["byte", "json-lines", "zeros", "magic", "magic-run", "random"],
)
def test_a_file_of_only_garbage_reads_as_nothing_and_says_so(junk: bytes) -> None:
    res = read_events(junk, RID)
    assert res.events == []
    assert res.frames == 0
    assert res.valid_end == 0
    assert res.corrupt > 0 or res.torn_bytes > 0


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"shapes": [], "ev": 5}',
        b'{"shapes": [], "ev": [["finish", 1, 1.0]]}',
        b'{"shapes": [], "ev": [["finish", 1, 1.0, [0]]]}',
        b'{"shapes": [], "ev": [["finish", 1, 1.0, {"exit_code": 0, "new": 1}]]}',
        b'{"shapes": [], "ev": [["row", 1, 1.0, [0, 3, 0.0, 1]]]}',
        b'{"shapes": [["a"]], "ev": [["row", 1, 1.0, [0, 0, 0.0, 1, 2]]]}',
    ],
)
def test_a_checksummed_frame_of_the_wrong_shape_is_corrupt_not_fatal(payload: bytes) -> None:
    # A writer bug must cost one frame, not the whole run.
    frames = sample_frames()
    bad = encode_frame(payload)
    data = encode_events(frames[0]) + bad + encode_events(frames[1])
    res = read_events(data)
    assert keys(res.events) == keys(frames[0] + frames[1])
    assert res.corrupt == 1
    assert res.valid_end == len(data)


def test_metadata_of_the_wrong_type_does_not_stop_the_reader() -> None:
    # The reader looks for the run id in the first metadata it meets.
    frames = sample_frames()
    odd = encode_frame(b'{"shapes": [], "ev": [["metadata", 1, 1.0, {"values": [1]}]]}')
    data = odd + build_log(frames)[0]
    res = read_events(data)
    assert keys(res.events[1:]) == keys(flat(frames))
    assert_clean(res, data)


def test_unknown_event_kinds_from_a_newer_writer_are_skipped() -> None:
    frame = encode_frame(
        b'{"shapes": [], "ev": [["hologram", 1, 1.0, {"x": 1}],'
        b' ["finish", 2, 2.0, {"exit_code": 3}]]}'
    )
    res = read_events(frame, RID)
    assert res.events == [ev.Finish(RID, 2, 2.0, 3)]
    assert_clean(res, frame)


# --- properties --------------------------------------------------------------

# Metric names, config keys: never "$..." (the reserved tag key of jsoncodec).
_names = st.text(alphabet=string.ascii_letters + string.digits + "_/.-", min_size=1, max_size=8)
_texts = st.text(st.characters(codec="utf-8"), max_size=12)  # JSON holds no surrogates
_floats = st.floats(allow_nan=True, allow_infinity=True)
_ints = st.integers(-(2**63), 2**63 - 1)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _texts)
_row_values = st.one_of(_scalars, st.lists(st.one_of(_ints, _floats), max_size=4))
_rows = st.dictionaries(_names, _row_values, max_size=6)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=3),
    max_leaves=8,
)
_objects = st.dictionaries(_names, _json, max_size=4)
_seq = st.integers(1, 2**53)
_ts = st.floats(0, 4e9)
_step = st.integers(0, 2**40)


def _event(cls: Any, *fields: st.SearchStrategy[Any]) -> st.SearchStrategy[ev.Event]:
    # Positional, so that `kind` keeps its default (st.builds would draw it too).
    return st.tuples(_seq, _ts, *fields).map(lambda t: cls(RID, *t))


def _row(cls: Any) -> st.SearchStrategy[ev.Event]:
    # The writer flags rows holding non-finite floats; the flag must match the data.
    return st.tuples(_seq, _ts, _step, _ts, _rows).map(lambda t: cls(RID, *t, has_nonfinite(t[-1])))


_summary_kinds = st.lists(st.sampled_from(["min", "max", "mean", "last", "best"]), max_size=3)
_events: st.SearchStrategy[ev.Event] = st.one_of(
    _row(ev.HistoryRow),
    _row(ev.PartialRow),
    _event(ev.Refused, _step, _step, _rows, _texts),
    _event(ev.Summary, _objects),
    _event(ev.SummaryUpdate, _objects, st.lists(_names, max_size=3).map(tuple)),
    _event(ev.ConfigUpdate, _objects),
    _event(
        ev.MetricDef,
        _names,
        st.none() | _names,
        st.booleans(),
        st.booleans(),
        st.none() | _summary_kinds.map(tuple),
        st.sampled_from([None, "minimize", "maximize"]),
    ),
    _event(ev.Stats, _ts, _objects),
    _event(ev.Output, st.sampled_from(["stdout", "stderr"]), _texts),
    _event(ev.FileSaved, _names, _names, st.integers(0, 2**40)),
    _event(ev.Metadata, _objects),
    _event(ev.Finish, st.integers(-255, 255)),
)
# Frames as a writer makes them: each a batch of events, some compressed.
_frames = st.lists(st.tuples(st.lists(_events, max_size=5), st.booleans()), min_size=1, max_size=5)


def _encode(frames: list[tuple[list[ev.Event], bool]]) -> tuple[bytes, list[int]]:
    out = bytearray()
    starts = []
    for events, compress in frames:
        starts.append(len(out))
        out += encode_events(events, compress=compress)
    starts.append(len(out))
    return bytes(out), starts


_settings = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(_frames)
def test_random_events_round_trip(frames: list[tuple[list[ev.Event], bool]]) -> None:
    data, _ = _encode(frames)
    res = read_events(data, RID)
    assert keys(res.events) == keys(flat([f for f, _ in frames]))
    assert res.frames == len(frames)
    assert_clean(res, data)


@_settings
@given(_frames, st.data())
def test_any_single_byte_change_costs_exactly_the_frame_it_hits(
    frames: list[tuple[list[ev.Event], bool]], draw: st.DataObject
) -> None:
    data, starts = _encode(frames)
    pos = draw.draw(st.integers(0, len(data) - 1), label="pos")
    new = draw.draw(st.integers(0, 255).filter(lambda b: b != data[pos]), label="byte")
    damaged = data[:pos] + bytes([new]) + data[pos + 1 :]
    hit = max(i for i, s in enumerate(starts) if s <= pos)
    res = read_events(damaged, RID)  # must not raise
    expected = [e for i, (f, _) in enumerate(frames) if i != hit for e in f]
    assert keys(res.events) == keys(expected)
    if hit < len(frames) - 1:
        assert (res.corrupt, res.torn_bytes) == (1, 0)
    else:
        # The last frame may read as a torn write if its length now overruns the file.
        assert (res.corrupt, res.torn_bytes) in {(1, 0), (0, len(data) - starts[hit])}


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(any(p == w for w in it) for p in part)


@_settings
@given(_frames, st.data())
def test_random_damage_never_raises_and_never_invents_events(
    frames: list[tuple[list[ev.Event], bool]], draw: st.DataObject
) -> None:
    data, _ = _encode(frames)
    start = draw.draw(st.integers(0, len(data)), label="start")
    stop = draw.draw(st.integers(start, min(len(data), start + 64)), label="stop")
    junk = draw.draw(st.binary(max_size=64), label="junk")
    # Overwrite, delete or insert a span, then maybe cut the file short.
    damaged = data[:start] + junk + data[stop:]
    cut = draw.draw(st.integers(0, len(damaged)), label="cut")
    for blob in (damaged, damaged[:cut]):
        res = read_events(blob, RID)
        assert _is_subsequence(keys(res.events), keys(flat([f for f, _ in frames])))
        assert 0 <= res.valid_end <= len(blob)
        assert res.torn_bytes <= len(blob) - res.valid_end
