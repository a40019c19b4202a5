"""The metric name policy: which names are valid and what happens to the rest."""

from __future__ import annotations

import re
import sys
import threading
import warnings

from pipeline.settings import NamePolicy

_SEGMENT = r"[_a-zA-Z][_a-zA-Z0-9]*"
#: Segments like Python identifiers, ``/`` between them as a section separator.
NAME_RE = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT})*$")


class NameWarning(UserWarning):
    """A metric name outside the naming rule was logged (policy ``warn``)."""


def is_valid(name: str) -> bool:
    """Whether ``name`` follows the naming rule."""
    return NAME_RE.match(name) is not None


class NameChecker:
    """Checks each metric name once per run and applies the policy.

    Thread-safe: many threads may log to one run. Valid names and names
    already warned about are cached, so the hot path is one set lookup.
    """

    def __init__(self, policy: NamePolicy) -> None:
        self.policy = policy
        self.seen: set[str] = set()
        self.bad: list[str] = []
        self._lock = threading.Lock()

    def check(self, name: str) -> None:
        """Apply the policy to a name not in :attr:`seen`; raises under ``strict``."""
        if name.startswith("_"):
            hint = " (pass step=... to log at a step)" if name == "_step" else ""
            raise ValueError(
                f"metric name {name!r}: names starting with '_' are reserved for runbus; "
                f"rename the key{hint}"
            )
        if self.policy == "off" or NAME_RE.match(name):
            self.seen.add(name)
            return
        if self.policy == "strict":
            raise ValueError(
                f"metric name {name!r} is not valid: use letters, digits and '_' "
                f"(not starting with a digit), with '/' between sections, e.g. 'train/loss'; "
                f"or init(settings={{'name_policy': 'warn'}}) to accept it with a warning"
            )
        with self._lock:
            if name in self.seen:
                return
            self.seen.add(name)
            self.bad.append(name)
        warnings.warn(
            f"runbus: metric name {name!r} does not follow the naming rule "
            f"(letters, digits, '_', '/' between sections); it is logged as is, "
            f"but charts and filters may not find it. This warning shows once per name.",
            NameWarning,
            stacklevel=_caller_level(),
        )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside runbus (nested dicts and
    ``pipeline.log`` add frames), so the warning points at the user's line."""
    frame = sys._getframe(2)  # the caller of NameChecker.check: stacklevel 2
    level = 2
    while frame.f_back is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "pipeline" and not module.startswith("pipeline."):
            break
        frame = frame.f_back
        level += 1
    return level
