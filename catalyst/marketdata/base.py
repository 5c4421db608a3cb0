"""The market-data protocol every source (synthetic, replay, alpaca) implements."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from catalyst.core.domain import Bar, Quote


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
