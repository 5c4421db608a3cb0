"""Pointing Catalyst at the fake Alpaca server, and keeping its market in step with simulated time."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from catalyst.runtime import get_runtime
from tests.support import environment

EST = timezone(timedelta(hours=-5))
SESSION_DAY = datetime(2025, 3, 4, 9, 30, tzinfo=EST)  # a Tuesday (XNYS open)
START = SESSION_DAY + timedelta(minutes=30)  # 10:00 New York


def alpaca_env(fake, pg_url: str, redis_url: str, tmp_path, *, start: datetime = START, speed: float = 1,
               **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
            "CATALYST_BROKER": "alpaca", "CATALYST_MARKET_DATA": "alpaca", "ALPACA_API_KEY": fake.key_id,
            "ALPACA_SECRET_KEY": fake.secret, "ALPACA_BASE_URL": fake.base_url, "ALPACA_DATA_URL": fake.base_url,
            "CATALYST_CLOCK": f"sim:{start.isoformat()}@{speed:g}", "ALPACA_TIMEOUT": "2",
            "CATALYST_AUTO_ENTRIES": "false", "CATALYST_FILL_WAIT_SECONDS": "1", **extra}


class MarketDriver(threading.Thread):
    """Keeps the fake's clock on simulated time and re-prints prices so quotes stay fresh."""

    def __init__(self, fake, prices: dict[str, float], clock) -> None:
        super().__init__(daemon=True)
        self.fake, self.prices, self.clock = fake, dict(prices), clock
        self._stop = threading.Event()
        self.tick()

    def set(self, symbol: str, price: float) -> None:
        self.prices[symbol] = price
        self.tick()

    def tick(self) -> None:
        self.fake.now = self.clock.now()
        for symbol, price in list(self.prices.items()):
            self.fake.set_price(symbol, price)

    def run(self) -> None:
        while not self._stop.wait(0.2):
            self.tick()

    def stop(self) -> None:
        self._stop.set()


@contextmanager
def alpaca_market(fake, env: dict[str, str], prices: dict[str, float]):
    """This process on the fake Alpaca with a running market; yields the driver."""
    with environment(env):
        clock = get_runtime().clock
        driver = MarketDriver(fake, prices, clock)
        driver.start()
        try:
            yield driver
        finally:
            driver.stop()
