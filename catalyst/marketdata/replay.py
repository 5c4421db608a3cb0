"""Replay recorded OHLCV bars from CSV files as if they were arriving live.

Format: header ``timestamp,symbol,open,high,low,close,volume``; ISO-8601 bar *start*
timestamps carrying a UTC offset; rows ascending per symbol. Everything is loaded and
validated at construction so a bad file fails before any trading decision, naming the file,
the line and the offending value.

News (optional): a side file ``news.jsonl`` beside the (first) CSV, or in the replayed directory, one
article per line: ``{"created_at": "<ISO-8601 with offset>", "symbols": ["AAA"], "headline": "..."}``.
It is read with the bars (a bad line fails at construction, naming the line); without it there is no news.

Timestamps keep the offset written in the file (``-04:00`` stays ``-04:00``), so bars and
quotes read like the source; every comparison goes through UTC epoch seconds, so mixed
offsets (e.g. across a DST change) still order correctly.

A bar counts as complete one *bar duration* after its start. The duration is inferred per
file as the smallest positive gap between consecutive bars of a symbol (60 s for 1-minute
files, 1 day for daily files) and defaults to 60 s when a file cannot tell.
"""

from __future__ import annotations

import csv
import json
import math
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from os import PathLike
from pathlib import Path

from catalyst.core.domain import Bar, BadInput, Quote, UnknownSymbol, require_aware, require_price
from catalyst.core.news import NewsItem

HEADER = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
DEFAULT_DURATION = 60.0
_PRICE_COLUMNS = ("open", "high", "low", "close")

PathArg = str | PathLike[str]


@dataclass
class _Series:
    """One symbol's bars in time order with parallel epoch arrays for bisect."""

    bars: list[Bar] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    origins: list[tuple[str, int]] = field(default_factory=list)  # (file, line) for errors
    duration: float = DEFAULT_DURATION
    ends: list[float] = field(default_factory=list)


