"""What nginx in front of Kong answers before any plugin runs, emulated for tests.

Kong 3.9.1 runs on OpenResty 1.25.3.2 (Kong's .requirements), that is nginx 1.25.3: what follows is
written from nginx's source at tag release-1.25.3 (github nginx/nginx) and Kong's at tag 3.9.1, and
was checked against an nginx 1.25.3 built from that tag (`underscores_in_headers on`, default
buffers: the same answers, to the byte boundary). Each piece names its origin:

- src/http/ngx_http_request.c `ngx_http_headers_in[]`: the header lines nginx keeps one of. Host
  (`ngx_http_process_host`: "client sent duplicate host header") and the lines handled by
  `ngx_http_process_unique_header_line` ("client sent duplicate header line"): If-Modified-Since,
  If-Unmodified-Since, If-Match, If-None-Match, Content-Length, Content-Range, If-Range,
  Transfer-Encoding, Expect, Authorization. A second one is answered 400 as soon as it is parsed.
  Names are looked up lower-cased (`ngx_http_process_request_headers`: `h->lowcase_key` in
  `cmcf->headers_in_hash`), so `authorization` repeats `Authorization`. Proxy-Authorization joined
  that table only in nginx 1.29.7 (commit e23e7dd83): in 1.25.3 it may repeat;
- src/http/ngx_http_request.c `ngx_http_alloc_large_header_buffer`, called by
  `ngx_http_process_request_line` and `ngx_http_process_request_headers` when the current buffer is
  full (`header_in->pos == header_in->end`). The request starts in one `client_header_buffer_size`
  buffer (1k, ngx_http_core_module.c); a line that does not end in it is copied to the start of a
  fresh `large_client_header_buffers` buffer (`4 8k`): a line that has filled a whole large buffer
  without ending (`header_in->pos - old >= large_client_header_buffers.size`) is refused, and so is
  a request needing a fifth large buffer (`hc->nbusy < large_client_header_buffers.num`). So a
  header line passes when name + ": " + value + CRLF is at most one buffer (8192 bytes: 8190
  without the CRLF), and all of them together must fit the buffers with the space each buffer
  change leaves unused. Header lines are refused with 494 ("client sent too long header line",
  "client sent too large request"), the request line with 414 ("client sent too long URI");
- src/http/ngx_http_parse.c `ngx_http_parse_header_line`: with `allow_underscores` (Kong's
  kong/templates/nginx_kong.lua sets `underscores_in_headers on`) `_` is a name character, kept in
  the lower-cased name (so `Content_Length` is not `Content-Length`): such headers pass;
- kong/templates/nginx_kong.lua: `error_page 400 ... 414 ...` and `error_page 494 =494` send those
  answers to `location = /kong_error_handler`, which runs kong/error_handlers.lua: the body is
  `BODIES[status]` ("Bad request", "URI too long", "Request header or cookie too large"), a 494
  becomes 400, and the format follows the request's Accept header (else its Content-Type, else
  `error_default_type`, `text/plain` in kong/templates/kong_defaults.lua), read through
  kong/tools/http.lua `get_header` (the first value), `get_response_type` (the media range with the
  highest q, `*/*` and unknown types meaning JSON) and `get_mime_type`; `get_error_template` gives
  the text, formatted with the message and `request_id` (kong/observability/tracing/request_id.lua:
  `$kong_request_id`, 32 lower-case hex digits: lua-kong-nginx-module's KONG_REQUEST_ID_FORMAT).
  JSON is `{"message": ..., "request_id": ...}`; an Accept starting with application/grpc gets the
  table `{"message": ...}` alone, which kong/pdk/response.lua `send` JSON-encodes (gRPC requests,
  which it answers otherwise, are not emulated). Only the header lines parsed before the refused one count: nginx
  stops there;
- nginx answers these with `Connection: close` (the request's `keepalive` is still 0 while its
  header is read; `lingering_close` for 494).

Not emulated: HTTP/2 and HTTP/3 (their own header limits), pipelined requests on a kept-alive
connection (whose next request may start in a large buffer already), the other header refusals
(a NUL or control character, an invalid Host, HTTP/1.1 without Host: the harness's requests carry
none, Content-Length with Transfer-Encoding), header lines dropped by `ignore_invalid_headers`,
custom `error_template_*` files, and the response headers Kong adds (Server, X-Kong-Request-Id).
Kong's default `log_level = notice` hides nginx's info-level lines; `Answer.log` keeps the line.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any, NamedTuple

# nginx 1.25.3 ngx_http_headers_in[]: Host (ngx_http_process_host) and the
# ngx_http_process_unique_header_line entries, lower-cased as nginx looks them up.
UNIQUE_HEADERS = frozenset({
    "host", "if-modified-since", "if-unmodified-since", "if-match", "if-none-match", "content-length",
    "content-range", "if-range", "transfer-encoding", "expect", "authorization",
})

CLIENT_HEADER_BUFFER_SIZE = 1024  # ngx_http_core_module.c default; Kong sets none
LARGE_CLIENT_HEADER_BUFFERS = (4, 8192)  # ngx_http_core_module.c default `4 8k`; Kong sets none

# kong/error_handlers.lua BODIES (the statuses nginx answers here).
BODIES = {400: "Bad request", 414: "URI too long", 494: "Request header or cookie too large"}

# kong/tools/http.lua MIME_TYPES and ERROR_TEMPLATES.
_MIME_TYPES = {
    "application/grpc": "",
    "text/html": "text/html; charset=utf-8",
    "application/json": "application/json; charset=utf-8",
    "text/plain": "text/plain; charset=utf-8",
    "application/xml": "application/xml; charset=utf-8",
    "application": "application/json; charset=utf-8",
    "text": "text/plain; charset=utf-8",
    "default": "application/json; charset=utf-8",
}
_TEMPLATES = {
    "": "",
    "text/html; charset=utf-8": ('<!doctype html>\n<html>\n  <head>\n    <meta charset="utf-8">\n'
                                 '    <title>Error</title>\n  </head>\n  <body>\n    <h1>Error</h1>\n'
                                 '    <p>%s.</p>\n    <p>request_id: %s</p>\n  </body>\n</html>\n'),
    "application/json; charset=utf-8": '{\n  "message":"%s",\n  "request_id":"%s"\n}',
    "text/plain; charset=utf-8": "%s\nrequest_id: %s\n",
    "application/xml; charset=utf-8": ('<?xml version="1.0" encoding="UTF-8"?>\n<error>\n'
                                       '  <message>%s</message>\n  <requestid>%s</requestid>\n</error>\n'),
}
ERROR_DEFAULT_TYPE = "text/plain"  # kong/templates/kong_defaults.lua error_default_type
# kong/tools/http.lua get_response_type's media-range pattern (PCRE flags "ajoxi").
_MEDIA_RANGE = re.compile(
    r"((?:[a-z0-9][a-z0-9\-!#$&^_+.]+|\*)/(?:[a-z0-9][a-z0-9\-!#$&^_+.]+|\*))"
    r"(?:\s*;\s*q=(1(?:\.0{0,3}|)|0(?:\.\d{0,3}|))|\s*;\s*[a-z0-9][a-z0-9\-!#$&^_+.]+(?:=[^;]*|))*",
    re.IGNORECASE)

Header = tuple[str, "str | bytes"]


class Answer(NamedTuple):
    """Kong's answer to a request nginx refused."""

    status: int
    body: Any  # JSON: the decoded object; other formats: the text
    headers: dict[str, str]
    text: bytes  # the body as sent
    log: str  # nginx's info-level error log line


