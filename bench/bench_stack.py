#!/usr/bin/env python
"""`make bench`: what one monitor check costs on the real stack, against bare Celery on the same box.

For each N (open positions) and each worker concurrency it creates a fresh PostgreSQL database, uses
the bench's own Redis database (``BENCH_REDIS``, default ``redis://127.0.0.1:6379/13``; flushed per
run, never any other), measures the bare-Celery baseline, then starts a real
``celery -A catalyst worker -Q monitor,exit,maintenance -c C`` and ``celery -A catalyst beat`` on a
simulated clock (MONITOR_CHECK_INTERVAL=60) and measures: warm cycle time, checks/s, the ratio to bare
Celery, PostgreSQL transactions / rows / round trips per check, beat seconds per slot, decision → exit
order latency and worker RSS. Prints a table and writes JSON (``--out``). See docs/benchmarks.md.

``--smoke``: N = 100, one measured slot, 10× simulated speed (a slot every 6 s); checks that every field
was produced. It keeps the harness alive in CI (tests/test_bench_smoke.py) and proves nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import pg, procs, stack_run  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
# Fields every run must carry (dotted paths); tests/test_bench_smoke.py checks the same list.
REQUIRED = ("n", "concurrency", "symbols", "cycle_s", "checks_per_s", "bare_tasks_per_s", "ratio",
            "bare_celery.drain_s", "pg.transactions_per_check", "pg.rows_written_per_check",
            "pg.inserted_per_check", "pg.updated_per_check", "pg.statements_source", "beat_send_s_per_slot",
            "exit_latency.exits", "exit_latency.decision_to_order_p50_ms", "exit_latency.decision_to_order_p99_ms",
            "exit_latency.slot_to_order_p99_s", "rss.start.total_mb", "rss.end.total_mb",
            "rss.end.max_process_mb", "rss.growth_pct", "rss.growth_after_warm_up_pct", "events.beat_lease_acquired",
            "cpu_ms_per_check.total", "bare_celery.cpu_ms_per_task.total")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=_ints, default=[100, 1000], help="open positions, comma-separated (100,1000)")
    ap.add_argument("--concurrency", type=_ints, default=[2], help="worker processes, comma-separated (1,2)")
    ap.add_argument("--rounds", type=int, default=2, help="measured slots per run (after one warm-up slot)")
    ap.add_argument("--speed", type=float, default=1.0, help="simulated clock speed (1: a slot every 60 s)")
    ap.add_argument("--symbols", type=int, default=100, help="symbols in the synthetic universe (>= 100)")
    ap.add_argument("--lead", type=float, default=20.0, help="wall seconds for worker and beat to boot")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (docs/benchmarks.json; smoke: var/)")
    ap.add_argument("--smoke", action="store_true", help="N=100, 1 round, speed 10: CI keeps the harness alive")
    ap.add_argument("--pg", choices=("shared", "private"), default="shared",
                    help="shared: a fresh database on BENCH_PG_URL's server; private: an own cluster with "
                         "pg_stat_statements preloaded (round trips per check)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, CSVs)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.concurrency, args.rounds, args.speed, args.lead = [100], [2], 1, 10.0, 12.0
    args.out = args.out or (ROOT / "var" / "bench-smoke.json" if args.smoke else ROOT / "docs" / "benchmarks.json")
    return args


def exits_for(n: int) -> int:
    """Positions whose stop is crossed in the exit slot: enough for a p99, few enough not to move N."""
    return max(10, min(100, n // 20))


def missing_fields(run: dict) -> list[str]:
    gone = []
    for path in REQUIRED:
        value = run
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            gone.append(path)
    return gone


def _host(pg_admin: str) -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import redis

    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "postgresql": pg.server_version(pg_admin), "redis": redis.Redis.from_url(REDIS_URL).info()["redis_version"],
            "commit": commit}


def _clean_environment() -> None:
    """The stack gets exactly the settings the bench gives it, not the caller's Catalyst settings."""
    for key in list(os.environ):
        if key.startswith(("CATALYST_", "ALPACA_", "ANTHROPIC_", "MONITOR_")) or key in ("DATABASE_URL", "REDIS_URL"):
            os.environ.pop(key)


def table(runs: list[dict]) -> str:
    head = ("N", "c", "cycle s", "checks/s", "bare/s", "ratio", "xact/chk", "rows/chk", "rt/chk",
            "beat s/slot", "exit p50 ms", "exit p99 ms", "RSS MB start→end", "CPU ms/chk", "bare CPU ms")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in runs:
        rt = r["pg"]["statements_per_check"]
        lines.append(" | ".join(str(v) for v in (
            r["n"], r["concurrency"], r["cycle_s"], r["checks_per_s"], r["bare_tasks_per_s"], r["ratio"],
            r["pg"]["transactions_per_check"], r["pg"]["rows_written_per_check"], "n/a" if rt is None else rt,
            r["beat_send_s_per_slot"], r["exit_latency"]["decision_to_order_p50_ms"],
            r["exit_latency"]["decision_to_order_p99_ms"],
            f"{r['rss']['start']['total_mb']}→{r['rss']['end']['total_mb']}", r["cpu_ms_per_check"]["total"],
            r["bare_celery"]["cpu_ms_per_task"]["total"])))
    return "\n".join(lines)


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through every finally: processes stopped, database dropped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    _clean_environment()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="catalyst-bench-"))
    runs, ok, cluster = [], False, None
    try:
        pg_admin = pg.PG_ADMIN
        if args.pg == "private":
            from tests.private_servers import PrivatePostgres

            cluster = PrivatePostgres("max_connections=200", "shared_preload_libraries=pg_stat_statements",
                                      "pg_stat_statements.track=all", "pg_stat_statements.track_utility=on",
                                      durable=True)
            cluster.start()
            pg_admin = cluster.admin_url
        host = _host(pg_admin)
        for n in args.n:
            for c in args.concurrency:
                cfg = stack_run.RunConfig(n=n, concurrency=c, rounds=args.rounds, speed=args.speed,
                                          symbols=args.symbols, exits=exits_for(n), lead_s=args.lead,
                                          redis_url=REDIS_URL, work_dir=work, pg_admin=pg_admin)
                print(f"bench: N={n} concurrency={c} ...", flush=True)
                runs.append(stack_run.run(cfg))
                print(table(runs[-1:]).splitlines()[-1], flush=True)
        ok = True
    finally:
        procs.stop_all()
        if cluster is not None:
            cluster.close()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"bench: work directory kept at {work}", file=sys.stderr)
    elapsed = round(time.monotonic() - started, 1)
    result = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "host": host,
              "settings": {"monitor_check_interval": stack_run.INTERVAL, "speed": args.speed, "rounds": args.rounds,
                           "symbols": args.symbols, "pg": args.pg, "redis": REDIS_URL.rsplit("/", 1)[0] + "/<db>"},
              "elapsed_s": elapsed, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(table(runs))
    print(f"\nbench: wrote {args.out} in {elapsed} s")
    gone = {f"N={r['n']},c={r['concurrency']}": missing_fields(r) for r in runs}
    gone = {k: v for k, v in gone.items() if v}
    if gone:
        print(f"bench: fields missing: {gone}", file=sys.stderr)
        return 1
    if args.smoke and elapsed > 60:
        print(f"bench: warning: the smoke run took {elapsed} s (target 60 s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
