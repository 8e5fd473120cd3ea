"""Traces of kcauth's outbound calls (OpenTelemetry), exported over OTLP/HTTP; off by default.

On only when the plugin server's environment names an OTLP endpoint
(`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`) and the `tracing` extra
is installed; `OTEL_SDK_DISABLED=true` turns it off again. Everything else is the SDK's own
environment: `OTEL_SERVICE_NAME` (default "kcauth"), `OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_TRACES_SAMPLER` (default: the request's sampling decision, else every call),
`OTEL_BSP_*`. Off, `ON` is False, read once at import: nothing of OpenTelemetry is imported, the
Redis hooks are not installed (revocation/shared.py) and every other hook is one check of `ON`.

What is traced, at the I/O edges only:
- `http_call`: every call to the identity provider (idp/http.py), a client span named by its
  method and purpose (`POST introspection`), its traceparent sent along so that the provider's
  own spans (Keycloak's tracing) join the trace;
- `redis_call`: each `SharedStore` call to Redis (revocation/shared.py), named by its command.
A call made for a request (`join`: the request's `traceparent`, handler.py) is a child of the
request's span; any other (the feed, background key downloads, Shared Signals polls) a root.
The parent is a contextvar: per greenlet under gevent, per thread otherwise, and new greenlets
and threads start without one. Spans are never made current (nothing runs under them), so a
span can end in another greenlet than the one it started in.

Each process makes its own tracer provider on its first span (the supervisor forks its workers:
a provider, with its export thread, must not cross a fork), exporting with the SDK's
BatchSpanProcessor, which never blocks a call: spans are queued, sent in the background (a
greenlet under gevent), dropped when the queue is full. Attributes follow OpenTelemetry's
semantic conventions and hold no token, secret or personal identifier: URLs lose their
user-info, query and fragment; failures carry the exception's type, never its message.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.util import find_spec
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("kcauth")

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
EXTRA = "kong-plugin-kcauth[tracing]"
DEFAULT_SERVICE = "kcauth"
_PACKAGES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
# W3C Trace Context: version, trace-id, parent-id, flags; a later version may append fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_MAX_TRACESTATE = 512  # W3C: 32 members; a longer header may be dropped


def configured(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (pure)."""
    return any(environ.get(name, "").strip() for name in ENDPOINTS) and \
        environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"


def _installed() -> bool:
    """Whether the `tracing` extra is there, without importing it; one error line if not."""
    try:
        missing = [name for name in _PACKAGES if find_spec(name) is None]
    except (ImportError, ValueError):
        missing = list(_PACKAGES)
    if missing:
        log.error("kcauth: %s is set but OpenTelemetry is not installed (%s): traces are off; install "
                  "%s", next(n for n in ENDPOINTS if os.environ.get(n, "").strip()), ", ".join(missing), EXTRA)
    return not missing


ON: bool = configured(os.environ) and _installed()


# -- the request's trace -------------------------------------------------------------------------

@dataclass(frozen=True)
class Parent:
    """The request's span, from its `traceparent` (and `tracestate`) header."""

    trace_id: int
    span_id: int
    flags: int
    state: str | None = None


