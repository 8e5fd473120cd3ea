"""Logging an operator sees, and that an attacker or a flapping dependency cannot flood.

Kong logs everything the plugin server prints at `info` (kong/runloop/plugin_servers/process.lua
grab_logs), which Kong's default `log_level = notice` hides. So what matters also goes to Kong's
own log through the PDK (`kong.log.warn` / `kong.log.err`), carried by the next request that
passes through the plugin (handler.py `tell_kong`): one extra round trip, once per change.

- `health.report(component, ok, message)`: a dependency's state (key set, Redis, introspection,
  the revocation feed), logged once per change of state, never per request.
- `Throttled`: conditions that can repeat on every request (a forged Redis entry, an answer about
  another token, a fallback in use): once, then at most once per interval per message.
- `once(message)`: a configuration fact worth one line (a claim header dropped as too long).
Log lines carry no token, secret or claim, only fixed text and exception types.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

log = logging.getLogger("kcauth")

_KONG_QUEUE_LIMIT = 50


class _ToKong:
    """Lines waiting for the next request to carry them to Kong's log (bounded)."""

    def __init__(self) -> None:
        self._lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=_KONG_QUEUE_LIMIT)

    def put(self, level: int, message: str) -> None:
        self._lines.append((level, message))

    def take(self) -> tuple[int, list[str]] | None:
        """Everything pending: the highest level and the lines, or None."""
        if not self._lines:
            return None
        lines = []
        level = logging.WARNING
        while self._lines:
            line_level, line = self._lines.popleft()
            level = max(level, line_level)
            lines.append(line)
        return level, lines


to_kong = _ToKong()


def _emit(level: int, message: str) -> None:
    log.log(level, message)
    to_kong.put(level, "kcauth: " + message)


class Health:
    """The last known state of each dependency; a line on every change, none otherwise."""

    def __init__(self) -> None:
        self._down: dict[str, str] = {}
        self._lock = threading.Lock()

    def report(self, component: str, ok: bool, message: str = "") -> None:
        if ok == (component not in self._down):
            return  # no change: the fast path, without the lock
        with self._lock:
            was_down = component in self._down
            if ok and was_down:
                del self._down[component]
            elif not ok and not was_down:
                self._down[component] = message
            else:
                return
        if ok:
            _emit(logging.WARNING, f"{component}: recovered")
        else:
            _emit(logging.ERROR, f"{component}: {message}")

    def down(self) -> dict[str, str]:
        return dict(self._down)


health = Health()

_said: set[str] = set()


def once(message: str) -> None:
    """A line said once per process."""
    if message not in _said:
        _said.add(message)
        _emit(logging.WARNING, message)


class Throttled:
    def __init__(self, logger: logging.Logger, seconds: float) -> None:
        self._logger = logger
        self._seconds = seconds
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def warning(self, message: str, *args: object) -> None:
        self.log(logging.WARNING, message, *args)

    def log(self, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(message)
            if last is not None and now - last < self._seconds:
                return
            self._last[message] = now
        text = message % args if args else message
        self._logger.log(level, text)
        to_kong.put(level, "kcauth: " + text)
