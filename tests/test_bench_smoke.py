"""`make bench-smoke` keeps the benchmark harness alive: it runs the real stack at N = 100 and must produce
every field of docs/benchmarks.json with sane values. No timing is asserted (CI boxes vary); the
numbers themselves are docs/benchmarks.md's business."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.bench_stack import REQUIRED, missing_fields
from tests import support

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_measures_every_field_on_the_real_stack(redis_url, tmp_path):
    if not support.pg_available():
        support.unavailable("PostgreSQL on 127.0.0.1:5432")
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALYST_")}
    env.update(BENCH_REDIS=redis_url, BENCH_PG_URL=support.PG_ADMIN)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_stack.py"), "--smoke", "--out", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"bench --smoke failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    result = json.loads(out.read_text())
    assert [(r["n"], r["concurrency"]) for r in result["runs"]] == [(100, 2)]
    run = result["runs"][0]
    assert missing_fields(run) == [], f"missing: {missing_fields(run)} of {REQUIRED}"
    assert run["checks_per_s"] > 0 and run["cycle_s"] > 0
    assert run["bare_celery"]["tasks"] >= 100 and run["bare_tasks_per_s"] > 0 and run["ratio"] > 0
    assert all(c["beat_sent"] == 100 for c in run["cycles"]), run["cycles"]  # every position sent in its slot
    pg = run["pg"]
    assert pg["transactions_per_check"] > 0 and pg["rows_written_per_check"] > 0 and pg["updated_per_check"] > 0
    assert pg["statements_per_check"] is None or pg["statements_per_check"] >= pg["transactions_per_check"]
    assert run["exit_latency"]["exits"] == 10  # every crossed stop produced a decision and a submitted exit order
    assert 0 <= run["exit_latency"]["decision_to_order_p50_ms"] <= run["exit_latency"]["decision_to_order_p99_ms"]
    assert run["rss"]["start"]["total_mb"] > 0 and len(run["rss"]["end"]["children_mb"]) == 2
    assert run["events"]["beat_lease_acquired"] >= 1 and run["events"]["monitor_skipped"] == 0
    assert "N | c | cycle s" in done.stdout  # the table was printed
