"""SQLAlchemy 2 models of the core tables (DESIGN.md §2) plus scheduling and paper-broker state.

PostgreSQL is the source of truth: everything a restart needs (positions, orders, the
schedule, the beat lease, the paper broker's book) lives here, never only in Redis.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from catalyst.db.types import JSONType, UTCDateTime

POSITION_STATUSES = ("open", "closing", "closed")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class Security(Base):
    __tablename__ = "securities"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    symbol: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    exchange: Mapped[str | None] = mapped_column(String(16))
    # From the configured sector map (there is no free sector feed); the per-sector exposure limit reads it.
    sector: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]


class TradingCycle(Base):
    __tablename__ = "trading_cycles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_at: Mapped[datetime] = mapped_column(unique=True)  # one cycle per scan slot: scans are idempotent
    market: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(20), default="scanning")
    candidates: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16), default="session")  # premarket | session
    funnel: Mapped[dict[str, Any]] = mapped_column(default=dict)  # survivors per stage, in funnel order
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class ScanResult(Base):
    __tablename__ = "scan_results"
    __table_args__ = (UniqueConstraint("cycle_id", "symbol"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("trading_cycles.id"))
    security_id: Mapped[int] = mapped_column(ForeignKey("securities.id"))
    symbol: Mapped[str] = mapped_column(String(16))
    rank: Mapped[int | None] = mapped_column(Integer)  # in the final selection; None when it fell out earlier
    # The last funnel stage this symbol passed (universe, filters, technicals, patterns, news, risk,
    # selected), why it went no further, and the numbers behind every stage's verdict.
    stage: Mapped[str] = mapped_column(String(16), default="selected")
    rejected_reason: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    score: Mapped[float] = mapped_column(Float)
    price: Mapped[float] = mapped_column(Float)
    change_pct: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)
    relative_volume: Mapped[float] = mapped_column(Float)
    rsi: Mapped[float | None] = mapped_column(Float)
    catalyst: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class Position(Base):
    __tablename__ = "positions"
    __table_args__ = (Index("ix_positions_status", "status"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # At most one position per entry order, whatever the interleaving of redelivered tasks.
    entry_order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", use_alter=True,
                                                                  name="fk_positions_entry_order"), unique=True)
    security_id: Mapped[int] = mapped_column(ForeignKey("securities.id"))
    symbol: Mapped[str] = mapped_column(String(16))
    side: Mapped[str] = mapped_column(String(8), default="long")
    qty: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(10), default="open")
    entry_price: Mapped[float] = mapped_column(Float)
    entry_volume: Mapped[float | None] = mapped_column(Float)
    high_watermark: Mapped[float] = mapped_column(Float)
    stop_loss_price: Mapped[float | None] = mapped_column(Float)
    take_profit_price: Mapped[float | None] = mapped_column(Float)
    max_hold_seconds: Mapped[float] = mapped_column(Float)
    entry_reason: Mapped[str | None] = mapped_column(Text)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("trading_cycles.id"))
    opened_at: Mapped[datetime]
    closing_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    exit_price: Mapped[float | None] = mapped_column(Float)
    exit_reason: Mapped[str | None] = mapped_column(String(32))
    realized_pnl: Mapped[float | None] = mapped_column(Float)
    realized_pnl_pct: Mapped[float | None] = mapped_column(Float)
    last_price: Mapped[float | None] = mapped_column(Float)
    # The broker refused the sale (e.g. pattern-day-trader protection): a stop protects the shares and
    # the exit is retried only from this time on, when it can succeed.
    exit_blocked_until: Mapped[datetime | None]
    exit_blocked_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_order_id: Mapped[str] = mapped_column(String(48), unique=True)
    broker_order_id: Mapped[str | None] = mapped_column(String(64))
    position_id: Mapped[int | None] = mapped_column(ForeignKey("positions.id"), index=True)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("trading_cycles.id"))
    symbol: Mapped[str] = mapped_column(String(16))
    side: Mapped[str] = mapped_column(String(4))
    purpose: Mapped[str] = mapped_column(String(16))  # entry | exit | stop | take_profit
    order_type: Mapped[str] = mapped_column(String(16), default="market")
    qty: Mapped[float] = mapped_column(Float)
    limit_price: Mapped[float | None] = mapped_column(Float)
    stop_price: Mapped[float | None] = mapped_column(Float)
    # An entry's bracket as requested, so a retry resumes the same intent without re-deciding it.
    stop_loss_price: Mapped[float | None] = mapped_column(Float)
    take_profit_price: Mapped[float | None] = mapped_column(Float)
    # An entry's price when it was admitted: what the risk checks value it at while it is in flight.
    reference_price: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20), default="pending_submit")
    filled_qty: Mapped[float] = mapped_column(Float, default=0.0)
    filled_avg_price: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    submitted_at: Mapped[datetime | None]
    filled_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_position", "position_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # evaluate | monitor | advisor | exit | entry
    action: Mapped[str] = mapped_column(String(16))  # enter | skip | hold | exit | error
    reason: Mapped[str | None] = mapped_column(String(64))
    symbol: Mapped[str | None] = mapped_column(String(16))
    position_id: Mapped[int | None] = mapped_column(ForeignKey("positions.id"))
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("trading_cycles.id"))
    signals: Mapped[list[Any]] = mapped_column(default=list)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime]  # market (possibly simulated) time
    recorded_at: Mapped[datetime]  # wall time


class PositionMonitorStatus(Base):
    __tablename__ = "position_monitor_status"
    position_id: Mapped[int] = mapped_column(ForeignKey("positions.id"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(16))
    last_check_at: Mapped[datetime]
    price: Mapped[float | None] = mapped_column(Float)
    pnl_pct: Mapped[float | None] = mapped_column(Float)
    high_watermark: Mapped[float | None] = mapped_column(Float)
    active_signals: Mapped[list[Any]] = mapped_column(default=list)
    last_decision: Mapped[str | None] = mapped_column(String(64))
    checks: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]


class ServiceHealth(Base):
    __tablename__ = "service_health"
    service_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # worker | beat
    status: Mapped[str] = mapped_column(String(32))
    hostname: Mapped[str | None] = mapped_column(String(128))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime]
    last_heartbeat: Mapped[datetime]
    checks: Mapped[int] = mapped_column(BigInteger, default=0)
    positions_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    exits_executed: Mapped[int] = mapped_column(BigInteger, default=0)
    advisor_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AgentLog(Base):
    __tablename__ = "agent_logs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    timestamp: Mapped[datetime]
    level: Mapped[str] = mapped_column(String(10))
    event: Mapped[str] = mapped_column(String(64))
    service: Mapped[str | None] = mapped_column(String(128))
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ActivityLog(Base):
    __tablename__ = "activity_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    occurred_at: Mapped[datetime]  # market time
    recorded_at: Mapped[datetime]  # wall time
    event: Mapped[str] = mapped_column(String(64))  # position_opened, exit_submitted, position_closed, ...
    position_id: Mapped[int | None] = mapped_column(ForeignKey("positions.id"))
    symbol: Mapped[str | None] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TradingState(Base):
    """Small key/value facts every process must agree on (clock anchor, halt flag)."""

    __tablename__ = "trading_state"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime]


class ScheduleEntry(Base):
    """What the active beat is scheduling; ``last_slot_at`` makes each slot fire at most once."""

    __tablename__ = "schedule_entries"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    task: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(32))
    args: Mapped[list[Any]] = mapped_column(default=list)
    interval_seconds: Mapped[float] = mapped_column(Float)
    # session: every interval_seconds on the session's grid; open/close: once a session, offset_seconds
    # from its open or close (a negative offset before the open is the pre-market scan).
    anchor: Mapped[str] = mapped_column(String(16), default="session")
    offset_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    next_run_at: Mapped[datetime | None]
    last_slot_at: Mapped[datetime | None]
    last_sent_at: Mapped[datetime | None]
    total_sent: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]


class Lease(Base):
    """A named lock with expiry and a fencing token that grows on every change of holder."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    token: Mapped[int] = mapped_column(BigInteger, default=1)
    expires_at: Mapped[datetime]


