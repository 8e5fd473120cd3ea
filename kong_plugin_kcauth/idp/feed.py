"""The revocation feed (`revocation_feed`): what Keycloak does not push, read from its events.

Keycloak pushes a back-channel logout for some actions only, and never retries one it could not
deliver; but it records every action as a login or admin event (events.py). The feed
reads the realm's two event lists through the admin REST API every `interval` seconds, as a
service account that can only view events (client-credentials token), from where it stopped, and
records each revoking event in the issuer's revocation store: the same store, TTL and Redis
records as the receiver's, so every guard of the issuer, in every process, refuses those tokens
with no Keycloak call on the request path.

One read per interval per cluster: with Redis, the process that takes the realm's lease (a Redis
key lapsing after `interval`) reads, resumes from the position kept in Redis (sealed like every
entry) and publishes what it found; every process tries for the lease every half second (a Redis SET), so
a stopped reader is replaced as soon as its lease lapses. Without Redis (or while it fails),
each process reads on its own and keeps its position in memory. A process with no position
starts `revocation_ttl` back: older events concern only tokens that have expired.

Failures are reported once per change (Kong's log, `kcauth_dependency_down`), and change nothing
the guards know: Keycloak down or the service account refused means no new revocation, never a
refused valid token.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from ..config import Config
from ..ops import metrics
from ..ops.logs import Throttled, health
from ..revocation.shared import Lease, SharedStore, SharedUnavailable
from ..revocation.store import Kind, RevocationStore
from . import http, reader
from .events import (
    ADMIN_EVENTS,
    LOGIN_EVENTS,
    Pending,
    Position,
    Revocation,
    event_time,
    new_sessions_query,
    query,
    revocation_of,
    session_start_of,
)
from .reader import LocalLease, Refused, ServiceAccount

log = logging.getLogger("kcauth.feed")

PAGE = 100  # events per request
MAX_PAGES = 10  # per list and read: a backlog is taken over several reads

# Without Redis, per process: the positions.
_local_positions: dict[tuple[str, str], Position] = {}


class EventsRefused(Refused):
    """The admin API refused the service account's token: its role, or its ended session."""


