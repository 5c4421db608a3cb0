"""`catalyst report` (issue 10): an HTML page with PNG charts of one market day, and the same numbers as JSON.

On real PostgreSQL with seeded positions, decisions and cycles, and on the SQLite database of a real
`catalyst demo` run (real worker and beat, sped up): the page exists, every image it shows is a valid PNG,
its numbers are the database's, a quiet day says so, a bad date is one line, and hostile text is escaped.
"""

from __future__ import annotations

import html
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from catalyst.cli import main
from catalyst.db.engine import session_scope
from catalyst.db.models import Position, TradingCycle
from catalyst.records import record_decision
from tests.support import CATALYST_VARS, environment, seed_position

NY = ZoneInfo("America/New_York")
DAY = "2026-12-04"  # a Friday session on XNYS
HOSTILE_SYMBOL = "<b>A&B</b>"
HOSTILE_REASON = '<script>x("$1")</script>'  # the $ would start mathtext in a matplotlib label
SECRET = "sk-ant-report-SECRET-0123456789"


def at(day: str, hhmm: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00").replace(tzinfo=NY)


# -- checking what was written ------------------------------------------------------------------------

class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails unless the file is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path.name} has no IHDR chunk first"
    return struct.unpack(">II", head[16:24])


def images_of(index: Path) -> list[Path]:
    """Every image the page shows: each exists next to it, is a PNG with a size and decodes."""
    from matplotlib.image import imread

    parser = _Images()
    parser.feed(index.read_text(encoding="utf-8"))
    found = []
    for src in parser.sources:
        path = index.parent / src
        assert path.parent == index.parent and path.is_file(), f"{src} is not a file beside index.html"
        width, height = png_size(path)
        assert width > 0 and height > 0
        assert imread(path).shape[:2] == (height, width)
        found.append(path)
    return found


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


# -- a seeded day on PostgreSQL ----------------------------------------------------------------------------

@pytest.fixture
def seeded(pg_url, tmp_path):
    """The day: two closes and one hostile close, one held position, one held over from the day before, one
    closed the day before; a scan with its funnel; three advisor consults. Clock: 15:30 that day."""
    env = {"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_MARKET_DATA": "synthetic", "CATALYST_CLOCK": f"sim:{DAY}T15:30:00-05:00@1",
           "ANTHROPIC_API_KEY": SECRET}
    with environment(env):
        with session_scope() as s:
            cycle = TradingCycle(slot_at=at(DAY, "10:00"), market="US", status="done", candidates=2, kind="session",
                                 funnel={"universe": 12, "filters": 9, "technicals": 6, "patterns": 4, "news": 3,
                                         "risk": 2, "selected": 2}, started_at=at(DAY, "10:00"))
            s.add(cycle)
            s.flush()
            cycle_id = cycle.id
        ids = {
            "win": seed_position("UPTR", 100.0, at(DAY, "10:00"), qty=10),
            "held_over": seed_position("SPIK", 200.0, at("2026-12-03", "15:00"), qty=5),
            "hostile": seed_position(HOSTILE_SYMBOL, 50.0, at(DAY, "11:00"), qty=3),
            "open": seed_position("MOON", 300.0, at(DAY, "14:00"), qty=2),
            "yesterday": seed_position("GAPU", 80.0, at("2026-12-03", "10:00"), qty=4),
        }
        closes = {"win": (at(DAY, "11:00"), 104.0, "take_profit"), "held_over": (at(DAY, "10:00"), 190.0, "stop_loss"),
                  "hostile": (at(DAY, "13:00"), 55.0, HOSTILE_REASON),
                  "yesterday": (at("2026-12-03", "12:00"), 70.0, "near_close")}
        with session_scope() as s:
            for key, (when, price, reason) in closes.items():
                p = s.get(Position, ids[key])
                p.status, p.closed_at, p.exit_price, p.exit_reason = "closed", when, price, reason
                p.realized_pnl = round((price - p.entry_price) * p.qty, 2)
                p.realized_pnl_pct = round((price / p.entry_price - 1) * 100, 2)
            s.get(Position, ids["win"]).cycle_id = cycle_id
            s.get(Position, ids["open"]).last_price = 310.0
            for hhmm, price in (("11:30", 51.0), ("12:00", 53.5), ("12:30", 52.0)):
                record_decision(s, kind="monitor", action="hold", symbol=HOSTILE_SYMBOL, position_id=ids["hostile"],
                                decided_at=at(DAY, hhmm), details={"price": price})
            record_decision(s, kind="advisor", action="hold", symbol="UPTR", position_id=ids["win"],
                            decided_at=at(DAY, "10:30"), reason="momentum intact",
                            details={"source": "advisor", "fallback_cause": None, "cost_usd": 0.0012})
            record_decision(s, kind="advisor", action="hold", symbol="UPTR", position_id=ids["win"],
                            decided_at=at(DAY, "10:45"), reason="advisor unavailable (no_key)",
                            details={"source": "fallback", "fallback_cause": "no_key", "cost_usd": 0.0})
            record_decision(s, kind="advisor", action="enter", symbol="MOON", cycle_id=cycle_id,
                            decided_at=at(DAY, "13:59"), reason="clean breakout",
                            details={"review": "entry", "source": "advisor", "fallback_why": None, "cost_usd": 0.0008})
        yield ids


