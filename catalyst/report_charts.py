"""PNG charts of a :class:`~catalyst.session_report.SessionReport` (matplotlib, Agg, no pyplot state).

Each function draws one figure into one file and returns nothing but the file: the HTML page only
links them. Times on every axis are the market's time zone. Text from the records (symbols, reasons)
is drawn literally: mathtext is off, so a ``$`` in a reason cannot break or change a chart.
matplotlib is imported inside the functions so ``catalyst`` starts fast.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from catalyst.reports import FUNNEL_STAGES

DPI = 100
WIDE = (10, 4.2)
GREEN, RED, GREY, BLUE, ORANGE = "#1a9850", "#d73027", "#7f7f7f", "#2c7fb8", "#f28e2b"
PREFIX = "chart-"  # every file this module writes starts with it (a re-run clears its own old charts only)


@contextmanager
def _figure(path: Path, size=WIDE):
    """A figure saved to ``path`` when the block ends, with mathtext off for the whole draw."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure state, the Agg renderer writes the PNG

    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3}):
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        yield fig
        fig.savefig(path, format="png")


def _time_axis(ax, tz) -> None:
    from matplotlib.dates import AutoDateLocator, DateFormatter

    locator = AutoDateLocator(tz=tz, minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=tz))
    ax.set_xlabel(f"time ({_tz_name(tz)})")


def _tz_name(tz) -> str:
    return getattr(tz, "key", None) or str(tz)


