"""A request budget shared by every worker, so that together they stay under Alpaca's limit.

Alpaca allows 200 requests per minute per account. Every Celery worker process (on any host)
talks to Alpaca with the same keys, so the budget must be shared: :class:`RedisTokenBucket`
keeps it in Redis; :class:`LocalTokenBucket` is the single-process equivalent for the embedded
default (no ``REDIS_URL``).

The guarantee
-------------
With ``rate`` grants per ``per`` seconds, **no window of ``per`` seconds ever contains more
than ``rate`` grants** (half-open windows ``[t, t + per)``; grant times are the limiter's own
clock: Redis ``TIME`` for the shared bucket, ``time.monotonic()`` for the local one).

Both buckets take optional ``time_fn`` (a monotonic clock, default ``time.monotonic``) and
``sleep_fn`` (default ``time.sleep``); the local one also ``wall_fn`` (default ``time.time``, to
turn a pause's epoch into its own clock). They exist so that tests can run the arithmetic on a
fake clock; the shared bucket's grant times always come from Redis ``TIME``.

A classic token bucket (capacity C, refill r/s) only guarantees ``C + r*per`` per window, so to
hold the bound it must give up either burst or sustained rate (``C + r*per <= rate``). Instead,
both buckets keep a *sliding-window log of reservations*: the times of recent and already
scheduled grants, in order. A request of cost ``k`` is given the earliest slot ``t`` such that

* ``t >= now``, ``t >=`` the last scheduled grant (so the log stays in time order), ``t >=`` the
  end of any pause, and
* ``t >= e + per`` where ``e`` is the grant ``rate`` positions before the last of the ``k`` new
  ones — i.e. any ``rate + 1`` consecutive grants span at least ``per`` seconds.

The slot is written into the log at once and the caller just sleeps until it. Proof of the
bound: a window ``[a, a + per)`` holding ``rate + 1`` grants would hold ``rate + 1`` consecutive
ones spanning less than ``per``. Throughput is the full ``rate`` both as a burst and sustained
(slots are exactly ``per`` after the grant ``rate`` earlier), waiters are served first come first
served (no thundering herd, no starvation: a worker's wait is bounded by its place in line), and
a slot whose caller gave up or died is simply not used (the bound errs on the safe side).
Memory is one entry per grant in the window (200 for Alpaca). A caller whose ``timeout`` is
shorter than the wait gets :class:`RateLimitTimeout` and reserves nothing.

``burst`` (optional, default ``rate``) adds a smoothing constraint from the same log: at most
``burst`` grants in any window of ``burst * per / rate`` seconds. It never loosens the main bound.

A *pause* (``pause_until(epoch)``, e.g. after HTTP 429 with ``X-RateLimit-Reset``) makes every
acquirer wait until that instant; it can be extended but never shortened. A caller whose slot
was reserved before the pause was set checks the pause after sleeping and, if it is on, queues
again for a slot after it (the old slot is left unused).

Redis layout (keys share a hash tag, so they live in one cluster slot):
``catalyst:ratelimit:{name}:log`` (sorted set, score = grant time in µs of Redis ``TIME``),
``...:seq`` (member counter) and ``...:pause`` (pause end, epoch µs). One Lua script trims the
log, honours the pause and reserves the slot (or refuses, for a short timeout), atomically. The
time comes from Redis ``TIME`` inside the script, so hosts with skewed clocks still agree; a
caller only ever sleeps the *relative* wait the script returned, so it never starts early.
Everything expires on its own once idle: Redis only holds what can be rebuilt. If the keys are
lost (flush, failover to a replica that missed the last writes) the log restarts empty, which
can let one extra burst through in that window.

Caveat: the bound is on grant times. Network latency jitter between the grant and the moment
Alpaca counts the request can shift a request across a window edge; pass a slightly lower
``rate`` (e.g. 190) if Alpaca's own count must never be reached.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import redis

ALPACA_RATE = 200
ALPACA_PER = 60.0

__all__ = ["ALPACA_PER", "ALPACA_RATE", "LocalTokenBucket", "RateLimitTimeout", "RedisTokenBucket",
           "TokenBucket", "bucket_from_settings"]


class RateLimitTimeout(TimeoutError):
    """The request budget would not allow the call within the caller's timeout (nothing was sent)."""


@runtime_checkable
class TokenBucket(Protocol):
    def acquire(self, cost: int = 1, timeout: float | None = None) -> float:
        """Block until ``cost`` requests are allowed; return the seconds waited.

        Raises :class:`RateLimitTimeout` as soon as it is known the grant cannot happen within
        ``timeout`` seconds (``None``: wait as long as needed; ``0``: try once).
        """
        ...

    def pause_until(self, epoch_seconds: float) -> None:
        """Make every acquirer wait until ``epoch_seconds`` (wall clock, Unix epoch)."""
        ...

    def pause_remaining(self) -> float:
        """Seconds left in the current pause (0.0 when not paused)."""
        ...


