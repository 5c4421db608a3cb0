"""The processes the bench starts, and what they cost in memory.

Every process is started in a session of its own and recorded in :data:`STARTED`, so that
:func:`stop_all` can stop exactly those (by process group id) on success, failure or a signal;
nothing else on the box is ever touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from catalyst.processes import ManagedProcess, spawn_beat, spawn_worker

ROOT = Path(__file__).resolve().parents[1]
STARTED: list[ManagedProcess] = []
PAGE_KB = 1


def catalyst_worker(env: dict[str, str], log_dir: Path, concurrency: int) -> ManagedProcess:
    """``celery -A catalyst worker -Q monitor,exit,maintenance -c <concurrency>`` (prefork)."""
    p = spawn_worker(env, log_dir, name="worker", queues="monitor,exit,maintenance", concurrency=concurrency)
    STARTED.append(p)
    return p


def catalyst_beat(env: dict[str, str], log_dir: Path) -> ManagedProcess:
    p = spawn_beat(env, log_dir, name="beat")
    STARTED.append(p)
    return p


def noop_worker(env: dict[str, str], log_dir: Path, concurrency: int, queue: str) -> ManagedProcess:
    """``celery -A bench.noop_app worker`` with the flags spawn_worker gives the Catalyst worker."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "noop_worker.log"
    argv = [sys.executable, "-m", "celery", "-A", "bench.noop_app", "worker", "-n", "noop@%h", "-Q", queue,
            "-c", str(concurrency), "-P", "prefork", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "ab") as handle:
        popen = subprocess.Popen(argv, env=full_env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                 start_new_session=True)
    p = ManagedProcess("noop_worker", popen, log_path)
    STARTED.append(p)
    return p


def stop(p: ManagedProcess, timeout: float = 20.0) -> None:
    """Warm shutdown (SIGTERM to its own process group), SIGKILL if it lingers."""
    try:
        p.stop(timeout=timeout)
    finally:
        if p in STARTED:
            STARTED.remove(p)


def stop_all() -> None:
    for p in reversed(list(STARTED)):
        try:
            stop(p, timeout=10)
        except Exception:  # noqa: BLE001 - keep stopping the others; kill this one outright
            try:
                os.killpg(p.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_log(p: ManagedProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in p.log_text():
            return
        if not p.alive():
            raise RuntimeError(f"{p.name} exited ({p.popen.returncode}):\n{p.log_text()[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"{p.name} did not log {text!r} within {timeout:.0f} s:\n{p.log_text()[-3000:]}")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def worker_rss(p: ManagedProcess) -> dict:
    """RSS (MB) of the worker's main process and each pool child, from /proc (no psutil needed).

    ``python -m celery`` is the process we started; the prefork children are its children.
    """
    main = p.popen.pid
    children = [c for c in _children(main)]
    child_rss = [r for r in (_rss_mb(c) for c in children) if r is not None]
    main_rss = _rss_mb(main) or 0.0
    return {"main_mb": main_rss, "children_mb": child_rss, "max_process_mb": max([main_rss, *child_rss]),
            "total_mb": round(main_rss + sum(child_rss), 1)}
