"""Beat and worker goodbyes that cannot hang or lose work (issue 10 review).

- SIGTERM/SIGINT end beat by raising ``SystemExit`` where it is, never by running ``close()`` inside the
  signal handler (which could wait forever on a lease row lock its own interrupted transaction holds).
- A beat stopped in the middle of a send hands the claimed slot back, so the next beat sends it.
- A worker's goodbye never waits on a hung database longer than ``GOODBYE_WAIT``, and a heartbeat that
  lands late never turns its ``offline`` row back to ``online``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
import threading

import pytest
from celery import platforms

from tests.test_beat_slots import app, clock, entry, queued_messages  # noqa: F401 - fixtures
import workers.scheduler as scheduler
from workers.scheduler import CatalystScheduler, _exit_on_sigquit

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


@pytest.fixture
def saved_handlers():
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_stop_signal_raises_system_exit_in_beat_instead_of_syncing_in_the_handler(saved_handlers):
    """Celery's beat installs a SIGTERM/SIGINT handler that runs ``service.sync()`` (our ``close()``) inside the
    handler; ours replaces it (it is installed later, in ``setup_schedule``), so the signal only raises
    ``SystemExit`` and beat's loop then closes normally, outside whatever transaction was interrupted."""
    synced = []

    def celery_sync_handler(signum, frame):  # what celery.apps.beat.Beat.install_sync_handler installs
        synced.append(signum)
        raise SystemExit()

    platforms.signals.update(SIGTERM=celery_sync_handler, SIGINT=celery_sync_handler)
    _exit_on_sigquit()
    for sig in STOP_SIGNALS:
        with pytest.raises(SystemExit):
            signal.raise_signal(sig)
    assert synced == []


def test_a_beat_stopped_in_the_middle_of_a_send_hands_the_slot_back(clock, app, redis_url):  # noqa: F811
    """SIGTERM arrives while beat publishes a claimed slot: the ``SystemExit`` leaves ``tick()``; ``close()``
    (which beat's loop runs next) releases the claim, and the next beat sends the slot exactly once."""
    real = scheduler.publish_slot
    stopped = []

    def stop_mid_send(*args, **kwargs):
        stopped.append((kwargs["headers"]["catalyst_entry"], kwargs["headers"]["catalyst_slot"], kwargs["queue"]))
        raise SystemExit()

    first = CatalystScheduler(app=app)
    scheduler.publish_slot = stop_mid_send
    try:
        with pytest.raises(SystemExit):
            first.tick()
    finally:
        scheduler.publish_slot = real
        first.close()
    ((name, slot, queue),) = stopped
    assert entry(name).last_slot_at is None or entry(name).last_slot_at.isoformat() != slot, "claim handed back"

    second = CatalystScheduler(app=app)
    try:
        second.tick()
        second.tick()
    finally:
        second.close()
    sent = [(m["headers"]["catalyst_entry"], m["headers"]["catalyst_slot"]) for m in queued_messages(redis_url, queue)]
    assert sent.count((name, slot)) == 1


# -- worker goodbyes ---------------------------------------------------------------------------------------------
@pytest.fixture
def db_env(pg_url, tmp_path):
    from tests.support import environment

    with environment({"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                      "CATALYST_HEARTBEAT_INTERVAL": "10"}):
        yield


def _status(service: str) -> str:
    from catalyst.db.models import ServiceHealth
    from tests.support import query

    return query(lambda s: s.get(ServiceHealth, service).status)


def test_a_goodbye_returns_after_its_wait_when_the_database_hangs(monkeypatch):
    """PostgreSQL accepts the connection and never answers: the exit hook gives up after ``GOODBYE_WAIT``
    (the row goes stale instead) rather than holding the process up for ever."""
    from workers import heartbeat as hb

    released = threading.Event()
    writes = []

    def hung_write(service, **kw):
        writes.append(kw["status"])
        released.wait(60)

    monkeypatch.setattr(hb, "beat_heart", hung_write)
    monkeypatch.setattr(hb, "GOODBYE_WAIT", 0.2)
    goodbye = hb.Goodbye(hb.HeartbeatThread("w@hung", "worker", 10.0))
    try:
        assert goodbye("exit") is False
        assert not released.is_set()  # it returned while the write was still hanging
        assert writes == ["offline"]
    finally:
        released.set()


def test_a_heartbeat_that_lands_after_the_goodbye_leaves_the_row_offline(db_env):
    """The last periodic heartbeat was in flight when the worker said goodbye: it must not turn the row back to
    ``online`` (which would then go stale and page someone about a worker that was stopped on purpose)."""
    from sqlalchemy import update

    from catalyst.db.engine import session_scope
    from catalyst.db.models import ServiceHealth
    from workers.heartbeat import Goodbye, HeartbeatThread, beat_heart

    beat_heart("w@late", kind="worker", status="online", reset=True)
    assert Goodbye(HeartbeatThread("w@late", "worker", 10.0))("warm") is True
    beat_heart("w@late", kind="worker", status="online")  # the delayed beat of the same process
    beat_heart("w@late", kind="worker", status="stopping")
    assert _status("w@late") == "offline"

    # A new process of the same name (another pid) is online again at once.
    with session_scope() as s:
        s.execute(update(ServiceHealth).where(ServiceHealth.service_name == "w@late")
                  .values(pid=ServiceHealth.pid + 1))
    beat_heart("w@late", kind="worker", status="online", reset=True)
    assert _status("w@late") == "online"


def test_a_goodbye_that_could_not_be_written_is_said_at_the_next_chance(db_env, monkeypatch):
    """The warm goodbye failed (the database blipped): the exit hook tries again rather than thinking it said it."""
    from workers import heartbeat as hb

    real = hb.beat_heart
    hb.beat_heart("w@retry", kind="worker", status="online", reset=True)
    monkeypatch.setattr(hb, "beat_heart", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("refused")))
    goodbye = hb.Goodbye(hb.HeartbeatThread("w@retry", "worker", 10.0))
    assert goodbye("warm") is False
    monkeypatch.setattr(hb, "beat_heart", real)
    assert goodbye("exit") is True and goodbye("exit") is False
    assert _status("w@retry") == "offline"


def test_a_cold_shutdowns_goodbye_at_exit_is_bounded_when_the_database_hangs():
    """At interpreter exit (a cold shutdown's atexit hook) no thread can be started: the inline goodbye is
    cut off by a timer after ``GOODBYE_WAIT`` instead of holding the process up until the platform kills it."""
    script = """
import atexit, time
from workers import heartbeat as hb

def hung_write(service, **kw):
    time.sleep(120)  # a database that accepted the connection and never answers

hb.beat_heart = hung_write
hb.GOODBYE_WAIT = 0.5
atexit.register(hb.Goodbye(hb.HeartbeatThread("w@hung", "worker", 10.0)), "exit")
print("exiting", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("exiting")
    assert "goodbye_timed_out" in done.stdout + done.stderr  # structlog's default logger prints to stdout
