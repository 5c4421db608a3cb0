"""Test hooks: pause a task at a named point so a test can kill the worker right there.

Off unless ``CATALYST_TEST_PAUSE=<point>:<directory>`` is set. At the point the process
writes ``<directory>/<point>.reached`` and waits while ``<directory>/<point>.hold`` exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

MAX_PAUSE_SECONDS = 300.0


def pause(point: str) -> None:
    setting = os.environ.get("CATALYST_TEST_PAUSE")
    if not setting or ":" not in setting:
        return
    name, directory = setting.split(":", 1)
    if name != point:
        return
    folder = Path(directory)
    (folder / f"{point}.reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + MAX_PAUSE_SECONDS
    while (folder / f"{point}.hold").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
