"""The session report as one self-contained HTML page (inline CSS; the PNG charts sit beside it).

Every piece of text that comes from the records (symbols, reasons, strategies, causes) goes through
:func:`html.escape`, attribute values included, so a hostile symbol or reason is shown, never run.
"""

from __future__ import annotations

import html
from datetime import datetime

from catalyst.reports import FUNNEL_STAGES

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .55rem} th{background:#f4f4f4;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} .pos{color:#1a7f37} .neg{color:#c62828}
.note{background:#fff8e1;border-left:4px solid #f2b01e;padding:.5rem .8rem}
figure{margin:1rem 0} figcaption{color:#666;font-size:.85rem} img{max-width:100%;height:auto;border:1px solid #eee}
"""


def e(value) -> str:
    """Escaped text of anything (``None`` is a dash)."""
    return "-" if value is None else html.escape(str(value), quote=True)


def money(value) -> str:
    if value is None:
        return '<td class="n">-</td>'
    cls = "pos" if value > 0 else "neg" if value < 0 else ""
    return f'<td class="n {cls}">{value:+,.2f}</td>'


def num(value, fmt: str = ",.2f") -> str:
    return '<td class="n">-</td>' if value is None else f'<td class="n">{format(value, fmt)}</td>'


def _time(value: datetime | None, tz) -> str:
    return "-" if value is None else value.astimezone(tz).strftime("%H:%M:%S")


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _figures(charts: list[tuple[str, str]]) -> str:
    return "".join(f'<figure><img src="{e(name)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>'
                   for name, caption in charts)


def render(report, charts: dict[str, list[tuple[str, str]]]) -> str:
    """The whole page for ``report`` with the chart files named in ``charts`` (from report_charts.draw_all)."""
    tz = report.tz
    summary = report.summary()
    session = (f"session {report.session_open.astimezone(tz):%H:%M}–{report.session_close.astimezone(tz):%H:%M}"
               if report.session_open else f"no {report.calendar} session on this day")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Catalyst session report {e(report.day.isoformat())}</title><style>{CSS}</style></head><body>",
        f"<h1>Catalyst session report: {e(report.day.strftime('%A %Y-%m-%d'))}</h1>",
        f'<p class="sub">{e(report.market)} ({e(report.calendar)}), {e(session)}; times in {e(str(tz))}; '
        f"generated at {e(report.generated_at.astimezone(tz).strftime('%Y-%m-%d %H:%M:%S %Z'))}</p>",
        _summary(summary),
        _trades(report, tz),
        "<h2>Prices</h2>", _prices(report, charts["prices"]),
        "<h2>P&amp;L over the session</h2>", _figures(charts["pnl"]) or "<p>No P&amp;L: no trades.</p>",
        "<h2>Exits by reason</h2>", _exits(report.exits_by_reason()), _figures(charts["exits"]),
        "<h2>Scan funnel</h2>", _funnel(report, tz), _figures(charts["funnel"]),
        "<h2>Advisor</h2>", _advisor(report.advisor_summary()), _figures(charts["advisor"]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _summary(s: dict) -> str:
    if not s["trades"]:
        return '<p class="note">No trades on this day.</p>'
    win = "-" if s["win_rate"] is None else f"{s['win_rate'] * 100:.1f}%"
    rows = [
        f"<tr><th>trades</th>{num(s['trades'], 'd')}</tr>",
        f"<tr><th>closed / open</th><td class='n'>{s['closed']} / {s['open']}</td></tr>",
        f"<tr><th>wins / losses / draws</th><td class='n'>{s['wins']} / {s['losses']} / {s['draws']}</td></tr>",
        f"<tr><th>win rate</th><td class='n'>{e(win)}</td></tr>",
        f"<tr><th>realized P&amp;L (USD)</th>{money(s['realized_pnl'])}</tr>",
        *_unknown(s["realized_unknown"], "closed trades with unknown P&amp;L (no realized P&amp;L or exit price "
                                         "recorded; left out of the figures)"),
        f"<tr><th>realized P&amp;L (% of cost)</th>{num(s['realized_pnl_pct'], '+.2f')}</tr>",
        f"<tr><th>unrealized P&amp;L (USD)</th>{money(s['unrealized_pnl'])}</tr>",
        *_unknown(s["unrealized_unknown"], "open trades with unknown P&amp;L (no price that day; left out)"),
        f"<tr><th>profit factor</th>{num(s['profit_factor'])}</tr>",
        f"<tr><th>max drawdown of realized (USD)</th>{num(s['max_drawdown'])}</tr>",
        f"<tr><th>average hold (min)</th>{num(s['avg_hold_minutes'], '.1f')}</tr>",
    ]
    for key, label in (("best_trade", "best trade"), ("worst_trade", "worst trade")):
        t = s[key]
        if t:
            rows.append(f"<tr><th>{label}</th><td class='n'>#{t['id']} {e(t['symbol'])} {t['pnl']:+,.2f}</td></tr>")
    return "<h2>Summary</h2>" + f"<table><tbody>{''.join(rows)}</tbody></table>"


def _unknown(count: int, label: str) -> list[str]:
    """A summary row for figures the records cannot give, only when there are any."""
    return [f"<tr><th>{label}</th><td class='n'>{count} unknown</td></tr>"] if count else []


def _kind(t) -> str:
    """The trade's last column: realized or unrealized, and "P&L unknown" when it has none."""
    kind = "realized" if t.realized else "unrealized"
    return kind if t.known else f"{kind}, P&amp;L unknown"


def _trades(report, tz) -> str:
    if not report.trades:
        return ""
    rows = []
    for t in report.trades:
        rows.append(
            f"<tr><td class='n'>{t.id}</td><td>{e(t.symbol)}</td>{num(t.qty, 'g')}<td>{e(_time(t.entry_time, tz))}</td>"
            f"{num(t.entry_price)}<td>{e(_time(t.exit_time, tz)) if t.exit_time else '(' + e(t.status) + ')'}</td>"
            f"{num(t.exit_price if t.realized else t.mark)}<td>{e(t.reason)}</td><td>{e(t.strategy)}</td>"
            f"{num(t.stop)}{num(t.target)}{money(t.pnl)}{num(t.pnl_pct, '+.2f')}"
            f"<td>{_kind(t)}</td></tr>")
    return "<h2>Trades</h2>" + _table(["id", "symbol", "qty", "entry", "entry $", "exit", "exit $ / mark", "reason",
                                       "strategy", "stop", "target", "P&L $", "P&L %", ""], rows)


def _prices(report, charts) -> str:
    if not report.prices:
        return "<p>No symbol was traded.</p>"
    notes = "".join(f'<p class="note">{e(sym)}: {e(p.note)}; the chart shows the prices Catalyst recorded '
                    f"(entries, exits, monitor checks).</p>" for sym, p in report.prices.items()
                    if p.source == "recorded")
    return notes + _figures(charts)


def _exits(by_reason: dict) -> str:
    if not by_reason:
        return "<p>No exits.</p>"
    rows = [f"<tr><td>{e(r)}</td>{num(v['count'], 'd')}{money(v['pnl'])}</tr>" for r, v in by_reason.items()]
    return _table(["reason", "exits", "realized P&L $"], rows)


def _funnel(report, tz) -> str:
    if not report.funnel:
        return "<p>No scans on this day.</p>"
    rows = [f"<tr><td>{e(r.slot_at.astimezone(tz).strftime('%H:%M'))}</td><td>{e(r.kind)}</td>"
            + "".join(num(r.counts.get(s), "d") for s in FUNNEL_STAGES) + f"{num(r.entered, 'd')}</tr>"
            for r in report.funnel]
    return _table(["scan", "kind", *FUNNEL_STAGES, "entered"], rows)


def _advisor(a: dict) -> str:
    if not a["consults"]:
        return "<p>No advisor consults on this day.</p>"
    causes = ", ".join(f"{k} {v}" for k, v in sorted(a["fallbacks"].items())) or "none"
    ledger = a["ledger"]
    rows = [
        f"<tr><th>consults (exit / entry review)</th><td class='n'>{a['consults']} ({a['exit_consults']} / "
        f"{a['entry_reviews']})</td></tr>",
        f"<tr><th>requests sent to the model</th>{num(a['calls'], 'd')}</tr>",
        f"<tr><th>cost (USD, from the decisions)</th>{num(a['cost_usd'], '.4f')}</tr>",
        f"<tr><th>answered by the rules fallback</th><td>{e(causes)}</td></tr>",
    ]
    if ledger:
        rows.append(f"<tr><th>daily budget ledger</th><td class='n'>{ledger['calls']} calls, "
                    f"{ledger['spent_usd']:.4f} USD</td></tr>")
    return f"<table><tbody>{''.join(rows)}</tbody></table>"
