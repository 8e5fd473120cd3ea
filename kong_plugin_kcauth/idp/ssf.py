"""The Shared Signals receiver (`ssf`): revocations Keycloak's transmitter keeps until kcauth
has them (OpenID SSF 1.0, CAEP; Keycloak 26.7+ with `--features=ssf`).

Per realm (the plugin-level issuer), as the realm's client `ssf.client_id` (SSF enabled, a
service account, scopes `ssf.read ssf.manage`; nothing of realm-management):
1. discover the transmitter (`<issuer>/.well-known/ssf-configuration`, which must name the
   issuer) and adopt the client's stream, or create one: poll delivery (RFC 8936), the CAEP
   events kcauth enforces (tokens/secevent.py REVOKING); a new stream is asked to verify itself
   (its verification event comes through the poll, and is logged);
2. poll it every `ssf.poll_interval` seconds, one process of the cluster at a time (the realm's
   lease, reader.py), and for each SET: its claim rules and signature (the realm's keys), then
   its revocation (idp/signals.py) recorded in the issuer's revocation store, the same records
   as pushes and the feed make (so Redis sharing, write-back and duplicates behave alike);
3. acknowledge a SET only once its revocation is recorded (with the next poll): Keycloak keeps
   and re-sends an unacknowledged SET, so a process that dies between the two loses nothing,
   and a SET read twice makes the same record. A SET that fails its checks is answered with
   `setErrs` (Keycloak dead-letters it) and revokes nothing.

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
from ..revocation.shared import SharedStore, SharedUnavailable
from ..revocation.store import RevocationStore
from ..tokens import secevent
from ..tokens.secevent import REVOKING, STREAM_UPDATED, VERIFICATION, Expected
from . import http, reader
from .keys import KeySet
from .reader import Refused, ServiceAccount
from .signals import revocation_of

log = logging.getLogger("kcauth.ssf")

POLL = "urn:ietf:rfc:8936"
MAX_EVENTS = 100  # SETs per poll
MAX_POLLS = 10  # per step: a backlog is taken over several steps
MAX_SET_SIZE = 16384
SCOPE = "ssf.read ssf.manage"


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

    def step(self) -> None:
        lease = reader.take_lease(self.shared, self._key + ":lease", self.interval)
        if lease is None:
            return  # another process polls, records (shared) and acknowledges
        try:
            stream = self._stream or self._open()
            for _ in range(MAX_POLLS):
                if not lease.renew():
                    break
                sets = self._poll(stream)
                if not sets:
                    break
                for jti, token in sets.items():
                    self._take(stream, jti, token)
            health.report(self._component, True, instance=self)
        except http.FetchError as exc:
            if exc.status in (401, 403, 404):
                self._account.forget()
                self._stream = None  # deleted, or replaced by an administrator: adopt it again
            health.report(self._component, False, _failure(exc) + ": no new revocations until it "
                          "recovers; what the guards know stays", instance=self)
        finally:
            self.first_read.set()

    # -- the stream --

    def _open(self) -> Stream:
        meta = self._call("GET", rewrite_origin(self.issuer.rstrip("/") + "/.well-known/ssf-configuration",
                                                 self._rewrite), None, bearer=False)
        if not isinstance(meta, dict) or meta.get("issuer") != self.issuer:
            raise http.FetchError("the transmitter's configuration names another issuer")
        endpoint = _url(meta.get("configuration_endpoint"), self._rewrite)
        streams = self._call("GET", endpoint, None)
        found = next((s for s in streams if isinstance(s, dict)), None) if isinstance(streams, list) else None
        created = False
        if found is not None and (found.get("delivery") or {}).get("method") != POLL:
            raise http.FetchError(f"the client's stream is not delivered by poll ({POLL}): delete it, or let "
                                  "kcauth create its own")
        if found is None:
            found = self._call("POST", endpoint, {"delivery": {"method": POLL}, "events_requested": list(REVOKING),
                                                  "description": "kcauth revocations"})
            created = True
        stream = _stream_of(found, self._rewrite)
        missing = set(REVOKING) - set(found.get("events_delivered") or ())
        if missing:
            self._notes.warning("Shared Signals stream of %s does not deliver %s: those revocations are not "
                                "seen through it", self.issuer, ", ".join(sorted(missing)))
        if created and isinstance(meta.get("verification_endpoint"), str):
            try:
                self._call("POST", _url(meta["verification_endpoint"], self._rewrite),
                           {"stream_id": stream.id, "state": stream.id[:8]})
            except http.FetchError:
                pass  # rate-limited or refused: the stream works without
        self._stream, self._expected = stream, Expected(self.issuer, stream.audiences, self._ttl, self._leeway)
        return stream

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

    def _take(self, stream: Stream, jti: str, token: str) -> None:
        """Record what a SET revokes and queue its acknowledgement, or queue its refusal; raises
        http.FetchError (nothing acknowledged) when it cannot be recorded yet."""
        assert self._expected is not None  # set by _open with the stream
        try:
            signed = secevent.parse(token, MAX_SET_SIZE, self._algorithms)
            refusal = secevent.set_refusal(signed, self._expected, time.time())
            self.keys.verify(signed, refusal)
        except errors.EventRejected as refused:
            return self._refuse(jti, refused.code, refused.reason)
        except errors.ProviderUnavailable:
            raise http.FetchError("the realm's keys are unavailable") from None
        except errors.Refusal:
            return self._refuse(jti, "invalid_key", "invalid signature")
        signal = secevent.signal_of(signed)
        if signal.event == VERIFICATION:
            log.warning("kcauth: Shared Signals stream %s of %s verified", stream.id, self.issuer)
        elif signal.event == STREAM_UPDATED:
            self._notes.warning("Shared Signals stream %s of %s changed status: %s", stream.id, self.issuer,
                                _status(signed.claims))
        else:
            self._record(signal)
        self._acks.append(jti)

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
        try:
            self.store.record_until(revocation.kind, revocation.ident, revocation.at, until)
        except SharedUnavailable:
            raise http.FetchError("Redis cannot take a revocation") from None

    def _refuse(self, jti: str, code: str, reason: str) -> None:
        self._notes.warning("Shared Signals of %s: a SET was refused (%s: %s)", self.issuer, code, reason)
        self._errs[jti] = {"err": code, "description": reason}


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


def _status(claims: dict[str, Any]) -> str:
    payload = next(iter(claims["events"].values()))
    status = payload.get("status")
    status = status.get("status") if isinstance(status, dict) else status  # Keycloak nests it
    return status if isinstance(status, str) and len(status) <= 20 else "unknown"


def _failure(exc: http.FetchError) -> str:
    if isinstance(exc, Refused):
        return str(exc)
    if exc.status in (401, 403):
        return (f"the transmitter refused the client (HTTP {exc.status}): it needs SSF enabled, a service "
                "account and the client scopes ssf.read and ssf.manage")
    return f"cannot read the Shared Signals stream ({exc})"
