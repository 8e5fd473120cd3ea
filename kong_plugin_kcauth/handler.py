"""The Kong adapter: the plugin class kong-pdk instantiates per configuration, and its access phase.

Read it top to bottom, as Kong's own jwt and key-auth handlers: read the request, ask for the
decision (decision/guard.py `Guard.decide`, one call), then either apply it (`set_identity`, the
one place the upstream's identity is set, like key-auth's `set_consumer`) or send the refusal
(errors.py). In `revocation_receiver` mode the route receives Keycloak's pushes instead
(decision/receiver.py); in `assertion_keys` mode it publishes the upstream assertion's JWK Set
(decision/assertion.py).

Two properties of Kong's plugin-server bridge shape it (see docs/security.md, "Security model"):
- Kong proxies the request when the plugin server fails (fail-open), so nothing here may raise,
  hang or crash: every outcome is either "identity set, proceed" or one `kong.response.exit`.
- The first statement is a PDK call carrying all the input the request path needs (one round
  trip for all request headers: every header line, or the request is refused, since a client's
  copy of an identity header must never hide past the part Kong hands over).

PDK round trips: 2 on the reject path (read headers, exit), 3 on the allow path (read headers,
set upstream headers unless nothing changes, hand groups to Kong's ACL plugin), plus
the request's method and path (2) when the upstream assertion is on (`upstream_assertion`),
`kong.client.authenticate` (and a `load_consumer` per minute per consumer) when consumers are
mapped, `kong.client.get_credential` when a client sends one of Kong's identity headers, and the
request's method and URL (5, or 2 with `public_base_url`) when the DPoP scheme is used. Nothing
follows `kong.response.exit`.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from dataclasses import replace
from typing import Any

from . import errors
from .config import Config
from .config.values import KONG_IDENTITY_HEADERS
from .decision import wiring
from .decision.assertion import KEYS_CACHE_CONTROL, KEYS_MEDIA_TYPE, KeysPublisher
from .decision.assertion import Request as Bound
from .decision.guard import Grant, Guard, Presented, presented_token
from .decision.headers import (
    MAX_REQUEST_HEADERS,
    REMOVE,
    HeaderValue,
    all_seen,
    changes,
    cleared_headers,
    kong_identity_headers,
    spelling_variants,
)
from .decision.receiver import Receiver
from .errors import Refusal
from .ops import logs, metrics, tracing
from .revocation.shared import SharedUnavailable

log = logging.getLogger("kcauth")

_KONG_IDENTITY = frozenset(h.lower() for h in KONG_IDENTITY_HEADERS)


class Plugin:
    """Instantiated by kong-pdk at plugin.StartInstance with Kong's config for one entity."""

    def __init__(self, config: dict[str, Any]) -> None:
        # Raising here fails StartInstance: Kong then answers the route's requests with 500,
        # which is closed, and logs the message, which names the bad setting.
        self.config = Config.from_kong(config)
        build = {"revocation_receiver": Receiver, "assertion_keys": KeysPublisher}.get(self.config.mode, Guard)
        self.stage: Guard | Receiver | KeysPublisher = wiring.for_config(self.config, build)
        if self.stage.owners.add(config):
            for problem in self.config.problems():  # settings that cannot be used: Kong's error log
                logs.config_error(self.stage.owners, problem)

    def access(self, kong: Any) -> None:
        try:
            if isinstance(self.stage, Receiver):
                return receive(kong, self.stage, self.config)
            if isinstance(self.stage, KeysPublisher):
                return publish(kong, self.stage)
            return authenticate(kong, self.stage)
        finally:
            if tracing.ON:
                tracing.leave()  # the request's trace ends with it: handler greenlets are reused


class Asked:
    """What is asked of Kong about the request besides its headers, each at most once (a round
    trip each): the method, for the preflight check, a DPoP proof and the upstream assertion."""

    def __init__(self, kong: Any) -> None:
        self._kong = kong
        self._method: str | None = None

    def method(self) -> str:
        if self._method is None:
            method = self._kong.request.get_method()
            self._method = method if isinstance(method, str) else ""
        return self._method


