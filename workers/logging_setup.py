"""Logging in Celery processes: task context on every line, Celery's and Flower's records as structlog's, agent_logs
written off the task's path.

- ``task_prerun`` binds ``task_id``, ``task``, ``worker`` and the position/cycle a task concerns to structlog's
  context variables; ``task_postrun`` puts back exactly what was there before, so nothing leaks into the next task
  (lines of Celery's own loggers logged during the task carry them too: they share the processors).
- ``setup_logging`` is answered here, so Celery configures no logging of its own: its records (and kombu's, and every
  library's) go through the root handler of ``catalyst.logs.route_stdlib_logging``, in the ``LOG_FORMAT`` renderer.
- A routine monitor check logs one line of its own (``position_checked``, with its outcome); Celery's "received"
  line for it, and its "succeeded" line after a hold or an exit, are dropped unless ``LOG_LEVEL=DEBUG`` (at 10,000
  positions they were 20,000 lines a minute saying the same thing). Every other outcome (redrive, blocked, closed,
  skipped), failure, retry and rejection is still logged by Celery.
- Worker, pool children and beat hand ``agent_logs`` rows to a background thread (``use_background_writer``); a pool
  child starts its own after the fork and writes what it queued before it ends.
- ``celery flower``: the same renderer for Flower's and tornado's records, and one ``http_request`` line per request
  (Flower itself turns tornado's access log off unless ``--debug``).
"""

from __future__ import annotations

import logging
import re
import sys

import structlog
from celery import signals
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

from catalyst.logs import configure_logging, flush_agent_logs, route_stdlib_logging, use_background_writer

log = structlog.get_logger("catalyst.http")

TASK_KEYS = ("task_id", "task", "worker", "position_id", "cycle_id", "notification_id", "symbol")
_ID_ARGS = ("position_id", "cycle_id", "notification_id")
_DIGITS = re.compile(r"[0-9]{1,10}")
_TICKER = re.compile(r"[A-Za-z0-9.\-]{1,16}")
_bound: dict[str, dict] = {}  # task id -> the context tokens its prerun set (for an exact reset)
# A routine task, and the results (as Celery's saferepr writes them) after which it has logged its own line.
ROUTINE_TASKS = {"catalyst.monitor_position": frozenset({"'hold'", "'exit'", "'exit_dry_run'"})}
_CELERY_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")  # who logs those two lines


class RoutineTaskLines(logging.Filter):
    """Drops Celery's "received" line of a routine task, and its "succeeded" line when the task's own line said
    what it found (a check that held or exited: ``position_checked``), unless the root logger is at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg is not LOG_RECEIVED and record.msg is not LOG_SUCCESS:
            return True
        data = getattr(record, "data", None)
        said_itself = ROUTINE_TASKS.get(data.get("name")) if isinstance(data, dict) else None
        if said_itself is None or (record.msg is LOG_SUCCESS and data.get("return_value") not in said_itself):
            return True
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_routine_task_lines() -> None:
    """Install :class:`RoutineTaskLines` on the two Celery loggers (once)."""
    for name in _CELERY_TASK_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RoutineTaskLines) for f in logger.filters):
            logger.addFilter(RoutineTaskLines())


def _level() -> str:
    try:
        from catalyst.settings import get_settings

        return get_settings().log_level
    except Exception:  # noqa: BLE001 - check_startup reports bad settings; log at the default meanwhile
        return "INFO"


def _arguments(task, args, kwargs) -> dict:
    """The task's arguments by name (positional ones too), or only the keyword ones when they do not bind."""
    from tasks.base import run_signature

    try:
        return dict(run_signature(task).bind_partial(*(args or ()), **(kwargs or {})).arguments)
    except (TypeError, ValueError):
        return dict(kwargs or {})


def task_context(task, task_id: str | None, args, kwargs) -> dict:
    """What a task's log lines carry: its id, name, worker and the position/cycle it concerns.

    Arguments come from a message anyone with Redis access can write: an id is taken only when it looks like one
    (an int or ASCII digits), a symbol only when it looks like a ticker; the task itself refuses the rest.
    """
    context = {"task_id": task_id, "task": getattr(task, "name", None),
               "worker": getattr(getattr(task, "request", None), "hostname", None)}
    arguments = _arguments(task, args, kwargs)
    for name in _ID_ARGS:
        value = arguments.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            context[name] = value
        elif isinstance(value, str) and _DIGITS.fullmatch(value):
            context[name] = int(value)
    symbol = arguments.get("symbol")
    if isinstance(symbol, str) and _TICKER.fullmatch(symbol):
        context["symbol"] = symbol.upper()
    return {k: v for k, v in context.items() if v is not None}


@signals.task_prerun.connect
def _bind_task_context(sender=None, task_id=None, task=None, args=None, kwargs=None, **_):
    if not _bound:  # no task running in this process: whatever a lost postrun left behind goes first
        structlog.contextvars.unbind_contextvars(*TASK_KEYS)
    _bound[task_id] = structlog.contextvars.bind_contextvars(**task_context(task or sender, task_id, args, kwargs))


@signals.task_postrun.connect
def _unbind_task_context(sender=None, task_id=None, **_):
    tokens = _bound.pop(task_id, None)
    if tokens is not None:
        structlog.contextvars.reset_contextvars(**tokens)
    if not _bound:
        structlog.contextvars.unbind_contextvars(*TASK_KEYS)


@signals.celeryd_init.connect
def _worker_writes_in_background(**_):
    use_background_writer()  # before worker_init: the start-up checks' own warnings already go to the thread


@signals.setup_logging.connect
def _route_celery_logging(**_):
    """Answering this signal stops Celery configuring logging (and redirecting stdout) itself."""
    use_background_writer()
    route_stdlib_logging(_level())
    quiet_routine_task_lines()
    return True


@signals.beat_init.connect
def _beat_writes_in_background(**_):
    use_background_writer()


@signals.worker_process_shutdown.connect
def _flush_child(**_):
    flush_agent_logs()  # a pool child ends with os._exit: atexit never runs there


# --- Flower ----------------------------------------------------------------------------------------------------------

def log_http_request(handler) -> None:
    """tornado's ``log_function``: one structured line per request (path without its query, no headers)."""
    status = handler.get_status()
    method = log.info if status < 400 else log.warning if status < 500 else log.error
    method("http_request", status=status, method=handler.request.method, path=handler.request.path,
           remote_ip=handler.request.remote_ip, duration_ms=round(1000.0 * handler.request.request_time(), 2))


def running_flower(argv: list[str] | None = None) -> bool:
    return "flower" in (sys.argv if argv is None else argv)[1:]


def setup_flower_logging() -> None:
    """Before tornado parses its options: with a root handler present, tornado adds none of its own."""
    configure_logging(_level(), "flower", persist=False)  # Flower answers without the database
    route_stdlib_logging(_level(), persist=False)
    try:
        from flower.urls import settings as flower_settings
    except ImportError:
        return
    flower_settings["log_function"] = log_http_request


if running_flower():
    setup_flower_logging()
