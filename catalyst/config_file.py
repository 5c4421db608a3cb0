"""The ``CATALYST_CONFIG`` YAML file: flat setting names, or the seeds' sections, mapped to settings.

Two spellings are accepted and may be mixed. Flat keys are setting names (``max_positions: 3``)
or their environment names (``CATALYST_MAX_POSITIONS: 3``). Sections follow seed 003's files
(``trading_session``, ``workflow``, ``risk_limits``, ``emergency_actions``), seed 002's
``trading`` and Catalyst's own ``signals``; each maps the seeds' key names onto Catalyst's
(``risk_limits.max_position_size_usd`` is ``max_position_value_usd``) and also takes Catalyst's
own names for the settings that belong there.

Nothing is ignored: an unknown key, a seed key Catalyst does not implement, a key set twice or a
YAML mapping with a duplicate key is refused, naming the key and its section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from catalyst.core.domain import BadInput


class _Refused(Exception):
    """A section key's value cannot be used; the message completes "section.key ..."."""


_SKIP = object()  # a key that is accepted but sets nothing (Catalyst's fixed behaviour)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refused(f"must be a number, got {value!r}")
    return float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Refused(f"must be true or false, got {value!r}")
    return value


def _mode(value: Any) -> Any:
    if value == "autonomous":
        return True
    if value == "supervised":
        raise _Refused("= supervised is not supported: Catalyst never waits for an approval "
                       "(auto_entries: false leaves every entry to `catalyst open`)")
    raise _Refused(f"must be 'autonomous' (auto_entries: false switches the scanner's entries off), got {value!r}")


def _auto_close(value: Any) -> Any:
    """On is Catalyst's near-close exit (the default); off switches that signal off."""
    return _SKIP if _flag(value) else None


def _always(what: str) -> Callable[[Any], Any]:
    """A seed switch for something Catalyst always does: true is accepted, false is not supported."""

    def check(value: Any) -> Any:
        if _flag(value):
            return _SKIP
        raise _Refused(f"= false is not supported: Catalyst's emergency stop always {what}")

    return check


@dataclass(frozen=True)
class Key:
    """A section key: the setting it fills (``signals.<name>`` for a threshold), how its value
    converts, or why it is refused."""

    setting: str | None = None
    convert: Callable[[Any], Any] | None = None
    unsupported: str | None = None


def _own(*names: str) -> dict[str, Key]:
    return {name: Key(name) for name in names}