class Feed(reader.Background):
    what, thread_name = "revocation feed", "kcauth-feed"

    def __init__(self, config: Config, store: RevocationStore, shared: SharedStore | None) -> None:
        super().__init__(shared, config.http_timeout, log)
        feed = config.revocation_feed
        self.issuer = config.the_issuer
        self.store, self.shared = store, shared
        self.interval = float(feed.interval)
        self.role_changes = feed.role_changes
        self._client_id = feed.client_id or ""
        self._account = ServiceAccount(self.issuer, self._client_id, feed.client_secret or "", "revocation_feed",
                                       discovery_url=config.discovery_url, rewrite=config.provider_rewrite,
                                       timeout=config.http_timeout, ca=config.tls_ca_bundle)
        self._admin = config.admin_url
        self._timeout, self._ca = config.http_timeout, config.tls_ca_bundle
        self._ttl = float(config.revocation_ttl)
        realm = hashlib.sha256(self.issuer.encode()).hexdigest()[:32]
        self._realm_key = f"feed:{realm}"
        self._component = f"revocation feed of {self.issuer} (client {self._client_id})"
        self._notes = Throttled(log, 300)

    # -- one try: take the lease, read both lists --

    def step(self) -> None:
        lease = self._take_lease()
        if lease is None:
            if self.shared is not None and self.shared.get(self._position_key(ADMIN_EVENTS)) is not None:
                self.first_read.set()  # another process read both lists (it holds the lease)
            return
        started = time.monotonic()
        outcome = "ok"
        try:
            for kind in (LOGIN_EVENTS, ADMIN_EVENTS):
                self._read(kind, lease)
            health.report(self._component, True, instance=self)
        except http.FetchError as exc:
            outcome = type(exc).__name__
            health.report(self._component, False, _failure(exc) + ": no new revocations until it "
                          "recovers; what the guards know stays", instance=self)
        metrics.METRICS.feed_read(self.issuer, outcome, time.monotonic() - started)
        self.first_read.set()  # read, or failed to: what a start waits for is over

    def _take_lease(self) -> Lease | LocalLease | None:
        """The realm's lease for this read, or None when another holds it."""
        return reader.take_lease(self.shared, self._realm_key + ":lease", self.interval)

    def _read(self, kind: str, lease: Lease | LocalLease) -> None:
        read_ms = int(time.time() * 1000)  # the position never passes it (events.Position)
        position = self._position(kind)
        since, first = position.read_from, 0  # one query, paged: its start stays put
        for _ in range(MAX_PAGES):
            if not lease.renew():
                return  # the read took longer than the lease, and another process took over
            page = self._page(kind, since, first)
            taken, signed_out = [], []
            try:
                for event in page:
                    if isinstance(event, dict) and position.is_new(event):
                        revocation = self._apply(kind, event)
                        taken.append(event)
                        if revocation is not None and revocation.kind is Kind.SIGNED_OUT:
                            signed_out.append(Pending(revocation.ident, event_time(event) or 0))
            finally:
                position = position.advance(taken, read_ms).watching([*position.pending, *signed_out], read_ms)
                self._save(kind, position)
            if len(page) < PAGE:
                break
            first += PAGE
        else:
            self._notes.warning("the revocation feed of %s is behind: more than %d events since its last read",
                                self.issuer, PAGE * MAX_PAGES)
        if position.pending:
            self._save(kind, self._new_sessions(position, read_ms))

    def _new_sessions(self, position: Position, read_ms: int) -> Position:
        """Record the sessions that started in the second of each pending sign-out, at or after
        it (their tokens are not the sign-out's), as their LOGIN events tell; sign-outs whose
        second has settled are then dropped."""
        for pending in position.pending:
            for event in self._get(f"{self._admin}/{LOGIN_EVENTS}", new_sessions_query(pending.user, pending.at_ms)):
                start = session_start_of(event, pending.at_ms) if isinstance(event, dict) else None
                if start is not None:
                    self._record(start, event)
        return position.watching(position.pending, read_ms)

    def _apply(self, kind: str, event: dict[str, Any]) -> Revocation | None:
        """Record an event's revocation (and return it); raises http.FetchError when Redis
        cannot take it (the position stays before it, so it is read again)."""
        revocation = revocation_of(kind, event, self.role_changes)
        if revocation is not None and self._record(revocation, event):
            metrics.METRICS.feed_revocation(self.issuer, revocation.cause)
        return revocation

    def _record(self, revocation: Revocation, event: dict[str, Any]) -> bool:
        """Record until `revocation_ttl` after the event (the same record however often it is
        read); False when that has passed already."""
        until = (event_time(event) or 0) / 1000 + self._ttl
        if until <= time.time():
            return False
        try:
            self.store.record_until(revocation.kind, revocation.ident, revocation.at, until)
        except SharedUnavailable:
            raise http.FetchError("Redis cannot take a revocation") from None
        return True

    # -- the position: Redis when shared, else memory --

    def _position(self, kind: str) -> Position:
        if self.shared is not None:
            stored = Position.from_json(self.shared.get(self._position_key(kind)))
            if stored is not None:
                return stored
        held = _local_positions.get((self._realm_key, kind))
        return held if held is not None else Position.starting(int((time.time() - self._ttl) * 1000))

    def _save(self, kind: str, position: Position) -> None:
        _local_positions[(self._realm_key, kind)] = position
        if self.shared is not None:
            self.shared.put(self._position_key(kind), position.to_json(), self._ttl)

    def _position_key(self, kind: str) -> str:
        return f"{self._realm_key}:position:{kind}"

    # -- Keycloak --

    def _page(self, kind: str, since_ms: int, first: int) -> list[Any]:
        url = f"{self._admin}/{kind}"
        params: dict[str, Any] = {**query(kind, self.role_changes), "dateFrom": str(since_ms),
                                  "direction": "asc", "first": str(first), "max": str(PAGE)}
        try:
            return self._get(url, params)
        except EventsRefused as exc:
            if exc.status != 401:
                raise
            # The token's session ended (a realm-wide sign-out ends the service account's too).
            return self._get(url, params)

    def _get(self, url: str, params: dict[str, Any]) -> list[Any]:
        headers = {"Authorization": "Bearer " + self._account.bearer()}
        try:
            return http.get_json_list(url, params, headers, self._timeout, self._ca)
        except http.FetchError as exc:
            if exc.status not in (401, 403):
                raise
            self._account.forget()
            raise EventsRefused(f"{url} answered HTTP {exc.status}: the service account needs the "
                                "realm-management role view-events", exc.status) from None


def _failure(exc: http.FetchError) -> str:
    return str(exc) if isinstance(exc, Refused) else f"cannot read Keycloak's events ({exc})"
