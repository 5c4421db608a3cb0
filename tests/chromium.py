"""Headless Chromium for tests, without new Python dependencies: the browser's own ``--dump-dom`` and
``--screenshot`` modes, each run a fresh process (and profile) that is killed with its whole process group.

Why a real browser: Flower's pages are rendered by JavaScript (the task list arrives by XHR from
``/tasks/datatable``), so only a browser shows what an operator sees, including whether the credentials of
the page reach the page's own requests.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Quiet, self-contained runs: no sandbox (tests run as root in containers), no GPU, no first-run or background
# traffic to Google, /tmp instead of a small /dev/shm.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--mute-audio")


def find() -> str | None:
    """Debian's ``chromium`` (what CI installs); ``None`` when it is not installed."""
    return shutil.which("chromium")


def _run(binary: str, args: list[str], profile_root: Path, timeout: float) -> subprocess.CompletedProcess:
    """One browser process with a profile of its own; its process group is killed whatever happens, so no
    renderer or zygote outlives the test."""
    profile_root.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=profile_root)
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = "", f"chromium still running after {timeout:.0f}s"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def dump_dom(binary: str, url: str, profile_root: Path, budget_ms: int = 15000, timeout: float = 120) -> str:
    """The DOM after the page's scripts ran for ``budget_ms`` of virtual time (XHRs included); ``""`` when the
    page did not load at all (Chromium prints nothing for a refused page, e.g. a 401 without credentials)."""
    return _run(binary, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url], profile_root, timeout).stdout


def screenshot(binary: str, url: str, path: Path, profile_root: Path, size: tuple[int, int] = (1400, 900),
               budget_ms: int = 15000, timeout: float = 120) -> Path:
    """A PNG of the rendered page at ``path``."""
    _run(binary, [f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                  f"--screenshot={path}", url], profile_root, timeout)
    return path


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a PNG file, or ``None`` when the file is not a PNG."""
    head = path.read_bytes()[:24] if path.exists() else b""
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


class Row(NamedTuple):
    id: str | None  # the ``<tr id=...>`` (Flower puts the task's uuid there)
    cells: list[str]


class _TableRows(HTMLParser):
    """Collects the text of each cell of each ``<tbody>`` row of the table with a given id."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id = table_id
        self.depth = 0  # >0 while inside the wanted table (nested tables counted)
        self.in_body = False
        self.rows: list[Row] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and (self.depth or dict(attrs).get("id") == self.table_id):
            self.depth += 1
        elif self.depth == 1 and tag == "tbody":
            self.in_body = True
        elif self.depth == 1 and self.in_body and tag == "tr":
            self.rows.append(Row(dict(attrs).get("id"), []))
        elif self.depth == 1 and self.in_body and tag in ("td", "th") and self.rows:
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag == "tbody" and self.depth == 1:
            self.in_body = False
        elif tag in ("td", "th") and self.cell is not None:
            self.rows[-1].cells.append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def table_rows(html: str, table_id: str) -> list[Row]:
    """The body rows of ``<table id=table_id>`` in ``html``: each row's id and its cells' visible text."""
    parser = _TableRows(table_id)
    parser.feed(html)
    return parser.rows


class _Definitions(HTMLParser):
    """Collects ``<dt>``/``<dd>`` pairs (the layout of Flower's task page) as visible text."""

    def __init__(self):
        super().__init__()
        self.pairs: dict[str, str] = {}
        self.tag: str | None = None
        self.text: list[str] = []
        self.term: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("dt", "dd"):
            self.tag, self.text = tag, []

    def handle_endtag(self, tag):
        if tag == self.tag:
            text = " ".join("".join(self.text).split())
            if tag == "dt":
                self.term = text
            elif self.term is not None:
                self.pairs.setdefault(self.term, text)
                self.term = None
            self.tag = None

    def handle_data(self, data):
        if self.tag:
            self.text.append(data)


def definitions(html: str) -> dict[str, str]:
    """Every ``<dt>`` term of ``html`` with the text of the ``<dd>`` after it (first one wins)."""
    parser = _Definitions()
    parser.feed(html)
    return parser.pairs
