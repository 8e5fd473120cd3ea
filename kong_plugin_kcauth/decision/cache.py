"""Process-wide caches: a bounded expiring map, token hashing, and the registry that lets every
plugin instance with the same settings share one object.

Kong starts one plugin instance per nginx worker per plugin entity and new ones on every config
reload, so anything expensive lives here, keyed by what it depends on, never on an instance.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, cast

V = TypeVar("V")


def token_key(token: str) -> bytes:
    """Cache key for a token: its SHA-256, so no cache ever holds a usable credential."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class ExpiringCache(Generic[V]):
    """A map whose entries vanish at their own deadline, holding at most `capacity` entries.

    When full, the oldest insertion is evicted (first in, first out): cheaper than LRU on the hit
    path, and a hot token that was evicted is simply validated once more.
    """

    def __init__(self, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        deadline, value = entry
        if self._clock() >= deadline:
            self._entries.pop(key, None)
            return None
        return value

    def put(self, key: Hashable, value: V, deadline: float) -> None:
        if self.capacity <= 0 or deadline <= self._clock():
            return
        with self._lock:
            entries = self._entries
            if key not in entries:
                while len(entries) >= self.capacity:
                    entries.pop(next(iter(entries)), None)
            entries[key] = (deadline, value)

    def __len__(self) -> int:
        return len(self._entries)


class Registry(Generic[V]):
    """Get-or-create of shared objects by key, safe under concurrent instance starts.

    Values are held weakly: when Kong closes the last instance using an object (a config was
    changed or removed), the object and its caches go with it instead of piling up.
    """

    def __init__(self) -> None:
        self._objects: weakref.WeakValueDictionary[Hashable, V] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, key: Hashable, create: Callable[[], V]) -> V:
        obj = self._objects.get(key)
        if obj is None:
            with self._lock:
                obj = self._objects.get(key)
                if obj is None:
                    obj = self._objects[key] = create()
        return obj

    def __len__(self) -> int:
        return len(self._objects)

    def values(self) -> list[V]:
        return list(self._objects.values())


class SingleFlight(Generic[V]):
    """Concurrent calls for the same key share one execution: the first caller runs it, the
    others wait for its result (or its exception). Keeps a burst of requests carrying one
    uncached token from turning into a burst of calls to the identity provider."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[V]] = {}
        self._lock = threading.Lock()

    def do(self, key: Hashable, fn: Callable[[], V], wait: float) -> V:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
        assert call is not None
        if leader:
            try:
                call.result = fn()
            except BaseException as exc:  # handed to every waiter, then re-raised here
                call.error = exc
            finally:
                with self._lock:
                    del self._calls[key]
                call.done.set()
        elif not call.done.wait(wait):
            raise TimeoutError("shared call did not finish in time")
        if call.error is not None:
            # Each waiter raises its own copy: one exception object raised in many threads would
            # share (and keep extending) one traceback.
            raise call.error if leader else copy.copy(call.error)
        return cast(V, call.result)


class _Call(Generic[V]):
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: V | None = None
        self.error: BaseException | None = None
