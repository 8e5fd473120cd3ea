"""Run a real Keycloak (dev mode, in-memory database) on 127.0.0.1 for the test suite.

    with KeycloakServer() as kc:
        kc.issuer("kcauth")  # http://127.0.0.1:<port>/realms/kcauth

If KCAUTH_KEYCLOAK_URL is set, that Keycloak is used instead and nothing is started; its realms
must already be imported from kong/keycloak/ (for instance by docker compose), and
KCAUTH_KEYCLOAK_ADMIN_USER (default "admin") / KCAUTH_KEYCLOAK_ADMIN_PASSWORD name its master admin.
The same goes for `KeycloakServer(external=(url, user, password))`: how a pytest-xdist worker uses
the Keycloak its controller started (tests/keycloak/fixtures.py).

Keycloak's output goes to a temporary directory, removed on stop unless the start failed or
KCAUTH_KEEP_KEYCLOAK_LOGS is set. Only one server per Keycloak home runs at a time (file lock).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO

import requests

from tests.keycloak.admin import is_loopback
from tests.keycloak.bootstrap import ensure_keycloak, java_home

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: The deployment's realm files; docker compose mounts the same directory.
REALM_DIR = REPO / "kong" / "keycloak"
START_TIMEOUT_S = 180.0
STOP_GRACE_S = 20.0
LOG_TAIL_LINES = 80
#: kc.sh reads these; inherited values (a developer's DEBUG=true, KC_DB=postgres, ...) would change
#: what starts, so they are dropped from the environment handed to Keycloak.
_KC_SH_VARIABLES = {"JAVA", "JAVA_OPTS", "JAVA_OPTS_APPEND", "JAVA_OPTS_KC_HEAP", "JAVA_ADD_OPENS", "JAVA_LOCALE",
                    "DEBUG", "DEBUG_PORT", "DEBUG_SUSPEND", "PRINT_ENV", "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS"}
#: 2 cores, short-lived server: a fixed heap avoids resizing churn while classes load, and C1-only
#: JIT spends less CPU compiling than tiered C2 would (nothing here runs long enough to profit).
DEFAULT_HEAP_OPTS = "-Xms256m -Xmx768m"
DEFAULT_EXTRA_JAVA_OPTS = "-XX:TieredStopAtLevel=1"


COMPOSE_KONG_URL = "http://kong:8000"
UNREACHABLE_URL = "http://127.0.0.1:9"


class KeycloakStartError(RuntimeError):
    """Keycloak did not become ready; the message carries the end of its log."""


def realm_files(realm_dir: Path = REALM_DIR) -> dict[str, Path]:
    """Realm name -> file, for every `*-realm.json` of the realm directory."""
    found: dict[str, Path] = {}
    for path in sorted(realm_dir.glob("*-realm.json")):
        found[json.loads(path.read_text())["realm"]] = path
    if not found:
        raise RuntimeError(f"no *-realm.json files in {realm_dir}")
    return found


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen so the same port is not handed out twice.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If pytest is SIGKILLed, its finalizers never run: let the kernel send SIGTERM to kc.sh (which
    # forwards it to the JVM, or is the JVM after its re-exec) so no orphan JVM keeps 0.5 GB.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None or not path.exists():
        return "(no log)"
    with open(path, errors="replace") as handle:
        return "".join(deque(handle, maxlen=lines))


class KeycloakServer:
    """One Keycloak process (or an external Keycloak named by KCAUTH_KEYCLOAK_URL)."""

    def __init__(self, realm_dir: Path = REALM_DIR, *, start_timeout: float = START_TIMEOUT_S,
                 heap_opts: str = DEFAULT_HEAP_OPTS, extra_java_opts: str = DEFAULT_EXTRA_JAVA_OPTS,
                 keep_logs: bool | None = None, external: tuple[str, str, str] | None = None,
                 external_wait: float = 10.0) -> None:
        self.realm_dir = realm_dir
        self.realms: dict[str, Path] = realm_files(realm_dir)
        self.start_timeout = start_timeout
        self.heap_opts = heap_opts
        self.extra_java_opts = extra_java_opts
        self.keep_logs = bool(os.environ.get("KCAUTH_KEEP_KEYCLOAK_LOGS")) if keep_logs is None else keep_logs
        self.external_url: str | None = os.environ.get("KCAUTH_KEYCLOAK_URL") or None
        self.admin_user = "admin"
        self._admin_password: str | None = None
        if external is not None:
            self.external_url, self.admin_user, self._admin_password = external
        elif self.external_url is not None:
            self.admin_user = os.environ.get("KCAUTH_KEYCLOAK_ADMIN_USER", "admin")
            self._admin_password = os.environ.get("KCAUTH_KEYCLOAK_ADMIN_PASSWORD") or None
        self.external_wait = external_wait
        self.home: Path | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._port: int | None = None
        self._mgmt_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._lock: IO[str] | None = None
        self._http = requests.Session()
        # A developer's HTTP(S)_PROXY must not capture the readiness checks of a local Keycloak.
        self._http.trust_env = self.external_url is not None and not is_loopback(self.external_url)

    # ------------------------------------------------------------------ properties
    @property
    def external(self) -> bool:
        return self.external_url is not None

    @property
    def base_url(self) -> str:
        if self.external_url:
            return self.external_url.rstrip("/")
        if self._port is None:
            raise RuntimeError("KeycloakServer is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def management_url(self) -> str | None:
        """Health endpoints; unknown (None) for an external Keycloak."""
        return None if self._mgmt_port is None else f"http://127.0.0.1:{self._mgmt_port}"

    @property
    def admin_password(self) -> str:
        if self._admin_password is None:
            raise RuntimeError("KeycloakServer is not started")
        return self._admin_password

    def issuer(self, realm: str) -> str:
        return f"{self.base_url}/realms/{realm}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> KeycloakServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> KeycloakServer:
        if self.external_url:
            self._use_external()
            return self
        if self._proc is not None:
            raise RuntimeError("KeycloakServer already started")
        self.home = ensure_keycloak()
        self._take_home_lock(self.home)
        try:
            self._start_process()
        except BaseException:
            self.keep_logs = True  # the error message points at the log
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL after STOP_GRACE_S. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                # kc.sh forwards SIGTERM to the JVM and exits only after it, so the leader's exit
                # means the whole group is gone.
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("Keycloak ignored SIGTERM for %.0f s; killing it", STOP_GRACE_S)
                self._signal_group(proc, signal.SIGKILL)  # shell and JVM at once: no orphan
                proc.wait(timeout=10)
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if self._workdir is not None and not self.keep_logs:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # ------------------------------------------------------------------ internals
    def _use_external(self) -> None:
        if not self._admin_password:
            raise RuntimeError("KCAUTH_KEYCLOAK_URL is set but KCAUTH_KEYCLOAK_ADMIN_PASSWORD is not: "
                               "name the master realm admin of that Keycloak")
        started = time.monotonic()
        for realm in self.realms:
            while True:
                try:
                    self._check_realm(realm, timeout=10)
                    break
                except (requests.RequestException, ValueError) as exc:
                    if time.monotonic() - started >= self.external_wait:
                        raise RuntimeError(f"the Keycloak at {self.external_url} does not serve realm {realm!r} "
                                           f"(import {self.realms[realm]}): {exc}") from exc
                    time.sleep(0.5)
        self.startup_seconds = time.monotonic() - started

    def _take_home_lock(self, home: Path) -> None:
        # data/import and Quarkus' re-augmentation write into the shared home: one server per home.
        handle = open(home / ".kcauth-server.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RuntimeError(f"another KeycloakServer is running from {home} (one at a time on this machine; "
                               "for parallel sessions point KCAUTH_KEYCLOAK_URL at one shared Keycloak)") from None
        self._lock = handle

    def _prepare_import(self, home: Path) -> None:
        # Fresh each start: realms left over from another checkout must not be imported.
        import_dir = home / "data" / "import"
        shutil.rmtree(import_dir, ignore_errors=True)
        import_dir.mkdir(parents=True)
        for path in self.realms.values():
            # The realm's back-channel logout and admin URLs name the compose stack's Kong; here
            # they point at a closed loopback port until a test sets its own receiver.
            text = path.read_text().replace(COMPOSE_KONG_URL, UNREACHABLE_URL)
            (import_dir / path.name).write_text(text)

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("KC_", "KEYCLOAK_", "QUARKUS_")) and key not in _KC_SH_VARIABLES}
        env.update(
            JAVA_HOME=str(java_home()),
            KC_BOOTSTRAP_ADMIN_USERNAME=self.admin_user,
            KC_BOOTSTRAP_ADMIN_PASSWORD=self.admin_password,
            JAVA_OPTS_KC_HEAP=self.heap_opts,
        )
        # The JVM's temp files (Vert.x cache, ...) live in the work dir and go away with it.
        assert self._workdir is not None
        tmp = self._workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env["JAVA_OPTS_APPEND"] = f"{self.extra_java_opts} -Djava.io.tmpdir={tmp}".strip()
        return env

    def _start_process(self) -> None:
        assert self.home is not None
        self._admin_password = secrets.token_urlsafe(18)
        self._prepare_import(self.home)
        self._workdir = Path(tempfile.mkdtemp(prefix="kcauth-keycloak-"))
        self.log_path = self._workdir / "keycloak.log"
        self._port, self._mgmt_port = _free_ports(2)
        cmd = [
            str(self.home / "bin" / "kc.sh"), "start-dev",
            "--http-host", "127.0.0.1", "--http-port", str(self._port),
            "--http-management-host", "127.0.0.1", "--http-management-port", str(self._mgmt_port),
            # Pinned: otherwise the issuer follows each request's Host header.
            "--hostname", f"http://127.0.0.1:{self._port}",
            "--db", "dev-mem", "--health-enabled", "true", "--import-realm",
            # The Shared Signals transmitter (experimental in 26.7): off in every realm unless its
            # `ssf.transmitterEnabled` attribute is set (tests/idp/test_keycloak_signals.py).
            "--features=ssf",
            # Push delivery (RFC 8935) to the test gateway: plain http on loopback, and the outbox
            # drained every half second (30 s by default: the push delay in production).
            "--spi-ssf-transmitter--default--allow-insecure-push-targets=true",
            "--spi-ssf-transmitter--default--outbox-drainer-interval=500ms",
        ]
        on_main_thread = threading.current_thread() is threading.main_thread()
        started = time.monotonic()
        with open(self.log_path, "wb") as log_file:
            self._proc = subprocess.Popen(
                cmd, cwd=self._workdir, env=self._environment(), stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                # PDEATHSIG fires when the forking *thread* exits, so only arm it from the main thread.
                preexec_fn=_die_with_parent if on_main_thread and sys.platform == "linux" else None,
            )
        log.info("starting Keycloak on %s (log %s)", self.base_url, self.log_path)
        self._wait_ready(started)
        self.startup_seconds = time.monotonic() - started
        log.info("Keycloak ready in %.1f s", self.startup_seconds)

    def _wait_ready(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self.start_timeout
        health = f"{self.management_url}/health/ready"
        healthy = False
        pending = list(self.realms)
        last_error = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise KeycloakStartError(
                    f"Keycloak exited with status {code} during start-up. Last lines of {self.log_path}:\n"
                    + _tail(self.log_path))
            try:
                if not healthy:
                    answer = self._http.get(health, timeout=2)
                    if answer.status_code != 200:
                        raise ValueError(f"{health} answered {answer.status_code}")
                    healthy = True
                # Realms are imported before the server listens; this also proves the hostname setup.
                while pending:
                    self._check_realm(pending[0], timeout=5)
                    pending.pop(0)
                return
            except (requests.RequestException, ValueError) as exc:
                last_error = str(exc)
            if time.monotonic() >= deadline:
                raise KeycloakStartError(
                    f"Keycloak was not ready after {self.start_timeout:.0f} s ({last_error}). "
                    f"Last lines of {self.log_path}:\n" + _tail(self.log_path))
            time.sleep(0.5)

    def _check_realm(self, realm: str, timeout: float) -> None:
        url = f"{self.issuer(realm)}/.well-known/openid-configuration"
        answer = self._http.get(url, timeout=timeout)
        if answer.status_code != 200:
            raise ValueError(f"{url} answered {answer.status_code}")
        issuer = answer.json().get("issuer")
        if issuer != self.issuer(realm):
            raise ValueError(f"{url} names issuer {issuer!r}, expected {self.issuer(realm)!r}")

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)  # start_new_session made the child its group leader
        except (ProcessLookupError, PermissionError):
            pass