class ReplayMarketData:
    """Recorded bars served with the same no-look-ahead rules as a live source."""

    def __init__(self, path: PathArg | Iterable[PathArg], news: PathArg | None = None) -> None:
        files = _expand(path)
        self.name = f"replay:{path}" if isinstance(path, (str, PathLike)) else _list_name(files)
        self.files = files
        self._series = _merge([_read_file(f) for f in files])
        news_path = Path(news) if news is not None else _news_beside(path, files)
        self._news = _read_news(news_path) if news_path is not None else []

    def news(self, symbols: list[str], since: datetime, until: datetime) -> list[NewsItem]:
        """Articles of the side file published in ``[since, until]`` about ``symbols``, newest first."""
        since, until = require_aware(since, "news since"), require_aware(until, "news until")
        wanted = set(symbols)
        found = [n for n in self._news if n.symbol in wanted and since <= n.created_at <= until]
        return sorted(found, key=lambda n: (n.created_at, n.symbol), reverse=True)

    @classmethod
    def from_files(cls, paths: Iterable[PathArg]) -> ReplayMarketData:
        """Replay several files (or directories) as one source."""
        return cls(list(paths))

    def symbols(self) -> list[str]:
        return sorted(self._series)

    def bar_duration(self, symbol: str) -> timedelta:
        """How long one bar of ``symbol`` lasts (when its close becomes known)."""
        return timedelta(seconds=self._get(symbol).duration)

    def quote(self, symbol: str, at: datetime) -> Quote | None:
        """Close of the newest completed bar (stamped at its end); else the open of a bar in
        progress when no bar has completed yet; else ``None``."""
        series = self._get(symbol)
        now = require_aware(at, "quote time").timestamp()
        done = bisect_right(series.ends, now)
        if done:
            bar = series.bars[done - 1]
            ended = bar.timestamp + timedelta(seconds=series.duration)
            return Quote(symbol, bar.close, ended, bar.volume)
        started = bisect_right(series.starts, now)
        if started:
            bar = series.bars[started - 1]
            return Quote(symbol, bar.open, bar.timestamp, bar.volume)
        return None

    def bars(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        """Up to ``count`` bars completed by ``end``, ascending (any age, across files)."""
        series = self._get(symbol)
        now = require_aware(end, "bars end").timestamp()
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BadInput(f"bar count must be a non-negative integer, got {count!r}")
        done = bisect_right(series.ends, now)
        return series.bars[max(0, done - count) : done]

    def _get(self, symbol: str) -> _Series:
        try:
            return self._series[symbol]
        except (KeyError, TypeError):
            known = self.symbols()
            shown = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
            raise UnknownSymbol(f"unknown symbol {symbol!r} in {self.name}; known: {shown}") from None


def _expand(path: PathArg | Iterable[PathArg]) -> list[Path]:
    """Files to read: a file, every *.csv of a directory, or the union over a list."""
    items = [path] if isinstance(path, (str, PathLike)) else list(path)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.csv"))
            if not found:
                raise BadInput(f"replay directory {p} holds no *.csv files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise BadInput(f"replay file {p} does not exist")
    if not files:
        raise BadInput("replay needs at least one CSV file")
    return files


def _list_name(files: list[Path]) -> str:
    shown = ",".join(str(f) for f in files[:3])
    return f"replay:{shown}" + (f",+{len(files) - 3} more" if len(files) > 3 else "")


@dataclass
class _FileBars:
    """What one file contributed: per-symbol rows and the file's inferred bar duration."""

    name: str
    rows: dict[str, list[tuple[float, Bar, int]]]
    duration: float | None


def _read_file(path: Path) -> _FileBars:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise BadInput(f"{path.name}: empty file (expected header {','.join(HEADER)})")
        _check_header(path.name, header)
        rows: dict[str, list[tuple[float, Bar, int]]] = {}
        for raw in reader:
            if not raw:
                continue
            where = f"{path.name} line {reader.line_num}"
            epoch, bar = _parse_row(raw, where)
            _append_ascending(rows.setdefault(bar.symbol, []), epoch, bar, reader.line_num, where)
    if not rows:
        raise BadInput(f"{path.name}: no bars after the header")
    return _FileBars(path.name, rows, _infer_duration(rows))


def _check_header(name: str, header: list[str]) -> None:
    cleaned = [h.strip() for h in header]
    if cleaned == HEADER:
        return
    missing = [h for h in HEADER if h not in cleaned]
    extra = [h for h in cleaned if h not in HEADER]
    raise BadInput(
        f"{name} line 1: header {','.join(header)!r} must be exactly {','.join(HEADER)!r}"
        f" (missing: {missing or 'none'}, unexpected: {extra or 'none'})"
    )


def _parse_row(raw: list[str], where: str) -> tuple[float, Bar]:
    if len(raw) != len(HEADER):
        raise BadInput(f"{where}: expected {len(HEADER)} fields, got {len(raw)}: {','.join(raw)!r}")
    text, symbol = raw[0].strip(), raw[1].strip()
    ts = _parse_timestamp(text, where)
    if not symbol:
        raise BadInput(f"{where}: empty symbol")
    o, h, l, c = (_price(value, column, where) for value, column in zip(raw[2:6], _PRICE_COLUMNS))
    if h < max(o, c):
        raise BadInput(f"{where}: high {raw[3]!r} is below max(open {raw[2]!r}, close {raw[5]!r})")
    if l > min(o, c):
        raise BadInput(f"{where}: low {raw[4]!r} is above min(open {raw[2]!r}, close {raw[5]!r})")
    return ts.timestamp(), Bar(ts, symbol, o, h, l, c, _volume(raw[6], where))


def _parse_timestamp(text: str, where: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{where}: timestamp {text!r} is not ISO-8601") from None
    if ts.tzinfo is None:
        raise BadInput(f"{where}: timestamp {text!r} has no UTC offset (write e.g. {text}-04:00)")
    return ts


def _price(value: str, column: str, where: str) -> float:
    try:
        return require_price(value, column)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None


def _volume(value: str, where: str) -> float:
    try:
        volume = float(value)
    except ValueError:
        raise BadInput(f"{where}: volume {value!r} is not a number") from None
    if not math.isfinite(volume) or volume < 0:
        raise BadInput(f"{where}: volume {value!r} must be a finite number >= 0")
    return volume


def _append_ascending(
    rows: list[tuple[float, Bar, int]], epoch: float, bar: Bar, line: int, where: str
) -> None:
    """Refuse duplicates and out-of-order rows: replay must not silently reorder history."""
    if rows and epoch <= rows[-1][0]:
        previous, prev_line = rows[-1][1].timestamp, rows[-1][2]
        kind = "duplicate" if epoch == rows[-1][0] else "non-ascending"
        raise BadInput(
            f"{where}: {kind} timestamp {bar.timestamp.isoformat()} for {bar.symbol}"
            f" (line {prev_line} has {previous.isoformat()})"
        )
    rows.append((epoch, bar, line))


def _infer_duration(rows: dict[str, list[tuple[float, Bar, int]]]) -> float | None:
    """Smallest positive gap between consecutive bars of any symbol; None for lone bars."""
    gaps = [b[0] - a[0] for series in rows.values() for a, b in zip(series, series[1:])]
    return min(gaps) if gaps else None


def _merge(files: list[_FileBars]) -> dict[str, _Series]:
    """Combine files per symbol; refuse overlaps and mixed bar durations for one symbol."""
    series: dict[str, _Series] = {}
    durations: dict[str, tuple[float, str]] = {}
    for fb in files:
        for symbol, rows in fb.rows.items():
            s = series.setdefault(symbol, _Series())
            s.starts.extend(r[0] for r in rows)
            s.bars.extend(r[1] for r in rows)
            s.origins.extend((fb.name, r[2]) for r in rows)
            if fb.duration is not None:
                _agree_duration(durations, symbol, fb.duration, fb.name)
    for symbol, s in series.items():
        _sort_unique(symbol, s)
        s.duration = durations.get(symbol, (DEFAULT_DURATION, ""))[0]
        s.ends = [start + s.duration for start in s.starts]
    return series


def _agree_duration(durations: dict[str, tuple[float, str]], symbol: str, duration: float, name: str) -> None:
    seen = durations.setdefault(symbol, (duration, name))
    if seen[0] != duration:
        raise BadInput(
            f"{symbol} has {seen[0]:g} s bars in {seen[1]} but {duration:g} s bars in {name};"
            " replay one bar size per symbol (pass the files explicitly)"
        )


def _sort_unique(symbol: str, s: _Series) -> None:
    """Order bars from several files by time; the same start twice is an error."""
    if all(a < b for a, b in zip(s.starts, s.starts[1:])):
        return
    order = sorted(range(len(s.starts)), key=s.starts.__getitem__)
    for a, b in zip(order, order[1:]):
        if s.starts[a] == s.starts[b]:
            (file_b, line_b), (file_a, line_a) = s.origins[b], s.origins[a]
            raise BadInput(
                f"{file_b} line {line_b}: duplicate timestamp {s.bars[b].timestamp.isoformat()}"
                f" for {symbol} (also {file_a} line {line_a})"
            )
    s.starts = [s.starts[i] for i in order]
    s.bars = [s.bars[i] for i in order]
    s.origins = [s.origins[i] for i in order]


NEWS_FILE = "news.jsonl"


def _news_beside(path: PathArg | Iterable[PathArg], files: list[Path]) -> Path | None:
    """``news.jsonl`` in the replayed directory, else beside the first file; ``None`` when there is none."""
    first = Path(path) if isinstance(path, (str, PathLike)) else Path(next(iter(path)))
    folder = first if first.is_dir() else files[0].parent
    candidate = folder / NEWS_FILE
    return candidate if candidate.is_file() else None


def _read_news(path: Path) -> list[NewsItem]:
    items: list[NewsItem] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            article = json.loads(line)
            created = _parse_timestamp(str(article["created_at"]), where)
            headline, symbols = str(article["headline"]).strip(), article["symbols"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"{where}: expected {{created_at, symbols, headline}}: {exc}") from None
        if not headline or not isinstance(symbols, list) or not all(isinstance(s, str) and s for s in symbols):
            raise BadInput(f"{where}: needs a headline and a list of symbols")
        items.extend(NewsItem(s, headline, created, article.get("source")) for s in symbols)
    return items
