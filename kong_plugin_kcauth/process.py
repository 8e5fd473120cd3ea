"""The process-wide objects every plugin instance shares, keyed by what they depend on.

Kong starts one plugin instance per nginx worker per plugin entity, and new ones on every config
reload, so anything expensive (key sets, the Redis client, revocation stores, compiled guards)
lives here, never on an instance. Objects are held weakly (cache.Registry): when Kong closes the
last instance using one, it goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .cache import Registry
from .config import Config, RedisConfig
from .keys import KeySet, KeySource
from .revocation import RevocationStore
from .shared import SharedStore

_KEYSETS: Registry[KeySet] = Registry()
_SHARED: Registry[SharedStore] = Registry()
_REVOCATIONS: Registry[RevocationStore] = Registry()
_BY_CONFIG: Registry[Any] = Registry()


def key_set(config: Config) -> KeySet:
    source = KeySource.from_config(config)
    keys = _KEYSETS.get(source, lambda: KeySet(source))
    keys.prefetch()
    return keys


def key_sets() -> Iterator[KeySet]:
    """Every live key set of the process (metrics read their age)."""
    return iter(list(_KEYSETS.values()))


def shared_store(redis: RedisConfig, ca: str | None) -> SharedStore | None:
    """The process's one Redis client for these settings, or None without Redis."""
    return _SHARED.get((redis, ca), lambda: SharedStore(redis, ca)) if redis.host else None


def revocation_store(config: Config) -> RevocationStore:
    store = _REVOCATIONS.get((config.issuer, config.redis, config.tls_ca_bundle),
                             lambda: RevocationStore(config.issuer, shared_store(config.redis, config.tls_ca_bundle)))
    store.start()
    return store


def for_config(config: Config, build: Any) -> Any:
    """The object `build(config)` makes, once per distinct config (a Guard or a Receiver)."""
    return _BY_CONFIG.get((build, config.fingerprint()), lambda: build(config))
