"""Outbound HTTP to the identity provider: process-wide sessions, TLS verification always on.

requests-cache keeps the discovery document (it changes rarely, and a stale copy is better than
none while the provider is down) and revalidates key sets with conditional requests when the
provider sends validators. Freshness of keys is decided by `keys.KeySet`, not by HTTP headers.

Every body is read here as it arrives (`_BoundedAdapter`, under requests and requests-cache):
past its size limit (`MAX_BODY`; `EVENTS_MAX_BODY` for pages of Keycloak's events) or its read
timeout as a whole, the connection is dropped and the request fails, so a provider (or whatever
answers in its place) can neither make a process hold more nor keep it waiting longer.

Trust: the Mozilla CA bundle (certifi, requests' default), or `tls_ca_bundle` (a PEM file, or
`system` for the operating system's store). Proxies: `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`
of the plugin server's environment, read once (Kong's nginx clears the environment of the
processes it starts: pass them in the start command, see the README).

Every call goes through `_request`, the one place for its session, its proxies and, when traces
are on (ops/tracing.py), its client span named by the call's purpose: `discovery`, `keys`,
`introspection`, `token` (the service account's), `events` (the feed's pages), `ssf`.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import requests
import requests.adapters
import requests.utils
import requests_cache
import urllib3.exceptions

from ..config.values import rewrite_origin
from ..ops import tracing
from ..tokens.claims import json_object, json_value

MAX_BODY = 1 << 20  # a key set, discovery document or introspection answer is a few KB
EVENTS_MAX_BODY = 8 << 20  # a page of 100 admin events carries representations (a realm's is tens of KB)
_CHUNK = 16 << 10
DISCOVERY_MAX_AGE = 3600
SYSTEM = "system"

_sessions: dict[tuple[str, str | None], requests.Session] = {}
_sessions_lock = threading.Lock()
_PROXIES = {k: v for k, v in urllib.request.getproxies().items() if k in ("http", "https")}
_NO_PROXY = urllib.request.getproxies().get("no")


class FetchError(Exception):
    """The document could not be had; the message is for logs, never for clients. `status`: the
    HTTP status when the provider answered one (404: it does not know the realm)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def verify_for(ca: str | None) -> str | bool:
    """requests' `verify` for a `tls_ca_bundle` setting."""
    if ca is None:
        return True
    if ca == SYSTEM:
        paths = ssl.get_default_verify_paths()
        return paths.cafile or paths.openssl_cafile or True
    return ca


class BodyTooLarge(requests.RequestException):
    """The answer's body is over the limit: refused while reading, nothing more is read."""


class BodyTooSlow(requests.RequestException):
    """The answer's body took longer than the read timeout as a whole."""


