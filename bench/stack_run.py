"""One benchmark run: N open positions on the real stack (Redis, PostgreSQL, a Catalyst worker and beat).

Time is simulated (``CATALYST_CLOCK=sim:<start>@<speed>``) inside a regular session so that every
monitor slot falls in market hours; at speed 1 a slot is due every ``MONITOR_CHECK_INTERVAL`` wall
seconds. The run is: one warm-up slot, ``rounds`` measured slots, then an exit slot in which a few
positions' stops are crossed to time decision → exit order.

How each number is taken (nothing is read from the code under test, only from what it records):
- cycle: the slot's due wall time → the last ``position_monitor_status.updated_at`` among the checks of
  that slot (``last_check_at`` ≥ the slot), waited for until all N are checked;
- PostgreSQL per check: ``pg_stat_database`` deltas for the bench database over whole intervals (beat,
  heartbeats and the watchdog included) divided by the checks in them, less the bench's own reads;
- beat seconds per slot: first → last ``schedule_entries.last_sent_at`` of the slot's monitor entries;
- decision → order: the exit decision's ``decided_at`` → the exit order's ``submitted_at`` (both market
  time, divided by the speed);
- CPU per check: user + system seconds of the worker's main process, its pool children, beat, every PostgreSQL
  server process and the Redis server (/proc and INFO), from just before each measured slot is due to its last
  check (what the cycle costs); what they spend between cycles is reported apart, in cores (``idle_cores``);
- RSS: the worker's main process and pool children from /proc, once online, after the warm-up slot and after the run.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis

from bench import baseline, cpu, pg, procs, universe

START = datetime(2025, 3, 4, 10, 0, tzinfo=universe.EASTERN)  # sim time at the anchor; the first slot
INTERVAL = 60.0  # MONITOR_CHECK_INTERVAL, market seconds
POLL = 0.25


@dataclass(frozen=True)
class RunConfig:
    n: int
    concurrency: int
    rounds: int
    speed: float
    symbols: int
    exits: int
    lead_s: float  # wall seconds from start-up to the first slot (worker and beat boot in it)
    redis_url: str
    work_dir: Path
    pg_admin: str = pg.PG_ADMIN


class Probe:
    """The bench's own connection to the bench database; counts its transactions so they can be subtracted."""

    def __init__(self, url: str):
        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)
        self.transactions = 0

    def one(self, sql: str, *args):
        self.transactions += 1
        return self.conn.execute(sql, args).fetchone()

    def all(self, sql: str, *args):
        self.transactions += 1
        return self.conn.execute(sql, args).fetchall()

    def close(self) -> None:
        self.conn.close()


def _wall(anchor: float, sim: datetime, speed: float) -> float:
    return anchor + (sim - START).total_seconds() / speed


def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _set_anchor(url: str, spec: str, anchor: float) -> None:
    """Simulated time reaches ``START`` at wall time ``anchor`` in every process (catalyst.runtime's key)."""
    from catalyst.db.engine import session_scope
    from catalyst.db.models import TradingState
    from catalyst.runtime import CLOCK_KEY

    with session_scope(url) as s:
        s.merge(TradingState(key=CLOCK_KEY + spec, value={"anchor": anchor}, updated_at=datetime.now(UTC)))


def _environment(cfg: RunConfig, url: str, data_dir: Path) -> tuple[dict[str, str], str]:
    spec = f"sim:{START.isoformat()}@{cfg.speed:g}"
    env = {"DATABASE_URL": url, "REDIS_URL": cfg.redis_url, "CATALYST_MARKET_DATA": f"replay:{data_dir}",
           "CATALYST_CLOCK": spec, "MONITOR_CHECK_INTERVAL": f"{INTERVAL:g}", "CATALYST_AUTO_ENTRIES": "false",
           "CATALYST_VAR_DIR": str(cfg.work_dir / "var"), "LOG_FORMAT": "json",
           "NUMBA_CACHE_DIR": str(procs.ROOT / "var" / "bench-numba")}
    return env, spec


def _first_slot(probe: Probe, n: int, timeout: float) -> datetime:
    """Beat's first monitor slot, once it has an entry for every position."""
    row = _wait(lambda: (r := probe.one("SELECT count(*), min(next_run_at) FROM schedule_entries "
                                        "WHERE name LIKE 'monitor-position-%%'")) and r[0] >= n and r,
                timeout, f"beat to schedule {n} positions")
    return row[1]


def _checked(probe: Probe, slot: datetime) -> int:
    return probe.one("SELECT count(*) FROM position_monitor_status WHERE last_check_at >= %s", slot)[0]


