"""The cache shared by Kong nodes and plugin server processes: Redis, when configured.

It is an optimisation, never a dependency: every failure (Redis down, slow, refusing the
password) is logged, Redis is skipped for a few seconds, and the caller carries on with its
in-process cache and the identity provider. Keys are digests, never tokens.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .schema import RedisConfig

log = logging.getLogger("kcauth.redis")

SKIP_SECONDS = 5.0  # after a failure, how long Redis is left alone


class SharedUnavailable(Exception):
    """Redis could not take a write that must not be lost (a revocation)."""


class SharedStore:
    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self._client = redis.Redis(
            host=config.host or "", port=config.port, db=config.database,
            username=config.username, password=config.password, ssl=config.tls,
            socket_timeout=config.timeout, socket_connect_timeout=config.timeout,
            # redis-py retries with backoff by default, which turns a dead Redis into seconds
            # of stall per request; one attempt, then the in-process cache.
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
        )
        self._skip_until = 0.0
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        if self._skipping():
            return None
        try:
            raw = self._client.get(self.config.prefix + key)
        except (redis.RedisError, OSError) as exc:
            self._failed("read", exc)
            return None
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any], ttl: float) -> None:
        millis = int(ttl * 1000)
        if millis <= 0 or self._skipping():
            return
        try:
            self._client.set(self.config.prefix + key, json.dumps(value, separators=(",", ":")), px=millis)
        except (redis.RedisError, OSError) as exc:
            self._failed("write", exc)

    @property
    def client(self) -> redis.Redis:
        return self._client

    def set_if_absent(self, key: str, ttl: float) -> bool | None:
        """SET NX: True if this call created the key, False if it existed, None if Redis failed."""
        try:
            return bool(self._client.set(self.config.prefix + key, "1", nx=True, px=max(1, int(ttl * 1000))))
        except (redis.RedisError, OSError) as exc:
            self._failed("write", exc)
            return None

    def publish_record(self, key: str, channel: str, message: dict[str, Any], ttl: float) -> None:
        """Store `message` under `key` for `ttl` and publish it on `channel`, atomically; raises
        SharedUnavailable, because the caller must report the failure (no skipping here)."""
        data = json.dumps(message, separators=(",", ":"))
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self.config.prefix + key, data, px=max(1, int(ttl * 1000)))
            pipe.publish(self.config.prefix + channel, data)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed("write", exc)
            raise SharedUnavailable() from None

    def _skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def _failed(self, what: str, exc: BaseException) -> None:
        with self._lock:
            if self._skipping():
                return
            self._skip_until = time.monotonic() + SKIP_SECONDS
        # The exception type only: redis-py messages can carry connection details.
        log.warning("redis %s failed (%s); using the in-process cache for %.0f s",
                    what, type(exc).__name__, SKIP_SECONDS)
