"""Run spec/*.yaml over HTTP against a live gateway: `python -m tests.spec_http` (`make spec-http`).

Works against any running Kong with the kcauth plugin (the compose stack) or the demo's stand-in:
it starts the cases' identity provider (keys it controls, so forged tokens can be made) and an echo
upstream, replaces the gateway's configuration through the DB-less Admin API (`POST /config`)
with one route per case, sends each case's request, and checks status, challenge and upstream
headers (ACL groups are only visible to the harness runner). The IdP and the upstream listen on
loopback, so the gateway must run on this machine (for the compose stack: Kong with host
networking). Afterwards the gateway keeps the test configuration: restart it (`docker compose
restart kong`) to get kong.yml back.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from tests.harness.gateway import EchoUpstream
from tests.harness.spec import Case, SpecIdP, load_cases, problems, request_headers


def run(gateway: str, admin: str) -> tuple[int, int, list[str]]:
    """(passed, failed, failure lines)."""
    idp = SpecIdP()
    echo = EchoUpstream()
    try:
        cases = load_cases()
        _post(f"{admin}/config", declarative(cases, idp.server.issuer, echo.url))
        failures: list[str] = []
        failed = 0
        for i, case in enumerate(cases):
            headers, token = request_headers(case, idp)
            status, answer_headers, body = _send(f"{gateway}/spec/{i}", headers)
            upstream_headers = _echoed(body) if status == 200 else None
            found = problems(case, token, status, answer_headers,
                             body if status != 200 else None, upstream_headers)
            failed += bool(found)
            failures += [f"{case.id}: {p}" for p in found]
        return len(cases) - failed, failed, failures
    finally:
        echo.stop()
        idp.server.stop()


def declarative(cases: list[Case], issuer: str, upstream: str) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "services": [{"name": "spec-echo", "url": upstream,
                      "routes": [{"name": f"spec-{i}", "paths": [f"/spec/{i}"]} for i in range(len(cases))]}],
        "plugins": [{"name": "kcauth", "route": f"spec-{i}", "config": {"issuer": issuer, **case.config}}
                    for i, case in enumerate(cases)],
    }


def _post(url: str, doc: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - operator-given URL
        if answer.status not in (200, 201):
            raise RuntimeError(f"POST {url} answered {answer.status}")


def _send(url: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, str], Any]:
    # http.client, not urllib: cases send repeated headers (two Authorization headers) as listed.
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
    try:
        conn.putrequest("GET", parts.path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        raw = resp.read()
        answer_headers = dict(resp.getheaders())
    finally:
        conn.close()
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return resp.status, answer_headers, body


def _echoed(body: Any) -> dict[str, list[str]]:
    """Request headers as the echo upstream saw them (this project's echo lists every value;
    single-value echo servers are accepted too)."""
    headers = body.get("headers", {}) if isinstance(body, dict) else {}
    return {k.lower(): (v if isinstance(v, list) else [v]) for k, v in headers.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run spec/*.yaml over HTTP against a live gateway")
    parser.add_argument("--gateway", default="http://127.0.0.1:8000", help="proxy URL")
    parser.add_argument("--admin", default="http://127.0.0.1:8001", help="Admin API URL (DB-less)")
    args = parser.parse_args(argv)
    passed, failed, failures = run(args.gateway.rstrip("/"), args.admin.rstrip("/"))
    for line in failures:
        print("FAIL " + line)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
