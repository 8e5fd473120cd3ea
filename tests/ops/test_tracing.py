"""Traces (ops/tracing.py): the real plugin server exports spans of its outbound calls to an OTLP/HTTP
receiver in this process, joined to the request's `traceparent`; with no endpoint in its
environment it exports nothing and never imports OpenTelemetry; with an endpoint but without the
`tracing` extra it says so once and serves as usual.

Which modules the plugin server's processes import is seen by a `sitecustomize` on its
PYTHONPATH (no debug mode, nothing in kcauth): a meta path finder that writes each
`opentelemetry` import's process id, module and importer (the file whose code asked) to a file,
and can refuse them (the extra missing). With the extra installed, redis-py (7 and later) imports
OpenTelemetry's metrics SDK itself as it loads, inert unless an application turns its metrics
on: what must never load with traces off is kcauth's part, the SDK's tracing and the exporter.
"""

from __future__ import annotations

import gzip
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from kong_plugin_kcauth.ops.tracing import Parent, configured, parse_traceparent, public_url
from tests.conftest import CLIENT_SECRET, bearer, own_gateway, sensitive_config, started_idp
from tests.harness.idp import LocalIdP, Minter, jwt_part
from tests.services.redis import RedisServer

BATCH_DELAY_MS = 100  # OTEL_BSP_SCHEDULE_DELAY: spans leave the plugin server within this
WAIT = 15.0  # seconds, at most, for spans to arrive
QUIET = 1.5  # seconds without a span (15 batch delays) before "nothing was exported" is believed


# --- an OTLP/HTTP receiver ---------------------------------------------------------------------

@dataclass(frozen=True)
class Received:
    """One exported span, decoded."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    error: bool
    trace_state: str
    resource: dict[str, Any]


def _values(pairs: Any) -> dict[str, Any]:
    out = {}
    for kv in pairs:
        assert isinstance(kv, KeyValue)
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


class Receiver:
    """A collector's OTLP/HTTP traces endpoint on 127.0.0.1: POST /v1/traces, protobuf."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.posts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404)
                    return
                receiver._take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _take(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = _values(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(Received(
                        span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name, span.kind,
                        _values(span.attributes), span.status.code == Status.STATUS_CODE_ERROR, span.trace_state,
                        resource))
        with self._lock:
            self.posts += 1
            self.spans.extend(found)

    def wait_for(self, match: Callable[[Received], bool], count: int = 1) -> list[Received]:
        """The spans that `match`, once there are `count` of them (within WAIT seconds)."""
        deadline = time.monotonic() + WAIT
        while True:
            with self._lock:
                found = [s for s in self.spans if match(s)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- which process imported OpenTelemetry --------------------------------------------------------

SITECUSTOMIZE = '''
import os
import sys

_WATCH = os.environ.get("KCAUTH_TEST_IMPORT_WATCH")
_REFUSE = os.environ.get("KCAUTH_TEST_REFUSE_OTEL") == "1"


def _importer():
    """The file whose code imports: the first frame outside the import machinery."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen")
                                 or frame.f_code.co_filename.endswith(("importlib/util.py", "importlib/__init__.py"))):
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else "?"


class _OpenTelemetryImports:
    """Writes each import of opentelemetry (pid, module, importer) to _WATCH; refuses them with
    _REFUSE."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            if _WATCH:
                with open(_WATCH, "a") as out:
                    out.write(f"{os.getpid()} {name} {_importer()}\\n")
            if _REFUSE:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _OpenTelemetryImports())
'''


@dataclass(frozen=True)
class Watch:
    env: dict[str, str]
    file: Path

    def imports(self) -> list[tuple[int, str, str]]:
        """Each opentelemetry import (or attempt): process id, module, importer's file."""
        lines = self.file.read_text().splitlines() if self.file.exists() else []
        return [(int(pid), name, importer) for pid, name, importer in (line.split(" ", 2) for line in lines)]

    def by_kcauth(self) -> dict[int, set[str]]:
        """Process id -> the opentelemetry modules kcauth's own code imported there."""
        out: dict[int, set[str]] = {}
        for pid, name, importer in self.imports():
            if "/kong_plugin_kcauth/" in importer:
                out.setdefault(pid, set()).add(name)
        return out

    def tracing_loaded(self) -> set[str]:
        """The modules of OpenTelemetry's tracing SDK and its exporters, whoever imported them."""
        return {name for _, name, _ in self.imports()
                if name.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))}


@pytest.fixture
def watch(tmp_path: Path) -> Watch:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    file = tmp_path / "imports.txt"
    return Watch({"PYTHONPATH": str(site), "KCAUTH_TEST_IMPORT_WATCH": str(file)}, file)


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def traced_idp() -> Iterator[tuple[LocalIdP, list[str | None]]]:
    """A LocalIdP that also records the traceparent of every introspection call it receives."""
    idp = started_idp()
    seen: list[str | None] = []
    base: Any = idp._server.RequestHandlerClass  # noqa: SLF001 - the harness's handler, extended here only

    class Recording(base):  # type: ignore[misc, valid-type]
        def do_POST(self) -> None:
            if self.path.endswith("/token/introspect"):
                seen.append(self.headers.get("traceparent"))
            super().do_POST()

    idp._server.RequestHandlerClass = Recording  # noqa: SLF001
    yield idp, seen
    idp.stop()


def tracing_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            "OTEL_SDK_DISABLED": "", "OTEL_SERVICE_NAME": "", "OTEL_TRACES_SAMPLER": "",
            "OTEL_BSP_SCHEDULE_DELAY": str(BATCH_DELAY_MS), **extra}


