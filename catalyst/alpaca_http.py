"""Make alpaca-py's REST clients safe to use from many workers.

alpaca-py (0.44) sends every request through ``client._session.request(method, url, **opts)``
with no timeout, and on HTTP 429/504 silently retries up to ``client._retry`` (3) times —
order submits included, which can duplicate an order whose first attempt actually reached the
broker. :func:`guard_client` fixes both:

* ``client._retry = 0`` (set on the attribute: the constructor ignores ``retry_attempts=0``), so
  alpaca-py never retries by itself; a 429 surfaces as ``APIError`` and the caller decides.
* ``client._session`` becomes a :class:`GuardedSession`, which for every HTTP request it sends
  (redirect hops included) first takes a token from the shared :class:`TokenBucket`, always
  passes a ``(connect, read)`` timeout, and on a 429 reads ``X-RateLimit-Reset`` (epoch seconds)
  or ``Retry-After`` and pauses the bucket so every worker backs off together. The response is
  returned unchanged.

:func:`retry_after_rate_limit` re-runs a call that is safe to repeat (a GET, or an order submit
carrying a ``client_order_id``: a duplicate gets 422 and is adopted) after a 429.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
from alpaca.common.exceptions import APIError

from catalyst.ratelimit import TokenBucket

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["GuardedSession", "api_error_code", "api_error_status", "guard_client", "rate_limit_reset",
           "retry_after_rate_limit"]

# A reset further away than this is treated as bogus (clamped), so one bad header cannot stall
# every worker for long. Alpaca's window is one minute.
MAX_PAUSE = 90.0
# Pause used when a 429 carries no usable reset information (or one already in the past).
FALLBACK_PAUSE = 2.0


def _timeout_pair(timeout: float | tuple[float, float]) -> tuple[float, float]:
    pair = (timeout, timeout) if isinstance(timeout, int | float) else tuple(timeout)
    if len(pair) != 2 or not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"timeout must be a positive number or a (connect, read) pair, got {timeout!r}")
    return float(pair[0]), float(pair[1])


def rate_limit_reset(headers: Any, now: float | None = None) -> float | None:
    """The epoch second when the quota resets, from ``X-RateLimit-Reset`` or ``Retry-After``.

    ``X-RateLimit-Reset`` is Unix epoch seconds (a small value is taken as seconds from now);
    ``Retry-After`` is seconds or an HTTP date. ``None`` when neither is present and parseable.
    """
    now = time.time() if now is None else now
    raw = headers.get("X-RateLimit-Reset") if headers is not None else None
    if raw is not None:
        try:
            value = float(str(raw).strip())
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value if value >= 1e9 else now + value
    raw = headers.get("Retry-After") if headers is not None else None
    if raw is not None:
        text = str(raw).strip()
        try:
            value = float(text)
            if math.isfinite(value) and value >= 0:
                return now + value
        except ValueError:
            try:
                return parsedate_to_datetime(text).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                pass
    return None


class GuardedSession(requests.Session):
    """A ``requests.Session`` that rate-limits, always times out, and shares 429 back-offs.

    The guard sits in :meth:`send`, which :meth:`request` (and ``get``/``post``/...) and redirect
    following all go through, so every HTTP request costs one token and carries a timeout.
    """

    def __init__(self, bucket: TokenBucket, timeout: float | tuple[float, float], *,
                 acquire_timeout: float | None = 120.0, max_pause: float = MAX_PAUSE,
                 fallback_pause: float = FALLBACK_PAUSE):
        super().__init__()
        self.bucket = bucket
        self.timeout = _timeout_pair(timeout)
        self.acquire_timeout = acquire_timeout
        self.max_pause = max_pause
        self.fallback_pause = fallback_pause

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        # Session.request(method, url, params, data, headers, cookies, files, auth, timeout, ...)
        if len(args) < 7 and kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().request(method, url, *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        # Raises RateLimitTimeout (nothing sent) if the budget will not allow it in time.
        waited = self.bucket.acquire(1, timeout=self.acquire_timeout)
        if waited > 1.0:
            log.info("alpaca rate limit: waited %.1fs before %s %s", waited, request.method, _path(request.url))
        response = super().send(request, **kwargs)
        if response.status_code == 429:
            self._back_off(response)
        return response

    def _back_off(self, response: requests.Response) -> None:
        now = time.time()
        reset = rate_limit_reset(response.headers, now)
        if reset is None or reset <= now:
            reset = now + self.fallback_pause
        reset = min(reset, now + self.max_pause)
        log.warning("alpaca rate limit hit (429 on %s %s): all workers pause %.1fs",
                    response.request.method if response.request else "?",
                    _path(response.url), reset - now)
        self.bucket.pause_until(reset)


def _path(url: str | None) -> str:
    """The URL without its query string (never log query parameters)."""
    return (url or "").split("?", 1)[0]


def guard_client(client: Any, *, timeout: float | tuple[float, float], bucket: TokenBucket,
                 acquire_timeout: float | None = 120.0) -> Any:
    """Make an alpaca-py ``RESTClient`` safe in place (and return it): no SDK retries, a timeout
    on every request, a shared rate limit, and a shared back-off after 429."""
    if not hasattr(client, "_session") or not hasattr(client, "_retry"):
        raise TypeError(f"guard_client expects an alpaca-py RESTClient, got {type(client).__name__}")
    old = client._session
    session = GuardedSession(bucket, timeout, acquire_timeout=acquire_timeout)
    if isinstance(old, requests.Session):
        session.headers.update(old.headers)
        session.proxies.update(old.proxies)
        session.verify, session.cert, session.trust_env = old.verify, old.cert, old.trust_env
        old.close()
    client._session = session
    client._retry = 0
    return client


def api_error_status(exc: BaseException) -> int | None:
    """The HTTP status of an alpaca ``APIError`` (or any exception carrying a response), else None."""
    status = None
    if isinstance(exc, APIError):
        try:
            status = exc.status_code
        except Exception:  # noqa: BLE001 - a malformed error object must not mask the original
            status = None
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None


def api_error_code(exc: BaseException) -> int | None:
    """Alpaca's numeric error ``code`` (e.g. 40010001 for a duplicate client_order_id), else None.

    ``APIError.code`` parses the body as JSON and raises on a non-JSON body; this never raises.
    """
    if not isinstance(exc, APIError):
        return None
    try:
        code = exc.code
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


RATE_LIMIT_ATTEMPTS = 30  # each 429 pauses everyone until its reset (seconds): minutes of patience in all


def retry_after_rate_limit(call: Callable[[], T], *, attempts: int = RATE_LIMIT_ATTEMPTS,
                           bucket: TokenBucket | None = None) -> T:
    """Run ``call``; on an ``APIError`` with status 429, run it again (up to ``attempts`` runs in all).

    Only pass calls that are SAFE to repeat: GETs, or an order submit carrying a
    ``client_order_id`` (a duplicate is rejected with 422 / 40010001 and can be adopted). The wait
    happens in the guarded session, which blocks on the shared pause the 429 set, so nothing is
    lost while waiting; with ``bucket`` given the pause is also waited out here (useful when the
    call is not made through a guarded client). Other errors propagate at once; after the last
    attempt the final 429 ``APIError`` propagates.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except APIError as exc:
            if api_error_status(exc) != 429 or attempt == attempts:
                raise
            log.info("alpaca 429: retrying (attempt %d of %d) once the rate-limit pause ends", attempt + 1, attempts)
            if bucket is not None:
                remaining = bucket.pause_remaining()
                if remaining > 0:
                    time.sleep(remaining)
    raise AssertionError("unreachable")
