"""The results as Markdown: machine, table, targets, burst, modes, memory, method, analysis.

Targets are judged here and printed as met/missed with the measured ratio; nothing asserts them.
Where one is missed, the line under it says what the numbers show limits it (CPU per request of
the plugin server, queueing), and ANALYSIS.md (hand-written from a profile) is appended.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.bench.load import Run
    from tests.bench.suite import Results

ANALYSIS = Path(__file__).resolve().parent / "ANALYSIS.md"


def machine_info() -> dict[str, str]:
    model = "unknown"
    logical = 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("processor"):
                logical += 1

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "CPU": model,
        "cores": f"{logical} logical in /proc/cpuinfo, {len(os.sched_getaffinity(0))} usable",
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "kong-pdk": version("kong-pdk"),
        "PyJWT / cryptography / gevent / requests": " / ".join(
            version(d) for d in ("PyJWT", "cryptography", "gevent", "requests")),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load average at start": " ".join(open("/proc/loadavg").read().split()[:3]),
    }


# --- targets ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    key: str
    text: str  # the line printed, also what the smoke test looks for
    per_level: bool


TARGETS = (
    Target("T1", "kcauth local cache hit median <= 1.15 x floor median", True),
    Target("T2", "kcauth first-seen median <= floor median + 100 us", True),
    Target("T3", "kcauth sensitive cache hit median <= 1.2 x floor median", True),
    Target("T4", "local path throughput >= 3 x naive", True),
    Target("T5", "sensitive path throughput >= 10 x naive", True),
    Target("T6", "introspection calls for 64 concurrent same-token requests = 1", False),
    Target("T7", "RSS growth after the 200,000-token flood <= 64 MB", False),
    Target("T8", "kcauth cache hit on the core: server CPU/request <= 0.5 x kong-pdk gevent floor's", True),
)


def _conns(n: int) -> str:
    return f"{n} conn" + ("" if n == 1 else "s")


def _fmt(x: float, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _level_value(key: str, r: Results, conns: int) -> tuple[str, bool | None, str]:
    """(measured, met, explanation) of a per-level target at `conns` connections."""
    c = r.cells
    if key == "T8":
        core, floor = r.modes.get(("core", "local-hit", conns)), r.modes.get(("gevent", "floor", conns))
        if core is None or floor is None or not core.count or not floor.count:
            return "not measured", None, ""
        if not floor.server_cpu_us:  # a smoke run: too few requests for a clock tick of CPU
            return "no CPU measured", False, ""
        ratio = core.server_cpu_us / floor.server_cpu_us
        return f"{ratio:.2f}x ({_fmt(core.server_cpu_us)} / {_fmt(floor.server_cpu_us)} us)", ratio <= 0.5, ""
    need = {"T1": ("local-hit", "floor"), "T2": ("local-first", "floor"), "T3": ("sens-hit", "floor"),
            "T4": ("local-hit", "naive-local"), "T5": ("sens-hit", "naive-sens")}[key]
    runs = [c.get((k, conns)) for k in need]
    if any(run is None or run.count == 0 for run in runs):
        return "not measured", None, ""
    a, b = runs  # type: ignore[misc]
    assert a is not None and b is not None
    if key == "T1":
        ratio = a.median_us / b.median_us
        return f"{ratio:.2f}x", ratio <= 1.15, ""
    if key == "T3":
        ratio = a.median_us / b.median_us
        return f"{ratio:.2f}x", ratio <= 1.2, ""
    if key == "T2":
        delta = a.median_us - b.median_us
        return f"{delta:+,.0f} us", delta <= 100, ""
    ratio = a.rps / b.rps
    return f"{ratio:.2f}x", ratio >= (3 if key == "T4" else 10), ""


def _limits(key: str, r: Results, missed: list[int]) -> list[str]:
    """What the measured numbers say limits a missed target (server CPU per request, queueing)."""
    out = []
    c = r.cells
    for conns in missed:
        if key == "T8":
            core, floor = r.modes[("core", "local-hit", conns)], r.modes[("gevent", "floor", conns)]
            own_floor = r.modes[("core", "floor", conns)]
            out.append(f"{_conns(conns)}: the core's cache hit costs {_fmt(core.server_cpu_us)} us of plugin-server "
                       f"CPU per request, kong-pdk gevent's do-nothing floor {_fmt(floor.server_cpu_us)} us; the "
                       f"core's own floor costs {_fmt(own_floor.server_cpu_us)} us in the same rounds.")
            continue
        if key in ("T1", "T2", "T3"):
            k = {"T1": "local-hit", "T2": "local-first", "T3": "sens-hit"}[key]
            a, f = c[(k, conns)], c[("floor", conns)]  # both measured, or the target was not judged
            busy = f.rps * f.server_cpu_us / 1e6
            out.append(
                f"{_conns(conns)}: server CPU {_fmt(a.server_cpu_us)} us/request for {k} vs {_fmt(f.server_cpu_us)} "
                f"for the floor (difference {a.server_cpu_us - f.server_cpu_us:+,.0f} us); the floor already keeps "
                f"the plugin server {busy:.0%} busy of one core (one GIL) at {_fmt(f.rps)} req/s"
                + (", so the median is mostly queueing (Little's law: "
                   f"{conns} / {_fmt(f.rps)} req/s = {_fmt(conns / f.rps * 1e6)} us): any extra CPU per "
                   "request is multiplied by the queue, and noise on a shared machine moves it as much" if conns > 1
                   else "")
                + ".")
        else:
            k, n = ("local-hit", "naive-local") if key == "T4" else ("sens-hit", "naive-sens")
            a, b, f = c[(k, conns)], c[(n, conns)], c.get(("floor", conns))
            line = (f"{_conns(conns)}: naive costs {_fmt(b.server_cpu_us)} us of server CPU per request and "
                    f"kcauth {_fmt(a.server_cpu_us)}; median latency naive {_fmt(b.median_us)} us vs kcauth "
                    f"{_fmt(a.median_us)} us")
            if f is not None and f.count and f.server_cpu_us:
                line += (f". The floor alone costs {_fmt(f.server_cpu_us)} us: when both are CPU-bound, no plugin "
                         f"served by this bridge can beat naive by more than about "
                         f"{b.server_cpu_us / f.server_cpu_us:.1f}x (naive CPU / floor CPU)")
            out.append(line + ".")
    return out


def targets(r: Results) -> list[tuple[Target, list[str], str, list[str]]]:
    """(target, measured cells, verdict, limit lines) for every target."""
    from tests.bench.suite import LEVELS

    out = []
    for t in TARGETS:
        if t.per_level:
            cells, missed, unknown = [], [], False
            for conns in LEVELS:
                value, met, _ = _level_value(t.key, r, conns)
                cells.append(value if met is None else f"{value} {'met' if met else 'MISSED'}")
                if met is None:
                    unknown = True
                elif not met:
                    missed.append(conns)
            if missed:
                verdict = "missed (at " + ", ".join(_conns(n) for n in missed) + ")"
            else:
                verdict = "not measured" if unknown and len(cells) == sum("not measured" in x for x in cells) \
                    else "met" + (" (partly measured)" if unknown else "")
            out.append((t, cells, verdict, _limits(t.key, r, missed)))
        elif t.key == "T6":
            b = r.burst
            if not b:
                out.append((t, ["not measured"], "not measured", []))
            else:
                ok = b["calls"] == 1 and b["allowed"] == b["requests"]
                out.append((t, [f"{b['calls']} call(s), {b['allowed']}/{b['requests']} allowed"],
                            "met" if ok else "MISSED", []))
        else:
            if not r.memory:
                out.append((t, ["not measured"], "not measured", []))
            else:
                growth = {mode: m["samples"][-1][2] - m["samples"][0][2] for mode, m in r.memory.items()}
                flood = min(m["flood"] for m in r.memory.values())
                cells = [" / ".join(f"{g:+.1f} MB ({mode})" for mode, g in growth.items())]
                if flood < 100_000:
                    out.append((t, [cells[0] + f" after {2 * flood:,} tokens (smaller flood: not the target's)"],
                                "not measured at full size", []))
                else:
                    out.append((t, cells, "met" if max(growth.values()) <= 64 else "MISSED", []))
    return out


# --- rendering -------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _row(label: str, conns: int, run: Run | None, calls: int | None, missing: str) -> list[str]:
    if run is None or run.count == 0:
        return [label, str(conns), missing, "", "", "", "", "", "", "", ""]
    mean = sum(run.latencies_ns) / run.count / 1000
    idp = "-" if calls is None else f"{calls:,}" + (f" ({calls / run.count:.2f}/req)" if calls else "")
    return [label, str(conns), _fmt(run.median_us), _fmt(run.p99_us), _fmt(mean), _fmt(run.rps),
            _fmt(run.server_cpu_us), _fmt(run.client_cpu_us), idp, f"{run.count:,}", str(run.errors)]


def render(r: Results) -> str:
    from tests.bench.suite import (
        KEYCLOAK_KEY,
        KEYCLOAK_LABEL,
        LEVELS,
        MODE_SCENARIOS,
        MODES_CONNS,
        PDK_MODES,
        SCENARIOS,
    )

    out: list[str] = ["# kcauth benchmark results", ""]
    out += [f"Run: **{r.profile.name}** (`{r.command}`), {r.duration:.0f} s"
            + (f", only: {', '.join(r.only)}" if r.only else "") + "."]
    if r.failures:
        out += ["", "**Failed phases** (their rows are missing or partial):", ""]
        out += [f"- {failure}" for failure in r.failures]
    if r.profile.name != "full":
        out += ["", f"**A {r.profile.name} run: too few requests for the numbers to mean much; "
                "`python -m tests.bench` is the measurement.**"]
    out += ["", "## Machine", ""]
    m = dict(r.machine)
    m["load average at end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    if r.noise:
        m["CPU used by other processes during the run"] = (
            f"{r.noise['others']:.0%} of the machine (whole machine busy {r.noise['machine_busy']:.0%})")
    out += _table(["", ""], [[k, v] for k, v in m.items()])

    out += ["", "## Latency and throughput", "",
            f"Plugin servers on **{_SERVERS.get(r.mode, r.mode)}** (the modes section gives kong-pdk's "
            "server beside it).", "",
            f"Per request through the Kong emulator, `conns` client threads issuing requests back to back. "
            f"server CPU: the plugin server process's CPU time per request, the headline figure; emulator CPU: "
            f"the benchmark process's (the Kong emulator, its client threads and LocalIdP), so a reader can tell "
            f"which side limits a row. IdP calls: requests that reached "
            f"the identity provider (introspection, key set, discovery) during the row's measured requests. "
            f"Introspection at "
            f"LocalIdP waits a fixed 5 ms. Each row pools {r.profile.rounds} interleaved round(s) of at most "
            f"{r.profile.requests:,} requests or {r.profile.seconds:g} s after a warm-up.", ""]
    rows = []
    for s in SCENARIOS:
        for conns in LEVELS:
            missing = "not run (--only)" if not r.wanted(s.key) else "no data"
            rows.append(_row(s.label, conns, r.cells.get((s.key, conns)), r.idp_calls.get((s.key, conns)), missing))
    for conns in LEVELS:
        missing = ("skipped: see below" if r.keycloak.get("skipped") else "not run (--only)") \
            if (KEYCLOAK_KEY, conns) not in r.cells else ""
        rows.append(_row(KEYCLOAK_LABEL, conns, r.cells.get((KEYCLOAK_KEY, conns)), None, missing))
    out += _table(["scenario", "conns", "median us", "p99 us", "mean us", "req/s", "server CPU us/req",
                   "emulator CPU us/req", "IdP calls", "requests", "errors"], rows)
    if r.keycloak.get("skipped"):
        out += ["", f"Keycloak row skipped: {r.keycloak['skipped']}."]
    elif r.keycloak:
        out += ["", f"Keycloak: {r.keycloak['version']} from tests/keycloak (started in "
                f"{r.keycloak['startup']:.0f} s), realm kcauth, {r.keycloak['tokens']} password-grant tokens of "
                "alice (client test-cli) cycled, introspected as orders-api with `introspection_cache_ttl: 0`; "
                "Keycloak runs on the same 2 cores."]

    out += ["", "## Targets", ""]
    rows = []
    limit_lines = []
    for t, cells, verdict, limits in targets(r):
        if t.per_level:
            rows.append([f"{t.key}: {t.text}", *cells, verdict])
        else:
            rows.append([f"{t.key}: {t.text}", cells[0], "", "", verdict])
        for line in limits:
            limit_lines.append(f"- {t.key}, {line}")
    out += _table(["target", "1 conn", "8 conns", "32 conns", "verdict"], rows)
    out += ["", "T4 compares kcauth's cache hit with naive on the same traffic (one client reusing its "
            "token, naive verifying it every time); T5 compares kcauth's introspection cache hit with naive "
            "introspecting every time. The first-seen and miss rows above give the ratios for traffic "
            "that defeats kcauth's caches."]
    extra = []
    for conns in LEVELS:
        fs, nl = r.cells.get(("local-first", conns)), r.cells.get(("naive-local", conns))
        sm, ns = r.cells.get(("sens-miss", conns)), r.cells.get(("naive-sens", conns))
        parts = []
        if fs and nl and fs.count and nl.count:
            parts.append(f"first-seen / naive local {fs.rps / nl.rps:.2f}x")
        if sm and ns and sm.count and ns.count:
            parts.append(f"sensitive miss / naive sensitive {sm.rps / ns.rps:.2f}x")
        if parts:
            extra.append(f"{_conns(conns)}: " + ", ".join(parts))
    if extra:
        out += ["", "Throughput ratios without cache help: " + "; ".join(extra) + "."]
    if limit_lines:
        out += ["", "What the numbers say limits the missed ones:", "", *limit_lines]

    out += ["", "## Single-flight burst", ""]
    if r.burst:
        b = r.burst
        out += [f"{b['requests']} threads sent one fresh token at once to a sensitive route while LocalIdP held "
                f"each introspection for {b['delay_ms']:.0f} ms: **{b['calls']} introspection call(s)** reached "
                f"the endpoint, {b['allowed']}/{b['requests']} requests were allowed, and {b['waited']} of them "
                f"took at least {b['delay_ms']:.0f} ms, i.e. were in flight together and waited on the shared "
                "call."]
    else:
        out += ["not run (--only)"]

    out += ["", "## Servers: kcauth's core and kong-pdk's", ""]
    if r.modes:
        out += ["The floor and kcauth on kcauth's core and on kong-pdk's server (`--server kong-pdk`, threads; "
                "`-g`, gevent), measured in the same interleaved rounds (T8 is judged on these rows):", ""]
        rows = []
        for key in MODE_SCENARIOS:
            label = next(s.label for s in SCENARIOS if s.key == key)
            for conns in LEVELS:
                for mode in ("core", *PDK_MODES):
                    run = r.modes.get((mode, key, conns))
                    if run is None or not run.count:
                        continue
                    rows.append([label, _SERVERS[mode], str(conns), _fmt(run.median_us), _fmt(run.p99_us),
                                 _fmt(run.rps), _fmt(run.server_cpu_us), _fmt(run.client_cpu_us), f"{run.count:,}",
                                 str(run.errors)])
        out += _table(["scenario", "server", "conns", "median us", "p99 us", "req/s", "server CPU us/req",
                       "emulator CPU us/req", "requests", "errors"], rows)
        out += ["", recommendation(r)]
    else:
        out += ["not run (--only)"]

    out += ["", "## Memory", ""]
    if r.memory:
        for mode, mem in r.memory.items():
            s0, s_last = mem["samples"][0][2], mem["samples"][-1][2]
            valid_end = max((s for s in mem["samples"] if s[0] == "valid"), key=lambda s: s[1], default=None)
            out += [f"### {mode} mode", "",
                    f"A fresh kcauth plugin server ({mode} mode, `token_cache_size` {mem['cache_size']:,}, the "
                    f"default), warmed up, then {mem['flood']:,} distinct valid tokens and {mem['flood']:,} distinct "
                    f"refused ones (a third each: a bad signature under the realm's key id, a random unknown key id, "
                    f"not a JWT), {mem['conns']} connections, {mem['seconds']:.0f} s, {mem['errors']} wrong answers. "
                    "VmRSS from /proc/<pid>/status after each chunk:", ""]
            rows = [[label, f"{n:,}", f"{rss:.1f}", f"{rss - s0:+.1f}"] for label, n, rss in mem["samples"]]
            out += _table(["phase", "tokens so far", "RSS MB", "growth MB"], rows)
            out += ["", f"Before {s0:.1f} MB; after the valid tokens "
                    f"{valid_end[2] if valid_end else float('nan'):.1f} MB; after the refused tokens {s_last:.1f} MB: "
                    f"**growth {s_last - s0:+.1f} MB**; peak (VmHWM) {mem['hwm']:.1f} MB; {mem['threads']} threads "
                    "at the end.", ""]
        out += ["What is measured: the server's resident memory, the number an operator sees, after a warm-up "
                "that took every code path once (so first-use allocations are not counted as growth). Valid "
                "tokens live for an hour, so none expires during the flood (an expired token would be refused, "
                "not remembered) and the token cache fills to its bound; refused tokens are never remembered, "
                "so the refused half shows leaks, not caching. CPython rarely returns freed memory to the "
                "system, so RSS here is the high-water mark of what was live; the curve, not one number, tells "
                "bounded (flat after the cache fills) from leaking (still rising)."]
    else:
        out += ["not run (--only)"]

    out += ["", "## Worker processes", ""]
    if r.workers:
        out += ["The floor and kcauth's cache hit (the matrix's token, ACL guard on `kcauth:authenticated`) with "
                "`--workers 1` and `--workers 2`, each driven by two emulated nginx workers (two client "
                f"processes, {MODES_CONNS // 2} connections each: the supervisor routes each one's connections by "
                "its pid), the four servers interleaved round by round. server CPU: the whole process tree "
                "(supervisor, hub, workers).", ""]
        rows = []
        for (kind, count), run in sorted(r.workers.items()):
            rows.append([kind, str(count), _fmt(run.median_us), _fmt(run.p99_us), _fmt(run.rps),
                         _fmt(run.server_cpu_us), f"{run.count:,}", str(run.errors)])
        out += _table(["plugin", "workers", "median us", "p99 us", "req/s", "server CPU us/req", "requests",
                       "errors"], rows)
        ratios = []
        for kind in ("floor", "kcauth"):
            one, two = r.workers.get((kind, 1)), r.workers.get((kind, 2))
            if one and two and one.count and two.count:
                ratios.append(f"{kind} {two.rps / one.rps:.2f}x")
        floor2, kc2 = r.workers.get(("floor", 2)), r.workers.get(("kcauth", 2))
        if ratios:
            out += ["", "Throughput with 2 workers over 1: " + ", ".join(ratios)
                    + (f"; kcauth / floor at 2 workers: {kc2.rps / floor2.rps:.2f}x" if floor2 and kc2 and
                       floor2.count and kc2.count else "") + "."]
    else:
        out += ["not run (--only)"]

    out += ["", "## Bytes per request", ""]
    if r.bytes:
        out += ["What crosses the plugin server's socket per request, counted at the Kong emulator's side: to the "
                "server (Kong's RPC calls: HandleEvent, and each Step carrying a PDK call's result), to Kong (the "
                "answers: each carrying the next PDK call). RPCs: round trips per request.", ""]
        rows = [[label, f"{b['round_trips']:.1f}", _fmt(b["to_server"]), _fmt(b["to_kong"]),
                 _fmt(b["to_server"] + b["to_kong"]), str(b["errors"])] for label, b in r.bytes.items()]
        out += _table(["request", "RPCs", "to server B", "to Kong B", "total B", "errors"], rows)
        detail = next(iter(b for label, b in r.bytes.items() if label.startswith("kcauth allow")), None)
        if detail:
            out += ["", "By RPC, kcauth's allow path with the matrix's token:", ""]
            out += _table(["RPC (way)", "B per request"], [[k, _fmt(v)] for k, v in detail["methods"].items()])
    else:
        out += ["not run (--only)"]

    out += ["", "## Method", "",
            "- Every plugin runs in its own real plugin server process, started with the command Kong would be "
            "configured with (`kcauth-pluginserver --kong-prefix ... --socket-name kcauth.socket "
            "[--server ...]`; the floor and naive plugins through `kong_plugin_kcauth.server.run`, the same "
            "servers, socket naming and "
            "gevent patching), reached by the Kong emulator of tests/harness/kong.py, which pools connections "
            "like Kong's cosockets and speaks the full access phase (HandleEvent, one Step per PDK call).",
            "- The client threads, the Kong emulator and LocalIdP share one Python process (one GIL), the plugin "
            "server is another; with 2 cores both are busy at 8 and 32 connections, so those rows measure a "
            "saturated machine: latency there is queueing, and throughput is set by CPU per request.",
            "- Tokens are RS256 (Keycloak's default) from a LocalIdP key set, minted before measuring; "
            "first-seen tokens are never repeated; the memory flood is ES256 only because it signs 20x faster.",
            "- LocalIdP speaks HTTP/1.1 keep-alive (as Keycloak does) with a listen backlog of 1024; naive's "
            "`requests.post` opens a connection per call anyway, kcauth reuses its pool.",
            "- floor: the same three PDK calls as kcauth's allow path with constant values; naive: "
            "tests/bench/naive.py.", "- Nothing here asserts timings; tests/e2e/test_bench_smoke.py only checks "
            "that every row and target line is produced."]

    if ANALYSIS.exists():
        out += ["", ANALYSIS.read_text().strip()]
    return "\n".join(out) + "\n"


_SERVERS = {"core": "kcauth core", "threads": "kong-pdk threads", "gevent": "kong-pdk gevent"}


def recommendation(r: Results) -> str:
    """Which server to run, from the 8-connection cells of this run."""
    from tests.bench.suite import MODES_CONNS

    def cell(mode: str, key: str) -> Run | None:
        run = r.modes.get((mode, key, MODES_CONNS))
        return run if run is not None and run.count else None

    lines = []
    for key, name in (("floor", "floor"), ("local-hit", "kcauth cache hit"), ("local-first", "kcauth first-seen"),
                      ("sens-hit", "kcauth sensitive cache hit")):
        runs = {mode: cell(mode, key) for mode in ("core", "gevent", "threads")}
        if any(run is None for run in runs.values()):
            continue
        core, gevent, threads = (runs[m] for m in ("core", "gevent", "threads"))
        assert core is not None and gevent is not None and threads is not None
        lines.append(f"{name}: server CPU {_fmt(core.server_cpu_us)} / {_fmt(gevent.server_cpu_us)} / "
                     f"{_fmt(threads.server_cpu_us)} us per request and {_fmt(core.rps)} / {_fmt(gevent.rps)} / "
                     f"{_fmt(threads.rps)} req/s (core / kong-pdk gevent / kong-pdk threads)")
    if not lines:
        return "No recommendation: a server was not measured."
    errors = sum(run.errors for run in r.modes.values()) + sum(run.errors for run in r.cells.values())
    return (f"At {MODES_CONNS} connections: " + "; ".join(lines) + f". {errors} wrong answers in all. kcauth's core "
            "is the default; `--server kong-pdk -g` is the fallback.")
