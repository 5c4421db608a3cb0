"""Where the CPU goes: seconds of CPU per process group, read from /proc and Redis' INFO (nothing from the code
under test).

Groups: the worker's main process, its pool children, beat, the PostgreSQL server's processes (every child of the
postmaster: backends, WAL writer, checkpointer...) and the Redis server. Two snapshots around an interval give CPU
milliseconds per check in each group, the profile behind the ratio to bare Celery.
"""

from __future__ import annotations

import os

import psycopg
import redis

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on; the name may hold spaces


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def postmaster_pid(admin: str) -> int | None:
    """The PostgreSQL server's main process: the parent of a backend (None if the server is not on this box)."""
    with psycopg.connect(admin, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        parent = _parent(backend)
    return parent if parent and os.path.exists(f"/proc/{parent}") else None


def redis_cpu_s(url: str) -> float:
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def snapshot(*, worker: int | None = None, beat: int | None = None, postmaster: int | None = None,
             redis_url: str | None = None) -> dict[str, float]:
    """Cumulative CPU seconds per group now (groups not given are left out)."""
    out: dict[str, float] = {}
    if worker is not None:
        out["worker_main"] = cpu_s(worker)
        out["worker_children"] = sum(cpu_s(c) for c in children(worker))
    if beat is not None:
        out["beat"] = cpu_s(beat) + sum(cpu_s(c) for c in children(beat))
    if postmaster is not None:
        out["postgresql"] = cpu_s(postmaster) + sum(cpu_s(c) for c in children(postmaster))
    if redis_url is not None:
        out["redis"] = redis_cpu_s(redis_url)
    return out


def summed(intervals: list[tuple[dict[str, float], dict[str, float]]]) -> tuple[dict[str, float], dict[str, float]]:
    """Several (before, after) intervals as one: zero before, the sum of the deltas after."""
    keys = intervals[0][0].keys()
    return {k: 0.0 for k in keys}, {k: sum(after[k] - before[k] for before, after in intervals) for k in keys}


def per_item_ms(before: dict[str, float], after: dict[str, float], items: int) -> dict[str, float]:
    """CPU milliseconds per item (check or task) in each group, and their total."""
    ms = {k: round(1000 * (after[k] - before[k]) / items, 3) for k in before}
    return {**ms, "total": round(1000 * sum(after[k] - before[k] for k in before) / items, 3)}
