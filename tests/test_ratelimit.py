"""The shared Alpaca request budget and the guarded alpaca-py HTTP session.

Real Redis (DB 9), real processes hammering one bucket, a real local HTTP server standing in for
Alpaca, and the real alpaca-py ``TradingClient`` pointed at it with ``url_override``.

No wall-clock budgets: the tests assert the limiter's own accounting (the slots it hands out, on
its own clock, or on a fake clock it is given), the order of grants and lower bounds anchored at a
slot or a reset (a loaded machine can only make a caller later, never earlier). How fast the
limiter is belongs in bench/.
"""

from __future__ import annotations

import bisect
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from requests.adapters import HTTPAdapter

from catalyst.alpaca_http import (GuardedSession, api_error_code, api_error_status, guard_client,
                                  rate_limit_reset, retry_after_rate_limit)
from catalyst.ratelimit import (LocalTokenBucket, RateLimitTimeout, RedisTokenBucket, TokenBucket,
                                bucket_from_settings)

ROOT = Path(__file__).resolve().parents[1]
LIMIT, WINDOW = 20, 2.0          # small stand-in for Alpaca's 200 per 60 s
WORKERS = 4
PER_WORKER = 12                  # 48 grants in all: more than two windows' worth, so the limit must bite


def max_in_window(times: list[float], window: float) -> int:
    """The largest number of grants in any half-open window [t, t + window)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


class FakeClock:
    """Monotonic and wall time that move only when the bucket sleeps (one thread at a time).

    ``on_sleep(seconds)`` runs before the clock moves: what happens elsewhere while a caller waits.
    """

    def __init__(self, wall: float = 1_700_000_000.0):
        self.now = 0.0
        self.wall_at_zero = wall
        self.sleeps: list[float] = []
        self.on_sleep = None

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall_at_zero + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        self.now += seconds


def noted_acquire(bucket: TokenBucket, asked: list[float], cost: int = 1) -> tuple[float, float]:
    """``acquire()`` on a bucket built with ``sleep_fn=asked.append``: (its slot, the wait it asked for).

    Such a bucket returns as soon as its slot is reserved, so this reads its accounting, however
    fast or slow the caller runs.
    """
    before = len(asked)
    bucket.acquire(cost)
    return bucket.last_grant, (asked[before] if len(asked) > before else 0.0)


def local_bucket(clock: FakeClock, **kw) -> LocalTokenBucket:
    return LocalTokenBucket(time_fn=clock.monotonic, sleep_fn=clock.sleep, wall_fn=clock.time, **kw)


def assert_pause_ends_at(bucket: TokenBucket, reset: float, tolerance: float) -> None:
    """``bucket`` is paused until the epoch ``reset``, judged from the wall clock read around the call.

    However late the call runs, ``reset - after <= remaining <= reset - before`` holds; a pause that
    was never set or was cut short breaks the lower bound (unless the reset is already past).
    """
    before = time.time()
    remaining = bucket.pause_remaining()
    after = time.time()
    assert reset - after - tolerance <= remaining <= reset - before + tolerance, (remaining, reset - before)


# --------------------------------------------------------------------------- Redis bucket

HAMMER = r"""
import json, sys, time
from catalyst.ratelimit import RedisTokenBucket
url, name = sys.argv[1:3]
start, count, rate, per = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
bucket = RedisTokenBucket(url, name=name, rate=rate, per=per)
bucket.pause_remaining()  # connect and load the scripts before the start line
time.sleep(max(0.0, start - time.time()))
grants = []
for _ in range(count):
    bucket.acquire()
    grants.append([bucket.last_grant, time.time()])
