"""Catalyst's own Prometheus metrics: the trading as the database and the broker tell it, read at scrape time.

Why a custom collector that reads at scrape time: the facts live in PostgreSQL (positions, heartbeats,
advisor spend, the trading state) and in the broker's lists (queue depth), written by any number of
worker processes. Reading them when Prometheus asks keeps the exporter stateless: no process-local
counters to lose on a restart, no multiprocess mode, any number of exporters agree.

A scrape never hangs: the database (short connect and statement timeouts, read-only transactions) and
the broker (short socket timeouts) are read on threads of their own, and whatever has not answered by
the scrape's deadline is reported as failed. A failed source never turns the scrape into an error:
``catalyst_scrape_errors{source}`` says which part is missing and the rest is still exported.

Time: "today" is the market's day (exchange time zone) of the runtime's clock, the same day the daily
loss guard and the advisor budget use; monitor lag is measured on that clock too (simulated seconds
under a simulated clock, like MONITOR_CHECK_INTERVAL). Heartbeat ages and "checked per minute" are wall
time, as the rows that feed them are.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Connection, Engine, make_url

from catalyst.db.models import AdvisorUsage, Position, PositionMonitorStatus, ServiceHealth, TradingState
from catalyst.records import COUNTERS

log = structlog.get_logger("catalyst.metrics")

QUEUES = ("scan", "evaluate", "monitor", "exit", "maintenance")  # celeryconfig.QUEUES (a test keeps them equal)
EXIT_REASONS = ("stop_loss", "take_profit", "trailing_stop", "rsi_overbought", "volume_collapse", "macd_bearish",
                "near_close", "max_hold_time", "emergency_stop", "manual")  # DESIGN.md §2, always exported
POSITION_STATES = ("open", "closing")
TRADING_STATES = ("ACTIVE", "REDUCING", "HALTED")

SCRAPE_DEADLINE = 8.0  # seconds: below Prometheus's default scrape_timeout (10 s)
DB_CONNECT_TIMEOUT = 3  # seconds
DB_STATEMENT_TIMEOUT_MS = 3000
REDIS_TIMEOUT = 2.0  # seconds, connect and each reply
CHECKED_WINDOW = timedelta(minutes=1)

DB_SOURCES = ("clock", "positions", "monitor", "services", "advisor", "trading_state")
SOURCES = (*DB_SOURCES, "queues")


# -- the broker's lists ---------------------------------------------------------------------------
def redis_queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu's Redis transport keeps for ``queue``: the queue itself (priority 0, every
    message Catalyst sends) and one list per further priority step (``<queue>\\x06\\x16<step>``)."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    return [queue] + [f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS if step]


def redis_depths(client) -> tuple[dict[str, int], int]:
    """Messages waiting per queue (all priority lists summed) and messages delivered but not acknowledged."""
    keys = {queue: redis_queue_keys(queue) for queue in QUEUES}
    pipe = client.pipeline(transaction=False)
    for queue_keys in keys.values():
        for key in queue_keys:
            pipe.llen(key)
    pipe.hlen("unacked")  # kombu's unacked_key: late-acked tasks (exits) a worker holds right now
    replies = pipe.execute()
    depths, at = {}, 0
    for queue, queue_keys in keys.items():
        depths[queue] = sum(int(n) for n in replies[at:at + len(queue_keys)])
        at += len(queue_keys)
    return depths, int(replies[at])


def embedded_depths(broker_file: Path) -> dict[str, int]:
    """Visible messages per queue in the embedded broker (kombu's SQLAlchemy transport on SQLite), read-only.

    No file yet means nothing was ever queued (the transport creates it with the first worker or send)."""
    if not broker_file.exists():
        return dict.fromkeys(QUEUES, 0)
    conn = sqlite3.connect(f"file:{broker_file}?mode=ro", uri=True, timeout=REDIS_TIMEOUT)
    try:
        rows = conn.execute("SELECT q.name, COUNT(m.id) FROM kombu_queue q LEFT JOIN kombu_message m "
                            "ON m.queue_id = q.id AND m.visible = 1 GROUP BY q.name").fetchall()
    finally:
        conn.close()
    found = dict(rows)
    return {queue: int(found.get(queue, 0)) for queue in QUEUES}


# -- one scrape ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Moment:
    """When this scrape happens: the runtime's clock (market time) and the wall clock."""

    market_now: datetime
    wall_now: datetime
    day: date  # the market's day of market_now
    day_start: datetime  # that day, midnight to midnight in the exchange's time zone, in UTC
    day_end: datetime
    market_open: bool


class _Scrape:
    """Families and failures gathered by the source threads; closed at the deadline, after which late
    answers are ignored (a source that had not answered by then is reported as failed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self.families: list[Metric] = []
        self.errors: dict[str, str | None] = {}

    def done(self, source: str, families: Iterable[Metric]) -> None:
        with self._lock:
            if not self._closed:
                self.families.extend(families)
                self.errors[source] = None

    def failed(self, source: str, why: str) -> None:
        with self._lock:
            if not self._closed:
                self.errors[source] = why

    def close(self, deadline: float) -> tuple[list[Metric], dict[str, str]]:
        with self._lock:
            self._closed = True
            errors = {s: self.errors[s] if s in self.errors else f"no answer within {deadline:g}s" for s in SOURCES}
            return list(self.families), {s: why for s, why in errors.items() if why is not None}


def _guarded(target: Callable[[_Scrape], None], scrape: _Scrape, sources: tuple[str, ...]) -> None:
    """Run one source thread; anything it did not catch fails its sources (a thread never dies loudly)."""
    try:
        target(scrape)
    except Exception as exc:  # noqa: BLE001
        for source in sources:
            if source not in scrape.errors:
                scrape.failed(source, _why(exc))


def _why(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


class CatalystCollector(Collector):
    """Reads PostgreSQL (or the embedded SQLite) and the broker on every ``collect()``; holds no counts itself.

    ``clock`` and ``wall`` are for tests; by default the clock is built from the settings on every scrape
    (a simulated clock's anchor lives in the database and a demo may restart it).
    """

    def __init__(self, settings, *, clock=None, wall: Callable[[], datetime] | None = None,
                 deadline: float = SCRAPE_DEADLINE) -> None:
        self.settings = settings
        self._clock = clock
        self._wall = wall or (lambda: datetime.now(UTC))
        self.deadline = deadline
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._redis = None
        self._failing: set[str] = set()

    def describe(self) -> list[Metric]:
        return []  # registering must not read the database

    def collect(self) -> Iterable[Metric]:
        started = time.monotonic()
        scrape = _Scrape()
        threads = [threading.Thread(target=_guarded, args=(target, scrape, sources), daemon=True,
                                    name=f"metrics-{target.__name__}")
                   for target, sources in ((self._read_database, DB_SOURCES), (self._read_broker, ("queues",)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, self.deadline - (time.monotonic() - started)))
        families, errors = scrape.close(self.deadline)
        self._log_changes(errors)
        yield from families
        yield from self._settings_families()
        failed = GaugeMetricFamily("catalyst_scrape_errors", "1 when this part of the metrics could not be read in "
                                   "this scrape (its series are missing), else 0", labels=["source"])
        for source in SOURCES:
            failed.add_metric([source], 1 if source in errors else 0)
        yield failed
        yield GaugeMetricFamily("catalyst_scrape_duration_seconds", "How long reading the sources took",
                                value=time.monotonic() - started)

    # -- sources -------------------------------------------------------------------------------------
    def _read_database(self, scrape: _Scrape) -> None:
        try:
            moment = self.moment()
        except Exception as exc:  # noqa: BLE001 - every failure is reported as a scrape error, never raised
            for source in DB_SOURCES:
                scrape.failed(source, f"clock: {_why(exc)}")
            return
        scrape.done("clock", [_gauge("catalyst_market_open", "1 while the exchange's session is open",
                                     1 if moment.market_open else 0)])
        readers = {"positions": positions_families, "monitor": monitor_families, "services": service_families,
                   "advisor": advisor_families, "trading_state": trading_state_families}
        try:
            conn = self.engine().connect()
        except Exception as exc:  # noqa: BLE001
            for source in readers:
                scrape.failed(source, _why(exc))
            return
        with conn:
            for source, read in readers.items():
                try:
                    scrape.done(source, read(conn, moment))
                except Exception as exc:  # noqa: BLE001
                    scrape.failed(source, _why(exc))
                finally:
                    try:
                        conn.rollback()  # each source reads in a transaction of its own
                    except Exception:  # noqa: BLE001 - the connection is gone: the rest cannot be read either
                        for rest in list(readers)[list(readers).index(source) + 1:]:
                            scrape.failed(rest, "database connection lost")
                        return

    def _read_broker(self, scrape: _Scrape) -> None:
        try:
            if self.settings.embedded_broker:
                depths, unacked = embedded_depths(Path(make_url(self.settings.broker_url).database)), None
            else:
                depths, unacked = redis_depths(self.redis())
        except Exception as exc:  # noqa: BLE001
            scrape.failed("queues", _why(exc))
            return
        depth = GaugeMetricFamily("catalyst_queue_depth", "Messages waiting in each Celery queue (every priority "
                                  "list of the queue summed)", labels=["queue"])
        for queue in QUEUES:
            depth.add_metric([queue], depths[queue])
        families = [depth]
        if unacked is not None:
            families.append(_gauge("catalyst_queue_unacked", "Messages a worker has taken but not acknowledged yet "
                                   "(late-acked tasks in progress, e.g. exits)", unacked))
        scrape.done("queues", families)

    # -- connections, built once per process -----------------------------------------------------------
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = metrics_engine(self.settings.sqlalchemy_url)
            return self._engine

    def redis(self):
        with self._lock:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT,
                                                   socket_timeout=REDIS_TIMEOUT, health_check_interval=10)
            return self._redis

    def moment(self) -> Moment:
        from catalyst.core import risk
        from catalyst.core.sessions import SessionCalendar
        from catalyst.runtime import build_clock

        calendar = SessionCalendar.for_market(self.settings.market, tuple(self.settings.closed_dates))
        clock = self._clock or build_clock(self.settings)
        now = clock.now()
        day = risk.market_day(now, calendar.tz)
        start, end = risk.day_span(day, calendar.tz)
        return Moment(now, self._wall(), day, start, end, calendar.is_open(now))

    def _settings_families(self) -> list[Metric]:
        s = self.settings
        return [
            _gauge("catalyst_monitor_check_interval_seconds", "Seconds between two checks of one position "
                   "(MONITOR_CHECK_INTERVAL, clock time)", s.monitor_check_interval),
            _gauge("catalyst_heartbeat_interval_seconds", "Seconds between two heartbeats of a service",
                   s.heartbeat_interval),
            _gauge("catalyst_advisor_budget_usd", "The advisor's daily budget (CATALYST_AI_DAILY_BUDGET_USD)",
                   s.ai_daily_budget_usd),
        ]

    def _log_changes(self, errors: dict[str, str]) -> None:
        """One line when a source starts failing and one when it is back, not one per scrape."""
        with self._lock:
            started, recovered = set(errors) - self._failing, self._failing - set(errors)
            self._failing = set(errors)
        for source in sorted(started):
            log.warning("metrics_source_failed", source=source, error=errors[source])
        for source in sorted(recovered):
            log.info("metrics_source_recovered", source=source)


def metrics_engine(url: str) -> Engine:
    """An engine for scrapes only: PostgreSQL with short connect and statement timeouts and read-only
    transactions (a scrape can never change the books); SQLite as Catalyst opens it elsewhere."""
    if make_url(url).get_backend_name() != "postgresql":
        from catalyst.db.engine import make_engine

        return make_engine(url)
    engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, pool_timeout=DB_CONNECT_TIMEOUT,
                           connect_args={"connect_timeout": DB_CONNECT_TIMEOUT, "application_name": "catalyst-metrics",
                                         "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                                         "keepalives_count": 2, "tcp_user_timeout": DB_STATEMENT_TIMEOUT_MS + 2000})

    @event.listens_for(engine, "begin")
    def _limit(conn) -> None:
        # Per transaction, not per session and not as a startup ``options`` parameter: that would replace the
        # options of DATABASE_URL (a search_path) and is refused by PgBouncer-style poolers.
        conn.exec_driver_sql(f"SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = {DB_STATEMENT_TIMEOUT_MS}")

    return engine


def build_registry(collector: CatalystCollector) -> CollectorRegistry:
    """A registry holding Catalyst's collector only (the exporter's own process metrics would say nothing
    about the trading)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


# -- the families, one reader per source ----------------------------------------------------------
def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def positions_families(conn: Connection, m: Moment) -> list[Metric]:
    """Positions held by status, today's exits by reason and realized P&L, and every exit ever by reason."""
    held = dict(conn.execute(select(Position.status, func.count()).where(Position.status.in_(POSITION_STATES))
                             .group_by(Position.status)).all())
    closed = Position.status == "closed"
    today = conn.execute(select(Position.exit_reason, func.count(), func.sum(Position.realized_pnl))
                         .where(closed, Position.closed_at >= m.day_start, Position.closed_at < m.day_end)
                         .group_by(Position.exit_reason)).all()
    ever = conn.execute(select(Position.exit_reason, func.count()).where(closed).group_by(Position.exit_reason)).all()

    open_positions = GaugeMetricFamily("catalyst_open_positions", "Positions held, by status (closing: its exit "
                                       "is under way)", labels=["status"])
    for status in POSITION_STATES:
        open_positions.add_metric([status], held.get(status, 0))
    exits_today = GaugeMetricFamily("catalyst_exits_today", "Positions closed today (the market's day), by exit "
                                    "reason", labels=["reason"])
    for reason, n in _by_reason((reason, n) for reason, n, _ in today):
        exits_today.add_metric([reason], n)
    exits = CounterMetricFamily("catalyst_exits", "Positions closed since the database began, by exit reason "
                                "(use increase() over any window)", labels=["reason"])
    for reason, n in _by_reason(ever):
        exits.add_metric([reason], n)
    realized = sum(float(pnl or 0.0) for _, _, pnl in today)
    return [open_positions, exits_today, exits,
            _gauge("catalyst_realized_pnl_today_usd", "Realized P&L of the positions closed today (the market's "
                   "day)", realized)]


def _by_reason(rows: Iterable[tuple[str | None, int]]) -> list[tuple[str, int]]:
    """Every canonical reason (0 when none), then any other reason found; a missing one is ``unknown``."""
    counts = {reason: 0 for reason in EXIT_REASONS}
    for reason, n in rows:
        key = reason or "unknown"
        counts[key] = counts.get(key, 0) + int(n)
    return list(counts.items())


def monitor_families(conn: Connection, m: Moment) -> list[Metric]:
    """How much monitoring happens (positions checked in the last wall minute, from their status rows: a plain
    hold writes no decision row) and how far behind it is (clock time since the least recently checked open
    position was checked, or opened if never checked)."""
    checked = conn.scalar(select(func.count()).select_from(PositionMonitorStatus)
                          .where(PositionMonitorStatus.updated_at >= m.wall_now - CHECKED_WINDOW))
    last = conn.execute(select(PositionMonitorStatus.last_check_at, Position.opened_at).select_from(Position)
                        .outerjoin(PositionMonitorStatus, PositionMonitorStatus.position_id == Position.id)
                        .where(Position.status == "open")).all()
    oldest = min((checked_at or opened_at for checked_at, opened_at in last), default=None)
    lag = max(0.0, (m.market_now - oldest).total_seconds()) if oldest is not None else 0.0
    return [
        _gauge("catalyst_positions_checked_per_minute", "Positions checked by every worker in the last "
               "minute (wall time)", checked or 0),
        _gauge("catalyst_monitor_lag_seconds", "Clock time since the least recently checked open position was "
               "checked (or opened, if never checked); 0 with no open position", lag),
    ]


def service_families(conn: Connection, m: Moment) -> list[Metric]:
    """Each service's heartbeat age (wall time), its reported status and its counters (reset when the
    process restarts, as counters may)."""
    from catalyst.alerts import GONE_STATUSES

    rows = conn.execute(select(ServiceHealth.service_name, ServiceHealth.kind, ServiceHealth.status,
                               ServiceHealth.last_heartbeat, *(getattr(ServiceHealth, c) for c in COUNTERS))
                        .order_by(ServiceHealth.service_name)).all()
    age = GaugeMetricFamily("catalyst_heartbeat_age_seconds", "Wall seconds since the service's last heartbeat",
                            labels=["service", "kind"])
    status = GaugeMetricFamily("catalyst_service_status", "1 for the status the service last reported",
                               labels=["service", "kind", "status"])
    counters = {c: CounterMetricFamily(f"catalyst_service_{c}", f"The service's {c.replace('_', ' ')} since it "
                                       "started", labels=["service", "kind"]) for c in COUNTERS}
    for row in rows:
        labels = [row.service_name, row.kind]
        if row.status not in GONE_STATUSES:  # a process that said goodbye has no heartbeat to be late with
            age.add_metric(labels, max(0.0, (m.wall_now - row.last_heartbeat).total_seconds()))
        status.add_metric([*labels, row.status], 1)
        for c in COUNTERS:
            counters[c].add_metric(labels, int(getattr(row, c) or 0))
    return [age, status, *counters.values()]


def advisor_families(conn: Connection, m: Moment) -> list[Metric]:
    """Today's advisor API calls and their cost (exit consults and entry reviews share the day's budget)."""
    row = conn.execute(select(AdvisorUsage.calls, AdvisorUsage.spent_usd, AdvisorUsage.reserved_usd)
                       .where(AdvisorUsage.day == m.day.isoformat())).first()
    calls, spent, reserved = (row.calls, row.spent_usd, row.reserved_usd) if row else (0, 0.0, 0.0)
    return [
        _gauge("catalyst_advisor_calls_today", "Advisor (Claude) API calls today (the market's day)", calls or 0),
        _gauge("catalyst_advisor_cost_today_usd", "Advisor spend today, from the API's reported usage", spent or 0.0),
        _gauge("catalyst_advisor_reserved_today_usd", "Advisor budget held by consults in flight", reserved or 0.0),
    ]


def trading_state_families(conn: Connection, m: Moment) -> list[Metric]:
    """The trading state in force (REDUCING lapses at the next market day, as the guard reads it)."""
    from catalyst.core.risk import GuardState
    from catalyst.entries import STATE_KEY

    value = conn.scalar(select(TradingState.value).where(TradingState.key == STATE_KEY))
    state = GuardState.parse(value).effective(m.day).state.value
    family = GaugeMetricFamily("catalyst_trading_state", "1 for the trading state in force (ACTIVE: entries "
                               "allowed; REDUCING: no new entries today; HALTED: until resumed)", labels=["state"])
    for name in TRADING_STATES:
        family.add_metric([name], 1 if name == state else 0)
    return [family]