def _validate(rate: int, per: float, burst: int | None) -> tuple[int, float, int]:
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise ValueError(f"rate must be a positive integer, got {rate!r}")
    if not (isinstance(per, int | float) and math.isfinite(per) and per > 0):
        raise ValueError(f"per must be a positive number of seconds, got {per!r}")
    burst = rate if burst is None else burst
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= rate:
        raise ValueError(f"burst must be an integer in 1..rate ({rate}), got {burst!r}")
    return rate, float(per), burst


def _check_cost(cost: int, burst: int) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= burst:
        raise ValueError(f"cost must be an integer in 1..{burst}, got {cost!r}")


class _Waiter:
    """The acquire loop shared by both buckets.

    ``_reserve(cost, max_wait)`` returns ``(reserved, wait, slot)``: the slot (on the bucket's
    clock) and how long until it; nothing is reserved when ``wait`` exceeds ``max_wait``.
    """

    _local: threading.local
    burst: int
    # None: look ``time.monotonic`` / ``time.sleep`` up at call time (what every production caller uses).
    _time_fn: Callable[[], float] | None = None
    _sleep_fn: Callable[[float], Any] | None = None

    def _monotonic(self) -> float:
        return time.monotonic() if self._time_fn is None else self._time_fn()

    def _sleep(self, seconds: float) -> None:
        if self._sleep_fn is None:
            time.sleep(seconds)
        else:
            self._sleep_fn(seconds)

    def acquire(self, cost: int = 1, timeout: float | None = None) -> float:
        _check_cost(cost, self.burst)
        return self._acquire(cost, timeout)

    def _reserve(self, cost: int, max_wait: float | None) -> tuple[bool, float, float]:
        raise NotImplementedError

    def pause_remaining(self) -> float:
        raise NotImplementedError

    def _acquire(self, cost: int, timeout: float | None) -> float:
        if timeout is not None and (not math.isfinite(timeout) or timeout < 0):
            raise ValueError(f"timeout must be None or a non-negative number, got {timeout!r}")
        start = self._monotonic()
        deadline = None if timeout is None else start + timeout
        while True:
            max_wait = None if deadline is None else max(0.0, deadline - self._monotonic())
            reserved, wait, slot = self._reserve(cost, max_wait)
            if not reserved:
                raise RateLimitTimeout(
                    f"rate limit: {cost} request(s) not allowed for another {wait:.3f}s "
                    f"(timeout {timeout:.3f}s); nothing reserved")
            if wait <= 0:  # granted now: the script checked the pause atomically
                break
            self._sleep(wait)
            # A 429 elsewhere may have paused everyone after our slot was reserved.
            if self.pause_remaining() <= 0:
                break
        self._local.last_grant = slot
        return self._monotonic() - start

    @property
    def last_grant(self) -> float | None:
        """This thread's last granted slot, on the bucket's own clock (for tests/metrics)."""
        return getattr(self._local, "last_grant", None)


_ACQUIRE = """
-- KEYS: log (zset of grant slots, us), pause (string, epoch us), seq (member counter)
-- ARGV: window_us, limit, burst_window_us, burst, cost, max_wait_us (-1: no limit)
-- returns {reserved (1/0), wait_us, slot_us}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local bwindow = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local max_wait = tonumber(ARGV[6])
-- slots at least a window old cannot constrain any slot from now on
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local at = now
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > at then at = pause end
local n = redis.call('ZCARD', KEYS[1])
if n > 0 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if tonumber(last[2]) > at then at = tonumber(last[2]) end
  -- any limit+1 consecutive slots must span >= window (and burst+1 >= bwindow)
  if n + cost > limit then
    local i = n + cost - limit - 1
    local e = redis.call('ZRANGE', KEYS[1], i, i, 'WITHSCORES')
    if tonumber(e[2]) + window > at then at = tonumber(e[2]) + window end
  end
  if burst < limit and n + cost > burst then
    local i = n + cost - burst - 1
    local e = redis.call('ZRANGE', KEYS[1], i, i, 'WITHSCORES')
    if tonumber(e[2]) + bwindow > at then at = tonumber(e[2]) + bwindow end
  end
end
local wait = at - now
if max_wait >= 0 and wait > max_wait then
  return {0, wait, at}
end
local seq = redis.call('INCRBY', KEYS[3], cost)
for i = 1, cost do
  redis.call('ZADD', KEYS[1], string.format('%.0f', at), string.format('%.0f-%d', at, seq - cost + i))
end
local ttl = math.ceil((wait + window) / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return {1, wait, at}
"""

_PAUSE = """
-- KEYS: pause; ARGV: until_us. Only ever extends the pause.
local new = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if new > cur then
  redis.call('SET', KEYS[1], string.format('%.0f', new))
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', math.ceil(new / 1000) + 1000))
end
return 1
"""

