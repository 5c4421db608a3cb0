"""The worker's broker connection: a lost Redis never ends the worker, and a returning one is used at once.

**Surviving the loss.** When Redis dies while the worker holds an unacknowledged message (any
task in progress: every task acks late), Celery first ``collect()``s the broken connection, which
detaches kombu's Redis transport from it, and then ``close()``s it; closing tries to put the
unacked message back, the detached transport has no address to connect to, and the
``AttributeError`` that follows is not a connection error, so Celery calls it unrecoverable and
the worker exits. Here closing a connection that is already lost swallows that error: the
message cannot be restored into a dead Redis anyway (Redis's own visibility timeout redelivers it
if Redis kept it), and the task it belongs to is redriven by the next monitor check.

**Coming back quickly.**
Celery's consumer reconnects with kombu's defaults (2 s, +2 s per attempt, up to 30 s): after a
30-second Redis outage the worker could sleep another 12-18 s before trying again, and the
monitor slots beat sent in that time expired unread. The cap here is a quarter of a check
interval (in wall seconds), between ``FLOOR`` and ``CEILING``: a worker waiting for Redis retries
every few seconds at most and is consuming again within one interval of Redis answering.
"""

from __future__ import annotations

import functools

import structlog
from celery.worker.consumer import Consumer

log = structlog.get_logger("catalyst.worker")

FLOOR = 0.5  # seconds: never hammer a dead server faster than twice a second
CEILING = 5.0  # seconds: even with hour-long check intervals, a returning Redis is noticed quickly


def reconnect_backoff_max() -> float:
    """A quarter of a monitor check interval in wall seconds, clamped to [FLOOR, CEILING]."""
    from catalyst.runtime import get_runtime

    rt = get_runtime()
    quarter = rt.clock.wall_seconds(rt.settings.monitor_check_interval) / 4
    return max(FLOOR, min(CEILING, quarter))


def _close_lost(connection):
    """``connection.close`` for a connection whose broker is gone: never raises what Celery cannot recover."""
    close = connection.close

    def close_lost():
        try:
            close()
        except AttributeError as exc:  # kombu's detached transport (see the module docstring)
            log.warning("broker_connection_close_incomplete", error=str(exc))

    return close_lost


class QuickReconnect(Consumer):
    """Celery's consumer, surviving a lost Redis with its reconnect back-off capped (see the module docstring)."""

    def on_connection_error_after_connected(self, exc):
        if self.connection is not None:
            self.connection.close = _close_lost(self.connection)
        return super().on_connection_error_after_connected(exc)

    def ensure_connected(self, conn):
        cap = reconnect_backoff_max()
        conn.ensure_connection = functools.partial(conn.ensure_connection, interval_start=FLOOR,
                                                   interval_step=FLOOR, interval_max=cap)
        return super().ensure_connected(conn)
