"""An HTTP stand-in for Kong's proxy, built on the Kong-side harness.

Real HTTP in, what nginx refuses while reading the request header (tests/harness/nginx.py, with
the Kong instance's `large_client_header_buffers`), Kong's access phase through the real plugin
server (tests/harness/kong.py), then the bundled ACL plugin's semantics, then a real HTTP request
to the upstream. Routes match by path prefix like Kong's default router (longest prefix first,
`strip_path` on by default). Used where something outside the tests must reach the gateway over
HTTP: Keycloak's back-channel logout POSTs, the no-Docker demo, the spec runner over HTTP.
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from . import nginx
from .declarative import Declarative, UnsupportedFeature, load
from .httpd import Reply, json_reply, serve
from .kong import Kong, PluginEntity

# kong/plugins/request-termination/handler.lua: the default message for a status.
_DEFAULT_MESSAGES = {401: "Unauthorized", 404: "Not found", 405: "Method not allowed",
                     500: "An unexpected error occurred", 502: "Bad Gateway", 503: "Service unavailable"}

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
    # request-termination (priority 2, after kcauth and ACL): (status, message)
    terminate: tuple[int, str | None] | None = None
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
            termination = spec.plugins.get("request-termination")
            routes.append(Route(
                name=spec.name, paths=spec.paths, upstream=spec.service_url, strip_path=spec.strip_path,
                methods=spec.methods, kcauth=kong.plugin(kcauth, route_id=spec.name) if kcauth is not None else None,
                acl_allow=list(acl.get("allow") or []) if acl is not None else None,
                acl_always_use_authenticated_groups=bool(acl and acl.get("always_use_authenticated_groups")),
                terminate=(int(termination.get("status_code", 503)), termination.get("message"))
                if termination is not None else None,
            ))
        return cls(kong, routes)

    def route_for(self, method: str, path: str) -> Route | None:
        scored = [(r.match(method, path), r) for r in self.routes]
        scored = [(score, r) for score, r in scored if score >= 0]
        return max(scored, key=lambda sr: sr[0])[1] if scored else None

    def handle(self, method: str, target: str, headers: list[tuple[str, bytes]], body: bytes) -> Reply:
        # nginx reads the header before Kong routes anything. http.server passes the lines in the
        # order sent (each up to http.client._MAXLINE, 65536 bytes; at most 100 of them).
        refused = nginx.front(headers, self.kong.large_client_header_buffers,
                              request_line=f"{method} {target} HTTP/1.1")
        if refused is not None:
            return refused.status, list(refused.headers.items()), refused.text
        parts = urlsplit(target)
        route = self.route_for(method, parts.path)
        if route is None:
            return json_reply(404, {"message": "no Route matched with those values"})
        route.hits += 1
        if route.kcauth is not None:
            res = self.kong.request(route.kcauth, headers, route.acl_allow, method=method, path=parts.path,
                                    query=parts.query, body=body, nginx=False,  # done above
                                    acl_always_use_authenticated_groups=route.acl_always_use_authenticated_groups)
            if not res.proxied:
                return _kong_exit(res.status, res.body, res.headers)
            headers = [(n, v if isinstance(v, bytes) else v.encode("latin-1", "replace"))
                       for n, v in res.upstream_headers]
        elif route.acl_allow is not None:
            return json_reply(401, {"message": "Unauthorized"})
        if route.terminate is not None:  # kong/plugins/request-termination/handler.lua
            status, message = route.terminate
            return json_reply(status, {"message": message or _DEFAULT_MESSAGES.get(status, "")})
        path = parts.path
        if route.strip_path:
            prefix = max((p for p in route.paths if route.match(method, path) == len(p)), key=len, default="")
            path = "/" + path[len(prefix):].lstrip("/")
        return _forward(route.upstream, method, path, parts.query, headers, body)

    # -- serving --

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Gateway:
        self._server = serve(self.handle, host, port, name="gateway")
        return self

    def serve_admin(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """The one Admin API call the stand-in answers: DB-less `POST /config` (a declarative
        config as JSON), which replaces every route, as Kong's does. Returns its URL."""

        def handle(method: str, target: str, headers: list[tuple[str, bytes]], body: bytes) -> Reply:
            if (method, target.split("?")[0]) != ("POST", "/config"):
                return json_reply(404, {"message": f"{method} {target} is not emulated (only POST /config)"})
            try:
                self.routes = Gateway.from_declarative(self.kong, load(json.loads(body))).routes
            except (UnsupportedFeature, ValueError) as exc:
                return json_reply(400, {"message": str(exc)})
            return json_reply(201, {"message": "configuration replaced"})

        self._admin = serve(handle, host, port, name="gateway-admin")
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


def _kong_exit(status: int, body: Any, headers: dict[str, str]) -> Reply:
    """kong/pdk/response.lua exit: a table body is sent as JSON."""
    out = [(k, v) for k, v in headers.items()]
    if isinstance(body, (dict, list)):
        out.append(("Content-Type", "application/json; charset=utf-8"))
        return status, out, json.dumps(body).encode()
    return status, out, (body or "").encode() if isinstance(body, str) else (body or b"")


def _forward(upstream: str, method: str, path: str, query: str, headers: list[tuple[str, bytes]],
             body: bytes) -> Reply:
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
        return json_reply(502, {"message": "An invalid response was received from the upstream server"})
    finally:
        conn.close()


class EchoUpstream:
    """An upstream that answers every request with what it received, as JSON (every value of
    every header, so duplicates show), and how many requests it has answered (`hits`)."""

    def __init__(self) -> None:
        self.hits = 0
        lock = threading.Lock()

        def handle(method: str, target: str, headers: list[tuple[str, bytes]], body: bytes) -> Reply:
            with lock:
                self.hits += 1
                hits = self.hits
            seen: dict[str, list[str]] = {}
            for name, value in headers:
                seen.setdefault(name.lower(), []).append(value.decode("latin-1"))
            return json_reply(200, {"method": method, "path": target, "headers": seen,
                                    "body": body.decode("utf-8", "replace"), "hits": hits})

        self._server = serve(handle, name="echo")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
