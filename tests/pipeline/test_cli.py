"""The ``runbus`` command line, on run directories written through the public API."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline.cli import main
from pipeline.render import BLOCKS


def make_run(root: Path, rows: list[dict[str, Any]], **kw: Any) -> Path:
    """Write a finished run under ``root`` and return its directory."""
    kw.setdefault("project", "p")
    run = pipeline.init(dir=root, settings={"quiet": True}, **kw)
    for row in rows:
        run.log(row)
    run.finish()
    return Path(run.dir)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- ls ----------------------------------------------------------------------------


def test_ls_lists_runs_newest_first_with_state_and_steps(root: Path, capsys: Any) -> None:
    make_run(root, [{"loss": 1.0}, {"loss": 0.5}], name="first-run")
    make_run(root, [{"loss": 0.3, "acc": 0.9}] * 3, name="second-run")
    code, out, err = run_cli(capsys, "ls", str(root))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["name", "id", "state", "steps"]
    first = next(line for line in lines if "first-run" in line)
    second = next(line for line in lines if "second-run" in line)
    assert lines.index(second) < lines.index(first)  # newest first
    assert "finished" in first
    assert first.split()[3] == "2"
    assert second.split()[3] == "3"
    assert "loss=0.3" in second


def test_ls_uses_runbus_dir(root: Path, capsys: Any, monkeypatch: Any) -> None:
    make_run(root, [{"x": 1}], name="env-run")
    monkeypatch.setenv("RUNBUS_DIR", str(root))
    code, out, _ = run_cli(capsys, "ls")
    assert code == 0
    assert "env-run" in out


def test_ls_empty_dir_says_so(tmp_path: Path, capsys: Any) -> None:
    code, out, _ = run_cli(capsys, "ls", str(tmp_path))
    assert code == 0
    assert "no runs" in out


def test_ls_missing_dir_is_an_error_naming_it(tmp_path: Path, capsys: Any) -> None:
    missing = tmp_path / "nope"
    code, out, err = run_cli(capsys, "ls", str(missing))
    assert code == 1
    assert str(missing) in err
    assert "Traceback" not in err
    assert out == ""


# -- show ------------------------------------------------------------------------------


def test_show_prints_identity_config_and_summary_with_sparklines(root: Path, capsys: Any) -> None:
    path = make_run(
        root,
        [{"loss": 1.0 / (i + 1), "acc": i / 10} for i in range(10)],
        name="show-me",
        config={"lr": 0.001, "optim": {"name": "adam", "beta1": 0.9}},
    )
    code, out, err = run_cli(capsys, "show", str(path))
    assert code == 0, err
    assert "show-me" in out
    assert "finished" in out
    assert "optim.beta1" in out
    assert "optim.name" in out
    assert "adam" in out
    loss = next(line for line in out.splitlines() if line.strip().startswith("loss"))
    assert "0.1" in loss  # the last value, the default summary
    assert any(c in loss for c in BLOCKS)
    assert loss.rstrip().endswith(BLOCKS[0])  # loss falls to its lowest


def test_show_resolves_id_prefix_name_and_latest(root: Path, capsys: Any) -> None:
    make_run(root, [{"x": 1}], name="older", id="zzz111")
    make_run(root, [{"x": 2}], name="newer", id="yyy222")
    for ref, name in (("zzz111", "older"), ("zzz", "older"), ("newer", "newer")):
        code, out, err = run_cli(capsys, "show", ref, "--dir", str(root))
        assert code == 0, err
        assert name in out
    code, out, _ = run_cli(capsys, "show", "latest", "--dir", str(root))
    assert code == 0
    assert "newer" in out


def test_show_ambiguous_prefix_lists_candidates(root: Path, capsys: Any) -> None:
    make_run(root, [{"x": 1}], id="abc111")
    make_run(root, [{"x": 1}], id="abc222")
    code, out, err = run_cli(capsys, "show", "abc", "--dir", str(root))
    assert code == 1
    assert out == ""
    assert "matches 2 runs" in err
    assert "abc111" in err
    assert "abc222" in err
    assert "Traceback" not in err


def test_show_unknown_run_is_an_error(root: Path, capsys: Any) -> None:
    make_run(root, [{"x": 1}], id="abc111")
    code, _, err = run_cli(capsys, "show", "nothing-like-it", "--dir", str(root))
    assert code == 1
    assert "no run matches 'nothing-like-it'" in err
    assert "abc111" in err  # what is there, to help


# The refusal is warned about from the pipeline's own thread.
@pytest.mark.filterwarnings("ignore::pipeline.StepWarning")
def test_show_counts_refused_calls(root: Path, capsys: Any) -> None:
    run = pipeline.init(project="p", dir=root, settings={"quiet": True})
    run.log({"a": 1}, step=5)
    run.log({"a": 2}, step=3)  # lower than the current step: refused
    run.finish()
    code, out, _ = run_cli(capsys, "show", str(run.dir))
    assert code == 0
    refused = next(line for line in out.splitlines() if line.startswith("refused"))
    assert "1 log call(s)" in refused


# -- export ------------------------------------------------------------------------------

NONFINITE_ROWS: list[dict[str, Any]] = [
    {"loss": 0.1 + 0.2, "acc": 0.5},
    {"loss": math.nan, "lr": 1e-300},
    {"loss": math.inf, "acc": -math.inf, "tag": "a,b"},
]


def test_export_csv_round_trips_floats_exactly(root: Path, capsys: Any) -> None:
    path = make_run(root, NONFINITE_ROWS)
    code, out, err = run_cli(capsys, "export", str(path), "--format", "csv")
    assert code == 0, err
    records = list(csv.DictReader(io.StringIO(out)))
    header = out.splitlines()[0].split(",")
    assert header == ["_step", "_timestamp", "_runtime", "acc", "loss", "lr", "tag"]
    assert [int(r["_step"]) for r in records] == [0, 1, 2]
    assert float(records[0]["loss"]) == 0.1 + 0.2  # exact, not 0.3
    assert math.isnan(float(records[1]["loss"]))
    assert float(records[2]["loss"]) == math.inf
    assert float(records[2]["acc"]) == -math.inf
    assert float(records[1]["lr"]) == 1e-300
    assert records[1]["acc"] == ""  # missing cell
    assert records[2]["tag"] == "a,b"  # quoted, not split


def test_export_jsonl_round_trips_through_json_loads(root: Path, capsys: Any) -> None:
    path = make_run(root, NONFINITE_ROWS)
    code, out, _ = run_cli(capsys, "export", str(path), "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["_step"] for r in rows] == [0, 1, 2]
    assert rows[0]["loss"] == 0.1 + 0.2
    assert math.isnan(rows[1]["loss"])
    assert rows[2]["loss"] == math.inf
    assert rows[2]["acc"] == -math.inf
    assert "acc" not in rows[1]
    assert list(rows[0])[:3] == ["_step", "_timestamp", "_runtime"]


def test_export_to_file(root: Path, tmp_path: Path, capsys: Any) -> None:
    path = make_run(root, [{"x": 1}, {"x": 2}])
    target = tmp_path / "out.csv"
    code, out, _ = run_cli(capsys, "export", str(path), "--format", "csv", "-o", str(target))
    assert code == 0
    assert out == ""
    lines = target.read_text().splitlines()
    assert len(lines) == 3


def test_export_by_id_under_dir(root: Path, capsys: Any) -> None:
    make_run(root, [{"x": 1}], id="exp123")
    code, out, _ = run_cli(capsys, "export", "exp", "--dir", str(root), "--format", "jsonl")
    assert code == 0
    assert json.loads(out.splitlines()[0])["x"] == 1


# -- usage -------------------------------------------------------------------------------


def test_help_exits_zero_and_documents_nonfinite_jsonl(capsys: Any) -> None:
    assert main(["--help"]) == 0
    assert "export" in capsys.readouterr().out
    assert main(["export", "--help"]) == 0
    assert "Infinity" in capsys.readouterr().out


def test_usage_errors_return_two(capsys: Any) -> None:
    assert main([]) == 2
    assert main(["export", "somerun"]) == 2  # --format is required
    assert "usage" in capsys.readouterr().err


def test_path_that_is_not_a_run_is_an_error(tmp_path: Path, capsys: Any) -> None:
    code, _, err = run_cli(capsys, "show", str(tmp_path / "no" / "such"))
    assert code == 1
    assert "does not exist" in err


def test_export_carries_media_along_and_keeps_paths_portable(tmp_path: Path, capsys: Any) -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("PIL")
    run = pipeline.init(
        project="p",
        dir=tmp_path / "runs",
        settings={"quiet": True, "console": "off", "system": False, "git": False},
    )
    run.log({"img": pipeline.Image(np.zeros((4, 4, 3), dtype=np.uint8)), "loss": 1.0})
    run.finish()
    out = tmp_path / "export" / "rows.jsonl"
    out.parent.mkdir()
    assert main(["export", str(run.dir), "--format", "jsonl", "-o", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[0])
    ref = row["img"]
    assert "local_path" not in ref, "no machine-local paths in an export"
    copied = out.parent / ref["path"]
    assert copied.read_bytes() == (run.dir / ref["path"]).read_bytes()
    assert "copied 1 media file" in capsys.readouterr().err


def test_runbus_server_starts_and_answers_health(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("aiohttp")
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pipeline.cli import main; raise SystemExit(main())",
            "server",
            "--port",
            "0",
            "--data",
            str(tmp_path / "data"),
        ],
        env={**os.environ, "PYTHONPATH": src},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 60
        lines = []
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            for word in line.split():
                if word.startswith("http://") and "/login?token=" in word:
                    url = word.split("/login?")[0]
        assert url is not None, "".join(lines)
        with urllib.request.urlopen(f"{url}/api/v1/health", timeout=10) as resp:
            assert json.loads(resp.read()) == {"ok": True}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
