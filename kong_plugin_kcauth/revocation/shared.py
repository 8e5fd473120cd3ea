"""What kcauth shares between Kong nodes and plugin server processes: Redis, when configured.

Redis is a trust boundary. Keys are derived from `redis.secret`, which only the gateways hold:
- introspection verdicts are sealed with AES-256-GCM, the entry's full key name as associated
  data, so a Redis writer cannot forge one, move a genuine one to another token's key, or read a
  claim; a verdict that fails to open is ignored (logged once a minute) and Keycloak is asked;
- revocations are records held in key names with a MAC (`publish_record`), so one cannot be
  forged, altered or hidden by overwriting; pub/sub messages are sealed like verdicts.
What a Redis writer can still do: delete entries (extra introspection calls; deleted revocations
are written back by every process holding them, within `revocation.RESTORE_INTERVAL`; a deleted
feed position makes the feed read again from `revocation_ttl` back, which records nothing new),
and replay a genuine verdict under its own key, never past the deadline sealed inside it. A
lease (the feed's reader) carries a MAC and its expiry: one a writer forged, or replayed past its
time, is ignored, and every process then reads alone.

For the request path Redis is an optimisation, never a dependency: a failure (Redis down, slow,
refusing the password) is logged, Redis is skipped for a few seconds, and the caller carries on
with its in-process state and the identity provider. Key names are digests, never tokens.

With traces on (ops/tracing.py), each call of a `SharedStore` method to Redis is a span named by
its command (`_traced`); off, the methods are left as they are. The node's hub is not traced.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import inspect
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import redis
import redis.lock
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from ..config import RedisConfig
from ..ops import tracing
from ..ops.logs import Throttled, health
from ..tokens.claims import json_object
from ..tokens.jwk import b64url

log = logging.getLogger("kcauth.redis")

SKIP_SECONDS = 5.0  # after a failure, how long Redis is left alone
HEALTH_CHECK_SECONDS = 2
# What a failed Redis call raises: redis-py's errors, the socket's, and its cluster client's own.
FAILURES = (redis.RedisError, OSError, RedisClusterException)
_NONCE = 12


class SharedUnavailable(Exception):
    """Redis could not take (or give) what the caller must not lose silently (a revocation)."""


def _ca_file(ca: str | None) -> str | None:
    """The CA file for `tls_ca_bundle`: the same trust as for the identity provider (None: the
    system store)."""
    if ca is None:
        import certifi

        return str(certifi.where())
    return None if ca == "system" else ca


class TLSConnection(redis.SSLConnection):
    """TLS as `redis` says: `tls_ca_bundle`'s trust, the certificate verified unless `ssl_verify`
    is off, and `server_name` sent (SNI) and verified instead of the address connected to.
    redis-py has no SNI setting; this is its hook for the handshake. The settings ride on a
    subclass (`bound`): Redis Cluster hands its nodes' connections only redis-py's own arguments."""

    server_name: str | None = None
    verify = True
    ca_file: str | None = None

    @classmethod
    def bound(cls, config: RedisConfig, ca: str | None) -> type[TLSConnection]:
        return type(cls.__name__, (cls,), {"server_name": config.server_name, "verify": config.ssl_verify,
                                           "ca_file": _ca_file(ca)})

    def _wrap_socket_with_ssl(self, sock: Any) -> Any:
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context.wrap_socket(sock, server_hostname=self.server_name or self.host)


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The Sentinel's pool for the primary, with the blocking pool's bound (redis-py has no such
    class: its Sentinel pool raises at once when full)."""


def _waiting(pool: type[redis.ConnectionPool], seconds: float) -> type[redis.ConnectionPool]:
    """`pool` (a blocking one) waiting at most `seconds` for a free connection. The cluster and
    Sentinel clients build their pools from a class and connection arguments only, and the
    cluster hands the same arguments to redis.Redis, which takes no `timeout`."""
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        pool.__init__(self, *args, timeout=seconds, **kwargs)
    return type(pool.__name__, (pool,), {"__init__": __init__, "__module__": __name__})


