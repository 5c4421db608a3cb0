"""Benchmark: one monitor cycle of 50 positions in 5 symbols, indicators shared vs computed per position.

    .venv/bin/python bench/bench_monitor_cycle.py

Runs in-process on a throwaway embedded SQLite database with synthetic prices. The baseline,
measured in the same run, gives every check its own cycle so indicators are computed once per
position (what a monitor without the shared per-symbol snapshot would do). Reports the median
seconds per cycle of each and their ratio.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POSITIONS, SYMBOLS, ROUNDS = 50, 5, 5


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="catalyst-bench-")
    os.environ.update(CATALYST_VAR_DIR=tmp, CATALYST_MARKET_DATA="synthetic", CATALYST_BROKER="paper")
    for key in ("DATABASE_URL", "REDIS_URL", "CATALYST_CLOCK"):
        os.environ.pop(key, None)
    os.environ["LOG_LEVEL"] = "WARNING"
    from catalyst.clock import ManualClock
    from catalyst.db.engine import session_scope, upgrade
    from catalyst.db.models import Position, Security
    from catalyst.logs import configure_logging
    from catalyst.monitor import check_position
    from catalyst.runtime import build_runtime, use_runtime
    from catalyst.settings import get_settings

    configure_logging("WARNING", persist=False)
    settings = get_settings()
    upgrade(settings.sqlalchemy_url)
    start = datetime(2026, 11, 18, 11, 0, tzinfo=ZoneInfo("America/New_York"))
    clock = ManualClock(start)
    rt = build_runtime(settings, clock)
    use_runtime(rt)
    symbols = rt.market_data.symbols()[:SYMBOLS]
    with session_scope() as s:
        ids = []
        for i in range(POSITIONS):
            sym = symbols[i % SYMBOLS]
            price = rt.market_data.quote(sym, start).price
            sec = s.query(Security).filter_by(symbol=sym).one_or_none() or Security(symbol=sym, created_at=start)
            s.add(sec)
            s.flush()
            p = Position(security_id=sec.id, symbol=sym, qty=1, status="open", entry_price=price, entry_volume=None,
                         high_watermark=price, stop_loss_price=price * 0.5, take_profit_price=price * 2,
                         max_hold_seconds=1e9, opened_at=start - timedelta(hours=1), updated_at=start)
            s.add(p)
            s.flush()
            ids.append(p.id)

    def cycle(n: int, shared: bool) -> float:
        slot = start + timedelta(minutes=n)
        clock.set(slot + timedelta(seconds=1))
        began = time.perf_counter()
        for k, pid in enumerate(ids):
            check_position(rt, pid, slot=slot if shared else slot + timedelta(microseconds=k + 1))
        return time.perf_counter() - began

    cycle(0, True)  # warm-up: imports, pandas-ta first calls
    shared = [cycle(1 + 2 * r, True) for r in range(ROUNDS)]
    baseline = [cycle(2 + 2 * r, False) for r in range(ROUNDS)]
    a, b = statistics.median(shared), statistics.median(baseline)
    print(f"monitor cycle, {POSITIONS} positions in {SYMBOLS} symbols, median of {ROUNDS}:")
    print(f"  shared indicators (Catalyst): {a:.3f} s  ({POSITIONS / a:.0f} checks/s)")
    print(f"  per-position indicators (baseline, same run): {b:.3f} s  ({POSITIONS / b:.0f} checks/s)")
    print(f"  ratio baseline/shared: {b / a:.2f}x")


if __name__ == "__main__":
    main()
