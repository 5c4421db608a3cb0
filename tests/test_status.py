"""`catalyst status` (issue 10): every service with stale/offline called out, open positions, trading state with
its reason, today's P&L, and the next scan in the market's time zone — never a naive time, never one that passed."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from catalyst.cli import main
from catalyst.db.models import ScheduleEntry, ServiceHealth
from tests.support import environment, seed_position

NY = ZoneInfo("America/New_York")


def cli(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def status_json() -> dict:
    out = cli("status", "--json")
    return json.loads(out[out.index("{"):])


@pytest.fixture
def at(pg_url, tmp_path):
    """``with at("2026-12-05T17:20:00-05:00"):`` the CLI on a fresh database with the clock fixed there."""
    def _at(start: str, **extra: str):
        return environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                            "CATALYST_CLOCK": f"sim:{start}@1", "CATALYST_HEARTBEAT_INTERVAL": "10", **extra})
    return _at


def aware_times(value, path="") -> list[tuple[str, datetime]]:
    """Every ISO timestamp anywhere in ``value`` (a status document), with where it was."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += aware_times(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += aware_times(v, f"{path}[{i}]")
    elif isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d", value):
        found.append((path, datetime.fromisoformat(value)))
    return found


@pytest.mark.parametrize("start,expected_at,entry,text", [
    # Saturday evening: the next scan is Monday's pre-market scan, 30 min before the 09:30 open (EST).
    ("2026-12-05T17:20:00-05:00", "2026-12-07T09:00:00-05:00", "premarket-scan", "2026-12-07 09:00 EST (in 1 d 15 h"),
    # Monday in session at 10:20: the next slot of the half-hourly scan grid from the open.
    ("2026-12-07T10:20:00-05:00", "2026-12-07T10:30:00-05:00", "scan-market", "2026-12-07 10:30 EST (in "),
    # Thursday after the close before Independence Day observed (Friday 2026-07-03, no session): Monday, in EDT.
    ("2026-07-02T16:30:00-04:00", "2026-07-06T09:00:00-04:00", "premarket-scan", "2026-07-06 09:00 EDT (in 3 d 16 h"),
])
def test_the_next_scan_is_in_the_future_and_in_the_markets_time_zone(at, start, expected_at, entry, text):
    with at(start):
        data = status_json()
        scan = data["next_scan"]
        when = datetime.fromisoformat(scan["at"])
        assert when.tzinfo is not None and scan["timezone"] == "America/New_York"
        assert when == datetime.fromisoformat(expected_at) and when.utcoffset() == when.astimezone(NY).utcoffset()
        assert when > datetime.fromisoformat(data["clock"]) and scan["in_seconds"] > 0
        assert scan["entry"] == entry
        shown = cli("status")
        assert f"next scan {text}" in shown, shown
        for path, value in aware_times(data):
            assert value.tzinfo is not None, f"{path} is a naive time"


def test_a_schedule_beat_no_longer_sends_is_shown_overdue_with_its_time_zone(at):
    """The schedule table used to print a naive time that had already passed, as if it were upcoming."""
    from catalyst.db.engine import session_scope

    with at("2026-12-07T11:05:00-05:00"):
        past = datetime(2026, 12, 7, 10, 30, tzinfo=NY)
        with session_scope() as s:
            s.add(ScheduleEntry(name="scan-market", task="catalyst.scan_market", queue="scan", args=[],
                                interval_seconds=1800, anchor="session", offset_seconds=0, next_run_at=past,
                                total_sent=3, updated_at=datetime.now(UTC)))
        shown = cli("status")
        assert "2026-12-07 10:30 EST (overdue: is beat running?)" in shown, shown
        assert "next scan 2026-12-07 11:30 EST" in shown  # what beat will send, from the calendar
        (entry,) = status_json()["schedule"]
        assert entry["overdue"] is True and entry["next_run_at"] == "2026-12-07T10:30:00-05:00"


def test_status_shows_every_service_with_stale_and_offline_called_out(at):
    from catalyst.db.engine import session_scope

    with at("2026-12-07T10:20:00-05:00"):
        wall = datetime.now(UTC)
        with session_scope() as s:
            for name, kind, status, age in [("worker@a", "worker", "online", 5), ("worker@b", "worker", "online", 31),
                                            ("worker@c", "worker", "offline", 3600), ("beat@a:1", "beat", "active", 2),
                                            ("beat@a:0", "beat", "stopped", 7200)]:
                at_ = wall - timedelta(seconds=age)
                s.add(ServiceHealth(service_name=name, kind=kind, status=status, started_at=at_, last_heartbeat=at_))
        services = {s["name"]: s for s in status_json()["services"]}
        assert {n: (s["status"], s["stale"]) for n, s in services.items()} == {
            "worker@a": ("online", False), "worker@b": ("stale", True), "worker@c": ("offline", False),
            "beat@a:1": ("active", False), "beat@a:0": ("offline", False)}
        assert services["worker@b"]["reported_status"] == "online" and services["worker@b"]["age_seconds"] >= 31
        shown = cli("status")
        lines = {line.split()[0]: line for line in shown.splitlines() if "@" in line.split(" ")[0]}
        assert "STALE (last said online)" in lines["worker@b"]
        assert "offline" in lines["worker@c"] and "STALE" not in lines["worker@c"]
        assert "offline" in lines["beat@a:0"] and "active" in lines["beat@a:1"]
        assert "no heartbeat for 30 s" in shown


def test_status_shows_open_positions_the_trading_state_with_its_reason_and_todays_pnl(at):
    with at("2026-12-07T10:20:00-05:00"):
        opened = datetime(2026, 12, 7, 9, 45, tzinfo=NY)
        pid = seed_position("ACME", 100.0, opened)
        shown = cli("status")
        assert "trading   ACTIVE: entries allowed" in shown
        assert re.search(rf"^\s*{pid}\s+ACME\s+10\.00\s+open\s+100\.00.*2026-12-07 09:45 EST$", shown, re.M), shown
        assert "today     P&L +0.00" in shown
        cli("halt", "--reason", "drill", "--keep-positions")
        data = status_json()
        assert [p["symbol"] for p in data["positions"]] == ["ACME"] and data["open_positions"] == 1
        assert (data["trading"]["state"], data["trading"]["reason"]) == ("HALTED", "drill")
        assert "trading   HALTED: drill (by" in cli("status")
