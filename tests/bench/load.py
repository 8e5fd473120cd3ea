"""Plugin servers started as Kong starts them, and the load generator.

Load: `conns` threads share one Kong emulator (tests.harness.kong.Kong), whose Rpc pools its
Unix socket connections as Kong's cosockets do; each thread issues requests back to back and
times each one from `Kong.request` call to return (every PDK round trip of the access phase
included). Throughput is requests completed over the wall time from the start barrier until the
last thread is done. The plugin server's CPU time (/proc/<pid>/stat) is read around each run,
so every row also says how much server CPU a request cost.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.kong import Kong, PluginEntity, PluginServerProcess, Response, kcauth_commands, process_tree, rss_mb

REPO = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

Header = tuple[str, str]
# Every request carries the same ordinary headers besides Authorization, for every plugin.
BASE_HEADERS: list[Header] = [
    ("Host", "api.example.com"),
    ("User-Agent", "bench-client/1.0"),
    ("Accept", "application/json"),
    ("X-Request-Id", "7a0c1f0e-4c1d-4a55-9d59-5b0e8f7f3b21"),
]


def request_headers(token: str) -> list[Header]:
    return [*BASE_HEADERS, ("Authorization", f"Bearer {token}")]


# --- plugin servers ----------------------------------------------------------------------------

# The plugin server's modes: kcauth's own core (the default), kong-pdk's threads and gevent modes.
SERVER_FLAGS = {"core": "--server core", "threads": "--server kong-pdk", "gevent": "--server kong-pdk -g"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_commands(kind: str, prefix: Path, mode: str, workers: int = 1) -> tuple[str, str, Path]:
    """The start and query commands Kong would be configured with, as in tests/conftest.py:
    kcauth through its console script, the floor and naive plugins through their modules. The
    core serves with `workers` processes (one emulator process is one nginx worker: one is
    enough, unless the run drives several: the workers phase)."""
    extra = SERVER_FLAGS[mode] + (f" --workers {workers}" if mode == "core" else "")
    if kind == "kcauth":
        return kcauth_commands(prefix, extra)
    if kind == "kcauth-metrics":  # kcauth with Prometheus metrics on (an ephemeral port)
        return kcauth_commands(prefix, f"{extra} --metrics 127.0.0.1:{free_port()}")
    module = f"tests.bench.{kind}"
    start = (f"python -m {module} --kong-prefix {shlex.quote(str(prefix))} "
             f"--socket-name {kind}.socket {extra}").strip()
    return start, f"python -m {module} --dump", prefix / f"{kind}.socket"


class Server:
    """One plugin server process and the Kong emulator talking to it."""

    def __init__(self, kind: str, mode: str = "core", workers: int = 1) -> None:
        self.kind = kind
        self.mode = mode
        self.workers = workers
        # Unix socket paths are limited to 107 bytes: keep the Kong prefix short.
        self.prefix = Path(tempfile.mkdtemp(prefix="kb", dir="/tmp"))
        start, query, socket_path = server_commands(kind, self.prefix, mode, workers)
        env = {"PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = PluginServerProcess(self.prefix, start, query, socket_path, env=env)
        self.kong: Kong | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.mode})"

    def start(self) -> Server:
        self.process.start(timeout=60)
        self.kong = Kong(self.process)
        return self

    def stop(self) -> None:
        if self.kong is not None:
            self.kong.rpc.close()
        self.process.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def entity(self, config: dict[str, Any]) -> PluginEntity:
        assert self.kong is not None
        return self.kong.plugin(config)

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None and self.process.alive(), f"{self.label} is not running:\n{self.process.log()[-2000:]}"
        return pid

    def cpu_seconds(self) -> float:
        """The server's CPU time: the process Kong starts and its children (the core's hub and
        workers), each read live (utime + stime; cutime counts only children already reaped)."""
        total = 0
        for pid in process_tree(self.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICK

    def rss_mb(self, field_name: str = "VmRSS") -> float:
        """Resident memory of the server's processes, summed."""
        return rss_mb(self.pid, field_name)

    def threads(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        return 0


# --- token sources -----------------------------------------------------------------------------

class Tokens:
    """Hands out the tokens of a scenario, thread-safely: the same one, a pool taken in order
    and never repeated (first-seen), or a pool cycled (tokens whose outcome is never kept)."""

    def __init__(self, tokens: Sequence[str], cycle: bool) -> None:
        if not tokens:
            raise ValueError("no tokens")
        self._headers = [request_headers(t) for t in tokens]
        self._cycle = cycle
        self._next = itertools.count()  # next() is atomic under the GIL

    @classmethod
    def same(cls, token: str) -> Tokens:
        return cls([token], cycle=True)

    def __call__(self) -> list[Header]:
        i = next(self._next)
        if i >= len(self._headers):
            if not self._cycle:
                raise RuntimeError("token pool exhausted: first-seen tokens would repeat")
            i %= len(self._headers)
        return self._headers[i]


# --- one measured run ---------------------------------------------------------------------------

@dataclass
class Run:
    """Pooled samples of one scenario at one concurrency (possibly over several rounds)."""

    latencies_ns: list[int] = field(default_factory=list)
    elapsed: float = 0.0
    errors: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    first_error: str = ""

    @property
    def count(self) -> int:
        return len(self.latencies_ns)

    def add(self, other: Run) -> None:
        self.latencies_ns.extend(other.latencies_ns)
        self.elapsed += other.elapsed
        self.errors += other.errors
        self.server_cpu += other.server_cpu
        self.client_cpu += other.client_cpu
        self.first_error = self.first_error or other.first_error

    def percentile_us(self, q: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))  # nearest rank
        return ordered[index] / 1000

    @property
    def median_us(self) -> float:
        return self.percentile_us(0.5)

    @property
    def p99_us(self) -> float:
        return self.percentile_us(0.99)

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else float("nan")

    @property
    def server_cpu_us(self) -> float:
        return self.server_cpu / self.count * 1e6 if self.count else float("nan")

    @property
    def client_cpu_us(self) -> float:
        return self.client_cpu / self.count * 1e6 if self.count else float("nan")


