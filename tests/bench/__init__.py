"""The benchmark (issue 6): kcauth against a do-nothing floor and a naive plugin, through the real
plugin server processes and the Kong-side harness. Run it with `python -m tests.bench --help`.

Nothing here is named test_*: pytest never collects it. tests/e2e/test_bench_smoke.py runs it once
with `--smoke` and checks only that every row and every target line is produced.
"""
