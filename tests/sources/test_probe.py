"""The probe against real git repositories, the real environment, and whole runs."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

import pipeline
from pipeline import events as ev
from pipeline.runinfo import RunInfo
from sources import probe
from sources.probe import host_metadata, requirements_txt, run_probe, strip_credentials

#: Generous: only turns a hang into a failure.
HANG = 60
REAL_GIT = shutil.which("git")
needs_git = pytest.mark.skipif(REAL_GIT is None, reason="git is not installed")
SECRET = "s3cret-t0ken"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _plain_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A git that ignores the developer's config, for the tests and the probe alike."""
    home = tmp_path_factory.mktemp("home")
    (home / "gitconfig").write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")


def git(cwd: Path, *args: str) -> bytes:
    assert REAL_GIT is not None
    return subprocess.run([REAL_GIT, *args], cwd=cwd, check=True, capture_output=True).stdout


def make_repo(path: Path) -> Path:
    """A committed repository with a remote that has credentials in its URL."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text("alpha\n")
    (path / "b.txt").write_text("beta\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "first")
    git(path, "remote", "add", "origin", f"https://user:{SECRET}@example.com/org/repo.git")
    return path


def make_changes(repo: Path) -> None:
    """Unstaged, staged and new-staged changes to tracked files, and an untracked file."""
    (repo / "a.txt").write_text("alpha\nunstaged line\n")
    (repo / "b.txt").write_text("beta\nstaged line\n")
    (repo / "c.txt").write_text("new staged file\n")
    git(repo, "add", "b.txt", "c.txt")
    (repo / "untracked.txt").write_text("not in the patch\n")


@pytest.fixture
def real_tmp(tmp_path: Path) -> Path:
    """``tmp_path`` with symlinks resolved, as git reports its top level."""
    return tmp_path.resolve()


@pytest.fixture
def repo(real_tmp: Path) -> Path:
    return make_repo(real_tmp / "repo")


def run_info(run_dir: Path, *, resumed: bool = False) -> RunInfo:
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunInfo(
        id="probe123", name="n", project="p", dir=run_dir, start_ts=time.time(), resumed=resumed
    )


class Probed:
    """What one ``run_probe`` call sent."""

    def __init__(self, items: list[ev.Item]) -> None:
        self.items = items
        self.metadata: dict[str, Any] = {}
        self.files: dict[str, ev.FileSaved] = {}
        for item in items:
            if isinstance(item, ev.Metadata):
                self.metadata.update(item.values)
            elif isinstance(item, ev.FileSaved):
                self.files[item.path] = item


async def probe_run(
    info: RunInfo,
    *,
    git: bool = True,
    requirements: bool = True,
    metadata: bool = True,
    diff_limit: int = 10 * 1024 * 1024,
    **kwargs: Any,
) -> Probed:
    send, receive = anyio.create_memory_object_stream[list[ev.Item]](100)
    with anyio.fail_after(HANG):
        async with send:
            await run_probe(
                send,
                run=info,
                git=git,
                requirements=requirements,
                metadata=metadata,
                diff_limit=diff_limit,
                **kwargs,
            )
    items: list[ev.Item] = []
    async with receive:
        async for batch in receive:
            items.extend(batch)
    return Probed(items)


# -- credentials -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        ("https://user:tok@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://ghp_abc123@github.com/org/repo", "https://github.com/org/repo"),
        ("http://u:p@host:8080/x", "http://host:8080/x"),
        ("https://u:p@ss@host/x", "https://host/x"),
        ("https://u:p#?x@host/x", "https://host/x"),
        ("https://host/x.git?private_token=abc", "https://host/x.git"),
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("ssh://git@github.com/org/repo.git", "ssh://git@github.com/org/repo.git"),
        ("ssh://git:pw@github.com:22/org/repo", "ssh://git@github.com:22/org/repo"),
        ("git+ssh://me:pw@host/x", "git+ssh://me@host/x"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("git:pw@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("git:p@ss@host:x", "git@host:x"),
        ("host:org/repo", "host:org/repo"),
        ("/srv/git/repo.git", "/srv/git/repo.git"),
        ("../sibling@v1", "../sibling@v1"),
        ("file:///srv/git/repo.git", "file:///srv/git/repo.git"),
    ],
)
def test_strip_credentials(url: str, stripped: str) -> None:
    assert strip_credentials(url) == stripped


# -- requirements ------------------------------------------------------------------


def fake_dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_requirements_are_sorted_deduplicated_and_first_on_path_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    fake_dist(first, "Zeta-Pkg", "1.0")
    fake_dist(first, "alpha_pkg", "2.0")
    fake_dist(second, "zeta.pkg", "9.9")  # the same project, shadowed by the first
    fake_dist(second, "Beta", "3.0")
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))

    lines = requirements_txt().splitlines()
    assert "Zeta-Pkg==1.0" in lines
    assert not any(line.startswith("zeta.pkg==") for line in lines)
    assert "alpha_pkg==2.0" in lines
    assert "Beta==3.0" in lines
    names = [line.split("==")[0] for line in lines]
    assert names == sorted(names, key=lambda n: n.lower().replace("_", "-").replace(".", "-"))
    assert len({n.lower().replace("_", "-").replace(".", "-") for n in names}) == len(names)
    assert all(line.count("==") == 1 for line in lines)
    # The real environment is there too.
    assert any(line.lower().startswith("anyio==") for line in lines)


# -- metadata ------------------------------------------------------------------------


def test_host_metadata_fields() -> None:
    env = {
        "CUDA_VISIBLE_DEVICES": "0,2",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "NOT_SLURM": "x",
    }
    values = host_metadata("/some/dir", env)
    assert values["cwd"] == "/some/dir"
    assert values["cuda_visible_devices"] == "0,2"
    assert values["slurm"] == {
        "array_task_id": "3",
        "job_id": "4242",
        "job_name": "train",
        "job_nodelist": "gpu[01-02]",
    }
    assert values["python_executable"] == sys.executable
    assert set(values["os"]) == {"system", "release", "version", "machine", "platform"}
    assert values["cpu_count"] == os.cpu_count()
    assert values["memory_total"] == psutil.virtual_memory().total
    assert isinstance(values["user"], str)
    assert values["user"]
    if hasattr(os, "sched_getaffinity"):
        assert values["cpu_count_available"] == len(os.sched_getaffinity(0))


def test_no_slurm_or_cuda_keys_when_unset() -> None:
    values = host_metadata("/x", {"PATH": "/bin"})
    assert "slurm" not in values
    assert "cuda_visible_devices" not in values


# -- git through run_probe -------------------------------------------------------------


@needs_git
@pytest.mark.anyio
async def test_dirty_repository(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_changes(repo)
    monkeypatch.chdir(repo)
    info = run_info(tmp_path / "run")
    got = await probe_run(info)

    head = git(repo, "rev-parse", "HEAD").decode().strip()
    assert got.metadata["git"] == {
        "root": str(repo),
        "commit": head,
        "branch": "main",
        "remote": "https://example.com/org/repo.git",
        "dirty": True,
    }
    assert SECRET not in str(got.metadata)

    patch = (info.dir / "diff.patch").read_bytes()
    assert patch == git(repo, "diff", "HEAD")
    text = patch.decode()
    assert "unstaged line" in text
    assert "staged line" in text
    assert "new staged file" in text
    assert "untracked" not in text
    saved = got.files["diff.patch"]
    assert saved.run_id == "probe123"
    assert saved.seq == 0
    assert (saved.sha256, saved.size) == (hashlib.sha256(patch).hexdigest(), len(patch))

    reqs = (info.dir / "requirements.txt").read_bytes()
    assert got.files["requirements.txt"].sha256 == hashlib.sha256(reqs).hexdigest()
    assert got.metadata["cwd"] == str(repo)
    # The patch applies to the commit it was taken against.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    git(clone, "apply", "--check", str(info.dir / "diff.patch"))
    # Half-written files never show: nothing but the results in the run directory.
    assert sorted(p.name for p in info.dir.iterdir()) == ["diff.patch", "requirements.txt"]


@needs_git
@pytest.mark.anyio
async def test_clean_repository_has_no_patch(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "untracked.txt").write_text("untracked files do not make a tree dirty\n")
    monkeypatch.chdir(repo)
    info = run_info(tmp_path / "run")
    got = await probe_run(info)
    assert got.metadata["git"]["dirty"] is False
    assert "diff.patch" not in got.files
    assert not (info.dir / "diff.patch").exists()


@needs_git
@pytest.mark.anyio
async def test_big_diff_is_cut_with_a_note(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "a.txt").write_text("".join(f"line {i}\n" for i in range(5000)))
    monkeypatch.chdir(repo)
    info = run_info(tmp_path / "run")
    limit = 1000
    got = await probe_run(info, diff_limit=limit)

    full = git(repo, "diff", "HEAD")
    assert len(full) > limit
    patch = (info.dir / "diff.patch").read_bytes()
    body, note = patch.rstrip(b"\n").rsplit(b"\n", 1)
    body += b"\n"
    assert len(body) <= limit
    assert full.startswith(body)  # cut at a line end, nothing changed before it
    assert note.startswith(b"# runbus: diff.patch cut here")
    assert str(limit).encode() in note
    assert got.metadata["git"]["diff_truncated"] is True
    assert got.files["diff.patch"].size == len(patch)


@needs_git
@pytest.mark.anyio
async def test_subdirectory_detached_head_and_ssh_remote(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git(repo, "remote", "set-url", "origin", "ssh://git:pw@example.com/org/repo.git")
    git(repo, "checkout", "-q", "--detach")
    (repo / "sub").mkdir()
    info = run_info(tmp_path / "run")
    got = await probe_run(info, cwd=str(repo / "sub"), requirements=False, metadata=False)
    values = got.metadata["git"]
    assert values["root"] == str(repo)
    assert "branch" not in values  # detached
    assert values["remote"] == "ssh://git@example.com/org/repo.git"
    assert got.metadata.keys() == {"git"}


@needs_git
@pytest.mark.anyio
async def test_upstream_remote_is_preferred(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git(repo, "remote", "add", "fork", "https://me:pw@example.com/me/repo.git")
    git(repo, "config", "branch.main.remote", "fork")
    monkeypatch.chdir(repo)
    got = await probe_run(run_info(tmp_path / "run"), requirements=False, metadata=False)
    assert got.metadata["git"]["remote"] == "https://example.com/me/repo.git"


@needs_git
@pytest.mark.anyio
async def test_repository_without_commits(
    real_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = real_tmp / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "trunk")
    (empty / "f.txt").write_text("staged\n")
    git(empty, "add", "f.txt")
    monkeypatch.chdir(empty)
    info = run_info(tmp_path / "run")
    got = await probe_run(info, requirements=False, metadata=False)
    assert got.metadata["git"] == {"root": str(empty), "branch": "trunk", "dirty": True}
    assert not got.files


@needs_git
@pytest.mark.anyio
async def test_resumed_clean_run_drops_an_earlier_patch(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    info = run_info(tmp_path / "run", resumed=True)
    (info.dir / "diff.patch").write_text("from the first segment\n")
    got = await probe_run(info, requirements=False, metadata=False)
    assert got.metadata["git"]["dirty"] is False
    assert not (info.dir / "diff.patch").exists()


@pytest.mark.anyio
async def test_not_a_repository_is_quiet(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    # A repository above would be found; keep git inside the temp directory.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    caplog.set_level(logging.DEBUG, logger="runbus")
    info = run_info(tmp_path / "run")
    got = await probe_run(info)
    assert "git" not in got.metadata
    assert "cwd" in got.metadata  # the rest is still there
    assert set(got.files) == {"requirements.txt"}
    assert capfd.readouterr() == ("", "")
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


@pytest.mark.anyio
async def test_no_git_installed_is_quiet(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.chdir(repo)
    caplog.set_level(logging.DEBUG, logger="runbus")
    info = run_info(tmp_path / "run")
    got = await probe_run(info)
    assert "git" not in got.metadata
    assert "diff.patch" not in got.files
    assert "requirements.txt" in got.files
    assert capfd.readouterr() == ("", "")
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


@pytest.mark.anyio
async def test_unwritable_run_directory_is_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    info = RunInfo(id="x", name="n", project="p", dir=tmp_path / "missing", start_ts=0.0)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG, logger="runbus")
    got = await probe_run(info, git=False)
    assert not got.files
    assert "cwd" in got.metadata
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


@pytest.mark.anyio
async def test_switches_turn_parts_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    got = await probe_run(run_info(tmp_path / "run"), git=False, requirements=False, metadata=False)
    assert got.items == []


# -- a slow git ----------------------------------------------------------------------


class SlowGit:
    """A ``git`` on PATH that tells the test it started, then waits for a release file.

    It reports its pid through a FIFO, so the test knows (without sleeping) that
    the probe is inside a git call.
    """

    def __init__(self, where: Path) -> None:
        assert REAL_GIT is not None
        where.mkdir()
        self.bin = where / "bin"
        self.bin.mkdir()
        self.started = where / "started"
        os.mkfifo(self.started)
        self.release_file = where / "release"
        script = self.bin / "git"
        script.write_text(
            "#!/bin/sh\n"
            f'echo $$ > "{self.started}"\n'
            f'while [ ! -e "{self.release_file}" ]; do sleep 0.05; done\n'
            f'exec "{REAL_GIT}" "$@"\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)

    def wait_started(self) -> int:
        """Block until the fake git runs (at most HANG seconds); its pid."""
        got: list[int] = []

        def read() -> None:
            with open(self.started) as f:
                text = f.read()
            if text.strip():  # empty when the test gave up and unblocked us
                got.append(int(text))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(HANG)
        if reader.is_alive():
            # Unblock the reader's open(), then fail.
            with contextlib.suppress(OSError):
                os.close(os.open(self.started, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail("the probe never ran git")
        return got[0]

    def release(self) -> None:
        self.release_file.touch()


@pytest.fixture
def slow_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowGit]:
    fake = SlowGit(tmp_path / "slowgit")
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ.get('PATH', '')}")
    yield fake
    fake.release()  # whatever happened, let a stray fake end


def ended(pid: int) -> bool:
    """Whether ``pid`` has exited (within HANG seconds)."""
    try:
        psutil.Process(pid).wait(HANG)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


@needs_git
@pytest.mark.anyio
async def test_cancel_abandons_a_slow_git_and_kills_it(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_git: SlowGit
) -> None:
    make_changes(repo)
    monkeypatch.chdir(repo)
    info = run_info(tmp_path / "run")
    send, receive = anyio.create_memory_object_stream[list[ev.Item]](100)
    pid = 0
    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:

            async def probe_task() -> None:
                async with send:
                    await run_probe(
                        send, run=info, git=True, requirements=True, metadata=True, diff_limit=1000
                    )

            tg.start_soon(probe_task)
            pid = await anyio.to_thread.run_sync(slow_git.wait_started)
            tg.cancel_scope.cancel()  # the run finishes while git is blocked
    # The task group ended with git still blocked: nothing waited for it.
    assert not slow_git.release_file.exists()
    # ... and the blocked git was killed rather than left to run out its timeout.
    assert await anyio.to_thread.run_sync(ended, pid)
    items: list[ev.Item] = []
    async with receive:
        async for batch in receive:
            items.extend(batch)
    got = Probed(items)
    # What was ready before git started is there; git's part is not.
    assert "cwd" in got.metadata
    assert "requirements.txt" in got.files
    assert "git" not in got.metadata
    assert not (info.dir / "diff.patch").exists()


# -- whole runs ------------------------------------------------------------------------

SETTINGS = {"quiet": True, "system": False, "console": "off"}


@pytest.fixture
def probe_done(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a run's probe has returned (the probe itself never delays the run)."""
    done = threading.Event()
    original: Callable[..., Any] = probe.run_probe

    async def watched(*args: Any, **kwargs: Any) -> None:
        try:
            await original(*args, **kwargs)
        finally:
            done.set()

    monkeypatch.setattr(probe, "run_probe", watched)
    return done


