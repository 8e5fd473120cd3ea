"""What a user does at Keycloak themselves, over plain HTTP as a browser or the account console
would: change their password (the `kc_action=UPDATE_PASSWORD` application-initiated action, with
or without "Sign out from other devices"), end one of their sessions, revoke a client's access."""

from __future__ import annotations

import html
import re
from urllib.parse import quote

import requests

CALLBACK = "http://127.0.0.1/kcauth-test/callback"  # test-cli's redirect URI (realm file); never fetched
_FORM = re.compile(r'<form[^>]*\baction="([^"]+)"')
_http = requests.Session()
_http.trust_env = False  # a developer's HTTP(S)_PROXY must not capture calls to this machine's Keycloak


def _insecure_cookies(session: requests.Session) -> None:
    # Keycloak marks its cookies Secure even on http://127.0.0.1 (browsers treat loopback as a
    # secure context); requests would not send them back over http.
    for cookie in session.cookies:
        cookie.secure = False


def _form_action(page: str) -> str:
    found = _FORM.search(page)
    if found is None:
        raise AssertionError(f"no form in Keycloak's page: {page[:300]!r}")
    return html.unescape(found.group(1))


def change_password(issuer: str, client_id: str, username: str, old: str, new: str, *,
                    sign_out_other_devices: bool) -> None:
    """Sign in through the browser flow and change the password on Keycloak's own page."""
    s = requests.Session()
    s.trust_env = False
    page = s.get(f"{issuer}/protocol/openid-connect/auth", timeout=15, params={
        "client_id": client_id, "response_type": "code", "redirect_uri": CALLBACK, "scope": "openid",
        "kc_action": "UPDATE_PASSWORD"})
    _insecure_cookies(s)
    answer = s.post(_form_action(page.text), data={"username": username, "password": old, "credentialId": ""},
                    allow_redirects=False, timeout=15)
    for _ in range(5):  # to the required action's page
        if answer.status_code != 302:
            break
        _insecure_cookies(s)
        answer = s.get(answer.headers["Location"], allow_redirects=False, timeout=15)
    _insecure_cookies(s)
    form = {"password-new": new, "password-confirm": new}
    if sign_out_other_devices:
        form["logout-sessions"] = "on"
    done = s.post(_form_action(answer.text), data=form, allow_redirects=False, timeout=15)
    location = done.headers.get("Location", "")
    if done.status_code != 302 or not location.startswith(CALLBACK) or "kc_action_status=success" not in location:
        raise AssertionError(f"password change not confirmed: HTTP {done.status_code} {location[:200]}")


def _account(issuer: str, method: str, path: str, token: str) -> None:
    answer = _http.request(method, f"{issuer}/account{path}", timeout=15,
                              headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    if answer.status_code != 204:
        raise AssertionError(f"account API {method} {path}: HTTP {answer.status_code} {answer.text[:200]}")


def end_session(issuer: str, token: str, session_id: str) -> None:
    """The account console's "Sign out" of one device (the user's token must have aud `account`)."""
    _account(issuer, "DELETE", f"/sessions/{quote(session_id, safe='')}", token)


def revoke_access(issuer: str, token: str, client_id: str) -> None:
    """The account console's "Remove access" of an application."""
    _account(issuer, "DELETE", f"/applications/{quote(client_id, safe='')}/consent", token)
