"""The Shared Signals receiver (`ssf`): revocations Keycloak's transmitter keeps until kcauth
has them (OpenID SSF 1.0, CAEP; Keycloak 26.7+ with `--features=ssf`).

Per realm (the plugin-level issuer, and each `issuers` entry with its own `ssf.client_id`), as
the realm's client (SSF enabled, a service account, scopes `ssf.read ssf.manage`; nothing of
realm-management):
1. discover the transmitter (`<issuer>/.well-known/ssf-configuration`, which must name the
   issuer) and adopt the client's stream, or create one: the config's delivery, the CAEP events
   kcauth enforces (tokens/secevent.py REVOKING). A stream delivered otherwise is switched
   (Keycloak moves what it holds to the new delivery: nothing is lost). A new stream is asked
   to verify itself; its verification event is logged when it arrives;
2. each SET, polled or pushed, is checked (its claim rules, then its signature with the realm's
   keys) and its revocation (idp/signals.py) recorded in the issuer's revocation store, the same
   records as back-channel pushes and the feed make (so Redis sharing, write-back and duplicates
   behave alike);
3. poll (RFC 8936): every `ssf.poll_interval` seconds, one process of the cluster at a time (the
   realm's lease, reader.py); a SET is acknowledged only once recorded (with the next poll):
   Keycloak keeps and re-sends an unacknowledged SET, so a process that dies between the two
   loses nothing, and a SET read twice makes the same record. A SET that fails its checks is
   answered with `setErrs` (Keycloak dead-letters it) and revokes nothing;
4. push (RFC 8935): the `revocation_receiver` route hands each posted SET to `receive`
   (decision/receiver.py): 202 once recorded, 400 with its RFC 8935 error code when refused
   (a `jti` seen before included), 503 while it cannot be recorded (the stream not read yet, the
   keys or Redis unavailable). Keycloak retries every non-2xx answer, and `request-termination`
   answers 503 for kcauth when the plugin server is down, so nothing is lost either.

Failures (the transmitter down, a garbage or failed answer, the client refused) are reported
once per change (Kong's log, `kcauth_dependency_down`) and change nothing the guards know.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..config import Config
from ..config.values import rewrite_origin
from ..ops.logs import Throttled, health
from ..revocation.shared import Lease, SharedStore, SharedUnavailable
from ..revocation.store import RevocationStore
from ..tokens import jws, secevent
from ..tokens.secevent import REVOKING, STREAM_UPDATED, VERIFICATION, Expected
from . import http, reader
from .keys import KeySet
from .reader import LocalLease, Refused, ServiceAccount
from .signals import revocation_of

log = logging.getLogger("kcauth.ssf")

POLL = "urn:ietf:rfc:8936"
PUSH = "urn:ietf:rfc:8935"
MAX_EVENTS = 100  # SETs per poll
MAX_POLLS = 10  # per step: a backlog is taken over several steps
MAX_SET_SIZE = 16384
SCOPE = "ssf.read ssf.manage"
REOPEN_AFTER = 30.0  # seconds: the least time between two reads of a push stream a SET's audience asks for


@dataclass(frozen=True)
class Stream:
    id: str
    poll_url: str
    audiences: frozenset[str]


class Signals(reader.Background):
    what, thread_name = "Shared Signals receiver", "kcauth-ssf"

    def __init__(self, config: Config, store: RevocationStore, shared: SharedStore | None, keys: KeySet) -> None:
        super().__init__(shared, config.http_timeout, log)
        ssf = config.ssf
        self.issuer = config.the_issuer
        self.store, self.shared, self.keys = store, shared, keys
        self.interval = float(ssf.poll_interval)
        self.client_id = ssf.client_id or ""
        self.push = ssf.delivery == "push"
        self._delivery: dict[str, str] = {"method": PUSH, "endpoint_url": ssf.push_url or ""} if self.push \
            else {"method": POLL}
        self._account = ServiceAccount(self.issuer, self.client_id, ssf.client_secret or "", "ssf",
                                       discovery_url=config.discovery_url, rewrite=config.provider_rewrite,
                                       timeout=config.http_timeout, ca=config.tls_ca_bundle, scope=SCOPE)
        self._rewrite, self._timeout, self._ca = config.provider_rewrite, config.http_timeout, config.tls_ca_bundle
        self._ttl, self._leeway = float(config.revocation_ttl), float(config.leeway)
        self._algorithms = frozenset(config.algorithms)
        self._key = "ssf:" + hashlib.sha256(self.issuer.encode()).hexdigest()[:32]
        self._stream: Stream | None = None
        self._expected: Expected | None = None  # what the stream's SETs must say, set with it
        self._acks: list[str] = []  # recorded, acknowledged with the next poll
        self._errs: dict[str, dict[str, str]] = {}  # refused, told with the next poll
        self._component = f"Shared Signals receiver of {self.issuer} (client {self.client_id})"
        self._notes = Throttled(log, 300)
        self._reopen = False  # a pushed SET named another audience: read the stream again
        self._opened_at = 0.0  # monotonic
        self._unverified: str | None = None  # the verification endpoint, when a stream was just created

    def step(self) -> None:
        if self.push:
            work, lost = self._keep_stream, "pushed events are answered 503 (Keycloak retries them) until it recovers"
        else:
            lease = reader.take_lease(self.shared, self._key + ":lease", self.interval)
            if lease is None:
                return  # another process polls, records (shared) and acknowledges
            work = lambda: self._poll_all(lease)  # noqa: E731
            lost = "no new revocations until it recovers; what the guards know stays"
        try:
            work()
            health.report(self._component, True, instance=self)
        except http.FetchError as exc:
            if exc.status in (401, 403, 404):
                self._account.forget()
                if not self.push:
                    self._stream = None  # deleted, or replaced by an administrator: adopt it again
            health.report(self._component, False, f"{_failure(exc)}: {lost}", instance=self)
        finally:
            self.first_read.set()
        self._verify()

    def _poll_all(self, lease: Lease | LocalLease) -> None:
        """Poll: what the stream holds, a few polls a step, while this process holds the lease."""
        stream = self._stream or self._open()
        for _ in range(MAX_POLLS):
            if not lease.renew():
                break
            sets = self._poll(stream)
            if not sets:
                break
            for jti, token in sets.items():
                self._take(stream, jti, token)

    # -- the stream --

    def _keep_stream(self) -> None:
        """Push: read (or create) the stream once, and again when a SET named another audience
        (an administrator replaced it); the route does the rest."""
        if self._stream is None or (self._reopen and time.monotonic() - self._opened_at >= REOPEN_AFTER):
            self._reopen = False
            self._opened_at = time.monotonic()
            self._open()

    def _open(self) -> Stream:
        meta = self._call("GET", rewrite_origin(self.issuer.rstrip("/") + "/.well-known/ssf-configuration",
                                                 self._rewrite), None, bearer=False)
        if not isinstance(meta, dict) or meta.get("issuer") != self.issuer:
            raise http.FetchError("the transmitter's configuration names another issuer")
        endpoint = _url(meta.get("configuration_endpoint"), self._rewrite)
        found, created = self._adopt(endpoint), False
        if found is None:
            try:
                found = self._call("POST", endpoint, {"delivery": self._delivery, "events_requested": list(REVOKING),
                                                      "description": "kcauth revocations"})
                created = True
            except http.FetchError as exc:
                if exc.status != 409:
                    raise
                found = self._adopt(endpoint)  # another process created it meanwhile
                if found is None:
                    raise
        stream = _stream_of(found, self._rewrite)
        missing = set(REVOKING) - set(found.get("events_delivered") or ())
        if missing:
            self._notes.warning("Shared Signals stream of %s does not deliver %s: those revocations are not "
                                "seen through it", self.issuer, ", ".join(sorted(missing)))
        self._stream, self._expected = stream, Expected(self.issuer, stream.audiences, self._ttl, self._leeway)
        if created and isinstance(meta.get("verification_endpoint"), str):
            self._unverified = meta["verification_endpoint"]
        return stream

    def _verify(self) -> None:
        """Ask a stream just created to verify itself: after `first_read`, since a pushed
        verification arrives while this call waits, and may need this process's instance."""
        endpoint, self._unverified = self._unverified, None
        if endpoint is None or self._stream is None:
            return
        try:
            self._call("POST", _url(endpoint, self._rewrite), {"stream_id": self._stream.id,
                                                                "state": self._stream.id[:8]})
        except http.FetchError:
            pass  # rate-limited or refused: the stream works without

    def _adopt(self, endpoint: str) -> dict[str, Any] | None:
        """The client's stream, switched to this config's delivery if it had another; None if
        the client has none."""
        streams = self._call("GET", endpoint, None)
        found = next((s for s in streams if isinstance(s, dict)), None) if isinstance(streams, list) else None
        if found is None:
            return None
        given = found.get("delivery")
        delivery: dict[str, Any] = given if isinstance(given, dict) else {}
        if delivery.get("method") != self._delivery["method"] or \
                (self.push and delivery.get("endpoint_url") != self._delivery["endpoint_url"]):
            found = self._call("PATCH", endpoint, {"stream_id": found.get("stream_id"), "delivery": self._delivery})
            log.warning("kcauth: Shared Signals stream of %s switched to %s delivery%s", self.issuer,
                        "push" if self.push else "poll", f" to {self._delivery['endpoint_url']}" if self.push else "")
        return found if isinstance(found, dict) else None

    def _poll(self, stream: Stream) -> dict[str, Any]:
        body: dict[str, Any] = {"maxEvents": MAX_EVENTS, "returnImmediately": True}
        acks, errs = self._acks, self._errs
        if acks:
            body["ack"] = acks
        if errs:
            body["setErrs"] = errs
        answer = self._call("POST", stream.poll_url, body)
        self._acks, self._errs = [], {}  # told: Keycloak marked them delivered (or dead)
        sets = answer.get("sets") if isinstance(answer, dict) else None
        if not isinstance(sets, dict):
            raise http.FetchError("the poll answer carries no sets")
        return {jti: token for jti, token in sets.items() if isinstance(jti, str) and isinstance(token, str)}

    def _call(self, method: str, url: str, body: dict[str, Any] | None, bearer: bool = True) -> Any:
        headers = {"Authorization": "Bearer " + self._account.bearer()} if bearer else {}
        return http.send_json(method, url, body, headers, self._timeout, self._ca)

    # -- one SET --

    def receive(self, signed: jws.Signed, now: float) -> None:
        """Push: check and record one SET the route received; raises errors.EventRejected (400),
        errors.ProviderUnavailable (503: the stream not read yet, or the keys unavailable) or
        SharedUnavailable (503: Redis cannot take the record)."""
        stream, expected = self._stream, self._expected
        if stream is None or expected is None:
            raise errors.ProviderUnavailable()
        try:
            signal = _checked(signed, expected, self.keys, now)
        except errors.EventRejected as refused:
            if refused.code == "invalid_audience":
                self._reopen = True  # the stream may have been replaced: read it again (the thread, once)
            self._notes.warning("Shared Signals of %s: a pushed SET was refused (%s: %s)", self.issuer,
                                refused.code, refused.reason)
            raise
        self._apply(stream, signal)
        if not self.store.first_sighting("ssf:" + signal.jti, self._ttl):
            raise errors.EventRejected("invalid_request", "SET already received")

    def _take(self, stream: Stream, jti: str, token: str) -> None:
        """Poll: record what a SET revokes and queue its acknowledgement, or queue its refusal;
        raises http.FetchError (nothing acknowledged) when it cannot be recorded yet."""
        assert self._expected is not None  # set by _open with the stream
        try:
            signal = _checked(secevent.parse(token, MAX_SET_SIZE, self._algorithms), self._expected, self.keys,
                              time.time())
        except errors.EventRejected as refused:
            return self._refuse(jti, refused.code, refused.reason)
        except errors.ProviderUnavailable:
            raise http.FetchError("the realm's keys are unavailable") from None
        try:
            self._apply(stream, signal)
        except SharedUnavailable:
            raise http.FetchError("Redis cannot take a revocation") from None
        self._acks.append(jti)

    def _apply(self, stream: Stream, signal: secevent.Signal) -> None:
        if signal.event == VERIFICATION:
            log.warning("kcauth: Shared Signals stream %s of %s verified", stream.id, self.issuer)
        elif signal.event == STREAM_UPDATED:
            self._notes.warning("Shared Signals stream %s of %s changed status: %s", stream.id, self.issuer,
                                signal.status or "unknown")
        else:
            self._record(signal)

    def _record(self, signal: secevent.Signal) -> None:
        revocation = revocation_of(signal)
        if revocation is None:
            if signal.subject_format is not None:
                self._notes.warning("Shared Signals of %s: a %s subject names no user kcauth can match; "
                                    "ignored", self.issuer, signal.subject_format)
            return
        until = signal.at + self._ttl
        if until <= time.time():
            return  # the tokens it concerns have expired
        self.store.record_until(revocation.kind, revocation.ident, revocation.at, until)  # or SharedUnavailable

    def _refuse(self, jti: str, code: str, reason: str) -> None:
        self._notes.warning("Shared Signals of %s: a SET was refused (%s: %s)", self.issuer, code, reason)
        self._errs[jti] = {"err": code, "description": reason}


