"""Logging that an attacker or a flapping dependency cannot turn into a flood.

Conditions that can repeat on every request (a forged Redis entry, an introspection answer
about another token, a fallback in use) are logged through `Throttled`: once, then at most once
per interval for the same message. Log lines carry no token, secret or claim, only fixed text
and exception types.
"""

from __future__ import annotations

import logging
import threading
import time


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
        self._logger.log(level, message, *args)
