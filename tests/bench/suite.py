"""The benchmark run: scenarios, phases, targets. `python -m tests.bench --help`.

Phases, in order (each can be picked with --only):
1. the latency/throughput matrix: every scenario of SCENARIOS at 1, 8 and 32 connections, the
   scenarios interleaved round by round so that a noisy neighbour hits them all alike;
2. `burst`: 64 concurrent requests with one fresh token on a sensitive route, counting the
   introspection calls that reach the endpoint;
3. `modes`: the same scenarios on kong-pdk's server, threads and gevent (`--server kong-pdk [-g]`),
   at every concurrency, beside the matrix's numbers on kcauth's own core;
4. `memory`: RSS of a fresh kcauth plugin server, in each mode, before and after 100,000
   distinct valid and 100,000 distinct refused tokens;
5. `workers`: the floor and kcauth with 1 and 2 worker processes, driven by two emulated nginx
   workers (two client processes, tests/harness/nginx_worker.py), interleaved round by round;
6. `bytes`: what each RPC of a request carries, both ways, on the allow path and beside it;
7. `keycloak`: the sensitive-route miss path against a real Keycloak (KCAUTH_BENCH_KEYCLOAK=1).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from kong_plugin_kcauth.tokens.dpop import thumbprint, token_hash
from tests.bench import report
from tests.bench.load import BASE_HEADERS, Run, Server, Tokens, drive, expect_allowed, expect_status, request_headers
from tests.bench.mint import Mint, garbage
from tests.harness.idp import LocalIdP, SigningKey
from tests.harness.kong import PluginEntity

LEVELS = (1, 8, 32)
MODES_CONNS = 8
BURST = 64
INTROSPECTION_DELAY = 0.005  # LocalIdP's fixed think time per introspection call
BURST_DELAY = 0.2  # long enough that all 64 requests are in flight during the one call
SECRET = "orders-api-secret"
EXTRA_REALMS = tuple(f"extra-{i}" for i in range(9))  # the other issuers of the 10-issuer route
#: Where a run writes unless told (`--out`): ignored by git, so a quick run never overwrites the
#: committed full run (tests/bench/RESULTS.md: `make bench BENCH_ARGS="--out tests/bench/RESULTS.md"`).
DEFAULT_OUT = Path(__file__).resolve().parents[2] / ".run" / "bench-results.md"


@dataclass(frozen=True)
class Profile:
    name: str
    requests: int  # per scenario and concurrency, over all rounds
    seconds: float  # time cap per scenario and concurrency, over all rounds
    rounds: int
    warmup: int
    flood: int  # valid tokens, and as many invalid ones, for the memory phase
    flood_chunk: int


PROFILES = {
    "full": Profile("full", requests=5000, seconds=8.0, rounds=4, warmup=200, flood=100_000, flood_chunk=10_000),
    "quick": Profile("quick", requests=400, seconds=1.5, rounds=1, warmup=40, flood=10_000, flood_chunk=2_500),
    "smoke": Profile("smoke", requests=12, seconds=0.4, rounds=1, warmup=4, flood=200, flood_chunk=100),
}


# --- scenarios ---------------------------------------------------------------------------------

DPOP_BASE = "https://api.example.com"


def public_jwk(key: SigningKey) -> dict[str, Any]:
    return {k: v for k, v in key.jwk().items() if k not in ("kid", "use", "alg")}


class DPoPProofs:
    """A DPoP-bound token with a fresh proof for every request, signed by the client thread
    (so its cost lands on the emulator's CPU, not the plugin server's)."""

    def __init__(self, token: str, key: SigningKey | None, url: str) -> None:
        assert key is not None
        self._token, self._key, self._url = token, key, url
        self._jwk, self._ath = public_jwk(key), token_hash(token)

    def __call__(self) -> list[tuple[str, str]]:
        proof = jwt.encode({"jti": uuid.uuid4().hex, "htm": "GET", "htu": self._url, "iat": int(time.time()),
                            "ath": self._ath}, self._key.private, algorithm=self._key.alg,
                           headers={"typ": "dpop+jwt", "jwk": self._jwk})
        return [*BASE_HEADERS, ("Authorization", f"DPoP {self._token}"), ("DPoP", proof)]


@dataclass
class Context:
    idp: LocalIdP
    key: SigningKey  # the realm's RS256 key (Keycloak's default)
    flood_key: SigningKey  # the realm's ES256 key, for cheaply minted floods
    mint: Mint
    profile: Profile
    hit_token: str = ""
    dpop_token: str = ""  # the hit token's claims, bound to `dpop_key` (typ DPoP, cnf.jkt)
    dpop_key: SigningKey | None = None

    def local(self, realm: str, **extra: Any) -> dict[str, Any]:
        # `realm` only names the challenge; here it also gives each scenario its own cache.
        return {"issuer": self.idp.issuer, "audiences": ["orders-api"], "realm": realm, **extra}

    def sensitive(self, realm: str, **extra: Any) -> dict[str, Any]:
        return self.local(realm, introspect=True, client_id="orders-api", client_secret=SECRET, **extra)

    def naive(self, introspect: bool) -> dict[str, Any]:
        return {"issuer": self.idp.issuer, "audience": "orders-api", "jwks_uri": self.idp.jwks_uri,
                "introspect": introspect, "client_id": "orders-api", "client_secret": SECRET,
                "introspection_endpoint": self.idp.issuer + "/protocol/openid-connect/token/introspect"}

    def requests_for(self, levels: tuple[int, ...]) -> int:
        """Upper bound of the requests one scenario gets at these levels (warm-ups included)."""
        return sum(self.profile.requests + max(self.profile.warmup, conns) for conns in levels) + 8


@dataclass(frozen=True)
class Scenario:
    key: str  # for --only
    label: str  # the row of the table
    server: str  # kcauth, floor or naive
    config: Callable[[Context], dict[str, Any]]
    tokens: Callable[[Context, int], Tokens]  # given how many requests it will serve at most
    check: Callable[[Any], str | None]


@functools.cache
def assertion_key(algorithm: str) -> str:
    """A signing key for the upstream assertion's scenarios (PKCS#8 PEM), one per run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    key = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ES256" else ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("floor", "floor: same PDK calls, no work", "floor",
             lambda c: {}, lambda c, n: Tokens.same(c.hit_token), expect_allowed),
    Scenario("local-hit", "kcauth local: cache hit (same token)", "kcauth",
             lambda c: c.local("bench-local-hit"), lambda c, n: Tokens.same(c.hit_token), expect_allowed),
    Scenario("local-hit-metrics", "kcauth local: cache hit, --metrics on", "kcauth-metrics",
             lambda c: c.local("bench-local-hit-metrics"), lambda c, n: Tokens.same(c.hit_token), expect_allowed),
    Scenario("local-hit-logged", "kcauth local: cache hit, log_decision on", "kcauth",
             lambda c: c.local("bench-local-hit-logged", log_decision=True), lambda c, n: Tokens.same(c.hit_token),
             expect_allowed),
    Scenario("local-hit-10-issuers", "kcauth local: cache hit, 10 issuers on the route", "kcauth",
             lambda c: c.local("bench-local-hit-10", issuers=[{"issuer": f"{c.idp.origin}/realms/{name}"}
                                                              for name in EXTRA_REALMS]),
             lambda c, n: Tokens.same(c.hit_token), expect_allowed),
    Scenario("dpop-hit", "kcauth local: DPoP-bound token, cache hit, a fresh proof each", "kcauth",
             lambda c: c.local("bench-dpop", public_base_url=DPOP_BASE),
             lambda c, n: DPoPProofs(c.dpop_token, c.dpop_key, DPOP_BASE + "/"), expect_allowed),
    *(Scenario(f"assert-{alg.lower()}", f"kcauth local: cache hit, upstream assertion {alg}", "kcauth",
               lambda c, alg=alg: c.local(f"bench-assert-{alg.lower()}", upstream_assertion={
                   "audience": "orders-backend", "algorithm": alg, "private_key": assertion_key(alg)}),
               lambda c, n: Tokens.same(c.hit_token), expect_allowed) for alg in ("ES256", "EdDSA")),
    Scenario("local-first", "kcauth local: first-seen tokens", "kcauth",
             lambda c: c.local("bench-local-first"),
             lambda c, n: Tokens(c.mint.valid(c.key, n), cycle=False), expect_allowed),
    Scenario("sens-hit", "kcauth sensitive: introspection cache hit", "kcauth",
             lambda c: c.sensitive("bench-sens-hit"), lambda c, n: Tokens.same(c.hit_token), expect_allowed),
    Scenario("sens-miss", "kcauth sensitive: miss, LocalIdP +5 ms", "kcauth",
             lambda c: c.sensitive("bench-sens-miss", introspection_cache_ttl=0),
             # ttl 0 keeps no outcome, so a cycled pool of distinct tokens is all misses; distinct
             # tokens, so concurrent requests never share one introspection call.
             lambda c, n: Tokens(c.mint.valid(c.key, min(2000, n)), cycle=True), expect_allowed),
    Scenario("naive-local", "naive local: PyJWKClient + jwt.decode", "naive",
             lambda c: c.naive(False), lambda c, n: Tokens.same(c.hit_token), expect_allowed),
    Scenario("naive-sens", "naive sensitive: + requests.post, LocalIdP +5 ms", "naive",
             lambda c: c.naive(True), lambda c, n: Tokens.same(c.hit_token), expect_allowed),
    Scenario("reject-garbage", "kcauth reject: garbage tokens", "kcauth",
             lambda c: c.local("bench-reject"), lambda c, n: Tokens(garbage(1000), cycle=True), expect_status(401)),
    Scenario("reject-kid", "kcauth reject: random-kid tokens", "kcauth",
             lambda c: c.local("bench-reject"),
             lambda c, n: Tokens(c.mint.random_kid(SigningKey("RS256"), min(1000, n)), cycle=True),
             expect_status(401)),
)
KEYCLOAK_KEY = "sens-keycloak"
KEYCLOAK_LABEL = "kcauth sensitive: miss, real Keycloak"
PHASES = ("burst", "modes", "memory", "workers", "bytes", "keycloak")
WORKER_COUNTS = (1, 2)
NGINX_WORKERS = 2  # client processes in the workers phase, each with MODES_CONNS // 2 connections
BYTES_REQUESTS = 200
MODE_SCENARIOS = ("floor", "local-hit", "local-first", "sens-hit")  # the floor and kcauth are the ones asked for
PDK_MODES = ("threads", "gevent")


