"""`catalyst shell`: a Python prompt with the app, the database, the runtime, the tasks and the models loaded.

For manual dispatch and inspection by an operator: ``scan_market.delay()`` queues a task by object,
``app.send_task("catalyst.scan_market")`` by name, ``scan_market.apply()`` runs it here and now.
Piped input (``echo '...' | catalyst shell``) runs as a script, like ``python < file``.
"""

from __future__ import annotations

import code
import sys
import traceback
from typing import Any

import tasks as task_package


def namespace() -> dict[str, Any]:
    """What the prompt starts with (the caller has already checked the settings and the schema)."""
    from sqlalchemy import func, select

    from catalyst.celery import app
    from catalyst.db import models
    from catalyst.db.engine import session_scope
    from catalyst.runtime import get_runtime

    rt = get_runtime()
    ns: dict[str, Any] = {"app": app, "rt": rt, "settings": rt.settings, "get_runtime": get_runtime,
                          "session_scope": session_scope, "select": select, "func": func, "models": models}
    ns.update({name: getattr(task_package, name) for name in task_package.__all__})
    ns.update(model_classes(models))
    return ns


def model_classes(models) -> dict[str, type]:
    """Every mapped table class of :mod:`catalyst.db.models`, by its class name."""
    return {mapper.class_.__name__: mapper.class_ for mapper in models.Base.registry.mappers}


def banner(ns: dict[str, Any]) -> str:
    rt = ns["rt"]
    task_names = ", ".join(task_package.__all__)
    model_names = ", ".join(sorted(model_classes(ns["models"])))
    return "\n".join([
        f"Catalyst shell: broker {rt.settings.broker}, market data {rt.market_data.name}, "
        f"market {rt.settings.market}, clock {rt.clock.now().astimezone(rt.calendar.tz):%Y-%m-%d %H:%M:%S %Z}",
        "  app            the Celery app (app.send_task('catalyst.scan_market') dispatches by name)",
        "  rt, settings   the runtime (rt.broker, rt.market_data, rt.clock, rt.calendar) and its settings",
        "  session_scope  with session_scope() as s: s.scalars(select(Position)).all()",
        "  select, func   from SQLAlchemy; models = catalyst.db.models",
        f"  tasks          {task_names}",
        "                 (.delay() queues for a worker; .apply() runs here, now)",
        f"  models         {model_names}",
    ])


def run(command: str | None = None, plain: bool = False) -> int:
    """Open the prompt (or run ``command``, or piped input); the exit code for the CLI."""
    ns = namespace()
    if command is not None:
        return _execute(command, ns, "<catalyst shell -c>")
    if not sys.stdin.isatty():
        return _execute(sys.stdin.read(), ns, "<stdin>")
    if not plain:
        try:
            from IPython import start_ipython
        except ImportError:
            pass
        else:
            print(banner(ns))
            start_ipython(argv=["--no-banner"], user_ns=ns)
            return 0
    code.interact(banner=banner(ns) + "\n(Ctrl-D to leave)", local=ns, exitmsg="")
    return 0


def _execute(source: str, ns: dict[str, Any], filename: str) -> int:
    """A script's way: its output, its traceback if it fails, and an exit code that says which."""
    try:
        exec(compile(source, filename, "exec"), ns)  # noqa: S102 - the operator's own code, by design
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:  # noqa: BLE001 - shown as Python would (from the operator's code on), then exit 1
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        return 1
    return 0
