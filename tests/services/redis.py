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
from urllib.parse import quote

import redis
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
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        """`tls`: (certificate, key, CA bundle) PEM files: serve TLS only (tests/harness/tls.py)."""
        self._password = password
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
            options.update(ssl=True, ssl_ca_certs=str(self._tls[2]))
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
