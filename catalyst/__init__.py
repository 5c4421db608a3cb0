"""Catalyst: event-driven trading automation on Celery, Redis and PostgreSQL.

The package root stays import-light (no Celery, no database) so the pure core can be
used on its own. The Celery application lives in :mod:`catalyst.celery`, which is what
``celery -A catalyst worker`` finds.
"""

__version__ = "0.1.0"
