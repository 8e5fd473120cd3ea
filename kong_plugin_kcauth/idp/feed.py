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
import threading
import time
import weakref
from typing import Any

from ..config import Config
from ..ops import metrics
from ..ops.logs import Throttled, health
from ..revocation.shared import Lease, SharedStore, SharedUnavailable
from ..revocation.store import Kind, RevocationStore
from . import http
from .client_auth import client_authentication
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

log = logging.getLogger("kcauth.feed")

PAGE = 100  # events per request
MAX_PAGES = 10  # per list and read: a backlog is taken over several reads
TOKEN_MARGIN = 30.0  # seconds before its expiry a service-account token is replaced
MAX_PAUSE = 0.5  # seconds between two tries for the lease: a lapsed reader is replaced at once

# Without Redis, per process: realm -> when its next read may start, and the positions.
_local_leases: dict[str, float] = {}
_local_positions: dict[tuple[str, str], Position] = {}
_local_lock = threading.Lock()


class Refused(http.FetchError):
    """Keycloak refused the service account: its credentials at the token endpoint."""


class EventsRefused(Refused):
    """The admin API refused the service account's token: its role, or its ended session."""


class LocalLease:
    """Without Redis: the process-wide lease of `_local_leases`, held for the whole read."""

    def renew(self) -> bool:
        return True


class Feed:
    def __init__(self, config: Config, store: RevocationStore, shared: SharedStore | None) -> None:
        feed = config.revocation_feed
        self.issuer = config.the_issuer
        self.store, self.shared = store, shared
        self.interval = float(feed.interval)
        self.role_changes = feed.role_changes
        self._client_id, self._secret = feed.client_id or "", feed.client_secret or ""
        self._admin = config.admin_url
        self._discovery_url, self._rewrite = config.discovery_url, config.provider_rewrite
        self._timeout, self._ca = config.http_timeout, config.tls_ca_bundle
        self._ttl = float(config.revocation_ttl)
        realm = hashlib.sha256(self.issuer.encode()).hexdigest()[:32]
        self._realm_key = f"feed:{realm}"
        self._token: tuple[str, float] | None = None
        self._component = f"revocation feed of {self.issuer} (client {self._client_id})"
        self._notes = Throttled(log, 300)
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self.first_read = threading.Event()

    def start(self) -> None:
        """Start reading. Without Redis, wait for the node's first read (at instance start, at
        most `http_timeout`: this process's, or another worker's that holds the lease), so a
        plugin server that just started does not accept a token revoked before it started; with
        Redis, the revocation store's catch-up does that."""
        with self._starting:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=_run, args=(weakref.ref(self),), daemon=True,
                                            name="kcauth-feed")
            self._thread.start()
        if self.shared is None or self.shared.local:
            self.first_read.wait(self._timeout)

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
        if self.shared is not None:
            try:
                return self.shared.lease(self._realm_key + ":lease", self.interval)
            except SharedUnavailable:
                pass  # Redis down: read alone, like a process without Redis
        now = time.monotonic()
        with _local_lock:
            if _local_leases.get(self._realm_key, 0.0) > now:
                return None
            _local_leases[self._realm_key] = now + self.interval
        return LocalLease()

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
        headers = {"Authorization": "Bearer " + self._bearer()}
        try:
            return http.get_json_list(url, params, headers, self._timeout, self._ca)
        except http.FetchError as exc:
            if exc.status not in (401, 403):
                raise
            self._token = None
            raise EventsRefused(f"{url} answered HTTP {exc.status}: the service account needs the "
                                "realm-management role view-events", exc.status) from None

    def _bearer(self) -> str:
        now = time.monotonic()
        if self._token is not None and self._token[1] > now:
            return self._token[0]
        endpoint = http.discover(self._discovery_url, self.issuer, "token_endpoint", self._timeout,
                                 self._rewrite, ca=self._ca)
        form, headers = client_authentication("client_secret_basic", self._client_id, self._secret, None,
                                              self.issuer, time.time())
        form["grant_type"] = "client_credentials"
        try:
            answer = http.post_form(endpoint, form, headers, self._timeout, self._ca)
        except http.FetchError as exc:
            if exc.status in (400, 401):
                raise Refused(f"the token endpoint refused the service account (HTTP {exc.status}): check "
                              "revocation_feed.client_id, its secret, and that its service account is "
                              "enabled", exc.status) from None
            raise
        token, lifetime = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not token:
            raise http.FetchError("the token endpoint answered no access_token")
        seconds = float(lifetime) if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool) else 60.0
        self._token = (token, now + max(seconds - TOKEN_MARGIN, 1.0))
        return token


def _failure(exc: http.FetchError) -> str:
    return str(exc) if isinstance(exc, Refused) else f"cannot read Keycloak's events ({exc})"


def _run(ref: weakref.ref[Feed]) -> None:
    """The feed's thread: tries for the lease a few times an interval, until the feed is gone
    (Kong removed every plugin instance that used it)."""
    while True:
        feed = ref()
        if feed is None:
            return
        pause = min(feed.interval / 4, MAX_PAUSE)
        try:
            feed.step()
        except Exception as exc:  # noqa: BLE001 - the feed must outlive any surprise; nothing is lost
            log.error("revocation feed of %s: unexpected %s", feed.issuer, type(exc).__name__)
            feed.first_read.set()
        del feed
        time.sleep(pause)
