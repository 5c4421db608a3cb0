"""``catalyst report``: one market day as an HTML page with PNG charts (and the same numbers as JSON).

This module is imported when the CLI starts: the database, matplotlib and the report modules are
imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

REPORTS_DIR = Path("var") / "reports"


def write_report(rt, day, out: Path | None = None):
    """Gather ``day``'s report, draw its charts and write ``index.html`` and ``report.json`` into ``out``
    (default ``var/reports/<date>``). Returns (data as a dict, path of index.html)."""
    from catalyst.report_charts import PREFIX, draw_all
    from catalyst.report_html import render
    from catalyst.session_report import gather

    out = Path(out) if out is not None else REPORTS_DIR / day.isoformat()
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"--out {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(PREFIX + "*.png"):  # a chart of an earlier run that this one may not redraw
        old.unlink()
    report = gather(rt, day)
    charts = draw_all(report, out)
    index = out / "index.html"
    index.write_text(render(report, charts), encoding="utf-8")
    data = {**report.as_dict(), "index": str(index.resolve()),
            "charts": [name for files in charts.values() for name, _ in files]}
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return data, index


@click.command()
@click.option("--date", "day", default=None, metavar="YYYY-MM-DD",
              help="Market day to report (default: today's session in the market's time zone, else the last one).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Directory for index.html and its charts (default: var/reports/<date>/).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's numbers as JSON (the page is written too).")
def report(day: str | None, out: Path | None, as_json: bool) -> None:
    """Write the day's report: trades, P&L, exits by reason, scan funnel and advisor use, with charts."""
    from catalyst.cli import _fail, _runtime
    from catalyst.core.domain import CatalystError
    from catalyst.session_report import report_day

    rt = _runtime()
    try:
        chosen = report_day(rt, day)
        data, index = write_report(rt, chosen, out)
    except CatalystError as exc:
        _fail(exc)
    except OSError as exc:  # an --out that cannot be written
        raise click.ClickException(f"cannot write the report to {out or REPORTS_DIR / chosen.isoformat()}: "
                                   f"{exc.strerror or exc}") from None
    click.echo(json.dumps(data, indent=2, default=str) if as_json else str(index))