# --- results ---------------------------------------------------------------------------------

@dataclass
class Results:
    profile: Profile
    command: str
    only: list[str]
    mode: str = "core"  # server of the plugin servers outside the modes comparison
    machine: dict[str, str] = field(default_factory=dict)
    cells: dict[tuple[str, int], Run] = field(default_factory=dict)
    idp_calls: dict[tuple[str, int], int] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)
    modes: dict[tuple[str, str, int], Run] = field(default_factory=dict)  # (mode, scenario, conns)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)  # by server mode
    workers: dict[tuple[str, int], Run] = field(default_factory=dict)  # (floor | kcauth, worker processes)
    bytes: dict[str, dict[str, Any]] = field(default_factory=dict)  # by case label
    keycloak: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    duration: float = 0.0
    noise: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def wanted(self, key: str) -> bool:
        return not self.only or any(key == o or key.startswith(o) for o in self.only)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- phases ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, results: Results) -> None:
        self.r = results
        self.p = results.profile
        self.servers: dict[tuple[str, str], Server] = {}
        self.idp = LocalIdP()
        self.idp.realms = set(EXTRA_REALMS)
        _like_keycloak(self.idp)
        self.key = SigningKey("RS256")
        self.flood_key = SigningKey("ES256")
        self.idp.keys += [self.key.jwk(), self.flood_key.jwk()]
        self.idp.introspection_delay = INTROSPECTION_DELAY
        self.mint = Mint(self.idp.issuer)
        self.ctx = Context(self.idp, self.key, self.flood_key, self.mint, self.p)

    def server(self, kind: str, mode: str | None = None) -> Server:
        mode = mode or self.r.mode
        s = self.servers.get((kind, mode))
        if s is None:
            log(f"starting the {kind} plugin server ({mode})")
            s = self.servers[(kind, mode)] = Server(kind, mode).start()
        return s

    def close(self) -> None:
        for s in self.servers.values():
            s.stop()
        self.servers.clear()
        self.mint.close()
        self.idp.stop()

    def idp_count(self) -> int:
        return self.idp.introspection_requests + self.idp.jwks_requests + self.idp.discovery_requests

    def run(self) -> None:
        self.idp.start()
        self.ctx.hit_token = self.mint.valid(self.key, 1)[0]
        self.ctx.dpop_key = SigningKey("ES256")
        jkt = thumbprint(public_jwk(self.ctx.dpop_key))
        self.ctx.dpop_token = jwt.encode(self.mint.claims(typ="DPoP", cnf={"jkt": jkt, "kc-jkt-type": "DPoP"}),
                                         self.key.private, algorithm=self.key.alg, headers={"kid": self.key.kid})
        scenarios = [s for s in SCENARIOS if self.r.wanted(s.key)]
        phases: list[tuple[str, Callable[[], None]]] = []
        if scenarios:
            phases.append(("matrix", lambda: self.matrix(scenarios)))
        for name, phase in (("burst", self.burst), ("modes", self.modes), ("memory", self.memory),
                            ("workers", self.workers), ("bytes", self.bytes)):
            if self.r.wanted(name):
                phases.append((name, phase))
        if self.r.wanted("keycloak") or self.r.wanted(KEYCLOAK_KEY):
            phases.append(("keycloak", self.keycloak))
        for name, phase in phases:
            try:
                phase()
            except Exception as exc:  # noqa: BLE001 - the other phases still run and report
                traceback.print_exc()
                self.r.failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:500]}")
                log(f"{name} failed: {type(exc).__name__}: {exc}")

    def _prepare(self, scenario: Scenario, server: Server, levels: tuple[int, ...]) -> tuple[Any, Tokens]:
        return server.entity(scenario.config(self.ctx)), scenario.tokens(self.ctx, self.ctx.requests_for(levels))

    def _measure(self, server: Server, entity: Any, tokens: Tokens, conns: int, requests: int,
                 seconds: float, check: Any) -> tuple[Run, int]:
        before = self.idp_count()
        run = drive(server, entity, tokens, conns, requests, seconds, check)
        self.idp.introspection_forms.clear()  # the IdP keeps every form; keep its memory flat
        if run.errors:
            log(f"  {run.errors} wrong answers, first: {run.first_error[:300]}")
        return run, self.idp_count() - before

    def matrix(self, scenarios: list[Scenario]) -> None:
        log(f"minting token pools for {len(scenarios)} scenarios")
        prepared = {s.key: (self.server(s.server),) + self._prepare(s, self.server(s.server), LEVELS)
                    for s in scenarios}
        for conns in LEVELS:
            for s in scenarios:
                server, entity, tokens = prepared[s.key]
                self._measure(server, entity, tokens, conns, max(self.p.warmup, conns), 30, s.check)
            for rnd in range(self.p.rounds):
                # Rotate the order each round: no scenario always runs right after another.
                order = scenarios[rnd % len(scenarios):] + scenarios[:rnd % len(scenarios)]
                for s in order:
                    server, entity, tokens = prepared[s.key]
                    run, calls = self._measure(server, entity, tokens, conns, self.p.requests // self.p.rounds,
                                               self.p.seconds / self.p.rounds, s.check)
                    self.r.cells.setdefault((s.key, conns), Run()).add(run)
                    self.r.idp_calls[(s.key, conns)] = self.r.idp_calls.get((s.key, conns), 0) + calls
            for s in scenarios:
                cell = self.r.cells[(s.key, conns)]
                log(f"{conns:>2} conns  {s.key:<15} median {cell.median_us:8.0f} us  p99 {cell.p99_us:8.0f} us  "
                    f"{cell.rps:7.0f} req/s  server CPU {cell.server_cpu_us:5.0f} us/req  n={cell.count}")

    def burst(self) -> None:
        server = self.server("kcauth")
        kong = server.kong
        assert kong is not None
        entity = server.entity(self.ctx.sensitive("bench-burst"))
        warm, fresh = self.mint.valid(self.key, 2)
        assert expect_allowed(kong.request(entity, request_headers(warm))) is None  # instance started, keys held
        before = self.idp.introspection_requests
        self.idp.introspection_delay = BURST_DELAY
        barrier = threading.Barrier(BURST)
        outcomes: list[tuple[str | None, float]] = []

        def client() -> None:
            barrier.wait(30)
            t0 = time.perf_counter()
            res = kong.request(entity, request_headers(fresh))
            outcomes.append((expect_allowed(res), time.perf_counter() - t0))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(BURST)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        finally:
            self.idp.introspection_delay = INTROSPECTION_DELAY
        self.r.burst = {
            "requests": BURST,
            "calls": self.idp.introspection_requests - before,
            "allowed": sum(1 for problem, _ in outcomes if problem is None),
            "waited": sum(1 for _, seconds in outcomes if seconds >= BURST_DELAY),
            "delay_ms": BURST_DELAY * 1000,
        }
        log(f"burst: {self.r.burst}")

    def modes(self) -> None:
        """The floor and kcauth on the core and on kong-pdk's server (both modes), every
        concurrency, interleaved: the servers compared are measured in the same rounds."""
        wanted = [s for s in SCENARIOS if s.key in MODE_SCENARIOS]
        prepared = {}
        for mode in ("core", *PDK_MODES):
            for s in wanted:
                server = self.server(s.server, mode)
                prepared[(mode, s.key)] = (server, *self._prepare(s, server, LEVELS), s.check)
        keys = list(prepared)
        for conns in LEVELS:
            for item in prepared.values():
                server, entity, tokens, check = item
                self._measure(server, entity, tokens, conns, max(self.p.warmup, conns), 30, check)
            for rnd in range(self.p.rounds):
                for k in keys[rnd % len(keys):] + keys[:rnd % len(keys)]:
                    server, entity, tokens, check = prepared[k]
                    run, _ = self._measure(server, entity, tokens, conns, self.p.requests // self.p.rounds,
                                           self.p.seconds / self.p.rounds, check)
                    self.r.modes.setdefault((k[0], k[1], conns), Run()).add(run)
            for (mode, key), _ in prepared.items():
                run = self.r.modes[(mode, key, conns)]
                log(f"mode {mode:<8} {key:<10} {conns:>2} conns median {run.median_us:7.0f} us  "
                    f"{run.rps:6.0f} req/s  server CPU {run.server_cpu_us:4.0f} us/req")
        for mode in PDK_MODES:
            for kind in ("floor", "kcauth"):
                s = self.servers.pop((kind, mode), None)
                if s is not None:
                    s.stop()

    def memory(self) -> None:
        """Both modes: refusals leaked ~10 KB each under kong-pdk's own gevent event handling."""
        flood, chunk = self.p.flood, self.p.flood_chunk
        log(f"memory: minting {flood:,} valid (ES256) and {flood:,} invalid tokens")
        warm_valid = self.mint.valid(self.flood_key, max(100, flood // 100))
        valid = self.mint.valid(self.flood_key, flood)
        third = flood // 3
        bad_sig = self.mint.forged(third, kid=self.flood_key.kid, alg="ES256", signature_bytes=64)
        random_kid = self.mint.forged(third, kid=None, alg="ES256", signature_bytes=64)
        invalid = [t for trio in zip(bad_sig, random_kid, garbage(flood - 2 * third), strict=False) for t in trio]
        invalid += garbage(flood - len(invalid))
        warm_invalid = self.mint.forged(len(warm_valid), kid=self.flood_key.kid, alg="ES256", signature_bytes=64) \
            + self.mint.forged(len(warm_valid), kid=None, alg="ES256", signature_bytes=64) + garbage(len(warm_valid))
        for mode in ("core", *PDK_MODES):
            server = Server("kcauth", mode).start()  # fresh: nothing measured before shares it
            try:
                entity = server.entity(self.ctx.local("bench-memory"))
                conns = MODES_CONNS
                # Warm-up: every path once (first use of modules, connections, thread stacks), so
                # that only what the flood leaves behind counts as growth.
                drive(server, entity, Tokens(warm_valid, cycle=False), conns, len(warm_valid), 600, expect_allowed)
                drive(server, entity, Tokens(warm_invalid, cycle=False), conns, len(warm_invalid), 600,
                      expect_status(401))
                drive(server, entity, Tokens.same(warm_valid[0]), conns, len(warm_valid), 600, expect_allowed)
                samples = [("start (after warm-up)", 0, server.rss_mb())]
                errors = 0
                t0 = time.perf_counter()
                for label, tokens, check in (("valid", valid, expect_allowed),
                                             ("invalid", invalid, expect_status(401))):
                    source = Tokens(tokens, cycle=False)
                    for done in range(0, len(tokens), chunk):
                        n = min(chunk, len(tokens) - done)
                        run = drive(server, entity, source, conns, n, 3600, check)
                        errors += run.errors
                        if run.errors:
                            log(f"  memory: {run.errors} wrong answers, first: {run.first_error[:300]}")
                        samples.append((label, done + n, server.rss_mb()))
                    log(f"memory ({mode}): after {len(tokens):,} {label} tokens: RSS {samples[-1][2]:.1f} MB")
                self.r.memory[mode] = {
                    "samples": samples, "errors": errors, "conns": conns, "flood": flood,
                    "hwm": server.rss_mb("VmHWM"), "threads": server.threads(),
                    "seconds": time.perf_counter() - t0, "cache_size": 10_000,
                }
            finally:
                server.stop()

    def workers(self) -> None:
        """Throughput and server CPU per request with 1 and 2 worker processes, the floor beside
        kcauth's cache hit, each driven by two nginx workers of their own (their connections come
        from two pids, so the supervisor routes them to two workers when it has two)."""
        from tests.harness.nginx_worker import NginxWorker

        prepared: dict[tuple[str, int], tuple[Server, PluginEntity, list[NginxWorker]]] = {}
        headers = [list(h) for h in request_headers(self.ctx.hit_token)]
        per_worker = MODES_CONNS // NGINX_WORKERS
        try:
            for count in WORKER_COUNTS:
                for kind in ("floor", "kcauth"):
                    log(f"workers: starting the {kind} plugin server with {count} worker(s)")
                    server = Server(kind, "core", workers=count).start()
                    assert server.kong is not None
                    entity = server.entity(self.ctx.local(f"bench-workers-{count}") if kind == "kcauth" else {})
                    prepared[(kind, count)] = (server, entity, [])
            with ThreadPoolExecutor(8) as pool:  # the emulated nginx workers start in parallel (imports)
                for server, _, nginx in prepared.values():
                    assert server.kong is not None
                    info = server.kong.info
                    nginx.extend(pool.map(lambda _, s=server, i=info: NginxWorker(s.process.socket_path, i),
                                          range(NGINX_WORKERS)))
            keys = list(prepared)
            seconds = self.p.seconds / self.p.rounds
            for key in keys:  # warm-up: instances started, keys held, every connection opened
                server, entity, nginx = prepared[key]
                self._drive_nginx(server, entity, nginx, headers, per_worker, min(seconds / 4, 1.0))
            for rnd in range(self.p.rounds):
                for key in keys[rnd % len(keys):] + keys[:rnd % len(keys)]:
                    server, entity, nginx = prepared[key]
                    run = self._drive_nginx(server, entity, nginx, headers, per_worker, seconds)
                    self.r.workers.setdefault(key, Run()).add(run)
            for key in keys:
                run = self.r.workers[key]
                log(f"workers {key[0]:<6} x{key[1]}: median {run.median_us:7.0f} us  {run.rps:6.0f} req/s  "
                    f"server CPU {run.server_cpu_us:4.0f} us/req  errors {run.errors}")
        finally:
            for server, _, nginx in prepared.values():
                for w in nginx:
                    w.close()
                server.stop()

    def _drive_nginx(self, server: Server, entity: PluginEntity, nginx: list[Any], headers: list[list[str]],
                     threads: int, seconds: float) -> Run:
        answers: list[dict[str, Any]] = []

        def one(worker: Any) -> None:
            answers.append(worker.load(entity, headers, seconds, threads=threads, acl_allow=["kcauth:authenticated"]))

        clients = [threading.Thread(target=one, args=(w,), daemon=True) for w in nginx]
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        for c in clients:
            c.start()
        for c in clients:
            c.join(seconds + 120)
        elapsed, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
        wrong = [(k, n) for a in answers for k, n in a["outcomes"].items() if k != "proxied"]
        return Run(latencies_ns=[x for a in answers for x in a["latencies_ns"]], elapsed=elapsed,
                   errors=sum(n for _, n in wrong), server_cpu=cpu,
                   first_error=f"{wrong[0][1]} answered {wrong[0][0]}" if wrong else "")

    def bytes(self) -> None:
        """What travels between Kong and the plugin server per request, by RPC method and way:
        Kong's side counted at the emulator's socket (tests/harness/kong.py Rpc.traffic)."""
        anonymous = {"id": str(uuid.uuid4()), "username": "anonymous"}
        now = int(time.time())
        sparse = jwt.encode({"iss": self.idp.issuer, "sub": str(uuid.uuid4()), "aud": "orders-api", "azp": "test-cli",
                             "typ": "Bearer", "exp": now + 3600, "iat": now}, self.key.private,
                             algorithm=self.key.alg, headers={"kid": self.key.kid})
        cases = (
            ("floor: same PDK calls, no work", "floor", {}, request_headers(self.ctx.hit_token), expect_allowed),
            ("kcauth allow: the matrix's token", "kcauth", self.ctx.local("bench-bytes"),
             request_headers(self.ctx.hit_token), expect_allowed),
            ("kcauth allow: a token with iss, sub, aud, azp only", "kcauth", self.ctx.local("bench-bytes"),
             request_headers(sparse), expect_allowed),
            ("kcauth anonymous consumer: no token", "kcauth", self.ctx.local("bench-bytes-anon", anonymous="anonymous"),
             list(BASE_HEADERS), lambda res: None if res.proxied and res.consumer == anonymous else "not anonymous"),
            ("kcauth refusal: garbage token", "kcauth", self.ctx.local("bench-bytes"),
             request_headers(garbage(1)[0]), expect_status(401)),
        )
        for label, kind, config, headers, check in cases:
            server = self.server(kind)
            kong = server.kong
            assert kong is not None
            kong.consumers = [anonymous]
            entity = server.entity(config)
            for _ in range(5):  # instance started, keys fetched, connection pooled
                kong.request(entity, headers)
            kong.rpc.traffic.clear()
            calls = len(kong.rpc.calls)
            problems = [p for p in (check(kong.request(entity, headers)) for _ in range(BYTES_REQUESTS)) if p]
            per = {f"{method} ({way})": n / BYTES_REQUESTS for (method, way), n in sorted(kong.rpc.traffic.items())}
            self.r.bytes[label] = {
                "round_trips": (len(kong.rpc.calls) - calls) / BYTES_REQUESTS, "methods": per,
                "to_server": sum(n for k, n in per.items() if k.endswith("(out)")),
                "to_kong": sum(n for k, n in per.items() if k.endswith("(in)")),
                "errors": len(problems), "first_error": problems[0] if problems else "",
            }
            log(f"bytes: {label}: {self.r.bytes[label]['to_server']:.0f} B to the server, "
                f"{self.r.bytes[label]['to_kong']:.0f} B to Kong, {len(problems)} wrong answers")

    def keycloak(self) -> None:
        if os.environ.get("KCAUTH_BENCH_KEYCLOAK") != "1":
            self.r.keycloak = {"skipped": "KCAUTH_BENCH_KEYCLOAK is not 1: starting a real Keycloak 26 takes a "
                                          "minute or two and about 1 GB, so it is opt-in "
                                          "(KCAUTH_BENCH_KEYCLOAK=1 python -m tests.bench)"}
            log("keycloak: skipped (set KCAUTH_BENCH_KEYCLOAK=1)")
            return
        from tests.keycloak.admin import KeycloakAdmin
        from tests.keycloak.server import KeycloakServer

        log("keycloak: starting the real Keycloak (tests/keycloak)")
        # One Keycloak per Keycloak home on a machine: when another session's test run holds it,
        # wait for it (bounded) rather than skip the row.
        wait_until = time.monotonic() + float(os.environ.get("KCAUTH_BENCH_KEYCLOAK_WAIT", "600"))
        waited = False
        while True:
            kc = KeycloakServer()
            try:
                kc.start()
                break
            except Exception as exc:  # noqa: BLE001 - reported as a skipped row, with the reason
                if "another KeycloakServer is running" in str(exc) and time.monotonic() < wait_until:
                    if not waited:
                        log("keycloak: another session's Keycloak holds the Keycloak home; waiting (at most "
                            "KCAUTH_BENCH_KEYCLOAK_WAIT s, default 600)")
                    waited = True
                    time.sleep(10)
                    continue
                self.r.keycloak = {"skipped": f"Keycloak did not start: {type(exc).__name__}: {str(exc)[:300]}"}
                log(f"keycloak: {self.r.keycloak['skipped']}")
                return
        try:
            admin = KeycloakAdmin(kc.base_url, kc.admin_user, kc.admin_password)
            pool = [admin.password_token("kcauth", "test-cli", "alice", "alice-pass")["access_token"]
                    for _ in range(64)]
            server = self.server("kcauth")
            entity = server.entity({"issuer": kc.issuer("kcauth"), "audiences": ["orders-api"],
                                    "introspect": True, "client_id": "orders-api", "client_secret": SECRET,
                                    "introspection_cache_ttl": 0, "realm": "bench-keycloak"})
            # ttl 0 keeps no outcome: every request validates locally and asks Keycloak. The pool
            # (64 tokens, cycled) is larger than any concurrency, so no two requests in flight
            # share a token (which would share one introspection call).
            tokens = Tokens(pool, cycle=True)
            cells = {}
            for conns in LEVELS:
                self._measure(server, entity, tokens, conns, max(self.p.warmup, conns), 60, expect_allowed)
                run, _ = self._measure(server, entity, tokens, conns, self.p.requests, self.p.seconds,
                                       expect_allowed)
                cells[conns] = run
                self.r.cells[(KEYCLOAK_KEY, conns)] = run
                log(f"{conns:>2} conns  {KEYCLOAK_KEY:<15} median {run.median_us:8.0f} us  p99 {run.p99_us:8.0f} us  "
                    f"{run.rps:7.0f} req/s")
            self.r.keycloak = {"version": kc.home.name if kc.home else "external",
                               "startup": kc.startup_seconds or 0.0, "tokens": len(pool)}
        finally:
            kc.stop()


def _like_keycloak(idp: LocalIdP) -> None:
    """Three settings of the benchmark's LocalIdP instance (tests/harness/idp.py is unchanged),
    so that it measures the plugin rather than the test server:
    - HTTP/1.1 keep-alive, as Keycloak answers, so a client's connection pool is worth what it
      is worth in production;
    - TCP_NODELAY on its connections, as Keycloak (Vert.x) sets: the handler writes headers and
      body separately, and on a kept-alive connection Nagle's algorithm would hold the body for
      the client's delayed ACK, 40 ms per call;
    - a listen backlog of 1024 instead of socketserver's 5, whose overflow makes Linux drop
      SYNs and clients retry a second later."""
    handler = idp._server.RequestHandlerClass  # type: ignore[attr-defined]
    handler.protocol_version = "HTTP/1.1"
    handler.disable_nagle_algorithm = True
    idp._server.socket.listen(1024)


# --- noise and machine -------------------------------------------------------------------------

def _cpu_busy() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / tick, sum(values[:8]) / tick


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer requests and a 10,000-token flood (~1.5 min)")
    size.add_argument("--smoke", action="store_true", help="a handful of requests per row, for the test suite")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only these scenarios or phases (repeatable or comma-separated; a prefix "
                             "matches: 'sens', 'reject'): " + ", ".join(
                                 [s.key for s in SCENARIOS] + [KEYCLOAK_KEY, *PHASES]))
    parser.add_argument("--mode", choices=("core", *PDK_MODES), default="core",
                        help="server of every plugin server except in the modes comparison "
                             "(default: %(default)s, kcauth's own core, the README's deployment)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown results file (default: %(default)s)")
    args = parser.parse_args(argv)
    only = [o.strip() for item in args.only for o in item.split(",") if o.strip()]
    known = [s.key for s in SCENARIOS] + [KEYCLOAK_KEY, *PHASES]
    for o in only:
        if not any(k == o or k.startswith(o) for k in known):
            parser.error(f"--only {o}: matches nothing of {', '.join(known)}")
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    command = "python -m tests.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    results = Results(profile, command.strip(), only, args.mode)
    results.machine = report.machine_info()
    # `timeout` and CI cancel with SIGTERM: unwind, so that the finally blocks stop every plugin
    # server and Keycloak this run started (a plugin server whose parent died keeps running).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    busy0, total0 = _cpu_busy()
    own0 = _own_cpu()
    log(f"{profile.name} run; results go to {args.out}")
    bench = Bench(results)
    try:
        bench.run()
    finally:
        bench.close()
    results.duration = time.time() - results.started
    busy1, total1 = _cpu_busy()
    ncpu = os.cpu_count() or 1
    wall = (total1 - total0) / ncpu
    results.noise = {"machine_busy": (busy1 - busy0) / max(total1 - total0, 1e-9),
                     "others": max(0.0, (busy1 - busy0) - (_own_cpu() - own0)) / max(total1 - total0, 1e-9),
                     "wall": wall}
    text = report.render(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"wrote {args.out} ({results.duration:.0f} s)")
    if results.failures:
        sys.exit(1)


def _own_cpu() -> float:
    """CPU seconds of this process and its reaped children (plugin servers, minting workers,
    Keycloak): what the machine spent on the benchmark itself."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