def day_facts(day: str) -> dict:
    """What the database holds for ``day``, computed here independently of the report's code."""
    start = at(day, "00:00")
    end = start + timedelta(days=1)
    with session_scope() as s:
        every = s.query(Position).all()
        held = [p for p in every if p.opened_at < end and (p.closed_at is None or p.closed_at >= start)]
        closed = [p for p in every if p.status == "closed" and start <= p.closed_at < end]
        reasons: dict[str, int] = {}
        for p in closed:
            reasons[p.exit_reason] = reasons.get(p.exit_reason, 0) + 1
        return {"trades": len(held), "ids": sorted(p.id for p in held), "closed": len(closed),
                "realized": round(sum(p.realized_pnl for p in closed), 2),
                "wins": sum(p.realized_pnl > 0 for p in closed), "reasons": reasons}


def test_report_of_a_seeded_day_matches_the_database(seeded, tmp_path):
    out = tmp_path / "report"
    result = cli("report", "--date", DAY, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    facts = day_facts(DAY)
    summary = data["summary"]
    assert facts["trades"] == 4 and facts["closed"] == 3  # the seed is what the test thinks it is
    assert sorted(t["id"] for t in data["trades"]) == facts["ids"]
    assert seeded["yesterday"] not in facts["ids"]
    assert (summary["trades"], summary["closed"], summary["open"]) == (facts["trades"], facts["closed"], 1)
    assert summary["realized_pnl"] == facts["realized"] == 5.0  # +40 -50 +15
    assert summary["wins"] == facts["wins"] == 2
    assert summary["win_rate"] == round(facts["wins"] / facts["closed"], 4)
    assert data["exits_by_reason"] == facts["reasons"]
    assert summary["unrealized_pnl"] == 20.0  # MOON 2 x (310 - 300), at the monitor's last price
    held = next(t for t in data["trades"] if t["id"] == seeded["open"])
    assert (held["realized"], held["mark"], held["exit_time"]) == (False, 310.0, None)
    win = next(t for t in data["trades"] if t["id"] == seeded["win"])
    assert (win["entry_time"], win["exit_time"], win["reason"], win["pnl"]) == (
        "2026-12-04T10:00:00-05:00", "2026-12-04T11:00:00-05:00", "take_profit", 40.0)  # market time zone
    assert data["pnl_curve"][-1]["realized_pnl"] == 5.0
    assert data["advisor"]["consults"] == 3 and data["advisor"]["calls"] == 2
    assert data["advisor"]["cost_usd"] == pytest.approx(0.002)
    assert data["advisor"]["fallbacks"] == {"no_key": 1}
    assert [(f["slot_at"], f["universe"], f["selected"], f["entered"]) for f in data["funnel"]] == [
        ("2026-12-04T10:00:00-05:00", 12, 2, 1)]
    # Prices: the synthetic market's bars where it has them; the recorded prices for a symbol it does not know.
    assert data["prices"]["UPTR"]["source"] == "synthetic" and data["prices"]["UPTR"]["points"] > 300
    assert data["prices"][HOSTILE_SYMBOL]["source"] == "recorded"
    assert data["prices"][HOSTILE_SYMBOL]["points"] == 5  # entry, three checks, exit

    index = Path(data["index"])
    assert index == (out / "index.html").resolve()
    shown = {p.name for p in images_of(index)}
    assert {"chart-pnl.png", "chart-exits.png", "chart-funnel.png", "chart-advisor.png"} <= shown
    assert len([n for n in shown if n.startswith("chart-price-")]) == 4  # one per traded symbol
    page = index.read_text(encoding="utf-8")
    assert "+5.00" in page and "66.7%" in page
    assert json.loads((out / "report.json").read_text())["summary"] == summary
    for text in (page, result.output, (out / "report.json").read_text()):
        assert SECRET not in text


def test_report_escapes_hostile_symbol_and_reason(seeded, tmp_path):
    out = tmp_path / "report"
    result = cli("report", "--date", DAY, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip()) == out / "index.html"  # the path of the page, nothing else
    page = (out / "index.html").read_text(encoding="utf-8")
    assert HOSTILE_SYMBOL not in page and HOSTILE_REASON not in page and "<script" not in page.lower()
    assert html.escape(HOSTILE_SYMBOL) in page and html.escape(HOSTILE_REASON) in page
    names = [p.name for p in images_of(out / "index.html")]
    assert all(re.fullmatch(r"chart-[A-Za-z0-9_-]+\.png", n) for n in names), names


def test_default_date_is_the_last_market_day_of_the_runtime_clock(seeded, tmp_path, monkeypatch):
    """Saturday noon in New York: the report is Friday's, written to var/reports/<date>/ by default."""
    monkeypatch.setenv("CATALYST_CLOCK", "sim:2026-12-05T12:00:00-05:00@1")
    monkeypatch.chdir(tmp_path)
    from catalyst.runtime import reset_runtime

    reset_runtime()
    result = cli("report", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["date"] == DAY and data["summary"]["trades"] == 4
    assert Path(data["index"]) == (tmp_path / "var" / "reports" / DAY / "index.html").resolve()
    images_of(Path(data["index"]))


def test_a_day_without_trades_still_writes_a_report_that_says_so(seeded, tmp_path):
    out = tmp_path / "quiet"
    result = cli("report", "--date", "2026-12-02", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert day_facts("2026-12-02")["trades"] == 0
    assert data["trades"] == [] and data["summary"]["trades"] == 0 and data["summary"]["win_rate"] is None
    assert data["summary"]["realized_pnl"] == 0 and data["exits_by_reason"] == {}
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "No trades on this day." in page
    images_of(out / "index.html")  # whatever it shows is there and valid


@pytest.mark.parametrize("bad, says", [("2026-13-45", "is not a date"), ("yesterday", "is not a date"),
                                       ("2026-12-07", "is after the market's today")])
def test_a_bad_date_is_one_clear_line(seeded, tmp_path, bad, says):
    result = cli("report", "--date", bad, "--out", str(tmp_path / "never"))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --date") and says in lines[0], result.output
    assert not (tmp_path / "never").exists()


# -- the report of a real demo run ------------------------------------------------------------------------

DEMO_SPEED = os.environ.get("CATALYST_TEST_DEMO_SPEED", "400")  # about 70 s of session instead of 150


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`catalyst demo` as an operator runs it (its own directory, embedded SQLite, real worker and beat)."""
    home = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k not in CATALYST_VARS}
    done = subprocess.run([sys.executable, "-m", "catalyst.cli", "demo", "--speed", DEMO_SPEED], cwd=home, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    day = re.search(r"Catalyst demo: \w+ (\d{4}-\d{2}-\d{2})", done.stdout).group(1)
    return home, day, done.stdout


def demo_facts(home: Path) -> dict:
    """The demo's trades straight from its SQLite file (one session: every position belongs to it)."""
    with sqlite3.connect(home / "var" / "demo" / "catalyst.sqlite") as db:
        trades = db.execute("SELECT count(*) FROM positions").fetchone()[0]
        closed = db.execute("SELECT realized_pnl, exit_reason FROM positions WHERE status = 'closed'").fetchall()
    reasons: dict[str, int] = {}
    for _, reason in closed:
        reasons[reason] = reasons.get(reason, 0) + 1
    wins = sum(pnl > 0 for pnl, _ in closed)
    return {"trades": trades, "closed": len(closed), "realized": round(sum(pnl for pnl, _ in closed), 2),
            "wins": wins, "win_rate": round(wins / len(closed), 4) if closed else None, "reasons": reasons}


def test_demo_ends_by_pointing_to_its_report(demo_run):
    home, day, stdout = demo_run
    last = stdout.strip().splitlines()[-1]
    assert last == f"report: var/reports/{day}/index.html", stdout[-2000:]
    index = home / "var" / "reports" / day / "index.html"
    shown = {p.name for p in images_of(index)}
    facts = demo_facts(home)
    assert facts["trades"] > 0, "the demo traded nothing: nothing to check the report against"
    assert "chart-pnl.png" in shown and "chart-funnel.png" in shown
    data = json.loads((index.parent / "report.json").read_text())
    assert data["date"] == day
    assert all(p["source"] == "synthetic" for p in data["prices"].values())
    assert len([n for n in shown if n.startswith("chart-price-")]) == len(data["prices"])


def test_report_of_the_demo_database_equals_its_trades(demo_run, tmp_path):
    home, day, _ = demo_run
    env = {k: v for k, v in os.environ.items() if k not in CATALYST_VARS}
    env["CATALYST_VAR_DIR"] = str(home / "var" / "demo")
    done = subprocess.run([sys.executable, "-m", "catalyst.cli", "report", "--date", day, "--out",
                           str(tmp_path / "again"), "--json"], cwd=home, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    facts = demo_facts(home)
    summary = data["summary"]
    assert (summary["trades"], summary["closed"]) == (facts["trades"], facts["closed"])
    assert summary["realized_pnl"] == facts["realized"]
    assert (summary["wins"], summary["win_rate"]) == (facts["wins"], facts["win_rate"])
    assert data["exits_by_reason"] == facts["reasons"]
    assert len(data["trades"]) == facts["trades"]
    assert data["funnel"], "the demo scanned: the funnel has its cycles"
    images_of(tmp_path / "again" / "index.html")


# -- defects found by review (issue 10) -------------------------------------------------------------------

class FailingBars:
    """A market-data source in an outage: every bars() call raises; the calls are counted."""

    name = "outage"

    def __init__(self):
        self.calls = 0

    def bars(self, symbol, end, count):
        self.calls += 1
        raise ConnectionError("market data is down")


def runtime_with(market_data):
    """The process runtime with its market data replaced (the CLI picks it up too)."""
    from dataclasses import replace

    from catalyst.runtime import get_runtime, use_runtime

    rt = replace(get_runtime(), market_data=market_data)
    use_runtime(rt)
    return rt


@pytest.fixture
def quiet_db(pg_url, tmp_path):
    """An empty database; clock 2026-12-04 15:30 New York (tests that seed their own few rows)."""
    env = {"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"), "CATALYST_MARKET_DATA": "synthetic",
           "CATALYST_CLOCK": f"sim:{DAY}T15:30:00-05:00@1"}
    with environment(env):
        yield env


def test_a_past_days_mark_is_that_days_last_recorded_price_not_todays(quiet_db):
    """Held since 12-03 at 100; the monitor saw 101 at 15:55 that day; it is 150 now; bars are down."""
    from datetime import date

    from catalyst.session_report import gather

    pid = seed_position("HELD", 100.0, at("2026-12-03", "10:00"), qty=10)
    with session_scope() as s:
        s.get(Position, pid).last_price = 150.0
        record_decision(s, kind="monitor", action="hold", symbol="HELD", position_id=pid,
                        decided_at=at("2026-12-03", "15:55"), details={"price": 101.0})
    report = gather(runtime_with(FailingBars()), date(2026, 12, 3))
    (trade,) = report.trades
    assert (trade.realized, trade.mark, trade.pnl) == (False, 101.0, 10.0)
    assert report.summary()["unrealized_pnl"] == 10.0


def test_a_past_day_without_any_price_leaves_the_mark_unknown(quiet_db, tmp_path):
    """Held over 12-03 with no check that day, no bars: no price for the day, so no unrealized figure."""
    pid = seed_position("HELD", 100.0, at("2026-12-02", "10:00"), qty=10)
    with session_scope() as s:
        s.get(Position, pid).last_price = 150.0
    runtime_with(FailingBars())
    result = cli("report", "--date", "2026-12-03", "--out", str(tmp_path / "r"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (trade,) = data["trades"]
    assert (trade["mark"], trade["pnl"]) == (None, None)
    assert data["summary"]["unrealized_pnl"] == 0 and data["summary"]["unrealized_unknown"] == 1
    assert "unknown" in (tmp_path / "r" / "index.html").read_text(encoding="utf-8")


def test_before_the_open_the_default_day_is_the_last_session_that_opened(seeded, monkeypatch, tmp_path):
    """Monday 08:00 New York: Monday's session has not opened, so the report is Friday's."""
    from catalyst.runtime import reset_runtime

    monkeypatch.setenv("CATALYST_CLOCK", "sim:2026-12-07T08:00:00-05:00@1")
    reset_runtime()
    result = cli("report", "--json", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["date"] == DAY and data["summary"]["trades"] == 4
    # Monday asked for explicitly: its figures stop now, not at a future moment.
    result = cli("report", "--date", "2026-12-07", "--json", "--out", str(tmp_path / "monday"))
    assert result.exit_code == 0, result.output
    monday = json.loads(result.output)
    assert datetime.fromisoformat(monday["as_of"]) <= datetime.fromisoformat(monday["generated_at"])


def test_out_refuses_a_directory_that_is_not_a_report(seeded, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "chart-holiday.png").write_bytes(b"my own picture")
    result = cli("report", "--date", DAY, "--out", str(out))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --out") and "not a Catalyst report" in lines[0], lines
    assert sorted(p.name for p in out.iterdir()) == ["chart-holiday.png", "notes.txt"]
    assert (out / "chart-holiday.png").read_bytes() == b"my own picture"


def test_rewriting_a_report_deletes_only_the_charts_it_wrote(seeded, tmp_path):
    out = tmp_path / "r"
    assert cli("report", "--date", DAY, "--out", str(out)).exit_code == 0
    first = json.loads((out / "report.json").read_text())
    assert first["index"] == "index.html"  # relative: the directory can be moved
    (out / "chart-mine.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    result = cli("report", "--date", "2026-12-02", "--out", str(out))  # a quiet day: fewer charts
    assert result.exit_code == 0, result.output
    second = json.loads((out / "report.json").read_text())
    left = {p.name for p in out.iterdir()}
    assert not set(first["charts"]) - set(second["charts"]) & left  # the old report's charts are gone
    assert {"chart-mine.png", "notes.txt"} <= left and (out / "chart-mine.png").read_bytes() == b"mine"
    assert {p.name for p in images_of(out / "index.html")} == set(second["charts"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "var") == ["r"]  # no temporary left behind


def test_a_report_that_fails_part_way_leaves_the_previous_page_whole(seeded, tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert cli("report", "--date", DAY, "--out", str(out)).exit_code == 0
    before = (out / "index.html").read_text(encoding="utf-8")
    import catalyst.report_charts as charts

    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib could not draw")

    monkeypatch.setattr(charts, "funnel_chart", broken)
    result = cli("report", "--date", DAY, "--out", str(out))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "matplotlib could not draw" in lines[0], lines
    assert (out / "index.html").read_text(encoding="utf-8") == before
    images_of(out / "index.html")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "var") == ["r"]  # no temporary left behind


def test_a_database_error_part_way_is_one_line(seeded, tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import catalyst.session_report as session_report

    def lost(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(session_report, "gather", lost)
    result = cli("report", "--date", DAY, "--out", str(tmp_path / "r"))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "server closed the connection" in lines[0], lines
    assert not (tmp_path / "r").exists()


def test_the_default_directory_is_under_catalyst_var_dir_not_the_working_directory(seeded, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("report", "--date", DAY)
    assert result.exit_code == 0, result.output
    expected = tmp_path / "var" / "reports" / DAY / "index.html"  # CATALYST_VAR_DIR is tmp_path/var
    assert Path(result.output.strip()).resolve() == expected.resolve()
    images_of(expected)
    assert list(elsewhere.iterdir()) == []


def test_a_market_data_outage_is_asked_once(seeded):
    from datetime import date

    from catalyst.session_report import gather

    source = FailingBars()
    report = gather(runtime_with(source), date(2026, 12, 4))
    assert len(report.prices) == 4 and source.calls == 1
    assert all(p.source == "recorded" and "outage" in p.note for p in report.prices.values())


def test_a_closed_position_without_realized_pnl_is_computed_or_unknown(seeded, tmp_path):
    """'win' lost its realized_pnl but has its exit price (+40); another close has neither: unknown."""
    with session_scope() as s:
        s.get(Position, seeded["win"]).realized_pnl = None
        s.get(Position, seeded["win"]).realized_pnl_pct = None
    lost = seed_position("LOST", 20.0, at(DAY, "12:00"), qty=5)
    with session_scope() as s:
        p = s.get(Position, lost)
        p.status, p.closed_at, p.exit_reason = "closed", at(DAY, "12:30"), "manual"
    out = tmp_path / "r"
    result = cli("report", "--date", DAY, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    trades = {t["id"]: t for t in data["trades"]}
    assert (trades[seeded["win"]]["pnl"], trades[seeded["win"]]["pnl_pct"]) == (40.0, 4.0)
    assert trades[lost]["pnl"] is None
    summary = data["summary"]
    assert (summary["closed"], summary["wins"], summary["losses"], summary["draws"]) == (4, 2, 1, 0)
    assert summary["win_rate"] == round(2 / 3, 4) and summary["realized_pnl"] == 5.0
    assert summary["realized_unknown"] == 1
    assert "unknown" in (out / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("market", ["US", "HK"])
@pytest.mark.parametrize("bad, says", [("0001-01-01", "before the first"), ("1999-12-31", "before the first"),
                                       ("20261204", "is not a date"), ("2026-W49-5", "is not a date")])
def test_a_date_out_of_the_calendar_or_not_yyyy_mm_dd_is_one_line(seeded, tmp_path, monkeypatch, market, bad, says):
    from catalyst.runtime import reset_runtime

    monkeypatch.setenv("CATALYST_MARKET", market)
    reset_runtime()
    result = cli("report", "--date", bad, "--out", str(tmp_path / "never"))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --date") and says in lines[0], result.output
    assert not (tmp_path / "never").exists()
