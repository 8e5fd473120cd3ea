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
from ..idp.ssf import Signals
from ..revocation.node import NodeClient, node_store
from ..revocation.shared import SharedStore
from ..revocation.store import RealmRevocations, RevocationStore
from .cache import Registry

NODE_TIMEOUT = 1.0  # seconds, a call to the node's hub (local: milliseconds; a busy hub is skipped)

_KEYSETS: Registry[KeySet] = Registry()
_SHARED: Registry[SharedStore] = Registry()
_REVOCATIONS: Registry[RevocationStore] = Registry()
_BY_CONFIG: Registry[Any] = Registry()
_FEEDS: Registry[Feed] = Registry()
_SIGNALS: Registry[Signals] = Registry()


def key_set(config: Config) -> KeySet:
    source = KeySource.from_config(config)
    keys = _KEYSETS.get(source, lambda: KeySet(source))
    keys.prefetch()
    return keys


def key_sets() -> Iterator[KeySet]:
    """Every live key set of the process (metrics read their age)."""
    return iter(list(_KEYSETS.values()))


def shared_store(redis: RedisConfig, ca: str | None) -> SharedStore | None:
    """The process's one Redis client for these settings; without Redis (or without a usable
    password or secret: config.Config.problems logs it), the node's shared state when this process
    is one of a plugin server's workers (revocation/node.py), else None."""
    if redis.enabled:
        return _SHARED.get((redis, ca), lambda: SharedStore(redis, ca))
    node = node_store()
    if node is None:
        return None
    address, secret = node
    return _SHARED.get(("node", address), lambda: SharedStore(
        RedisConfig(secret=secret, timeout=NODE_TIMEOUT), client=NodeClient(address, NODE_TIMEOUT)))


def shared_secret(redis: RedisConfig) -> str | None:
    """The secret every process sharing `shared_store(redis)` holds (DPoP nonces are keyed by it)."""
    if redis.enabled:
        return redis.secret
    node = node_store()
    return node[1] if node is not None else None


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


def signals(config: Config) -> Signals | None:
    """The realm's Shared Signals receiver when the config asks for one (polling as long as an
    instance holds it), feeding the issuer's revocation store."""
    if not config.ssf.client_id or config.ssf.unusable:
        return None
    store = revocation_store(config)
    assert isinstance(store, RevocationStore)  # only the plugin-level issuer, never a template realm
    key = (config.the_issuer, config.ssf, config.provider_url, config.redis, config.tls_ca_bundle,
           config.revocation_ttl, config.http_timeout, config.leeway, tuple(config.algorithms))
    receiver = _SIGNALS.get(key, lambda: Signals(config, store, shared_store(config.redis, config.tls_ca_bundle),
                                                 key_set(config)))
    receiver.start()
    return receiver


def for_config(config: Config, build: Any) -> Any:
    """The object `build(config)` makes, once per distinct config (a Guard or a Receiver)."""
    return _BY_CONFIG.get((build, config.fingerprint()), lambda: build(config))