print(json.dumps(grants))
"""


def undisturbed(redis_url: str, attempt, tries: int = 4):
    """Run ``attempt()`` (which asserts); rerun it if the shared test DB was flushed meanwhile.

    DB 9 is shared with every other test run on this machine, and a concurrent ``FLUSHDB`` wipes
    the bucket's log mid-test. A sentinel key tells such interference apart from a real failure.
    """
    client = redis.Redis.from_url(redis_url)
    for _ in range(tries):
        sentinel = f"test:sentinel:{uuid.uuid4().hex}"
        client.set(sentinel, 1)
        try:
            result = attempt()
        except AssertionError:
            if client.exists(sentinel):
                raise
            continue
        if client.exists(sentinel):
            client.delete(sentinel)
            return result
    pytest.fail(f"the Redis test DB was flushed by another process during all {tries} attempts")


def test_redis_bucket_never_exceeds_the_window_across_processes(redis_url):
    undisturbed(redis_url, lambda: hammer_redis(redis_url))


def hammer_redis(redis_url: str) -> None:
    name = f"hammer-{uuid.uuid4().hex[:8]}"
    start = time.time() + 2.0  # a common start line so that they contend (a late starter just contends less)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, redis_url, name, str(start), str(PER_WORKER),
                               str(LIMIT), str(WINDOW)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env)
             for _ in range(WORKERS)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)  # liveness only: the grants themselves take about 4 s
        assert p.returncode == 0, err
        results.append(json.loads(out))

    assert [len(r) for r in results] == [PER_WORKER] * WORKERS  # nobody was starved of what it asked for
    server = [g[0] for r in results for g in r]   # the granted slot, Redis TIME
    # acquire() never returns before its slot (Redis TIME and time.time() read the same host clock)
    assert all(c >= s - 0.005 for r in results for s, c in r)
    # The limit was reached (the bound was exercised) and no window of WINDOW seconds holds more.
    assert max_in_window(server, WINDOW) == LIMIT


def test_redis_bucket_gives_a_full_window_at_once_then_exactly_the_rate_in_arrival_order(redis_url):
    undisturbed(redis_url, lambda: full_rate_redis(redis_url))


def full_rate_redis(redis_url: str) -> None:
    # The Lua script's accounting, read without sleeping through it; the window is far longer than
    # the test, so Redis time hardly moves while the slots are handed out.
    per = 600.0
    asked: list[float] = []
    bucket = RedisTokenBucket(redis_url, name=f"rate-{uuid.uuid4().hex[:8]}", rate=LIMIT, per=per,
                              sleep_fn=asked.append)
    slots, waits = map(list, zip(*(noted_acquire(bucket, asked) for _ in range(3 * LIMIT))))
    bucket.reset()

    assert waits[:LIMIT] == [0.0] * LIMIT                            # a whole window's worth at once
    assert all(w > 0 for w in waits[LIMIT:])                         # then every caller waits its turn
    # ... for a slot exactly one window after the grant LIMIT before it: the full rate, never less
    assert slots[LIMIT:] == pytest.approx([s + per for s in slots[:-LIMIT]], abs=1e-6)
    assert slots == sorted(slots)                                    # first come, first served
    assert max_in_window(slots, per) == LIMIT
    # Each wait is what the bucket's own clock said was left until the slot: the Redis times of
    # the reservations (slot - wait) never run backwards and none comes after its slot.
    reserved_at = [s - w for s, w in zip(slots, waits)]
    assert all(b >= a - 1e-6 for a, b in zip(reserved_at, reserved_at[1:]))
    assert all(r <= s + 1e-6 for r, s in zip(reserved_at, slots))


def test_redis_pause_makes_every_acquirer_wait_until_the_reset(redis_url):
    undisturbed(redis_url, lambda: pause_redis(redis_url))


def pause_redis(redis_url: str) -> None:
    name = f"paused-{uuid.uuid4().hex[:8]}"

    # A caller whose timeout ends before the pause does is refused at once and reserves nothing.
    asked: list[float] = []
    hurried = RedisTokenBucket(redis_url, name=f"{name}-long", rate=100, per=1.0, sleep_fn=asked.append)
    hurried.pause_until(time.time() + 600)
    with pytest.raises(RateLimitTimeout):
        hurried.acquire(timeout=0.2)
    assert asked == []                                               # it did not wait to find out
    assert redis.Redis.from_url(redis_url).zcard(hurried.keys[0]) == 0  # no slot was reserved
    hurried.reset()

    other_worker = RedisTokenBucket(redis_url, name=name, rate=100, per=1.0)
    reset = time.time() + 1.0
    other_worker.pause_until(reset)
    other_worker.pause_until(reset - 5)            # an older reset never shortens the pause
    assert_pause_ends_at(other_worker, reset, tolerance=1e-3)

    buckets = [RedisTokenBucket(redis_url, name=name, rate=100, per=1.0) for _ in range(3)]
    grants: list[tuple[float, float]] = []

    def worker(bucket):
        bucket.acquire()
        grants.append((bucket.last_grant, time.time()))

    threads = [threading.Thread(target=worker, args=(b,)) for b in buckets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(grants) == 3
    for granted_at, returned_at in grants:
        assert granted_at >= reset - 1e-6          # the slot is at or after the reset (µs resolution)
        assert returned_at >= reset - 1e-3         # and nobody went before it
    assert other_worker.pause_remaining() == 0.0


def test_redis_burst_smoothing_and_cost(redis_url):
    undisturbed(redis_url, lambda: burst_redis(redis_url))


def burst_redis(redis_url: str) -> None:
    name = f"burst-{uuid.uuid4().hex[:8]}"
    asked: list[float] = []
    bucket = RedisTokenBucket(redis_url, name=name, rate=20, per=2.0, burst=5, sleep_fn=asked.append)
    burst_at, wait = noted_acquire(bucket, asked, cost=5)
    assert wait == 0.0                             # the burst is available at once
    slots, waits = map(list, zip(*(noted_acquire(bucket, asked) for _ in range(10))))
    # then 5 per 0.5 s sub-window (burst * per / rate), however fast they are asked for
    assert slots == pytest.approx([burst_at + 0.5] * 5 + [burst_at + 1.0] * 5, abs=1e-6)
    assert all(0 <= w <= s - burst_at + 1e-6 for s, w in zip(slots, waits))  # never a wait past the slot

    sleeper = RedisTokenBucket(redis_url, name=name, rate=20, per=2.0, burst=5)  # really sleeps
    sleeper.acquire()
    assert sleeper.last_grant >= burst_at + 1.5 - 1e-6   # the next sub-window
    assert time.time() >= sleeper.last_grant - 1e-3      # and it did not return before its slot
    with pytest.raises(ValueError):
        bucket.acquire(cost=6)
    with pytest.raises(ValueError):
        RedisTokenBucket(redis_url, rate=10, burst=11)
    bucket.reset()


def test_bucket_from_settings(redis_url):
    assert isinstance(bucket_from_settings(SimpleNamespace(redis_url=redis_url)), RedisTokenBucket)
    local = bucket_from_settings(SimpleNamespace(redis_url=None))
    assert isinstance(local, LocalTokenBucket) and (local.rate, local.per) == (200, 60.0)
    assert isinstance(local, TokenBucket)
    assert redis_url not in repr(bucket_from_settings(SimpleNamespace(redis_url=redis_url)))


# --------------------------------------------------------------------------- local bucket

def test_local_bucket_never_exceeds_the_window_across_threads():
    bucket = LocalTokenBucket(rate=LIMIT, per=WINDOW)
    start = threading.Barrier(WORKERS)
    per_thread: list[list[tuple[float, float]]] = [[] for _ in range(WORKERS)]

    def hammer(mine):
        start.wait(30)
        for _ in range(PER_WORKER):
            bucket.acquire()
            mine.append((bucket.last_grant, time.monotonic()))

    threads = [threading.Thread(target=hammer, args=(mine,)) for mine in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)  # liveness only: the grants themselves take about 4 s
    assert [len(mine) for mine in per_thread] == [PER_WORKER] * WORKERS
    grants = [g for mine in per_thread for g in mine]
    assert all(returned >= slot for slot, returned in grants)  # never before its slot (same monotonic clock)
    assert max_in_window([slot for slot, _ in grants], WINDOW) == LIMIT


def test_local_bucket_gives_a_full_window_at_once_then_exactly_the_rate():
    clock = FakeClock()
    bucket = local_bucket(clock, rate=LIMIT, per=WINDOW)
    waited, slots = [], []
    for _ in range(3 * LIMIT):
        waited.append(bucket.acquire())
        slots.append(bucket.last_grant)
    assert slots == [0.0] * LIMIT + [WINDOW] * LIMIT + [2 * WINDOW] * LIMIT
    # one after another, only the first of each later window has to wait (the rest share its slot)
    assert waited == [0.0] * LIMIT + ([WINDOW] + [0.0] * (LIMIT - 1)) * 2
    assert clock.sleeps == [WINDOW, WINDOW]
    assert max_in_window(slots, WINDOW) == LIMIT


def test_local_pause_timeout_and_burst():
    clock = FakeClock()
    bucket = local_bucket(clock, rate=20, per=2.0, burst=5)
    assert bucket.acquire(cost=5) == 0.0 and clock.sleeps == []   # the burst is available at once
    with pytest.raises(RateLimitTimeout):
        bucket.acquire(timeout=0.1)                # the 6th needs the 0.5 s sub-window: refused at once,
    assert clock.sleeps == [] and clock.now == 0.0  # without waiting to find out,
    assert bucket.acquire() == 0.5                 # and with nothing reserved: the next waits 0.5 s, no more
    assert bucket.last_grant == 0.5 and clock.sleeps == [0.5]

    paused = local_bucket(clock, rate=100, per=1.0)
    reset = clock.time() + 0.6
    paused.pause_until(reset)
    paused.pause_until(reset - 10)                 # an older reset never shortens the pause
    assert paused.pause_remaining() == pytest.approx(0.6)
    assert paused.acquire() == pytest.approx(0.6)  # waits exactly until the reset
    assert clock.time() == pytest.approx(reset) and paused.pause_remaining() == 0.0
    assert paused.acquire() == 0.0                 # and not a moment longer


def test_a_pause_set_while_a_caller_waits_for_its_slot_holds_it_until_the_reset():
    clock = FakeClock()
    bucket = local_bucket(clock, rate=1, per=1.0)
    bucket.acquire()                               # slot 0: the next caller's slot is at 1.0

    def a_429_elsewhere(_seconds):                 # while it sleeps towards 1.0, a 429 pauses until 5.0
        clock.on_sleep = None
        bucket.pause_until(clock.time() + 5.0)

    clock.on_sleep = a_429_elsewhere
    assert bucket.acquire() == 5.0                 # it queued again behind the pause instead of going at 1.0
    assert bucket.last_grant == 5.0 and clock.sleeps == [1.0, 4.0]


def test_local_pause_holds_every_thread_until_the_reset():
    paused = LocalTokenBucket(rate=100, per=1.0)
    paused.pause_until(time.time() + 0.6)
    before = time.monotonic()
    pause_end_at_least = before + paused.pause_remaining()  # on the bucket's own (monotonic) clock
    grants: list[tuple[float, float]] = []

    def worker():
        paused.acquire()
        grants.append((paused.last_grant, time.monotonic()))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(grants) == 3
    for slot, returned in grants:
        assert slot >= pause_end_at_least and returned >= slot
    assert paused.pause_remaining() == 0.0


# --------------------------------------------------------------------------- guarded HTTP

class FakeAlpaca(ThreadingHTTPServer):
    """A tiny Alpaca stand-in. ``plan(method, path, body) -> (status, headers, body)``; requests
    are recorded as ``(method, path, arrival_time, body)``."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, float, dict | None]] = []
        self.plan = lambda method, path, body: (200, {}, {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, method: str) -> int:
        return sum(1 for m, *_ in self.seen if m == method)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.seen.append((self.command, self.path, time.time(), body))
        status, headers, payload = self.server.plan(self.command, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve


@pytest.fixture
def fake_alpaca():
    server = FakeAlpaca()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class RecordingAdapter(HTTPAdapter):
    """The real transport, noting the timeout every request was sent with."""

    def __init__(self):
        super().__init__()
        self.timeouts: list = []

    def send(self, request, **kwargs):
        self.timeouts.append(kwargs.get("timeout"))
        return super().send(request, **kwargs)


RATE_LIMITED = {"code": 42910000, "message": "rate limit exceeded"}


def order_json(body: dict) -> dict:
    now = datetime.now(UTC).isoformat()
    return {"id": str(uuid.uuid4()), "client_order_id": body["client_order_id"], "created_at": now,
            "updated_at": now, "submitted_at": now, "asset_id": str(uuid.uuid4()), "symbol": body["symbol"],
            "asset_class": "us_equity", "qty": str(body["qty"]), "filled_qty": "0", "order_class": "simple",
            "order_type": "market", "type": "market", "side": body["side"], "time_in_force": body["time_in_force"],
            "status": "accepted", "extended_hours": False}


def trading_client(url: str) -> TradingClient:
    return TradingClient(api_key="k", secret_key="s", paper=True, url_override=url)


def test_429_pauses_every_worker_until_the_reset(redis_url, fake_alpaca):
    undisturbed(redis_url, lambda: shared_back_off(redis_url, fake_alpaca))


def shared_back_off(redis_url: str, fake_alpaca: FakeAlpaca) -> None:
    fake_alpaca.seen.clear()
    name = f"alpaca-{uuid.uuid4().hex[:8]}"
    resets: list[int] = []

    def plan(method, path, body):
        if len(fake_alpaca.seen) == 1:
            resets.append(int(time.time()) + 2)     # Alpaca sends whole epoch seconds
            return 429, {"X-RateLimit-Reset": resets[0], "X-RateLimit-Remaining": 0}, RATE_LIMITED
        return 200, {}, {"ok": True}

    fake_alpaca.plan = plan
    worker_a = GuardedSession(RedisTokenBucket(redis_url, name=name), timeout=2.0)
    worker_b = GuardedSession(RedisTokenBucket(redis_url, name=name), timeout=2.0)   # another worker
    adapters = [RecordingAdapter(), RecordingAdapter()]
    worker_a.mount("http://", adapters[0])
    worker_b.mount("http://", adapters[1])

    first = worker_a.get(fake_alpaca.url + "/v2/account")
    assert first.status_code == 429 and first.json() == RATE_LIMITED      # returned unchanged
    (reset,) = resets
    assert_pause_ends_at(worker_b.bucket, reset, tolerance=1e-3)           # the other worker is paused too

    second = worker_b.get(fake_alpaca.url + "/v2/clock")
    assert second.status_code == 200
    assert fake_alpaca.seen[1][2] >= reset                                  # it waited for the reset
    assert [a.timeouts for a in adapters] == [[(2.0, 2.0)], [(2.0, 2.0)]]
    assert worker_a.get(fake_alpaca.url + "/v2/clock", timeout=7).status_code == 200
    assert adapters[0].timeouts[-1] == 7                                    # an explicit timeout wins


def test_guard_client_stops_alpaca_retrying_an_order_submit(fake_alpaca):
    resets: list[int] = []

    def plan(method, path, body):
        resets.append(int(time.time()) + 30)
        return 429, {"X-RateLimit-Reset": resets[-1]}, RATE_LIMITED

    fake_alpaca.plan = plan
    order = MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                               client_order_id="exit-42")

    # Control: unguarded, alpaca-py re-sends the same order on 429 (wait shortened for the test).
    unguarded = trading_client(fake_alpaca.url)
    unguarded._retry_wait = 0
    with pytest.raises(APIError):
        unguarded.submit_order(order)
    assert fake_alpaca.count("POST") == 4
    fake_alpaca.seen.clear()

    bucket = LocalTokenBucket()
    client = guard_client(trading_client(fake_alpaca.url), timeout=3.0, bucket=bucket)
    assert client._retry == 0 and isinstance(client._session, GuardedSession)
    adapter = RecordingAdapter()
    client._session.mount("http://", adapter)
    with pytest.raises(APIError) as caught:
        client.submit_order(order)
    assert fake_alpaca.count("POST") == 1
    assert api_error_status(caught.value) == 429 and api_error_code(caught.value) == 42910000
    # Paused until the header's reset, not the 2 s fallback (the local bucket turns the epoch into
    # its monotonic clock; the tolerance only covers that conversion).
    assert_pause_ends_at(bucket, resets[-1], tolerance=0.5)
    assert adapter.timeouts == [(3.0, 3.0)]


def test_retry_after_rate_limit_resubmits_the_same_order_after_the_pause(fake_alpaca):
    reset = time.time() + 1.0

    def plan(method, path, body):
        if fake_alpaca.count("POST") == 1:
            return 429, {"Retry-After": "1"}, RATE_LIMITED
        return 200, {}, order_json(body)

    fake_alpaca.plan = plan
    bucket = LocalTokenBucket()
    client = guard_client(trading_client(fake_alpaca.url), timeout=3.0, bucket=bucket)
    order = MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY,
                               client_order_id="exit-7")
    placed = retry_after_rate_limit(lambda: client.submit_order(order))
    assert placed.client_order_id == "exit-7"
    posts = [s for s in fake_alpaca.seen if s[0] == "POST"]
    assert len(posts) == 2
    assert [p[3]["client_order_id"] for p in posts] == ["exit-7", "exit-7"]
    assert posts[1][2] >= reset - 0.05                 # resent only once the pause was over

    # Other errors are not retried.
    fake_alpaca.seen.clear()
    fake_alpaca.plan = lambda method, path, body: (422, {}, {"code": 40010001, "message": "duplicate"})
    with pytest.raises(APIError) as caught:
        retry_after_rate_limit(lambda: client.submit_order(order))
    assert fake_alpaca.count("POST") == 1
    assert api_error_status(caught.value) == 422 and api_error_code(caught.value) == 40010001

    # Attempts are bounded.
    fake_alpaca.seen.clear()
    fake_alpaca.plan = lambda method, path, body: (429, {"Retry-After": "0.05"}, RATE_LIMITED)
    with pytest.raises(APIError):
        retry_after_rate_limit(lambda: client.get_account(), attempts=3)
    assert fake_alpaca.count("GET") == 3


