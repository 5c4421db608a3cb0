"""The market-data protocol every source (synthetic, replay, alpaca) implements."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from catalyst.core.domain import Bar, Quote
from catalyst.core.news import NewsItem


class MarketData(Protocol):
    """Read-only prices. Deterministic for the same inputs; safe to share between processes."""

    name: str

    def symbols(self) -> list[str]:
        """The tradable universe this source knows, sorted."""

    def quote(self, symbol: str, at: datetime) -> Quote | None:
        """Latest price known at ``at`` with no look-ahead; ``None`` when nothing is known yet.

        Raises ``UnknownSymbol`` for a symbol outside :meth:`symbols`.
        """

    def bars(self, symbol: str, end: datetime, count: int) -> list[Bar]:
        """Up to ``count`` most recent 1-minute bars *completed* at or before ``end``, ascending."""

    # Optional: a source without news answers no news; a failing source raises (the scan goes on without it).
    def news(self, symbols: list[str], since: datetime, until: datetime) -> list[NewsItem]:
        """Headlines about ``symbols`` published in ``[since, until]``, one item per symbol an article names."""
