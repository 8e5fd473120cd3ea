"""The soak: the plugin server at saturation with mixed traffic for a long while, watched.

    python -m tests.bench.soak [--minutes 10] [--server core|threads|gevent] [--conns 16]

Traffic, drawn at random per request by every client thread, through the Kong emulator: valid
tokens (a pool, so the cache hits and misses), first-seen valid tokens, garbage, random key ids,
expired tokens, a route lacking the role (403), a sensitive route (introspection, LocalIdP +5 ms),
and dropped connections (an event started and its connection closed before the Step, as when
Kong gives up). Every answer is checked. Every 30 s: RSS, threads, greenlets, live events and
running handlers of the plugin server. It fails (exit 1) on a wrong answer, or when RSS, threads
or greenlets keep growing past the bounds the caches allow.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import threading
import time
from typing import Any

import msgpack

from tests.bench.load import Server, expect_allowed, expect_status, request_headers
from tests.bench.mint import Mint, garbage
from tests.harness import kong_schema
from tests.harness.idp import LocalIdP, Minter, SigningKey

SAMPLE_EVERY = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--server", choices=("core", "threads", "gevent"), default="core")
    parser.add_argument("--conns", type=int, default=16)
    args = parser.parse_args(argv)

    idp = LocalIdP().start()
    key = SigningKey("RS256")
    idp.keys.append(key.jwk())
    idp.introspection_delay = 0.005
    mint = Mint(idp.issuer)
    server = Server("kcauth", args.server).start()
    kong = server.kong
    assert kong is not None
    base = {"issuer": idp.issuer, "audiences": ["orders-api"], "realm": "soak"}
    local = server.entity(base)
    admin = server.entity({**base, "required_roles": ["realm:admin"]})
    sensitive = server.entity({**base, "introspect": True, "client_id": "orders-api",
                               "client_secret": "orders-api-secret", "introspection_cache_ttl": 2})
    print("minting tokens...", file=sys.stderr, flush=True)
    pool = mint.valid(key, 500)
    fresh = mint.valid(key, 20000)
    expired = Minter(idp.issuer, key).token(exp=int(time.time()) - 3600)
    kids = mint.random_kid(SigningKey("RS256"), 200)
    junk = garbage(200)
    fresh_next = iter(fresh)
    fresh_lock = threading.Lock()
    counts: dict[str, int] = {}
    wrong: list[str] = []
    stop_at = time.monotonic() + args.minutes * 60
    lock = threading.Lock()

    def instance_id() -> int:
        """The local route's instance, started once as Kong does (plugin.lua get_instance_id
        reuses it for every event of the entity until its config changes)."""
        conf = kong_schema.kong_config_for_instance(kong.config_field, local.config, plugin_id=local.id,
                                                    seq=local.seq, route_id=local.route_id)
        return int(kong.rpc.call("plugin.StartInstance", {"Name": "kcauth", "Config": json.dumps(conf)})["Id"])

    dropped_iid = instance_id()

    def dropped() -> str | None:
        """An event whose connection Kong closes before its first Step (Kong gave up on it)."""
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(server.process.socket_path))
            event = {"InstanceId": dropped_iid, "EventName": "access"}
            conn.sendall(msgpack.packb([0, 2, "plugin.HandleEvent", [event]]))
            unpacker = msgpack.Unpacker(raw=False)
            while True:
                data = conn.recv(65536)
                if not data:
                    return "the server closed the connection"
                unpacker.feed(data)
                answer = next((m for m in unpacker if m[0] == 1), None)
                if answer is not None:
                    return None if answer[2] is None else f"RPC error: {answer[2]}"

    def one() -> tuple[str, str | None]:
        kind = random.choices(["hit", "first", "garbage", "kid", "expired", "role", "sensitive", "dropped"],
                              [40, 10, 10, 10, 5, 10, 10, 5])[0]
        if kind == "dropped":
            return kind, dropped()
        if kind == "first":
            with fresh_lock:
                token = next(fresh_next, None)
            if token is None:
                kind, token = "hit", random.choice(pool)
        else:
            token = {"hit": lambda: random.choice(pool), "garbage": lambda: random.choice(junk),
                     "kid": lambda: random.choice(kids), "expired": lambda: expired,
                     "role": lambda: random.choice(pool), "sensitive": lambda: random.choice(pool)}[kind]()
        entity = {"role": admin, "sensitive": sensitive}.get(kind, local)
        res = kong.request(entity, request_headers(token))
        check = expect_allowed if kind in ("hit", "first", "sensitive") else \
            expect_status(403 if kind == "role" else 401)
        return kind, check(res)

    def client() -> None:
        while time.monotonic() < stop_at:
            try:
                kind, problem = one()
            except Exception as exc:  # noqa: BLE001 - a broken client is a wrong answer
                kind, problem = "client", f"{type(exc).__name__}: {exc}"
            with lock:
                counts[kind] = counts.get(kind, 0) + 1
                if problem is not None and len(wrong) < 20:
                    wrong.append(f"{kind}: {problem}")

    samples: list[dict[str, Any]] = []

    def sample(elapsed: float) -> None:
        status = kong.status()
        samples.append({"t": elapsed, "rss": server.rss_mb(), "threads": server.threads(),
                        "greenlets": status["Greenlets"], "events": status["Events"], "running": status["Running"],
                        "requests": sum(counts.values())})
        print(json.dumps(samples[-1]), file=sys.stderr, flush=True)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.conns)]
    started = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() < stop_at:
        time.sleep(min(SAMPLE_EVERY, max(0.0, stop_at - time.monotonic())))
        sample(time.monotonic() - started)
    for t in threads:
        t.join(30)
    time.sleep(5)  # dropped events are aborted within a few seconds
    sample(time.monotonic() - started)
    server.stop()
    idp.stop()
    mint.close()

    total = sum(counts.values())
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2]
    growth = {k: half[-1][k] - half[0][k] for k in ("rss", "threads", "greenlets")} if len(half) > 1 else {}
    print(f"\nsoak: {args.server} server, {args.conns} connections, {args.minutes:g} min, {total:,} requests "
          f"({total / max(samples[-1]['t'], 1):,.0f} req/s): "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    print(f"RSS {samples[0]['rss']:.1f} -> {samples[-1]['rss']:.1f} MB (second half {growth.get('rss', 0):+.1f} MB); "
          f"threads {samples[0]['threads']} -> {samples[-1]['threads']}; greenlets {samples[0]['greenlets']} -> "
          f"{samples[-1]['greenlets']}; at the end {samples[-1]['events']} events, {samples[-1]['running']} running")
    print(f"wrong answers: {len(wrong)}" + ("".join(f"\n  {w}" for w in wrong)))
    bounded = growth.get("rss", 0) <= 16 and growth.get("threads", 0) <= 2 and growth.get("greenlets", 0) <= 20 \
        and samples[-1]["events"] == 0 and samples[-1]["running"] == 0
    print("bounded" if bounded else "NOT bounded")
    return 0 if bounded and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
