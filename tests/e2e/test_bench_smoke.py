"""The benchmark runs end to end: `python -m tests.bench --smoke` completes and reports every row
and every target line. Values are never checked: timings on a shared machine prove nothing, and
the benchmark itself (`python -m tests.bench`, see tests/bench/) is where they are read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.bench.report import TARGETS
from tests.bench.suite import KEYCLOAK_LABEL, LEVELS, MODE_SCENARIOS, SCENARIOS, WORKER_COUNTS

REPO = Path(__file__).resolve().parents[2]


def test_smoke_run_reports_every_row_and_target(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KCAUTH_BENCH_KEYCLOAK", None)  # the Keycloak row must say it was skipped, and why
    proc = subprocess.run([sys.executable, "-m", "tests.bench", "--smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    assert proc.stdout.strip() == report.strip(), "the table printed is the one written"

    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for scenario in SCENARIOS:
        for conns in LEVELS:
            row = next((r for r in rows if r.startswith(f"| {scenario.label} | {conns} |")), None)
            assert row is not None, f"no row for {scenario.label} at {conns} connections"
            assert "no data" not in row and "not run" not in row, row
    for conns in LEVELS:
        assert any(r.startswith(f"| {KEYCLOAK_LABEL} | {conns} | skipped: ") for r in rows)
    for target in TARGETS:
        line = next((r for r in rows if r.startswith(f"| {target.key}: {target.text} |")), None)
        assert line is not None, f"no line for target {target.key}"
        assert "not measured |" not in line.replace("not measured at full size", ""), line
        assert any(word in line for word in ("met", "MISSED", "not measured at full size")), line
    for key in MODE_SCENARIOS:
        label = next(s.label for s in SCENARIOS if s.key == key)
        for server in ("kcauth core", "kong-pdk threads", "kong-pdk gevent"):
            for conns in LEVELS:
                assert any(r.startswith(f"| {label} | {server} | {conns} |") for r in rows), \
                    f"no {server} row for {key} at {conns}"
    for section in ("## Machine", "## Single-flight burst", "## Memory", "kcauth's core is the default"):
        assert section in report
    for kind in ("floor", "kcauth"):
        for count in WORKER_COUNTS:
            row = next((r for r in rows if r.startswith(f"| {kind} | {count} |")), None)
            assert row is not None and row.endswith("| 0 |"), f"workers: {kind} x{count}: {row}"
    assert "Throughput with 2 workers over 1: floor" in report
    for label in ("floor: same PDK calls, no work", "kcauth allow: the matrix's token",
                  "kcauth anonymous consumer: no token", "kcauth refusal: garbage token"):
        row = next((r for r in rows if r.startswith(f"| {label} |")), None)
        assert row is not None and row.endswith("| 0 |"), f"bytes: {label}: {row}"
    assert "| plugin.StepMultiMap (out) |" in report, "the allow path's RPCs, one by one"
    assert "introspection call(s)** reached the endpoint" in report