def front(headers: Iterable[Header], large_client_header_buffers: tuple[int, int] = LARGE_CLIENT_HEADER_BUFFERS,
          *, request_line: str | bytes = "GET / HTTP/1.1", client_header_buffer_size: int = CLIENT_HEADER_BUFFER_SIZE,
          request_id: str | None = None) -> Answer | None:
    """Kong's answer when nginx refuses an HTTP/1.1 request while reading its header, or None
    when the request reaches Kong's phases. `headers` are the lines in the order the client sent
    them, each taken as sent `Name: value` + CRLF (http.client's form); str values count as their
    UTF-8 bytes (surrogateescape: the harness's byte strings)."""
    headers = list(headers)
    num, size = large_client_header_buffers
    # ngx_http_alloc_large_header_buffer: the buffer the current line is in (`cap` bytes, the line
    # starting at `start`) and how many large buffers the request holds (hc->nbusy).
    cap, start, nbusy = client_header_buffer_size, 0, 0

    def refusal(length: int) -> int | None:
        """None if the line fits, else how many of its bytes nginx had read (0: none yet)."""
        nonlocal cap, start, nbusy
        if start == cap:  # the buffer ended with the previous line (r->state == 0): no copy
            if nbusy >= num:
                return 0
            cap, start, nbusy = size, 0, nbusy + 1
        while start + length > cap:  # the buffer fills before the line ends
            if cap - start >= size or nbusy >= num:
                return cap - start
            cap, start, nbusy = size, 0, nbusy + 1  # the line so far moves to a new buffer
        start += length
        return None

    def too_large(i: int, read: int) -> Answer:
        """Line i (len(headers): the empty line) refused, `read` bytes of it read."""
        parsed = headers[:i]
        # The log shows the line from r->header_name_start: the refused one as far as it was read,
        # or, when nothing of it was, the previous one (none: "client sent too large request").
        if read == 0:
            i, read = i - 1, 1 << 30
        if i < 0:
            return _kong_error(494, parsed, request_id, "client sent too large request")
        shown = f"{headers[i][0]}: {_text(_bytes(headers[i][1]))}" if i < len(headers) else "\r"
        shown = shown[:min(read, 1748)]  # NGX_MAX_ERROR_STR - 300
        return _kong_error(494, parsed, request_id, f'client sent too long header line: "{shown}..."')

    if refusal(len(_bytes(request_line)) + 2) is not None:
        return _kong_error(414, [], request_id, "client sent too long URI")
    seen: dict[str, str] = {}
    for i, (name, value) in enumerate(headers):
        raw = _bytes(value)
        read = refusal(len(_bytes(name)) + 2 + len(raw) + 2)
        if read is not None:
            return too_large(i, read)
        key = name.lower()
        if key in UNIQUE_HEADERS:
            if key in seen:
                what = "host header" if key == "host" else "header line"
                return _kong_error(400, headers[:i + 1], request_id,
                                   f'client sent duplicate {what}: "{name}: {_text(raw)}", '
                                   f'previous value: "{seen[key]}"')
            seen[key] = f"{name}: {_text(raw)}"
    read = refusal(2)  # the empty line ending the header
    return None if read is None else too_large(len(headers), read)


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def _first(headers: list[Header], name: str) -> str | None:
    """kong/tools/http.lua get_header (kong.request.get_header): the first value."""
    for n, v in headers:
        if n.lower() == name:
            return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
    return None