def _cycle(probe: Probe, cfg: RunConfig, anchor: float, slot: datetime) -> dict:
    """Wait until every position has a check of ``slot``; when the last one landed, and how beat sent it."""
    due = _wall(anchor, slot, cfg.speed)
    _wait(lambda: _checked(probe, slot) >= cfg.n, timeout=max(120.0, 3 * INTERVAL / cfg.speed + cfg.n / 20),
          what=f"all {cfg.n} positions to be checked in slot {slot.isoformat()}")
    last = probe.one("SELECT max(updated_at) FROM position_monitor_status WHERE last_check_at >= %s", slot)[0]
    sent = probe.one("SELECT count(*), min(last_sent_at), max(last_sent_at) FROM schedule_entries "
                     "WHERE name LIKE 'monitor-position-%%' AND last_slot_at = %s", slot)
    next_due = _wall(anchor, slot + timedelta(seconds=INTERVAL), cfg.speed)
    return {"slot": slot.isoformat(), "cycle_s": round(last.timestamp() - due, 3),
            "overran": time.time() > next_due,  # the next slot began before this one was done
            "beat_sent": sent[0], "beat_first_send_lag_s": round(sent[1].timestamp() - due, 3) if sent[0] else None}


def _beat_send_seconds(beat, n: int) -> list[float]:
    """Beat's own account of each tick that sent a whole slot (claim + publish, wall seconds): one claim statement
    gives every row of a slot the same ``last_sent_at``, so the rows cannot tell how long the sending took."""
    out = []
    for line in beat.log_text().splitlines():
        if '"schedule_tick_sent"' in line:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("claimed", 0) >= n:
                out.append(float(event["seconds"]))
    return out


def _pg_per_check(delta: dict, own_transactions: int, checks: int) -> dict:
    """Per check, less the bench's own reads (its probe, and the first snapshot's pg_stat_statements read)."""
    own = own_transactions + (1 if delta["statements"] is not None else 0)
    xacts = delta["xact_commit"] + delta["xact_rollback"] - own
    written = delta["tup_inserted"] + delta["tup_updated"] + delta["tup_deleted"]
    statements = None if delta["statements"] is None else delta["statements"] - own
    return {"transactions_per_check": round(xacts / checks, 2), "rows_written_per_check": round(written / checks, 2),
            "inserted_per_check": round(delta["tup_inserted"] / checks, 2),
            "updated_per_check": round(delta["tup_updated"] / checks, 2),
            "deleted_per_check": round(delta["tup_deleted"] / checks, 2),
            "statements_per_check": None if statements is None else round(statements / checks, 2),
            "statements_source": "pg_stat_statements (calls)" if statements is not None
            else "unavailable: pg_stat_statements not in shared_preload_libraries",
            "raw": delta}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _exit_latency(probe: Probe, cfg: RunConfig, ids: list[int], slot: datetime) -> dict:
    _wait(lambda: probe.one("SELECT count(*) FROM orders WHERE purpose = 'exit' AND submitted_at IS NOT NULL "
                            "AND position_id = ANY(%s)", ids)[0] >= len(ids),
          timeout=max(120.0, 3 * INTERVAL / cfg.speed), what=f"{len(ids)} exit orders")
    rows = probe.all("SELECT d.decided_at, o.submitted_at FROM decisions d JOIN orders o "
                     "ON o.position_id = d.position_id AND o.purpose = 'exit' "
                     "WHERE d.kind = 'monitor' AND d.action = 'exit' AND d.position_id = ANY(%s)", ids)
    decision = [(o - d).total_seconds() / cfg.speed for d, o in rows]
    from_slot = [(o - slot).total_seconds() / cfg.speed for _, o in rows]
    return {"exits": len(rows), "decision_to_order_p50_ms": round(1000 * _percentile(decision, 50), 1),
            "decision_to_order_p99_ms": round(1000 * _percentile(decision, 99), 1),
            "slot_to_order_p50_s": round(_percentile(from_slot, 50), 3),
            "slot_to_order_p99_s": round(_percentile(from_slot, 99), 3)}


def _log_counts(worker, beat) -> dict:
    w, b = worker.log_text(), beat.log_text()
    return {"monitor_skipped": w.count("monitor_skipped"), "expired_messages": w.lower().count("expired"),
            "beat_lease_acquired": b.count("beat_active"), "beat_standby": b.count("beat_standby"),
            "beat_send_failed": b.count("schedule_slot_send_failed")}


