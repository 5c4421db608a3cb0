"""Poison messages: spot a task message that would crash the worker, and leave a trace of every drop.

Celery 5.7 trusts the shape of a task message. ``Request.__init__`` unpacks the body as
``args, kwargs, embed``, reads ``headers['id']`` and hands a falsy ``eta`` to a datetime helper;
``execute_using_pool`` unpacks ``timelimit``; ``Request.revoked`` iterates ``stamped_headers``;
``Consumer.create_task_handler`` hashes the ``task`` header. Any of those raising escapes the
consumer: ``Unrecoverable error`` (or, for a ``KeyError``, an endless reconnect loop, since
kombu's Redis transport counts ``KeyError`` as a connection error), with the message restored to
the head of its queue for the next worker. :func:`defect` names what is wrong before Celery
looks, and :class:`RejectsPoison` drops such a message. What Celery already drops by itself
(undecodable or disallowed content, unknown task names, messages naming no task) it still
handles; the mixin only adds the trace. Queue entries too broken to be a kombu message at all
are workers/transport.py's.
"""

from __future__ import annotations

import math
from collections.abc import Container
from datetime import UTC, datetime

import structlog
from kombu.exceptions import ContentDisallowed, DecodeError

log = structlog.get_logger("catalyst.worker")

MAX_ID = 255  # a Celery task id is a uuid; anything near this long is not ours
MAX_DETAIL = 200  # every string recorded about a rejected message is cut to this
EMBED_LISTS = ("callbacks", "errbacks", "chain")


def defect(message, known_tasks: Container[str]) -> str | None:
    """Why ``message`` would break Celery's task handling, or ``None`` (sound, or Celery copes)."""
    headers = message.headers
    if not isinstance(headers, dict):
        return None  # Celery rejects it as an unknown message format
    if "task" in headers:
        return _protocol2_defect(message, headers, known_tasks)
    return _protocol1_defect(message, headers, known_tasks)


def _protocol2_defect(message, headers: dict, known_tasks: Container[str]) -> str | None:
    task = headers["task"]
    if not _short_text(task):
        return f"task header is not a task name: {_clip(repr(task), 60)}"
    if not _short_text(headers.get("id")):
        return "id header is missing or not a task id"
    if task not in known_tasks:
        return None  # Celery rejects unknown task names itself
    problem = _headers_defect(headers)
    if problem:
        return problem
    body = _payload(message)
    if body is _UNDECODABLE:
        return None  # Celery rejects it with its decode or content-type error
    if isinstance(body, _Broken):
        return body.reason
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        return f"body is not [args, kwargs, embed]: {_shape(body)}"
    args, kwargs, embed = body
    return _call_defect(args, kwargs) or _embed_defect(embed)


def _protocol1_defect(message, headers: dict, known_tasks: Container[str]) -> str | None:
    """A message without a ``task`` header: Celery decodes the body and takes it as protocol 1."""
    body = _payload(message)
    if body is _UNDECODABLE or isinstance(body, _Broken) or not isinstance(body, dict) or "task" not in body:
        return None  # Celery reports it as undecodable or an unknown message format
    task = body["task"]
    if not _short_text(task):
        return f"task field is not a task name: {_clip(repr(task), 60)}"
    if not _short_text(body.get("id")):  # read even for an unknown task, when Celery reports it
        return "id field is missing or not a task id"
    if task not in known_tasks:
        return None
    # Celery reads the headers from the body alone (protocol 1) or the body overlaid with the headers (hybrid).
    return (_headers_defect(body) or _headers_defect({**body, **headers})
            or _call_defect(body.get("args", ()), body.get("kwargs", {}))
            or _embed_defect({key: body.get(key) for key in ("callbacks", "errbacks", "chord")}))


def _headers_defect(headers: dict) -> str | None:
    """The headers the worker's main process reads, each of the type Celery assumes."""
    for key in ("shadow", "root_id", "parent_id", "group"):
        if headers.get(key) is not None and not isinstance(headers[key], str):
            return f"{key} header is not a string"
    for key in ("eta", "expires"):  # Celery parses a string itself, but a falsy non-None value crashes it
        if headers.get(key) is not None and not (isinstance(headers[key], str) and headers[key]):
            return f"{key} header is not a timestamp"
    limits = headers.get("timelimit")
    if limits is not None and not (isinstance(limits, (list, tuple)) and len(limits) == 2
                                   and all(v is None or _number(v) for v in limits)):
        return "timelimit header is not [hard, soft]"
    retries = headers.get("retries")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        return "retries header is not an integer"
    stamped = headers.get("stamped_headers")
    if stamped is not None and not (isinstance(stamped, (list, tuple)) and all(isinstance(s, str) for s in stamped)):
        return "stamped_headers header is not a list of names"
    if headers.get("stamps") is not None and not isinstance(headers["stamps"], dict):
        return "stamps header is not a mapping"
    return None


