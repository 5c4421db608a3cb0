"""News as a catalyst: one article per symbol it mentions, and the verdict the funnel stores. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class NewsItem:
    """One headline about ``symbol`` (an article naming three symbols is three items)."""

    symbol: str
    headline: str
    created_at: datetime  # when it was published (timezone-aware)
    source: str | None = None


def by_symbol(items: Iterable[NewsItem], symbols: Iterable[str]) -> dict[str, list[NewsItem]]:
    """Items grouped per wanted symbol, newest first."""
    wanted = {s: [] for s in symbols}
    for item in items:
        if item.symbol in wanted:
            wanted[item.symbol].append(item)
    return {s: sorted(found, key=lambda i: (i.created_at, i.headline), reverse=True) for s, found in wanted.items()}


def verdict(items: Iterable[NewsItem], now: datetime, max_age_minutes: float) -> dict[str, Any]:
    """The newest headline published by ``now``, its age in minutes, and whether it is fresh enough to count."""
    known = [i for i in items if i.created_at <= now]
    if not known:
        return {"headline": None, "age_minutes": None, "fresh": False}
    latest = max(known, key=lambda i: (i.created_at, i.headline))
    age = (now - latest.created_at).total_seconds() / 60.0
    return {"headline": latest.headline, "age_minutes": round(age, 1), "created_at": latest.created_at.isoformat(),
            "source": latest.source, "fresh": age <= max_age_minutes}
