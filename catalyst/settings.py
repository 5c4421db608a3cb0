"""Settings from the environment (PaaS conventions first), an optional YAML file, then defaults.

Precedence: environment variables > ``CATALYST_CONFIG`` YAML > defaults. Every value is
validated up front so bad configuration fails at start-up with a clear message instead of
in the middle of a trade.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from catalyst.domain import BadInput

PAPER_ALPACA_URL = "https://paper-api.alpaca.markets"


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``CATALYST_CONFIG``; keys are field names (case-insensitive)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("CATALYST_CONFIG")
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise BadInput(f"CATALYST_CONFIG {path!r} cannot be read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise BadInput(f"CATALYST_CONFIG {path!r} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise BadInput(f"CATALYST_CONFIG {path!r} must hold a mapping of setting: value")
        known = {name.lower() for name in self.settings_cls.model_fields}
        unknown = sorted(k for k in data if str(k).lower() not in known)
        if unknown:
            raise BadInput(f"CATALYST_CONFIG {path!r} has unknown settings: {', '.join(unknown)}")
        return {str(k).lower(): v for k, v in data.items()}


class Settings(BaseSettings):
    """Every knob Catalyst reads. Field names double as YAML keys."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url"))
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    var_dir: Path = Field(default=Path("var"), validation_alias=AliasChoices("CATALYST_VAR_DIR", "var_dir"))
    broker: Literal["paper", "alpaca"] = Field(default="paper", validation_alias=AliasChoices("CATALYST_BROKER", "broker"))
    market_data: str = Field(default="synthetic", validation_alias=AliasChoices("CATALYST_MARKET_DATA", "market_data"))
    clock: str = Field(default="wall", validation_alias=AliasChoices("CATALYST_CLOCK", "clock"))
    market: Literal["US", "HK"] = Field(default="US", validation_alias=AliasChoices("CATALYST_MARKET", "market"))
    live_trading: bool = Field(default=False, validation_alias=AliasChoices("CATALYST_LIVE_TRADING", "live_trading"))

    alpaca_api_key: str | None = Field(default=None, validation_alias=AliasChoices("ALPACA_API_KEY", "alpaca_api_key"), repr=False)
    alpaca_secret_key: str | None = Field(default=None, validation_alias=AliasChoices("ALPACA_SECRET_KEY", "alpaca_secret_key"), repr=False)
    alpaca_base_url: str = Field(default=PAPER_ALPACA_URL, validation_alias=AliasChoices("ALPACA_BASE_URL", "alpaca_base_url"))
    alpaca_data_url: str | None = Field(default=None, validation_alias=AliasChoices("ALPACA_DATA_URL", "alpaca_data_url"))
    alpaca_feed: str = Field(default="iex", validation_alias=AliasChoices("ALPACA_FEED", "alpaca_feed"))

    anthropic_api_key: str | None = Field(default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "anthropic_api_key"), repr=False)
    anthropic_base_url: str | None = Field(default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "anthropic_base_url"))
    advisor_model: str = Field(default="claude-haiku-4-5", validation_alias=AliasChoices("CATALYST_ADVISOR_MODEL", "advisor_model"))
    ai_daily_budget_usd: float = Field(default=5.0, ge=0, validation_alias=AliasChoices("CATALYST_AI_DAILY_BUDGET_USD", "ai_daily_budget_usd"))

    monitor_check_interval: float = Field(default=60.0, gt=0, validation_alias=AliasChoices("MONITOR_CHECK_INTERVAL", "monitor_check_interval"))
    monitor_dry_run: bool = Field(default=False, validation_alias=AliasChoices("MONITOR_DRY_RUN", "monitor_dry_run"))

    # Trading rules (Phase-2 position management defaults).
    stop_loss_pct: float = Field(default=0.05, gt=0, lt=1, validation_alias=AliasChoices("CATALYST_STOP_LOSS_PCT", "stop_loss_pct"))
    take_profit_pct: float = Field(default=0.15, gt=0, validation_alias=AliasChoices("CATALYST_TAKE_PROFIT_PCT", "take_profit_pct"))
    max_hold_hours: float = Field(default=24.0, gt=0, validation_alias=AliasChoices("CATALYST_MAX_HOLD_HOURS", "max_hold_hours"))
    scan_interval: float = Field(default=1800.0, gt=0, validation_alias=AliasChoices("CATALYST_SCAN_INTERVAL", "scan_interval"))
    scan_top_n: int = Field(default=5, gt=0, validation_alias=AliasChoices("CATALYST_SCAN_TOP_N", "scan_top_n"))
    max_positions: int = Field(default=5, ge=0, validation_alias=AliasChoices("CATALYST_MAX_POSITIONS", "max_positions"))
    position_size_usd: float = Field(default=1000.0, gt=0, validation_alias=AliasChoices("CATALYST_POSITION_SIZE_USD", "position_size_usd"))
    paper_starting_cash: float = Field(default=100_000.0, gt=0, validation_alias=AliasChoices("CATALYST_PAPER_CASH", "paper_starting_cash"))
    max_quote_age: float = Field(default=300.0, gt=0, validation_alias=AliasChoices("CATALYST_MAX_QUOTE_AGE", "max_quote_age"))
    closed_dates: list[str] = Field(default_factory=list, validation_alias=AliasChoices("CATALYST_CLOSED_DATES", "closed_dates"))

    # Process plumbing.
    heartbeat_interval: float = Field(default=10.0, gt=0, validation_alias=AliasChoices("CATALYST_HEARTBEAT_INTERVAL", "heartbeat_interval"))
    beat_lease_seconds: float = Field(default=20.0, gt=0, validation_alias=AliasChoices("CATALYST_BEAT_LEASE_SECONDS", "beat_lease_seconds"))
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level"))

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _YamlSource(settings_cls), file_secret_settings)

    @field_validator("closed_dates", mode="before")
    @classmethod
    def _split_dates(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

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
    """Build settings, turning validation failures into one readable ``BadInput``."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise BadInput(f"bad configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
