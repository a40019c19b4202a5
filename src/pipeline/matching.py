"""Matching metric names against exact names and trailing-``*`` globs."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class NameMatcher(Generic[T]):
    """Maps metric names to values; an exact name wins over globs, a longer glob
    prefix over a shorter one. Lookups are cached (the hot path asks per key)."""

    def __init__(self) -> None:
        self._exact: dict[str, T] = {}
        self._globs: list[tuple[str, T]] = []
        self._cache: dict[str, T | None] = {}

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs)

    def set(self, pattern: str, value: T) -> None:
        """Define ``pattern`` (a name, or a prefix ending in ``*``), replacing any earlier one."""
        if pattern.endswith("*"):
            prefix = pattern[:-1]
            self._globs = [g for g in self._globs if g[0] != prefix]
            self._globs.append((prefix, value))
            self._globs.sort(key=lambda g: -len(g[0]))
        else:
            self._exact[pattern] = value
        self._cache.clear()

    def get(self, name: str) -> T | None:
        """The value for ``name``, or None."""
        try:
            return self._cache[name]
        except KeyError:
            pass
        found = self._exact.get(name)
        if found is None:
            for prefix, value in self._globs:
                if name.startswith(prefix):
                    found = value
                    break
        self._cache[name] = found
        return found

    def values(self) -> list[T]:
        """Every defined value."""
        return [*self._exact.values(), *(v for _, v in self._globs)]
