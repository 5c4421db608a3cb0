"""One indicator snapshot per symbol per slot, whichever processes and threads ask for it at once (issue 11)."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from catalyst.db.models import IndicatorSnapshot
from tests.support import query
from tests.test_check_cost import SESSION_OPEN, market_at

ROUNDS = 25
THREADS = 4


def test_checks_racing_for_a_symbols_indicators_all_use_the_one_snapshot_stored(pg_url, tmp_path):
    import catalyst.monitor as monitor
    from catalyst.runtime import get_runtime

    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    with market_at(pg_url, tmp_path, 200):
        rt = get_runtime()
        for round_ in range(ROUNDS):
            slot = SESSION_OPEN + timedelta(minutes=100 + round_)
            start = threading.Barrier(THREADS)
            got[round_] = []

            def ask(slot=slot, start=start, out=got[round_]):
                try:
                    start.wait()
                    out.append(monitor.shared_indicators(rt, "TEST", slot, slot, "w@test").id)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            monitor._recent.clear()  # as many processes as threads: none has read this slot before
            threads = [threading.Thread(target=ask) for _ in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        stored = query(lambda s: s.execute(select(IndicatorSnapshot.slot_at, IndicatorSnapshot.id)).all())
    assert not errors, errors
    assert len(stored) == ROUNDS  # one row per slot, however many asked at once
    ids = {round(((at - SESSION_OPEN).total_seconds() / 60)) - 100: sid for at, sid in stored}
    for round_, seen in got.items():
        assert seen == [ids[round_]] * THREADS, (round_, seen, ids[round_])


def test_a_check_that_computed_while_another_stored_uses_the_stored_snapshot(pg_url, tmp_path, monkeypatch):
    """Every check of a slot judges the same numbers: the loser of a race drops its own computation."""
    import catalyst.monitor as monitor
    from catalyst.monitor_store import CheckDB, store_snapshot
    from catalyst.runtime import get_runtime

    real = monitor._compute
    slot = SESSION_OPEN + timedelta(minutes=150)
    with market_at(pg_url, tmp_path, 200):
        rt = get_runtime()

        def another_process_stores_first(*args):
            theirs = real(*args)
            theirs.worker = "other@host"
            assert store_snapshot(CheckDB(), theirs)
            return real(*args)

        monkeypatch.setattr(monitor, "_compute", another_process_stores_first)
        monitor._recent.clear()
        used = monitor.shared_indicators(rt, "TEST", slot, slot, "w@test")
        stored = query(lambda s: s.execute(select(IndicatorSnapshot.id, IndicatorSnapshot.worker)).all())
    assert stored == [(used.id, "other@host")] and used.worker == "other@host"
