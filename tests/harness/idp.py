"""A small local identity provider for fast tests: generated keys, a JWKS and discovery server
on 127.0.0.1, and a token minter that can also forge every kind of bad token.

Tests about Keycloak's own behaviour use the real Keycloak (tests/keycloak); this is for the
plugin's mechanics (key rotation timing, outages, forged headers) where a real IdP cannot be
made to misbehave on demand.
"""

from __future__ import annotations

import base64
import collections
import json
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_part(token: str, index: int) -> dict[str, Any]:
    """A token's decoded header (0) or claims (1), unverified: for test assertions only."""
    return json.loads(unb64url(token.split(".")[index]))


@dataclass
class SigningKey:
    alg: str
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    private: Any = None

    def __post_init__(self) -> None:
        if self.private is None:
            if self.alg.startswith(("RS", "PS")):
                self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            elif self.alg == "ES256":
                self.private = ec.generate_private_key(ec.SECP256R1())
            elif self.alg == "ES384":
                self.private = ec.generate_private_key(ec.SECP384R1())
            elif self.alg == "EdDSA":
                self.private = ed25519.Ed25519PrivateKey.generate()
            else:
                raise ValueError(self.alg)

    def jwk(self, use: str = "sig", with_alg: bool = True) -> dict[str, Any]:
        algo = jwt.get_algorithm_by_name(self.alg)
        data = json.loads(algo.to_jwk(self.private.public_key()))
        data.update(kid=self.kid, use=use)
        if with_alg:
            data["alg"] = self.alg
        return data

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign_payload(payload: bytes, key: SigningKey, headers: dict[str, Any] | None = None) -> str:
    """A JWS over arbitrary payload bytes (JSON with NaN, huge numbers, lone surrogates...),
    signed with a realm key: the token a compromised or buggy issuer could produce."""
    return jwt.api_jws.PyJWS().encode(payload, key.private, algorithm=key.alg,
                                      headers={"kid": key.kid, "typ": "JWT", **(headers or {})})


