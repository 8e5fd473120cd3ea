"""nginx's front (tests/harness/nginx.py): directly, through Kong.request, and over HTTP.

The boundaries below were checked against an nginx 1.25.3 built from its release tag, configured
as Kong 3.9.1 configures it (`underscores_in_headers on`, default header buffers)."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator

import pytest

from tests.conftest import bearer, guard_config
from tests.harness import nginx
from tests.harness.gateway import EchoUpstream, Gateway, Route
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong, PluginServerProcess

JSON = [("Accept", "application/json")]
HOST = [("Host", "api.example.com")]
TOO_LARGE = "Request header or cookie too large"
REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def line(total: int, name: str = "X-Big") -> tuple[str, str]:
    """A header whose line, `name: value` + CRLF, is `total` bytes, as nginx counts it."""
    return name, "v" * (total - len(name) - 4)


def refused(answer: nginx.Answer | None) -> str | None:
    assert answer is None or answer.status in (400, 414)
    return None if answer is None else answer.body["message"]


# --- repeated headers --------------------------------------------------------------------------

def test_a_second_authorization_in_another_case_is_400() -> None:
    answer = nginx.front(JSON + [("Authorization", "Bearer a"), ("authorization", "Bearer b")])
    assert answer is not None and answer.status == 400
    assert answer.body == {"message": "Bad request", "request_id": answer.body["request_id"]}
    assert REQUEST_ID.fullmatch(answer.body["request_id"])
    assert 'client sent duplicate header line: "authorization: Bearer b"' in answer.log


@pytest.mark.parametrize("name", sorted(nginx.UNIQUE_HEADERS - {"host"}))
def test_each_unique_header_may_come_once(name: str) -> None:
    assert nginx.front(JSON + [(name.title(), "1")]) is None
    assert refused(nginx.front(JSON + [(name.title(), "1"), (name.upper(), "1")])) == "Bad request"


def test_a_second_host_is_400() -> None:
    answer = nginx.front(JSON + HOST + [("host", "evil.example.com")])
    assert refused(answer) == "Bad request"
    assert answer is not None and "client sent duplicate host header" in answer.log


@pytest.mark.parametrize("name", ["Accept", "Cookie", "X-Forwarded-For", "User-Agent", "X-Auth-Subject",
                                  "Proxy-Authorization",  # unique only from nginx 1.29.7 on
                                  "Content_Length"])  # underscores_in_headers on: not Content-Length
def test_other_headers_may_repeat(name: str) -> None:
    assert nginx.front(JSON + [(name, "a"), (name, "b"), (name.lower(), "c")]) is None


def test_header_names_with_underscores_pass() -> None:
    assert nginx.front([("X_Auth_Subject", "forged"), ("Authorization", "Bearer t"), ("_", "x")]) is None


# --- header buffers ----------------------------------------------------------------------------

@pytest.mark.parametrize("before", [[], [line(1000, "X-Pad")], [line(8000, "X-Pad")], [line(8192, "X-Pad")]],
                         ids=["first", "across the 1k buffer", "in a large buffer", "after a full buffer"])
def test_a_header_line_is_at_most_one_buffer_crlf_included(before: list[tuple[str, str]]) -> None:
    # ngx_http_alloc_large_header_buffer refuses a line once it has filled a whole buffer
    # unfinished: 8192 bytes with the CRLF pass (8190 without), 8193 do not, wherever it starts.
    assert nginx.front(JSON + before + [line(8192)]) is None
    answer = nginx.front(JSON + before + [line(8193)])
    assert refused(answer) == TOO_LARGE
    assert answer is not None and 'client sent too long header line: "X-Big: vvv' in answer.log


def test_an_authorization_header_carries_at_most_8168_bytes_of_token() -> None:
    assert nginx.front(JSON + bearer("t" * 8168)) is None
    assert refused(nginx.front(JSON + bearer("t" * 8169))) == TOO_LARGE


def test_raised_buffers_let_a_12kb_token_through() -> None:
    headers = JSON + bearer("t" * 12 * 1024)
    assert refused(nginx.front(headers)) == TOO_LARGE
    assert nginx.front(headers, (4, 16 * 1024)) is None
    assert refused(nginx.front(JSON + bearer("t" * 17 * 1024), (4, 16 * 1024))) == TOO_LARGE


def test_headers_needing_more_than_four_buffers_are_too_large() -> None:
    # Each 7000-byte line starts in a buffer the previous one left 1192 bytes of: one buffer each.
    four = [line(7000, f"X-Big-{i}") for i in range(4)]
    assert nginx.front(JSON + four) is None
    answer = nginx.front(JSON + four + [line(7000, "X-Big-4")])
    assert refused(answer) == TOO_LARGE
    assert nginx.front(JSON + four + [line(7000, "X-Big-4")], (5, 8192)) is None


def test_many_small_headers_fill_the_buffers_too() -> None:
    # 1k + 4 x 8k (33792 bytes) hold the request line and the header, its final CRLF included.
    small = [line(100, f"X-H{i:03}") for i in range(340)]
    assert nginx.front(JSON + small[:300]) is None
    answer = nginx.front(JSON + small)
    assert refused(answer) == TOO_LARGE


def test_a_request_line_over_one_buffer_is_414() -> None:
    assert nginx.front(JSON, request_line="GET /" + "p" * 8100 + " HTTP/1.1") is None
    answer = nginx.front(JSON, request_line="GET /" + "p" * 8200 + " HTTP/1.1")
    assert answer is not None and answer.status == 414
    assert answer.body.startswith("URI too long\nrequest_id: "), "no header read yet: Accept unseen"


# --- Kong's error handler: the answer's form ---------------------------------------------------

def test_the_json_form_is_kongs_template() -> None:
    answer = nginx.front(JSON + bearer("a") + bearer("b"), request_id="0123456789abcdef0123456789abcdef")
    assert answer is not None
    assert answer.headers == {"Content-Type": "application/json; charset=utf-8", "Connection": "close"}
    assert answer.text == b'{\n  "message":"Bad request",\n  "request_id":"0123456789abcdef0123456789abcdef"\n}'
    assert json.loads(answer.text) == answer.body


def test_without_accept_or_content_type_the_answer_is_text() -> None:
    answer = nginx.front(bearer("a") + bearer("b"), request_id="f" * 32)
    assert answer is not None and answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert answer.body == answer.text.decode() == "Bad request\nrequest_id: " + "f" * 32 + "\n"


@pytest.mark.parametrize("headers, mime", [
    ([("Accept", "*/*")], "application/json; charset=utf-8"),  # curl's default
    ([("Accept", "image/png")], "application/json; charset=utf-8"),  # unknown: the default, JSON
    ([("Accept", "text/html")], "text/html; charset=utf-8"),
    ([("Accept", "text/*")], "text/plain; charset=utf-8"),
    ([("Accept", "application/xml;q=0.9, text/html;q=0.5")], "application/xml; charset=utf-8"),
    ([("Accept", "text/html;q=0.5, application/json")], "application/json; charset=utf-8"),
    ([("Content-Type", "application/json")], "application/json; charset=utf-8"),
    ([("Accept", "text/html"), ("Accept", "application/json")], "text/html; charset=utf-8"),  # the first
], ids=["any", "unknown", "html", "text-any", "highest-q", "q-default-1", "content-type", "first-accept"])
def test_the_format_follows_accept(headers: list[tuple[str, str]], mime: str) -> None:
    answer = nginx.front(headers + bearer("a") + bearer("b"))
    assert answer is not None and answer.headers["Content-Type"] == mime


def test_only_headers_before_the_refused_line_choose_the_format() -> None:
    answer = nginx.front(bearer("a") + bearer("b") + JSON)
    assert answer is not None and answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    answer = nginx.front(bearer("t" * 9000) + JSON)
    assert answer is not None and answer.body.startswith(TOO_LARGE + "\nrequest_id: ")


# --- through Kong.request: nothing reaches the plugin ------------------------------------------

def test_kong_answers_for_nginx_without_any_plugin_call(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(guard_config(idp))
    token = minter.token()
    assert kong.request(entity, bearer(token)).status == 200  # the instance exists: nothing to start
    calls = len(kong.rpc.calls)
    res = kong.request(entity, JSON + bearer(token) + bearer(token))
    assert (res.status, res.body["message"], res.proxied) == (400, "Bad request", False)
    assert res.headers["Content-Type"] == "application/json; charset=utf-8"
    assert res.pdk_calls == [] and res.errors == [] and res.upstream_headers == []
    assert len(kong.rpc.calls) == calls, "no RPC: the plugin server never hears of the request"


def test_past_nginx_the_plugin_refuses_two_authorization_headers(kong: Kong, idp: LocalIdP,
                                                                 minter: Minter) -> None:
    # Defense in depth: what nginx refuses first, the plugin refuses too.
    token = minter.token()
    res = kong.request(kong.plugin(guard_config(idp)), bearer(token) + bearer(token), nginx=False)
    assert res.status == 401 and not res.proxied
    assert res.headers["WWW-Authenticate"] == (
        'Bearer realm="kong", error="invalid_request", error_description="The request must carry '
        'exactly one Bearer token in one Authorization header"')


def test_past_nginx_the_plugin_refuses_a_token_over_max_token_size(kong: Kong, idp: LocalIdP,
                                                                   minter: Minter) -> None:
    token = minter.token(pad="x" * 9000)
    entity = kong.plugin(guard_config(idp))  # max_token_size 8192, the default
    assert kong.request(entity, bearer(token)).body.startswith(TOO_LARGE + "\n")  # text/plain: no Accept
    res = kong.request(entity, bearer(token), nginx=False)
    assert res.status == 401
    assert 'error_description="The access token is too large"' in res.headers["WWW-Authenticate"]


def test_raised_buffers_let_the_plugin_judge_a_12kb_token(plugin_server: PluginServerProcess, idp: LocalIdP,
                                                          minter: Minter) -> None:
    token = minter.token(pad="x" * 9000)
    assert len(token) > 12 * 1024
    raised = Kong(plugin_server, large_client_header_buffers=(4, 16 * 1024))
    try:
        res = raised.request(raised.plugin(guard_config(idp)), bearer(token))
        assert res.status == 401 and "The access token is too large" in res.headers["WWW-Authenticate"]
        assert raised.request(raised.plugin(guard_config(idp, max_token_size=16384)), bearer(token)).status == 200
    finally:
        raised.rpc.close()


# --- the HTTP stand-in: the same front before routing ------------------------------------------

@pytest.fixture
def stand_in(kong: Kong) -> Iterator[tuple[Gateway, EchoUpstream]]:
    echo = EchoUpstream()
    gateway = Gateway(kong, [Route("open", ["/"], echo.url)]).serve()
    yield gateway, echo
    gateway.stop()
    echo.stop()


def send(gateway: Gateway, headers: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.putrequest("GET", "/anything")
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_the_stand_in_refuses_what_nginx_refuses(stand_in: tuple[Gateway, EchoUpstream]) -> None:
    gateway, echo = stand_in
    assert send(gateway, bearer("a") + [("X_Under_Score", "1")])[0] == 200
    status, headers, body = send(gateway, JSON + bearer("a") + bearer("b"))
    assert status == 400 and headers["Connection"] == "close"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body)["message"] == "Bad request"
    # Over 8 KB but under http.server's own limit (http.client._MAXLINE, 65536 bytes a line).
    status, _, body = send(gateway, bearer("t" * 9000))
    assert status == 400 and body.startswith(b"Request header or cookie too large\nrequest_id: ")
    assert echo.hits == 1 and gateway.routes[0].hits == 1, "only the first request was routed"