def authenticate(kong: Any, guard: Guard) -> None:
    config = guard.config
    used_dpop = False
    asked = Asked(kong)
    try:
        request_headers = kong.request.get_headers(MAX_REQUEST_HEADERS)
        if tracing.ON:  # the calls this request makes join its trace (ops/tracing.py)
            tracing.join(request_headers.get("traceparent"), request_headers.get("tracestate"))
        tell_kong(kong, guard.owners)
        if not all_seen(request_headers):
            raise errors.TooManyHeaders()
        if (config.anonymous and kong.client.get_credential() is not None) or \
                (not config.run_on_preflight and asked.method() == "OPTIONS"):
            # Another auth plugin authenticated the request, and anonymous makes the auth
            # plugins a logical OR (as key-auth and jwt do); or a CORS preflight left alone.
            # Either way kcauth's own identity headers carry nothing of the client's.
            observe(kong, guard, None, "skipped")
            return set_identity(kong, guard, request_headers, None, None, asked)
        try:
            scheme, token = presented_token(request_headers)
            used_dpop = scheme == "dpop"
            presented = Presented(token, dpop=used_dpop)
            if used_dpop and config.dpop != "off":  # what its proof must be about: asked for this scheme only
                presented = replace(presented, proofs=request_headers.get("dpop"), url=request_url(kong, config),
                                    method=asked.method())
            grant = guard.decide(presented, time.time())
        except Refusal as refusal:
            if refusal.status == 401 and guard.consumers and guard.consumers.anonymous:
                anonymous = guard.consumers.find_anonymous(kong)
                if anonymous is not None:
                    observe(kong, guard, None, "anonymous")
                    return set_identity(kong, guard, request_headers, None, anonymous, asked)
                missing_anonymous(kong, guard)
            raise
        consumer = None
        if guard.consumers is not None and grant.consumer is not None:
            consumer = guard.consumers.find(kong, grant.consumer)
        if consumer is None and config.consumer_required:
            raise errors.UnknownConsumer()
        observe(kong, guard, grant, "allowed")
        return set_identity(kong, guard, request_headers, grant, consumer, asked)
    except Refusal as refusal:
        observe(kong, guard, None, type(refusal).__name__, refusal.status)
        reply = errors.answer(refusal, config.realm, guard.schemes, dpop_used=used_dpop)
    except Exception as exc:  # noqa: BLE001 - an escaping exception would fail open or wedge
        reply = errors.answer(errors.InternalFault(), config.realm)
        _report_fault(kong, exc)
    _send(kong, reply)


def missing_anonymous(kong: Any, guard: Guard) -> None:
    """`anonymous` names no consumer: said in Kong's log at `error`, as Kong's own auth plugins
    fail then, once a minute per config; the request is refused (401) instead of let through."""
    message = (f"kcauth: config.anonymous {guard.config.anonymous!r} names no Kong consumer: requests "
               f"without a valid token are refused ({guard.owners})")
    if guard.notes.due(message):
        log.error(message)
        kong.log.err(message)


def request_url(kong: Any, config: Config) -> str:
    """The URL the client addressed, without the query: `public_base_url`, else the scheme, host
    and port Kong sees (X-Forwarded-* from Kong's trusted_ips only, kong/pdk/request.lua), and
    the path (X-Forwarded-Path likewise)."""
    path = kong.request.get_forwarded_path()
    path = path if isinstance(path, str) else "/"
    if config.public_base_url:
        return config.public_base_url.rstrip("/") + path
    scheme, host, port = (kong.request.get_forwarded_scheme(), kong.request.get_forwarded_host(),
                          kong.request.get_forwarded_port())
    return f"{scheme}://{host}:{port}{path}"


def observe(kong: Any, guard: Guard, grant: Grant | None, outcome: str, status: int = 200) -> None:
    """The decision, counted (--metrics) and, with `log_decision`, handed to Kong's log plugins."""
    allowed = status < 400
    # The issuer that accepted the token; a refusal counts under the route's first issuer (a
    # refused token's own `iss` is the client's word, and metric labels must stay bounded).
    issuer = grant.realm.issuer if grant is not None else guard.label
    metrics.METRICS.decision(grant.realm.label if grant is not None else guard.label, allowed, outcome)
    if guard.config.log_decision:
        kong.log.set_serialize_value("kcauth", {
            "decision": outcome if outcome in ("allowed", "anonymous", "skipped") else "refused",
            "reason": None if allowed else outcome, "status": status, "issuer": issuer,
            "client": grant.subject.azp if grant is not None else None,
        })


def tell_kong(kong: Any, owners: logs.Owners) -> None:
    """Carry pending state changes (ops/logs.py) to Kong's own log, where its default level shows
    them: one round trip, only when something changed (lines about another config wait for a
    request of theirs)."""
    pending = logs.to_kong.take(owners)
    if pending is None:
        return
    level, lines = pending
    try:
        (kong.log.err if level >= logging.ERROR else kong.log.warn)(" | ".join(lines))
    except Exception:  # noqa: BLE001 - the request must still be answered
        pass