SECTIONS: dict[str, dict[str, Key]] = {
    "trading": {
        # seed 003 (trading_session)
        "mode": Key("auto_entries", _mode),
        "auto_close_at_market_close": Key("signals.near_close_minutes", _auto_close),
        "max_hold_time_minutes": Key("max_hold_hours", lambda v: _number(v) / 60.0),
        # seed 002 (trading)
        "max_positions": Key("max_positions"),
        "max_position_value": Key("max_position_value_usd"),
        "min_position_value": Key("min_position_value_usd"),
        "daily_loss_limit": Key("max_daily_loss_usd"),
        "position_stop_loss_pct": Key("stop_loss_pct"),
        "trailing_stop_pct": Key(unsupported="set signals.trailing_stop_pct instead, in percent of the "
                                             "high-watermark (3 means 3 %)"),
        "default_order_type": Key(unsupported="Catalyst enters with market orders and protects each "
                                              "position with a broker-side stop"),
        **_own("auto_entries", "stop_loss_pct", "take_profit_pct", "max_hold_hours", "position_size_usd", "sizing",
               "equity_pct", "risk_per_trade_usd", "atr_stop_multiple", "atr_target_multiple"),
    },
    "workflow": {
        "scan_frequency_minutes": Key("scan_interval", lambda v: _number(v) * 60.0),
        "execute_top_n": Key("scan_top_n"),
        **_own("scan_interval", "scan_top_n"),
    },
    "risk_limits": {
        "max_daily_loss_usd": Key("max_daily_loss_usd"),
        "warning_threshold_pct": Key("daily_loss_warning_pct"),
        "max_positions": Key("max_positions"),
        "max_position_size_usd": Key("max_position_value_usd"),
        **_own("daily_loss_warning_pct", "max_position_value_usd", "min_position_value_usd",
               "max_sector_exposure_usd", "min_reward_risk", "sectors"),
    },
    "emergency_actions": {
        "close_all_positions": Key(None, _always("closes every position")),
        "halt_new_trades": Key(None, _always("halts new entries")),
        "require_manual_restart": Key(None, _always("waits for `catalyst resume --confirm`")),
        # true: alerts are e-mailed when SMTP_HOST and ALERT_EMAIL_TO are set; false: never e-mailed
        "notify_via_email": Key("notify_via_email", _flag),
    },
}
SECTION_NAMES = {"trading": "trading", "trading_session": "trading", "workflow": "workflow",
                 "risk_limits": "risk_limits", "emergency_actions": "emergency_actions"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a second ``risk_limits:`` would silently drop the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable: SafeLoader's own error says so
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str) -> dict[str, Any]:
    """The file's top-level mapping, or ``BadInput`` naming the file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BadInput(f"CATALYST_CONFIG {path!r} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"CATALYST_CONFIG {path!r} is not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"CATALYST_CONFIG {path!r} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise BadInput(f"CATALYST_CONFIG {path!r} must hold a mapping of setting: value")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong, and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def flatten(data: dict[str, Any], flat_names: dict[str, str], path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Settings by field name, and the key each came from (``risk_limits.max_position_size_usd``).

    ``flat_names`` maps every accepted flat spelling (lower-cased field and environment names)
    to its field name.
    """
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    problems: list[str] = []
    thresholds: dict[str, tuple[Any, str]] = {}  # signals set from a section (auto-close)

    def put(field: str, value: Any, origin: str) -> None:
        if field in origins:
            problems.append(f"{field} is set twice: by {origins[field]} and by {origin}")
            return
        values[field], origins[field] = value, origin

    for raw_key, value in data.items():
        key = str(raw_key)
        lowered = key.lower()
        if lowered in SECTION_NAMES and lowered not in flat_names:
            _section(key, SECTION_NAMES[lowered], value, flat_names, put, thresholds, problems)
        elif lowered in flat_names:
            put(flat_names[lowered], value, key)
        else:
            problems.append(f"unknown key {key!r} at the top level")

    if thresholds:
        _merge_thresholds(values, origins, thresholds, problems)
    if problems:
        raise BadInput(f"CATALYST_CONFIG {path!r}: " + "; ".join(problems))
    return values, origins


def _merge_thresholds(values, origins, thresholds, problems) -> None:
    """Fold section keys that set a signal threshold (auto-close) into the ``signals`` setting."""
    given = values.get("signals")
    if given is not None and not isinstance(given, dict):
        return  # the signals setting's own check names that problem
    signals = dict(given or {})
    for name, (value, origin) in thresholds.items():
        if name not in signals:
            if value is not _SKIP:
                signals[name] = value
        elif (value is _SKIP) != (signals[name] is not None):  # on with a window, or off twice: consistent
            shown = "null" if signals[name] is None else signals[name]
            problems.append(f"{origin} conflicts with signals.{name}: {shown}")
    if signals != (given or {}):
        values["signals"] = signals
        origins.setdefault("signals", ", ".join(origin for _, origin in thresholds.values()))


def _section(written: str, section: str, body: Any, flat_names: dict[str, str], put, thresholds, problems) -> None:
    if body is None:
        return  # an empty section (all of its keys commented out)
    if not isinstance(body, dict):
        problems.append(f"section {written} must be a mapping of key: value, got {body!r}")
        return
    keys = SECTIONS[section]
    for raw_key, value in body.items():
        key = str(raw_key)
        origin = f"{written}.{key}"
        spec = keys.get(key.lower())
        if spec is None:
            hint = (f"{key} belongs at the top level" if key.lower() in flat_names
                    else f"{written} takes: {', '.join(sorted(keys))}")
            problems.append(f"unknown key {key!r} in section {written} ({hint})")
            continue
        if spec.unsupported:
            problems.append(f"{origin} is not supported: {spec.unsupported}")
            continue
        try:
            converted = spec.convert(value) if spec.convert else value
        except _Refused as exc:
            problems.append(f"{origin} {exc}")
            continue
        if spec.setting is None:
            continue
        if spec.setting.startswith("signals."):
            thresholds[spec.setting.split(".", 1)[1]] = (converted, origin)
        elif converted is not _SKIP:
            put(spec.setting, converted, origin)
