"""Celery configuration, derived from Catalyst's settings (REDIS_URL or the embedded broker).

JSON only (pickle refused), exits on their own queue with late acks and prefetch 1,
monitor results ignored, broker reconnects retried forever, and a malformed message dropped (with an
activity_log row) rather than allowed to crash the worker.
"""

from kombu import Exchange, Queue

from catalyst.core.domain import CatalystError
from catalyst.settings import get_settings

try:
    _settings = get_settings()
except CatalystError as exc:  # one clear line, as check_startup says it, instead of Celery's traceback
    raise SystemExit(f"catalyst: {exc}") from None

QUEUES = ("scan", "evaluate", "monitor", "exit", "maintenance")

broker_url = _settings.broker_url
if _settings.embedded_broker:
    broker_transport = "catalyst.embedded_broker:Transport"
    broker_transport_options = {}
else:
    # Above any countdown we use; the monitor redrives exits anyway, so redelivery is a backstop.
    # Timeouts so that a Redis that silently drops packets is noticed (and reconnected to) instead of hanging a
    # worker's read or beat's send forever; the read timeout stays well above kombu's 1 s BRPOP.
    broker_transport_options = {"visibility_timeout": 600, "socket_connect_timeout": 5, "socket_timeout": 30,
                                "socket_keepalive": True, "health_check_interval": 10}
    if broker_url.startswith("redis://"):  # not rediss://: kombu turns TLS on by that transport name only
        broker_transport = "workers.transport:Transport"  # kombu's Redis, dropping unreadable queue entries
        # Named "redis" in URLs (conn.as_uri(), the worker banner): Flower picks its Broker page by that scheme
        # and answers 404 "'redis' broker is not supported" for any other. The connections Celery makes (clone(),
        # copy, its pools) keep the real class; a pickled or deep-copied Connection would come back as kombu's
        # stock Redis transport (info() resolves the alias), which nothing here does.
        from kombu.connection import resolve_aliases

        resolve_aliases[broker_transport] = "redis"
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
worker_cancel_long_running_tasks_on_connection_loss = True
# Quick reconnects (workers/reconnect.py) and poison messages dropped with a trace (workers/poison.py).
worker_consumer = "workers.consumer:CatalystConsumer"

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
task_ignore_result = True
result_backend = None
enable_utc = True
timezone = "UTC"

# The anonymous exchange routes by queue name alone: no binding tables in Redis, so a flushed
# Redis still delivers every message the moment the queue list is written again.
task_queues = tuple(Queue(name, Exchange(""), routing_key=name) for name in QUEUES)
task_default_queue = "maintenance"
task_default_exchange = ""  # keep the anonymous exchange: Celery would otherwise bind queues to "maintenance"
task_default_routing_key = "maintenance"
task_routes = {
    "catalyst.scan_market": {"queue": "scan"},
    "catalyst.evaluate_candidates": {"queue": "evaluate"},
    "catalyst.enter_position": {"queue": "evaluate"},
    "catalyst.monitor_position": {"queue": "monitor"},
    "catalyst.exit_position": {"queue": "exit"},
    "catalyst.check_risk": {"queue": "maintenance"},
    "catalyst.reconcile": {"queue": "maintenance"},
    "catalyst.heartbeat": {"queue": "maintenance"},
    "catalyst.deliver_notification": {"queue": "maintenance"},
    "catalyst.daily_summary": {"queue": "maintenance"},
    "catalyst.prune": {"queue": "maintenance"},
}
# Modules the worker imports besides catalyst.celery's ``include`` (alert delivery and the day's summary).
imports = ("tasks.notifications",)
worker_prefetch_multiplier = 1
task_acks_late = True
task_reject_on_worker_lost = True
worker_hijack_root_logger = False
worker_send_task_events = False
beat_scheduler = "workers.scheduler:CatalystScheduler"
beat_max_loop_interval = 1.0
