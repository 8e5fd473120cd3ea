"""CountingProxy against a tiny local JSON upstream: forwarding, counting, every fault mode."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.harness.proxy import CountingProxy

CERTS = "/realms/demo/protocol/openid-connect/certs"
TOKEN = "/realms/demo/protocol/openid-connect/token"


class _BurstServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 would drop the concurrency tests' bursts


class Upstream:
    """Echoes each request as JSON; `?status=N` picks the status, /slow sleeps `?s=` seconds."""

    def __init__(self) -> None:
        self.hits = 0
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                with upstream.lock:
                    upstream.hits += 1
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                if path == "/slow":
                    time.sleep(min(float(params.get("s", "0.5")), 5))
                status = int(params.get("status", "200"))
                payload = json.dumps(
                    {
                        "method": self.command,
                        "path": path,
                        "query": query,
                        "body": body.decode(),
                        "headers": dict(self.headers.items()),
                    }
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Upstream", "yes")
                self.send_header("Set-Cookie", "a=1")
                self.send_header("Set-Cookie", "b=2")
                if status in (204, 304):
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

        self.server = _BurstServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[CountingProxy]:
    with CountingProxy(upstream.url) as proxy:
        yield proxy


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


# -- pass ----------------------------------------------------------------------------------------


def test_forwards_method_path_query_headers_body(proxy: CountingProxy) -> None:
    response = requests.post(
        f"{proxy.url}{TOKEN}?x=1&y=two",
        data={"grant_type": "client_credentials"},
        headers={"X-Custom": "v", "Authorization": "Basic abc"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["X-Upstream"] == "yes"
    assert response.headers["Content-Type"] == "application/json"
    echoed = response.json()
    assert echoed["method"] == "POST"
    assert echoed["path"] == TOKEN
    assert echoed["query"] == "x=1&y=two"
    assert echoed["body"] == "grant_type=client_credentials"
    assert echoed["headers"]["X-Custom"] == "v"
    assert echoed["headers"]["Authorization"] == "Basic abc"
    assert echoed["headers"]["Host"] == f"127.0.0.1:{proxy.port}"  # Host passes through
    assert proxy.last_body(TOKEN) == b"grant_type=client_credentials"
    assert proxy.count(TOKEN) == 1


def test_hop_by_hop_headers_not_forwarded(proxy: CountingProxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request(
        "GET",
        CERTS,
        headers={
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "x",
            "TE": "trailers",
            "X-End": "2",
        },
    )
    response = conn.getresponse()
    headers = json.loads(response.read())["headers"]
    conn.close()
    lowered = {name.lower() for name in headers}
    assert "x-end" in lowered
    assert not lowered & {"x-hop", "keep-alive", "proxy-authorization", "te"}
    assert headers.get("Connection") in (None, "keep-alive")  # only what http.client adds itself


def test_status_and_repeated_headers_preserved(proxy: CountingProxy) -> None:
    response = requests.get(f"{proxy.url}/missing?status=404", timeout=5)
    assert response.status_code == 404
    assert response.json()["path"] == "/missing"
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", "/x")
    raw = conn.getresponse()
    raw.read()
    assert raw.msg.get_all("Set-Cookie") == ["a=1", "b=2"]
    conn.close()


def test_head_and_no_content(proxy: CountingProxy) -> None:
    head = requests.head(f"{proxy.url}{CERTS}", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) > 0
    empty = requests.delete(f"{proxy.url}/thing?status=204", timeout=5)
    assert empty.status_code == 204 and empty.content == b""
    # The keep-alive connection is still usable after bodiless answers.
    with requests.Session() as session:
        for _ in range(3):
            assert session.head(f"{proxy.url}/h", timeout=5).status_code == 200
            assert session.get(f"{proxy.url}/h", timeout=5).json()["path"] == "/h"


def test_chunked_request_body(proxy: CountingProxy) -> None:
    response = requests.put(f"{proxy.url}/chunked", data=iter([b"hello ", b"world"]), timeout=5)
    assert response.json()["body"] == "hello world"
    assert proxy.last_body("/chunked") == b"hello world"


def test_upstream_down_is_502() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    with CountingProxy(f"http://127.0.0.1:{dead}") as proxy:
        response = requests.get(f"{proxy.url}{CERTS}", timeout=5)
        assert response.status_code == 502
        assert response.json()["error"] == "bad_gateway"
        assert proxy.count(CERTS) == 1


def test_upstream_base_path_prefix(upstream: Upstream) -> None:
    with CountingProxy(upstream.url + "/auth/") as proxy:
        assert requests.get(f"{proxy.url}{CERTS}?a=b", timeout=5).json()["path"] == "/auth" + CERTS
        assert proxy.count(CERTS) == 1  # counted by the path the client asked for


# -- counting ------------------------------------------------------------------------------------


def test_counts_by_path_and_reset(proxy: CountingProxy) -> None:
    for _ in range(3):
        requests.get(f"{proxy.url}{CERTS}?ignored=1", timeout=5)
    requests.get(f"{proxy.url}/realms/demo/.well-known/openid-configuration", timeout=5)
    requests.post(f"{proxy.url}{TOKEN}", data=b"first", timeout=5)
    requests.post(f"{proxy.url}{TOKEN}", data=b"second", timeout=5)
    assert proxy.counts == {CERTS: 3, "/realms/demo/.well-known/openid-configuration": 1, TOKEN: 2}
    assert proxy.count("/certs") == 3
    assert proxy.count("openid-configuration") == 1
    assert proxy.count() == 6
    assert proxy.count("/nothing") == 0
    assert proxy.last_body(TOKEN) == b"second"
    assert proxy.last_body(CERTS) == b""
    assert proxy.last_body("/nothing") is None
    assert proxy.last_body() == b"second"  # the most recent request overall
    snapshot = proxy.counts
    snapshot[CERTS] = 99  # a copy: the proxy's own count is unaffected
    assert proxy.count(CERTS) == 3
    proxy.reset()
    assert proxy.counts == {} and proxy.count() == 0 and proxy.bodies == {}


def test_concurrent_requests(proxy: CountingProxy) -> None:
    def fetch(i: int) -> tuple[int, str]:
        path = f"/p{i % 5}"
        response = requests.post(f"{proxy.url}{path}", data=f"body{i}".encode(), timeout=10)
        return response.status_code, response.json()["body"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(fetch, range(50)))
    assert [status for status, _ in results] == [200] * 50
    assert sorted(body for _, body in results) == sorted(f"body{i}" for i in range(50))
    assert proxy.count() == 50
    assert proxy.counts == {f"/p{n}": 10 for n in range(5)}


def test_concurrent_faulted_requests_are_counted(proxy: CountingProxy) -> None:
    proxy.mode = "status500"
    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(lambda _: requests.get(f"{proxy.url}{CERTS}", timeout=10).status_code, range(50)))
    assert statuses == [500] * 50
    assert proxy.count(CERTS) == 50


# -- fault modes ---------------------------------------------------------------------------------


def test_invalid_mode(upstream: Upstream, proxy: CountingProxy) -> None:
    with pytest.raises(ValueError):
        proxy.mode = "explode"  # type: ignore[assignment]
    with pytest.raises(ValueError):
        CountingProxy(upstream.url, mode="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CountingProxy("ftp://127.0.0.1:1")
    assert proxy.mode == "pass"


def test_status500_does_not_contact_upstream(upstream: Upstream, proxy: CountingProxy) -> None:
    proxy.mode = "status500"
    before = upstream.hits
    response = requests.get(f"{proxy.url}{CERTS}", timeout=5)
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"] == "proxy_fault"
    assert upstream.hits == before
    assert proxy.count(CERTS) == 1
    proxy.mode = "pass"
    assert requests.get(f"{proxy.url}{CERTS}", timeout=5).status_code == 200
    assert proxy.count(CERTS) == 2


def test_garbage(upstream: Upstream, proxy: CountingProxy) -> None:
    proxy.mode = "garbage"
    before = upstream.hits
    response = requests.get(f"{proxy.url}{CERTS}", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        json.loads(response.content)
    assert upstream.hits == before and proxy.count(CERTS) == 1


def test_html(upstream: Upstream, proxy: CountingProxy) -> None:
    proxy.mode = "html"
    before = upstream.hits
    response = requests.get(f"{proxy.url}{CERTS}", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")
    assert upstream.hits == before and proxy.count(CERTS) == 1


def test_fault_path_suffix_limits_faults(proxy: CountingProxy) -> None:
    proxy.fault_path_suffix = "/certs"
    proxy.mode = "status500"
    assert requests.get(f"{proxy.url}{CERTS}", timeout=5).status_code == 500
    assert requests.get(f"{proxy.url}/realms/demo/.well-known/openid-configuration", timeout=5).status_code == 200
    assert requests.post(f"{proxy.url}{TOKEN}", timeout=5).status_code == 200
    assert proxy.count() == 3


def test_hang_times_out_client_and_is_counted(upstream: Upstream, proxy: CountingProxy) -> None:
    proxy.mode = "hang"
    before = upstream.hits
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{proxy.url}{CERTS}", timeout=(1, 0.3))
    assert time.monotonic() - started < 2
    assert proxy.count(CERTS) == 1
    assert upstream.hits == before


def test_hang_released_when_mode_changes_back(proxy: CountingProxy) -> None:
    proxy.mode = "hang"
    result: dict[str, Any] = {}

    def call() -> None:
        response = requests.get(f"{proxy.url}{CERTS}", timeout=10)
        result["status"], result["path"] = response.status_code, response.json()["path"]

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    assert wait_for(lambda: proxy.count(CERTS) == 1)
    time.sleep(0.1)
    assert worker.is_alive()  # held
    started = time.monotonic()
    proxy.mode = "pass"
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - started < 2
    # Released into "pass": the held request goes upstream as if it had just arrived.
    assert result == {"status": 200, "path": CERTS}
    assert proxy.count(CERTS) == 1  # counted once


def test_hang_released_on_stop(upstream: Upstream) -> None:
    proxy = CountingProxy(upstream.url, mode="hang").start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(f"{proxy.url}{CERTS}", timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    assert wait_for(lambda: proxy.count(CERTS) == 1)
    started = time.monotonic()
    proxy.stop()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - started < 2
    assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError)


def test_hang_seconds_elapses_then_drops(upstream: Upstream) -> None:
    with CountingProxy(upstream.url, mode="hang", hang_seconds=0.3) as proxy:
        started = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{proxy.url}{CERTS}", timeout=5)
        assert 0.25 < time.monotonic() - started < 2


def test_refuse_then_reopen_same_port(proxy: CountingProxy) -> None:
    port, url = proxy.port, proxy.url
    proxy.mode = "refuse"
    assert refused(port)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}{CERTS}", timeout=2)
    assert proxy.count() == 0  # refused connections never reach the proxy
    proxy.mode = "pass"
    assert proxy.port == port and proxy.url == url
    assert requests.get(f"{url}{CERTS}", timeout=5).status_code == 200
    assert proxy.count(CERTS) == 1


def test_refuse_closes_keep_alive_connections(proxy: CountingProxy) -> None:
    with requests.Session() as session:
        assert session.get(f"{proxy.url}{CERTS}", timeout=5).status_code == 200
        proxy.mode = "refuse"
        with pytest.raises(requests.ConnectionError):
            session.get(f"{proxy.url}{CERTS}", timeout=2)
        proxy.mode = "status500"  # any non-refuse mode re-opens
        assert session.get(f"{proxy.url}{CERTS}", timeout=5).status_code == 500
        proxy.mode = "pass"
        assert session.get(f"{proxy.url}{CERTS}", timeout=5).status_code == 200


def test_refuse_toggled_repeatedly(proxy: CountingProxy) -> None:
    for _ in range(5):
        proxy.mode = "refuse"
        assert refused(proxy.port)
        proxy.mode = "pass"
        assert requests.get(f"{proxy.url}/t", timeout=5).status_code == 200
    assert proxy.count("/t") == 5


def test_start_in_refuse_mode(upstream: Upstream) -> None:
    with CountingProxy(upstream.url, mode="refuse") as proxy:
        assert refused(proxy.port)
        proxy.mode = "pass"
        assert requests.get(f"{proxy.url}/x", timeout=5).status_code == 200


def test_reset(upstream: Upstream, proxy: CountingProxy) -> None:
    proxy.mode = "reset"
    before = upstream.hits
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{proxy.url}{TOKEN}", data=b"secret=1", timeout=5)
    assert proxy.count(TOKEN) == 1
    assert proxy.last_body(TOKEN) == b"secret=1"
    assert upstream.hits == before
    proxy.mode = "pass"
    assert requests.post(f"{proxy.url}{TOKEN}", timeout=5).status_code == 200


def test_reset_is_per_path(proxy: CountingProxy) -> None:
    proxy.fault_path_suffix = TOKEN
    proxy.mode = "reset"
    with requests.Session() as session:
        assert session.get(f"{proxy.url}{CERTS}", timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError):
            session.post(f"{proxy.url}{TOKEN}", timeout=5)
        assert session.get(f"{proxy.url}{CERTS}", timeout=5).status_code == 200


# -- lifecycle -----------------------------------------------------------------------------------


def test_context_manager_and_stop(upstream: Upstream) -> None:
    proxy = CountingProxy(upstream.url)
    with pytest.raises(RuntimeError):
        _ = proxy.url  # no port before start
    with proxy as started:
        assert started is proxy
        port = proxy.port
        assert proxy.url == f"http://127.0.0.1:{port}"
        assert requests.get(f"{proxy.url}/x", timeout=5).status_code == 200
        with pytest.raises(RuntimeError):
            proxy.start()
    assert refused(port)
    proxy.stop()  # idempotent
    # Restartable on the same port.
    with proxy:
        assert proxy.port == port
        assert requests.get(f"{proxy.url}/x", timeout=5).status_code == 200


def test_slow_upstream_while_stopping(upstream: Upstream) -> None:
    # stop() does not wait for a handler blocked on the upstream.
    proxy = CountingProxy(upstream.url).start()

    def call() -> None:
        with contextlib.suppress(requests.RequestException):  # the proxy drops it: expected
            requests.get(f"{proxy.url}/slow?s=2", timeout=5)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    assert wait_for(lambda: proxy.count("/slow") == 1)
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 1