class Minter:
    """Issues tokens shaped like Keycloak's access tokens."""

    def __init__(self, issuer: str, key: SigningKey, audience: str = "orders-api", azp: str = "test-cli") -> None:
        self.issuer = issuer
        self.key = key
        self.audience = audience
        self.azp = azp

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()), "iss": self.issuer,
            "aud": [self.audience, "account"], "sub": "4f6c3c1e-0b0e-4d0c-9a57-2b1c3c7d9e01",
            "typ": "Bearer", "azp": self.azp, "sid": str(uuid.uuid4()),
            "scope": "openid profile email orders:read",
            "realm_access": {"roles": ["user", "offline_access"]},
            "resource_access": {self.audience: {"roles": ["reader"]}},
            "preferred_username": "alice", "email": "alice@example.com",
        }
        for k, v in overrides.items():
            if v is DROP:
                claims.pop(k, None)
            else:
                claims[k] = v
        return claims

    def raw_token(self, key: SigningKey | None = None, **claims: Any) -> str:
        """A realm-signed token whose claims are serialized as Python's json writes them, with
        NaN, Infinity, huge integers and lone surrogates (`\\ud800` escapes) kept."""
        body = json.dumps(self.claims(**claims), allow_nan=True, ensure_ascii=True).encode()
        return sign_payload(body, key or self.key)

    def token(self, key: SigningKey | None = None, headers: dict[str, Any] | None = None,
              **claims: Any) -> str:
        key = key or self.key
        hdr = {"kid": key.kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(self.claims(**claims), key.private, algorithm=key.alg, headers=hdr)


DROP = object()  # pass as a claim value to remove that claim


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token with arbitrary header and signature bytes (alg none, HS256 with a public key...)."""
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()),
                     b64url(signature)])


class _Listener(ThreadingHTTPServer):
    # A provider's backlog, not socketserver's 5: past it Linux drops the SYNs of simultaneous
    # connections and clients retry a second later, longer than kcauth's `http_timeout` allows.
    request_queue_size = 128
    daemon_threads = True


class LocalIdP:
    """Serves discovery and a mutable JWKS on 127.0.0.1, counting requests."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: (certificate, key) PEM files to serve HTTPS with (tests/harness/tls.py)."""
        self.keys: list[dict[str, Any]] = []
        self.jwks_requests = 0
        self.discovery_requests = 0
        # More realms, for issuer templates: each served under /realms/<name> with the same keys;
        # any other name is answered 404. None: every path is the one realm's.
        self.realms: set[str] | None = None
        self.unknown_realm_requests = 0
        self.paths: collections.Counter[str] = collections.Counter()  # every GET, by path
        self.discovery_jwks_uri: str | None = None  # a discovery document naming another key set URL
        self.fail_with: int | None = None  # answer this HTTP status instead (every realm: an outage)
        self.garbage: bytes | None = None  # answer these bytes with 200 to every GET instead
        # Pad the JSON answers to paths ending with `oversized` with this many bytes (a string
        # member), sent as it is produced: a provider answering more than anyone should hold.
        self.oversized: str | None = None
        self.oversized_bytes = 0
        self.delay = 0.0
        self.introspection_delay = 0.0  # seconds, applied to introspection POSTs only
        # Introspection: active for every well-formed unexpired token not in `revoked`, with its
        # own claims (as Keycloak answers); `opaque` maps non-JWT tokens to their claims.
        self.revoked: set[str] = set()
        self.opaque: dict[str, dict[str, Any]] = {}
        self.introspection_requests = 0
        self.introspection_forms: list[dict[str, str]] = []
        self.client = ("orders-api", "orders-api-secret")
        # Merged into every active answer (an IdP answering about another subject, with
        # broken numbers...); `raw_answer`, when set, is sent as the body as is.
        self.answer_override: dict[str, Any] = {}
        self.answer_without: set[str] = set()  # claims left out of active answers
        self.raw_answer: bytes | None = None
        # A Shared Signals transmitter as Keycloak 26.7's answers (idp/ssf.py): on when `ssf` is
        # set, the client's stream (None until created); every stream request's method and body.
        self.ssf: dict[str, Any] | None = None
        self.ssf_requests: list[tuple[str, dict[str, Any] | None]] = []
        self._lock = threading.Lock()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if idp.delay:
                    time.sleep(idp.delay)
                with idp._lock:
                    idp.paths[self.path] += 1
                realm = self.path.split("/")[2] if self.path.startswith("/realms/") else None
                issuer, jwks_uri = idp.issuer, idp.jwks_uri
                if idp.realms is not None and realm != idp.realm:
                    if realm not in idp.realms and idp.fail_with is None and idp.garbage is None:
                        # a realm this provider does not know, as Keycloak answers (when it answers)
                        with idp._lock:
                            idp.unknown_realm_requests += 1
                        self.send_error(404)
                        return
                    issuer = f"{idp.public_origin or idp.origin}/realms/{realm}"
                    jwks_uri = f"{issuer}/protocol/openid-connect/certs"
                if self.path.endswith("/.well-known/openid-configuration"):
                    with idp._lock:
                        idp.discovery_requests += 1
                    body = {"issuer": issuer, "jwks_uri": idp.discovery_jwks_uri or jwks_uri,
                            "introspection_endpoint": issuer + "/protocol/openid-connect/token/introspect",
                            "token_endpoint": issuer + "/protocol/openid-connect/token"}
                elif idp.ssf is not None and self.path.endswith("/.well-known/ssf-configuration"):
                    body = {"issuer": issuer, "jwks_uri": jwks_uri,
                            "configuration_endpoint": issuer + "/ssf/transmitter/streams"}
                elif idp.ssf is not None and self.path.endswith("/ssf/transmitter/streams"):
                    idp.ssf_requests.append(("GET", None))
                    self._json(200, [idp.ssf["stream"]] if idp.ssf.get("stream") else [])  # type: ignore[arg-type]
                    return
                elif self.path.endswith("/certs"):
                    with idp._lock:
                        idp.jwks_requests += 1
                    body = {"keys": list(idp.keys)}
                else:
                    self.send_error(404)
                    return
                if idp.fail_with:
                    self.send_error(idp.fail_with)
                    return
                if idp.garbage is not None:
                    self._raw(idp.garbage)
                    return
                self._json(200, body)

            def do_PATCH(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                if idp.ssf is not None and self.path.endswith(("/openid-connect/token", "/ssf/transmitter/streams")):
                    self._transmitter()
                    return
                if not self.path.endswith("/token/introspect"):
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                with idp._lock:
                    idp.introspection_requests += 1
                    idp.introspection_forms.append(form)
                if idp.delay:
                    time.sleep(idp.delay)
                if idp.introspection_delay:
                    time.sleep(idp.introspection_delay)
                if idp.fail_with:
                    self.send_error(idp.fail_with)
                    return
                if self.headers.get("Authorization") != "Basic " + base64.b64encode(
                        ":".join(idp.client).encode()).decode():
                    self._json(401, {"error": "invalid_client"})
                    return
                if idp.raw_answer is not None:
                    self._raw(idp.raw_answer)
                    return
                self._json(200, idp.introspect(form.get("token", "")))

            def _transmitter(self) -> None:
                """A client-credentials token, and the one stream: created (409 if it exists) or
                updated, with `aud` `<client>/<stream id>` as Keycloak makes it."""
                assert idp.ssf is not None
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.endswith("/token"):
                    self._json(200, {"access_token": "ssf-" + uuid.uuid4().hex, "expires_in": 300})
                    return
                body = json.loads(data)
                idp.ssf_requests.append((self.command, body))
                stream = idp.ssf.get("stream")
                if self.command == "POST" and stream:
                    self._json(409, {"error": "stream_error"})
                    return
                stream_id = stream["stream_id"] if stream else str(uuid.uuid4())
                idp.ssf["stream"] = {"stream_id": stream_id, "iss": idp.issuer, "aud": f"kcauth-ssf/{stream_id}",
                                     "delivery": body["delivery"], "events_delivered": body.get(
                                         "events_requested", (stream or {}).get("events_delivered", []))}
                self._json(201 if self.command == "POST" else 200, idp.ssf["stream"])

            def _raw(self, data: bytes) -> None:
                """`data` as a 200 JSON answer, whatever it holds."""
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _json(self, status: int, body: dict[str, Any] | list[Any]) -> None:
                if idp.oversized is not None and self.path.split("?")[0].endswith(idp.oversized):
                    self._padded(status, body)
                    return
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _padded(self, status: int, body: dict[str, Any]) -> None:
                head = json.dumps(body).encode()[:-1] + b', "padding": "'
                chunk, left = b"x" * 65536, idp.oversized_bytes
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(head) + left + 2))
                self.end_headers()
                try:
                    self.wfile.write(head)
                    while left > 0:
                        self.wfile.write(chunk[:left])
                        left -= len(chunk)
                    self.wfile.write(b'"}')
                except OSError:
                    pass  # the reader stopped reading: what it should do

        self._server = _Listener(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.public_origin: str | None = None
        # Unique per IdP: a later test's IdP may get a closed one's port, and must not share its
        # issuer (and so the plugin server's key set and caches for that issuer).
        self.realm = "test-" + uuid.uuid4().hex[:8]
        self._thread: threading.Thread | None = None

    @property
    def issuer(self) -> str:
        # `public_origin` plays a provider whose issuer (what browsers see) is not where the
        # gateway reaches it, as in containers.
        return f"{self.public_origin or self.origin}/realms/{self.realm}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    def introspect(self, token: str) -> dict[str, Any]:
        if token in self.opaque:
            return {"active": True, **self.opaque[token]}
        try:
            claims = jwt_part(token, 1)
        except (ValueError, IndexError):
            return {"active": False}
        if token in self.revoked or claims.get("exp", 0) < time.time():
            return {"active": False}
        answer = {"active": True, **claims, "client_id": claims.get("azp"), "token_type": "Bearer",
                  **self.answer_override}
        return {k: v for k, v in answer.items() if k not in self.answer_without}

    def start(self) -> LocalIdP:
        # A short poll: shutdown() (every test's teardown) waits for one.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