@needs_git
def test_whole_run_records_git_requirements_and_metadata(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe_done: threading.Event
) -> None:
    make_changes(repo)
    monkeypatch.chdir(repo)
    run = pipeline.init(project="p", dir=tmp_path / "runs", settings=SETTINGS)
    run.log({"loss": 0.5})
    assert probe_done.wait(HANG), "the probe never finished"
    run.finish()

    data = pipeline.read_run(run.dir)
    meta = data.metadata
    assert meta["git"]["commit"] == git(repo, "rev-parse", "HEAD").decode().strip()
    assert meta["git"]["branch"] == "main"
    assert meta["git"]["dirty"] is True
    assert meta["git"]["remote"] == "https://example.com/org/repo.git"
    assert "diff.patch" in data.files
    assert "requirements.txt" in data.files
    assert (run.dir / "diff.patch").read_bytes() == git(repo, "diff", "HEAD")
    assert meta["cwd"] == str(repo)
    assert meta["python_executable"] == sys.executable
    assert meta["memory_total"] > 0
    # Identity from init() is untouched by the probe.
    assert meta["id"] == run.id
    assert meta["state"] == "finished"
    assert SECRET not in (run.dir / "metadata.json").read_text()
    assert SECRET not in (run.dir / "events.log").read_bytes().decode("utf-8", "replace")
    reqs = (run.dir / "requirements.txt").read_text().splitlines()
    assert any(line.lower().startswith("runbus==") for line in reqs)


@needs_git
def test_init_and_finish_do_not_wait_for_a_slow_git(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_git: SlowGit
) -> None:
    monkeypatch.chdir(repo)
    run = pipeline.init(project="p", dir=tmp_path / "runs", settings=SETTINGS)
    pid = slow_git.wait_started()  # the probe is inside git, and blocked there
    run.log({"loss": 0.5})
    run.finish()
    # finish() returned while git was still blocked on the release file.
    assert not slow_git.release_file.exists()
    assert ended(pid)  # and the blocked git did not outlive the run

    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert data.history[0]["loss"] == 0.5
    assert "git" not in data.metadata
    # What was done before git started was recorded.
    assert "cwd" in data.metadata
    assert "requirements.txt" in data.files
    assert "diff.patch" not in data.files
