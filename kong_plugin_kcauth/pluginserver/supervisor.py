"""The process Kong starts: it owns the socket Kong connects to, and the processes that serve it.

Standard library only, and nothing imported that is not needed to bind: `bind` runs before
anything heavy, so the window in which Kong's connections are refused is the interpreter's start
alone (a respawn by Kong, `kong restart`). Then it forks:
- the hub (hub.py): the node's shared state (revocations, DPoP proofs, the feed's lease,
  introspection answers) for the workers, and the one metrics endpoint;
- `workers` workers, each serving the connections of some of Kong's nginx workers with kcauth's
  core (core.py `serve_channel`).

Routing. Steps of one event arrive on any pooled connection of the same nginx worker, never of
another (kong/runloop/plugin_servers/rpc/mp_rpc.lua), so every connection of one nginx worker
must reach the same worker: the supervisor accepts each connection, reads its peer's pid
(SO_PEERCRED), and hands the descriptor (SCM_RIGHTS over a SOCK_SEQPACKET pair) to the worker
that nginx worker was given (the least loaded one, the first time its pid is seen).

Crashes. A worker that dies is forked again at once, under the same index: its nginx workers'
new connections wait in the supervisor meanwhile (never refused); only the events it held are
lost (Kong proxies those: the ACL guard answers 401). Kong resets its instances when a
connection announces a new server pid, and starts them again. A dead hub is forked again too;
the workers write back what they hold (revocation.store `_restore`), as after an empty Redis.

Hand-over. `kong reload` starts a new server beside this one, which binds the same path. This
one notices (the path names another socket now) or is sent SIGTERM by Kong, and drains: it stops
accepting and hands each of Kong's connections to its successor (SCM_RIGHTS again, to the
successor's takeover socket, named after the socket file it bound) as soon as no event of that
connection's nginx worker is in flight here and none of its connections is in use: a request
Kong already sent on it waits in the socket for the successor, where closing it would lose it
(Kong would proxy it). The successor routes it as if just accepted; Kong learns the new
server's pid and starts its instances again ("no plugin instance", one retry). Connections
accepted but not yet handed to a worker, and those still in the listen backlog, go the same way.
Without a successor (`kong stop`), each connection is closed instead. It exits once every
connection has gone, or after `DRAIN_SECONDS`.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

DRAIN_SECONDS = 15.0  # Kong gives an old worker about as long to finish (worker_shutdown_timeout ~ 10 s)
_CHECK_EVERY = 0.2  # seconds between looks at the socket path, the children, the drain
DRAIN = b"drain"  # supervisor -> worker: close connections as they fall idle, then exit
_PEER = struct.Struct("iII")  # SO_PEERCRED: pid, uid, gid

WorkerMain = Callable[[socket.socket, int], None]  # (its channel, its index): serves, then returns
HubMain = Callable[[], None]


def bind(path: str, backlog: int) -> socket.socket:
    """Listen on the Unix socket Kong connects to, taking the path over from a predecessor at
    once (bound beside it, then renamed over it: never a moment without a socket there)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fresh = f"{path}.{os.getpid()}"
    if os.path.exists(fresh):
        os.remove(fresh)
    listener.bind(fresh)
    listener.listen(backlog)
    os.rename(fresh, path)
    return listener


