"""Bounded series: keep at most ``limit`` evenly spaced points of an unbounded stream."""

from __future__ import annotations

from typing import Any


class Downsampled:
    """Keeps every ``stride``-th item; when full, drops every other kept item and doubles the stride.

    Memory stays below ``limit`` items whatever the stream length, and the
    kept items stay evenly spaced over the whole stream.
    """

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self.items: list[Any] = []
        self.stride = 1
        self.seen = 0

    def add(self, item: Any) -> None:
        if self.seen % self.stride == 0:
            self.items.append(item)
            if len(self.items) >= self.limit:
                self.items = self.items[::2]
                self.stride *= 2
        self.seen += 1

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)
