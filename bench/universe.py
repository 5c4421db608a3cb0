"""A synthetic universe of any size: one replay CSV per symbol for the bench session, and N open positions.

The synthetic market knows a dozen scripted symbols only, so the bench writes a replay directory
(``CATALYST_MARKET_DATA=replay:<dir>``) of quiet one-minute bars: prices alternate 100.00/100.01 with a
steady volume, so no exit signal fires and every check is the common case, a plain hold.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

SESSION_DAY = "2025-03-04"  # a Tuesday, a regular NYSE session
EASTERN = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EASTERN)
OPENED_AT = datetime(2025, 3, 4, 9, 45, tzinfo=EASTERN)
ENTRY_PRICE = 100.0
BAR_VOLUME = 10_000


def symbol_names(count: int) -> list[str]:
    return [f"BN{i:04d}" for i in range(count)]


def write_universe(directory: Path, count: int) -> Path:
    """``count`` CSV files (one per symbol) covering the whole session of :data:`SESSION_DAY`."""
    directory.mkdir(parents=True, exist_ok=True)
    for symbol in symbol_names(count):
        lines = ["timestamp,symbol,open,high,low,close,volume"]
        previous = ENTRY_PRICE
        for minute in range(390):
            close = ENTRY_PRICE + 0.01 * (minute % 2)
            ts = (SESSION_OPEN + timedelta(minutes=minute)).isoformat()
            lines.append(f"{ts},{symbol},{previous:.2f},{max(previous, close):.2f},{min(previous, close):.2f},"
                         f"{close:.2f},{BAR_VOLUME}")
            previous = close
        (directory / f"{symbol}.csv").write_text("\n".join(lines) + "\n")
    return directory


def seed_positions(url: str, n: int, symbols: list[str]) -> list[int]:
    """Insert ``n`` open positions round-robin over ``symbols`` (as tests/support.py seed_position does,
    in one transaction): ids in insertion order."""
    from catalyst.db.engine import session_scope
    from catalyst.db.models import PaperPosition, Position
    from catalyst.records import security_id

    with session_scope(url) as s:
        ids = {symbol: security_id(s, symbol, "XNYS") for symbol in symbols}
        rows = [Position(security_id=ids[symbols[i % len(symbols)]], symbol=symbols[i % len(symbols)], qty=10,
                         status="open", entry_price=ENTRY_PRICE, entry_volume=BAR_VOLUME,
                         high_watermark=ENTRY_PRICE, stop_loss_price=round(ENTRY_PRICE * 0.95, 2),
                         take_profit_price=round(ENTRY_PRICE * 1.15, 2), max_hold_seconds=240 * 3600,
                         opened_at=OPENED_AT, updated_at=OPENED_AT) for i in range(n)]
        s.add_all(rows)
        held: dict[str, float] = {}
        for p in rows:
            held[p.symbol] = held.get(p.symbol, 0.0) + p.qty
        # The paper broker's own book holds the shares too, or exits are refused and reconcile escalates.
        s.add_all(PaperPosition(symbol=symbol, qty=qty, avg_entry_price=ENTRY_PRICE) for symbol, qty in held.items())
        s.flush()
        return [p.id for p in rows]


def cross_stops(url: str, position_ids: list[int]) -> None:
    """Lift these positions' stop above the market (100.01): their next check decides a STRONG exit."""
    from sqlalchemy import update

    from catalyst.db.engine import session_scope
    from catalyst.db.models import Position

    with session_scope(url) as s:
        s.execute(update(Position).where(Position.id.in_(position_ids)).values(stop_loss_price=ENTRY_PRICE + 1))


def spread(ids: list[int], k: int) -> list[int]:
    """``k`` ids evenly spread over ``ids`` (the decisive checks sit among the slot's other checks)."""
    if k >= len(ids):
        return list(ids)
    step = len(ids) / k
    return [ids[int(i * step + step / 2)] for i in range(k)]