def _call_defect(args, kwargs) -> str | None:
    if not isinstance(args, (list, tuple)):
        return f"args is not a list: {_shape(args)}"
    if not isinstance(kwargs, dict):
        return f"kwargs is not a mapping: {_shape(kwargs)}"
    return None


def _embed_defect(embed) -> str | None:
    if embed is None:
        return None
    if not isinstance(embed, dict):
        return f"embed is not a mapping: {_shape(embed)}"
    for key in EMBED_LISTS:
        if embed.get(key) is not None and not isinstance(embed[key], (list, tuple)):
            return f"embed {key} is not a list"
    if embed.get("chord") is not None and not isinstance(embed["chord"], dict):
        return "embed chord is not a mapping"
    return None


class _Broken:
    def __init__(self, reason: str) -> None:
        self.reason = reason


_UNDECODABLE = object()


def _payload(message):
    """The decoded body (kombu caches it for Celery), or why it cannot be had."""
    try:
        return message.payload
    except (DecodeError, ContentDisallowed):
        return _UNDECODABLE
    except Exception as exc:  # Celery would meet the same error outside its handlers
        return _Broken(f"body cannot be decoded: {type(exc).__name__}")


def _short_text(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shape(value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _clip(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(message) -> dict[str, str | None]:
    """Bounded, body-free facts about a message, for logs and ``activity_log``."""
    headers = getattr(message, "headers", None)
    delivery = getattr(message, "delivery_info", None)
    return facts(headers, (delivery or {}).get("routing_key") if isinstance(delivery, dict) else None,
                 getattr(message, "content_type", None))


def facts(headers, queue, content_type) -> dict[str, str | None]:
    headers = headers if isinstance(headers, dict) else {}

    def text(value):
        return None if value is None else _clip(value if isinstance(value, str) else repr(value), 100)

    return {"task": text(headers.get("task")), "task_id": text(headers.get("id")), "queue": text(queue),
            "content_type": text(content_type)}


def record_rejection(kind: str, reason: str, worker: str | None, message_facts: dict) -> None:
    """Log the dropped message and write its ``activity_log`` row; a database outage only logs."""
    details = {"kind": kind, "reason": _clip(reason), "worker": worker, **message_facts}
    log.error("message_rejected", **details)
    try:
        from catalyst.db.engine import session_scope
        from catalyst.records import bump, record_activity

        with session_scope() as s:
            record_activity(s, "message_rejected", _market_now(), **details)
            bump(s, worker, errors=1)
    except Exception as exc:  # the message is dropped either way; the log line above is the trace
        log.warning("message_rejection_unrecorded", task_id=details["task_id"], error=_clip(str(exc), 120))


def _market_now() -> datetime:
    try:
        from catalyst.runtime import get_runtime

        return get_runtime().clock.now()
    except Exception:
        return datetime.now(UTC)


class RejectsPoison:
    """Consumer mixin: screen every task message before Celery's handler, and trace every drop.

    Screening happens ahead of ``strategies[task]`` because that lookup and every task's
    strategy (Celery's built-in tasks included, not only ours) can raise on a malformed message.
    """

    def create_task_handler(self, *args, **kwargs):
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message):
            try:
                reason = defect(message, self.strategies)
            except Exception as exc:  # nothing has touched the message yet: dropping it is safe
                reason = f"message cannot be inspected: {type(exc).__name__}"
            if reason is not None:
                return self.on_poison_message(message, reason)
            return handle(message)

        return on_task_received

    def on_poison_message(self, message, reason: str) -> None:
        """Drop it (no requeue: it would only come back to the head of its queue) and say so."""
        from celery import signals
        from celery.exceptions import InvalidTaskError
        from celery.worker.consumer.consumer import logger

        try:
            message.reject_log_error(logger, self.connection_errors, requeue=False)
            signals.task_rejected.send(sender=self, message=message, exc=InvalidTaskError(reason))
        finally:
            self._record(message, "malformed", reason)

    # Messages Celery already drops by itself: keep its handling, add the trace.

    def on_decode_error(self, message, exc):
        try:
            return super().on_decode_error(message, exc)
        finally:
            self._record(message, "undecodable", f"{type(exc).__name__}: {exc}")

    def on_unknown_message(self, body, message):
        try:
            return super().on_unknown_message(body, message)
        finally:
            self._record(message, "unknown_format", "no task named in headers or body")

    def on_unknown_task(self, body, message, exc):
        try:
            return super().on_unknown_task(body, message, exc)
        finally:
            self._record(message, "unknown_task", "task is not registered")

    def on_invalid_task(self, body, message, exc):
        try:
            return super().on_invalid_task(body, message, exc)
        finally:
            self._record(message, "invalid", f"{type(exc).__name__}: {exc}")

    def _record(self, message, kind: str, reason: str) -> None:
        record_rejection(kind, reason, self.hostname, describe(message))