def untraced_env(**extra: str) -> dict[str, str]:
    """No endpoint, whatever the test runner's own environment holds; the batch delay set, to
    show that only an endpoint turns traces on."""
    return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            "OTEL_BSP_SCHEDULE_DELAY": str(BATCH_DELAY_MS), **extra}


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def minter_of(idp: LocalIdP) -> Minter:
    return Minter(idp.issuer, idp.primary)  # type: ignore[attr-defined]


def sent_for(span: Received, traceparent: str | None) -> bool:
    """Whether the provider received `span` as the parent of its own (sampled; the flags may also
    carry W3C level 2's random-trace-id bit)."""
    prefix = f"00-{span.trace_id}-{span.span_id}-"
    return traceparent is not None and traceparent.startswith(prefix) and int(traceparent[len(prefix):], 16) & 1 == 1


def no_secrets_in(spans: list[Received], *secrets_: str) -> None:
    for span in spans:
        for value in [span.name, *map(str, span.attributes.values())]:
            assert not any(s in value for s in secrets_), (span.name, value)


# --- tracing on ----------------------------------------------------------------------------------

def test_an_introspected_request_s_calls_are_spans_of_its_trace(
        server_mode: str, receiver: Receiver, traced_idp: tuple[LocalIdP, list[str | None]],
        redis_server: RedisServer, watch: Watch) -> None:
    """In kcauth's core (a supervisor forking its workers) and in kong-pdk's gevent mode (one
    process, a greenlet per event)."""
    idp, seen = traced_idp
    with own_gateway(server_mode, env={**tracing_env(receiver), **watch.env}) as kong:
        entity = kong.plugin(sensitive_config(idp, redis=redis_server.plugin_config()))
        token = minter_of(idp).token()
        traceparent, trace_id, parent_id = new_traceparent()
        res = kong.request(entity, [*bearer(token), ("traceparent", traceparent), ("tracestate", "vendor=opaque")])
        assert res.status == 200, res.body
        receiver.wait_for(lambda s: s.trace_id == trace_id and s.attributes.get("kcauth.call") in (
            "introspection", "get", "put"), count=3)  # the answer asked of Redis, of Keycloak, then shared
        ours = receiver.wait_for(lambda s: s.trace_id == trace_id)

        introspection = [s for s in ours if s.name == "POST introspection"]
        assert len(introspection) == 1, [s.name for s in ours]
        call = introspection[0]
        assert call.parent_id == parent_id and call.kind == Span.SpanKind.SPAN_KIND_CLIENT and not call.error
        assert call.trace_state == "vendor=opaque"
        assert call.attributes == {
            "http.request.method": "POST", "url.full": f"{idp.issuer}/protocol/openid-connect/token/introspect",
            "server.address": "127.0.0.1", "server.port": idp.port, "http.response.status_code": 200,
            "kcauth.call": "introspection"}
        # The provider was told this call's span: its own spans would join the trace under it.
        assert len(seen) == 1 and sent_for(call, seen[0])

        redis_calls = {s.attributes["kcauth.call"]: s for s in ours if s.attributes.get("db.system.name") == "redis"}
        assert set(redis_calls) >= {"get", "put"}, [s.name for s in ours]
        for method, command in (("get", "GET"), ("put", "SET")):
            span = redis_calls[method]
            assert span.name == command and span.parent_id == parent_id and not span.error
            assert span.attributes == {"db.system.name": "redis", "db.operation.name": command,
                                       "kcauth.call": method, "server.address": "127.0.0.1",
                                       "server.port": redis_server.port}
        assert all(s.parent_id == parent_id for s in ours)
        assert call.resource["service.name"] == "kcauth" and "service.version" in call.resource

        # The key set: fetched at instance start or for this request, a span either way.
        keys = receiver.wait_for(lambda s: s.name == "GET keys")
        assert keys and keys[0].attributes["url.full"] == idp.jwks_uri and keys[0].attributes["kcauth.call"] == "keys"
        discovery = receiver.wait_for(lambda s: s.name == "GET discovery")
        assert discovery[0].attributes["url.full"] == f"{idp.issuer}/.well-known/openid-configuration"

        # Nothing of the token, the client's secret or the user is in a span.
        no_secrets_in(receiver.spans, token, CLIENT_SECRET, jwt_part(token, 1)["sub"], "alice")

        importers = watch.by_kcauth()
        assert set(importers) & set(kong.server.tree_pids()), importers
        assert "opentelemetry.sdk.trace" in watch.tracing_loaded()
        if server_mode == "core":  # a worker made its provider after its fork, never the supervisor
            assert kong.server.pid not in importers, "the supervisor imported OpenTelemetry"


