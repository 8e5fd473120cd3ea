"""A threaded HTTP/1.1 server on loopback around one function, for the test services
(gateway stand-in, its Admin API, echo upstream, local IdP)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, list[tuple[str, str]], bytes]
# (method, target, headers as the client sent them, body) -> reply
Handle = Callable[[str, str, list[tuple[str, bytes]], bytes], Reply]


def json_reply(status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
    return status, [("Content-Type", "application/json; charset=utf-8"), *(headers or [])], json.dumps(body).encode()


def serve(handle: Handle, host: str = "127.0.0.1", port: int = 0, name: str = "httpd") -> ThreadingHTTPServer:
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
                status, headers, data = handle(self.command, self.path, raw, body)
            except Exception as exc:  # the service's own fault: a 500 that says so
                status, headers, data = json_reply(500, {"message": f"{name}: {type(exc).__name__}"})
            self.send_response(status)
            for header, value in headers:
                self.send_header(header, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True, name=name).start()
    return server
