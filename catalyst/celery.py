"""The Celery application (``celery -A catalyst worker|beat`` finds ``app`` here)."""

from celery import Celery

app = Celery("catalyst")
app.config_from_object("celeryconfig")
app.conf.include = ["tasks.trading", "tasks.monitoring", "tasks.maintenance"]

import workers.logging_setup  # noqa: E402,F401  (task context on log lines, Celery's records as JSON, agent_logs)
import workers.signals  # noqa: E402,F401  (worker/beat start-up checks, heartbeats, logging)