def test_a_request_without_a_traceparent_gives_root_spans_and_a_failure_is_an_error(
        receiver: Receiver, traced_idp: tuple[LocalIdP, list[str | None]]) -> None:
    idp, seen = traced_idp
    with own_gateway(env=tracing_env(receiver)) as kong:
        entity = kong.plugin(sensitive_config(idp))
        assert kong.request(entity, bearer(minter_of(idp).token())).status == 200
        roots = receiver.wait_for(lambda s: s.name == "POST introspection")
        assert len(roots) == 1 and roots[0].parent_id == "" and not roots[0].error
        assert sent_for(roots[0], seen[0])

        idp.fail_with = 500
        traceparent, trace_id, parent_id = new_traceparent()
        res = kong.request(entity, [*bearer(minter_of(idp).token()), ("traceparent", traceparent)])
        assert res.status == 503
        failed = receiver.wait_for(lambda s: s.trace_id == trace_id and s.name == "POST introspection")
        assert len(failed) == 1 and failed[0].parent_id == parent_id and failed[0].error
        assert failed[0].attributes["http.response.status_code"] == 500
        assert failed[0].attributes["error.type"] == "500"

        # The next request, on the handler greenlet the last one used, is not in its trace.
        idp.fail_with = None
        assert kong.request(entity, bearer(minter_of(idp).token())).status == 200
        after = receiver.wait_for(lambda s: s.name == "POST introspection" and not s.error, count=2)
        assert len(after) == 2 and after[1].parent_id == "" and after[1].trace_id != trace_id


@pytest.mark.parametrize("header", [
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # an all-zero trace id
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 with more
    "not a traceparent at all",
    ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"] * 2,  # two header lines
])
def test_a_malformed_traceparent_is_ignored_and_the_request_served(
        receiver: Receiver, traced_idp: tuple[LocalIdP, list[str | None]], header: str | list[str]) -> None:
    idp, _ = traced_idp
    with own_gateway(env=tracing_env(receiver)) as kong:
        entity = kong.plugin(sensitive_config(idp))
        lines = header if isinstance(header, list) else [header]
        res = kong.request(entity, [*bearer(minter_of(idp).token()), *(("traceparent", h) for h in lines)])
        assert res.status == 200, res.body
        spans = receiver.wait_for(lambda s: s.name == "POST introspection")
        assert len(spans) == 1 and spans[0].parent_id == ""  # a root of a new trace
        assert spans[0].trace_id not in ("0" * 32, "4bf92f3577b34da6a3ce929d0e0e4736")