class _BoundedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, reading each body itself as it arrives: at most `max_body` bytes
    (after decoding), within the read timeout overall. requests and requests-cache above it see
    a response whose content is already read."""

    def __init__(self, max_body: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_body = max_body

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: None | float | tuple[float, float] | tuple[float, None] = None,
             verify: bool | str = True, cert: None | bytes | str | tuple[bytes | str, bytes | str] = None,
             proxies: Mapping[str, str] | None = None) -> requests.Response:
        response = super().send(request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        seconds = timeout[1] if isinstance(timeout, tuple) else timeout
        try:
            response._content = read_bounded(response, self.max_body, seconds)  # noqa: SLF001
        except BaseException:
            response.close()
            raise
        return response


def read_bounded(response: requests.Response, limit: int, seconds: float | None) -> bytes:
    """The body of a streamed response, refused past `limit` bytes or `seconds` as they arrive."""
    deadline = time.monotonic() + seconds if seconds else None
    chunks, size = [], 0
    try:
        for chunk in response.raw.stream(_CHUNK, decode_content=True):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the answer is over {limit} bytes")
            if deadline is not None and time.monotonic() > deadline:
                raise BodyTooSlow("the answer took longer than the timeout")
            chunks.append(chunk)
    except requests.RequestException:  # (an OSError too)
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # what requests' own read turns into these
        raise requests.ConnectionError(type(exc).__name__) from None
    return b"".join(chunks)


def _session(kind: str, ca: str | None) -> requests.Session:
    """One session per kind and trust: documents that may be served stale while the provider is
    down (`discovery`), documents that are always asked for again (`keys`), where a failure must
    surface so `KeySet` can bound how long it keeps serving the keys it holds, and uncached
    requests (`post`: introspection, the feed's token; `events`: the feed's pages), each over
    pooled keep-alive connections whose bodies are read within their limits (`_BoundedAdapter`)."""
    s = _sessions.get((kind, ca))
    if s is None:
        with _sessions_lock:
            s = _sessions.get((kind, ca))
            if s is None:
                if kind in ("post", "events"):
                    s = requests.Session()
                else:
                    s = requests_cache.CachedSession(
                        backend="memory",
                        # 0: stored but stale at once, so every GET asks the provider again
                        # (conditionally when it sent an ETag or Last-Modified).
                        expire_after=0 if kind == "keys" else DISCOVERY_MAX_AGE,
                        allowable_codes=(200,),
                        stale_if_error=kind != "keys",
                    )
                adapter = _BoundedAdapter(EVENTS_MAX_BODY if kind == "events" else MAX_BODY,
                                          pool_connections=4, pool_maxsize=32)
                s.mount("http://", adapter)
                s.mount("https://", adapter)
                s.headers["User-Agent"] = "kcauth"
                s.headers["Accept"] = "application/json"
                s.headers["Accept-Encoding"] = "identity"  # sizes are of what is sent: no decompression bomb
                # The environment is read once, at import (requests' trust_env costs ~250 us a
                # call in lookups); .netrc is never consulted.
                s.trust_env = False
                s.verify = verify_for(ca)
                _sessions[(kind, ca)] = s
    return s


def _proxies(url: str) -> dict[str, str]:
    if not _PROXIES or (_NO_PROXY and requests.utils.should_bypass_proxies(url, no_proxy=_NO_PROXY)):
        return {}
    return _PROXIES


def _request(kind: str, ca: str | None, purpose: str, method: str, url: str, **kwargs: Any) -> requests.Response:
    """One call to the provider on the session of `kind`; with traces on, in a client span
    naming `purpose`, whose traceparent the provider receives (its own spans join the trace)."""
    session = _session(kind, ca)
    if not tracing.ON:
        return session.request(method, url, proxies=_proxies(url), **kwargs)
    with tracing.http_call(purpose, method, url) as call:
        kwargs["headers"] = call.headers(kwargs.get("headers"))
        response = session.request(method, url, proxies=_proxies(url), **kwargs)
        call.answered(response.status_code)
        return response


def get_json(url: str, timeout: float, *, revalidate: bool, ca: str | None = None) -> dict[str, Any]:
    """GET a JSON object. `revalidate` asks the provider every time (conditionally when it sent
    validators); otherwise a cached copy up to DISCOVERY_MAX_AGE old is used."""
    kind = "keys" if revalidate else "discovery"
    try:
        resp = _request(kind, ca, kind, "GET", url, timeout=(timeout, timeout))
    except requests.RequestException as exc:
        raise FetchError(f"GET {url} failed: {type(exc).__name__}") from None
    return _json_object(resp, f"GET {url}")


def post_form(url: str, form: dict[str, str], headers: dict[str, str], timeout: float,
              ca: str | None = None) -> dict[str, Any]:
    """POST a form and read a JSON object (introspection). Never cached: every call reaches the
    provider."""
    # The form's names tell the call apart: a token to introspect, or a grant (a service account's).
    purpose = "introspection" if "token" in form else "token"
    try:
        resp = _request("post", ca, purpose, "POST", url, data=form, headers=headers, timeout=(timeout, timeout),
                        allow_redirects=False)
    except requests.RequestException as exc:
        raise FetchError(f"POST {url} failed: {type(exc).__name__}") from None
    return _json_object(resp, f"POST {url}")


def get_json_list(url: str, params: dict[str, Any], headers: dict[str, str], timeout: float,
                  ca: str | None = None) -> list[Any]:
    """GET a JSON array (a page of Keycloak's events), never cached, up to EVENTS_MAX_BODY. One
    item Keycloak could not have meant (a lone UTF-16 surrogate in a string) does not make the
    page unreadable: such characters become U+FFFD, in that item only."""
    try:
        resp = _request("events", ca, "events", "GET", url, params=params, headers=headers,
                        timeout=(timeout, timeout), allow_redirects=False)
    except requests.RequestException as exc:
        raise FetchError(f"GET {url} failed: {type(exc).__name__}") from None
    if resp.status_code != 200:
        raise FetchError(f"GET {url} answered HTTP {resp.status_code}", resp.status_code)
    doc = json_value(resp.content, scrub=True)
    if not isinstance(doc, list):
        raise FetchError(f"GET {url} did not answer a JSON array")
    return doc


def send_json(method: str, url: str, body: dict[str, Any] | None, headers: dict[str, str], timeout: float,
              ca: str | None = None) -> Any:
    """A JSON request of an API (the Shared Signals transmitter's), never cached, up to
    EVENTS_MAX_BODY: its JSON answer (None for 204), or FetchError with the status."""
    try:
        resp = _request("events", ca, "ssf", method, url, json=body, headers=headers, timeout=(timeout, timeout),
                        allow_redirects=False)
    except requests.RequestException as exc:
        raise FetchError(f"{method} {url} failed: {type(exc).__name__}") from None
    if resp.status_code == 204:
        return None
    if resp.status_code not in (200, 201, 202):
        raise FetchError(f"{method} {url} answered HTTP {resp.status_code}", resp.status_code)
    doc = json_value(resp.content)
    if doc is None:
        raise FetchError(f"{method} {url} did not answer JSON")
    return doc


def _json_object(resp: requests.Response, what: str) -> dict[str, Any]:
    if resp.status_code != 200:
        raise FetchError(f"{what} answered HTTP {resp.status_code}", resp.status_code)
    doc = json_object(resp.content)  # strict: no NaN/Infinity, no lone surrogates
    if doc is None:
        raise FetchError(f"{what} did not answer a JSON object")
    return doc


def discover(discovery_url: str, issuer: str, name: str, timeout: float,
             rewrite: tuple[str, str] | None = None,
             fetch_json: Callable[..., dict[str, Any]] = get_json, ca: str | None = None,
             confine: str | None = None) -> str:
    """An endpoint of the issuer's OpenID Connect discovery document (cached for an hour).
    `confine`: the origin the endpoint must be at (template realms: a realm's own settings can
    name any host, and keys must come from the template's origin only)."""
    doc = fetch_json(discovery_url, timeout, revalidate=False, ca=ca)
    # OpenID Connect Discovery 1.0 section 4.3: the document must name the same issuer.
    if doc.get("issuer") != issuer:
        raise FetchError("discovery document names another issuer")
    endpoint = doc.get(name)
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise FetchError(f"discovery document has no usable {name}")
    endpoint = rewrite_origin(endpoint, rewrite)
    if confine is not None and not endpoint.startswith(confine + "/"):
        raise FetchError(f"discovery document names a {name} outside {confine}")
    return endpoint
