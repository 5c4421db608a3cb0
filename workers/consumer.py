"""Catalyst's worker consumer (``worker_consumer`` in celeryconfig): Celery's, plus our behaviours.

Each behaviour lives in its own module as a mixin or ``Consumer`` subclass and is listed in the
bases below; add a new one there rather than growing an existing one.
"""

from workers.poison import RejectsPoison
from workers.reconnect import QuickReconnect


class CatalystConsumer(RejectsPoison, QuickReconnect):
    """Reconnects quickly after a broker outage; drops poison messages with a trace instead of dying."""
