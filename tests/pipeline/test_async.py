"""Runs started inside a running asyncio loop: the pipeline lives on that loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import pytest

import pipeline

pytestmark = pytest.mark.anyio

#: Generous: only turns a deadlock into a failure.
HANG = 60


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def user_rows(data: pipeline.RunData) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in ("_timestamp", "_runtime")} for r in data.history
    ]


async def test_init_inside_a_running_loop(runs_dir: Path) -> None:
    run = pipeline.init(project="a", dir=runs_dir, config={"lr": 0.1})
    assert pipeline.current_run() is run
    for i in range(10):
        run.log({"i": i})
    run.log({"open": True}, commit=False)
    with anyio.fail_after(HANG):
        assert await run.aflush() is True
    data = pipeline.read_run(run.dir)
    assert data.state == "running"
    assert user_rows(data) == [
        *({"_step": i, "i": i} for i in range(10)),
        {"_step": 10, "open": True},
    ]
    assert data.config == {"lr": 0.1}
    with anyio.fail_after(HANG):
        await run.afinish()
    assert run.finished
    assert pipeline.current_run() is None
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert data.summary == {"i": 9, "open": True}


async def test_async_with_finishes_on_exit(runs_dir: Path) -> None:
    with anyio.fail_after(HANG):
        async with pipeline.init(dir=runs_dir) as run:
            run.log({"x": 1})
            run.define_metric("x", summary="max")
            run.log({"x": 3})
            run.log({"x": 2})
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert data.metadata["exit_code"] == 0
    assert data.summary == {"x": {"max": 3}}


async def test_exception_in_async_with_fails_the_run_and_propagates(runs_dir: Path) -> None:
    started: list[pipeline.Run] = []

    async def train() -> None:
        async with pipeline.init(dir=runs_dir) as run:
            started.append(run)
            run.log({"x": 1})
            raise LookupError("inside")

    with anyio.fail_after(HANG), pytest.raises(LookupError, match="inside"):
        await train()
    data = pipeline.read_run(started[0].dir)
    assert data.state == "failed"
    assert data.metadata["exit_code"] == 1
    assert data.history[0]["x"] == 1


# A blocking call would block the loop itself, where fail_after cannot fire; the
# per-test timeout turns such a deadlock into a failure.
@pytest.mark.timeout(HANG)
async def test_sync_finish_and_flush_inside_the_loop_raise(runs_dir: Path) -> None:
    run = pipeline.init(dir=runs_dir)
    run.log({"x": 1})
    with anyio.fail_after(HANG):
        await run.aflush()
        with pytest.raises(RuntimeError, match=r"await run\.aflush\(\)"):
            run.flush()
        with pytest.raises(RuntimeError, match=r"await run\.afinish\(\)"):
            run.finish()
        with pytest.raises(RuntimeError, match=r"afinish"):
            pipeline.finish()
        # The refused calls changed nothing: the run is live and finishes normally.
        assert not run.finished
        run.log({"x": 2})
        await run.afinish()
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert [r["x"] for r in data.history] == [1, 2]


@pytest.mark.timeout(HANG)
async def test_sync_with_block_inside_the_loop_raises_instead_of_hanging(runs_dir: Path) -> None:
    run = pipeline.init(dir=runs_dir)
    with pytest.raises(RuntimeError, match="afinish"), run:
        run.log({"x": 1})
    assert not run.finished
    with anyio.fail_after(HANG):
        await run.afinish()
    assert pipeline.read_run(run.dir).state == "finished"


async def test_afinish_twice_and_aflush_after_finish(runs_dir: Path) -> None:
    run = pipeline.init(dir=runs_dir)
    run.log({"x": 1})
    with anyio.fail_after(HANG):
        await run.afinish()
        await run.afinish()
        assert await run.aflush() is True
    with pytest.raises(pipeline.RunFinishedError):
        run.log({"x": 2})
    assert len(pipeline.read_run(run.dir).history) == 1


async def test_afinish_exit_code(runs_dir: Path) -> None:
    run = pipeline.init(dir=runs_dir)
    with anyio.fail_after(HANG):
        await run.afinish(exit_code=4)
    data = pipeline.read_run(run.dir)
    assert data.state == "failed"
    assert data.metadata["exit_code"] == 4


async def test_summary_after_aflush(runs_dir: Path) -> None:
    run = pipeline.init(dir=runs_dir)
    run.define_metric("loss", summary="min")
    for v in (3.0, 1.0, 2.0):
        run.log({"loss": v})
    with anyio.fail_after(HANG):
        await run.aflush()
    assert run.summary["loss"] == {"min": 1.0}
    run.summary["loss"] = 0.0
    with anyio.fail_after(HANG):
        await run.aflush()
    assert pipeline.read_run(run.dir).summary["loss"] == 0.0
    with anyio.fail_after(HANG):
        await run.afinish()
    assert pipeline.read_run(run.dir).summary["loss"] == 0.0


async def test_several_runs_as_concurrent_tasks(runs_dir: Path) -> None:
    async def train(k: int) -> pipeline.Run:
        async with pipeline.init(project="many", dir=runs_dir, config={"k": k}) as run:
            for i in range(300):
                run.log({"i": i, "k": k})
                if i % 50 == 0:
                    await run.aflush()
                else:
                    await asyncio.sleep(0)
        return run

    with anyio.fail_after(HANG):
        runs = await asyncio.gather(*(train(k) for k in range(4)))
    assert len({r.dir for r in runs}) == 4
    for k, run in enumerate(runs):
        data = pipeline.read_run(run.dir)
        assert data.state == "finished"
        assert data.config == {"k": k}
        assert [r["i"] for r in data.history] == list(range(300))
        assert {r["k"] for r in data.history} == {k}


async def test_log_from_a_worker_thread_into_an_async_run(runs_dir: Path) -> None:
    run = pipeline.init(dir=runs_dir)

    def work() -> None:
        for i in range(500):
            run.log({"i": i})

    with anyio.fail_after(HANG):
        await anyio.to_thread.run_sync(work)
        await run.aflush()
        await run.afinish()
    assert [r["i"] for r in pipeline.read_run(run.dir).history] == list(range(500))


def test_aflush_and_afinish_from_another_loop(runs_dir: Path) -> None:
    # A run started in plain code has its own pipeline thread; async code may await it.
    run = pipeline.init(dir=runs_dir)
    run.log({"x": 1})

    async def main() -> None:
        with anyio.fail_after(HANG):
            assert await run.aflush() is True
            assert len(pipeline.read_run(run.dir).history) == 1
            await run.afinish()

    asyncio.run(main())
    assert pipeline.read_run(run.dir).state == "finished"