def _checked(signed: jws.Signed, expected: Expected, keys: KeySet, now: float) -> secevent.Signal:
    """What a SET says once its claim rules and its signature passed; raises errors.EventRejected
    or errors.ProviderUnavailable (the realm's keys cannot be had)."""
    keys.verify_pushed(signed, secevent.set_refusal(signed, expected, now),
                       errors.EventRejected("invalid_key", "invalid signature"))
    return secevent.signal_of(signed)


def _url(value: Any, rewrite: tuple[str, str] | None) -> str:
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise http.FetchError("the transmitter named no usable endpoint")
    return rewrite_origin(value, rewrite)


def _stream_of(doc: Any, rewrite: tuple[str, str] | None) -> Stream:
    if not isinstance(doc, dict) or not isinstance(doc.get("stream_id"), str):
        raise http.FetchError("the transmitter answered no stream")
    aud = doc.get("aud")
    audiences = frozenset([aud] if isinstance(aud, str) else [a for a in aud or () if isinstance(a, str)])
    return Stream(doc["stream_id"], _url((doc.get("delivery") or {}).get("endpoint_url"), rewrite), audiences)


def _failure(exc: http.FetchError) -> str:
    if isinstance(exc, Refused):
        return str(exc)
    if exc.status in (401, 403):
        return (f"the transmitter refused the client (HTTP {exc.status}): it needs SSF enabled, a service "
                "account and the client scopes ssf.read and ssf.manage")
    return f"cannot read the Shared Signals stream ({exc})"