def file_name(kind: str, index: int | None = None, label: str = "") -> str:
    """A safe file name for a chart, whatever text ``label`` holds."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", label)[:24].strip("_")
    return PREFIX + kind + (f"-{index}" if index is not None else "") + (f"-{slug}" if slug else "") + ".png"


def price_chart(path: Path, series, trades, tz, span, as_of) -> None:
    """One symbol's price over the session, entries ▲ and exits ▼ marked, each trade's stop and target."""
    with _figure(path) as fig:
        ax = fig.add_subplot()
        if series.points:
            times, prices = zip(*series.points)
            ax.plot(times, prices, color=BLUE, linewidth=1.2,
                    label=f"price ({series.source})" if series.source != "recorded" else "recorded prices",
                    marker="." if series.source == "recorded" else None)
        lo, hi = span
        first = {"entry": True, "exit": True, "held": True, "stop": True, "target": True}
        for n, t in enumerate(trades):
            until = t.exit_time or as_of
            lift = 9 + 11 * (n % 2)  # neighbouring trades' labels at two heights, so close exits stay legible
            if t.stop:
                ax.hlines(t.stop, t.entry_time, until, colors=RED, linestyles="--", linewidth=1,
                          label="stop" if first.pop("stop", False) else None)
            if t.target:
                ax.hlines(t.target, t.entry_time, until, colors=GREEN, linestyles="--", linewidth=1,
                          label="target" if first.pop("target", False) else None)
            ax.scatter([t.entry_time], [t.entry_price], marker="^", s=80, color=GREEN, edgecolors="black", zorder=5,
                       label="entry" if first.pop("entry", False) else None)
            ax.annotate(f"#{t.id} buy {t.qty:g}", (t.entry_time, t.entry_price), textcoords="offset points",
                        xytext=(0, -7 - lift), ha="center", fontsize=7)
            if t.exit_time and t.exit_price:
                ax.scatter([t.exit_time], [t.exit_price], marker="v", s=80, color=RED, edgecolors="black", zorder=5,
                           label="exit" if first.pop("exit", False) else None)
                ax.annotate(f"#{t.id} {t.reason or ''} {t.pnl or 0:+,.2f}", (t.exit_time, t.exit_price),
                            textcoords="offset points", xytext=(0, lift), ha="center", fontsize=7)
            elif t.mark is not None:  # still held: valued at its mark
                ax.scatter([as_of], [t.mark], marker="o", s=60, facecolors="none", edgecolors=ORANGE, zorder=5,
                           label="held (mark)" if first.pop("held", False) else None)
                ax.annotate(f"#{t.id} held {t.pnl or 0:+,.2f}", (as_of, t.mark), textcoords="offset points",
                            xytext=(0, lift), ha="center", fontsize=7)
        ax.set_xlim(lo, hi)
        ax.set_title(f"{series.symbol}: price, entries and exits")
        ax.set_ylabel("price (USD)")
        _time_axis(ax, tz)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)


def pnl_chart(path: Path, curve, unrealized: float, open_count: int, tz, span, as_of) -> None:
    """Cumulative realized P&L over the session (a step at each close), and realized + unrealized as of now
    (or the end of the session)."""
    with _figure(path) as fig:
        ax = fig.add_subplot()
        lo, hi = span
        times, values = [t for t, _ in curve] + [as_of], [v for _, v in curve] + [curve[-1][1]]
        ax.step(times, values, where="post", color=BLUE, linewidth=1.6, label="realized P&L (cumulative)")
        ax.scatter(times[1:-1], values[1:-1], color=BLUE, s=18, zorder=4)
        ax.axhline(0, color=GREY, linewidth=0.8)
        if open_count:
            total = values[-1] + unrealized
            ax.vlines(as_of, values[-1], total, colors=ORANGE, linestyles=":", linewidth=1.2)
            ax.scatter([as_of], [total], marker="D", s=50, color=ORANGE, zorder=5,
                       label=f"with unrealized of {open_count} open at {as_of.astimezone(tz):%H:%M}: {total:+,.2f}")
        ax.annotate(f"realized {values[-1]:+,.2f}", (as_of, values[-1]), textcoords="offset points", xytext=(-4, 6),
                    ha="right", fontsize=8)
        ax.set_xlim(lo, hi + (hi - lo) * 0.02)
        ax.set_title("P&L over the session")
        ax.set_ylabel("USD")
        _time_axis(ax, tz)
        ax.legend(loc="best", fontsize=8)


def exits_chart(path: Path, by_reason: dict[str, dict[str, float]]) -> None:
    """How many trades each exit reason closed, coloured by what they realized."""
    with _figure(path, (8, 3.6)) as fig:
        ax = fig.add_subplot()
        reasons = list(by_reason)
        counts = [by_reason[r]["count"] for r in reasons]
        colours = [GREEN if by_reason[r]["pnl"] > 0 else RED if by_reason[r]["pnl"] < 0 else GREY for r in reasons]
        bars = ax.bar(range(len(reasons)), counts, color=colours)
        ax.set_xticks(range(len(reasons)), [r[:24] for r in reasons], rotation=20, ha="right")
        for bar, r in zip(bars, reasons):
            ax.annotate(f"{by_reason[r]['pnl']:+,.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        ax.set_ylim(0, max(counts) * 1.25 + 0.5)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("exits")
        ax.set_title("Exits by reason (label: realized P&L, USD; green gained, red lost)")


def funnel_chart(path: Path, rows, tz) -> None:
    """Symbols left after each stage of each scan, and how many were entered."""
    with _figure(path) as fig:
        ax = fig.add_subplot()
        labels = [f"{r.slot_at.astimezone(tz):%H:%M}" + (" pre" if r.kind == "premarket" else "") for r in rows]
        x = range(len(rows))
        import matplotlib

        colours = matplotlib.colormaps["viridis"].resampled(len(FUNNEL_STAGES) + 1)
        for i, stage in enumerate(FUNNEL_STAGES):
            ys = [r.counts.get(stage) for r in rows]
            if any(y is not None for y in ys):
                ax.plot(x, [float("nan") if y is None else y for y in ys], marker="o", markersize=3,
                        color=colours(i), label=stage)
        ax.bar(x, [r.entered for r in rows], color=ORANGE, alpha=0.6, label="entered", width=0.5)
        ax.set_xticks(list(x), labels, rotation=45 if len(rows) > 8 else 0, ha="right" if len(rows) > 8 else "center")
        ax.set_xlabel(f"scan ({_tz_name(tz)})")
        ax.set_ylabel("symbols")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_title("Scan funnel per cycle")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)


def advisor_chart(path: Path, calls, tz, span, bucket_minutes: int = 30) -> None:
    """Consults per half hour (sent to the model, or answered by the rules fallback) and the running cost."""
    from datetime import timedelta

    with _figure(path) as fig:
        ax = fig.add_subplot()
        lo, hi = span
        width = timedelta(minutes=bucket_minutes)
        starts, sent, fallback = [], [], []
        at = lo
        while at < hi:
            inside = [c for c in calls if at <= c.time < at + width]
            starts.append(at)
            sent.append(sum(c.sent for c in inside))
            fallback.append(sum(not c.sent for c in inside))
            at += width
        bar_width = width.total_seconds() / 86400 * 0.85  # matplotlib dates are in days
        ax.bar(starts, sent, width=bar_width, align="edge", color=BLUE, label="sent to the model")
        ax.bar(starts, fallback, bottom=sent, width=bar_width, align="edge", color=GREY,
               label="answered by the rules fallback")
        ax.set_ylabel(f"consults per {bucket_minutes} min")
        ax.yaxis.get_major_locator().set_params(integer=True)
        cost = ax.twinx()
        running, times, values = 0.0, [lo], [0.0]
        for c in sorted(calls, key=lambda c: c.time):
            running += c.cost_usd
            times.append(c.time)
            values.append(running)
        times.append(hi)
        values.append(running)
        cost.step(times, values, where="post", color=ORANGE, linewidth=1.6, label="cumulative cost (USD)")
        cost.set_ylabel("cumulative cost (USD)")
        cost.set_ylim(bottom=0, top=max(running * 1.2, 0.01))
        cost.grid(False)
        ax.set_xlim(lo, hi)
        exits = sum(c.purpose == "exit" for c in calls)
        ax.set_title(f"Advisor: {len(calls)} consults ({exits} exit, {len(calls) - exits} entry review), "
                     f"{sum(c.sent for c in calls)} sent, {running:.4f} USD")
        _time_axis(ax, tz)
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = cost.get_legend_handles_labels()
        ax.legend(handles + h2, labels + l2, loc="upper left", fontsize=8)


def draw_all(report, out: Path) -> dict[str, list[tuple[str, str]]]:
    """Every chart the report has data for, written into ``out``: section -> [(file name, caption)]."""
    tz, span = report.tz, report.span
    charts: dict[str, list[tuple[str, str]]] = {"prices": [], "pnl": [], "exits": [], "funnel": [], "advisor": []}
    for i, (symbol, series) in enumerate(report.prices.items(), 1):
        name = file_name("price", i, symbol)
        price_chart(out / name, series, [t for t in report.trades if t.symbol == symbol], tz, span, report.as_of)
        charts["prices"].append((name, f"{symbol}: price ({series.source}) with entries, exits, stop and target"))
    if report.trades:
        open_trades = [t for t in report.trades if not t.realized and t.known]  # an open one without a price: not drawn
        unrealized = sum(t.pnl for t in open_trades)
        pnl_chart(out / file_name("pnl"), report.pnl_curve(), unrealized, len(open_trades), tz, span, report.as_of)
        charts["pnl"].append((file_name("pnl"), "cumulative realized P&L over the session"))
    by_reason = report.exits_by_reason()
    if by_reason:
        exits_chart(out / file_name("exits"), by_reason)
        charts["exits"].append((file_name("exits"), "exits by reason"))
    if report.funnel:
        funnel_chart(out / file_name("funnel"), report.funnel, tz)
        charts["funnel"].append((file_name("funnel"), "symbols left after each stage of each scan"))
    if report.advisor_calls:
        advisor_chart(out / file_name("advisor"), report.advisor_calls, tz, span)
        charts["advisor"].append((file_name("advisor"), "advisor consults and their cost"))
    return charts