def socket_file(path: str) -> str | None:
    """Which socket file is at `path` now (inode numbers are reused: its creation time too)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}-{st.st_ino}-{st.st_ctime_ns}"


def takeover_address(file: str) -> str:
    """The abstract Unix socket where a predecessor hands Kong's connections to the server whose
    socket file is `file` (socket_file): found only by a server replaced by that one."""
    return f"\0kcauth-takeover-{file}"


def listen_for_takeover(file: str) -> socket.socket | None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(takeover_address(file))
        listener.listen(64)
        listener.setblocking(False)
        return listener
    except OSError:
        listener.close()
        return None  # no hand-over to this server: a predecessor closes its connections instead


def successor_channel(path: str, own: str) -> socket.socket | None:
    """A channel to the server that took `path` over from the one whose socket file is `own`, or
    None (still ours, or nobody's)."""
    file = socket_file(path)
    if file is None or file == own:
        return None
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        channel.connect(takeover_address(file))
        return channel
    except OSError:
        channel.close()
        return None


def pass_connection(channel: socket.socket, conn: socket.socket) -> bool:
    """Send `conn`'s descriptor on `channel` (the receiver holds it then; the caller closes its
    own). False when the receiver is gone."""
    try:
        socket.send_fds(channel, [b"c"], [conn.fileno()])
        return True
    except OSError:
        return False


def nginx_workers(prefix: str) -> int | None:
    """Kong's nginx worker count, from the nginx.conf Kong wrote into its prefix (`worker_processes
    N;` or `auto`: one per core), or None when it cannot be read."""
    try:
        with open(os.path.join(prefix, "nginx.conf")) as conf:
            for line in conf:
                words = line.strip().rstrip(";").split()
                if len(words) == 2 and words[0] == "worker_processes":
                    return usable_cores() if words[1] == "auto" else max(1, int(words[1]))
    except (OSError, ValueError):
        return None
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Worker:
    __slots__ = ("index", "pid", "channel", "peers", "waiting")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.channel: socket.socket | None = None
        self.peers: set[int] = set()  # the nginx workers it serves
        self.waiting: list[tuple[socket.socket, int]] = []  # connections held while it restarts


class Supervisor:
    def __init__(self, listener: socket.socket, path: str, workers: int, worker_main: WorkerMain,
                 hub_main: HubMain | None = None, parent: int = 1, metrics_dir: str | None = None) -> None:
        self.listener, self.path = listener, path
        listener.setblocking(False)  # accepted in a loop until none is left
        self.parent = parent  # Kong, or 1 (init: run outside Kong, nothing to watch)
        self.metrics_dir = metrics_dir
        self.file = socket_file(path) or ""  # its socket file, to notice a successor's
        self.workers = [_Worker(i) for i in range(max(1, workers))]
        self.worker_main, self.hub_main = worker_main, hub_main
        self.hub_pid = 0
        self.routes: dict[int, _Worker] = {}  # nginx worker pid -> its worker
        self.selector = selectors.DefaultSelector()
        self.takeover = listen_for_takeover(self.file)  # connections a predecessor hands over
        self.predecessors: list[socket.socket] = []
        self.draining_since: float | None = None
        self._terminate = False

    # -- the loop --

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_terminate", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_terminate", True))
        if self.hub_main is not None:
            self.hub_pid = self._fork(self.hub_main)
        for worker in self.workers:
            self._start(worker)
        self.selector.register(self.listener, selectors.EVENT_READ)
        if self.takeover is not None:
            self.selector.register(self.takeover, selectors.EVENT_READ)
        while True:
            for key, _events in self.selector.select(_CHECK_EVERY):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self.takeover:
                    self._accept_predecessor()
                else:
                    self._take_over(key.fileobj)  # type: ignore[arg-type]
            if self.parent != 1 and os.getppid() != self.parent:
                _say("Kong is gone: stopping")
                for pid in [w.pid for w in self.workers if w.pid] + ([self.hub_pid] if self.hub_pid else []):
                    _kill(pid)
                return
            if self.draining_since is None and (self._terminate or self._replaced()):
                self._drain()
            self._reap()  # after: children ended by the same signal are not started again
            if self.draining_since is not None and self._drained():
                return

    def _accept(self, limit: int = 64) -> None:
        for _ in range(limit):  # what is queued now; the rest on the next turn
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.05)  # out of descriptors: the backlog keeps them meanwhile
                    return
                raise
            self._route(conn)

    def _accept_predecessor(self) -> None:
        assert self.takeover is not None
        try:
            channel, _ = self.takeover.accept()
        except OSError:
            return
        channel.setblocking(False)
        self.predecessors.append(channel)
        self.selector.register(channel, selectors.EVENT_READ)

    def _take_over(self, channel: socket.socket) -> None:
        """Kong's connections handed over by a predecessor's process, routed as if just accepted."""
        for _ in range(64):
            try:
                data, fds, _flags, _addr = socket.recv_fds(channel, 16, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            for fd in fds:
                self._route(socket.socket(fileno=fd))
            if not data and not fds:
                self.selector.unregister(channel)
                self.predecessors.remove(channel)
                channel.close()
                return

    def _route(self, conn: socket.socket) -> None:
        try:
            pid = _PEER.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER.size))[0]
        except OSError:
            conn.close()
            return
        worker = self.routes.get(pid)
        if worker is None:
            if len(self.routes) > 4096:  # nginx workers come and go (reloads): forget the gone ones
                self._forget_gone_peers()
            worker = min(self.workers, key=lambda w: len(w.peers))
            worker.peers.add(pid)
            self.routes[pid] = worker
        self._hand(worker, conn, pid)

    def _hand(self, worker: _Worker, conn: socket.socket, pid: int) -> None:
        """Give the worker the connection (it holds its own descriptor), or hold it until the
        worker is up again."""
        if worker.channel is None:
            worker.waiting.append((conn, pid))
            return
        try:
            socket.send_fds(worker.channel, [struct.pack("i", pid)], [conn.fileno()])
        except OSError:
            worker.waiting.append((conn, pid))  # it just died: held for its successor
            return
        conn.close()

    def _forget_gone_peers(self) -> None:
        for pid in [p for p in self.routes if not os.path.exists(f"/proc/{p}")]:
            self.routes.pop(pid).peers.discard(pid)

    # -- children --

    def _start(self, worker: _Worker) -> None:
        here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = self._fork(lambda: self.worker_main(there, worker.index), keep=there)
        there.close()
        worker.pid, worker.channel = pid, here
        waiting, worker.waiting = worker.waiting, []
        for conn, peer in waiting:
            self._hand(worker, conn, peer)
        if self.draining_since is not None:
            ahead = successor_channel(self.path, self.file)
            self._tell(worker, DRAIN, ahead)
            if ahead is not None:
                ahead.close()

    def _fork(self, main: Callable[[], None], keep: socket.socket | None = None) -> int:
        supervisor = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        # The child: nothing of the supervisor's but `keep`; ends with its parent.
        code = 0
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which drains
            _die_with_parent(supervisor)
            self.listener.close()
            for other in self.workers:
                if other.channel is not None and other.channel is not keep:
                    other.channel.close()
            main()
        except BaseException:  # noqa: BLE001 - a child never returns into the supervisor's loop
            code = 1
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.hub_pid:
                self.hub_pid = 0
                if self.draining_since is None and self.hub_main is not None:
                    _say(f"the node's hub (pid {pid}) ended ({_how(status)}); starting it again")
                    self.hub_pid = self._fork(self.hub_main)
                continue
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:
                continue
            self._forget_metrics(pid)
            worker.pid = 0
            if worker.channel is not None:
                worker.channel.close()
                worker.channel = None
            if self.draining_since is None:
                _say(f"worker {worker.index} (pid {pid}) ended ({_how(status)}); starting it again")
                self._start(worker)

    def _forget_metrics(self, pid: int) -> None:
        """prometheus_client's `mark_process_dead`: a dead worker's live gauges count no more."""
        if self.metrics_dir:
            for name in os.listdir(self.metrics_dir):
                if name.startswith("gauge_live") and name.endswith(f"_{pid}.db"):
                    os.remove(os.path.join(self.metrics_dir, name))

    def _tell(self, worker: _Worker, message: bytes, channel: socket.socket | None = None) -> None:
        """A message to a worker, with a channel of its own to the successor (drain)."""
        if worker.channel is not None:
            try:
                socket.send_fds(worker.channel, [message], [channel.fileno()] if channel is not None else [])
            except OSError:
                pass

    # -- hand-over --

    def _replaced(self) -> bool:
        """Whether the socket path names another server's socket now (kong reload; a path
        removed is not a successor)."""
        file = socket_file(self.path)
        return file is not None and file != self.file

    def _drain(self) -> None:
        self.draining_since = time.monotonic()
        if self.takeover is not None:
            self.selector.unregister(self.takeover)
            self.takeover.close()
            self.takeover = None
        self._accept(limit=1 << 16)  # the backlog: queued before the path was taken over
        self.selector.unregister(self.listener)
        self.listener.close()  # the path is (or will be) the successor's: never unlinked here
        successor = successor_channel(self.path, self.file)
        _say("replaced by a new server: handing Kong's connections over as they fall idle" if successor else
             "stopping: closing Kong's connections as they fall idle")
        for worker in self.workers:
            for conn, _ in worker.waiting:  # not served yet
                if successor is None or not pass_connection(successor, conn):
                    pass  # Kong opens it again, on the successor
                conn.close()
            worker.waiting = []
            ahead = successor_channel(self.path, self.file)
            self._tell(worker, DRAIN, ahead)
            if ahead is not None:
                ahead.close()
        if successor is not None:
            successor.close()

    def _drained(self) -> bool:
        """Every worker has exited, or the time is up (then they are stopped)."""
        assert self.draining_since is not None
        if all(w.pid == 0 for w in self.workers):
            self._stop_hub()
            return True
        if time.monotonic() - self.draining_since > DRAIN_SECONDS:
            for worker in self.workers:
                if worker.pid:
                    _kill(worker.pid)
            self._stop_hub()
            return True
        return False

    def _stop_hub(self) -> None:
        if self.hub_pid:
            _kill(self.hub_pid, signal.SIGTERM)


def _die_with_parent(parent: int) -> None:
    """A child ends when the supervisor does, however it ends (Linux's PR_SET_PDEATHSIG), also
    when the supervisor died between the fork and this call (killed as it started), which the
    signal would never report."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def _say(line: str) -> None:
    # Kong logs the plugin server's output (process.lua grab_logs).
    sys.stderr.write(f"kcauth supervisor: {line}\n")
    sys.stderr.flush()
