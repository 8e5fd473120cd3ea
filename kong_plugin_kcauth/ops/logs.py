"""Logging an operator sees, and that an attacker or a flapping dependency cannot flood.

Kong logs everything the plugin server prints at `info` (kong/runloop/plugin_servers/process.lua
grab_logs), which Kong's default `log_level = notice` hides. So what matters also goes to Kong's
own log through the PDK (`kong.log.warn` / `kong.log.err`), carried by the next request that
passes through the plugin (handler.py `tell_kong`): one extra round trip, once per change.

- `health.report(component, ok, message, owners)`: a dependency's state (key set, Redis,
  introspection, the revocation feed), logged once per change of state, never per request. A
  state that depends on one config (its introspection credentials) is kept per config and names
  the plugins that have it (`Owners`), whose own requests carry its lines to Kong's log.
- `Throttled`: conditions that can repeat on every request (a forged Redis entry, an answer about
  another token, a fallback in use): once, then at most once per interval per message.
- `once(message)`: a configuration fact worth one line (a claim header dropped as too long);
  `config_error(owners, message)`: a setting that cannot be used, at Kong's `error` level.
Log lines carry no token, secret or claim, only fixed text and exception types.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from typing import Any

log = logging.getLogger("kcauth")

_KONG_QUEUE_LIMIT = 50


class Owners:
    """The plugin entities (and the routes or services they are on) that use one shared object,
    a guard or a receiver: named in the lines about its config, whose requests carry them."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, raw: dict[str, Any]) -> bool:
        """An instance of Kong's plugin entity `raw` (the StartInstance config) uses it; True
        the first time for that entity."""
        plugin, route, service = raw.get("__plugin_id"), raw.get("route_id"), raw.get("service_id")
        where = f" on route {route}" if route else f" on service {service}" if service else " (global)"
        with self._lock:
            new = str(plugin) not in self._names
            self._names[str(plugin)] = f"plugin {plugin}{where}"
        return new

    def __str__(self) -> str:
        with self._lock:
            names = sorted(self._names.values())
        if not names:
            return "no plugin yet"
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


class _ToKong:
    """Lines waiting for a request to carry them to Kong's log (bounded). A line about one
    config (`owners`) waits for a request of that config, so Kong logs it beside its own route."""

    def __init__(self) -> None:
        self._lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=_KONG_QUEUE_LIMIT)
        self._scoped: weakref.WeakKeyDictionary[Owners, collections.deque[tuple[int, str]]] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def put(self, level: int, message: str, owners: Owners | None = None) -> None:
        if owners is None:
            self._lines.append((level, message))
            return
        with self._lock:
            self._scoped.setdefault(owners, collections.deque(maxlen=_KONG_QUEUE_LIMIT)).append((level, message))

    def take(self, owners: Owners | None = None) -> tuple[int, list[str]] | None:
        """What a request of `owners` carries: everyone's lines and its config's; the highest
        level and the lines, or None (the request path's case: two lookups, no lock)."""
        scoped = self._scoped.get(owners) if owners is not None and self._scoped else None
        if not self._lines and not scoped:
            return None
        taken: list[tuple[int, str]] = []
        for queue in (self._lines, scoped):
            while queue:
                try:
                    taken.append(queue.popleft())
                except IndexError:  # taken by a concurrent request
                    break
        if not taken:
            return None
        return max(logging.WARNING, *(level for level, _ in taken)), [line for _, line in taken]


to_kong = _ToKong()


def _emit(level: int, message: str, owners: Owners | None = None) -> None:
    log.log(level, message)
    to_kong.put(level, "kcauth: " + message, owners)


class Health:
    """The last known state of each dependency; a line on every change, none otherwise. With
    `owners`, the state is that config's alone (another config of the same issuer has its own)."""

    def __init__(self) -> None:
        self._down: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def report(self, component: str, ok: bool, message: str = "", owners: Owners | None = None,
               *, instance: object = None) -> None:
        """`owners`: the config whose state this is (named, and its requests carry the line);
        `instance`: one of several objects under the same name (each has its own state)."""
        key = (component, id(owners if owners is not None else instance))
        if ok == (key not in self._down):
            return  # no change: the fast path, without the lock
        with self._lock:
            was_down = key in self._down
            if ok and was_down:
                del self._down[key]
            elif not ok and not was_down:
                self._down[key] = message
            else:
                return
        name = f"{component} ({owners})" if owners is not None else component
        if ok:
            _emit(logging.WARNING, f"{name}: recovered", owners)
        else:
            _emit(logging.ERROR, f"{name}: {message}", owners)

    def down(self) -> list[str]:
        """The components whose last state was a failure, each once."""
        return sorted({component for component, _ in self._down})


health = Health()

_said: set[str] = set()


def once(message: str) -> None:
    """A line said once per process."""
    if message not in _said:
        _said.add(message)
        _emit(logging.WARNING, message)


def config_error(owners: Owners, message: str) -> None:
    """A setting of `owners`' config that cannot be used (logged at instance start), at
    Kong's `error` level, as Kong's own plugins log a configuration they cannot run."""
    _emit(logging.ERROR, f"{message} ({owners})", owners)


class Throttled:
    def __init__(self, logger: logging.Logger, seconds: float) -> None:
        self._logger = logger
        self._seconds = seconds
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, message: str) -> bool:
        """Whether `message` may be said now (and it counts as said)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(message)
            if last is not None and now - last < self._seconds:
                return False
            self._last[message] = now
        return True

    def warning(self, message: str, *args: object) -> None:
        self.log(logging.WARNING, message, *args)

    def log(self, level: int, message: str, *args: object) -> None:
        if not self.due(message):
            return
        text = message % args if args else message
        self._logger.log(level, text)
        to_kong.put(level, "kcauth: " + text)