Check = Callable[[Response], str | None]  # an error description, or None when the answer is right


def expect_allowed(res: Response) -> str | None:
    if res.errors:
        return f"RPC error (Kong would fail open): {res.errors[0]}"
    if res.status != 200 or not res.proxied or not isinstance(res.ctx_shared.get("authenticated_groups"), list):
        return f"expected an allowed request, got {res.status} {res.headers}"
    return None


def expect_status(status: int) -> Check:
    def check(res: Response) -> str | None:
        if res.errors:
            return f"RPC error (Kong would fail open): {res.errors[0]}"
        if res.status != status or res.proxied:
            return f"expected {status}, got {res.status} {res.headers}"
        return None
    return check


def drive(server: Server, entity: PluginEntity, next_headers: Callable[[], list[Header]], conns: int,
          requests: int, seconds: float, check: Check) -> Run:
    """`requests` requests (or as many as fit in `seconds`) from `conns` threads."""
    kong = server.kong
    assert kong is not None
    issued = itertools.count()
    per_thread: list[list[int]] = [[] for _ in range(conns)]
    problems: list[str] = []
    barrier = threading.Barrier(conns + 1)
    deadline = [0.0]

    def worker(out: list[int]) -> None:
        barrier.wait(60)
        perf = time.perf_counter_ns
        stop_at = deadline[0]
        try:
            while next(issued) < requests and time.perf_counter() < stop_at:
                headers = next_headers()
                t0 = perf()
                res = kong.request(entity, headers)
                out.append(perf() - t0)
                problem = check(res)
                if problem is not None:
                    problems.append(problem)
        except Exception as exc:  # noqa: BLE001 - reported as a wrong answer, never lost with the thread
            problems.append(f"client thread failed: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(per_thread[i],), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    cpu0, client0 = server.cpu_seconds(), time.process_time()
    deadline[0] = time.perf_counter() + seconds
    barrier.wait(60)
    started = time.perf_counter()
    for t in threads:
        t.join(seconds + 120)
        if t.is_alive():
            raise RuntimeError(f"{server.label}: a client thread is stuck")
    elapsed = time.perf_counter() - started
    run = Run(latencies_ns=[x for out in per_thread for x in out], elapsed=elapsed, errors=len(problems),
              server_cpu=server.cpu_seconds() - cpu0, client_cpu=time.process_time() - client0,
              first_error=problems[0] if problems else "")
    kong.rpc.calls.clear()  # the emulator records every call; keep its memory flat
    return run
