"""Plain-text and JSON views of positions and health for the CLI and the demo summary."""

from __future__ import annotations

from datetime import datetime

from catalyst.db.models import Position

POSITION_FIELDS = ("id", "symbol", "qty", "status", "entry_price", "stop_loss_price", "take_profit_price",
                   "high_watermark", "last_price", "opened_at", "closed_at", "exit_price", "exit_reason",
                   "realized_pnl", "realized_pnl_pct", "exit_blocked_until", "exit_blocked_reason")


def position_dict(p: Position) -> dict:
    out = {}
    for name in POSITION_FIELDS:
        value = getattr(p, name)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    out["unrealized_pnl"] = (
        round((p.last_price - p.entry_price) * p.qty, 2) if p.status != "closed" and p.last_price else None)
    return out


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A fixed-width text table; ``align`` holds 'l' or 'r' per column."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    align = align or "l" * len(headers)

    def line(values):
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def trades_table(positions: list[Position], tz) -> tuple[str, dict]:
    """Every trade with entry, exit, reason and P&L, plus totals."""
    rows, realized, unrealized, wins, closed = [], 0.0, 0.0, 0, 0
    for p in positions:
        opened = p.opened_at.astimezone(tz).strftime("%H:%M")
        if p.status == "closed":
            closed += 1
            realized += p.realized_pnl or 0.0
            wins += (p.realized_pnl or 0) > 0
            rows.append([p.id, p.symbol, p.qty, opened, p.entry_price, p.closed_at.astimezone(tz).strftime("%H:%M"),
                         p.exit_price, p.exit_reason, p.realized_pnl, f"{p.realized_pnl_pct:+.2f}%"])
        else:
            pnl = (p.last_price - p.entry_price) * p.qty if p.last_price else 0.0
            unrealized += pnl
            pct = (p.last_price / p.entry_price - 1) * 100 if p.last_price else 0.0
            rows.append([p.id, p.symbol, p.qty, opened, p.entry_price, "(open)", p.last_price, p.status, pnl,
                         f"{pct:+.2f}%"])
    text = table(["id", "symbol", "qty", "entry", "entry $", "exit", "exit $", "reason", "P&L $", "P&L %"], rows,
                 "rlrlrlrlrr")
    totals = {"trades": len(positions), "closed": closed, "open": len(positions) - closed, "wins": wins,
              "realized_pnl": round(realized, 2), "unrealized_pnl": round(unrealized, 2)}
    return text, totals


FUNNEL_STAGES = ("universe", "filters", "technicals", "patterns", "news", "risk", "selected")


def funnel_table(cycles: list, entered: dict[int, int], tz) -> str:
    """One line per scan: how many symbols survived each stage, and how many were entered."""
    rows = []
    for c in cycles:
        counts = c.funnel or {}
        rows.append([c.slot_at.astimezone(tz).strftime("%H:%M"), c.kind,
                     *(counts.get(stage, "-") for stage in FUNNEL_STAGES), entered.get(c.id, 0)])
    return table(["scan", "kind", *FUNNEL_STAGES, "entered"], rows, "ll" + "r" * (len(FUNNEL_STAGES) + 1))


def entries_table(decisions: list, tz) -> str:
    """Each entry the rules decided, with the size and the protective prices they gave it."""
    rows = []
    for d in decisions:
        info = d.details or {}
        sizing = info.get("sizing") or {}
        price, qty = info.get("price"), info.get("qty")
        value = price * qty if price and qty else None
        stop, target = info.get("stop"), info.get("target")
        ratio = (target - price) / (price - stop) if price and stop and target and price > stop else None
        rows.append([d.decided_at.astimezone(tz).strftime("%H:%M"), d.symbol, d.reason, qty, price, value, stop,
                     target, f"{ratio:.2f}" if ratio else "-",
                     f"{sizing.get('mode', '-')}{' (capped)' if sizing.get('capped') else ''}"])
    return table(["time", "symbol", "strategy", "qty", "price", "value", "stop", "target", "R:R", "sizing"], rows,
                 "lllrrrrrrl")


def notifications_table(notes: list, tz) -> str:
    """What the operator was told, and where it was delivered."""
    rows = []
    for n in notes:
        channels = ", ".join(f"{name}:{(d or {}).get('status', '?')}" for name, d in (n.deliveries or {}).items())
        rows.append([n.occurred_at.astimezone(tz).strftime("%H:%M"), n.severity, n.event, n.title[:60],
                     channels or n.status])
    return table(["time", "severity", "event", "title", "delivery"], rows)
