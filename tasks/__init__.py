"""Celery tasks: thin shells that load state, call the core, act through adapters and record.

Every task is importable from here for manual dispatch (``from tasks import scan_market``;
``scan_market.delay()``). The submodules are imported lazily, on first use of a name, so that
``import tasks.base`` (or a worker importing ``tasks.trading`` through ``catalyst.celery``'s
``include``) never drags in the Celery app half-way through its own import.
"""

from __future__ import annotations

import importlib

# task object name -> submodule that defines it (one entry per registered ``catalyst.*`` task)
_HOME = {
    "scan_market": "tasks.trading",
    "evaluate_candidates": "tasks.trading",
    "enter_position": "tasks.trading",
    "monitor_position": "tasks.monitoring",
    "exit_position": "tasks.monitoring",
    "check_risk": "tasks.maintenance",
    "reconcile": "tasks.maintenance",
    "heartbeat": "tasks.maintenance",
    "prune": "tasks.maintenance",
    "deliver_notification": "tasks.notifications",
    "daily_summary": "tasks.notifications",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    task = getattr(importlib.import_module(home), name)
    globals()[name] = task  # later look-ups skip this hook
    return task


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