def response_type(accept: str) -> str:
    """kong/tools/http.lua get_response_type: the MIME type of the highest-q media range."""
    content_type, best = _MIME_TYPES["default"], 0.0
    for value in accept.split(","):
        match = _MEDIA_RANGE.match(value.strip())
        if match:
            q = float(match.group(2)) if match.group(2) else 1.0
            if q > best:
                best = q
                content_type = _mime_type(match.group(1)) or content_type
    return content_type


def _mime_type(media_type: str) -> str:
    """kong/tools/http.lua get_mime_type(content_header) with use_default."""
    media_type = media_type.strip().split(";")[0]
    entries = media_type.split("/")
    mime = None
    if len(entries) > 1:
        if entries[1] == "*":
            mime = _MIME_TYPES["default"] if entries[0] == "*" else _MIME_TYPES.get(entries[0])
        else:
            mime = _MIME_TYPES.get(media_type)
    return _MIME_TYPES["default"] if mime is None else mime


def _kong_error(status: int, parsed: list[Header], request_id: str | None, log: str) -> Answer:
    """kong/error_handlers.lua for the header lines nginx had parsed."""
    message = BODIES[status]
    status = 400 if status == 494 else status
    accept = _first(parsed, "accept")
    if accept is None:
        accept = _first(parsed, "content-type")
        if accept is None:
            accept = ERROR_DEFAULT_TYPE
    if accept.startswith("application/grpc"):
        # A table body: kong/pdk/response.lua send JSON-encodes it (for a request that is not gRPC).
        body: Any = {"message": message}
        return Answer(status, body, {"Content-Type": _MIME_TYPES["application/json"], "Connection": "close"},
                      b'{"message":"%s"}' % message.encode(), log)
    mime = response_type(accept)
    rid = request_id or secrets.token_hex(16)  # $kong_request_id
    text = _TEMPLATES[mime].replace("%s", message, 1).replace("%s", rid, 1)
    body = {"message": message, "request_id": rid} if mime == _MIME_TYPES["application/json"] else text
    return Answer(status, body, {"Content-Type": mime, "Connection": "close"}, text.encode(), log)
