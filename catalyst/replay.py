"""`catalyst replay`: what the monitor would have done on recorded days.

Positions from a CSV (``symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price``)
are placed in a throwaway embedded database; then a manual clock steps through every
in-session monitor slot of the recorded bars and runs the very same ``monitor_position`` and
``exit_position`` tasks (eagerly, in this process) the workers run live.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from catalyst.clock import ManualClock
from catalyst.db.engine import dispose_all, session_scope, upgrade
from catalyst.db.models import Decision, PaperPosition, Position, Security
from catalyst.core.domain import BadInput
from catalyst.positions import RECENT_VOLUME_BARS, recent_volume

EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
POSITION_HEADER = ["symbol", "qty", "opened_at", "entry_price", "stop_loss_price", "take_profit_price"]


@dataclass(frozen=True)
class PlannedPosition:
    symbol: str
    qty: float
    opened_at: datetime
    entry_price: float
    stop_loss_price: float | None
    take_profit_price: float | None


def read_positions(path: str | Path, symbols: list[str]) -> list[PlannedPosition]:
    """Parse and validate the positions file; every problem names the line."""
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise BadInput(f"positions file {path}: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != POSITION_HEADER:
            raise BadInput(f"{path}:1: header must be {','.join(POSITION_HEADER)}")
        planned = [_row(path, n, row, symbols) for n, row in enumerate(reader, start=2) if any(c.strip() for c in row)]
    if not planned:
        raise BadInput(f"{path}: no positions")
    return planned


def _row(path: Path, line: int, row: list[str], symbols: list[str]) -> PlannedPosition:
    where = f"{path}:{line}"
    if len(row) != len(POSITION_HEADER):
        raise BadInput(f"{where}: expected {len(POSITION_HEADER)} fields, got {len(row)}")
    symbol, qty, opened, entry, stop, target = (c.strip() for c in row)
    if symbol not in symbols:
        raise BadInput(f"{where}: symbol {symbol!r} is not in the replay data")
    try:
        opened_at = datetime.fromisoformat(opened)
    except ValueError:
        raise BadInput(f"{where}: opened_at {opened!r} is not ISO-8601") from None
    if opened_at.tzinfo is None:
        raise BadInput(f"{where}: opened_at {opened!r} needs a UTC offset")

    def number(text: str, name: str, optional: bool = False) -> float | None:
        if optional and text == "":
            return None
        try:
            value = float(text)
        except ValueError:
            raise BadInput(f"{where}: {name} {text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise BadInput(f"{where}: {name} must be above zero, got {text!r}")
        return value

    return PlannedPosition(symbol, number(qty, "qty"), opened_at, number(entry, "entry_price"),
                           number(stop, "stop_loss_price", True), number(target, "take_profit_price", True))


def run_replay(data: str | list[str], positions_file: str, settings_env: dict[str, str] | None = None) -> list[dict]:
    """Replay ``data`` (a CSV, a directory of them, or a list) and return one report per position, in file order."""
    if not isinstance(data, str):
        data = ",".join(str(p) for p in data)
    from catalyst.celery import app
    from catalyst.runtime import build_runtime, reset_runtime, use_runtime
    from catalyst.settings import load_settings
    from tasks.monitoring import monitor_position

    with tempfile.TemporaryDirectory(prefix="catalyst-replay-") as tmp:
        env = {"CATALYST_VAR_DIR": tmp, "CATALYST_MARKET_DATA": f"replay:{data}", "CATALYST_BROKER": "paper",
               **(settings_env or {})}
        saved = {k: os.environ.get(k) for k in [*env, "DATABASE_URL", "REDIS_URL", "CATALYST_CLOCK"]}
        for k in ("DATABASE_URL", "REDIS_URL", "CATALYST_CLOCK"):
            os.environ.pop(k, None)
        os.environ.update(env)
        eager = app.conf.task_always_eager
        try:
            reset_runtime()
            dispose_all()
            settings = load_settings()
            upgrade(settings.sqlalchemy_url)
            probe = build_runtime(settings, ManualClock(datetime.fromisoformat("2000-01-01T00:00:00+00:00")))
            planned = read_positions(positions_file, probe.market_data.symbols())
            clock = ManualClock(min(p.opened_at for p in planned))
            rt = build_runtime(settings, clock)
            use_runtime(rt)
            app.conf.task_always_eager = True  # apply_async from inside the tasks runs inline
            ids = [_place(rt, p) for p in planned]
            _step(rt, clock, planned, ids, monitor_position)
            return [_report(pid) for pid in ids]
        finally:
            app.conf.task_always_eager = eager
            reset_runtime()
            dispose_all()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _place(rt, p: PlannedPosition) -> int:
    """Insert the position as already open at its recorded entry."""
    settings = rt.settings
    bars = rt.market_data.bars(p.symbol, p.opened_at, RECENT_VOLUME_BARS)
    with session_scope() as s:
        security = s.scalar(select(Security).where(Security.symbol == p.symbol))
        if security is None:
            security = Security(symbol=p.symbol, exchange=rt.calendar.code, created_at=p.opened_at)
            s.add(security)
            s.flush()
        position = Position(
            security_id=security.id, symbol=p.symbol, qty=p.qty, status="open", entry_price=p.entry_price,
            entry_volume=recent_volume(bars), high_watermark=p.entry_price, stop_loss_price=p.stop_loss_price,
            take_profit_price=p.take_profit_price, max_hold_seconds=settings.max_hold_hours * 3600,
            entry_reason="replay", opened_at=p.opened_at, last_price=p.entry_price, updated_at=p.opened_at)
        s.add(position)
        held = s.get(PaperPosition, p.symbol)  # the paper broker holds what the file says was bought
        if held is None:
            s.add(PaperPosition(symbol=p.symbol, qty=p.qty, avg_entry_price=p.entry_price))
        else:
            held.avg_entry_price = (held.avg_entry_price * held.qty + p.entry_price * p.qty) / (held.qty + p.qty)
            held.qty += p.qty
        s.flush()
        return position.id


def _step(rt, clock: ManualClock, planned: list[PlannedPosition], ids: list[int], monitor_position) -> None:
    """Run every in-session slot while some position is open and its symbol still has data.

    Stretches where nothing is open (between recorded days) are skipped, not stepped through.
    """
    interval = timedelta(seconds=rt.settings.monitor_check_interval)
    ends = {p.symbol: _data_end(rt, p.symbol) for p in planned}
    windows = {pid: (p.opened_at, ends[p.symbol]) for pid, p in zip(ids, planned)}
    slot = rt.calendar.next_slot(clock.now(), interval, strict=False)
    while True:
        with session_scope() as s:
            still_open = set(s.scalars(select(Position.id).where(Position.id.in_(ids), Position.status != "closed")))
        pending = {pid: w for pid, w in windows.items() if pid in still_open and slot <= w[1]}
        if not pending:
            return
        live = sorted(pid for pid, (opened, _) in pending.items() if opened <= slot)
        if not live:  # jump to the next entry instead of stepping through empty time
            slot = rt.calendar.next_slot(min(opened for opened, _ in pending.values()), interval, strict=False)
            continue
        clock.set(slot)
        for pid in live:
            monitor_position.apply(args=[pid], kwargs={"slot": slot.isoformat()}, throw=True)
        slot = rt.calendar.next_slot(slot, interval)


def _data_end(rt, symbol: str) -> datetime:
    md = rt.market_data
    last = md.bars(symbol, datetime.fromisoformat("2100-01-01T00:00:00+00:00"), 1)
    return last[-1].timestamp + md.bar_duration(symbol) if last else EPOCH


def _report(position_id: int) -> dict:
    with session_scope() as s:
        p = s.get(Position, position_id)
        exit_decision = s.scalar(select(Decision).where(Decision.position_id == position_id, Decision.kind == "monitor",
                                                        Decision.action == "exit").order_by(Decision.id.desc()))
        last = exit_decision or s.scalar(select(Decision).where(Decision.position_id == position_id,
                                                                Decision.kind == "monitor").order_by(Decision.id.desc()))
        return {
            "id": p.id, "symbol": p.symbol, "qty": p.qty, "opened_at": p.opened_at.isoformat(),
            "entry_price": p.entry_price, "status": p.status,
            "closed_at": p.closed_at.isoformat() if p.closed_at else None, "exit_price": p.exit_price,
            "exit_reason": p.exit_reason, "realized_pnl": p.realized_pnl, "realized_pnl_pct": p.realized_pnl_pct,
            "last_price": p.last_price,
            "signals": [{k: sig[k] for k in ("name", "strength", "value", "threshold")} for sig in last.signals]
            if last else [],
        }