_REMAINING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
if pause > now then return pause - now end
return 0
"""


class RedisTokenBucket(_Waiter):
    """The shared budget: a sliding-window log in Redis (see the module docstring).

    Safe to share between threads and processes; create one per process (it holds a Redis
    connection pool). Redis errors propagate *before* any request is sent. ``time_fn`` and
    ``sleep_fn`` are the caller's side only (timeouts, the returned wait, the sleep until a slot).
    """

    def __init__(self, redis_url: str, name: str = "alpaca", rate: int = ALPACA_RATE, per: float = ALPACA_PER,
                 burst: int | None = None, *, client: redis.Redis | None = None,
                 time_fn: Callable[[], float] | None = None, sleep_fn: Callable[[float], Any] | None = None):
        self.rate, self.per, self.burst = _validate(rate, per, burst)
        self._time_fn, self._sleep_fn = time_fn, sleep_fn
        self.name = name
        self._redis = client or redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5,
                                                     health_check_interval=30)
        prefix = f"catalyst:ratelimit:{{{name}}}"
        self.keys = (f"{prefix}:log", f"{prefix}:pause", f"{prefix}:seq")
        self._window_us = int(round(self.per * 1_000_000))
        self._burst_window_us = int(round(self.per * self.burst / self.rate * 1_000_000))
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._pause_script = self._redis.register_script(_PAUSE)
        self._remaining_script = self._redis.register_script(_REMAINING)
        self._local = threading.local()

    def __repr__(self) -> str:  # never show the URL (it may carry a password)
        return f"RedisTokenBucket(name={self.name!r}, rate={self.rate}, per={self.per}, burst={self.burst})"

    def _reserve(self, cost: int, max_wait: float | None) -> tuple[bool, float, float]:
        max_wait_us = -1 if max_wait is None else int(max_wait * 1_000_000)
        reserved, wait_us, slot_us = self._acquire_script(
            keys=list(self.keys),
            args=[self._window_us, self.rate, self._burst_window_us, self.burst, cost, max_wait_us])
        return bool(reserved), int(wait_us) / 1_000_000, int(slot_us) / 1_000_000

    def pause_until(self, epoch_seconds: float) -> None:
        if not math.isfinite(epoch_seconds):
            raise ValueError(f"pause_until needs a finite epoch, got {epoch_seconds!r}")
        self._pause_script(keys=[self.keys[1]], args=[int(math.ceil(epoch_seconds * 1_000_000))])

    def pause_remaining(self) -> float:
        return int(self._remaining_script(keys=[self.keys[1]])) / 1_000_000

    def reset(self) -> None:
        """Forget all grants and any pause (tests, operator tooling)."""
        self._redis.delete(*self.keys)


class LocalTokenBucket(_Waiter):
    """The same reservation log for one process (threads share it under a lock); monotonic clock.

    ``time_fn`` is that clock, ``wall_fn`` the epoch clock pauses are given in, ``sleep_fn`` the
    sleep until a slot (defaults: ``time.monotonic``, ``time.time``, ``time.sleep``).
    """

    def __init__(self, rate: int = ALPACA_RATE, per: float = ALPACA_PER, burst: int | None = None, *,
                 time_fn: Callable[[], float] | None = None, sleep_fn: Callable[[float], Any] | None = None,
                 wall_fn: Callable[[], float] | None = None):
        self.rate, self.per, self.burst = _validate(rate, per, burst)
        self._time_fn, self._sleep_fn, self._wall_fn = time_fn, sleep_fn, wall_fn
        self._burst_window = self.per * self.burst / self.rate
        self._log: deque[float] = deque()
        self._paused_until = 0.0  # monotonic
        self._lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"LocalTokenBucket(rate={self.rate}, per={self.per}, burst={self.burst})"

    def _reserve(self, cost: int, max_wait: float | None) -> tuple[bool, float, float]:
        with self._lock:
            now = self._monotonic()
            log = self._log
            while log and log[0] <= now - self.per:
                log.popleft()
            at = max(now, self._paused_until)
            n = len(log)
            if n:
                at = max(at, log[-1])
                if n + cost > self.rate:
                    at = max(at, log[n + cost - self.rate - 1] + self.per)
                if self.burst < self.rate and n + cost > self.burst:
                    at = max(at, log[n + cost - self.burst - 1] + self._burst_window)
            wait = at - now
            if max_wait is not None and wait > max_wait:
                return False, wait, at
            log.extend([at] * cost)
            return True, wait, at

    def pause_until(self, epoch_seconds: float) -> None:
        if not math.isfinite(epoch_seconds):
            raise ValueError(f"pause_until needs a finite epoch, got {epoch_seconds!r}")
        with self._lock:
            now = self._monotonic()
            target = now + (epoch_seconds - (time.time() if self._wall_fn is None else self._wall_fn()))
            self._paused_until = max(self._paused_until, target)

    def pause_remaining(self) -> float:
        with self._lock:
            return max(0.0, self._paused_until - self._monotonic())


def bucket_from_settings(settings: Any, *, name: str = "alpaca", rate: int = ALPACA_RATE,
                         per: float = ALPACA_PER, burst: int | None = None) -> TokenBucket:
    """The shared Redis bucket when ``settings.redis_url`` is set, else a per-process local one.

    Note: a local bucket only bounds its own process; with the embedded default running several
    worker processes, give each a share of the limit (``rate=ALPACA_RATE // processes``).
    """
    url = getattr(settings, "redis_url", None)
    if url:
        return RedisTokenBucket(url, name=name, rate=rate, per=per, burst=burst)
    return LocalTokenBucket(rate=rate, per=per, burst=burst)