def connect(config: RedisConfig, ca: str | None, *, bounded: bool = True) -> redis.Redis | RedisCluster:
    """The client for `config`: a standalone Redis, the primary its Sentinels name (each new
    connection asks them, so a failover is followed), or a Redis Cluster (its slot table is
    read again when a node fails or redirects). One attempt per call, never redis-py's retries
    with backoff, which turn a dead Redis into seconds of stall per request.

    `bounded`: at most `keepalive_pool_size` connections (per node), and a call that finds them
    all busy waits for one at most `timeout`, like Kong's pool with a backlog. Subscriptions are
    made on an unbounded client of their own: each holds its connection for as long as it lives,
    and must not take a place in the pool that requests use."""
    tls = TLSConnection.bound(config, ca) if config.uses_tls else None
    options: dict[str, Any] = {
        "socket_timeout": config.timeout, "socket_connect_timeout": config.timeout, "retry": Retry(NoBackoff(), 0),
        "username": config.username, "password": config.password}
    # The pool's bound; a call waits for a connection at most `timeout` when every one is busy.
    pool: dict[str, Any] = {"max_connections": config.keepalive_pool_size} if bounded else {}
    # A connection idle this long is PINGed before use, and the revocation subscription every
    # this often: a Redis gone without a reset (half-open) fails within the timeout, not never.
    checked: dict[str, Any] = {"health_check_interval": HEALTH_CHECK_SECONDS}
    if config.cluster_nodes:
        extra: dict[str, Any] = {"connection_class": tls} if tls else {}
        nodes = [ClusterNode(node.ip, node.port) for node in config.cluster_nodes]  # type: ignore[no-untyped-call]
        # With a `url` (the first node's, plain: TLS comes from `connection_class`) redis-py builds
        # every node's pool from `connection_pool_class`; without one, a pool that raises when full.
        first = config.cluster_nodes[0]
        cluster = RedisCluster(url=f"redis://{first.ip}:{first.port}", startup_nodes=nodes,
                               require_full_coverage=False, **options, **extra, **pool,
                               connection_pool_class=_waiting(redis.BlockingConnectionPool, config.timeout)
                               if bounded else redis.ConnectionPool)
        cluster.RedisClusterRequestTTL = config.cluster_max_redirections
        return cluster
    if config.sentinel_master:
        sentinel = Sentinel([], db=config.database, **options, **checked, **pool,  # type: ignore[no-untyped-call]
                            connection_class=type("SentinelTLSConnection", (SentinelManagedConnection, tls), {})
                            if tls else SentinelManagedConnection)
        sentinel.sentinels = [redis.Redis(connection_pool=redis.ConnectionPool(
            host=node.host, port=node.port, **{**options, "username": config.sentinel_username,
                                               "password": config.sentinel_password},
            connection_class=tls or redis.Connection)) for node in config.sentinel_nodes or ()]
        primary_pool = _waiting(_BlockingSentinelPool, config.timeout) if bounded else SentinelConnectionPool
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            config.sentinel_master, connection_pool_class=primary_pool)
        return client
    standalone = _waiting(redis.BlockingConnectionPool, config.timeout) if bounded else redis.ConnectionPool
    return redis.Redis(connection_pool=standalone(
        host=config.host or "", port=config.port, db=config.database, **options, **checked, **pool,
        connection_class=tls or redis.Connection))


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"kcauth " + purpose).derive(secret.encode())


P = ParamSpec("P")
R = TypeVar("R")
Method = Callable[Concatenate["SharedStore", P], R]


def _traced(operation: str, *, skips: bool = False) -> Callable[[Method[P, R]], Method[P, R]]:
    """A span (`operation`: the Redis command, by OpenTelemetry's conventions) around each call
    of a SharedStore method to Redis, over a generator's whole iteration; with traces off, the
    method itself, so that nothing is added to a call. `skips`: the method asks nothing of Redis
    while it is left alone after a failure (no span then)."""
    if not tracing.ON:
        return lambda method: method

    def wrap(method: Method[P, R]) -> Method[P, R]:
        def traced(store: SharedStore, *args: P.args, **kwargs: P.kwargs) -> R:
            if store.local or (skips and store._skipping()):  # the node's hub; or no call at all
                return method(store, *args, **kwargs)
            host, port = _server(store.config)
            with tracing.redis_call(method.__name__, operation, host, port):
                return method(store, *args, **kwargs)

        def traced_iteration(store: SharedStore, *args: P.args, **kwargs: P.kwargs) -> Iterator[Any]:
            if store.local:
                yield from cast(Iterator[Any], method(store, *args, **kwargs))
                return
            host, port = _server(store.config)
            with tracing.redis_call(method.__name__, operation, host, port):
                yield from cast(Iterator[Any], method(store, *args, **kwargs))

        generator = inspect.isgeneratorfunction(method)
        return functools.wraps(method)(cast(Method[P, R], traced_iteration) if generator else traced)

    return wrap


