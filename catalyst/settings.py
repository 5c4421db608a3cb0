"""Settings from the environment (PaaS conventions first), an optional YAML file, then defaults.

Precedence: environment variables > ``CATALYST_CONFIG`` YAML > defaults. Every value is
validated up front so bad configuration fails at start-up with a clear message instead of
in the middle of a trade.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from datetime import date
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from catalyst.config_file import flatten, load_yaml
from catalyst.core.domain import BadInput
from catalyst.core.profiles import profile_for

PAPER_ALPACA_URL = "https://paper-api.alpaca.markets"
_TICKER = re.compile(r"[A-Z0-9][A-Z0-9.\-]{0,15}")  # catalyst.client_ids.SYMBOL_PATTERN: a ticker, upper-cased
SECTOR_LENGTH = 64


def _flat_names(settings_cls) -> dict[str, str]:
    """Every flat YAML spelling (field and environment name, lower-cased) → field name."""
    names = {}
    for name, info in settings_cls.model_fields.items():
        names[name.lower()] = names[str(info.validation_alias).lower()] = name
    return names


def read_config_file(settings_cls) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings by field name, the YAML key each came from) from ``CATALYST_CONFIG``, if set."""
    path = os.environ.get("CATALYST_CONFIG")
    if not path:
        return {}, {}
    values, origins = flatten(load_yaml(path), _flat_names(settings_cls), path)
    return values, {field: f"{origin} in {path}" for field, origin in origins.items()}


def _refuse(message: str) -> PydanticCustomError:
    """A validation error that reads exactly ``message`` (no "Value error, " prefix)."""
    return PydanticCustomError("catalyst_config", "{message}", {"message": message})


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``CATALYST_CONFIG``: flat setting names or the seeds' sections."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values, _ = read_config_file(self.settings_cls)
        fields = self.settings_cls.model_fields
        return {str(fields[name].validation_alias): value for name, value in values.items()}


