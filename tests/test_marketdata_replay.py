"""What an operator expects from replaying recorded bars: real files, exact prices, loud errors."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from catalyst.core.domain import BadInput, UnknownSymbol
from catalyst.marketdata.replay import ReplayMarketData

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HEADER = "timestamp,symbol,open,high,low,close,volume\n"


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture(scope="module")
def data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared market data not found at {DATA}")
    return DATA


@pytest.fixture(scope="module")
def spy(data) -> ReplayMarketData:
    return ReplayMarketData(data / "SPY-2013-10-10-1min.csv")


@pytest.fixture(scope="module")
def shy(data) -> ReplayMarketData:
    return ReplayMarketData.from_files([data / "SHY-2008-03-07-1min.csv", data / "SHY-2008-03-10-1min.csv"])


def write(tmp_path: Path, body: str, name: str = "bars.csv", header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text(header + body)
    return path


def test_name_and_symbols_come_from_the_file(spy, data):
    assert spy.name == f"replay:{data / 'SPY-2013-10-10-1min.csv'}"
    assert spy.symbols() == ["SPY"]
    assert spy.bar_duration("SPY") == timedelta(minutes=1)


def test_spy_quote_at_0931_is_the_first_bars_close(spy):
    q = spy.quote("SPY", t("2013-10-10T09:31:00-04:00"))
    assert (q.price, q.timestamp, q.volume) == (167.29, t("2013-10-10T09:31:00-04:00"), 1125495)


def test_first_minute_in_progress_shows_the_open(spy):
    q = spy.quote("SPY", t("2013-10-10T09:30:30-04:00"))
    assert (q.price, q.timestamp) == (167.32, t("2013-10-10T09:30:00-04:00"))


def test_nothing_is_known_before_the_first_bar(spy):
    assert spy.quote("SPY", t("2013-10-10T09:29:59-04:00")) is None
    assert spy.bars("SPY", t("2013-10-10T09:30:59-04:00"), 10) == []


def test_quote_mid_minute_never_reveals_the_running_bar(spy):
    running = spy.bars("SPY", t("2013-10-10T10:01:00-04:00"), 1)[0]
    assert running.timestamp == t("2013-10-10T10:00:00-04:00")
    q = spy.quote("SPY", t("2013-10-10T10:00:30-04:00"))
    previous = spy.bars("SPY", t("2013-10-10T10:00:00-04:00"), 1)[0]
    assert previous.timestamp == t("2013-10-10T09:59:00-04:00")
    assert (q.price, q.timestamp) == (previous.close, t("2013-10-10T10:00:00-04:00"))


def test_last_bar_of_the_day_is_known_at_the_close(spy):
    q = spy.quote("SPY", t("2013-10-10T16:00:00-04:00"))
    assert (q.price, q.timestamp, q.volume) == (169.24, t("2013-10-10T16:00:00-04:00"), 4269661)
    assert spy.quote("SPY", t("2013-10-11T12:00:00-04:00")) == q


def test_bars_are_the_most_recent_completed_ascending(spy):
    got = spy.bars("SPY", t("2013-10-10T09:35:30-04:00"), 3)
    assert [b.timestamp for b in got] == [t(f"2013-10-10T09:3{m}:00-04:00") for m in (2, 3, 4)]
    assert [b.close for b in got] == [167.4, 167.44, 167.48]
    assert len(spy.bars("SPY", t("2013-10-11T00:00:00-04:00"), 10_000)) == 390


def test_quote_inside_a_shy_gap_returns_the_last_earlier_bar(shy):
    # No SHY trades 13:52-13:56 on 2008-03-07: the 13:51 bar is the latest price.
    q = shy.quote("SHY", t("2008-03-07T13:55:00-05:00"))
    assert (q.price, q.timestamp) == (84.17, t("2008-03-07T13:52:00-05:00"))


def test_dst_offsets_compare_as_instants(shy):
    # 13:30Z on 2008-03-10 is 09:30 EDT: only Friday's (EST) last bar is complete.
    friday = shy.quote("SHY", t("2008-03-10T13:30:00+00:00"))
    assert (friday.price, friday.timestamp) == (84.13, t("2008-03-07T16:00:00-05:00"))
    monday = shy.quote("SHY", t("2008-03-10T13:31:00+00:00"))
    assert (monday.price, monday.timestamp) == (84.09, t("2008-03-10T09:31:00-04:00"))
    across = shy.bars("SHY", t("2008-03-10T09:32:00-04:00"), 3)
    assert [b.timestamp.isoformat() for b in across] == [
        "2008-03-07T15:59:00-05:00",
        "2008-03-10T09:30:00-04:00",
        "2008-03-10T09:31:00-04:00",
    ]


def test_timestamps_keep_the_files_offset(data):
    md = ReplayMarketData(data / "JPM-2024-11-06-1min.csv")
    bar = md.bars("JPM", t("2024-11-06T14:31:00+00:00"), 1)[0]
    assert bar.timestamp.isoformat() == "2024-11-06T09:30:00-05:00"
    assert (bar.open, bar.volume) == (235.0, 50562)


def test_daily_spy_file_loads_quickly_with_one_day_bars(data):
    started = time.perf_counter()
    md = ReplayMarketData(data / "SPY-daily.csv")
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5  # typically ~0.03 s
    assert md.bar_duration("SPY") == timedelta(days=1)
    everything = md.bars("SPY", t("2030-01-01T00:00:00+00:00"), 10_000)
    assert len(everything) == 5241
    assert everything[-1].close == 350.58


def test_daily_bar_is_known_one_bar_duration_after_its_label(data):
    md = ReplayMarketData(data / "SPY-daily.csv")
    # Labels are treated as bar starts, so Monday's 16:00 bar is only known Tuesday 16:00.
    q = md.quote("SPY", t("2007-03-13T16:00:00-04:00"))
    assert (q.price, q.timestamp) == (140.99, t("2007-03-13T16:00:00-04:00"))
    earlier = md.quote("SPY", t("2007-03-13T15:59:00-04:00"))
    assert (earlier.price, earlier.timestamp) == (140.78, t("2007-03-10T16:00:00-05:00"))


def test_a_directory_replays_every_csv_in_it(data, tmp_path):
    for name in ("SHY-2008-03-07-1min.csv", "SHY-2008-03-10-1min.csv", "GOOG-2015-12-24-1min.csv"):
        shutil.copy(data / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a csv")
    md = ReplayMarketData(tmp_path)
    assert md.symbols() == ["GOOG", "SHY"]
    assert md.name == f"replay:{tmp_path}"
    assert md.quote("GOOG", t("2015-12-24T13:00:00-05:00")).price == 748.4


def test_mixing_daily_and_minute_bars_for_one_symbol_is_refused(data):
    with pytest.raises(BadInput, match="SPY.*60 s.*86400 s"):
        ReplayMarketData([data / "SPY-2013-10-10-1min.csv", data / "SPY-daily.csv"])


def test_the_same_minute_in_two_files_is_refused(tmp_path):
    row = "2024-01-02T09:30:00-05:00,ABC,10,11,9,10.5,100\n"
    a, b = write(tmp_path, row, "a.csv"), write(tmp_path, row, "b.csv")
    with pytest.raises(BadInput, match=r"b\.csv line 2: duplicate.*a\.csv line 2"):
        ReplayMarketData.from_files([a, b])


def test_unknown_symbol_is_named_with_the_known_ones(spy):
    with pytest.raises(UnknownSymbol, match="QQQ.*known: SPY"):
        spy.quote("QQQ", t("2013-10-10T12:00:00-04:00"))
    with pytest.raises(UnknownSymbol, match="QQQ"):
        spy.bars("QQQ", t("2013-10-10T12:00:00-04:00"), 1)


def test_naive_times_are_refused(spy):
    with pytest.raises(BadInput, match="offset"):
        spy.quote("SPY", datetime(2013, 10, 10, 12, 0))
    with pytest.raises(BadInput, match="offset"):
        spy.bars("SPY", datetime(2013, 10, 10, 12, 0), 5)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        ReplayMarketData(tmp_path / "nope.csv")
    with pytest.raises(BadInput, match="no \\*.csv"):
        ReplayMarketData(tmp_path)


GOOD = "2024-01-02T09:30:00-05:00,ABC,10,11,9,10.5,100\n"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("2024-01-02T09:31:00-05:00,ABC,nan,11,9,10.5,100", "line 3.*open 'nan'"),
        ("2024-01-02T09:31:00-05:00,ABC,10,11,9,-10.5,100", "line 3.*close '-10.5'"),
        ("2024-01-02T09:31:00-05:00,ABC,10,11,0,10.5,100", "line 3.*low '0'"),
        ("2024-01-02T09:31:00-05:00,ABC,10,inf,9,10.5,100", "line 3.*high 'inf'"),
        ("2024-01-02T09:31:00-05:00,ABC,,11,9,10.5,100", "line 3.*open ''"),
        ("2024-01-02T09:31:00,ABC,10,11,9,10.5,100", "line 3.*'2024-01-02T09:31:00' has no UTC offset"),
        ("yesterday,ABC,10,11,9,10.5,100", "line 3.*'yesterday' is not ISO-8601"),
        ("2024-01-02T09:29:00-05:00,ABC,10,11,9,10.5,100", "line 3: non-ascending.*line 2"),
        ("2024-01-02T09:30:00-05:00,ABC,10,11,9,10.5,100", "line 3: duplicate"),
        ("2024-01-02T09:31:00-05:00,ABC,10,10.4,9,10.5,100", "line 3: high '10.4'"),
        ("2024-01-02T09:31:00-05:00,ABC,10,11,10.2,10.5,100", "line 3: low '10.2'"),
        ("2024-01-02T09:31:00-05:00,ABC,10,11,9,10.5,-1", "line 3: volume '-1'"),
        ("2024-01-02T09:31:00-05:00,ABC,10,11,9,10.5,nan", "line 3: volume 'nan'"),
        ("2024-01-02T09:31:00-05:00,ABC,10,11,9,10.5", "line 3: expected 7 fields"),
    ],
)
def test_bad_rows_are_refused_naming_file_line_and_value(tmp_path, row, expected):
    path = write(tmp_path, GOOD + row + "\n")
    with pytest.raises(BadInput, match=f"bars\\.csv {expected}"):
        ReplayMarketData(path)


def test_row_order_is_judged_by_instant_not_by_wall_clock(tmp_path):
    # 08:31-05:00 is 13:31Z and 09:30-04:00 is 13:30Z: later wall clock, earlier instant.
    rows = "2024-01-02T08:31:00-05:00,ABC,10,11,9,10.5,100\n2024-01-02T09:30:00-04:00,ABC,10,11,9,10.5,100\n"
    with pytest.raises(BadInput, match="line 3: non-ascending"):
        ReplayMarketData(write(tmp_path, rows))
    ok = "2024-01-02T09:30:00-04:00,ABC,10,11,9,10.5,100\n2024-01-02T08:31:00-05:00,ABC,10,11,9,10.5,100\n"
    assert ReplayMarketData(write(tmp_path, ok, "ok.csv")).bar_duration("ABC") == timedelta(minutes=1)


@pytest.mark.parametrize(
    "header",
    [
        "timestamp,symbol,open,high,low,close\n",
        "timestamp,symbol,open,high,low,close,volume,vwap\n",
        "time,symbol,open,high,low,close,volume\n",
    ],
)
def test_bad_header_is_refused(tmp_path, header):
    with pytest.raises(BadInput, match="bars\\.csv line 1: header"):
        ReplayMarketData(write(tmp_path, GOOD, header=header))


def test_empty_file_and_header_only_are_refused(tmp_path):
    with pytest.raises(BadInput, match="empty\\.csv: empty file"):
        ReplayMarketData(write(tmp_path, "", "empty.csv", header=""))
    with pytest.raises(BadInput, match="only\\.csv: no bars"):
        ReplayMarketData(write(tmp_path, "", "only.csv"))


def test_symbols_interleaved_in_one_file_are_kept_apart(tmp_path):
    rows = (
        "2024-01-02T09:30:00-05:00,AAA,10,11,9,10.5,100\n"
        "2024-01-02T09:30:00-05:00,BBB,20,21,19,20.5,200\n"
        "2024-01-02T09:31:00-05:00,AAA,10.5,11,10,10.8,100\n"
    )
    md = ReplayMarketData(write(tmp_path, rows))
    assert md.symbols() == ["AAA", "BBB"]
    at = t("2024-01-02T09:32:00-05:00")
    assert md.quote("AAA", at).price == 10.8
    assert md.quote("BBB", at).price == 20.5