def _server(config: RedisConfig) -> tuple[str | None, int | None]:
    """The server a standalone Redis is at; none for Sentinel and Cluster (each call picks it)."""
    if config.sentinel_master or config.cluster_nodes:
        return None, None
    return config.host, config.port


class SharedStore:
    """Redis for the cluster, or `client`: the node's hub (node.py), shared by the workers of one
    plugin server when no Redis is configured, through this same code."""

    def __init__(self, config: RedisConfig, ca: str | None = None, client: Any = None) -> None:
        self.config = config
        secret = config.secret or ""
        self._aead = AESGCM(_derive(secret, b"redis seal v1"))
        self._pseudonym_key = _derive(secret, b"redis pseudonym v1")
        self._record_key = _derive(secret, b"redis record v1")
        self._ca = ca
        # The requests' client, and the subscriptions' (connect's `bounded`); the node's hub serves both.
        self._clients: dict[bool, Any] = {True: client, False: client}
        self._skip_until = 0.0
        self._lock = threading.Lock()
        self._forged = Throttled(log, 60)
        self.local = client is not None  # the node's: it starts empty with the plugin server
        self._component = "the node's shared state" if self.local else f"redis {config.address}"

    def _client(self, bounded: bool = True) -> Any:
        """The client, made on first use: a Redis Cluster client reads the slot table as it is
        made, and raises while no node answers (a call that fails like any other)."""
        if self._clients[bounded] is None:
            with self._lock:
                if self._clients[bounded] is None:
                    try:
                        self._clients[bounded] = connect(self.config, self._ca, bounded=bounded)
                    except RedisClusterException as exc:
                        raise redis.ConnectionError("no cluster node answered") from exc
        return self._clients[bounded]

    # -- sealing --

    def pseudonym(self, value: str) -> str:
        """A keyed digest of a personal identifier (sid, sub), the same on every gateway."""
        return hmac.new(self._pseudonym_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]

    def _seal(self, name: str, value: dict[str, Any]) -> bytes:
        nonce = os.urandom(_NONCE)
        data = json.dumps(value, separators=(",", ":")).encode()
        return nonce + self._aead.encrypt(nonce, data, name.encode())

    def _open(self, name: str, raw: Any) -> dict[str, Any] | None:
        if not isinstance(raw, bytes) or len(raw) <= _NONCE:
            self._forged.warning("ignoring a Redis entry that kcauth did not write")
            return None
        try:
            data = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], name.encode())
        except InvalidTag:
            self._forged.warning("ignoring a Redis entry that fails authentication (written without "
                                 "redis.secret, or forged)")
            return None
        return json_object(data)

    # -- the request path: best effort --

    @_traced("GET", skips=True)
    def get(self, key: str) -> dict[str, Any] | None:
        if self._skipping():
            return None
        name = self.config.prefix + key
        try:
            raw = self._client().get(name)
        except FAILURES as exc:
            self._failed("read", exc)
            return None
        self._ok()
        return None if raw is None else self._open(name, raw)

    @_traced("SET", skips=True)
    def put(self, key: str, value: dict[str, Any], ttl: float) -> None:
        millis = int(ttl * 1000)
        if millis <= 0 or self._skipping():
            return
        name = self.config.prefix + key
        try:
            self._client().set(name, self._seal(name, value), px=millis)
        except FAILURES as exc:
            self._failed("write", exc)

    @_traced("SET")
    def set_if_absent(self, key: str, ttl: float) -> bool | None:
        """SET NX: True if this call created the key, False if it existed, None if Redis failed."""
        try:
            return bool(self._client().set(self.config.prefix + key, b"1", nx=True, px=max(1, int(ttl * 1000))))
        except FAILURES as exc:
            self._failed("write", exc)
            return None

    # -- records that must not be lost: failures raise SharedUnavailable --
    #
    # A record (a revocation) lives in its key's name: the message and a MAC over it, with an
    # empty value. Overwriting the value changes nothing, and a forged or altered name fails its
    # MAC; what a Redis writer can still do is delete names, which the processes holding the
    # records write back (`restore`).

    @_traced("PUBLISH")
    def publish_record(self, scope: str, channel: str, message: dict[str, Any], ttl: float) -> None:
        """Store `message` for `ttl` and publish it on `channel` (atomically, but in a cluster)."""
        chan = self.config.prefix + channel
        name, millis, sealed = self._record_name(scope, message), max(1, int(ttl * 1000)), self._seal(chan, message)
        try:
            if isinstance(self._client(), RedisCluster):
                # No transaction spans a key and a channel in a cluster: publish first, so a
                # record that failed to store is still known to every process now (and
                # written back by this one, `restore`), never stored yet unannounced.
                self._client().publish(chan, sealed)
                self._client().set(name, b"", px=millis)
            else:
                pipe = self._client().pipeline(transaction=True)
                pipe.set(name, b"", px=millis)
                pipe.publish(chan, sealed)
                pipe.execute()
        except FAILURES as exc:
            self._failed("write", exc)
            self._refresh_cluster()
            raise SharedUnavailable() from None

    @_traced("SET")
    def restore(self, scope: str, channel: str, records: list[tuple[dict[str, Any], float]]) -> int:
        """Write back records (message, ttl) that Redis lost, leaving those it holds, and publish
        each one written back (a process that reconnected before this one, after a failover or
        an empty restart, learns it now); how many were missing."""
        live = [(message, self._record_name(scope, message), ttl) for message, ttl in records if ttl > 0.001]
        chan = self.config.prefix + channel
        try:
            pipe = self._client().pipeline(transaction=False)
            for _, name, ttl in live:
                pipe.set(name, b"", px=int(ttl * 1000), nx=True)
            missing = [message for (message, _, _), created in zip(live, pipe.execute(), strict=True) if created]
            if missing:
                self._publish_all(chan, [self._seal(chan, message) for message in missing])
            return len(missing)
        except FAILURES as exc:
            self._refresh_cluster()
            raise SharedUnavailable() from exc

    def _publish_all(self, channel: str, sealed: list[bytes]) -> None:
        client = self._client()
        if isinstance(client, RedisCluster):  # a cluster pipeline refuses PUBLISH
            for message in sealed:
                client.publish(channel, message)
            return
        pipe = client.pipeline(transaction=False)
        for message in sealed:
            pipe.publish(channel, message)
        pipe.execute()

    @_traced("SCAN")
    def records(self, scope: str) -> Iterator[dict[str, Any]]:
        """Every record of `scope` that Redis holds and that passes its MAC."""
        start = len(self.config.prefix) + len(scope) + len(":rec:")
        try:
            for name in self._client().scan_iter(match=f"{self.config.prefix}{scope}:rec:*", count=500):
                text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
                body, _, tag = text[start:].partition(".")
                message = self._record_message(scope, body, tag)
                if message is not None:
                    yield message
        except FAILURES as exc:
            self._refresh_cluster()
            raise SharedUnavailable() from exc

    def _record_name(self, scope: str, message: dict[str, Any]) -> str:
        body = b64url(json.dumps(message, sort_keys=True, separators=(",", ":")).encode())
        return f"{self.config.prefix}{scope}:rec:{body}.{self._tag(scope, body)}"

    def _record_message(self, scope: str, body: str, tag: str) -> dict[str, Any] | None:
        if not hmac.compare_digest(tag, self._tag(scope, body)):
            self._forged.warning("ignoring a Redis record whose name fails authentication")
            return None
        try:
            return json_object(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None

    def _tag(self, scope: str, body: str) -> str:
        return b64url(hmac.new(self._record_key, f"{scope}:{body}".encode(), hashlib.sha256).digest()[:16])

    # -- leases: one holder at a time across every process --

    @_traced("SET")
    def lease(self, key: str, seconds: float) -> Lease | None:
        """Take `key` for `seconds` unless another process holds it: the Lease, or None when
        held. It is not given back: it lapses, so the next taker comes `seconds` after this one.
        Raises SharedUnavailable when Redis fails, or when the holder is not a gateway (the
        value is `<expiry ms>.<nonce>.<MAC>`: a lease forged or replayed by a Redis writer to
        stop the work is ignored, and the caller works alone)."""
        name = self.config.prefix + key
        until = int((time.time() + seconds) * 1000)
        nonce = b64url(os.urandom(9))
        token = f"{until}.{nonce}.{self._tag(name, f'{until}.{nonce}')}"
        lock = self._client().lock(name, timeout=seconds, blocking=False, thread_local=False)
        try:
            if lock.acquire(token=token):
                return Lease(lock, seconds)
            held = self._client().get(name)
        except FAILURES as exc:
            self._failed("lease", exc)
            self._refresh_cluster()
            raise SharedUnavailable() from None
        if held is None or self._genuine_lease(name, held, seconds):
            return None  # another process holds it (or it lapsed just now)
        self._forged.warning("ignoring a lease in Redis that no gateway took: this process does the work alone")
        raise SharedUnavailable()

    def _genuine_lease(self, name: str, held: Any, seconds: float) -> bool:
        text = held.decode("ascii", "replace") if isinstance(held, bytes) else str(held)
        until, _, rest = text.partition(".")
        nonce, _, tag = rest.partition(".")
        if not until.isdigit() or not hmac.compare_digest(tag, self._tag(name, f"{until}.{nonce}")):
            return False
        # A genuine lease not past its expiry (renewed ones run a little longer: a few reads).
        return int(until) >= (time.time() - 4 * seconds) * 1000

    def subscribe(self, channel: str) -> Subscription:
        return Subscription(self, self.config.prefix + channel)

    # -- failures --

    def _refresh_cluster(self) -> None:
        """After a failed call off the request path, in a cluster: read the slot table again and
        leave a failed default node. redis-py does both only when it retries a call, and kcauth
        never retries (a subscription would otherwise go on to the dead node it hashed to)."""
        for client in self._clients.values():
            if isinstance(client, RedisCluster):
                try:
                    client.nodes_manager.initialize()
                    client.replace_default_node()
                except FAILURES:
                    pass

    def _skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def _failed(self, what: str, exc: BaseException) -> None:
        tracing.failed(exc)  # the call's span, when traced: the caller carries on without raising
        with self._lock:
            if self._skipping():
                return
            self._skip_until = time.monotonic() + SKIP_SECONDS
        # The exception type only: redis-py messages can carry connection details.
        health.report(self._component, False, f"{what} failed ({type(exc).__name__}); using the in-process "
                      f"state, trying again every {SKIP_SECONDS:.0f} s")

    def _ok(self) -> None:
        health.report(self._component, True)


class Lease:
    """A held key (redis-py's Lock), renewed while its work runs longer than planned."""

    def __init__(self, lock: redis.lock.Lock, seconds: float) -> None:
        self._lock, self._seconds = lock, seconds

    def renew(self) -> bool:
        """Hold it `seconds` more; False when it lapsed and another took it (or Redis failed)."""
        try:
            return bool(self._lock.extend(self._seconds, replace_ttl=True))
        except FAILURES:
            return False


class Subscription:
    """One channel's opened messages; any failure raises SharedUnavailable (reconnect, catch up)."""

    def __init__(self, store: SharedStore, channel: str) -> None:
        self._store = store
        self._channel = channel
        try:
            self._pubsub = store._client(bounded=False).pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(channel)
        except FAILURES as exc:
            store._refresh_cluster()
            raise SharedUnavailable() from exc

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None when none came within `timeout` seconds."""
        try:
            message = self._pubsub.get_message(timeout=timeout)
        except FAILURES as exc:
            self._store._refresh_cluster()
            raise SharedUnavailable() from exc
        if not message or message.get("type") != "message":
            return None
        return self._store._open(self._channel, message.get("data"))

    def close(self) -> None:
        try:
            self._pubsub.close()
        except FAILURES:
            pass