class PaperOrder(Base):
    """The paper broker's own book: what a real broker would hold on its side."""

    __tablename__ = "paper_orders"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_order_id: Mapped[str] = mapped_column(String(48), unique=True)
    symbol: Mapped[str] = mapped_column(String(16))
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20))
    filled_qty: Mapped[float] = mapped_column(Float, default=0.0)
    filled_avg_price: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime]
    filled_at: Mapped[datetime | None]


class PaperPosition(Base):
    __tablename__ = "paper_positions"
    symbol: Mapped[str] = mapped_column(String(16), primary_key=True)
    qty: Mapped[float] = mapped_column(Float)
    avg_entry_price: Mapped[float] = mapped_column(Float)


class PaperAccount(Base):
    __tablename__ = "paper_account"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cash: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime]


class IndicatorSnapshot(Base):
    """Indicators of one symbol for one monitor slot, computed once and shared by every position in it."""

    __tablename__ = "indicator_snapshots"
    __table_args__ = (UniqueConstraint("symbol", "slot_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    symbol: Mapped[str] = mapped_column(String(16))
    slot_at: Mapped[datetime]
    bars: Mapped[int] = mapped_column(Integer)
    rsi: Mapped[float | None] = mapped_column(Float)
    macd: Mapped[float | None] = mapped_column(Float)
    macd_signal: Mapped[float | None] = mapped_column(Float)
    macd_hist: Mapped[float | None] = mapped_column(Float)
    vwap: Mapped[float | None] = mapped_column(Float)
    atr: Mapped[float | None] = mapped_column(Float)
    recent_volume: Mapped[float | None] = mapped_column(Float)  # mean volume of the last few bars
    computed_at: Mapped[datetime]
    worker: Mapped[str | None] = mapped_column(String(128))


class AdvisorUsage(Base):
    """Advisor spend per (market) day: reservations keep concurrent workers under the budget."""

    __tablename__ = "advisor_usage"
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    calls: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]


class AdvisorCycle(Base):
    """Consults granted in one monitor cycle (slot), across all workers."""

    __tablename__ = "advisor_cycles"
    slot_at: Mapped[datetime] = mapped_column(primary_key=True)
    consults: Mapped[int] = mapped_column(Integer, default=0)


class EntryReviewConsults(Base):
    """Entry-review consults granted per trading cycle, counted apart from the monitor's slots."""

    __tablename__ = "entry_review_consults"
    cycle_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    consults: Mapped[int] = mapped_column(Integer, default=0)


class Notification(Base):
    """An alert for the operator: always logged; delivered to the webhook and/or e-mail when configured."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_created_at", "created_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event: Mapped[str] = mapped_column(String(64))  # daily_loss_warning, emergency_stop, position_closed, ...
    severity: Mapped[str] = mapped_column(String(10))  # info | warning | critical
    title: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)  # one alert per fact, however often raised
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed | logged
    deliveries: Mapped[dict[str, Any]] = mapped_column(default=dict)  # channel -> {status, error, at}
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    occurred_at: Mapped[datetime]  # market (possibly simulated) time
    created_at: Mapped[datetime]  # wall time
    sent_at: Mapped[datetime | None]
