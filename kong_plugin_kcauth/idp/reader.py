"""What kcauth's background readers of Keycloak share: the revocation feed (feed.py) and the
Shared Signals receiver (ssf.py). Each reads one realm, one process of the cluster at a time:

- `take_lease`: the realm's lease for one read: with Redis (or the node's hub), a key lapsing
  after the interval, so a stopped reader is replaced as soon as its lease lapses; without,
  one per process;
- `ServiceAccount`: a client-credentials token of the reader's own client, renewed before it
  expires (client_secret_basic at the realm's token endpoint, found by discovery);
- `run`: the reading thread, which tries for the lease a few times an interval and ends with the
  reader (Kong removed every plugin instance that held it).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Protocol

from ..revocation.shared import Lease, SharedStore, SharedUnavailable
from . import http
from .client_auth import client_authentication

TOKEN_MARGIN = 30.0  # seconds before its expiry a service-account token is replaced
MAX_PAUSE = 0.5  # seconds between two tries for the lease: a lapsed reader is replaced at once

# Without Redis, per process: lease key -> when its next read may start.
_local_leases: dict[str, float] = {}
_local_lock = threading.Lock()


class Refused(http.FetchError):
    """Keycloak refused the reader's client at the token endpoint: its credentials."""


class LocalLease:
    """Without Redis: the process-wide lease of `_local_leases`, held for the whole read."""

    def renew(self) -> bool:
        return True


def take_lease(shared: SharedStore | None, key: str, interval: float) -> Lease | LocalLease | None:
    """The lease `key` for one read of `interval` seconds, or None when another reader holds it."""
    if shared is not None:
        try:
            return shared.lease(key, interval)
        except SharedUnavailable:
            pass  # Redis down: read alone, like a process without Redis
    now = time.monotonic()
    with _local_lock:
        if _local_leases.get(key, 0.0) > now:
            return None
        _local_leases[key] = now + interval
    return LocalLease()


class ServiceAccount:
    """Tokens of one confidential client of the realm (`setting`: where its id is configured,
    named in the error an operator reads)."""

    def __init__(self, issuer: str, client_id: str, secret: str, setting: str, *, discovery_url: str,
                 rewrite: tuple[str, str] | None, timeout: float, ca: str | None, scope: str | None = None) -> None:
        self.issuer, self.client_id, self._secret, self._setting = issuer, client_id, secret, setting
        self._discovery_url, self._rewrite, self._timeout, self._ca = discovery_url, rewrite, timeout, ca
        self._scope = scope
        self._token: tuple[str, float] | None = None

    def forget(self) -> None:
        """The token was refused where it was used: the next `bearer` gets a new one."""
        self._token = None

    def bearer(self) -> str:
        now = time.monotonic()
        if self._token is not None and self._token[1] > now:
            return self._token[0]
        endpoint = http.discover(self._discovery_url, self.issuer, "token_endpoint", self._timeout,
                                 self._rewrite, ca=self._ca)
        form, headers = client_authentication("client_secret_basic", self.client_id, self._secret, None,
                                              self.issuer, time.time())
        form["grant_type"] = "client_credentials"
        if self._scope:
            form["scope"] = self._scope
        try:
            answer = http.post_form(endpoint, form, headers, self._timeout, self._ca)
        except http.FetchError as exc:
            if exc.status in (400, 401):
                raise Refused(f"the token endpoint refused the service account (HTTP {exc.status}): check "
                              f"{self._setting}.client_id, its secret, and that its service account is "
                              "enabled", exc.status) from None
            raise
        token, lifetime = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not token:
            raise http.FetchError("the token endpoint answered no access_token")
        seconds = float(lifetime) if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool) else 60.0
        self._token = (token, now + max(seconds - TOKEN_MARGIN, 1.0))
        return token


class Reader(Protocol):
    issuer: str
    interval: float
    first_read: threading.Event

    def step(self) -> None: ...


class Background:
    """A reader's thread (`run`), started once by the first instance that needs it. Without
    Redis, `start` waits for the node's first read (at most `timeout`: this process's, or another
    worker's that holds the lease), so a plugin server that just started does not accept a token
    revoked before it started; with Redis, the revocation store's catch-up does that."""

    what = "reader"  # in log lines
    thread_name = "kcauth-reader"

    def __init__(self, shared: SharedStore | None, timeout: float, log: logging.Logger) -> None:
        self.first_read = threading.Event()
        self._waits = shared is None or shared.local
        self._start_timeout, self._log = timeout, log
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def start(self) -> None:
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(target=run, args=(weakref.ref(self), self._log, self.what),
                                                daemon=True, name=self.thread_name)
                self._thread.start()
        if self._waits:
            self.first_read.wait(self._start_timeout)


def run(ref: weakref.ref[Reader], log: logging.Logger, what: str) -> None:
    """A reader's thread: `step` a few times an interval, until the reader is gone."""
    while True:
        reader = ref()
        if reader is None:
            return
        pause = min(reader.interval / 4, MAX_PAUSE)
        try:
            reader.step()
        except Exception as exc:  # noqa: BLE001 - the reader must outlive any surprise; nothing is lost
            log.error("%s of %s: unexpected %s", what, reader.issuer, type(exc).__name__)
            reader.first_read.set()
        del reader
        time.sleep(pause)
