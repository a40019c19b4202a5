"""Many runs, many threads: nothing lost, nothing mixed up."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import pipeline

NewRun = Callable[..., pipeline.Run]

STEPS = 2000
THREADS = 4


def run_threads(target: Callable[[int], None], n: int = THREADS) -> None:
    """Run ``target(k)`` on ``n`` threads released together; re-raise the first error."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(k: int) -> None:
        try:
            barrier.wait(timeout=60)
            target(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a logging thread hung"
    if errors:
        raise errors[0]


def log_many(run: pipeline.Run, key: str, n: int) -> None:
    for i in range(n):
        run.log({key: i})


def test_threads_with_a_run_each(runs_dir: Path) -> None:
    runs: dict[int, pipeline.Run] = {}

    def train(k: int) -> None:
        run = pipeline.init(project="threads", dir=runs_dir, config={"k": k})
        runs[k] = run
        run.define_metric("loss", summary="min")
        for i in range(STEPS):
            run.log({"i": i, "k": k, "loss": float(STEPS - i)})
            if i == STEPS // 2:
                run.log({"half": k}, commit=False)
        run.finish()

    run_threads(train)
    assert len({r.dir for r in runs.values()}) == THREADS
    assert len({r.id for r in runs.values()}) == THREADS
    for k, run in runs.items():
        data = pipeline.read_run(run.dir)
        assert data.state == "finished"
        assert data.config == {"k": k}
        assert [r["_step"] for r in data.history] == list(range(STEPS))
        assert [r["i"] for r in data.history] == list(range(STEPS))
        assert {r["k"] for r in data.history} == {k}
        assert [r["_step"] for r in data.history if "half" in r] == [STEPS // 2 + 1]
        assert data.summary["loss"] == {"min": 1.0}
        assert data.summary["half"] == k


def test_threads_sharing_one_run_lose_nothing(new_run: NewRun) -> None:
    run = new_run()

    def work(k: int) -> None:
        for i in range(STEPS):
            run.log({f"t{k}": i, "who": k})

    run_threads(work)
    run.finish()
    data = pipeline.read_run(run.dir)
    assert len(data.history) == THREADS * STEPS
    assert [r["_step"] for r in data.history] == list(range(THREADS * STEPS))
    assert Counter(r["who"] for r in data.history) == dict.fromkeys(range(THREADS), STEPS)
    for k in range(THREADS):
        # Each thread's own calls keep their order.
        assert [r[f"t{k}"] for r in data.history if f"t{k}" in r] == list(range(STEPS))
        assert data.summary[f"t{k}"] == STEPS - 1
    assert data.metadata["rows"] == THREADS * STEPS


def test_threads_sharing_one_run_with_flushes(new_run: NewRun) -> None:
    run = new_run()

    def work(k: int) -> None:
        for i in range(500):
            run.log({"v": k * 1000 + i})
            if i % 100 == 99:
                assert run.flush() is True

    run_threads(work)
    run.flush()
    live = pipeline.read_run(run.dir)
    assert len(live.history) == THREADS * 500
    run.finish()
    values = sorted(r["v"] for r in pipeline.read_run(run.dir).history)
    assert values == sorted(k * 1000 + i for k in range(THREADS) for i in range(500))


def test_small_backlog_applies_backpressure_without_loss(new_run: NewRun) -> None:
    run = new_run(settings={"max_backlog": 4})

    def work(k: int) -> None:
        for i in range(STEPS // 4):
            run.log({"v": i, "who": k})

    run_threads(work)
    run.finish()
    data = pipeline.read_run(run.dir)
    assert Counter(r["who"] for r in data.history) == dict.fromkeys(range(THREADS), STEPS // 4)


def test_bad_names_warn_once_across_threads(new_run: NewRun) -> None:
    run = new_run()
    with pytest.warns(pipeline.NameWarning) as record:
        run_threads(lambda k: log_many(run, "bad name", 200))
    assert len(record) == 1
    run.finish()
    assert len(pipeline.read_run(run.dir).history) == THREADS * 200


# -- the current run ----------------------------------------------------------------------


def test_module_level_calls_act_on_the_current_run(new_run: NewRun) -> None:
    run = new_run()
    assert pipeline.current_run() is run
    pipeline.define_metric("loss", summary="max")
    pipeline.log({"loss": 1.0})
    pipeline.log({"loss": 3.0}, commit=False)
    pipeline.log({"acc": 0.5}, step=1)
    pipeline.log({"loss": 2.0}, step=4)
    assert pipeline.flush() is True
    assert len(pipeline.read_run(run.dir).history) == 3
    pipeline.finish()
    assert run.finished
    assert pipeline.current_run() is None
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert [(r["_step"], r.get("loss"), r.get("acc")) for r in data.history] == [
        (0, 1.0, None),
        (1, 3.0, 0.5),
        (4, 2.0, None),
    ]
    assert data.summary["loss"] == {"max": 3.0}


def test_current_run_is_the_latest_unfinished(new_run: NewRun) -> None:
    first = new_run()
    second = new_run()
    assert pipeline.current_run() is second
    pipeline.log({"x": 2})
    second.finish()
    assert pipeline.current_run() is first
    pipeline.log({"x": 1})
    pipeline.finish(exit_code=5)
    assert pipeline.current_run() is None
    assert pipeline.read_run(first.dir).history[0]["x"] == 1
    assert pipeline.read_run(first.dir).state == "failed"
    assert pipeline.read_run(second.dir).history[0]["x"] == 2
    assert pipeline.read_run(second.dir).state == "finished"


def test_finishing_a_run_from_another_thread(new_run: NewRun) -> None:
    run = new_run()
    for i in range(100):
        run.log({"i": i})
    worker = threading.Thread(target=run.finish)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert run.finished
    assert [r["i"] for r in pipeline.read_run(run.dir).history] == list(range(100))


def test_concurrent_finish_calls_finish_once(new_run: NewRun) -> None:
    run = new_run()
    run.log({"x": 1})
    run_threads(lambda k: run.finish(exit_code=0))
    data = pipeline.read_run(run.dir)
    assert data.state == "finished"
    assert len(data.history) == 1
