"""Operator alerts: always to the log and ``agent_logs``; to a webhook and/or e-mail when configured.

STUB (issue 9, being built): today it only logs. The signature is the contract callers use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog

log = structlog.get_logger("catalyst.notify")


def notify(event: str, severity: str, title: str, text: str, *, context: dict[str, Any] | None = None,
           dedupe_key: str | None = None, occurred_at: datetime | None = None) -> int | None:
    """Record an alert and queue its delivery; never raises and never waits on a receiver.

    ``severity`` is info | warning | critical. ``dedupe_key`` makes a fact alert once however
    often it is raised (``emergency_stop:2026-12-04``). Returns the notification's id, if recorded.
    """
    log.info("notification", notify_event=event, severity=severity, title=title, **(context or {}))
    return None
