"""Strict task arguments and disjoint client-order-id namespaces (issue 8, points 4 and 5), without I/O.

``catalyst.task_args`` is what every task runs first; these tests pin what it accepts, what it
refuses (always ``BadInput``, never ValueError/OverflowError, with a bounded message naming the
argument) and that every client order id Catalyst derives is owned by exactly one path.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalyst import client_ids, task_args
from catalyst.core.domain import BadInput
from catalyst.entries import entry_client_order_id
from catalyst.positions import exit_client_order_id
from catalyst.protection import standalone_stop_client_order_id


def refused(fn, value, name: str) -> str:
    with pytest.raises(BadInput) as raised:
        fn(value, name)
    message = str(raised.value)
    assert name in message and len(message) < 200, message
    return message


# -- ids ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [(1, 1), ("1", 1), ("007", 7), (2**31 - 1, 2**31 - 1),
                                            ("2147483647", 2**31 - 1)])
def test_an_id_is_an_int_or_ascii_digits_in_postgresqls_integer_range(value, expected):
    assert task_args.row_id(value, "position_id") == expected


@pytest.mark.parametrize("value", [
    "²", "⑴", "６", "٧", "１２", "߁",  # str.isdigit() says yes to all of these
    0, -1, "0", "-1", "+1", " 1", "1 ", "1\n", "1_000", "0x1", "1e3", "", "12345678901",
    2**31, "2147483648", 10**400, -(10**400),
    True, False, 1.0, 2.5, float("nan"), float("inf"), None, [1], {"id": 1}, b"1",
], ids=repr)
def test_anything_else_is_refused_as_bad_input_naming_the_argument(value):
    refused(task_args.row_id, value, "position_id")


def test_the_refusal_message_keeps_the_old_wording_and_shows_the_value_bounded():
    assert "position_id must be a positive integer" in refused(task_args.row_id, "abc", "position_id")
    assert "1329 bits" in refused(task_args.row_id, 10**400, "position_id")


# -- numbers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 10, 0.5, 1e-6, 1e9, 123.25])
def test_a_quantity_is_a_json_number_of_shares(value):
    assert task_args.quantity(value) == float(value)


@pytest.mark.parametrize("value", [True, False, "5", "1e3", None, [5], {"qty": 5}, 0, -1, 0.0, -0.0, 1e-7, 5e-324,
                                   1e9 + 1, 10**10, 10**400, float("nan"), float("inf"), float("-inf")], ids=repr)
def test_a_quantity_that_is_not_a_plain_bounded_number_is_refused(value):
    refused(task_args.quantity, value, "qty")


@pytest.mark.parametrize("value", [True, "90", 0, -1, 1e7 + 1, 10**400, float("nan"), float("inf"), [90]], ids=repr)
def test_a_price_that_is_not_a_plain_positive_bounded_number_is_refused(value):
    refused(task_args.price, value, "stop")


def test_an_absent_price_is_none_and_a_present_one_a_float():
    assert task_args.optional_price(None, "stop") is None
    assert task_args.optional_price(95, "stop") == 95.0


# -- text -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [("AAPL", "AAPL"), ("aapl", "AAPL"), ("BRK.B", "BRK.B"), ("0700", "0700"),
                                            ("A" * 16, "A" * 16)])
def test_a_symbol_is_a_bounded_ascii_ticker(value, expected):
    assert task_args.symbol(value) == expected


@pytest.mark.parametrize("value", ["", " AAPL", "AAPL ", "AA PL", "A" * 17, "ＡＡＰＬ", "ıbm", "ſpy", "AAPL\x00",
                                   "../x", "A;DROP", ".A", 12, None, True, ["AAPL"]], ids=repr)
def test_anything_else_as_a_symbol_is_refused(value):
    refused(task_args.symbol, value, "symbol")


@pytest.mark.parametrize("value", ["manual", "momentum", "reconciled", "earnings beat: 8-K", "r" * 64])
def test_a_reason_is_a_short_ascii_tag_that_fits_decisions_reason(value):
    assert task_args.reason(value) == value


@pytest.mark.parametrize("value", ["r" * 65, "r" * 100, "", " manual", "momentum\n", "mo\x00", "café", "\ud800", 7,
                                   None, True], ids=repr)
def test_anything_else_as_a_reason_is_refused(value):
    refused(task_args.reason, value, "reason")


def test_the_reason_bound_is_the_column_length():
    from catalyst.db.models import Decision

    assert task_args.REASON_LENGTH == Decision.__table__.c.reason.type.length == 64


# -- slots ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["2025-03-04T14:30:00+00:00", "2025-03-04T09:30:00-05:00", "2025-03-04T14:30Z",
                                   "2025-03-04T14:30:00.123456+00:00"])
def test_a_slot_is_an_iso_timestamp_with_an_offset(value):
    parsed = task_args.slot(value)
    assert parsed == datetime.fromisoformat(value) and parsed.utcoffset() is not None


def test_an_absent_slot_is_none():
    assert task_args.slot(None) is None


@pytest.mark.parametrize("value", ["", "2025-03-04T14:30:00", "2025-03-04", "garbage", "２０２５-03-04T14:30:00+00:00",
                                   "2025-13-04T14:30:00+00:00", "2025-03-04T14:30:00+24:00",
                                   "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "1900-01-01T00:00:00Z",
                                   "2025-03-04T14:30:00+00:00" + " " * 30, "2025-03-04 14:30:00+00:00",
                                   1741098600, True, ["2025-03-04T14:30:00+00:00"]], ids=repr)
def test_anything_else_as_a_slot_is_refused(value):
    refused(task_args.slot, value, "slot")


# -- client order ids -----------------------------------------------------------------------------------------

def emitted_ids() -> dict[str, list[str]]:
    """Every kind of id Catalyst sends, made by the functions that make them, by the path that owns them."""
    return {
        "entry": [entry_client_order_id(1, "AAPL"), entry_client_order_id(2**31 - 1, "A" * 16),
                  entry_client_order_id(12, "BRK.B"), entry_client_order_id(3, "0700")],
        "manual": [client_ids.manual(), client_ids.manual_for_task(str(uuid.uuid4())),
                   client_ids.manual_for_task("exit-p3"), client_ids.manual_for_task(None),
                   f"manual-{uuid.uuid4().hex[:24]}"],  # the last: the form `catalyst open` sends
        "exit": [exit_client_order_id(3), exit_client_order_id(3, 2), exit_client_order_id(2**31 - 1, 10)],
        "stop": [standalone_stop_client_order_id(3, 1), standalone_stop_client_order_id(2**31 - 1, 12)],
        "broker": [str(uuid.uuid4())],  # bracket legs: named by Alpaca
    }


def test_every_id_catalyst_emits_is_owned_by_exactly_one_path():
    for path, ids in emitted_ids().items():
        for cid in ids:
            assert client_ids.owners(cid) == [path], f"{cid!r} is owned by {client_ids.owners(cid)}, not [{path!r}]"
            assert len(cid) <= client_ids.MAX_LENGTH


def test_the_namespaces_functions_and_the_paths_functions_agree():
    assert exit_client_order_id(5) == client_ids.exit(5) and exit_client_order_id(5, 3) == client_ids.exit(5, 3)
    assert standalone_stop_client_order_id(5, 2) == client_ids.stop(5, 2)
    assert entry_client_order_id(5, "AAA") == client_ids.entry(5, "AAA")


def test_a_manual_id_derived_from_a_task_id_is_stable_across_redeliveries():
    task_id = str(uuid.uuid4())
    assert client_ids.manual_for_task(task_id) == client_ids.manual_for_task(task_id) == \
        f"manual-{task_id.replace('-', '')[:24]}"
    assert client_ids.manual_for_task("chosen-by-caller") == client_ids.manual_for_task("chosen-by-caller")


@given(st.text(max_size=60))
@settings(max_examples=500, deadline=None, derandomize=True, database=None)
def test_no_text_is_owned_by_two_paths(text):
    assert len(client_ids.owners(text)) <= 1


ENTRY_OK = [(None, "AAA", None), ("entry-c7-AAA", "AAA", 7), ("manual-" + "0" * 24, "AAA", None)]


@pytest.mark.parametrize("value,symbol,cycle_id", ENTRY_OK)
def test_an_entry_may_use_the_id_its_own_path_derives(value, symbol, cycle_id):
    cid = task_args.entry_order_id_of(value, symbol=symbol, cycle_id=cycle_id, task_id=str(uuid.uuid4()))
    assert client_ids.owners(cid) == ["entry" if cycle_id else "manual"]


def test_an_absent_id_is_derived_from_the_cycle_or_the_task():
    task_id = str(uuid.uuid4())
    assert task_args.entry_order_id_of(None, symbol="AAA", cycle_id=7, task_id=task_id) == "entry-c7-AAA"
    assert task_args.entry_order_id_of(None, symbol="AAA", cycle_id=None, task_id=task_id) == \
        client_ids.manual_for_task(task_id)


@pytest.mark.parametrize("value,cycle_id,owner", [
    ("exit-p3", None, "exit"), ("exit-p3-2", None, "exit"), ("stop-p3-1", None, "stop"),
    (str(uuid.uuid4()), None, "broker"), ("entry-c7-AAA", None, "entry"), ("entry-c8-AAA", 7, "entry"),
    ("entry-c7-BBB", 7, "entry"), ("manual-" + "0" * 24, 7, "manual"), ("", None, None), ("x" * 49, None, None),
    ("manual-abc", None, None), (7, None, None), (["manual-" + "0" * 24], None, None),
])
def test_any_other_id_is_refused_and_the_path_that_owns_it_is_named(value, cycle_id, owner):
    with pytest.raises(BadInput) as raised:
        task_args.entry_order_id_of(value, symbol="AAA", cycle_id=cycle_id, task_id=str(uuid.uuid4()))
    assert "client_order_id" in str(raised.value)
    if owner not in (None, "manual"):
        assert f"the {owner} path" in str(raised.value)


def test_parsing_is_pure_and_offset_aware():
    """Slots keep their offset (beat sends UTC); the same instant in another zone compares equal."""
    utc = task_args.slot("2025-03-04T14:30:00+00:00")
    est = task_args.slot("2025-03-04T09:30:00-05:00")
    assert utc == est and utc.tzinfo == UTC and est.utcoffset() == timedelta(hours=-5)
    assert est.tzinfo == timezone(timedelta(hours=-5))
