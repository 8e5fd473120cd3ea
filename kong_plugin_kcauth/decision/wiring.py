"""The process-wide objects every plugin instance shares, keyed by what they depend on.

Kong starts one plugin instance per nginx worker per plugin entity, and new ones on every config
reload, so anything expensive (key sets, the Redis client, revocation stores, compiled guards)
lives here, never on an instance. Objects are held weakly (cache.Registry): when Kong closes the
last instance using one, it goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..config import Config, RedisConfig
from ..idp.feed import Feed
from ..idp.keys import KeySet, KeySource
from ..revocation.shared import SharedStore
from ..revocation.store import RealmRevocations, RevocationStore
from .cache import Registry

_KEYSETS: Registry[KeySet] = Registry()
_SHARED: Registry[SharedStore] = Registry()
_REVOCATIONS: Registry[RevocationStore] = Registry()
_BY_CONFIG: Registry[Any] = Registry()
_FEEDS: Registry[Feed] = Registry()


def key_set(config: Config) -> KeySet:
    source = KeySource.from_config(config)
    keys = _KEYSETS.get(source, lambda: KeySet(source))
    keys.prefetch()
    return keys


def key_sets() -> Iterator[KeySet]:
    """Every live key set of the process (metrics read their age)."""
    return iter(list(_KEYSETS.values()))


def shared_store(redis: RedisConfig, ca: str | None) -> SharedStore | None:
    """The process's one Redis client for these settings, or None without Redis (or without a
    usable password or secret: config.Config.problems logs it)."""
    if not redis.host or redis.unusable:
        return None
    return _SHARED.get((redis, ca), lambda: SharedStore(redis, ca))


def revocation_store(config: Config) -> RevocationStore | RealmRevocations:
    """The issuer's revocations: its own store, or for a template realm its view of the
    template's store (one Redis subscription for every realm)."""
    issuer = config.issuer_template or config.the_issuer
    store = _REVOCATIONS.get((issuer, config.redis, config.tls_ca_bundle),
                             lambda: RevocationStore(issuer, shared_store(config.redis, config.tls_ca_bundle)))
    store.start()
    return RealmRevocations(store, config.the_issuer) if config.issuer_template else store


def revocation_feed(config: Config) -> Feed | None:
    """The realm's revocation feed when the config asks for one (reading as long as an instance
    holds it), feeding the issuer's revocation store."""
    if not config.revocation_feed.client_id or config.revocation_feed.unusable:
        return None
    store = revocation_store(config)
    assert isinstance(store, RevocationStore)  # only the plugin-level issuer is fed, never a template realm
    key = (config.the_issuer, config.revocation_feed, config.provider_url, config.redis, config.tls_ca_bundle,
           config.revocation_ttl, config.http_timeout)
    feed = _FEEDS.get(key, lambda: Feed(config, store, shared_store(config.redis, config.tls_ca_bundle)))
    feed.start()
    return feed


def for_config(config: Config, build: Any) -> Any:
    """The object `build(config)` makes, once per distinct config (a Guard or a Receiver)."""
    return _BY_CONFIG.get((build, config.fingerprint()), lambda: build(config))
