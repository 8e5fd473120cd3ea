"""A throwaway Redis server for tests: Debian's `redis-server` as a child process.

Loopback only, no persistence, fresh directory per run. Besides start/stop it can crash
(`kill`), come back on the same port (`restart`) and freeze (`pause`/`resume`), so tests can
check how the plugin behaves when its shared cache dies or hangs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
INSTALL_HINT = "run `make system-deps` or `apt-get install -y redis-server`"
PLUGIN_SECRET = "tests-only-redis-secret-0123456789abcdef"  # kcauth's redis.secret in the tests


def free_port() -> int:
    """A port the kernel just handed out on loopback (free now; reused quickly by the caller)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, password: str | None = None, port: int | None = None, executable: str = "redis-server",
                 tls: tuple[Path, Path, Path] | None = None, extra_args: tuple[str, ...] = ()) -> None:
        """`tls`: (certificate, key, CA bundle) PEM files: serve TLS only (tests/harness/tls.py).
        `extra_args`: more redis-server options (`--replicaof host port`)."""
        self._password = password
        self._extra_args = extra_args
        self._tls = tls
        self._port = port
        # A caller-chosen port is kept even if busy; a picked one may be re-picked on a bind race.
        self._port_fixed = port is not None
        self._executable = executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._paused = False

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("RedisServer has no port yet: call start() first")
        return self._port

    @property
    def password(self) -> str | None:
        return self._password

    def plugin_config(self, **extra: object) -> dict[str, object]:
        """kcauth's `redis` config record for this server (with the gateways' shared secret)."""
        return {"host": HOST, "port": self.port, "secret": PLUGIN_SECRET, **extra}

    @property
    def url(self) -> str:
        auth = f":{quote(self._password, safe='')}@" if self._password is not None else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self.running and self._paused

    @property
    def log_path(self) -> Path | None:
        return None if self._dir is None else self._dir / "redis.log"

    def client(self, **kwargs: object) -> redis.Redis:
        """A redis-py client for this server; keyword arguments override the defaults.

        No retries by default: redis-py >= 6 retries 3 times with up to 1+2+4 s of backoff,
        which would turn a test's 0.2 s timeout into several seconds.
        """
        options: dict[str, object] = {
            "host": HOST,
            "port": self.port,
            "password": self._password,
            "retry": Retry(NoBackoff(), 0),
        }
        if self._tls is not None:
            # The chain only: a certificate may name the server otherwise than 127.0.0.1.
            options.update(ssl=True, ssl_ca_certs=str(self._tls[2]), ssl_check_hostname=False)
        options.update(kwargs)
        return redis.Redis(**options)  # type: ignore[arg-type]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        binary = shutil.which(self._executable)
        if binary is None:
            raise RuntimeError(f"{self._executable!r} is not on PATH: {INSTALL_HINT}")
        # Another process may grab a picked port between free_port() and the bind: retry a few times.
        attempts = 1 if self._port_fixed else 3
        for attempt in range(attempts):
            if self._port is None:
                self._port = free_port()
            try:
                self._launch(binary)
                return
            except RuntimeError as exc:
                if attempt + 1 < attempts and "Address already in use" in str(exc):
                    self._port = None
                    continue
                raise

    def stop(self) -> None:
        """Terminate (politely, then SIGKILL after a bound) and remove the data directory."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self._paused:
                self._signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
        self._proc = None
        self._paused = False
        self._remove_dir()

    def kill(self) -> None:
        """SIGKILL, as a crash would; the directory (and log) stay until stop() or restart()."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._signal(signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)
        self._paused = False

    def restart(self) -> None:
        """Stop if needed and start again on the same port (clients reconnect to the same URL)."""
        port = self._port
        self.stop()
        self._port = port
        self._port_fixed = port is not None
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the socket still accepts connections (kernel backlog) but nothing answers."""
        self._require_running()
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        self._require_running()
        self._signal(signal.SIGCONT)
        self._paused = False

    def log_tail(self, lines: int = 30) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no redis log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------

    def _launch(self, binary: str) -> None:
        self._remove_dir()
        self._dir = Path(tempfile.mkdtemp(prefix="kcauth-redis-"))
        log = self._dir / "redis.log"
        port_args = ["--port", str(self._port)] if self._tls is None else [
            "--port", "0", "--tls-port", str(self._port), "--tls-cert-file", str(self._tls[0]),
            "--tls-key-file", str(self._tls[1]), "--tls-ca-cert-file", str(self._tls[2]), "--tls-auth-clients", "no"]
        args = [
            binary,
            *port_args,
            "--bind",
            HOST,
            "--protected-mode",
            "yes",
            "--dir",
            str(self._dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(log),
        ]
        if self._password is not None:
            args += ["--requirepass", self._password]
        args += list(self._extra_args)
        # Own session/process group: signals reach the server only, and Ctrl-C in the test run
        # does not race our orderly stop().
        self._proc = subprocess.Popen(
            args,
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._paused = False
        error = self._wait_ready()
        if error is not None:
            tail = self.log_tail()
            self._terminate_quietly()
            raise RuntimeError(f"redis-server on {HOST}:{self._port} did not start: {error}\n--- redis log ---\n{tail}")

    def _wait_ready(self) -> str | None:
        """None once our process answers; otherwise why not, within START_TIMEOUT."""
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        client = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                code = self._proc.poll()
                if code is not None:
                    return f"exited with status {code}"
                try:
                    # Another server answering on this port must not count as ours being up.
                    pid = client.info("server").get("process_id")
                    if pid == self._proc.pid:
                        return None
                    last = f"port answered by another redis-server (pid {pid})"
                except redis.RedisError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)
        finally:
            client.close()
        return f"no PING answer within {START_TIMEOUT:.0f} s (last: {last})"

    def _terminate_quietly(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)
        self._proc = None

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):  # already gone: nothing to signal
            os.killpg(self._proc.pid, sig)

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError("redis-server is not running")

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class SentinelGroup:
    """Redis as Sentinel runs it: a primary, a replica and three Sentinels (quorum 2) watching
    them as `MASTER`, all on loopback, the Sentinels `redis-server --sentinel` (Debian's
    redis-server package; `redis-sentinel` is the same binary). Sentinels notice a dead primary
    after `DOWN_AFTER_MS` and promote the replica."""

    MASTER = "kcauth"
    DOWN_AFTER_MS = 500

    def __init__(self, password: str | None = None, sentinel_password: str | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        """`password`: the primary's and the replica's (`requirepass`, `masterauth`, and the
        Sentinels' `auth-pass`); `sentinel_password`: the Sentinels' own (`requirepass`); `tls`:
        (certificate, key, CA bundle): every server and Sentinel speaks TLS only, to clients and
        to each other."""
        self.password, self.sentinel_password, self.tls = password, sentinel_password, tls
        self.primary = RedisServer(password=password, tls=tls, extra_args=self._server_args())
        self.replica: RedisServer | None = None
        self.sentinel_ports: list[int] = []
        self._sentinels: list[subprocess.Popen[bytes]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="kcauth-sentinel-"))

    def _server_args(self) -> tuple[str, ...]:
        return (*(("--masterauth", self.password) if self.password else ()),
                *(("--tls-replication", "yes") if self.tls else ()))

    def start(self) -> SentinelGroup:
        self.primary.start()
        self.replica = RedisServer(password=self.password, tls=self.tls,
                                   extra_args=("--replicaof", HOST, str(self.primary.port), *self._server_args()))
        self.replica.start()
        _until(lambda: self.replica is not None and
               self.replica.client().info("replication").get("master_link_status") == "up", "replication")
        for i in range(3):
            port = free_port()
            conf = self._dir / f"sentinel-{i}.conf"
            listen = [f"port {port}"] if self.tls is None else [
                "port 0", f"tls-port {port}", f"tls-cert-file {self.tls[0]}", f"tls-key-file {self.tls[1]}",
                f"tls-ca-cert-file {self.tls[2]}", "tls-auth-clients no", "tls-replication yes"]
            conf.write_text("\n".join([
                *listen, f"bind {HOST}", f"dir {self._dir}", f"logfile {self._dir}/sentinel-{i}.log",
                f"sentinel monitor {self.MASTER} {HOST} {self.primary.port} 2",
                f"sentinel down-after-milliseconds {self.MASTER} {self.DOWN_AFTER_MS}",
                f"sentinel failover-timeout {self.MASTER} 2000",
                *([f"sentinel auth-pass {self.MASTER} {self.password}"] if self.password else []),
                *([f"requirepass {self.sentinel_password}"] if self.sentinel_password else []), ""]))
            self._sentinels.append(subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"], cwd=self._dir,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True))
            self.sentinel_ports.append(port)
        for port in self.sentinel_ports:  # each knows the replica and another Sentinel
            _until(lambda p=port: _sentinel_ready(self._sentinel(p), self.MASTER), f"sentinel {port}")
        return self

    def _sentinel(self, port: int) -> redis.Redis:
        tls: dict[str, Any] = {} if self.tls is None else {
            "ssl": True, "ssl_ca_certs": str(self.tls[2]), "ssl_check_hostname": False}
        return redis.Redis(host=HOST, port=port, password=self.sentinel_password, socket_timeout=1,
                           retry=Retry(NoBackoff(), 0), **tls)

    def plugin_config(self, **extra: object) -> dict[str, object]:
        """kcauth's `redis` record for this group, by Kong's names."""
        auth = {"password": self.password, "sentinel_password": self.sentinel_password}
        return {"sentinel_master": self.MASTER, "sentinel_nodes": [{"host": HOST, "port": port}
                                                                    for port in self.sentinel_ports],
                "secret": PLUGIN_SECRET, **{k: v for k, v in auth.items() if v}, **extra}

    def primary_port(self) -> int:
        address = self._sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(self.MASTER)
        return int(address[1])

    def fail_over(self, timeout: float = 15.0) -> tuple[RedisServer, float]:
        """Kill the primary; wait until the Sentinels promoted the replica and it takes writes.
        Returns the new primary and the seconds without one (the failover window)."""
        assert self.replica is not None
        old = self.primary.port
        started = time.monotonic()
        self.primary.kill()
        _until(lambda: self.primary_port() != old and
               self.replica is not None and self.replica.client().info("replication").get("role") == "master",
               "failover", timeout)
        window = time.monotonic() - started
        self.primary, self.replica = self.replica, self.primary
        return self.primary, window

    def stop(self) -> None:
        for proc in self._sentinels:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        self._sentinels.clear()
        self.primary.stop()
        if self.replica is not None:
            self.replica.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def _sentinel_ready(client: redis.Redis, master: str) -> bool:
    try:
        state = client.sentinel_master(master)
        # A quorum of two can fail over once each Sentinel knows another: no need to wait the
        # hello rounds for all three.
        return int(state.get("num-slaves", 0)) >= 1 and int(state.get("num-other-sentinels", 0)) >= 1
    except redis.RedisError:
        return False


def _until(condition: object, what: str, timeout: float = START_TIMEOUT * 2) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {timeout:.0f} s")
        time.sleep(0.1)


class ClusterGroup:
    """A Redis Cluster on loopback: three primaries and a replica of each (`redis-server
    --cluster-enabled yes`, joined by `redis-cli --cluster create`). A node is failed after
    `NODE_TIMEOUT_MS`, and its replica promoted."""

    NODE_TIMEOUT_MS = 500

    def __init__(self, replicas: int = 1, tls: tuple[Path, Path, Path] | None = None) -> None:
        """`replicas` per primary; `tls`: (certificate, key, CA bundle): every node speaks TLS
        only, to clients and on the cluster bus."""
        self.replicas, self.tls = replicas, tls
        self.nodes: list[RedisServer] = []

    def start(self) -> ClusterGroup:
        for _ in range(3 * (1 + self.replicas)):
            node = RedisServer(port=_cluster_port(), tls=self.tls, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.NODE_TIMEOUT_MS),
                *(("--tls-cluster", "yes", "--tls-replication", "yes") if self.tls else ())))
            node.start()
            self.nodes.append(node)
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError(f"redis-cli is not on PATH: {INSTALL_HINT}")
        tls = ["--tls", "--cacert", str(self.tls[2])] if self.tls else []
        created = subprocess.run([cli, *tls, "--cluster", "create", *(f"{HOST}:{n.port}" for n in self.nodes),
                                  "--cluster-replicas", str(self.replicas), "--cluster-yes"], capture_output=True,
                                 text=True, timeout=60)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}{created.stderr[-2000:]}")
        _until(self.healthy, "cluster state ok", 30)
        return self

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, and three primaries each have a replica in sync."""
        live = [n for n in self.nodes if n.running]
        if not all(n.client().cluster("info").get("cluster_state") == "ok" for n in live):
            return False
        replicas = [n.client().info("replication") for n in live]
        return len(self.primaries()) == 3 and all(
            info.get("master_link_status") == "up" for info in replicas if info.get("role") == "slave")

    def primaries(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running and n.client().info("replication").get("role") == "master"]

    def plugin_config(self, **extra: object) -> dict[str, object]:
        """kcauth's `redis` record for this cluster (two seed nodes, by Kong Enterprise's names)."""
        seeds = [n for n in self.nodes if n.running][:2]
        return {"cluster_nodes": [{"ip": HOST, "port": n.port} for n in seeds], "secret": PLUGIN_SECRET, **extra}

    def client(self) -> redis.cluster.RedisCluster:
        """A cluster client for the test's own look at the keys (`scan_iter` covers every node)."""
        seed = next(n for n in self.nodes if n.running)
        tls: dict[str, Any] = {} if self.tls is None else {
            "ssl": True, "ssl_ca_certs": str(self.tls[2]), "ssl_check_hostname": False}
        return redis.cluster.RedisCluster(host=HOST, port=seed.port, socket_timeout=5, **tls)

    def fail_over(self, victim: RedisServer, timeout: float = 20.0) -> float:
        """Kill the primary `victim`; wait until its replica is promoted and the cluster is ok
        again. Returns the seconds it took."""
        started = time.monotonic()
        victim.kill()
        _until(lambda: len(self.primaries()) == 3 and all(
            n.client().cluster("info").get("cluster_state") == "ok" for n in self.nodes if n.running),
            "cluster failover", timeout)  # (the promoted replica has no replica of its own)
        return time.monotonic() - started

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes.clear()


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above it, at most 65,535) is free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((HOST, port))
                b.bind((HOST, port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")
