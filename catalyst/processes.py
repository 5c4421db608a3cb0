"""Start and stop real Celery worker and beat processes (used by `catalyst demo` and the e2e tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ALL_QUEUES = "scan,evaluate,monitor,exit,maintenance"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (what a crash looks like)."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (warm shutdown), then SIGKILL if it does not leave in time."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    handle = open(log_path, "ab")
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    popen = subprocess.Popen(argv, env=full_env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(ROOT),
                             start_new_session=True)
    handle.close()
    return ManagedProcess(name, popen, log_path)


def spawn_worker(env: dict[str, str], log_dir: Path, *, name: str = "worker", queues: str = ALL_QUEUES,
                 concurrency: int = 2, pool: str = "prefork") -> ManagedProcess:
    argv = [sys.executable, "-m", "celery", "-A", "catalyst", "worker", "-n", f"{name}@%h", "-Q", queues,
            "-c", str(concurrency), "-P", pool, "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    return _spawn(name, argv, env, log_dir)


def spawn_beat(env: dict[str, str], log_dir: Path, *, name: str = "beat") -> ManagedProcess:
    argv = [sys.executable, "-m", "celery", "-A", "catalyst", "beat", "--loglevel", "INFO"]
    return _spawn(name, argv, env, log_dir)
