"""An HTTP stand-in for Kong's proxy, built on the Kong-side harness.

Real HTTP in, Kong's access phase through the real plugin server (tests/harness/kong.py), then the
bundled ACL plugin's semantics, then a real HTTP request to the upstream. Routes match by path
prefix like Kong's default router (longest prefix first, `strip_path` on by default). Used where
something outside the tests must reach the gateway over HTTP: Keycloak's back-channel logout
POSTs, the no-Docker demo, the spec runner over HTTP.
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .declarative import Declarative, UnsupportedFeature, load
from .kong import Kong, PluginEntity

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass
class Route:
    name: str
    paths: list[str]
    upstream: str  # the service URL
    strip_path: bool = True
    methods: list[str] | None = None
    kcauth: PluginEntity | None = None
    acl_allow: list[str] | None = None
    acl_always_use_authenticated_groups: bool = False
    hits: int = field(default=0, compare=False)

    def match(self, method: str, path: str) -> int:
        """Length of the matching path prefix, or -1."""
        if self.methods and method not in self.methods:
            return -1
        best = -1
        for prefix in self.paths:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/") or prefix == "/":
                best = max(best, len(prefix))
        return best


class Gateway:
    def __init__(self, kong: Kong, routes: list[Route]) -> None:
        self.kong = kong
        self.routes = routes
        self._server: ThreadingHTTPServer | None = None
        self._admin: ThreadingHTTPServer | None = None

    @classmethod
    def from_declarative(cls, kong: Kong, decl: Declarative) -> Gateway:
        """Routes and plugin entities of a loaded kong.yml (kcauth configs are validated and
        defaulted by Kong's schema rules, as Kong does when it loads the file)."""
        kong.consumers = decl.consumers
        routes = []
        for spec in decl.routes:
            kcauth = spec.plugins.get("kcauth")
            acl = spec.plugins.get("acl")
            routes.append(Route(
                name=spec.name, paths=spec.paths, upstream=spec.service_url, strip_path=spec.strip_path,
                methods=spec.methods, kcauth=kong.plugin(kcauth, route_id=spec.name) if kcauth is not None else None,
                acl_allow=list(acl.get("allow") or []) if acl is not None else None,
                acl_always_use_authenticated_groups=bool(acl and acl.get("always_use_authenticated_groups")),
            ))
        return cls(kong, routes)

    def route_for(self, method: str, path: str) -> Route | None:
        scored = [(r.match(method, path), r) for r in self.routes]
        scored = [(score, r) for score, r in scored if score >= 0]
        return max(scored, key=lambda sr: sr[0])[1] if scored else None

    def handle(self, method: str, target: str, headers: list[tuple[str, bytes]], body: bytes
               ) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(target)
        route = self.route_for(method, parts.path)
        if route is None:
            return _json(404, {"message": "no Route matched with those values"})
        route.hits += 1
        if route.kcauth is not None:
            res = self.kong.request(route.kcauth, headers, route.acl_allow, method=method, path=parts.path,
                                    query=parts.query, body=body,
                                    acl_always_use_authenticated_groups=route.acl_always_use_authenticated_groups)
            if not res.proxied:
                return _kong_exit(res.status, res.body, res.headers)
            headers = [(n, v if isinstance(v, bytes) else v.encode("latin-1", "replace"))
                       for n, v in res.upstream_headers]
        elif route.acl_allow is not None:
            return _json(401, {"message": "Unauthorized"})
        path = parts.path
        if route.strip_path:
            prefix = max((p for p in route.paths if route.match(method, path) == len(p)), key=len, default="")
            path = "/" + path[len(prefix):].lstrip("/")
        return _forward(route.upstream, method, path, parts.query, headers, body)

    # -- serving --

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Gateway:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                # Header values as the client sent them (http.server decodes them as latin-1).
                raw = [(n, v.encode("latin-1")) for n, v in self.headers.items()]
                try:
                    status, out_headers, out_body = gateway.handle(self.command, self.path, raw, body)
                except Exception as exc:  # the stand-in's own fault: say so, as Kong would with 500
                    status, out_headers, out_body = _json(500, {"message": f"gateway: {type(exc).__name__}"})
                self.send_response(status)
                for name, value in out_headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(out_body)))
                self.end_headers()
                self.wfile.write(out_body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="gateway").start()
        return self

    def serve_admin(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """The one Admin API call the stand-in answers: DB-less `POST /config` (a declarative
        config as JSON), which replaces every route, as Kong's does. Returns its URL."""
        gateway = self

        class Admin(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    if self.path.split("?")[0] != "/config":
                        raise UnsupportedFeature(f"Admin API {self.path} is not emulated (only POST /config)")
                    doc = json.loads(self.rfile.read(length))
                    gateway.routes = Gateway.from_declarative(gateway.kong, load(doc)).routes
                    status, body = 201, {"message": "configuration replaced"}
                except (UnsupportedFeature, ValueError) as exc:
                    status, body = 400, {"message": str(exc)}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._admin = ThreadingHTTPServer((host, port), Admin)
        self._admin.daemon_threads = True
        threading.Thread(target=self._admin.serve_forever, daemon=True, name="gateway-admin").start()
        return f"http://{host}:{self._admin.server_address[1]}"

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for server in (self._server, self._admin):
            if server is not None:
                server.shutdown()
                server.server_close()


def _json(status: int, body: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json; charset=utf-8")], json.dumps(body).encode()


def _kong_exit(status: int, body: Any, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    """kong/pdk/response.lua exit: a table body is sent as JSON."""
    out = [(k, v) for k, v in headers.items()]
    if isinstance(body, (dict, list)):
        out.append(("Content-Type", "application/json; charset=utf-8"))
        return status, out, json.dumps(body).encode()
    return status, out, (body or "").encode() if isinstance(body, str) else (body or b"")


def _forward(upstream: str, method: str, path: str, query: str, headers: list[tuple[str, bytes]],
             body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    base = urlsplit(upstream)
    conn = http.client.HTTPConnection(base.hostname, base.port or 80, timeout=30)
    try:
        target = (base.path.rstrip("/") + path) or "/"
        conn.putrequest(method, target + (f"?{query}" if query else ""), skip_accept_encoding=True)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        out = [(n, v) for n, v in resp.getheaders() if n.lower() not in HOP_BY_HOP]
        return resp.status, out, data
    except OSError:
        return _json(502, {"message": "An invalid response was received from the upstream server"})
    finally:
        conn.close()


class EchoUpstream:
    """An upstream that answers every request with what it received, as JSON."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                data = json.dumps({
                    "method": self.command, "path": self.path,
                    "headers": {n.lower(): self.headers.get_all(n) for n in set(self.headers.keys())},
                    "body": body.decode("utf-8", "replace"),
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="echo").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
