"""A counting, fault-injecting HTTP/1.1 reverse proxy for tests (standard library only).

Put it between the plugin and an upstream (a real Keycloak, or the local IdP) to count how often
each endpoint is hit (discovery, certs, introspection, token) and to make that upstream misbehave
on demand: 500s, non-JSON bodies, HTML pages, hangs, refused or reset connections.

Transparency: method, path, query, headers (Host included, hop-by-hop ones excluded) and body go
upstream unchanged; the upstream's status, headers and body come back unchanged, except that
bodies are re-framed with Content-Length. Forwarding Host means a Keycloak without a fixed
hostname advertises the proxy's URLs in its discovery document, so follow-up fetches (jwks_uri)
are counted too.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import socketserver
import ssl
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

Mode = Literal["pass", "status500", "garbage", "html", "hang", "refuse", "reset"]
MODES: frozenset[str] = frozenset(get_args(Mode))

HOST = "127.0.0.1"
# RFC 9110 section 7.6.1, plus the legacy Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
MAX_BODY = 64 * 1024 * 1024  # a test proxy has no business buffering more than this
JOIN_TIMEOUT = 5.0

GARBAGE_BODY = b"this is not JSON {\x00"
HTML_BODY = b"<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Service Unavailable</h1></body></html>"
ERROR_BODY = json.dumps({"error": "proxy_fault", "error_description": "HTTP 500 injected by CountingProxy"}).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # stop() must not wait for a handler stuck on a slow upstream
    request_queue_size = 128  # socketserver's default backlog of 5 drops bursts of concurrent clients

    def __init__(self, address: tuple[str, int], proxy: CountingProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves a FQDN (a DNS lookup) on every bind; we only need the port.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connections we drop on purpose (refuse, reset, stop) end in socket errors: not news.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so pooled clients behave as against a real server
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _handle(self) -> None:
        self.server.proxy._serve(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    # -- helpers used by CountingProxy._serve ------------------------------------------------

    def read_body(self) -> bytes | None:
        """The request body (None when the request has none), chunked encoding decoded."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers until the blank line, bounded so a bad client cannot loop us forever.
                    for _ in range(100):
                        if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)  # the CRLF closing each chunk
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        size = int(length)
        if size < 0 or size > MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(size)

    def reply(self, status: int, headers: list[tuple[str, str]], body: bytes, send_body: bool = True) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)
        self.wfile.flush()

    def drop(self) -> None:
        """Close without answering; SO_LINGER 0 makes it an RST, like a crashed server."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


class CountingProxy:
    """Reverse proxy on 127.0.0.1 in front of `upstream` (a base URL, http or https).

    `mode` and `fault_path_suffix` may be changed at any time, from any thread. Faults apply to
    request paths ending with `fault_path_suffix` (all paths when None), except "refuse", which
    closes the listening socket and so refuses every new connection. Every request that reaches
    the proxy is counted, faulted ones included; connections refused in "refuse" mode never reach
    it and are not counted.
    """

    def __init__(
        self,
        upstream: str,
        *,
        mode: Mode = "pass",
        fault_path_suffix: str | None = None,
        hang_seconds: float = 30.0,
        upstream_timeout: float = 30.0,
        port: int = 0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) base URL, got {upstream!r}")
        self._check_mode(mode)
        self.upstream = upstream.rstrip("/")
        self._scheme = parts.scheme
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
        self._upstream_netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self.fault_path_suffix = fault_path_suffix
        self.hang_seconds = hang_seconds
        self.upstream_timeout = upstream_timeout
        self._port = port
        self._mode: Mode = mode
        # Applied to what the upstream answered to paths ending with `fault_path_suffix` (all
        # paths when None) in "pass" mode: (path with query, body) -> the body sent on.
        self.rewrite: Callable[[str, bytes], bytes] | None = None

        self._lock = threading.Lock()  # counts, bodies, connections
        self._state = threading.RLock()  # listener and mode transitions
        self._counts: dict[str, int] = {}
        self._bodies: dict[str, bytes] = {}
        self._connections: set[socket.socket] = set()
        self._release = threading.Event()  # set (and replaced) to free requests held by "hang"
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = False

    # -- public API --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("CountingProxy has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, new: Mode) -> None:
        self._check_mode(new)
        with self._state:
            old, self._mode = self._mode, new
            if old == "hang" and new != "hang":
                self._release_held()
            if not self._started or self._stopping.is_set():
                return
            if new == "refuse" and old != "refuse":
                self._close_listener()
                self._drop_connections()  # as if the server died: pooled clients must reconnect
            elif old == "refuse" and new != "refuse":
                self._open_listener()

    @property
    def counts(self) -> dict[str, int]:
        """A snapshot of requests per path (query string excluded)."""
        with self._lock:
            return dict(self._counts)

    @property
    def bodies(self) -> dict[str, bytes]:
        """A snapshot of the last request body per path (b"" for requests without one)."""
        with self._lock:
            return dict(self._bodies)

    def count(self, path_suffix: str = "") -> int:
        """Requests to all paths ending with `path_suffix` ("" counts everything)."""
        with self._lock:
            return sum(n for path, n in self._counts.items() if path.endswith(path_suffix))

    def last_body(self, path_suffix: str = "") -> bytes | None:
        """The last body recorded for a path ending with `path_suffix` (None if no such request)."""
        with self._lock:
            # dicts keep insertion order; re-inserting on every request keeps the latest last.
            for path in reversed(self._bodies):
                if path.endswith(path_suffix):
                    return self._bodies[path]
        return None

    def reset(self) -> None:
        """Forget counts and bodies (mode and fault settings are kept)."""
        with self._lock:
            self._counts.clear()
            self._bodies.clear()

    def start(self) -> CountingProxy:
        with self._state:
            if self._started:
                raise RuntimeError("CountingProxy already started")
            self._stopping.clear()
            self._open_listener()
            self._started = True
            if self._mode == "refuse":
                self._close_listener()  # the port is now known and kept for when refuse ends
        return self

    def stop(self) -> None:
        """Stop listening, free held requests and drop open connections; idempotent."""
        with self._state:
            if not self._started:
                return
            self._stopping.set()
            self._release_held()
            self._close_listener()
            self._drop_connections()
            self._started = False

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- listener --------------------------------------------------------------------------

    def _open_listener(self) -> None:
        # HTTPServer sets SO_REUSEADDR, so re-binding the same port after "refuse" works even
        # with connections of the previous listener still in TIME_WAIT.
        server = _Server((HOST, self._port), self)
        self._port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"CountingProxy:{self._port}", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread

    def _close_listener(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()  # returns within one poll interval
        server.server_close()
        if thread is not None:
            thread.join(JOIN_TIMEOUT)

    # -- connections -------------------------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _drop_connections(self) -> None:
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            # shutdown, not close: the handler thread owns the descriptor and closes it.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _release_held(self) -> None:
        self._release.set()
        self._release = threading.Event()

    # -- request handling ----------------------------------------------------------------------

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")

    def _effective_mode(self, path: str) -> Mode:
        suffix = self.fault_path_suffix
        if suffix is not None and not path.endswith(suffix):
            return "pass"
        return self._mode

    def _serve(self, handler: _Handler) -> None:
        target = handler.path
        if "://" in target.split("?", 1)[0]:  # absolute-form request target
            parts = urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        path = target.split("?", 1)[0] or "/"
        try:
            body = handler.read_body()
        except ValueError:
            handler.reply(
                400, [("Content-Type", "text/plain"), ("Content-Length", "11"), ("Connection", "close")], b"bad request"
            )
            handler.close_connection = True
            return
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1
            self._bodies.pop(path, None)
            self._bodies[path] = body or b""

        mode = self._effective_mode(path)
        if mode == "hang":
            release = self._release  # captured now: a later mode change sets exactly this event
            release.wait(self.hang_seconds)
            if self._stopping.is_set():
                handler.drop()
                return
            mode = self._effective_mode(path)  # released: answer as the current mode says
            if mode == "hang":
                handler.drop()  # hang_seconds elapsed: give up like a server-side timeout
                return

        if mode in ("reset", "refuse"):
            # "refuse" here means a keep-alive connection that predates the switch.
            handler.drop()
        elif mode == "status500":
            handler.reply(
                500,
                [("Content-Type", "application/json"), ("Content-Length", str(len(ERROR_BODY)))],
                ERROR_BODY,
                handler.command != "HEAD",
            )
        elif mode == "garbage":
            handler.reply(
                200,
                [("Content-Type", "application/json"), ("Content-Length", str(len(GARBAGE_BODY)))],
                GARBAGE_BODY,
                handler.command != "HEAD",
            )
        elif mode == "html":
            handler.reply(
                200,
                [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(HTML_BODY)))],
                HTML_BODY,
                handler.command != "HEAD",
            )
        else:
            rewrite = self.rewrite if self._effective_mode(path) == "pass" and (
                self.fault_path_suffix is None or path.endswith(self.fault_path_suffix)) else None
            self._forward(handler, target, body, rewrite)

    def _forward(self, handler: _Handler, target: str, body: bytes | None,
                 rewrite: Callable[[str, bytes], bytes] | None = None) -> None:
        # Headers named in Connection are hop-by-hop too (RFC 9110 section 7.6.1).
        listed = {
            name.strip().lower() for value in handler.headers.get_all("Connection", []) for name in value.split(",")
        }
        skip = HOP_BY_HOP | listed | {"content-length"}
        conn: http.client.HTTPConnection
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(
                self._upstream_host,
                self._upstream_port,
                timeout=self.upstream_timeout,
                context=ssl.create_default_context(),
            )
        else:
            conn = http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=self.upstream_timeout)
        try:
            # skip_*: send exactly the client's headers, not http.client's defaults.
            conn.putrequest(handler.command, self._prefix + target, skip_host=True, skip_accept_encoding=True)
            sent_host = False
            for name, value in handler.headers.items():
                if name.lower() in skip:
                    continue
                sent_host = sent_host or name.lower() == "host"
                conn.putheader(name, value)
            if not sent_host:  # an HTTP/1.0 client may omit Host; upstream needs one
                conn.putheader("Host", self._upstream_netloc)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            payload = response.read()
            status, headers = response.status, response.getheaders()
        except (OSError, http.client.HTTPException) as exc:
            error = json.dumps(
                {"error": "bad_gateway", "error_description": f"upstream {self.upstream}: {exc}"}
            ).encode()
            handler.reply(
                502,
                [("Content-Type", "application/json"), ("Content-Length", str(len(error)))],
                error,
                handler.command != "HEAD",
            )
            return
        finally:
            conn.close()
        if rewrite is not None and status == 200:
            payload = rewrite(target, payload)

        no_body = handler.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        out = [
            (name, value)
            for name, value in headers
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"
        ]
        if no_body:
            # Keep the upstream's length: for HEAD it describes the body a GET would return.
            out += [(name, value) for name, value in headers if name.lower() == "content-length"]
        else:
            out.append(("Content-Length", str(len(payload))))
        handler.reply(status, out, payload, not no_body)
