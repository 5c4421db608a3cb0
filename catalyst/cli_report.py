"""``catalyst report``: one market day as an HTML page with PNG charts (and the same numbers as JSON).

The page is built in a temporary sibling of ``--out`` and moved into place at the end, so a report that
fails part-way (the database gone, matplotlib failing) leaves the previous page whole, never one that
points at missing images. An existing ``--out`` must be empty or hold an earlier Catalyst report: only
the charts that report listed are removed, nothing else in the directory is touched.

This module is imported when the CLI starts: the database, matplotlib and the report modules are
imported inside the functions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import click

from catalyst.core.domain import BadInput, CatalystError

REPORTS_DIR = Path("var") / "reports"  # under a working root (the demo's); the CLI uses settings.var_dir/reports
CHART_NAME = re.compile(r"chart-[A-Za-z0-9_-]+\.png")  # what report_charts.file_name writes (and all we delete)


class ReportFailed(CatalystError):
    """The report could not be gathered, drawn or written; the message is one line for the operator."""


def default_out(rt, day) -> Path:
    """``<CATALYST_VAR_DIR>/reports/<date>``: where the other run files are, whatever the working directory."""
    return Path(rt.settings.var_dir) / "reports" / day.isoformat()


def write_report(rt, day, out: Path | None = None):
    """Gather ``day``'s report, draw its charts and write ``index.html`` and ``report.json`` into ``out``
    (default ``<var_dir>/reports/<date>``). Returns (data as a dict with the page's absolute path, path of
    index.html). ``report.json`` names the page relative to its directory, so the directory can be moved."""
    from catalyst.report_html import render

    out = Path(out) if out is not None else default_out(rt, day)
    stale = _previous_charts(out)
    report = _gather(rt, day)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        work.chmod(0o755)  # mkdtemp's 0700 would follow the rename: the page is meant to be shared like before
    except OSError as exc:
        raise ReportFailed(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    try:
        charts = _draw(report, work)
        names = [name for files in charts.values() for name, _ in files]
        data = {**report.as_dict(), "index": "index.html", "charts": names}
        (work / "index.html").write_text(render(report, charts), encoding="utf-8")
        (work / "report.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        _install(work, out, stale - set(names))
    except OSError as exc:
        raise ReportFailed(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    index = out / "index.html"
    return {**data, "index": str(index.resolve())}, index


def _previous_charts(out: Path) -> set[str]:
    """The charts an earlier report in ``out`` listed (to remove those this one does not redraw). Refuses a
    file, and a non-empty directory that holds no Catalyst report: its files are not ours to overwrite."""
    if not out.exists():
        return set()
    if not out.is_dir():
        raise BadInput(f"--out {out} is a file, not a directory")
    if not any(out.iterdir()):
        return set()
    try:
        previous = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if not (isinstance(previous, dict) and {"date", "summary", "charts"} <= previous.keys()
            and isinstance(previous["charts"], list)):
        raise BadInput(f"--out {out} is not a Catalyst report directory (it holds other files and no report.json "
                       f"of a report): choose a new or empty directory")
    return {name for name in previous["charts"] if isinstance(name, str) and CHART_NAME.fullmatch(name)}


def _gather(rt, day):
    """The day's numbers; a database failure becomes one line (not a traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    from catalyst.session_report import gather

    try:
        return gather(rt, day)
    except SQLAlchemyError as exc:
        raise ReportFailed(f"cannot read the records: {_first_line(getattr(exc, 'orig', None) or exc)}") from None


def _draw(report, work: Path):
    """Every chart into ``work``; any drawing failure (matplotlib, a font, the disk) becomes one line."""
    from catalyst.report_charts import draw_all

    try:
        return draw_all(report, work)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever matplotlib raises, the operator gets one line
        raise ReportFailed(f"cannot draw the charts: {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _install(work: Path, out: Path, stale: set[str]) -> None:
    """Move the finished report from ``work`` into ``out``. A new ``out`` is one rename; into an existing one
    each file is replaced atomically, charts first and the page last, then the previous report's charts
    this one no longer shows are removed, so the page in place never points at a missing image."""
    if not out.exists():
        work.rename(out)
        return
    for path in sorted(work.iterdir(), key=lambda p: (p.name == "index.html", p.name == "report.json", p.name)):
        os.replace(path, out / path.name)
    for name in stale:
        (out / name).unlink(missing_ok=True)


@click.command()
@click.option("--date", "day", default=None, metavar="YYYY-MM-DD",
              help="Market day to report (default: the latest session that has opened, in the market's time zone).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Directory for index.html and its charts: new, empty or an earlier report's "
                   "(default: <CATALYST_VAR_DIR>/reports/<date>/).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's numbers as JSON (the page is written too).")
def report(day: str | None, out: Path | None, as_json: bool) -> None:
    """Write the day's report: trades, P&L, exits by reason, scan funnel and advisor use, with charts."""
    from catalyst.cli import _fail, _runtime
    from catalyst.session_report import report_day

    rt = _runtime()
    try:
        chosen = report_day(rt, day)
        data, index = write_report(rt, chosen, out)
    except CatalystError as exc:
        _fail(exc)
    click.echo(json.dumps(data, indent=2, default=str) if as_json else str(index))
