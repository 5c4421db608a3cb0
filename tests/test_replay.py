"""`catalyst replay` on the real recorded days: what the monitor would have done, and why."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from catalyst.core.domain import BadInput
from catalyst.replay import run_replay
from catalyst.core.sessions import SessionCalendar
from tests.support import SHARED_DATA

INTRADAY = sorted(SHARED_DATA.glob("*-1min.csv")) if SHARED_DATA.exists() else []
needs_data = pytest.mark.skipif(not INTRADAY, reason="../shared/data is absent")


def bar_close(path, minute: str) -> tuple[str, float]:
    """(timestamp, close) of the first bar starting at or after HH:MM in a recorded file (thin days have gaps)."""
    for line in path.read_text().splitlines()[1:]:
        ts, _symbol, _o, _h, _l, close, _v = line.split(",")
        if ts[11:16] >= minute:
            return ts, float(close)
    raise AssertionError(f"no {minute} bar in {path.name}")


def write_positions(path, rows) -> str:
    path.write_text("symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price\n" +
                    "".join(f"{s},{q},{t},{p},{sl},{tp}\n" for s, q, t, p, sl, tp in rows))
    return str(path)


@pytest.fixture(scope="module")
def recorded_day_reports(tmp_path_factory):
    """One position per recorded day, bought at the 09:44 bar's close and left to the monitor."""
    if not INTRADAY:
        pytest.skip("../shared/data is absent")
    tmp = tmp_path_factory.mktemp("replay")
    rows = []
    for path in INTRADAY:
        symbol = path.name.split("-")[0]
        ts, close = bar_close(path, "09:44")
        opened = (datetime.fromisoformat(ts) + timedelta(minutes=1)).isoformat()
        rows.append((symbol, 10, opened, close, "", ""))
    reports = run_replay([str(p) for p in INTRADAY], write_positions(tmp / "positions.csv", rows))
    return rows, reports


@needs_data
def test_every_recorded_day_ends_flat_by_the_actual_close(recorded_day_reports):
    rows, reports = recorded_day_reports
    cal = SessionCalendar.for_market("US")
    assert len(reports) == len(rows)
    for report in reports:
        assert report["status"] == "closed", report
        closed = datetime.fromisoformat(report["closed_at"])
        session = cal.session_at(closed)
        assert session is not None and closed < session.close  # early closes (13:00) included
        if report["exit_reason"] == "near_close":
            assert session.close - closed <= timedelta(minutes=15)


@needs_data
def test_every_replayed_exit_is_explained_by_a_signal_with_its_numbers(recorded_day_reports):
    _, reports = recorded_day_reports
    for report in reports:
        reason = report["exit_reason"]
        explaining = [s for s in report["signals"] if s["name"] == reason]
        assert explaining, f"{report['symbol']}: exit {reason} without a matching signal: {report['signals']}"
        sig = explaining[0]
        assert sig["strength"] in ("STRONG", "MODERATE")
        assert isinstance(sig["value"], float) and isinstance(sig["threshold"], float)
        if reason in ("stop_loss", "volume_collapse", "near_close"):
            assert sig["value"] <= sig["threshold"]
        elif reason in ("take_profit", "rsi_overbought", "trailing_stop"):
            assert sig["value"] >= sig["threshold"]
        elif reason == "macd_bearish":
            assert sig["value"] < sig["threshold"]


@needs_data
def test_a_pre_split_entry_on_the_aapl_split_day_is_stopped_out_at_once(tmp_path):
    """A monitor that kept the pre-split price sees a -86% drop: the stop fires on the first check."""
    path = SHARED_DATA / "AAPL-2014-06-09-1min.csv"
    positions = write_positions(tmp_path / "p.csv", [("AAPL", 7, "2014-06-09T09:35:00-04:00", 645.57, "", "")])
    (report,) = run_replay(str(path), positions)
    assert report["exit_reason"] == "stop_loss"
    assert report["closed_at"].startswith("2014-06-09T13:35")  # 09:35 New York, the first check
    assert report["realized_pnl_pct"] < -80


@needs_data
def test_replay_cli_prints_json_with_signals(tmp_path):
    path = SHARED_DATA / "SPY-2013-10-10-1min.csv"
    positions = write_positions(tmp_path / "p.csv", [("SPY", 5, "2013-10-10T10:00:00-04:00", 167.5, 160, 168.0)])
    out = subprocess.run([sys.executable, "-m", "catalyst.cli", "replay", "--data", str(path), "--positions",
                          positions, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (report,) = json.loads(out.stdout)
    assert set(report) >= {"symbol", "opened_at", "status", "closed_at", "exit_price", "exit_reason", "signals"}
    assert report["exit_reason"] == "take_profit"  # SPY rallied through 168 that morning
    assert report["exit_price"] >= 168.0
    assert {"name", "strength", "value", "threshold"} <= set(report["signals"][0])


@pytest.mark.parametrize("content, message", [
    ("symbol,qty\nSPY,1\n", "header must be"),
    ("symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price\nNOPE,1,2013-10-10T10:00:00-04:00,1,,\n",
     "not in the replay data"),
    ("symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price\nSPY,1,2013-10-10T10:00:00,1,,\n",
     "needs a UTC offset"),
    ("symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price\nSPY,0,2013-10-10T10:00:00-04:00,1,,\n",
     "qty must be above zero"),
    ("symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price\nSPY,1,2013-10-10T10:00:00-04:00,nan,,\n",
     "entry_price must be above zero"),
])
def test_a_bad_positions_file_is_refused_naming_the_line(tmp_path, content, message):
    data = tmp_path / "SPY.csv"
    data.write_text("timestamp,symbol,open,high,low,close,volume\n2013-10-10T09:30:00-04:00,SPY,1,1,1,1,100\n")
    positions = tmp_path / "p.csv"
    positions.write_text(content)
    with pytest.raises(BadInput, match=message):
        run_replay(str(data), str(positions))
