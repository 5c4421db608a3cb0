"""Catalyst's pure rules: value types, exit signals, thresholds, indicators, sessions and the scanner.

Nothing here touches a database, a queue, the network or an SDK; a layering contract
(``[tool.importlinter]`` in pyproject.toml, checked by ``tests/test_layers.py``) keeps it that way, so every rule can
be tested, replayed and reasoned about on its own.
"""
