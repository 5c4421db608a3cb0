"""Market-data adapters behind the :class:`MarketData` protocol."""
