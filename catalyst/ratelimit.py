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

A classic token bucket (capacity C, refill r/s) only guarantees ``C + r*per`` per window, so to
hold the bound it must give up either burst or sustained rate (``C + r*per <= rate``). Instead,
both buckets keep a *sliding-window log*: the grant times of the last ``per`` seconds. A request
of cost ``k`` is granted only if the log holds at most ``rate - k`` grants younger than ``per``
seconds; otherwise the answer is the exact wait until enough old grants leave the window. This
is the simplest design that guarantees the bound *and* still allows the full ``rate`` both as a
burst and as a sustained throughput. Proof: take any ``rate + 1`` grants inside a window shorter
than ``per``; when the last of them was granted, the other ``rate`` were all younger than ``per``
seconds and in the log, so it would have been refused. Memory is one entry per grant in the last
window (200 entries for Alpaca).

``burst`` (optional, default ``rate``) adds a smoothing constraint from the same log: at most
``burst`` grants in any window of ``burst * per / rate`` seconds. It never loosens the main bound.

A *pause* (``pause_until(epoch)``, e.g. after HTTP 429 with ``X-RateLimit-Reset``) makes every
acquirer wait until that instant; it can be extended but never shortened.

Redis layout (keys share a hash tag, so they live in one cluster slot):
``catalyst:ratelimit:{name}:log`` (sorted set, score = grant time in µs of Redis ``TIME``),
``...:seq`` (member counter) and ``...:pause`` (pause end, epoch µs). One Lua script checks the
pause, trims the log, and grants or answers the wait, atomically; the time comes from Redis
``TIME`` inside the script, so hosts with skewed clocks still agree. Everything expires on its
own once idle: Redis only holds what can be rebuilt (an empty log merely allows a fresh burst).

Caveat: the bound is on grant times. Network latency jitter between the grant and the moment
Alpaca counts the request can shift a request across a window edge; pass a slightly lower
``rate`` (e.g. 190) if Alpaca's own count must never be reached.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
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


def _jitter(wait: float) -> float:
    """A little randomness so acquirers woken by the same event do not all retry in lock-step."""
    return random.uniform(0.0, min(0.02, 0.001 + wait * 0.02))


class _Waiter:
    """The acquire loop shared by both buckets: ``_try(cost)`` returns ``(granted, wait, grant_time)``."""

    _local: threading.local

    def _try(self, cost: int) -> tuple[bool, float, float]:
        raise NotImplementedError

    def _acquire(self, cost: int, timeout: float | None) -> float:
        if timeout is not None and (not math.isfinite(timeout) or timeout < 0):
            raise ValueError(f"timeout must be None or a non-negative number, got {timeout!r}")
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        while True:
            granted, wait, at = self._try(cost)
            now = time.monotonic()
            if granted:
                self._local.last_grant = at
                return now - start
            if deadline is not None and now + wait > deadline:
                raise RateLimitTimeout(
                    f"rate limit: {cost} request(s) not allowed for another {wait:.3f}s "
                    f"(timeout {timeout:.3f}s)")
            sleep = wait + _jitter(wait)
            if deadline is not None:
                sleep = min(sleep, max(0.0, deadline - now))
            time.sleep(sleep)

    @property
    def last_grant(self) -> float | None:
        """When this thread's last grant happened, on the bucket's own clock (for tests/metrics)."""
        return getattr(self._local, "last_grant", None)


_ACQUIRE = """
-- KEYS: log (zset), pause (string, epoch us), seq (counter)
-- ARGV: window_us, limit, burst_window_us, burst, cost
-- returns {granted (1/0), wait_us, now_us}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then
  return {0, pause - now, now}
end
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local bwindow = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
-- a grant at time s is inside the window while now - s < window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
local wait = 0
if count + cost > limit then
  local idx = count + cost - limit - 1
  local e = redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')
  wait = tonumber(e[2]) + window - now
end
if burst < limit then
  local lo = string.format('(%.0f', now - bwindow)
  local recent = redis.call('ZCOUNT', KEYS[1], lo, '+inf')
  if recent + cost > burst then
    local e = redis.call('ZRANGEBYSCORE', KEYS[1], lo, '+inf', 'WITHSCORES', 'LIMIT', recent + cost - burst - 1, 1)
    local w = tonumber(e[2]) + bwindow - now
    if w > wait then wait = w end
  end
end
if wait > 0 then
  return {0, wait, now}
end
local seq = redis.call('INCRBY', KEYS[3], cost)
for i = 1, cost do
  redis.call('ZADD', KEYS[1], now, string.format('%.0f-%d', now, seq - cost + i))
end
local ttl = math.ceil(window / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return {1, 0, now}
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
    connection pool). Redis errors propagate *before* any request is sent.
    """

    def __init__(self, redis_url: str, name: str = "alpaca", rate: int = ALPACA_RATE, per: float = ALPACA_PER,
                 burst: int | None = None, *, client: redis.Redis | None = None):
        self.rate, self.per, self.burst = _validate(rate, per, burst)
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

    def _try(self, cost: int) -> tuple[bool, float, float]:
        granted, wait_us, now_us = self._acquire_script(
            keys=list(self.keys), args=[self._window_us, self.rate, self._burst_window_us, self.burst, cost])
        return bool(granted), int(wait_us) / 1_000_000, int(now_us) / 1_000_000

    def acquire(self, cost: int = 1, timeout: float | None = None) -> float:
        _check_cost(cost, self.burst)
        return self._acquire(cost, timeout)

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
    """The same sliding-window log for one process (threads share it under a lock)."""

    def __init__(self, rate: int = ALPACA_RATE, per: float = ALPACA_PER, burst: int | None = None):
        self.rate, self.per, self.burst = _validate(rate, per, burst)
        self._burst_window = self.per * self.burst / self.rate
        self._log: deque[float] = deque()
        self._paused_until = 0.0  # monotonic
        self._lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"LocalTokenBucket(rate={self.rate}, per={self.per}, burst={self.burst})"

    def _try(self, cost: int) -> tuple[bool, float, float]:
        with self._lock:
            now = time.monotonic()
            if self._paused_until > now:
                return False, self._paused_until - now, now
            log = self._log
            while log and log[0] <= now - self.per:
                log.popleft()
            wait = 0.0
            if len(log) + cost > self.rate:
                wait = log[len(log) + cost - self.rate - 1] + self.per - now
            if self.burst < self.rate:
                recent = [t for t in log if t > now - self._burst_window]
                if len(recent) + cost > self.burst:
                    wait = max(wait, recent[len(recent) + cost - self.burst - 1] + self._burst_window - now)
            if wait > 0:
                return False, wait, now
            log.extend([now] * cost)
            return True, 0.0, now

    def acquire(self, cost: int = 1, timeout: float | None = None) -> float:
        _check_cost(cost, self.burst)
        return self._acquire(cost, timeout)

    def pause_until(self, epoch_seconds: float) -> None:
        if not math.isfinite(epoch_seconds):
            raise ValueError(f"pause_until needs a finite epoch, got {epoch_seconds!r}")
        with self._lock:
            target = time.monotonic() + (epoch_seconds - time.time())
            self._paused_until = max(self._paused_until, target)

    def pause_remaining(self) -> float:
        with self._lock:
            return max(0.0, self._paused_until - time.monotonic())


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