def run(cfg: RunConfig) -> dict:
    """Measure one (N, concurrency) point; every process started here is stopped before returning."""
    name, url = pg.create_database(cfg.pg_admin)
    probe = None
    try:
        redis.Redis.from_url(cfg.redis_url).flushdb()  # the bench's own Redis database only
        logs = cfg.work_dir / f"logs-n{cfg.n}-c{cfg.concurrency}"
        bare = baseline.measure(cfg.redis_url, max(cfg.n, baseline.MIN_TASKS), cfg.concurrency, logs)
        data_dir = universe.write_universe(cfg.work_dir / f"universe-{cfg.symbols}", cfg.symbols) \
            if not (cfg.work_dir / f"universe-{cfg.symbols}").exists() else cfg.work_dir / f"universe-{cfg.symbols}"
        ids = universe.seed_positions(url, cfg.n, universe.symbol_names(cfg.symbols))
        with_statements = pg.statements_available(name, cfg.pg_admin)
        env, spec = _environment(cfg, url, data_dir)
        anchor = time.time() + cfg.lead_s
        _set_anchor(url, spec, anchor)
        probe = Probe(url)
        worker = procs.catalyst_worker(env, logs, cfg.concurrency)
        procs.wait_log(worker, "worker_online", timeout=120)
        rss_start = procs.worker_rss(worker)
        beat = procs.catalyst_beat(env, logs)
        groups = {"worker": worker.popen.pid, "beat": beat.popen.pid, "postmaster": cpu.postmaster_pid(cfg.pg_admin),
                  "redis_url": cfg.redis_url}
        first = _first_slot(probe, cfg.n, timeout=120)
        slots = [first + timedelta(seconds=INTERVAL * i) for i in range(cfg.rounds + 2)]
        warm = _cycle(probe, cfg, anchor, slots[0])
        rss_warm = procs.worker_rss(worker)  # every child has run checks: first-use growth is behind us
        cycles, before, in_cycles = [], None, []
        for slot in slots[1:-1]:
            _sleep_until(_wall(anchor, slot, cfg.speed) - min(1.0, 0.2 * INTERVAL / cfg.speed))
            if before is None:
                before, own_before = pg.snapshot(name, with_statements, cfg.pg_admin), probe.transactions
                cpu_before, cpu_wall = cpu.snapshot(**groups), time.time()
            cycle_start = cpu.snapshot(**groups)
            cycles.append(_cycle(probe, cfg, anchor, slot))
            in_cycles.append((cycle_start, cpu.snapshot(**groups)))
        _sleep_until(_wall(anchor, slots[-1], cfg.speed) - min(1.5, 0.25 * INTERVAL / cfg.speed))
        after = pg.snapshot(name, with_statements, cfg.pg_admin)
        cpu_all = cpu.per_item_ms(cpu_before, cpu.snapshot(**groups), cfg.n * cfg.rounds)
        cpu_interval_s = time.time() - cpu_wall
        cpu_ms = cpu.per_item_ms(*cpu.summed(in_cycles), cfg.n * cfg.rounds)
        per_check = _pg_per_check(after.minus(before), probe.transactions - own_before, cfg.n * cfg.rounds)
        crossed = universe.spread(ids, cfg.exits)
        universe.cross_stops(url, crossed)
        latency = _exit_latency(probe, cfg, crossed, slots[-1])
        rss_end = procs.worker_rss(worker)
        counts = _log_counts(worker, beat)
        sends = _beat_send_seconds(beat, cfg.n)
        procs.stop(beat)
        procs.stop(worker)
    finally:
        if probe is not None:
            probe.close()
        procs.stop_all()
        pg.drop_database(name, cfg.pg_admin)
    cycle_s = statistics.median(c["cycle_s"] for c in cycles)
    checks_per_s = cfg.n / cycle_s
    return {"n": cfg.n, "concurrency": cfg.concurrency, "symbols": cfg.symbols, "rounds": cfg.rounds,
            "speed": cfg.speed, "interval_s": INTERVAL, "warm_up": warm, "cycles": cycles,
            "cycle_s": round(cycle_s, 3), "checks_per_s": round(checks_per_s, 1),
            "bare_celery": bare, "bare_tasks_per_s": bare["tasks_per_s"],
            "ratio": round(checks_per_s / bare["tasks_per_s"], 3), "pg": per_check,
            "beat_send_s_per_slot": round(statistics.median(sends), 3) if sends else None,
            "exit_latency": latency, "cpu_ms_per_check": cpu_ms,
            # CPU the checks of a cycle need, in cores: near the box's core count, the cycle is CPU-bound
            "cores_needed": round(cpu_ms["total"] * checks_per_s / 1000, 2),
            # the stack's CPU between cycles (beat's ticks, heartbeats, idle polling), in cores
            "idle_cores": round(max(0.0, cpu_all["total"] - cpu_ms["total"]) * cfg.n * cfg.rounds / 1000
                                / max(1e-9, cpu_interval_s - sum(c["cycle_s"] for c in cycles)), 3),
            "rss": {"start": rss_start, "warm": rss_warm, "end": rss_end,
                    "growth_pct": round(100 * (rss_end["total_mb"] / rss_start["total_mb"] - 1), 1),
                    "growth_after_warm_up_pct": round(100 * (rss_end["total_mb"] / rss_warm["total_mb"] - 1), 1)},
            "events": counts}
