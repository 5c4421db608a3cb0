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
