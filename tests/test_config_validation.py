"""A bad configuration reaches the operator as one clear line and changes nothing.

Through real processes: `catalyst status` and `catalyst replay` (CLI subprocesses), and a Celery
worker and beat started against a migrated database. Each refuses a bad signal threshold, an
unknown key in a seed-003 section and a minimum above the maximum, naming the key, with no rows
written. Through `catalyst replay` (the monitor's own tasks on recorded bars): a refused
threshold never gets to decide an exit, and a ``null`` tier really is off.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from catalyst.core.domain import BadInput
from catalyst.db.models import AgentLog
from catalyst.replay import run_replay
from tests.support import celery_that_must_exit, environment, quiet_day_files, write_replay_csv
from tests.test_bad_input import TASK_TABLES, cli, counts, embedded, migrated, output  # noqa: F401 - fixtures

EST = timezone(timedelta(hours=-5))
SESSION_OPEN = datetime(2025, 3, 4, 9, 30, tzinfo=EST)
CLOCK = f"sim:{(SESSION_OPEN + timedelta(minutes=2, seconds=30)).isoformat()}@1"
TABLES = {**TASK_TABLES, "agent_logs": AgentLog}
ROOT = Path(__file__).resolve().parents[1]

# (name, environment for the process, a fragment naming the key, a fragment saying what is wrong)
BAD_CONFIGS = [
    ("rsi-below-zero", {"CATALYST_SIGNALS": '{"rsi_strong": -5}'}, "rsi_strong", "-5"),
    ("take-profit-negative", {"CATALYST_SIGNALS": '{"take_profit_strong": -1}'}, "take_profit_strong", "-1"),
    ("tiers-out-of-order", {"CATALYST_SIGNALS": '{"stop_loss_moderate": -8}'}, "stop_loss_moderate",
     "stop_loss_strong"),
    ("unknown-section-key", {"CATALYST_CONFIG": "risk_limits:\n  max_daily_loss: 100\n"}, "max_daily_loss",
     "risk_limits"),
    ("unsupported-seed-key", {"CATALYST_CONFIG": "emergency_actions:\n  close_all_positions: false\n"},
     "emergency_actions.close_all_positions", "not supported"),
    ("min-above-max", {"CATALYST_MIN_POSITION_VALUE_USD": "9000"}, "min_position_value_usd",
     "max_position_value_usd"),
    ("sector-symbol-twice", {"CATALYST_SECTORS": '{"aapl": "Technology", "AAPL": "Energy"}'}, "sectors",
     "listed twice"),
]
IDS = [name for name, *_ in BAD_CONFIGS]


def materialise(env: dict[str, str], where: Path) -> dict[str, str]:
    """CATALYST_CONFIG given as YAML text becomes a file under ``where``."""
    env = dict(env)
    if "CATALYST_CONFIG" in env:
        path = where / "catalyst.yaml"
        path.write_text(env["CATALYST_CONFIG"])
        env["CATALYST_CONFIG"] = str(path)
    return env


def assert_one_line_refusal(result_text: str, returncode: int, *fragments: str) -> None:
    assert returncode != 0, f"expected a refusal, got success:\n{result_text}"
    for fragment in fragments:
        assert fragment in result_text, f"{fragment!r} not in:\n{result_text}"
    assert "Traceback" not in result_text, result_text


# -- the CLI -------------------------------------------------------------------------------------

def test_status_runs_on_the_good_configuration(embedded):
    """Control: the environment the refusals below run in is itself healthy."""
    result = cli("status", "--json")
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("name, env, key, what", BAD_CONFIGS, ids=IDS)
def test_status_refuses_a_bad_configuration_in_one_line_naming_the_key(embedded, name, env, key, what):
    result = cli("status", env=materialise(env, embedded))
    text = output(result)
    assert_one_line_refusal(text, result.returncode, "bad configuration", key, what)
    assert len(text.strip().splitlines()) == 1, text
    assert set(counts(TABLES).values()) == {0}


@pytest.mark.parametrize("name, env, key, what", BAD_CONFIGS[:3], ids=IDS[:3])
def test_replay_refuses_a_bad_signal_threshold_naming_it(tmp_path, name, env, key, what):
    data = write_replay_csv(tmp_path / "TEST.csv", "TEST", SESSION_OPEN, [100.0] * 30)
    positions = tmp_path / "p.csv"
    positions.write_text("symbol,qty,opened_at,entry_price,stop_loss_price,take_profit_price\n"
                         "TEST,1,2025-03-04T09:35:00-05:00,100,,\n")
    result = cli("replay", "--data", str(data), "--positions", str(positions), "--json", env=env)
    assert_one_line_refusal(output(result), result.returncode, key, what)
    assert result.stdout == ""  # no report: nothing was decided


# -- replay: refused thresholds never decide, null tiers are off -------------------------------------

@pytest.fixture
def quiet_day(tmp_path):
    """A whole flat session (nothing but the clock says anything) and one position bought at 09:45."""
    return quiet_day_files(tmp_path)


def test_a_quiet_day_is_closed_by_the_near_close_exit(quiet_day):
    """Control for the two tests below: with the defaults only the clock exits this position."""
    (report,) = run_replay(*quiet_day)
    assert (report["status"], report["exit_reason"]) == ("closed", "near_close")
    closed = datetime.fromisoformat(report["closed_at"])
    assert closed >= datetime(2025, 3, 4, 15, 45, tzinfo=EST)


def test_a_null_near_close_tier_holds_through_the_close(quiet_day):
    (report,) = run_replay(*quiet_day, settings_env={"CATALYST_SIGNALS": '{"near_close_minutes": null}'})
    assert report["status"] == "open", report
    assert report["exit_reason"] is None


def test_a_refused_take_profit_tier_never_sells_on_the_first_check(quiet_day):
    """`take_profit_strong: -1` would sell at the first check (P&L 0 % >= -1 %); it is refused instead."""
    before = dict(os.environ)
    with pytest.raises(BadInput, match="take_profit_strong"):
        run_replay(*quiet_day, settings_env={"CATALYST_SIGNALS": '{"take_profit_strong": -1}'})
    assert dict(os.environ) == before  # the replay put everything back


# -- worker and beat start-up ----------------------------------------------------------------------

def start(kind: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``celery -A catalyst <kind>`` until it exits (a process still running after 60 s fails)."""
    return celery_that_must_exit(kind, env, "on a bad configuration")


