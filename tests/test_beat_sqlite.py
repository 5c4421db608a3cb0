"""The scheduler's claim, send and release on the embedded SQLite database (the default deployment)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from catalyst.clock import ManualClock
from catalyst.runtime import build_runtime, use_runtime
from catalyst.settings import get_settings
from tests.support import environment, seed_position
from tests.test_beat_slots import FlakySend, at, entry, production_like_app, sent_slots
from workers.scheduler import CatalystScheduler


@pytest.fixture
def sqlite_clock(tmp_path, redis_url):
    env = {"REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
           "CATALYST_SCAN_INTERVAL": "900", "MONITOR_CHECK_INTERVAL": "900", "CATALYST_BEAT_LEASE_SECONDS": "20",
           "CATALYST_RECONCILE_INTERVAL": "23400", "CATALYST_RISK_CHECK_INTERVAL": "23400"}
    with environment(env):
        from catalyst.db.engine import upgrade

        get_settings().var_dir.mkdir(parents=True, exist_ok=True)
        upgrade(get_settings().sqlalchemy_url)
        manual = ManualClock(at(10, 15))
        use_runtime(build_runtime(get_settings(), manual))
        yield manual


@pytest.fixture
def sqlite_app(sqlite_clock, redis_url):
    celery_app = production_like_app(redis_url)
    yield celery_app
    celery_app.close()


def test_on_sqlite_every_slot_is_claimed_sent_once_and_a_failed_send_is_released(sqlite_clock, sqlite_app, redis_url):
    clock, app = sqlite_clock, sqlite_app
    assert get_settings().database_url is None
    pid = seed_position("FLAT", 50.0, at(9, 30) - timedelta(days=1))
    beat = CatalystScheduler(app=app)
    flaky = FlakySend(app)
    try:
        beat.tick()
        clock.set(at(10, 30))
        flaky.failures = 1
        beat.tick()  # one of the two sends fails: released
        beat.tick()
        beat.tick()
        clock.set(at(10, 45))
        beat.tick()
        beat.tick()
    finally:
        beat.close()
    slots = [at(10, 15).isoformat(), at(10, 30).isoformat(), at(10, 45).isoformat()]
    assert sent_slots(redis_url, "scan") == {("scan-market", s): 1 for s in slots}
    assert sent_slots(redis_url, "monitor") == {(f"monitor-position-{pid}", s): 1 for s in slots}
    assert entry("scan-market").last_slot_at == at(10, 45)
