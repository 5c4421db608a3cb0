"""Settings: environment > CATALYST_CONFIG YAML > defaults, validated up front."""

from __future__ import annotations

import os
from pathlib import Path
from typing import get_origin

import pytest
from pydantic import AliasChoices

from catalyst.core.domain import BadInput
from catalyst.settings import PAPER_ALPACA_URL, Settings, load_settings


def _env_names() -> set[str]:
    """Every spelling Settings could read from the environment (lower-cased: it is case-insensitive)."""
    names = {"catalyst_config"}
    for name, field in Settings.model_fields.items():
        names.add(name.lower())
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).lower() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.lower())
    return names


ENV_NAMES = _env_names()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """Keep the developer's environment (and working directory) out of these tests."""
    for key in list(os.environ):
        if key.lower() in ENV_NAMES:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config(monkeypatch, tmp_path):
    """Write YAML to a file and point CATALYST_CONFIG at it."""

    def write(text: str) -> Path:
        path = tmp_path / "catalyst.yaml"
        path.write_text(text)
        monkeypatch.setenv("CATALYST_CONFIG", str(path))
        return path

    return write


# -- defaults -----------------------------------------------------------------------------


def test_defaults(tmp_path):
    s = load_settings()
    assert s.broker == "paper"
    assert s.market_data == "synthetic"
    assert s.clock == "wall"
    assert s.market == "US"
    assert s.live_trading is False
    assert s.monitor_check_interval == 60.0
    assert s.monitor_dry_run is False
    assert s.advisor_model == "claude-haiku-4-5"
    assert s.ai_daily_budget_usd == 5.0
    assert s.alpaca_base_url == PAPER_ALPACA_URL
    assert s.database_url is None and s.redis_url is None
    assert s.alpaca_secret_key is None and s.anthropic_api_key is None
    assert s.closed_dates == []
    # Embedded databases live under var_dir (relative to the working directory by default).
    assert s.var_dir == Path("var")
    var = (tmp_path / "var").resolve()
    assert s.sqlalchemy_url == f"sqlite:///{var / 'catalyst.sqlite'}"
    assert s.embedded_broker is True
    assert s.broker_url == f"sqlite:///{var / 'broker.sqlite'}"


def test_embedded_databases_follow_var_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CATALYST_VAR_DIR", str(tmp_path / "state"))
    s = load_settings()
    assert s.sqlalchemy_url == f"sqlite:///{(tmp_path / 'state' / 'catalyst.sqlite').resolve()}"
    assert s.broker_url == f"sqlite:///{(tmp_path / 'state' / 'broker.sqlite').resolve()}"


