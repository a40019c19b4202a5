"""A training loop for test_crash.py to kill with SIGKILL (run as a script, not collected).

Usage: ``python crash_child.py MODE ROOT EVERY COMPRESS FLUSH_INTERVAL``

MODE ``flush``: log step i as ``{"i": i, "x": float(i)}``; after every EVERY steps
call ``run.flush()`` and then report the step just made durable.
MODE ``burst``: log as fast as possible, never flush explicitly.

Reports go, one per line, to a duplicate of the original stdout taken before
runbus starts, so console capture can neither delay nor swallow them:
``ready <run dir>`` once ``init()`` has returned, then one flushed step per line.
A line is written only after the flush it reports has returned, so the parent
may rely on every reported step being on disk. The loop never finishes the run:
it ends only by being killed (past LIMIT steps it just waits to be killed, so a
slow parent never sees a finished run).
"""

from __future__ import annotations

import os
import sys
import threading

LIMIT = 200_000


def main() -> None:
    mode, root, every, compress, interval = sys.argv[1:6]
    report = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)

    import pipeline  # after the dup: importing may not touch stdout, but init may

    run = pipeline.init(
        project="crash",
        dir=root,
        settings={
            "quiet": True,
            "compress": compress == "1",
            "flush_interval": float(interval),
        },
    )
    report.write(f"ready {run.dir}\n")
    k = int(every)
    for i in range(LIMIT):
        run.log({"i": i, "x": float(i)})
        if mode == "flush" and (i + 1) % k == 0:
            run.flush()
            report.write(f"{i}\n")
    threading.Event().wait()


if __name__ == "__main__":
    main()
