"""Revocations Keycloak pushed: ended sessions, logged-out subjects, not-before times.

One store per issuer (and Redis settings) in the process, consulted by every guard of that issuer
on every request, cached tokens included: a few dictionary lookups, no call to anything. The
realms of an `issuer_template` share one store, each through its own `RealmRevocations`.

With Redis (or, without it, the node's shared state: every worker of one plugin server, node.py),
every plugin server process and Kong node learns a revocation at once: the receiver
writes it as a sealed key with a TTL (the durable record, read in full when a process starts or
reconnects) and publishes it on a channel every process subscribes to (the push, so nobody
polls). Pub/sub was chosen over polling because a revocation must apply within a second while
costing nothing on the request path; a message lost during a disconnection is recovered by the
full read on reconnect. On every (re)connect, and every `RESTORE_INTERVAL` after, a process also
writes back every record it holds that Redis lacks, so a Redis that restarts empty (or loses
keys) gets the revocations back from the processes that survived it. Without Redis the store is
per process.

Identifiers are stored as digests (keyed with the Redis secret when shared): sessions and
subjects are personal data.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..ops.logs import health
from ..tokens.claims import Claims, time_of
from .shared import SharedStore, SharedUnavailable, Subscription

log = logging.getLogger("kcauth.revocation")

MAX_ENTRIES = 200_000  # per kind; a flood of logouts cannot grow memory without bound
RESTORE_INTERVAL = 30.0  # seconds between two write-backs of held revocations to Redis


class Kind(enum.Enum):
    SESSION = "sid"  # every token of the session, whenever issued
    SUBJECT = "sub"  # the user's tokens issued up to the logout
    NOT_BEFORE = "nbf"  # a client's tokens (key: client id, "" for all) issued before `at`
    # Every session of the user (key: sub), or of the realm (key: ""), ended at `at`: tokens issued
    # up to then, the sign-out's own second included, except those of a session that started
    # at or after it (SESSION_START), which cannot have been ended by it.
    SIGNED_OUT = "out"
    SESSION_START = "new"  # a session (key: sid) that started at `at`, as Keycloak recorded it


@dataclass(frozen=True)
class Entry:
    at: float  # the logout's or not-before's time
    until: float  # forget after (the tokens it concerns have expired by then)


@dataclass(frozen=True)
class Subject:
    """What the store needs of an accepted token, computed once when it is accepted: the
    digests of every `sid` and `sub` it was seen with (the token's own claims, and the
    introspection answer's), its client and its issue time."""

    sids: tuple[str, ...]
    subs: tuple[str, ...]
    azp: str | None
    iat: float | None
    clients: tuple[str, ...] = ("",)  # the not-before keys that concern it: all clients, its azp

    @property
    def realm(self) -> str:
        """The key of revocations of the whole realm (all clients, every user)."""
        return self.clients[0]


class RevocationStore:
    def __init__(self, issuer: str, shared: SharedStore | None, clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self.shared = shared
        self._clock = clock
        self._entries: dict[Kind, dict[str, Entry]] = {kind: {} for kind in Kind}
        self._jtis: dict[str, float] = {}
        self._lock = threading.Lock()
        self._scope = "revocation:" + hashlib.sha256(issuer.encode()).hexdigest()[:32]
        self._follower: threading.Thread | None = None
        self._unsaved = threading.Event()  # a record Redis could not take: write back at the next second
        self._starting = threading.Lock()
        self._component = f"revocations of {issuer}"

    def start(self) -> None:
        """Follow the other processes' revocations through Redis (once per store). The first
        catch-up is done before returning (at instance start, bounded by Redis' timeout), so a
        process that just started never accepts a token revoked before it started."""
        with self._starting:
            if self.shared is None or self._follower is not None:
                return
            self._follower = threading.Thread(target=self._follow, args=(self._connect(),), daemon=True,
                                              name="kcauth-revocations")
            self._follower.start()

    def _connect(self) -> Subscription | None:
        """Subscribe, then read every record (so nothing published in between is missed)."""
        assert self.shared is not None
        subscription = None
        try:
            subscription = self.shared.subscribe(self._channel)
            for message in self.shared.records(self._scope):
                self._on_message(message)
            health.report(self._component, True)
            return subscription
        except SharedUnavailable as exc:
            health.report(self._component, False, f"cannot follow revocations through the shared store ("
                          f"{type(exc.__cause__).__name__ if exc.__cause__ else 'unavailable'}): this process "
                          "keeps what it holds and retries")
            if subscription is not None:
                subscription.close()
            return None

    def digest(self, value: object, namespace: str = "") -> str | None:
        if not isinstance(value, str) or not value:
            return None
        if self.shared is not None:
            return self.shared.pseudonym(namespace + value)
        return hashlib.sha256((namespace + value).encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def subject(self, *claim_sets: Claims, namespace: str = "") -> Subject:
        """The Subject of a token accepted on `claim_sets` (the token's, then the answer's)."""
        def each(name: str) -> tuple[str, ...]:
            found = (self.digest(claims.get(name), namespace) for claims in claim_sets)
            return tuple(dict.fromkeys(d for d in found if d is not None))

        first = claim_sets[0]
        azp = first.get("azp")
        iat = next((t for t in (time_of(c.get("iat")) for c in claim_sets) if t is not None), None)
        azp = azp if isinstance(azp, str) else None
        return Subject(each("sid"), each("sub"), azp, iat, (namespace, namespace + (azp or "")))

    # -- the request path --

    def revoked(self, subject: Subject, not_before: float | None) -> bool:
        now = self._clock()
        entries = self._entries
        for sid in subject.sids:
            entry = entries[Kind.SESSION].get(sid)
            if entry is not None and entry.until > now:
                return True
        iat = subject.iat
        for sub in subject.subs:
            entry = entries[Kind.SUBJECT].get(sub)
            if entry is not None and entry.until > now and (iat is None or iat <= entry.at):
                return True
        signed_out = entries[Kind.SIGNED_OUT]
        if signed_out and self._signed_out(subject, now):
            return True
        limit = not_before or 0.0
        for client in subject.clients:
            entry = entries[Kind.NOT_BEFORE].get(client)
            if entry is not None and entry.until > now:
                limit = max(limit, entry.at)
        if iat is None:
            return limit > 0
        return iat < limit

    def _signed_out(self, subject: Subject, now: float) -> bool:
        """Whether a sign-out of the token's user or realm ended its session: issued up to the
        sign-out (token times are whole seconds, so its own second counts) by a session that
        did not start at or after it."""
        started: float | None = None
        for sid in subject.sids:
            entry = self._entries[Kind.SESSION_START].get(sid)
            if entry is not None and entry.until > now:
                started = entry.at if started is None else max(started, entry.at)
        for key in (*subject.subs, subject.realm):
            entry = self._entries[Kind.SIGNED_OUT].get(key)
            if entry is None or entry.until <= now:
                continue
            if (subject.iat is None or subject.iat <= entry.at) and (started is None or started < entry.at):
                return True
        return False

    # -- the receiver --

    def first_sighting(self, jti: str, ttl: float, namespace: str = "") -> bool:
        """Record a logout token id; False if it was seen before (a replay)."""
        key = self.digest(jti, namespace) or ""
        now = self._clock()
        with self._lock:
            if self._jtis.get(key, 0) > now:
                return False
            if len(self._jtis) >= MAX_ENTRIES:
                self._prune(self._jtis, now)
            self._jtis[key] = now + ttl
        if self.shared is not None and self.shared.set_if_absent(f"{self._scope}:jti:{key}", ttl) is False:
            return False
        return True

    def record(self, kind: Kind, ident: str, at: float, ttl: float, namespace: str = "") -> None:
        """Record a revocation here and, with Redis, for every process (raises SharedUnavailable
        when Redis cannot take it; it is applied here anyway). `ident` is a raw sid or sub, or a
        client id ("" for all) for NOT_BEFORE."""
        self.record_until(kind, ident, at, self._clock() + ttl, namespace)

    def record_until(self, kind: Kind, ident: str, at: float, until: float, namespace: str = "") -> None:
        """`record`, remembered until the time `until` (the feed: a time fixed by the event, so
        an event read twice makes the same record). A SIGNED_OUT of "" is the whole realm's."""
        realm_wide = kind is Kind.NOT_BEFORE or (kind is Kind.SIGNED_OUT and not ident)
        key = namespace + ident if realm_wide else (self.digest(ident, namespace) or "")
        entry = Entry(at, until)
        self._apply(kind, key, entry)
        if self.shared is not None:
            try:
                self.shared.publish_record(self._scope, self._channel, _message(kind, key, entry),
                                           until - self._clock())
            except SharedUnavailable:
                self._unsaved.set()  # the follower writes it back once Redis takes writes again
                raise

    # -- internals --

    @property
    def _channel(self) -> str:
        return f"{self._scope}:events"

    def _apply(self, kind: Kind, key: str, entry: Entry) -> None:
        with self._lock:
            entries = self._entries[kind]
            old = entries.get(key)
            if old is not None:
                entry = Entry(max(entry.at, old.at), max(entry.until, old.until))
            elif len(entries) >= MAX_ENTRIES:
                self._prune(entries, self._clock())
            entries[key] = entry

    @staticmethod
    def _prune(entries: dict[str, Entry] | dict[str, float], now: float) -> None:
        for key in [k for k, v in entries.items() if (v.until if isinstance(v, Entry) else v) <= now]:
            del entries[key]
        while len(entries) >= MAX_ENTRIES:  # still full of live entries: drop the oldest
            del entries[next(iter(entries))]

    def _on_message(self, message: dict[str, object] | None) -> None:
        if message is None:
            return
        try:
            kind = Kind(message.get("kind"))
        except ValueError:
            return
        key, at, until = message.get("key"), time_of(message.get("at")), time_of(message.get("until"))
        if isinstance(key, str) and at is not None and until is not None:
            self._apply(kind, key, Entry(at, until))

    # -- following other processes through Redis --

    def _follow(self, subscription: Subscription | None) -> None:
        backoff = 0.5
        while True:
            if subscription is None:
                time.sleep(backoff)
                # At most a second: after a failover every process must find the new primary
                # within a second of its promotion; a refused connect costs nothing.
                backoff = min(backoff * 2, 1.0)
                subscription = self._connect()
                continue
            backoff = 0.5
            try:
                while True:
                    self._restore()
                    until = time.monotonic() + RESTORE_INTERVAL
                    while time.monotonic() < until and not self._unsaved.is_set():
                        self._on_message(subscription.next(timeout=1.0))
                    self._unsaved.clear()
            except SharedUnavailable as exc:
                health.report(self._component, False, f"revocations from Redis interrupted ("
                              f"{type(exc.__cause__).__name__ if exc.__cause__ else 'unavailable'}); retrying")
                subscription.close()
                subscription = None

    def _restore(self) -> None:
        """Write back what Redis lost (it restarted empty, or someone deleted records)."""
        assert self.shared is not None
        now = self._clock()
        with self._lock:
            held = [(_message(kind, key, entry), entry.until - now) for kind in Kind
                    for key, entry in self._entries[kind].items() if entry.until > now]
        restored = self.shared.restore(self._scope, self._channel, held)
        if restored:
            log.warning("wrote %d revocations back to Redis, which had lost them", restored)


class RealmRevocations:
    """One template realm's revocations inside the template's store (one store, one Redis
    channel for every realm): each identifier is scoped by the realm's issuer, so a push of one
    realm never revokes another realm's tokens, whatever ids its administrators choose."""

    def __init__(self, store: RevocationStore, issuer: str) -> None:
        self.store = store
        self._namespace = issuer + "\n"

    def subject(self, *claim_sets: Claims) -> Subject:
        return self.store.subject(*claim_sets, namespace=self._namespace)

    def revoked(self, subject: Subject, not_before: float | None) -> bool:
        return self.store.revoked(subject, not_before)

    def first_sighting(self, jti: str, ttl: float) -> bool:
        return self.store.first_sighting(jti, ttl, self._namespace)

    def record(self, kind: Kind, ident: str, at: float, ttl: float) -> None:
        self.store.record(kind, ident, at, ttl, self._namespace)


def _message(kind: Kind, key: str, entry: Entry) -> dict[str, object]:
    return {"kind": kind.value, "key": key, "at": entry.at, "until": entry.until}