@pytest.mark.parametrize("kind", ["worker", "beat"])
@pytest.mark.parametrize("name, env, key, what", BAD_CONFIGS, ids=IDS)
def test_a_bad_configuration_stops_worker_and_beat_naming_the_key_and_writes_nothing(
        embedded, kind, name, env, key, what):
    code, out = start(kind, {"CATALYST_VAR_DIR": str(embedded / "var"), **materialise(env, embedded)})
    assert code != 0, out
    assert key in out and what in out, out
    assert set(counts(TABLES).values()) == {0}


@pytest.mark.parametrize("kind", ["worker", "beat"])
def test_a_bad_configuration_stops_worker_and_beat_with_one_line_and_no_traceback(embedded, kind):
    code, out = start(kind, {"CATALYST_VAR_DIR": str(embedded / "var"), "CATALYST_SIGNALS": '{"rsi_strong": -5}'})
    assert code != 0
    assert "Traceback" not in out, out
    naming = [line for line in out.splitlines() if "rsi_strong" in line and not line.startswith("{")]
    assert len(naming) == 1 and "bad configuration: " in naming[0], out


def test_a_good_sectioned_file_passes_status(embedded):
    """Control: a good sectioned file with null tiers is accepted by the same start-up path."""
    path = embedded / "catalyst.yaml"
    path.write_text("risk_limits:\n  max_daily_loss_usd: 1500\n  max_position_size_usd: 4000\n"
                    "signals:\n  volume_collapse_strong: null\n  volume_collapse_moderate: null\n")
    result = cli("status", "--json", env={"CATALYST_CONFIG": str(path)})
    assert result.returncode == 0, output(result)
    assert json.loads(result.stdout)["open_positions"] == 0


@pytest.mark.parametrize("written,expected", [("true", True), ("false", False)])
def test_emergency_actions_notify_via_email_switches_alert_mail(tmp_path, written, expected):
    """``true``: alerts are e-mailed when SMTP_HOST and ALERT_EMAIL_TO are set; ``false``: never e-mailed."""
    from catalyst.config_file import flatten
    from catalyst.notify_channels import configured
    from catalyst.settings import Settings, _flat_names, load_settings

    path = tmp_path / "catalyst.yaml"
    path.write_text(f"emergency_actions:\n  notify_via_email: {written}\n")
    values, origins = flatten({"emergency_actions": {"notify_via_email": expected}}, _flat_names(Settings), str(path))
    assert values == {"notify_via_email": expected}
    assert origins == {"notify_via_email": "emergency_actions.notify_via_email"}
    with environment({"CATALYST_CONFIG": str(path), "SMTP_HOST": "127.0.0.1", "ALERT_EMAIL_TO": "ops@example.test"}):
        settings = load_settings()
    assert settings.notify_via_email is expected
    assert ("email" in configured(settings)) is expected


def test_emergency_actions_notify_via_email_must_be_a_flag(tmp_path):
    from catalyst.config_file import flatten

    with pytest.raises(BadInput, match="emergency_actions.notify_via_email must be true or false, got 'yes please'"):
        flatten({"emergency_actions": {"notify_via_email": "yes please"}}, {}, str(tmp_path / "c.yaml"))