def test_redis_url_replaces_embedded_broker(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    s = load_settings()
    assert s.embedded_broker is False
    assert s.broker_url == "redis://cache:6379/0"


# -- database URL normalisation ---------------------------------------------------------

URLS = [
    ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ("postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ("postgresql://u:p@h:5432/db?sslmode=require", "postgresql+psycopg://u:p@h:5432/db?sslmode=require"),
    ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ("sqlite:////srv/catalyst.sqlite", "sqlite:////srv/catalyst.sqlite"),
]


@pytest.mark.parametrize("url, expected", URLS, ids=[u.split(":")[0] for u, _ in URLS])
def test_sqlalchemy_url_normalises_paas_spellings(monkeypatch, url, expected):
    monkeypatch.setenv("DATABASE_URL", url)
    s = load_settings()
    assert s.database_url == url
    assert s.sqlalchemy_url == expected


# -- YAML and precedence ----------------------------------------------------------------


def test_yaml_overrides_defaults(config):
    config(
        "market: HK\n"
        "broker: alpaca\n"
        "monitor_check_interval: 5\n"
        "monitor_dry_run: true\n"
        "ai_daily_budget_usd: 1.5\n"
        "database_url: postgres://u:p@db/catalyst\n"
        "closed_dates: ['2026-11-23']\n"
    )
    s = load_settings()
    assert s.market == "HK"
    assert s.broker == "alpaca"
    assert s.monitor_check_interval == 5.0
    assert s.monitor_dry_run is True
    assert s.ai_daily_budget_usd == 1.5
    assert s.sqlalchemy_url == "postgresql+psycopg://u:p@db/catalyst"
    assert s.closed_dates == ["2026-11-23"]
    assert s.clock == "wall"  # untouched keys keep their defaults


def test_env_wins_over_yaml(config, monkeypatch):
    config("market: HK\nmonitor_check_interval: 5\nclock: wall\nadvisor_model: from-yaml\n")
    monkeypatch.setenv("CATALYST_MARKET", "US")
    monkeypatch.setenv("MONITOR_CHECK_INTERVAL", "7")
    monkeypatch.setenv("CATALYST_CLOCK", "sim:2026-03-02T09:30:00-05:00@60")
    s = load_settings()
    assert s.market == "US"
    assert s.monitor_check_interval == 7.0
    assert s.clock == "sim:2026-03-02T09:30:00-05:00@60"
    assert s.advisor_model == "from-yaml"  # not in the environment: YAML still applies


def test_env_names_are_case_insensitive(monkeypatch):
    monkeypatch.setenv("catalyst_market", "HK")
    assert load_settings().market == "HK"


def test_yaml_keys_are_case_insensitive(config):
    config("Market: HK\nMONITOR_CHECK_INTERVAL: 9\n")
    s = load_settings()
    assert s.market == "HK"
    assert s.monitor_check_interval == 9.0


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n"], ids=["empty", "comment", "null"])
def test_empty_yaml_means_defaults(config, text):
    config(text)
    assert load_settings().market == "US"


def test_overrides_beat_everything(config, monkeypatch):
    config("market: HK\n")
    monkeypatch.setenv("CATALYST_MARKET", "HK")
    assert load_settings(market="US").market == "US"


def test_closed_dates_json_list_from_env(monkeypatch):
    monkeypatch.setenv("CATALYST_CLOSED_DATES", '["2026-11-24", "2026-11-25"]')
    assert load_settings().closed_dates == ["2026-11-24", "2026-11-25"]


def test_closed_dates_comma_string_from_yaml(config):
    config("closed_dates: '2026-11-24, 2026-11-25'\n")
    assert load_settings().closed_dates == ["2026-11-24", "2026-11-25"]


def test_closed_dates_comma_string_from_env(monkeypatch):
    monkeypatch.setenv("CATALYST_CLOSED_DATES", "2026-11-24, 2026-11-25")
    assert load_settings().closed_dates == ["2026-11-24", "2026-11-25"]


def test_closed_dates_unquoted_yaml_dates(config):
    config("closed_dates:\n  - 2026-11-23\n  - 2026-11-24\n")
    assert load_settings().closed_dates == ["2026-11-23", "2026-11-24"]


# -- refusals -----------------------------------------------------------------------------

BAD_YAML = [
    # (YAML text or None for "CATALYST_CONFIG points at <special path>", fragments expected)
    ("bogus: 1\nmarket: HK\n", ["unknown key 'bogus' at the top level"]),
    ("market: [HK\n", ["is not valid YAML"]),
    ("market: HK\n  broker: paper\n", ["is not valid YAML"]),
    ("- market\n- HK\n", ["must hold a mapping of setting: value"]),
    ("market: XX\n", ["bad configuration", "market", "'US' or 'HK'"]),
    ("monitor_check_interval: abc\n", ["bad configuration", "monitor_check_interval", "valid number"]),
    ("monitor_check_interval: -1\n", ["bad configuration", "monitor_check_interval", "greater than 0"]),
]


@pytest.mark.parametrize("text, fragments", BAD_YAML, ids=[f"yaml-{i}" for i in range(len(BAD_YAML))])
def test_bad_yaml_is_bad_input(config, text, fragments):
    path = config(text)
    with pytest.raises(BadInput) as info:
        load_settings()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    if "bad configuration" not in fragments:
        assert str(path) in message  # names the file


@pytest.mark.parametrize(
    "where, reason",
    [("missing.yaml", "No such file or directory"), (".", "Is a directory")],
    ids=["missing", "directory"],
)
def test_unreadable_config_is_bad_input(monkeypatch, tmp_path, where, reason):
    path = tmp_path / where
    monkeypatch.setenv("CATALYST_CONFIG", str(path))
    with pytest.raises(BadInput, match="cannot be read") as info:
        load_settings()
    assert reason in str(info.value)
    assert str(path) in str(info.value)


BAD_ENV = [
    ({"CATALYST_MARKET": "XX"}, ["CATALYST_MARKET", "'US' or 'HK'"]),
    ({"MONITOR_CHECK_INTERVAL": "-1"}, ["MONITOR_CHECK_INTERVAL", "greater than 0"]),
    ({"MONITOR_CHECK_INTERVAL": "0"}, ["MONITOR_CHECK_INTERVAL", "greater than 0"]),
    ({"MONITOR_CHECK_INTERVAL": "soon"}, ["MONITOR_CHECK_INTERVAL", "valid number"]),
    ({"CATALYST_BROKER": "robinhood"}, ["CATALYST_BROKER", "'paper' or 'alpaca'"]),
    ({"CATALYST_LIVE_TRADING": "maybe"}, ["CATALYST_LIVE_TRADING", "valid boolean"]),
    ({"CATALYST_AI_DAILY_BUDGET_USD": "-5"}, ["CATALYST_AI_DAILY_BUDGET_USD", "greater than or equal to 0"]),
    ({"CATALYST_STOP_LOSS_PCT": "1.5"}, ["CATALYST_STOP_LOSS_PCT", "below 1"]),
    # Two problems are reported together, in one message.
    ({"CATALYST_MARKET": "XX", "MONITOR_CHECK_INTERVAL": "-1"}, ["CATALYST_MARKET", "MONITOR_CHECK_INTERVAL", "; "]),
]


@pytest.mark.parametrize("env, fragments", BAD_ENV, ids=["+".join(f"{k}={v}" for k, v in e.items()) for e, _ in BAD_ENV])
def test_bad_env_value_is_bad_input(monkeypatch, env, fragments):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(BadInput) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("bad configuration: ")
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message  # one readable line, not a pydantic dump
    assert "https://errors.pydantic.dev" not in message


def test_bad_env_value_is_reported_even_when_yaml_is_fine(config, monkeypatch):
    config("market: HK\n")
    monkeypatch.setenv("CATALYST_MARKET", "XX")
    with pytest.raises(BadInput, match="CATALYST_MARKET"):
        load_settings()


# -- secrets ------------------------------------------------------------------------------

SECRETS = {
    "ALPACA_API_KEY": "PK-alpaca-key-id-123",
    "ALPACA_SECRET_KEY": "alpaca-very-secret-456",
    "ANTHROPIC_API_KEY": "sk-ant-secret-789",
}


def test_secrets_never_appear_in_repr(monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert s.alpaca_api_key == SECRETS["ALPACA_API_KEY"]
    assert s.alpaca_secret_key == SECRETS["ALPACA_SECRET_KEY"]
    assert s.anthropic_api_key == SECRETS["ANTHROPIC_API_KEY"]
    for text in (repr(s), str(s), f"{s!r}", f"{s}"):
        for value in SECRETS.values():
            assert value not in text
        assert "secret_key" not in text and "anthropic_api_key" not in text


def test_secrets_from_yaml_never_appear_in_repr(config):
    config("alpaca_secret_key: yaml-alpaca-secret\nanthropic_api_key: yaml-anthropic-secret\n")
    s = load_settings()
    assert s.alpaca_secret_key == "yaml-alpaca-secret"
    assert "yaml-alpaca-secret" not in repr(s)
    assert "yaml-anthropic-secret" not in repr(s)


def test_database_and_redis_passwords_never_appear_in_repr(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://catalyst:db-hunter2@db/catalyst")
    monkeypatch.setenv("REDIS_URL", "redis://:redis-hunter2@cache:6379/0")
    text = repr(load_settings())
    assert "db-hunter2" not in text
    assert "redis-hunter2" not in text


def test_yaml_accepts_the_environment_spelling_too(config):
    config("CATALYST_MARKET: HK\nMONITOR_CHECK_INTERVAL: 30\n")
    settings = load_settings()
    assert settings.market == "HK"
    assert settings.monitor_check_interval == 30


def test_bare_field_names_in_the_environment_are_ignored(monkeypatch):
    monkeypatch.setenv("MARKET", "HK")
    monkeypatch.setenv("BROKER", "alpaca")
    settings = load_settings()
    assert settings.market == "US"
    assert settings.broker == "paper"


def test_malformed_clock_is_refused_when_settings_load(monkeypatch):
    monkeypatch.setenv("CATALYST_CLOCK", "fast")
    with pytest.raises(BadInput, match="CATALYST_CLOCK"):
        load_settings()


# -- seed 003's sectioned YAML ------------------------------------------------------------------

SEED_003 = """
trading_session:
  mode: "autonomous"
  auto_close_at_market_close: true
  max_hold_time_minutes: 90
workflow:
  scan_frequency_minutes: 15
  execute_top_n: 3
risk_limits:
  max_daily_loss_usd: 1500
  warning_threshold_pct: 0.6
  max_positions: 4
  max_position_size_usd: 4000
emergency_actions:
  close_all_positions: true
  halt_new_trades: true
  require_manual_restart: true
"""


def test_seed_003_sections_map_to_the_flat_settings(config):
    config(SEED_003)
    s = load_settings()
    assert s.auto_entries is True
    assert s.max_hold_hours == 1.5
    assert s.scan_interval == 900.0 and s.scan_top_n == 3
    assert s.max_daily_loss_usd == 1500.0 and s.daily_loss_warning_pct == 0.6
    assert s.max_positions == 4 and s.max_position_value_usd == 4000.0
    assert s.signals == {}  # auto-close on is the default near-close exit


def test_sections_accept_catalyst_names_and_seed_002_trading_names(config):
    config("trading:\n  daily_loss_limit: 1800\n  max_position_value: 3000\n  min_position_value: 500\n"
           "  position_stop_loss_pct: 0.03\n  take_profit_pct: 0.09\n  sizing: atr_risk\n  auto_entries: false\n"
           "risk_limits:\n  max_sector_exposure_usd: 8000\n  min_reward_risk: 2\n  sectors: {AAPL: Technology}\n"
           "workflow:\n  scan_top_n: 2\n"
           "signals:\n  rsi_strong: 90\n  volume_collapse_moderate: null\n")
    s = load_settings()
    assert (s.max_daily_loss_usd, s.max_position_value_usd, s.min_position_value_usd) == (1800.0, 3000.0, 500.0)
    assert (s.stop_loss_pct, s.take_profit_pct, s.sizing, s.auto_entries) == (0.03, 0.09, "atr_risk", False)
    assert (s.max_sector_exposure_usd, s.min_reward_risk, s.sectors) == (8000.0, 2.0, {"AAPL": "Technology"})
    assert s.scan_top_n == 2
    assert s.signals == {"rsi_strong": 90.0, "volume_collapse_moderate": None}


def test_flat_keys_and_sections_mix(config):
    config("market: HK\nrisk_limits:\n  max_positions: 2\n")
    s = load_settings()
    assert (s.market, s.max_positions) == ("HK", 2)


def test_the_environment_beats_a_section(config, monkeypatch):
    config("risk_limits:\n  max_position_size_usd: 4000\n")
    monkeypatch.setenv("CATALYST_MAX_POSITION_VALUE_USD", "2500")
    assert load_settings().max_position_value_usd == 2500.0


def test_auto_close_off_switches_the_near_close_exit_off(config):
    config("trading_session:\n  auto_close_at_market_close: false\n")
    assert load_settings().signals == {"near_close_minutes": None}


SECTION_REFUSALS = [
    # (YAML, fragments the one-line message must hold)
    ("risk_limits:\n  max_daily_loss: 5\n", ["unknown key", "max_daily_loss", "risk_limits"]),
    ("workflow:\n  market: HK\n", ["market", "workflow", "top level"]),
    ("bogus: 1\nmarket: HK\n", ["unknown key", "bogus", "top level"]),
    ("risk_limits: 5\n", ["risk_limits", "mapping"]),
    ("signals: [1, 2]\n", ["signals"]),
    ("trading_session:\n  mode: supervised\n", ["trading_session.mode", "not supported"]),
    ("trading_session:\n  mode: yolo\n", ["trading_session.mode", "autonomous"]),
    ("trading_session:\n  auto_close_at_market_close: maybe\n", ["auto_close_at_market_close", "true or false"]),
    ("trading_session:\n  max_hold_time_minutes: soon\n", ["trading_session.max_hold_time_minutes", "number"]),
    ("emergency_actions:\n  close_all_positions: false\n", ["emergency_actions.close_all_positions", "not supported"]),
    ("emergency_actions:\n  halt_new_trades: false\n", ["emergency_actions.halt_new_trades", "not supported"]),
    ("emergency_actions:\n  require_manual_restart: false\n", ["require_manual_restart", "not supported"]),
    ("emergency_actions:\n  notify_via_email: 1\n", ["emergency_actions.notify_via_email", "must be true or false"]),
    ("trading:\n  trailing_stop_pct: 0.03\n", ["trading.trailing_stop_pct", "not supported", "signals"]),
    ("trading:\n  default_order_type: limit\n", ["trading.default_order_type", "not supported"]),
    ("signals:\n  rsi_oversold: 30\n", ["rsi_oversold", "not supported"]),
    # The same setting twice is ambiguous, not "last one wins".
    ("max_hold_hours: 2\ntrading:\n  max_hold_time_minutes: 60\n", ["max_hold_hours", "trading.max_hold_time_minutes"]),
    ("risk_limits:\n  max_position_size_usd: 1\n  max_position_value_usd: 2\n",
     ["risk_limits.max_position_size_usd", "risk_limits.max_position_value_usd"]),
    ("market: HK\nCATALYST_MARKET: US\n", ["market", "CATALYST_MARKET"]),
    ("risk_limits:\n  max_positions: 3\nrisk_limits:\n  max_daily_loss_usd: 100\n", ["duplicate key", "risk_limits"]),
    ("trading_session:\n  auto_close_at_market_close: true\nsignals:\n  near_close_minutes: null\n",
     ["auto_close_at_market_close", "near_close_minutes"]),
    # A bad value names the key the operator wrote.
    ("risk_limits:\n  max_position_size_usd: -5\n", ["risk_limits.max_position_size_usd", "greater than 0"]),
    ("workflow:\n  execute_top_n: 0\n", ["workflow.execute_top_n", "greater than 0"]),
]


@pytest.mark.parametrize("text, fragments", SECTION_REFUSALS, ids=[f"section-{i}" for i in range(len(SECTION_REFUSALS))])
def test_a_bad_sectioned_config_is_refused_naming_the_key_and_section(config, text, fragments):
    path = config(text)
    with pytest.raises(BadInput) as info:
        load_settings()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert str(path) in message
    assert "\n" not in message


# -- signal thresholds, as settings --------------------------------------------------------------

def test_a_bad_signal_threshold_fails_at_load_naming_it(monkeypatch):
    monkeypatch.setenv("CATALYST_SIGNALS", '{"rsi_strong": -5}')
    with pytest.raises(BadInput) as info:
        load_settings()
    assert "rsi_strong" in str(info.value) and "CATALYST_SIGNALS" in str(info.value)


def test_a_bad_signal_threshold_in_yaml_fails_at_load_naming_it(config):
    path = config("signals:\n  take_profit_strong: -1\n")
    with pytest.raises(BadInput) as info:
        load_settings()
    assert "take_profit_strong" in str(info.value) and str(path) in str(info.value)


def test_signal_order_follows_the_configured_market(monkeypatch):
    monkeypatch.setenv("CATALYST_SIGNALS", '{"stop_loss_moderate": -3.5}')
    assert load_settings().signals == {"stop_loss_moderate": -3.5}
    monkeypatch.setenv("CATALYST_MARKET", "HK")
    with pytest.raises(BadInput, match="stop_loss_strong"):
        load_settings()


def test_null_switches_signal_tiers_off_from_the_environment(monkeypatch):
    monkeypatch.setenv("CATALYST_SIGNALS", '{"volume_collapse_strong": null, "volume_collapse_moderate": null}')
    assert load_settings().signals == {"volume_collapse_strong": None, "volume_collapse_moderate": None}


# -- limits and cross-field checks ----------------------------------------------------------------

# Numbers that may be negative: the funnel's lowest gap (a stock a few % down at the open may reclaim).
# A mapping of numbers (max hold per strategy) has its own checks.
SIGNED = {"scan_min_gap_pct"}


def _numeric_fields() -> list[tuple[str, str]]:
    out = []
    for name, field in Settings.model_fields.items():
        if get_origin(field.annotation) is dict or name in SIGNED:
            continue
        args = set(getattr(field.annotation, "__args__", ())) | {field.annotation}
        if args & {int, float}:
            out.append((name, str(field.validation_alias)))
    return out


NUMERIC = _numeric_fields()


def test_the_risk_guard_settings_are_numeric_and_covered():
    names = {n for n, _ in NUMERIC}
    assert {"max_daily_loss_usd", "daily_loss_warning_pct", "max_position_value_usd", "min_position_value_usd",
            "max_sector_exposure_usd", "min_reward_risk", "equity_pct", "risk_per_trade_usd", "atr_stop_multiple",
            "atr_target_multiple", "max_positions", "position_size_usd", "stop_loss_pct", "take_profit_pct"} <= names


@pytest.mark.parametrize("name, alias", NUMERIC, ids=[n for n, _ in NUMERIC])
@pytest.mark.parametrize("value", ["-1", "inf", "-inf", "nan"])
def test_no_numeric_setting_accepts_a_negative_or_non_finite_value(monkeypatch, name, alias, value):
    monkeypatch.setenv(alias, value)
    with pytest.raises(BadInput) as info:
        load_settings()
    assert alias in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("name, alias", NUMERIC, ids=[n for n, _ in NUMERIC])
def test_a_yaml_boolean_is_not_a_number(config, name, alias):
    config(f"{name}: true\n")
    with pytest.raises(BadInput, match=name):
        load_settings()


def test_min_position_value_may_not_exceed_the_max(monkeypatch):
    monkeypatch.setenv("CATALYST_MIN_POSITION_VALUE_USD", "5000")
    assert load_settings().min_position_value_usd == 5000.0  # equal to the default max: allowed
    monkeypatch.setenv("CATALYST_MIN_POSITION_VALUE_USD", "6000")
    with pytest.raises(BadInput) as info:
        load_settings()
    message = str(info.value)
    assert "min_position_value_usd" in message and "max_position_value_usd" in message and "6000" in message


@pytest.mark.parametrize("name, value, fragment", [
    ("CATALYST_STOP_LOSS_PCT", "-0.05", "above the entry"),  # a stop above the entry sells at once
    ("CATALYST_STOP_LOSS_PCT", "0", "above 0"),
    ("CATALYST_STOP_LOSS_PCT", "1", "below 1"),
    ("CATALYST_STOP_LOSS_PCT", "5", "0.05 = 5 %"),
    ("CATALYST_TAKE_PROFIT_PCT", "0", "above 0"),
    ("CATALYST_TAKE_PROFIT_PCT", "-0.1", "above 0"),
    ("CATALYST_TAKE_PROFIT_PCT", "15", "0.15 = 15 %"),  # a percent typed as a fraction: a target at 16x
])
def test_stop_and_target_fractions_must_be_sane(monkeypatch, name, value, fragment):
    monkeypatch.setenv(name, value)
    with pytest.raises(BadInput) as info:
        load_settings()
    assert name in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("sectors, fragment", [
    ('{"AA PL": "Technology"}', "'AA PL'"),
    ('{"": "Technology"}', "''"),
    ('{"\\u0131bm": "Technology"}', "bm'"),  # a dotless i upper-cases to an ASCII I: still not a ticker
    ('{"aapl": "Technology", "AAPL": "Energy"}', "listed twice"),
    ('{"AAPL": ""}', "AAPL"),
    ('{"AAPL": "   "}', "AAPL"),
    ('{"AAPL": 5}', "AAPL"),
    ('["AAPL"]', "CATALYST_SECTORS"),
])
def test_sector_map_needs_tickers_and_named_sectors(monkeypatch, sectors, fragment):
    monkeypatch.setenv("CATALYST_SECTORS", sectors)
    with pytest.raises(BadInput) as info:
        load_settings()
    assert "sectors" in str(info.value) and fragment in str(info.value)


def test_a_good_sector_map_is_kept_with_upper_case_tickers(config):
    config("risk_limits:\n  sectors:\n    aapl: Technology\n    BRK.B: ' Financials '\n    '0700': Communication\n")
    assert load_settings().sectors == {"AAPL": "Technology", "BRK.B": "Financials", "0700": "Communication"}


@pytest.mark.parametrize("value", ['{"momentum": -5}', '{"momentum": 0}', '{"momentum": NaN}', '{"momentum": true}',
                                   '{"": 30}', '{"momentum": "soon"}'])
def test_max_hold_per_strategy_must_be_minutes_above_zero(monkeypatch, value):
    monkeypatch.setenv("CATALYST_MAX_HOLD_MINUTES", value)
    with pytest.raises(BadInput) as info:
        load_settings()
    assert "max_hold_minutes_by_strategy" in str(info.value)


def test_max_hold_per_strategy_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("CATALYST_MAX_HOLD_MINUTES", '{"opening_range_breakout": 90, "momentum": 180}')
    assert load_settings().max_hold_minutes_by_strategy == {"opening_range_breakout": 90.0, "momentum": 180.0}


@pytest.mark.parametrize("env, fragment", [
    ({"CATALYST_SCAN_MIN_PRICE": "50", "CATALYST_SCAN_MAX_PRICE": "20"}, "scan_min_price"),
    ({"CATALYST_SCAN_MIN_GAP_PCT": "30"}, "scan_min_gap_pct"),  # above the default 25 % maximum
    ({"CATALYST_SCAN_MIN_GAP_PCT": "nan"}, "CATALYST_SCAN_MIN_GAP_PCT"),
    ({"CATALYST_SCAN_MIN_GAP_PCT": "-inf"}, "CATALYST_SCAN_MIN_GAP_PCT"),
    ({"CATALYST_SCAN_MIN_GAP_PCT": "-101"}, "CATALYST_SCAN_MIN_GAP_PCT"),  # -100 (a price of 0) is no floor at all
])
def test_the_funnel_filters_must_leave_room_to_pass(monkeypatch, env, fragment):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BadInput) as info:
        load_settings()
    assert fragment in str(info.value)


def test_a_gap_filter_may_start_below_zero(monkeypatch):
    monkeypatch.setenv("CATALYST_SCAN_MIN_GAP_PCT", "-5")
    assert load_settings().scan_min_gap_pct == -5.0
