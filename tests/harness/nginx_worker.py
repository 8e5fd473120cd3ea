"""One of Kong's nginx workers as a process of its own, for tests of the plugin server's process
model: its connections come from its own pid (which the supervisor routes by, SO_PEERCRED), with
its own keepalive pool and its own instances, as each nginx worker has (plugin.lua keeps
`running_instances` per worker; mp_rpc.lua pools connections per worker).

`python -m tests.harness.nginx_worker <socket path>` reads one JSON command per line on stdin and
answers one JSON line on stdout; `NginxWorker` is the test side. The dump (Kong's query command)
comes from the test, which ran it once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.harness.kong import Kong, PluginEntity


class _Dumped:
    """What Kong needs of the plugin server to talk to it: the dump, and the socket path."""

    def __init__(self, socket_path: Path, info: dict[str, Any]) -> None:
        self.socket_path = socket_path
        self._info = info

    def query(self) -> dict[str, Any]:
        return self._info


def _entity(data: dict[str, Any]) -> PluginEntity:
    return PluginEntity(**data)


def _request(kong: Kong, command: dict[str, Any]) -> dict[str, Any]:
    res = kong.request(_entity(command["entity"]), [tuple(h) for h in command.get("headers", [])],
                       method=command.get("method", "GET"), path=command.get("path", "/"),
                       body=command.get("body", "").encode(), acl_allow=command.get("acl_allow"))
    return {"status": res.status, "proxied": res.proxied, "errors": res.errors,
            "headers": res.headers, "body": res.body}


def _load(kong: Kong, command: dict[str, Any]) -> dict[str, Any]:
    """Requests back to back from `threads` threads for `seconds`: the outcomes, counted
    ("proxied", "proxied after an error": Kong's fail-open, or the status Kong answered), and
    each request's time (ns, from Kong.request call to return)."""
    entity, headers = _entity(command["entity"]), [tuple(h) for h in command.get("headers", [])]
    until = time.monotonic() + float(command["seconds"])
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    failed_at: list[float] = []  # when each event that failed did (time.time())
    latencies: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        while time.monotonic() < until:
            t0 = time.perf_counter_ns()
            res = kong.request(entity, headers, acl_allow=command.get("acl_allow"))
            latencies.append(time.perf_counter_ns() - t0)
            failed = [e for e in res.errors if not e.startswith("warn:")]
            key = ("proxied after an error" if failed else "proxied") if res.proxied else str(res.status)
            with lock:
                outcomes[key] += 1
                for error in res.errors:
                    errors[error[:80]] += 1
                if failed:
                    failed_at.append(time.time())

    threads = [threading.Thread(target=run) for _ in range(int(command.get("threads", 4)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"outcomes": dict(outcomes), "errors": dict(errors), "failed_at": failed_at, "latencies_ns": latencies}


def main() -> None:
    socket_path = Path(sys.argv[1])
    kong: Kong | None = None
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "start":
            kong = Kong(_Dumped(socket_path, command["info"]), rpc_timeout=command.get("rpc_timeout", 10.0))  # type: ignore[arg-type]
            answer: Any = True
        elif op == "request":
            assert kong is not None
            answer = _request(kong, command)
        elif op == "load":
            assert kong is not None
            answer = _load(kong, command)
        elif op == "status":
            assert kong is not None
            answer = kong.status()
        elif op == "quit":
            return
        else:
            answer = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


class NginxWorker:
    """The test side: an emulated nginx worker process talking to the plugin server at
    `socket_path`, with the dump `info` (Kong.info of the test's own emulator)."""

    def __init__(self, socket_path: Path, info: dict[str, Any], rpc_timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.harness.nginx_worker", str(socket_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self._lock = threading.Lock()
        self.call({"op": "start", "info": info, "rpc_timeout": rpc_timeout})

    def call(self, command: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the emulated nginx worker ended")
        return json.loads(line)

    def request(self, entity: PluginEntity, headers: list[tuple[str, str]] | None = None,
                **extra: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self.call({"op": "request", "entity": asdict(entity), "headers": headers or [],
                                            **extra})
        return answer

    def load(self, entity: PluginEntity, headers: list[tuple[str, str]], seconds: float,
             threads: int = 4, acl_allow: list[str] | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = self.call({"op": "load", "entity": asdict(entity), "headers": headers,
                                            "seconds": seconds, "threads": threads, "acl_allow": acl_allow})
        return answer

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.call({"op": "status"})
        return answer

    def close(self) -> None:
        try:
            self.call({"op": "quit"})
        except (RuntimeError, OSError, ValueError):
            pass
        self.proc.wait(10)


if __name__ == "__main__":
    main()
