"""Structured logs: one JSON object per event, with secrets redacted before anything is written."""

from __future__ import annotations

import logging
import re
import sys

import structlog

_SECRET_KEY = re.compile(r"(secret|api_key|apikey|password|token|authorization)", re.I)
_SECRET_VALUE = re.compile(r"(sk-ant-[\w-]+|(?<=://)[^:/@\s]+:[^@/\s]+(?=@))")


def redact(_logger, _method, event_dict: dict) -> dict:
    """Drop values of secret-looking keys and mask credentials embedded in URLs or strings."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEY.search(key) and key != "event":
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = _SECRET_VALUE.sub("***", value)
    return event_dict


PERSISTED_LEVELS = frozenset({"warning", "error", "critical"})


def persist_to_agent_logs(_logger, method: str, event_dict: dict) -> dict:
    """Warnings and errors also go to ``agent_logs`` so operators can query them; never fatal."""
    if method not in PERSISTED_LEVELS:
        return event_dict
    try:
        from datetime import UTC, datetime

        from catalyst.db.engine import session_scope
        from catalyst.db.models import AgentLog

        context = {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                   for k, v in event_dict.items() if k not in ("event", "level", "timestamp", "service")}
        with session_scope() as s:
            s.add(AgentLog(timestamp=datetime.now(UTC), level=method.upper(), event=str(event_dict.get("event"))[:64],
                           service=event_dict.get("service"), context=context))
    except Exception:  # the log line itself still goes out; the table is a convenience
        pass
    return event_dict


def configure_logging(level: str = "INFO", service: str | None = None, persist: bool = True) -> None:
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if persist:
        processors.append(persist_to_agent_logs)
    renderer = structlog.dev.ConsoleRenderer(colors=False) if sys.__stderr__.isatty() else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping().get(level.upper(), 20)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__),  # not Celery's redirected stderr
        cache_logger_on_first_use=False,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)