def test_every_request_has_a_timeout():
    silent = socket.socket()                           # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    # Without a timeout the call would hang forever; closing the socket later resets the
    # connection (a ConnectionError, not a Timeout) so such a regression fails instead of hanging.
    closer = threading.Timer(5.0, silent.close)
    closer.start()
    try:
        client = guard_client(trading_client(f"http://127.0.0.1:{silent.getsockname()[1]}"),
                              timeout=0.5, bucket=LocalTokenBucket())
        adapter = RecordingAdapter()
        client._session.mount("http://", adapter)
        with pytest.raises(requests.exceptions.Timeout):
            client.get_account()
        assert adapter.timeouts == [(0.5, 0.5)]      # the one request carried the configured timeout
    finally:
        closer.cancel()
        silent.close()


def test_error_helpers_and_reset_parsing():
    assert api_error_code(APIError("not json")) is None
    assert api_error_status(APIError("{}")) is None
    assert api_error_status(ValueError("x")) is None and api_error_code(ValueError("x")) is None
    now = 1_700_000_000.0
    assert rate_limit_reset({"X-RateLimit-Reset": "1700000042"}, now) == 1_700_000_042
    assert rate_limit_reset({"Retry-After": "3"}, now) == now + 3
    assert rate_limit_reset({"Retry-After": "Tue, 14 Nov 2023 22:14:00 GMT"}, now) == 1_700_000_040
    assert rate_limit_reset({"X-RateLimit-Reset": "soon"}, now) is None
    assert rate_limit_reset({}, now) is None
    with pytest.raises(ValueError):
        GuardedSession(LocalTokenBucket(), timeout=0)