# --- tracing off ---------------------------------------------------------------------------------

def test_without_an_endpoint_nothing_is_exported_and_opentelemetry_never_imported(
        receiver: Receiver, traced_idp: tuple[LocalIdP, list[str | None]], redis_server: RedisServer,
        watch: Watch) -> None:
    idp, seen = traced_idp
    with own_gateway(env={**untraced_env(), **watch.env}) as kong:
        entity = kong.plugin(sensitive_config(idp, redis=redis_server.plugin_config()))
        traceparent, _, _ = new_traceparent()
        for _ in range(3):
            res = kong.request(entity, [*bearer(minter_of(idp).token()), ("traceparent", traceparent)])
            assert res.status == 200, res.body
        time.sleep(QUIET)
        assert receiver.posts == 0 and receiver.spans == []
        assert seen == [None, None, None], "no traceparent is sent on"
        assert watch.imports(), "the import watch saw nothing (redis-py's own import): it does not work"
        assert watch.by_kcauth() == {}, "kcauth imported OpenTelemetry"
        assert watch.tracing_loaded() == set(), "OpenTelemetry's tracing was loaded"
        assert "opentelemetry" not in kong.server.log().lower()


def test_an_endpoint_without_the_extra_is_one_error_line_and_requests_are_served(
        receiver: Receiver, traced_idp: tuple[LocalIdP, list[str | None]], watch: Watch) -> None:
    idp, _ = traced_idp
    env = {**tracing_env(receiver), **watch.env, "KCAUTH_TEST_REFUSE_OTEL": "1"}
    with own_gateway(env=env) as kong:
        entity = kong.plugin(sensitive_config(idp))
        for _ in range(3):
            assert kong.request(entity, bearer(minter_of(idp).token())).status == 200
        time.sleep(QUIET)
        assert receiver.posts == 0
        lines = [line for line in kong.server.log().splitlines() if "kong-plugin-kcauth[tracing]" in line]
        assert len(lines) == 1, kong.server.log()  # one worker (the harness's default): one line
        assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set but OpenTelemetry is not installed" in lines[0]


# --- the request's trace: parsing, without a server ------------------------------------------------

def test_traceparent_parsing_follows_w3c_trace_context() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_traceparent(good) == Parent(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)
    assert parse_traceparent(good, "a=1,b=2") == Parent(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1,
                                                         "a=1,b=2")
    assert parse_traceparent([good], ["a=1", "b=2"]).state == "a=1,b=2"  # type: ignore[union-attr]
    assert parse_traceparent(good, "x" * 600).state is None  # type: ignore[union-attr]
    # A later version may add fields after a dash; version 00 may not.
    assert parse_traceparent("01" + good[2:] + "-more") is not None
    assert parse_traceparent("01" + good[2:] + "more") is None
    for bad in (None, 7, [good, good], "", good.upper(), good[:-1], good + "-", "ff" + good[2:],
                "00-" + "0" * 32 + good[35:], good[:36] + "0" * 16 + good[52:], good.replace("-", "_")):
        assert parse_traceparent(bad) is None, bad


def test_urls_lose_credentials_query_and_fragment() -> None:
    assert public_url("https://user:pw@sso.example.com:8443/realms/a/x?token=abc#frag") == \
        "https://sso.example.com:8443/realms/a/x"
    assert public_url("http://[::1]:8080/realms/a?x=1") == "http://[::1]:8080/realms/a"
    assert public_url("http://sso.example.com:99999/") == ""  # a port out of range: nothing said


def test_only_an_endpoint_turns_traces_on() -> None:
    assert configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not configured({})
    assert not configured({"OTEL_EXPORTER_OTLP_ENDPOINT": " ", "OTEL_SERVICE_NAME": "kcauth",
                           "OTEL_BSP_SCHEDULE_DELAY": "100"})
    assert not configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "True"})
