"""Beat interleavings that once lost or hot-looped slots: a stop signal right after the claim, a batch Redis refuses
(a release stamped by a beat whose clock runs behind: tests/test_beat_slots.py)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import redis
from kombu.transport.redis import PublishBatch

import workers.scheduler as scheduler
from tests.test_beat_slots import CatalystScheduler, app, at, clock, entry, failing_flush, sent_slots  # noqa: F401


def test_a_stop_signal_landing_just_after_the_claim_commits_still_hands_the_slot_back(clock, app, redis_url,
                                                                                       monkeypatch):
    """SIGTERM raises SystemExit wherever beat is; if that is right after the claim's COMMIT (before
    _send_claims registers the claims), close() must still release them or the next leader skips the slot."""
    real_scope = scheduler.session_scope
    armed = {"on": False}

    @contextmanager
    def scope_then_signal(*a, **k):
        with real_scope(*a, **k) as s:
            yield s
        if armed["on"]:  # the COMMIT went through; the signal lands as it returns
            armed["on"] = False
            raise SystemExit()

    real_claim_slots = CatalystScheduler._claim_slots

    def claim_slots(s, *a, **k):
        armed["on"] = True
        return real_claim_slots(s, *a, **k)

    first = CatalystScheduler(app=app)
    monkeypatch.setattr(scheduler, "session_scope", scope_then_signal)
    monkeypatch.setattr(CatalystScheduler, "_claim_slots", staticmethod(claim_slots))
    with pytest.raises(SystemExit):
        first.tick()
    monkeypatch.undo()
    first.close()  # what Celery's beat loop does on SystemExit
    second = CatalystScheduler(app=app)
    try:
        second.tick()
        second.tick()
    finally:
        second.close()
    assert sent_slots(redis_url, "scan") == {("scan-market", at(10, 15).isoformat()): 1}


def test_a_batch_redis_refuses_for_a_non_connection_reason_is_retried_at_a_pace_not_in_a_hot_loop(
        clock, app, redis_url, monkeypatch):
    """Redis at maxmemory answers every LPUSH with OOM (a ResponseError, not a connection error): the claims are
    handed back, and beat must not claim, fail and release again 50 times a second."""
    oom = failing_flush(redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'."))

    beat = CatalystScheduler(app=app)
    try:
        monkeypatch.setattr(PublishBatch, "flush", oom)
        sleeps = [beat.tick() for _ in range(3)]
        assert entry("scan-market").last_slot_at is None, "handed back"
        assert min(sleeps) >= 0.5, sleeps
    finally:
        beat.close()
