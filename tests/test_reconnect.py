"""A worker that lost Redis tries again often enough to be consuming within one check interval of its return.

Celery's own back-off (2 s, 4 s, 6 s … up to 30 s between attempts) kept monitoring paused for
10-19 s after a 30-second outage. The attempts here are real (a Celery consumer connecting to a
port nobody listens on); only kombu's sleeps between them are recorded instead of slept.
"""

from __future__ import annotations

import kombu.utils.functional
import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from catalyst.runtime import reset_runtime
from tests.private_servers import free_port
from tests.support import environment
from workers.reconnect import FLOOR, QuickReconnect, reconnect_backoff_max

ATTEMPTS = 8


def waits_between_attempts(interval: str, monkeypatch, tmp_path) -> tuple[list[float], float]:
    import celeryconfig

    with environment({"MONITOR_CHECK_INTERVAL": interval, "CATALYST_VAR_DIR": str(tmp_path / "var")}):
        reset_runtime()
        cap = reconnect_backoff_max()
        app = Celery("reconnect-test", set_as_current=False)
        app.config_from_object(celeryconfig)
        app.conf.update(broker_url=f"redis://127.0.0.1:{free_port()}/0", broker_transport=None,
                        broker_connection_max_retries=ATTEMPTS)
        sleeps: list[float] = []
        monkeypatch.setattr(kombu.utils.functional, "sleep", sleeps.append)
        consumer = QuickReconnect.__new__(QuickReconnect)  # only what ensure_connected reads
        consumer.app, consumer.first_connection_attempt, consumer.broker_connection_retry_attempt = app, False, 0
        with pytest.raises(OperationalError):
            consumer.ensure_connected(app.connection_for_read())
        reset_runtime()
    return sleeps, cap


@pytest.mark.parametrize("interval, cap", [("60", 5.0), ("4", 1.0), ("1", FLOOR)])
def test_a_worker_waiting_for_redis_tries_again_at_least_every_quarter_check_interval(
        interval, cap, monkeypatch, tmp_path):
    sleeps, backoff_max = waits_between_attempts(interval, monkeypatch, tmp_path)
    assert backoff_max == cap
    assert sum(sleeps) <= ATTEMPTS * cap, f"{ATTEMPTS} attempts waited {sum(sleeps):g} s in all: {sleeps}"
    assert sum(sleeps) >= ATTEMPTS * FLOOR, "a dead Redis is never hammered without a pause"
