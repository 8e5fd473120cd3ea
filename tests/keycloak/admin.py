"""A thin client for the Keycloak calls the tests need: tokens, keys, sessions, users, clients.

Paths follow Keycloak 26's admin REST API (services/.../resources/admin/*Resource.java) and its
OIDC endpoints (TokenEndpoint, TokenIntrospectionEndpoint, TokenRevocationEndpoint).
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import quote, urlsplit

import requests

KEY_PROVIDER_TYPE = "org.keycloak.keys.KeyProvider"
#: ecdsa-generated keys are chosen by curve (config `ecdsaEllipticCurveKey`), not by algorithm.
EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "secp256k1"}
#: eddsa-generated keys likewise (config `eddsaEllipticCurveKey`).
ED_CURVES = {"EdDSA": "Ed25519", "Ed25519": "Ed25519", "Ed448": "Ed448"}


def is_loopback(url: str) -> bool:
    return urlsplit(url).hostname in {"127.0.0.1", "localhost", "::1"}


class KeycloakError(RuntimeError):
    """A Keycloak call answered with an unexpected status; carries the status and the body."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:500]}")
        self.status = status
        self.body = body


def client_secret_basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: form-encode id and secret *before* base64 (requests' HTTPBasicAuth does not)."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _obj(answer: requests.Response) -> dict[str, Any]:
    data = answer.json()
    if not isinstance(data, dict):
        raise TypeError(f"{answer.url} answered {type(data).__name__}, expected a JSON object")
    return data


def _list(answer: requests.Response) -> list[dict[str, Any]]:
    data = answer.json()
    if not isinstance(data, list):
        raise TypeError(f"{answer.url} answered {type(data).__name__}, expected a JSON array")
    return data


class KeycloakAdmin:
    def __init__(self, base_url: str, admin_user: str, admin_password: str, *, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin_user = admin_user
        self.admin_password = admin_password
        self.timeout = timeout
        self.http = requests.Session()
        # A developer's HTTP(S)_PROXY must not capture calls to a Keycloak on this machine.
        self.http.trust_env = not is_loopback(self.base_url)
        self._admin_token: str | None = None
        self._admin_token_expires = 0.0

    # ------------------------------------------------------------------ plumbing
    def issuer(self, realm: str) -> str:
        return f"{self.base_url}/realms/{realm}"

    def _oidc(self, realm: str, endpoint: str) -> str:
        return f"{self.issuer(realm)}/protocol/openid-connect/{endpoint}"

    def _send(self, method: str, url: str, expect: tuple[int, ...] = (200,), **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        answer = self.http.request(method, url, **kwargs)
        if answer.status_code not in expect:
            raise KeycloakError(method, url, answer.status_code, answer.text)
        return answer

    def admin_token(self) -> str:
        # Master realm admin tokens live 60 s by default: fetch a new one shortly before expiry.
        if self._admin_token is None or time.monotonic() > self._admin_token_expires:
            answer = _obj(self._send("POST", self._oidc("master", "token"), data={
                "grant_type": "password", "client_id": "admin-cli",
                "username": self.admin_user, "password": self.admin_password,
            }))
            token = str(answer["access_token"])
            self._admin_token = token
            self._admin_token_expires = time.monotonic() + max(float(answer.get("expires_in", 60)) - 15, 1)
            return token
        return self._admin_token

    def _admin(self, method: str, realm: str, path: str, expect: tuple[int, ...] = (200,),
               **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}/admin/realms/{quote(realm, safe='')}{path}"
        try:
            return self._send(method, url, expect, headers={"Authorization": f"Bearer {self.admin_token()}"},
                              **kwargs)
        except KeycloakError as exc:
            if exc.status != 401:
                raise
        # The admin session ended early (e.g. a test logged out every session): sign in again once.
        self._admin_token = None
        return self._send(method, url, expect, headers={"Authorization": f"Bearer {self.admin_token()}"}, **kwargs)

    # ------------------------------------------------------------------ tokens
    def password_token(self, realm: str, client_id: str, username: str, password: str, scope: str | None = None,
                       client_secret: str | None = None) -> dict[str, Any]:
        """The whole token response (access_token, refresh_token, id_token when scope has openid, ...)."""
        data = {"grant_type": "password", "username": username, "password": password}
        headers: dict[str, str] = {}
        if client_secret is None:
            data["client_id"] = client_id
        else:
            headers["Authorization"] = client_secret_basic(client_id, client_secret)
        if scope is not None:
            data["scope"] = scope
        return _obj(self._send("POST", self._oidc(realm, "token"), data=data, headers=headers))

    def refresh(self, realm: str, client_id: str, refresh_token: str) -> dict[str, Any]:
        data = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": refresh_token}
        return _obj(self._send("POST", self._oidc(realm, "token"), data=data))

    def introspect(self, realm: str, client_id: str, secret: str, token: str,
                   token_type_hint: str | None = None) -> dict[str, Any]:
        """RFC 7662 with client_secret_basic. Since 26.6.2 the caller must be in the token's aud."""
        data = {"token": token}
        if token_type_hint:
            data["token_type_hint"] = token_type_hint
        return _obj(self._send("POST", self._oidc(realm, "token/introspect"), data=data,
                               headers={"Authorization": client_secret_basic(client_id, secret)}))

    def revoke_token(self, realm: str, client_id: str, token: str, client_secret: str | None = None,
                     token_type_hint: str | None = None) -> None:
        """RFC 7009. Public clients identify themselves with client_id; only the token's own client may revoke it."""
        data = {"token": token}
        headers: dict[str, str] = {}
        if token_type_hint:
            data["token_type_hint"] = token_type_hint
        if client_secret is None:
            data["client_id"] = client_id
        else:
            headers["Authorization"] = client_secret_basic(client_id, client_secret)
        self._send("POST", self._oidc(realm, "revoke"), data=data, headers=headers)

    def jwks(self, realm: str) -> dict[str, Any]:
        return _obj(self._send("GET", self._oidc(realm, "certs")))

    # ------------------------------------------------------------------ keys
    def add_key_provider(self, realm: str, provider_id: str = "rsa-generated", priority: int = 100,
                         algorithm: str | None = None, name: str | None = None, *, enabled: bool = True,
                         active: bool = True, extra_config: dict[str, str] | None = None) -> str:
        """Create a key provider component; return its id. Higher priority = preferred for signing.

        `algorithm`: rsa-generated RS256/RS384/RS512/PS256/...; ecdsa-generated ES256/ES384/ES512;
        eddsa-generated EdDSA/Ed25519/Ed448; hmac-generated HS256/HS384/HS512.
        """
        config: dict[str, list[str]] = {
            "priority": [str(priority)], "enabled": [str(enabled).lower()], "active": [str(active).lower()],
        }
        if algorithm is not None:
            if provider_id == "ecdsa-generated":
                config["ecdsaEllipticCurveKey"] = [EC_CURVES[algorithm]]
            elif provider_id == "eddsa-generated":
                config["eddsaEllipticCurveKey"] = [ED_CURVES[algorithm]]
            else:
                config["algorithm"] = [algorithm]
        for key, value in (extra_config or {}).items():
            config[key] = [value]
        rep = {"name": name or f"{provider_id}-{algorithm or 'default'}-{priority}", "providerId": provider_id,
               "providerType": KEY_PROVIDER_TYPE, "config": config}
        answer = self._admin("POST", realm, "/components", expect=(201,), json=rep)
        # 201 Created, Location: .../components/<id>
        return answer.headers["Location"].rstrip("/").rsplit("/", 1)[-1]

    def list_key_providers(self, realm: str) -> list[dict[str, Any]]:
        """Key provider components (id, name, providerId, config without private keys).

        Keycloak adds a `fallback-<alg>` provider (priority -100) by itself when a client asks for an
        algorithm no active key serves: tests that switch algorithms should delete it afterwards.
        """
        return _list(self._admin("GET", realm, "/components", params={"type": KEY_PROVIDER_TYPE}))

    def get_component(self, realm: str, component_id: str) -> dict[str, Any]:
        return _obj(self._admin("GET", realm, f"/components/{component_id}"))

    def _update_key_config(self, realm: str, component_id: str, key: str, value: bool) -> None:
        # The GET leaves out the private key material; the PUT merges config, so the key pair is kept.
        rep = self.get_component(realm, component_id)
        rep["config"][key] = [str(value).lower()]
        self._admin("PUT", realm, f"/components/{component_id}", expect=(204,), json=rep)

    def set_key_provider_enabled(self, realm: str, component_id: str, enabled: bool) -> None:
        """Disabled keys leave the JWKS: tokens signed with them stop validating."""
        self._update_key_config(realm, component_id, "enabled", enabled)

    def set_key_provider_active(self, realm: str, component_id: str, active: bool) -> None:
        """Passive keys no longer sign but stay in the JWKS, so existing tokens keep validating."""
        self._update_key_config(realm, component_id, "active", active)

    def delete_component(self, realm: str, component_id: str) -> None:
        self._admin("DELETE", realm, f"/components/{component_id}", expect=(204,))

    def list_keys(self, realm: str) -> dict[str, Any]:
        """KeysMetadataRepresentation: {"active": {alg: kid}, "keys": [{kid, algorithm, type, status, use,
        providerId, providerPriority, publicKey, certificate, ...}]}."""
        return _obj(self._admin("GET", realm, "/keys"))

    # ------------------------------------------------------------------ clients
    def get_client(self, realm: str, client_id: str) -> dict[str, Any]:
        found = _list(self._admin("GET", realm, "/clients", params={"clientId": client_id}))
        if not found:
            raise LookupError(f"no client {client_id!r} in realm {realm!r}")
        return found[0]

    def set_client_attribute(self, realm: str, client_id: str, attr: str, value: str | None) -> str | None:
        """Set (or with None remove) a client attribute; return the previous value, for restoring.

        e.g. attr "access.token.signed.response.alg" = "ES256" (needs an active ES256 key in the realm).
        """
        rep = self.get_client(realm, client_id)
        attributes = rep.setdefault("attributes", {})
        previous = attributes.get(attr)
        # Keycloak removes an attribute sent as an empty string (RepresentationToModel.updateClient).
        attributes[attr] = "" if value is None else value
        self._admin("PUT", realm, f"/clients/{rep['id']}", expect=(204,), json=rep)
        return previous or None

    def update_client(self, realm: str, client_id: str, **fields: Any) -> dict[str, Any]:
        """Set top-level client fields (e.g. adminUrl, frontchannelLogout); return the previous
        values of those fields, for restoring."""
        rep = self.get_client(realm, client_id)
        previous = {name: rep.get(name) for name in fields}
        rep.update(fields)
        self._admin("PUT", realm, f"/clients/{rep['id']}", expect=(204,), json=rep)
        return previous

    def set_realm_not_before(self, realm: str, not_before: int) -> None:
        """Tokens issued before `not_before` become invalid (the Revocation tab's "Set to now")."""
        rep = _obj(self._admin("GET", realm, ""))
        rep["notBefore"] = not_before
        self._admin("PUT", realm, "", expect=(204,), json=rep)

    def push_revocation(self, realm: str) -> dict[str, Any]:
        """Push the realm's not-before to every client with an admin URL (k_push_not_before)."""
        return _obj(self._admin("POST", realm, "/push-revocation"))

    def end_session(self, realm: str, client_id: str, refresh_token: str) -> None:
        """The user logging out through Keycloak's logout endpoint (a public client's way)."""
        self._send("POST", self._oidc(realm, "logout"), expect=(204,),
                   data={"client_id": client_id, "refresh_token": refresh_token})

    # ------------------------------------------------------------------ users and sessions
    def user_id(self, realm: str, username: str) -> str:
        found = _list(self._admin("GET", realm, "/users", params={"username": username, "exact": "true"}))
        if not found:
            raise LookupError(f"no user {username!r} in realm {realm!r}")
        return str(found[0]["id"])

    def get_user(self, realm: str, user_id: str) -> dict[str, Any]:
        return _obj(self._admin("GET", realm, f"/users/{user_id}"))

    def set_user_enabled(self, realm: str, user_id: str, enabled: bool) -> None:
        # Send the whole representation: a partial one may clear profile attributes (user profile rules).
        rep = self.get_user(realm, user_id)
        rep["enabled"] = enabled
        self._admin("PUT", realm, f"/users/{user_id}", expect=(204,), json=rep)

    def logout_user(self, realm: str, user_id: str) -> None:
        """Ends every session of the user (and sends back-channel logout tokens to clients that want them)."""
        self._admin("POST", realm, f"/users/{user_id}/logout", expect=(204,))

    def user_sessions(self, realm: str, user_id: str) -> list[dict[str, Any]]:
        """UserSessionRepresentation list: id (the tokens' sid), username, clients, start, lastAccess, ..."""
        return _list(self._admin("GET", realm, f"/users/{user_id}/sessions"))

    def delete_session(self, realm: str, session_id: str) -> None:
        self._admin("DELETE", realm, f"/sessions/{session_id}", expect=(204,))

    # ------------------------------------------------------------------ users and realm-wide actions
    def create_user(self, realm: str, username: str, password: str) -> str:
        """A fresh enabled user with a permanent password and a complete profile; its id."""
        rep = {"username": username, "enabled": True, "email": f"{username}@example.com", "emailVerified": True,
               "firstName": username, "lastName": "Test",
               "credentials": [{"type": "password", "value": password, "temporary": False}]}
        self._admin("POST", realm, "/users", expect=(201,), json=rep)
        return self.user_id(realm, username)

    def delete_user(self, realm: str, user_id: str) -> None:
        self._admin("DELETE", realm, f"/users/{user_id}", expect=(204,))

    def reset_password(self, realm: str, user_id: str, password: str) -> None:
        self._admin("PUT", realm, f"/users/{user_id}/reset-password", expect=(204,),
                    json={"type": "password", "value": password, "temporary": False})

    def logout_all(self, realm: str) -> dict[str, Any]:
        """The admin console's "Sign out all active sessions" (Sessions, realm action)."""
        return _obj(self._admin("POST", realm, "/logout-all"))

    def remove_realm_role(self, realm: str, user_id: str, role: str) -> None:
        rep = _obj(self._admin("GET", realm, f"/roles/{quote(role, safe='')}"))
        self._admin("DELETE", realm, f"/users/{user_id}/role-mappings/realm", expect=(204,), json=[rep])

    def add_realm_role(self, realm: str, user_id: str, role: str) -> None:
        rep = _obj(self._admin("GET", realm, f"/roles/{quote(role, safe='')}"))
        self._admin("POST", realm, f"/users/{user_id}/role-mappings/realm", expect=(204,), json=[rep])