def parse_traceparent(value: object, state: object = None) -> Parent | None:
    """A W3C `traceparent` header (and its `tracestate`), or None when absent or malformed (pure):
    lowercase hex, neither id all zeros, version ff refused, version 00 exactly 55 characters, a
    later version's extra fields after a dash. Kong's header map holds a list of the header's
    lines: more than one is malformed."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    parent = Parent(int(trace_id, 16), int(span_id, 16), int(flags, 16), _tracestate(state))
    return parent if parent.trace_id and parent.span_id else None


def _tracestate(value: object) -> str | None:
    if isinstance(value, list):  # repeated tracestate headers are one list (W3C)
        value = ",".join(v for v in value if isinstance(v, str))
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TRACESTATE:
        return None
    return value


class _Request:
    """The request's trace headers as they came, read only when the request makes a call: most
    requests make none (their token's outcome is remembered)."""

    __slots__ = ("headers", "context")

    def __init__(self, traceparent: object, tracestate: object) -> None:
        self.headers = (traceparent, tracestate)
        self.context: Context | None = None


_request: ContextVar[_Request | None] = ContextVar("kcauth_trace_request", default=None)


def join(traceparent: object, tracestate: object = None) -> None:
    """The calls this greenlet (or thread) makes from now on are children of the request's span,
    when its `traceparent` is usable; roots otherwise. Call `leave` when the request is done."""
    _request.set(_Request(traceparent, tracestate))


def leave() -> None:
    """The request is done: handler greenlets and threads are reused for the next one."""
    _request.set(None)


# -- spans -----------------------------------------------------------------------------------------

def public_url(url: str) -> str:
    """`url` without user-info, query or fragment (url.full may carry neither secrets nor
    parameters)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@functools.lru_cache(maxsize=256)  # a few endpoints per realm: parsed once each
def http_attributes(purpose: str, method: str, url: str) -> Mapping[str, str | int]:
    """A client span's attributes (HTTP semantic conventions), and the call's purpose (pure;
    read-only, since it is shared)."""
    attributes: dict[str, str | int] = {"http.request.method": method, "url.full": public_url(url),
                                        "kcauth.call": purpose}
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return MappingProxyType(attributes)
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    if port is not None:
        attributes["server.port"] = port
    return MappingProxyType(attributes)


def redis_attributes(call: str, operation: str, host: str | None, port: int | None) -> dict[str, str | int]:
    """A Redis call's attributes (database semantic conventions); the `SharedStore` method as
    `kcauth.call` (pure). `host`: standalone Redis only (Sentinel and Cluster pick the node)."""
    attributes: dict[str, str | int] = {"db.system.name": "redis", "db.operation.name": operation,
                                        "kcauth.call": call}
    if host:
        attributes["server.address"] = host
        if port is not None:
            attributes["server.port"] = port
    return attributes


class HttpCall:
    """The span of one HTTP call, as `http_call` hands it to the caller."""

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def headers(self, given: Mapping[str, str] | None) -> dict[str, str]:
        """`given`, plus the traceparent (and tracestate) naming this call as the parent."""
        headers = dict(given or {})
        context = self._span.get_span_context() if self._span is not None else None
        if context is not None and context.is_valid:
            headers["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
            state = context.trace_state.to_header()
            if state:
                headers["tracestate"] = state
        return headers

    def answered(self, status: int) -> None:
        if self._span is None:
            return
        self._span.set_attribute("http.response.status_code", status)
        if status >= 400:  # a client span's error (HTTP semantic conventions)
            _failed(self._span, str(status))


@contextmanager
def http_call(purpose: str, method: str, url: str) -> Iterator[HttpCall]:
    """A client span around a call to the identity provider (only while `ON`)."""
    with _span(f"{method} {purpose}", http_attributes(purpose, method, url)) as span:
        yield HttpCall(span)


@contextmanager
def redis_call(call: str, operation: str, host: str | None, port: int | None) -> Iterator[None]:
    """A client span around a call to Redis (only while `ON`)."""
    with _span(operation, redis_attributes(call, operation, host, port)):
        yield


def failed(exc: BaseException) -> None:
    """The call in progress failed, though its caller carries on (a Redis read that falls back
    on the process's own state) or raises its own error instead: its span names `exc`'s type."""
    span = _current.get() if ON else None
    if span is not None:
        _failed(span, exc)


_current: ContextVar[Span | None] = ContextVar("kcauth_trace_call", default=None)


@contextmanager
def _span(name: str, attributes: Mapping[str, str | int]) -> Iterator[Span | None]:
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    span = tracer.start_span(name, context=_parent(), kind=SpanKind.CLIENT, attributes=attributes)
    # Set and put back by value: a generator's span (Redis SCAN) may be resumed in another context.
    outer = _current.get()
    _current.set(span)
    try:
        yield span
    except GeneratorExit:  # a generator closed early: not a failure
        raise
    except BaseException as exc:
        _failed(span, exc)
        raise
    finally:
        _current.set(outer)
        span.end()


def _failed(span: Span, error: BaseException | str) -> None:
    """The span's error status and `error.type`: an exception's type (never its message, which
    can carry input) or an HTTP status; the first cause stays when a wrapper raises another."""
    from opentelemetry.trace import Status, StatusCode

    if span.is_recording() and _error_type(span) is None:
        span.set_attribute("error.type", error if isinstance(error, str) else type(error).__name__)
        span.set_status(Status(StatusCode.ERROR))


def _error_type(span: Span) -> object:
    attributes = getattr(span, "attributes", None)  # the SDK's span; the API's has none to read
    return attributes.get("error.type") if isinstance(attributes, Mapping) else None


def _parent() -> Context:
    """The parent of a call's span: the request's span (made once per request), or none."""
    request = _request.get()
    if request is None:
        return _context(None)
    if request.context is None:
        request.context = _context(parse_traceparent(*request.headers))
    return request.context


def _context(parent: Parent | None) -> Context:
    """The parent for a new span: the request's remote span, or none (a root)."""
    from opentelemetry.context import Context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState, set_span_in_context

    if parent is None:
        return Context()
    state = TraceState.from_header([parent.state]) if parent.state else None
    remote = SpanContext(parent.trace_id, parent.span_id, is_remote=True, trace_flags=TraceFlags(parent.flags),
                         trace_state=state)
    return set_span_in_context(NonRecordingSpan(remote), Context())


# -- the provider, one per process -----------------------------------------------------------------

_made: tuple[int, Tracer | None] | None = None  # (the process it was made in, its tracer)
_provider: Any = None  # the SDK's provider of `_made`, for `flush`
_lock = threading.Lock()


def flush(timeout_s: float = 2.0) -> None:
    """Export the spans still queued, at most `timeout_s`: a worker that ends with os._exit
    (handed over on `kong reload`) would lose them."""
    made = _made
    if ON and made is not None and made[0] == os.getpid() and _provider is not None:
        try:
            _provider.force_flush(int(timeout_s * 1000))
        except Exception:  # noqa: BLE001 - an exporter's failure must not keep a worker alive
            pass


def _tracer() -> Tracer | None:
    """This process's tracer, made on its first span (a forked worker makes its own)."""
    global _made
    made, pid = _made, os.getpid()
    if made is None or made[0] != pid:
        with _lock:
            if _made is None or _made[0] != pid:
                _made = (pid, _make_tracer())
            made = _made
    return made[1]


def _make_tracer() -> Tracer | None:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from .. import __version__

        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol.strip() != "http/protobuf":
            log.warning("kcauth: traces are exported over OTLP/HTTP (http/protobuf) only, not %s", protocol)
        resource = Resource({"service.version": __version__}).merge(Resource.create())
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        global _provider
        _provider = provider
        return provider.get_tracer("kong_plugin_kcauth", __version__)
    except Exception as exc:  # noqa: BLE001 - tracing must never take a call down with it
        log.error("kcauth: traces are off in process %d, OpenTelemetry could not start: %s", os.getpid(),
                  type(exc).__name__)
        return None

