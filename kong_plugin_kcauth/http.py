"""Outbound HTTP to the identity provider: one process-wide session, TLS verification always on.

requests-cache keeps the discovery document (it changes rarely, and a stale copy is better than
none while the provider is down) and revalidates key sets with conditional requests when the
provider sends validators. Freshness of keys is decided by `keys.KeySet`, not by HTTP headers.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable
from typing import Any

import requests
import requests.adapters
import requests_cache

from .claims import json_object

MAX_BODY = 1 << 20  # a key set or discovery document is a few KB; refuse to hold megabytes
DISCOVERY_MAX_AGE = 3600

_sessions: dict[bool, requests_cache.CachedSession] = {}
_sessions_lock = threading.Lock()


class FetchError(Exception):
    """The document could not be had; the message is for logs, never for clients."""


def _session(revalidate: bool) -> requests_cache.CachedSession:
    """Two sessions: documents that may be served stale while the provider is down (discovery),
    and documents that are always asked for again (key sets), where a failure must surface so
    `KeySet` can bound how long it keeps serving the keys it holds."""
    s = _sessions.get(revalidate)
    if s is None:
        with _sessions_lock:
            s = _sessions.get(revalidate)
            if s is None:
                s = requests_cache.CachedSession(
                    backend="memory",
                    # 0: stored but stale at once, so every GET asks the provider again
                    # (conditionally when it sent an ETag or Last-Modified).
                    expire_after=0 if revalidate else DISCOVERY_MAX_AGE,
                    allowable_codes=(200,),
                    stale_if_error=not revalidate,
                )
                _setup(s)
                _sessions[revalidate] = s
    return s


def _setup(s: requests.Session) -> None:
    s.headers["User-Agent"] = "kcauth"
    s.headers["Accept"] = "application/json"
    # Proxy settings are read from the environment once, here, instead of on every request
    # (requests' trust_env costs ~250 us a call in lookups); .netrc is never consulted.
    s.trust_env = False
    s.proxies = {k: v for k, v in urllib.request.getproxies().items() if k in ("http", "https", "no")}


def get_json(url: str, timeout: float, *, revalidate: bool) -> dict[str, Any]:
    """GET a JSON object. `revalidate` asks the provider every time (conditionally when it sent
    validators); otherwise a cached copy up to DISCOVERY_MAX_AGE old is used."""
    try:
        resp = _session(revalidate).get(url, timeout=(timeout, timeout))
    except requests.RequestException as exc:
        raise FetchError(f"GET {url} failed: {type(exc).__name__}") from None
    return _json_object(resp, f"GET {url}")


_plain: requests.Session | None = None


def post_form(url: str, form: dict[str, str], headers: dict[str, str], timeout: float) -> dict[str, Any]:
    """POST a form and read a JSON object (introspection). Never cached: every call reaches the
    provider, over one pooled, keep-alive session per process."""
    global _plain
    if _plain is None:
        with _sessions_lock:
            if _plain is None:
                s = requests.Session()
                adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
                s.mount("http://", adapter)
                s.mount("https://", adapter)
                _setup(s)
                _plain = s
    try:
        resp = _plain.post(url, data=form, headers=headers, timeout=(timeout, timeout), allow_redirects=False)
    except requests.RequestException as exc:
        raise FetchError(f"POST {url} failed: {type(exc).__name__}") from None
    return _json_object(resp, f"POST {url}")


def _json_object(resp: requests.Response, what: str) -> dict[str, Any]:
    if resp.status_code != 200:
        raise FetchError(f"{what} answered HTTP {resp.status_code}")
    if len(resp.content) > MAX_BODY:
        raise FetchError(f"{what} answered more than {MAX_BODY} bytes")
    doc = json_object(resp.content)  # strict: no NaN/Infinity, no lone surrogates
    if doc is None:
        raise FetchError(f"{what} did not answer a JSON object")
    return doc


def rewrite_origin(url: str, rewrite: tuple[str, str] | None) -> str:
    """Swap the issuer's origin for the provider's internal one (`provider_url`)."""
    if rewrite and url.startswith(rewrite[0] + "/"):
        return rewrite[1] + url[len(rewrite[0]):]
    return url


def discover(discovery_url: str, issuer: str, name: str, timeout: float,
             rewrite: tuple[str, str] | None = None,
             fetch_json: Callable[..., dict[str, Any]] = get_json) -> str:
    """An endpoint of the issuer's OpenID Connect discovery document (cached for an hour)."""
    doc = fetch_json(discovery_url, timeout, revalidate=False)
    # OpenID Connect Discovery 1.0 section 4.3: the document must name the same issuer.
    if doc.get("issuer") != issuer:
        raise FetchError("discovery document names another issuer")
    endpoint = doc.get(name)
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise FetchError(f"discovery document has no usable {name}")
    return rewrite_origin(endpoint, rewrite)
