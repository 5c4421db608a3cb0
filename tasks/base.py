"""What every Catalyst task shares: clear failures for bad input, counted errors, structured logs."""

from __future__ import annotations

import inspect

import structlog
from celery import Task

from catalyst.db.engine import session_scope
from catalyst.core.domain import BadInput
from catalyst.positions import ExitRefused
from catalyst.records import bump

log = structlog.get_logger("catalyst.tasks")
_signatures: dict[type, inspect.Signature] = {}


def run_signature(task) -> inspect.Signature:
    """The signature of a task's ``run``, worked out once per task class (every message of it is checked)."""
    kind = type(task)
    if kind not in _signatures:
        _signatures[kind] = inspect.signature(task.run)
    return _signatures[kind]


class CatalystTask(Task):
    """Bad input fails the task once, with its message, without a retry or a traceback."""

    abstract = True
    throws = (BadInput, ExitRefused)
    typing = False  # malformed args become BadInput below, not a TypeError before we can explain

    def __call__(self, *args, **kwargs):
        try:
            run_signature(self).bind(*args, **kwargs)
        except TypeError as exc:
            detail = str(exc) if len(str(exc)) <= 120 else f"{str(exc)[:117]}..."  # a kwarg's name can be huge
            raise BadInput(f"{self.name}: malformed arguments: {detail}") from None
        return super().__call__(*args, **kwargs)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        event = "task_rejected" if isinstance(exc, BadInput) else "task_failed"
        log.error(event, task=self.name, task_id=task_id, error=str(exc), error_type=type(exc).__name__)
        try:
            with session_scope() as s:
                bump(s, self.request.hostname, errors=1)
        except Exception:  # counting must never mask the original failure
            log.warning("error_count_failed", task=self.name)