class Settings(BaseSettings):
    """Every knob Catalyst reads. Field names double as YAML keys."""

    # allow_inf_nan=False: "inf" or "nan" is never a usable limit, interval or price.
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", allow_inf_nan=False)

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL", repr=False)
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL", repr=False)
    var_dir: Path = Field(default=Path("var"), validation_alias="CATALYST_VAR_DIR")
    broker: Literal["paper", "alpaca"] = Field(default="paper", validation_alias="CATALYST_BROKER")
    market_data: str = Field(default="synthetic", validation_alias="CATALYST_MARKET_DATA")
    clock: str = Field(default="wall", validation_alias="CATALYST_CLOCK")
    market: Literal["US", "HK"] = Field(default="US", validation_alias="CATALYST_MARKET")
    live_trading: bool = Field(default=False, validation_alias="CATALYST_LIVE_TRADING")

    alpaca_api_key: str | None = Field(default=None, validation_alias="ALPACA_API_KEY", repr=False)
    alpaca_secret_key: str | None = Field(default=None, validation_alias="ALPACA_SECRET_KEY", repr=False)
    alpaca_base_url: str = Field(default=PAPER_ALPACA_URL, validation_alias="ALPACA_BASE_URL")
    alpaca_data_url: str | None = Field(default=None, validation_alias="ALPACA_DATA_URL")
    alpaca_feed: Literal["iex", "sip", "delayed_sip", "otc"] = Field(default="iex", validation_alias="ALPACA_FEED")
    alpaca_timeout: float = Field(default=10.0, gt=0, le=60, validation_alias="ALPACA_TIMEOUT")
    alpaca_rate_limit: int = Field(default=200, gt=0, validation_alias="ALPACA_RATE_LIMIT")
    fill_wait_seconds: float = Field(default=10.0, gt=0, le=120, validation_alias="CATALYST_FILL_WAIT_SECONDS")
    alpaca_rate_window: float = Field(default=60.0, gt=0, validation_alias="ALPACA_RATE_WINDOW_SECONDS")

    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY", repr=False)
    anthropic_base_url: str | None = Field(default=None, validation_alias="ANTHROPIC_BASE_URL")
    advisor_model: str = Field(default="claude-haiku-4-5", validation_alias="CATALYST_ADVISOR_MODEL")
    ai_daily_budget_usd: float = Field(default=5.0, ge=0, validation_alias="CATALYST_AI_DAILY_BUDGET_USD")

    monitor_check_interval: float = Field(default=60.0, gt=0, validation_alias="MONITOR_CHECK_INTERVAL")
    monitor_dry_run: bool = Field(default=False, validation_alias="MONITOR_DRY_RUN")
    # A decisions row for every check, plain holds included (off: a plain hold refreshes its status row only).
    monitor_record_holds: bool = Field(default=False, validation_alias="MONITOR_RECORD_HOLDS")
    signals: dict[str, float | None] = Field(default_factory=dict, validation_alias="CATALYST_SIGNALS")

    # Advisor (Claude) consults on MODERATE signals; without a key the rules fallback decides.
    advisor_timeout: float = Field(default=15.0, gt=0, le=15, validation_alias="CATALYST_ADVISOR_TIMEOUT")
    advisor_max_consults_per_cycle: int = Field(default=5, ge=0, validation_alias="CATALYST_ADVISOR_MAX_CONSULTS")
    advisor_fallback: Literal["hold", "exit"] = Field(default="hold", validation_alias="CATALYST_ADVISOR_FALLBACK")
    advisor_max_tokens: int = Field(default=300, gt=0, validation_alias="CATALYST_ADVISOR_MAX_TOKENS")
    advisor_input_usd_per_mtok: float = Field(default=1.0, ge=0, validation_alias="CATALYST_ADVISOR_INPUT_USD_PER_MTOK")
    advisor_output_usd_per_mtok: float = Field(default=5.0, ge=0, validation_alias="CATALYST_ADVISOR_OUTPUT_USD_PER_MTOK")

    # Trading rules (Phase-2 position management defaults).
    # Fractions of the entry price (0.05 = 5 %), unlike the signal thresholds, which are percent.
    stop_loss_pct: float = Field(default=0.05, validation_alias="CATALYST_STOP_LOSS_PCT")
    take_profit_pct: float = Field(default=0.15, validation_alias="CATALYST_TAKE_PROFIT_PCT")
    max_hold_hours: float = Field(default=24.0, gt=0, validation_alias="CATALYST_MAX_HOLD_HOURS")
    scan_interval: float = Field(default=1800.0, gt=0, validation_alias="CATALYST_SCAN_INTERVAL")
    scan_top_n: int = Field(default=5, gt=0, validation_alias="CATALYST_SCAN_TOP_N")
    reconcile_interval: float = Field(default=300.0, gt=0, validation_alias="CATALYST_RECONCILE_INTERVAL")
    max_positions: int = Field(default=5, ge=0, validation_alias="CATALYST_MAX_POSITIONS")
    position_size_usd: float = Field(default=1000.0, gt=0, validation_alias="CATALYST_POSITION_SIZE_USD")
    paper_starting_cash: float = Field(default=100_000.0, gt=0, validation_alias="CATALYST_PAPER_CASH")
    max_quote_age: float = Field(default=300.0, gt=0, validation_alias="CATALYST_MAX_QUOTE_AGE")
    closed_dates: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias="CATALYST_CLOSED_DATES")

    # Pre-trade risk limits and sizing (seed 003's risk_limits), checked for every entry under the entry gate.
    auto_entries: bool = Field(default=True, validation_alias="CATALYST_AUTO_ENTRIES")  # the scanner plans entries
    max_daily_loss_usd: float = Field(default=2000.0, gt=0, validation_alias="CATALYST_MAX_DAILY_LOSS_USD")
    daily_loss_warning_pct: float = Field(default=0.75, gt=0, lt=1, validation_alias="CATALYST_DAILY_LOSS_WARNING_PCT")
    max_position_value_usd: float = Field(default=5000.0, gt=0, validation_alias="CATALYST_MAX_POSITION_VALUE_USD")
    min_position_value_usd: float = Field(default=0.0, ge=0, validation_alias="CATALYST_MIN_POSITION_VALUE_USD")
    max_sector_exposure_usd: float | None = Field(default=None, gt=0, validation_alias="CATALYST_MAX_SECTOR_EXPOSURE_USD")
    min_reward_risk: float = Field(default=1.5, ge=0, validation_alias="CATALYST_MIN_REWARD_RISK")
    sectors: dict[str, str] = Field(default_factory=dict, validation_alias="CATALYST_SECTORS")  # symbol -> sector
    sizing: Literal["fixed", "equity_pct", "atr_risk"] = Field(default="fixed", validation_alias="CATALYST_SIZING")
    equity_pct: float = Field(default=0.02, gt=0, le=1, validation_alias="CATALYST_EQUITY_PCT")  # sizing=equity_pct
    risk_per_trade_usd: float = Field(default=100.0, gt=0, validation_alias="CATALYST_RISK_PER_TRADE_USD")  # atr_risk
    atr_stop_multiple: float | None = Field(default=None, gt=0, validation_alias="CATALYST_ATR_STOP_MULTIPLE")
    atr_target_multiple: float | None = Field(default=None, gt=0, validation_alias="CATALYST_ATR_TARGET_MULTIPLE")

    # --- funnel (issue 9): universe -> filters -> technicals -> patterns -> news -> risk -> top N ---
    watchlist: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias="CATALYST_WATCHLIST")
    scan_universe_size: int = Field(default=100, gt=0, validation_alias="CATALYST_SCAN_UNIVERSE_SIZE")
    scan_min_price: float = Field(default=5.0, gt=0, validation_alias="CATALYST_SCAN_MIN_PRICE")
    scan_max_price: float = Field(default=1000.0, gt=0, validation_alias="CATALYST_SCAN_MAX_PRICE")
    scan_min_dollar_volume: float = Field(default=1_000_000.0, ge=0, validation_alias="CATALYST_SCAN_MIN_DOLLAR_VOLUME")
    scan_min_relative_volume: float = Field(default=1.0, ge=0, validation_alias="CATALYST_SCAN_MIN_RELATIVE_VOLUME")
    scan_min_gap_pct: float = Field(default=0.0, ge=-100, allow_inf_nan=False, validation_alias="CATALYST_SCAN_MIN_GAP_PCT")
    scan_max_gap_pct: float = Field(default=25.0, gt=0, validation_alias="CATALYST_SCAN_MAX_GAP_PCT")
    premarket_scan_minutes: float = Field(default=30.0, gt=0, le=330, validation_alias="CATALYST_PREMARKET_SCAN_MINUTES")
    news_max_age_hours: float = Field(default=24.0, gt=0, validation_alias="CATALYST_NEWS_MAX_AGE_HOURS")
    # --- end funnel ---

    # --- entry review (issue 9): Claude reviews the final candidates under the advisor's budget ---
    entry_review: bool = Field(default=False, validation_alias="CATALYST_ENTRY_REVIEW")
    entry_review_min_confidence: float = Field(default=0.6, ge=0, le=1, validation_alias="CATALYST_ENTRY_REVIEW_MIN_CONFIDENCE")
    # --- end entry review ---

    # --- risk monitor (issue 9) ---
    risk_check_interval: float = Field(default=60.0, gt=0, validation_alias="CATALYST_RISK_CHECK_INTERVAL")
    # strategy (the entry's reason: momentum, opening_range_breakout, ...) -> max hold in minutes
    max_hold_minutes_by_strategy: dict[str, float] = Field(default_factory=dict,
                                                           validation_alias="CATALYST_MAX_HOLD_MINUTES")
    # --- end risk monitor ---

    # Days of audit trail kept (agent_logs, decisions, activity, …); never an open position's rows.
    retention_days: int = Field(default=30, ge=1, validation_alias="CATALYST_RETENTION_DAYS")

    # --- notifications (issue 9): log + agent_logs always; webhook and/or SMTP when configured ---
    webhook_url: str | None = Field(default=None, validation_alias="CATALYST_WEBHOOK_URL", repr=False)
    smtp_host: str | None = Field(default=None, validation_alias="SMTP_HOST")
    smtp_port: int = Field(default=587, gt=0, lt=65536, validation_alias="SMTP_PORT")
    smtp_username: str | None = Field(default=None, validation_alias="SMTP_USERNAME", repr=False)
    smtp_password: str | None = Field(default=None, validation_alias="SMTP_PASSWORD", repr=False)
    alert_email_from: str | None = Field(default=None, validation_alias="ALERT_EMAIL_FROM")
    alert_email_to: str | None = Field(default=None, validation_alias="ALERT_EMAIL_TO")
    # seed 003's emergency_actions.notify_via_email: false keeps alerts out of e-mail even when SMTP is set
    notify_via_email: bool = Field(default=True, validation_alias="CATALYST_NOTIFY_VIA_EMAIL")
    notify_timeout: float = Field(default=5.0, gt=0, le=30, validation_alias="CATALYST_NOTIFY_TIMEOUT")
    notify_max_retries: int = Field(default=3, ge=0, le=10, validation_alias="CATALYST_NOTIFY_MAX_RETRIES")
    # --- end notifications ---

    # Process plumbing.
    heartbeat_interval: float = Field(default=10.0, gt=0, validation_alias="CATALYST_HEARTBEAT_INTERVAL")
    beat_lease_seconds: float = Field(default=20.0, gt=0, validation_alias="CATALYST_BEAT_LEASE_SECONDS")
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    # json: one JSON object per line (for log shippers); console: aligned text; auto: console on a terminal.
    log_format: Literal["auto", "json", "console"] = Field(default="auto", validation_alias="LOG_FORMAT")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _YamlSource(settings_cls), file_secret_settings)

    @field_validator("closed_dates", mode="before")
    @classmethod
    def _split_dates(cls, value: Any) -> Any:
        """Accept "2026-11-24, 2026-11-25", a JSON list, or YAML dates; insist on real dates."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = yaml.safe_load(text)
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, date):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("closed_dates must be a list of YYYY-MM-DD dates")
        days = []
        for item in value:
            if isinstance(item, date):
                days.append(item.isoformat())
                continue
            try:
                days.append(date.fromisoformat(str(item)).isoformat())
            except ValueError:
                raise ValueError(f"closed date {item!r} is not YYYY-MM-DD") from None
        return days

    @field_validator("clock")
    @classmethod
    def _check_clock(cls, value: str) -> str:
        from catalyst.clock import parse_clock_spec

        try:
            parse_clock_spec(value)
        except BadInput as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's ``true`` would otherwise become a limit of 1."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and {int, float} & {annotation, *getattr(annotation, "__args__", ())}:
            raise _refuse(f"must be a number, not {str(value).lower()}")
        return value

    @field_validator("signals", mode="before")
    @classmethod
    def _check_signals(cls, value: Any, info: ValidationInfo) -> Any:
        """Thresholds range-checked and in order for the configured market's profile, here at start-up."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _refuse("must be a mapping of threshold: number or null")
        market = info.data.get("market")
        if market is None:
            return value  # the market's own error is reported; the order depends on it
        try:
            shown = profile_for(market, value).thresholds()
        except BadInput as exc:
            raise _refuse(str(exc)) from None
        return {name: shown[name] for name in value}

    @field_validator("stop_loss_pct")
    @classmethod
    def _check_stop_fraction(cls, value: float) -> float:
        if value <= 0:
            raise _refuse(f"must be above 0: the stop sits that fraction below the entry (0.05 = 5 %); {value:g} "
                          "would put it at or above the entry")
        if value >= 1:
            raise _refuse(f"must be below 1, a fraction of the entry price (0.05 = 5 %): {value:g} would put the "
                          "stop at or below zero")
        return value

    @field_validator("take_profit_pct")
    @classmethod
    def _check_target_fraction(cls, value: float) -> float:
        if value <= 0:
            raise _refuse(f"must be above 0: the target sits that fraction above the entry (0.15 = 15 %); {value:g} "
                          "would put it at or below the entry")
        if value > 1:
            raise _refuse(f"must be at most 1, a fraction of the entry price (0.15 = 15 %): {value:g} would put "
                          f"the target at {1 + value:g}x the entry")
        return value

    @field_validator("min_position_value_usd")
    @classmethod
    def _min_within_max(cls, value: float, info: ValidationInfo) -> float:
        top = info.data.get("max_position_value_usd")
        if top is not None and value > top:
            raise _refuse(f"{value:g} is above max_position_value_usd ({top:g}): no entry could be sized between them")
        return value

    @field_validator("scan_max_price", "scan_max_gap_pct")
    @classmethod
    def _scan_range_in_order(cls, value: float, info: ValidationInfo) -> float:
        """A funnel filter's lowest value must lie below its highest, or nothing could ever pass."""
        low_name = {"scan_max_price": "scan_min_price", "scan_max_gap_pct": "scan_min_gap_pct"}[info.field_name]
        low = info.data.get(low_name)
        if low is not None and low >= value:
            raise _refuse(f"{value:g} is not above {low_name} ({low:g}): no symbol could pass the funnel's filter")
        return value

    @field_validator("max_hold_minutes_by_strategy", mode="before")
    @classmethod
    def _check_max_hold(cls, value: Any) -> Any:
        """Strategy (the entry reason, e.g. momentum) -> minutes above 0; each problem names its strategy."""
        from catalyst.core.risk import max_hold_problems

        if value is None:
            return {}
        problems = max_hold_problems(value)
        if problems:
            raise _refuse("; ".join(problems))
        return value

    @field_validator("sectors", mode="before")
    @classmethod
    def _check_sectors(cls, value: Any) -> Any:
        """Symbol → sector name: tickers stored upper-case (as the broker spells them), every sector named."""
        if not isinstance(value, dict):
            raise _refuse(f"must be a mapping of SYMBOL: sector name, got {repr(value)[:60]}")
        problems, clean, written = [], {}, {}
        for symbol, sector in value.items():
            # ASCII first: 'ı'.upper() is 'I' and 'ſ'.upper() is 'S'.
            ticker = symbol.upper() if isinstance(symbol, str) and symbol.isascii() else None
            if ticker is None or not _TICKER.fullmatch(ticker):
                problems.append(f"symbol {symbol!r} must be a ticker: up to 16 ASCII letters, digits, '.' or '-'")
            elif ticker in written:
                problems.append(f"symbol {symbol!r} is listed twice (also as {written[ticker]!r})")
            elif not isinstance(sector, str) or not sector.strip() or len(sector.strip()) > SECTOR_LENGTH:
                problems.append(f"the sector of {symbol} must be a name of 1..{SECTOR_LENGTH} characters, "
                                f"got {sector!r}")
            else:
                clean[ticker], written[ticker] = sector.strip(), symbol
        if problems:
            raise _refuse("; ".join(problems))
        return clean

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with PaaS spellings normalised to the psycopg 3 driver."""
        url = self.database_url
        if not url:
            return f"sqlite:///{(self.var_dir / 'catalyst.sqlite').resolve()}"
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url

    @property
    def embedded_broker(self) -> bool:
        return not self.redis_url

    @property
    def broker_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        return f"sqlite:///{(self.var_dir / 'broker.sqlite').resolve()}"


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning every failure into one readable line: ``BadInput("bad configuration: ...")``.

    Each problem names the setting and where it came from: its environment variable, or the
    YAML key the operator wrote (``risk_limits.max_position_size_usd in /etc/catalyst.yaml``).
    """
    fields = Settings.model_fields
    overrides = {str(fields[k].validation_alias) if k in fields else k: v for k, v in overrides.items()}
    try:
        return Settings(**overrides)
    except BadInput as exc:  # the YAML file itself (unreadable, unknown keys, sections)
        raise BadInput(f"bad configuration: {exc}") from None
    except SettingsError as exc:
        raise BadInput(f"bad configuration: {' '.join(str(exc).split())}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{_where(err['loc'], overrides)}: {' '.join(err['msg'].split())}"
                             for err in exc.errors())
        raise BadInput(f"bad configuration: {problems}") from None


def _where(loc: tuple, overrides: dict[str, Any]) -> str:
    """``setting[.key] (SOURCE)``: the environment name, or the YAML key it was read from."""
    by_alias = {str(info.validation_alias): name for name, info in Settings.model_fields.items()}
    if not loc or str(loc[0]) not in by_alias:
        return ".".join(str(p) for p in loc) or "settings"
    alias = str(loc[0])
    name = ".".join([by_alias[alias], *(str(p) for p in loc[1:] if p != "[key]")])
    from_env = alias in overrides or alias.lower() in {k.lower() for k in os.environ}
    if not from_env:
        try:
            origin = read_config_file(Settings)[1].get(by_alias[alias])
        except BadInput:
            origin = None
        if origin:
            return f"{name} ({origin})"
    return f"{name} ({alias})"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
