"""Structured logs: one JSON object (or one console line) per event, with secrets redacted before anything is written.

Two paths lead to the same renderer: structlog events (Catalyst's own) and stdlib ``logging`` records
(Celery, kombu, Flower/tornado, libraries), the latter through a ``ProcessorFormatter`` on the root
logger's handler (``route_stdlib_logging``). ``LOG_FORMAT`` (json | console | auto) picks the renderer.

Warnings and errors are also kept in ``agent_logs``. In Celery processes the rows go through a bounded
in-memory queue to a daemon thread (``AgentLogWriter``), so a slow or stopped PostgreSQL never holds up
the log call, and so never a task; elsewhere (CLI, tests) they are written in the caller's thread, with
the same short timeouts, so a command's rows are there when it returns.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import queue
import re
import sys
import threading
from datetime import UTC, datetime

import structlog

_SECRET_KEY = re.compile(r"(secret|api_key|apikey|password|token|authorization|basic_auth)", re.I)
_SECRET_VALUE = re.compile(r"(sk-ant-[\w-]+|(?<=://)[^:/@\s]*:[^@/\s]+(?=@))")  # redis://:pw@host too
_SECRET_QUERY = re.compile(r"(?i)\b(api_?key|token|secret|password)=[^&\s]+")  # ?apikey=...&token=...
_MIN_SECRET_LENGTH = 6  # shorter "secrets" would mask ordinary words everywhere
_known_secrets: tuple[str, ...] = ()
_ROOT_HANDLER_NAME = "catalyst-structlog"


# --- redaction ---------------------------------------------------------------------------------------------------

def known_secrets_from_settings() -> tuple[str, ...]:
    """The configured secret values themselves (keys, passwords, Flower's credentials), longest first.

    Pattern-based masking cannot recognise an Alpaca key id; the exact values can be matched anywhere.
    """
    values: set[str] = set()
    try:
        from sqlalchemy.engine import make_url

        from catalyst.settings import get_settings

        s = get_settings()
        values |= {s.alpaca_api_key, s.alpaca_secret_key, s.anthropic_api_key, s.smtp_password}
        for url in (s.database_url, s.redis_url):
            if url:
                try:
                    values.add(make_url(url).password)
                except Exception:  # noqa: BLE001 - a malformed URL is reported elsewhere
                    pass
    except Exception:  # noqa: BLE001 - no settings yet: the patterns still apply
        pass
    auth = os.environ.get("FLOWER_BASIC_AUTH")
    if auth:
        for pair in auth.split(","):
            values |= {pair, pair.partition(":")[2]}
    return tuple(sorted((str(v) for v in values if v and len(str(v)) >= _MIN_SECRET_LENGTH), key=len, reverse=True))


def _scrub_text(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return _SECRET_QUERY.sub(r"\1=***", _SECRET_VALUE.sub("***", text))


def _text(value) -> str:
    """``str(value)``, bytes decoded, and never an error (a driver's exception may fail to render)."""
    try:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode(errors="replace")
        return str(value)
    except Exception:  # noqa: BLE001 - the line must still go out
        return f"<{type(value).__name__}>"


def _scrub(value, depth: int = 0):
    """Mask secrets in a value, descending into dicts, lists, tuples and sets (a context value must not smuggle a
    key out). Anything else becomes text first: renderers would stringify it after redaction, secrets and all."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _scrub_text(value)
    if depth <= 4 and isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and _SECRET_KEY.search(k) else _scrub(v, depth + 1)
                for k, v in value.items()}
    if depth <= 4 and isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v, depth + 1) for v in value]
    return _scrub_text(_text(value))


def redact(_logger, _method, event_dict: dict) -> dict:
    """Drop values of secret-looking keys and mask credentials embedded in URLs, strings and nested values."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEY.search(key) and key != "event":
            event_dict[key] = "***"
        elif key not in ("_record", "_from_structlog", "exc_info"):
            event_dict[key] = _scrub(value)
    return event_dict


# --- agent_logs ----------------------------------------------------------------------------------------------------

PERSISTED_LEVELS = frozenset({"warning", "error", "critical"})
QUEUE_CAPACITY = 1000  # rows waiting for the database; beyond this they are dropped and counted
BATCH_SIZE = 200  # rows per INSERT
CONNECT_TIMEOUT = 2  # seconds: the writer's own, shorter than the tasks' engine
STATEMENT_TIMEOUT_MS = 3000
RETRY_MIN, RETRY_MAX = 0.5, 5.0  # seconds between attempts while the database does not answer
EXIT_FLUSH_SECONDS = 2.0

log = structlog.get_logger("catalyst.logs")


def _storable(value):
    """A JSON value PostgreSQL accepts: no NaN/infinity (invalid JSON), no NUL character (refused in text)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _text(value).replace("\x00", "")


def agent_log_row(method: str, event_dict: dict) -> dict:
    """The ``agent_logs`` row for one event: level, event, service and every other key as context (values a
    database would refuse are cleaned here, so one odd value cannot cost the row, or its batch)."""
    context = {_storable(k): _storable(v) for k, v in event_dict.items()
               if k not in ("event", "level", "timestamp", "service") and not str(k).startswith("_")}
    service = event_dict.get("service")
    return {"timestamp": datetime.now(UTC), "level": method.upper(),
            "event": _storable(event_dict.get("event"))[:64],
            "service": None if service is None else _storable(service), "context": context}


def _is_outage(exc: BaseException) -> bool:
    """The database did not answer (retry the rows later), as opposed to refusing what was sent (drop the row)."""
    from sqlalchemy import exc as sa_exc

    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                            ConnectionError, TimeoutError))


class _RowStore:
    """INSERTs rows on an engine of its own (short connect and statement timeouts, one connection)."""

    def __init__(self) -> None:
        self._engine = None
        self._url: str | None = None

    def _engine_for(self, url: str):
        if self._engine is None or url != self._url:
            from sqlalchemy import create_engine
            from sqlalchemy.engine import make_url

            if self._engine is not None:
                self._engine.dispose()
            if make_url(url).get_backend_name() == "sqlite":
                args = {"timeout": CONNECT_TIMEOUT, "check_same_thread": False}
            else:
                args = {"connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
                        "tcp_user_timeout": STATEMENT_TIMEOUT_MS + 2000}
            self._engine = create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True, connect_args=args)
            self._url = url
        return self._engine

    def write(self, rows: list[dict]) -> None:
        """One transaction; its statement timeout is set inside it (poolers refuse startup ``options``, and
        those would replace any ``options`` of DATABASE_URL's own)."""
        from sqlalchemy import insert, text

        from catalyst.db.models import AgentLog
        from catalyst.settings import get_settings

        with self._engine_for(get_settings().sqlalchemy_url).begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SET LOCAL statement_timeout = {int(STATEMENT_TIMEOUT_MS)}"))
            conn.execute(insert(AgentLog), rows)

    def forget(self) -> None:
        """After a fork: never touch the parent's connection (it is the parent's socket)."""
        if self._engine is not None:
            self._engine.dispose(close=False)
        self._engine, self._url = None, None


class AgentLogWriter:
    """A bounded queue of rows drained by a daemon thread, in batches; the caller never waits.

    While the database does not answer, the thread keeps its current batch and retries with a
    back-off; new rows wait in the queue, and once it is full they are dropped and counted. The
    first batch written after drops is followed by one ``agent_logs_dropped`` warning with the count.
    """

    def __init__(self, write_rows, capacity: int = QUEUE_CAPACITY, batch_size: int = BATCH_SIZE,
                 retry_min: float = RETRY_MIN, retry_max: float = RETRY_MAX) -> None:
        self._write_rows = write_rows
        self._queue: queue.Queue = queue.Queue(capacity)
        self._batch_size = batch_size
        self._retry = (retry_min, retry_max)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropped = 0  # since the last report
        self.dropped_total = 0
        self.written_total = 0
        self.rejected_total = 0
        self._own_next: list[dict] = []  # a reject report, written with the next batch

    def submit(self, row: dict) -> bool:
        """Queue one row; False (and counted) when the queue is full. Never blocks."""
        self._ensure_started()
        try:
            self._queue.put_nowait(row)
            return True
        except queue.Full:
            with self._lock:
                self._dropped += 1
                self.dropped_total += 1
            return False

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every queued row to be written (or given up); True if so."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout)

    def stop(self, timeout: float) -> bool:
        """Best effort at exit: write what is queued within ``timeout``, then let the thread go."""
        flushed = self.flush(timeout) if self._thread is not None else True
        self._stopping.set()
        return flushed

    def _ensure_started(self) -> None:
        """Start the thread, or a new one if it died (it should not: its loop catches everything)."""
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    service = structlog.contextvars.get_contextvars().get("service")  # not a task's keys
                    self._thread = threading.Thread(target=self._run, args=(service,), name="agent-logs-writer",
                                                    daemon=True)
                    self._thread.start()

    def _next_batch(self) -> list[dict]:
        try:
            batch = [self._queue.get(timeout=1.0)]
        except queue.Empty:
            return []
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self, service: str | None) -> None:
        _thread_state.writer = True  # this thread's own lines are not queued: it adds their rows itself
        if service:
            structlog.contextvars.bind_contextvars(service=service)
        self._batch: list[dict] = []
        self._own: list[dict] = []  # the writer's own rows (outage, drops, rejects): never dropped for lack of room
        self._delay, self._failing = self._retry[0], False
        while not (self._stopping.is_set() and not self._batch and not self._own and self._queue.empty()):
            try:
                if not self._cycle():
                    return
            except Exception:  # noqa: BLE001 - a bug or an odd error must not end the thread: the rows in hand go
                self._give_up(self._batch)
                self._batch, self._own = [], []

    def _cycle(self) -> bool:
        """One attempt at the rows in hand; False when the thread should end (exiting while the database is down)."""
        self._batch = self._batch or self._next_batch()
        if not self._batch and not self._own:
            return True
        rows, rejected = self._batch + self._own, 0
        try:
            self._write_rows(rows)
        except Exception as exc:  # noqa: BLE001 - sorted below: an outage is retried, a refusal costs only its rows
            if _is_outage(exc):
                return self._wait_for_database(exc)
            rejected = self._write_singly(rows)
        self._done(self._batch)
        self.written_total += len(rows) - rejected
        self._batch, self._own, self._delay, self._failing = [], [], self._retry[0], False
        self._own, self._own_next = self._own_next + self._drop_report(), []
        return True

    def _wait_for_database(self, exc: Exception) -> bool:
        """The database is slow or down: keep the rows and retry after a back-off (the first time, say so)."""
        if not self._failing:
            self._failing = True
            self._own.append(self._note("agent_logs_unavailable", error=_first_line(exc),
                                        queued=self._queue.qsize() + len(self._batch)))
        if self._stopping.wait(self._delay):
            self._give_up(self._batch)
            return False
        self._delay = min(self._retry[1], self._delay * 2)
        return True

    def _write_singly(self, rows: list[dict]) -> int:
        """The database refused the batch for its content: each row alone, so a bad row costs only itself. The
        rows it still refuses are dropped and counted (``agent_logs_row_rejected``); an outage meanwhile is raised
        (the whole batch is retried later: rows already written may then appear twice)."""
        rejected, error = [], None
        for row in rows:
            try:
                self._write_rows([row])
            except Exception as exc:  # noqa: BLE001 - see above
                if _is_outage(exc):
                    raise
                rejected.append(row)
                error = exc
        if rejected:
            with self._lock:
                self.rejected_total += len(rejected)
            self._own_next = [self._note("agent_logs_row_rejected", rejected=len(rejected), error=_first_line(error),
                                         events=sorted({str(r.get("event")) for r in rejected})[:5])]
        return len(rejected)

    def _note(self, event: str, **fields) -> dict:
        """One line of the writer's own (a warning) and its agent_logs row."""
        log.warning(event, **fields)
        return agent_log_row("warning", {"event": event, **structlog.contextvars.get_contextvars(), **fields})

    def _done(self, batch: list[dict]) -> None:
        for _ in batch:
            self._queue.task_done()

    def _give_up(self, batch: list[dict]) -> None:
        """Exiting while the database is down: what is left is lost, and counted."""
        with self._lock:
            self._dropped += len(batch)
            self.dropped_total += len(batch)
        self._done(batch)

    def _drop_report(self) -> list[dict]:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        return [self._note("agent_logs_dropped", dropped=dropped, queue_capacity=self._queue.maxsize)] if dropped else []


def _first_line(exc: Exception) -> str:
    text = _text(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


_thread_state = threading.local()
_store = _RowStore()
_writer: AgentLogWriter | None = None  # None: rows are written in the caller's thread


def use_background_writer() -> AgentLogWriter:
    """From now on this process hands ``agent_logs`` rows to a daemon thread (Celery workers and beat)."""
    global _writer
    if _writer is None:
        _writer = AgentLogWriter(_store.write)
    return _writer


def background_writer() -> AgentLogWriter | None:
    return _writer


def flush_agent_logs(timeout: float = EXIT_FLUSH_SECONDS) -> bool:
    """Write what is queued, waiting at most ``timeout`` (at exit, at a pool child's end)."""
    return _writer.stop(timeout) if _writer is not None else True


def _after_fork_in_child() -> None:
    """A forked child (a pool process) starts its own thread on first use: the parent's did not survive the
    fork, its queued rows are the parent's to write, and its connection is the parent's socket."""
    global _writer, _write_lock
    _write_lock = threading.Lock()  # another thread of the parent may have held it at the fork: it never returns
    _store.forget()
    if _writer is not None:
        _writer = AgentLogWriter(_store.write)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(lambda: flush_agent_logs(EXIT_FLUSH_SECONDS))


def persist_to_agent_logs(_logger, method: str, event_dict: dict) -> dict:
    """Warnings and errors also go to ``agent_logs`` so operators can query them; never fatal, never waited for
    in a Celery process."""
    if method not in PERSISTED_LEVELS or getattr(_thread_state, "writer", False):
        return event_dict
    try:
        row = agent_log_row(method, event_dict)
        if _writer is not None:
            _writer.submit(row)
        else:
            _store.write([row])
    except Exception:  # noqa: BLE001 - the log line itself still goes out; the table is a convenience
        pass
    return event_dict


# --- configuration -------------------------------------------------------------------------------------------------

def log_format() -> str:
    """``json`` or ``console``: the ``LOG_FORMAT`` setting, ``auto`` meaning console on a terminal."""
    try:
        from catalyst.settings import get_settings

        chosen = get_settings().log_format
    except Exception:  # noqa: BLE001 - settings not readable (yet): the terminal decides
        chosen = os.environ.get("LOG_FORMAT", "auto").strip().lower()
    if chosen not in ("json", "console"):
        stream = sys.__stderr__
        chosen = "console" if stream is not None and stream.isatty() else "json"
    return chosen


_write_lock = threading.Lock()  # one line at a time on stderr; replaced in a forked child


class _LineWriter:
    """structlog's output: one write per line, under a module lock a forked child replaces (structlog's own
    per-file lock is inherited held when another thread was mid-write at the fork, and the child then hangs)."""

    def __init__(self, file) -> None:
        self._file = file

    def msg(self, message: str) -> None:
        with _write_lock:
            self._file.write(message + "\n")
            self._file.flush()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


def _renderer(fmt: str):
    if fmt == "console":  # tracebacks arrive as redacted text; never rich's, which shows local variables
        return structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    return structlog.processors.JSONRenderer(default=str)


_service: str | None = None  # this process's service name, for lines of threads that never bound it


def add_service(_logger, _method, event_dict: dict) -> dict:
    """Every line names its service, whichever thread logs it (context variables are per thread)."""
    if _service and "service" not in event_dict:
        event_dict["service"] = _service
    return event_dict


def _shared_processors(fmt: str) -> list:
    processors = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # tracebacks become text before redaction, in both formats
        redact,
    ]
    return processors


def configure_logging(level: str = "INFO", service: str | None = None, persist: bool = True) -> None:
    """Catalyst's own (structlog) events: redacted, optionally kept in ``agent_logs``, rendered per ``LOG_FORMAT``."""
    global _known_secrets, _service
    _known_secrets = known_secrets_from_settings()
    _service = service
    fmt = log_format()
    processors = _shared_processors(fmt)
    if persist:
        processors.append(persist_to_agent_logs)
    structlog.configure(
        processors=[*processors, _renderer(fmt)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping().get(level.upper(), 20)),
        # not Celery's redirected stderr; one write per line, so lines of two threads never interleave
        logger_factory=lambda *_args, stream=sys.__stderr__: _LineWriter(stream),
        cache_logger_on_first_use=False,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)


_LIBRARY_LOGGERS = frozenset({"celery", "kombu", "billiard"})


def persist_library_errors(logger, method: str, event_dict: dict) -> dict:
    """Celery's, kombu's and billiard's own errors (a lost broker, a crashed pool child) go to ``agent_logs`` too."""
    if method in ("error", "critical") and str(event_dict.get("logger", "")).split(".")[0] in _LIBRARY_LOGGERS:
        return persist_to_agent_logs(logger, method, event_dict)
    return event_dict


def route_stdlib_logging(level: str = "INFO", persist: bool = True) -> logging.Handler:
    """Send every stdlib ``logging`` record (Celery, kombu, tornado, libraries) through the same redaction and
    renderer as Catalyst's events: one handler on the root logger, replacing any earlier one of ours."""
    global _known_secrets
    _known_secrets = known_secrets_from_settings()
    fmt = log_format()
    chain = [structlog.stdlib.add_logger_name, *_shared_processors(fmt)]
    if persist:
        chain.append(persist_library_errors)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer(fmt)],
    )
    handler = logging.StreamHandler(sys.__stderr__)
    handler.set_name(_ROOT_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _ROOT_HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping().get(level.upper(), logging.INFO))
    return handler