def set_identity(kong: Any, guard: Guard, request_headers: dict[str, Any], grant: Grant | None,
                 consumer: dict[str, Any] | None, asked: Asked) -> None:
    """What the upstream learns, all in one `set_headers`: the claim headers of `grant` (or all
    removed for the anonymous consumer), Kong's identity headers, and the removal of every other
    spelling of either; a removal only where the request carries that header (the map holds all
    its lines), and no call when nothing changes. Then `consumer` is authenticated with Kong,
    then the groups are handed to the ACL plugin: what lets a request through comes last, so an
    event cut short (a worker killed between two calls; Kong proxies what it has) never proxies
    the client's own headers under an identity.

    Kong's identity headers belong to whoever authenticated the request: kcauth's consumer when
    it maps one, else another Kong auth plugin that ran before it (its values are kept), else
    nobody (removed). Asking Kong costs a round trip, so it is asked only when the client sent
    one of those headers."""
    credential = grant.credential if grant is not None and consumer is not None else None
    headers = dict(grant.headers) if grant is not None else cleared_headers(guard.plan)
    if consumer is not None:
        headers.update(kong_identity_headers(consumer, credential, anonymous=grant is None))
    elif not _KONG_IDENTITY.isdisjoint(request_headers) and kong.client.get_credential() is None:
        headers.update(kong_identity_headers(None, None))
    headers[guard.config.upstream_assertion.header] = assertion(kong, guard, grant, consumer, asked)
    headers.update(spelling_variants(request_headers, guard.managed_headers))
    headers = changes(headers, request_headers)
    if headers:
        kong.service.request.set_headers(headers)
    if consumer is not None:
        kong.client.authenticate(consumer, credential)
    if grant is not None:
        kong.ctx.shared.set("authenticated_groups", grant.groups)


def assertion(kong: Any, guard: Guard, grant: Grant | None, consumer: dict[str, Any] | None,
              asked: Asked) -> HeaderValue:
    """The upstream assertion of an accepted token, bound to this request's method and path (a
    round trip each, the method unless already asked); removed (a client's copy with it) when it
    is off or no token was accepted."""
    if guard.signer is None or grant is None or grant.identity is None:
        return REMOVE
    path = kong.request.get_path()
    bound = Bound(asked.method(), path if isinstance(path, str) else "")
    return guard.signer.sign(grant.identity, consumer, bound, time.time())


def publish(kong: Any, publisher: KeysPublisher) -> None:
    """`mode: assertion_keys`: the JWK Set to GET (and HEAD), cacheable; 405 otherwise."""
    try:
        method = kong.request.get_method()
        if method not in ("GET", "HEAD"):
            raise errors.MethodNotAllowed()
        reply = errors.Answer(200, publisher.body, {"Content-Type": KEYS_MEDIA_TYPE,
                                                    "Cache-Control": KEYS_CACHE_CONTROL})
    except Refusal as refusal:
        reply = errors.answer(refusal, "kong")
    except Exception as exc:  # noqa: BLE001 - an escaping exception would wedge or fail open
        reply = errors.answer(errors.InternalFault(), "kong")
        _report_fault(kong, exc)
    _send(kong, reply)


def receive(kong: Any, receiver: Receiver, config: Config) -> None:
    try:
        method = kong.request.get_method()
        if tracing.ON:  # one more round trip, with traces on only (pushes are few)
            tracing.join(kong.request.get_header("traceparent"))
        tell_kong(kong, receiver.owners)
        if method != "POST":
            raise errors.MethodNotAllowed()
        path = kong.request.get_path()
        content_type = kong.request.get_header("content-type")
        body = kong.request.get_raw_body()
        if receiver.receive(path if isinstance(path, str) else "", body if isinstance(body, bytes) else b"",
                            time.time(), content_type if isinstance(content_type, str) else ""):
            reply = errors.Answer(202, None, {})  # a SET, recorded (RFC 8935): no body
        elif config.pass_logout_upstream:
            # Recorded: the application behind the route gets its own copy. The group lets an
            # ACL guard on this route refuse the push when kcauth did not record it.
            kong.ctx.shared.set("authenticated_groups", [config.authenticated_group])
            return
        else:
            reply = errors.Answer(200, {"message": "recorded"}, {"Cache-Control": "no-store"})
    except Refusal as refusal:
        reply = errors.answer(refusal, config.realm)
    except SharedUnavailable:
        reply = errors.answer(errors.ProviderUnavailable(), config.realm)
    except Exception as exc:  # noqa: BLE001 - an escaping exception would wedge or fail open
        reply = errors.answer(errors.InternalFault(), config.realm)
        _report_fault(kong, exc)
    _send(kong, reply)


def _send(kong: Any, reply: errors.Answer) -> None:
    """The one `kong.response.exit` of a request; nothing may follow it."""
    try:
        if reply.body is None and not reply.headers:
            # Status alone: Kong unpacks the RPC's arguments, and a nil before the headers
            # would end them (kong/runloop/plugin_servers/rpc/mp_rpc.lua call_pdk_method).
            kong.response.exit(reply.status)
        else:
            kong.response.exit(reply.status, reply.body, reply.headers)
    except Exception as exc:  # noqa: BLE001
        log.error("kcauth could not send its answer: %s", _where(exc))


def _report_fault(kong: Any, exc: BaseException) -> None:
    """Log an internal fault once: its type and place only, since messages can carry input."""
    reason = f"kcauth internal fault, request refused with 500: {_where(exc)}"
    log.error(reason)
    try:
        kong.log.err(reason)
    except Exception:  # noqa: BLE001 - the exit must still be sent
        pass


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{place}"


def _configure_logging() -> None:
    # Kong logs the plugin server's output at info level; keep it to warnings and above.
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)


_configure_logging()
