"""Revocations Keycloak pushed: ended sessions, logged-out subjects, not-before times.

One store per issuer (and Redis settings) in the process, consulted by every guard of that issuer
on every request, cached tokens included: a few dictionary lookups, no call to anything.

With Redis, every plugin server process and Kong node learns a revocation at once: the receiver
writes it as a key with a TTL (the durable record, read in full when a process starts or
reconnects) and publishes it on a channel every process subscribes to (the push, so nobody
polls). Pub/sub was chosen over polling because a revocation must apply within a second while
costing nothing on the request path; a message lost during a disconnection is recovered by the
full read on reconnect. Without Redis the store is per process.

Identifiers are stored as SHA-256 digests (sessions and subjects are personal data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from .shared import SharedStore

log = logging.getLogger("kcauth.revocation")

MAX_ENTRIES = 200_000  # per kind; a flood of logouts cannot grow memory without bound


def digest(value: object) -> str | None:
    return hashlib.sha256(value.encode()).hexdigest()[:32] if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Subject:
    """What the store needs of a token, computed once when the token is validated."""

    sid: str | None  # digests
    sub: str | None
    azp: str | None
    iat: float | None


class RevocationStore:
    def __init__(self, issuer: str, shared: SharedStore | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self._clock = clock
        self._sids: dict[str, float] = {}  # digest → forget after
        self._subs: dict[str, tuple[float, float]] = {}  # digest → (logged out at, forget after)
        self._not_before: dict[str, float] = {}  # azp ("" = every client) → not before
        self._jtis: dict[str, float] = {}
        self._lock = threading.Lock()
        self._shared = shared
        self._scope = "revocation:" + (digest(issuer) or "")
        if self._shared is not None:
            threading.Thread(target=self._follow, daemon=True, name="kcauth-revocations").start()

    # -- the request path --

    def revoked(self, subject: Subject, not_before: float | None) -> bool:
        iat = subject.iat
        if subject.sid is not None and self._sids.get(subject.sid, 0.0) > self._clock():
            return True
        if subject.sub is not None and subject.sub in self._subs:
            at, until = self._subs[subject.sub]
            if until > self._clock() and (iat is None or iat <= at):
                return True
        if iat is None:
            return bool(self._not_before or not_before)
        limit = max(not_before or 0.0, self._not_before.get("", 0.0),
                    self._not_before.get(subject.azp or "", 0.0))
        return iat < limit

    # -- the receiver --

    def first_sighting(self, jti: str, ttl: float) -> bool:
        """Record a logout token id; False if it was seen before (a replay)."""
        key = digest(jti) or ""
        now = self._clock()
        with self._lock:
            if self._jtis.get(key, 0) > now:
                return False
            self._prune(self._jtis)
            self._jtis[key] = now + ttl
        if self._shared is not None:
            fresh = self._shared.set_if_absent(f"{self._scope}:jti:{key}", ttl)
            if fresh is False:
                return False
        return True

    def record(self, kind: str, ident: str, at: float, ttl: float) -> None:
        """Record a revocation here and, with Redis, for every process. `kind` is `sid` or `sub`
        (with `ident` a raw identifier), or `nbf` (with `ident` the client id, "" for all)."""
        key = ident if kind == "nbf" else (digest(ident) or "")
        self._apply(kind, key, at, self._clock() + ttl)
        if self._shared is not None:
            message = {"kind": kind, "key": key, "at": at, "until": self._clock() + ttl}
            self._shared.publish_record(f"{self._scope}:{kind}:{key}", f"{self._scope}:events", message, ttl)

    @property
    def shared(self) -> SharedStore | None:
        return self._shared

    def _apply(self, kind: str, key: str, at: float, until: float) -> None:
        with self._lock:
            if kind == "sid":
                self._prune(self._sids)
                self._sids[key] = max(until, self._sids.get(key, 0))
            elif kind == "sub":
                self._prune(self._subs)
                old_at, old_until = self._subs.get(key, (0.0, 0.0))
                self._subs[key] = (max(at, old_at), max(until, old_until))
            elif kind == "nbf":
                self._not_before[key] = max(at, self._not_before.get(key, 0.0))

    def _prune(self, entries: dict[str, object]) -> None:
        if len(entries) < MAX_ENTRIES:
            return
        now = self._clock()
        for key in [k for k, v in entries.items() if (v[1] if isinstance(v, tuple) else v) <= now]:  # type: ignore[index]
            del entries[key]
        while len(entries) >= MAX_ENTRIES:  # still full of live entries: drop the oldest
            del entries[next(iter(entries))]

    # -- following other processes through Redis --

    def _follow(self) -> None:
        assert self._shared is not None
        backoff = 0.5
        while True:
            try:
                pubsub = self._shared.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(f"{self._shared.config.prefix}{self._scope}:events")
                self._catch_up()
                backoff = 0.5
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        self._on_message(message.get("data"))
            except (redis.RedisError, OSError) as exc:
                log.warning("revocation feed from Redis interrupted (%s); retrying", type(exc).__name__)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _catch_up(self) -> None:
        assert self._shared is not None
        client, prefix = self._shared.client, self._shared.config.prefix
        for raw_key in client.scan_iter(match=f"{prefix}{self._scope}:*", count=500):
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            kind = key[len(prefix) + len(self._scope) + 1:].split(":", 1)[0]
            if kind in ("sid", "sub", "nbf"):
                self._on_message(client.get(key))

    def _on_message(self, data: object) -> None:
        try:
            message = json.loads(data) if isinstance(data, (bytes, str)) else None
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind, key, at, until = (message.get(k) for k in ("kind", "key", "at", "until"))
        if kind in ("sid", "sub", "nbf") and isinstance(key, str) and isinstance(at, (int, float)) \
                and isinstance(until, (int, float)):
            self._apply(kind, key, float(at), float(until))
