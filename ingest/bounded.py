"""Items waiting in arrival order, bounded by count and by bytes: the one rule both the
source's frame queue and the worker's window queue hold to.

An item fits when fewer than `max_items` wait and its bytes fit under `max_bytes` (None:
no byte bound); an empty buffer takes any one item, so an item larger than `max_bytes`
still moves (one at a time). What happens when an item does not fit (wait, drop the
oldest) is the owner's policy; the owner holds `cond` around every call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class BoundedItems(Generic[K, T]):
    """Keyed items, oldest first, with their total bytes, under one condition variable."""

    def __init__(self, max_items: int, max_bytes: int | None, size: Callable[[T], int]) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.cond = threading.Condition()
        self._size = size
        self._items: OrderedDict[K, T] = OrderedDict()
        self._bytes = 0

    def fits(self, item: T) -> bool:
        """Whether `item` may join now (call with `cond` held)."""
        if not self._items:
            return True
        if len(self._items) >= self.max_items:
            return False
        return self.max_bytes is None or self._bytes + self._size(item) <= self.max_bytes

    def add(self, key: K, item: T) -> None:
        """Append `item` under `key` (a new key: it goes last)."""
        self._items[key] = item
        self._bytes += self._size(item)

    def remove(self, key: K) -> T:
        """Take the item under `key` out."""
        item = self._items.pop(key)
        self._bytes -= self._size(item)
        return item

    def remove_oldest(self) -> T:
        """Take the oldest item out (the buffer must not be empty)."""
        return self.remove(next(iter(self._items)))

    def clear(self) -> int:
        """Drop everything; returns how many items there were."""
        n = len(self._items)
        self._items.clear()
        self._bytes = 0
        return n

    def __iter__(self) -> Iterator[K]:
        """The keys, oldest first (a snapshot is the caller's to take)."""
        return iter(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        """Items waiting now (takes `cond` itself, for readers on other threads)."""
        with self.cond:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the items waiting now (takes `cond` itself)."""
        with self.cond:
            return self._bytes
