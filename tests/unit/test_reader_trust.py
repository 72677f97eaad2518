"""cdc_sync.reader.protocol's decisions: the plain-GET window, fills of loaded rows, dependency tags, rule digests."""

from __future__ import annotations

import hashlib
import os
from decimal import Decimal
from typing import Any

import pytest

from cdc_sync.config import rule_fingerprint
from cdc_sync.core.canonical import ColumnInfo
from cdc_sync.reader.base import _ReaderBase
from cdc_sync.reader.protocol import UNKNOWN_EPOCH, TrustWindow, epoch_of, fetch_tags, row_refusal, rule_digest
from tests.unit.factories import make_config

USERS = {"table": "shop.users", "key": "user:{id}", "also": ["user:email:{email}"]}
ORDERS = {"table": "shop.orders", "tags": ["user_id", "email", "amount", ["user_id", "email"]]}
INFO = {
    "id": ColumnInfo("int", "int(11)"),
    "user_id": ColumnInfo("int", "int(11)"),
    "email": ColumnInfo("varchar", "varchar(40)", charset="utf8mb4", collation="utf8mb4_general_ci"),
    "amount": ColumnInfo("decimal", "decimal(10,2)", numeric_scale=2),
}


@pytest.fixture
def base() -> _ReaderBase:
    return _ReaderBase(make_config(USERS, ORDERS, reader={"negative_ttl": 30}))


# ---- the window --------------------------------------------------------------------------------------


def test_window_opens_for_the_freshness_left_capped() -> None:
    """A checked hit opens the window for min(fresh, freshness_check_ms) from when the script was sent."""
    w = TrustWindow()
    assert w.opened(sent=10.0, now=10.001, fresh_ms=500, heartbeat=b"1000", cap_ms=100)
    assert w.is_open(10.099) and not w.is_open(10.1)
    w.close()
    assert w.opened(sent=10.0, now=10.001, fresh_ms=50, heartbeat=b"1000", cap_ms=100)
    assert w.is_open(10.049) and not w.is_open(10.05)


def test_plain_read_needs_the_heartbeat_not_older_than_the_floor() -> None:
    """Inside the window a plain read is served only with a heartbeat at or above the one that opened it."""
    w = TrustWindow()
    w.opened(sent=10.0, now=10.001, fresh_ms=60_000, heartbeat=b"1000", cap_ms=60_000)
    assert w.accepts(sent=10.002, now=10.003, heartbeat=b"1000") == "ok"
    assert w.accepts(sent=10.002, now=10.003, heartbeat=b"1500") == "ok"
    assert w.accepts(sent=10.002, now=10.003, heartbeat=b"999") == "regressed"
    assert not w.is_open(10.004), "a heartbeat that went back ends the window"


def test_a_missing_heartbeat_ends_the_window() -> None:
    """A plain read that finds no heartbeat (Redis restarted empty, checkpoint moved by hand) closes it."""
    w = TrustWindow()
    w.opened(sent=10.0, now=10.001, fresh_ms=60_000, heartbeat=b"1000", cap_ms=60_000)
    assert w.accepts(sent=10.002, now=10.003, heartbeat=None) == "regressed"
    assert w.accepts(sent=10.004, now=10.005, heartbeat=b"1000") == "late"


@pytest.mark.parametrize("garbage", [b"", b"x", object()])
def test_an_unreadable_heartbeat_ends_the_window(garbage: Any) -> None:
    """Anything but an integer where the heartbeat should be counts as a heartbeat gone."""
    w = TrustWindow()
    w.opened(sent=10.0, now=10.001, fresh_ms=60_000, heartbeat=b"1000", cap_ms=60_000)
    assert w.accepts(sent=10.002, now=10.003, heartbeat=garbage) == "regressed"


def test_reply_after_the_window_is_late() -> None:
    """A reply in hand after the window's end is not served, however good its heartbeat."""
    w = TrustWindow()
    w.opened(sent=10.0, now=10.001, fresh_ms=100, heartbeat=b"1000", cap_ms=100)
    assert w.accepts(sent=10.05, now=10.2, heartbeat=b"2000") == "late"


def test_an_overtaken_reply_neither_serves_nor_closes() -> None:
    """A request sent before the floor was set may have run first: its lower heartbeat proves no
    regression (threads' replies come in any order), and it is not served from the window either."""
    w = TrustWindow()
    w.opened(sent=10.0, now=10.010, fresh_ms=60_000, heartbeat=b"2000", cap_ms=60_000)
    assert w.accepts(sent=10.005, now=10.011, heartbeat=b"1000") == "late"
    assert w.is_open(10.012)
    assert w.opened(sent=10.004, now=10.012, fresh_ms=60_000, heartbeat=b"1500", cap_ms=60_000)
    assert w.accepts(sent=10.013, now=10.014, heartbeat=b"2000") == "ok", "the floor stays the newest heartbeat"


def test_a_checked_hit_with_an_older_heartbeat_closes_the_window() -> None:
    """A script sent after the floor was set that sees an older heartbeat: the heartbeat went back."""
    w = TrustWindow()
    w.opened(sent=10.0, now=10.001, fresh_ms=60_000, heartbeat=b"2000", cap_ms=60_000)
    assert not w.opened(sent=10.002, now=10.003, fresh_ms=60_000, heartbeat=b"1000", cap_ms=60_000)
    assert not w.is_open(10.004)
    assert w.opened(sent=10.005, now=10.006, fresh_ms=60_000, heartbeat=b"1000", cap_ms=60_000)
    assert w.accepts(sent=10.007, now=10.008, heartbeat=b"1000") == "ok", "the next checked hit opens it anew"


def test_extending_raises_the_floor() -> None:
    """A later checked hit extends the window and raises the floor to its heartbeat."""
    w = TrustWindow()
    w.opened(sent=10.0, now=10.001, fresh_ms=1000, heartbeat=b"1000", cap_ms=1000)
    w.opened(sent=10.5, now=10.501, fresh_ms=1000, heartbeat=b"1500", cap_ms=1000)
    assert w.is_open(11.4)
    assert w.accepts(sent=10.6, now=10.601, heartbeat=b"1200") == "regressed"


def test_zero_cap_never_opens() -> None:
    """freshness_check_ms = 0: every lookup runs the script."""
    w = TrustWindow()
    w.opened(sent=10.0, now=10.001, fresh_ms=5000, heartbeat=b"1000", cap_ms=0)
    assert not w.is_open(10.0)
    assert w.accepts(sent=10.0, now=10.0, heartbeat=b"1000") == "late"


# ---- loaded rows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "row", "refused"),
    [
        ({"id": 5}, {"id": 5, "email": "a@x"}, False),
        ({"id": "05"}, {"id": 5, "email": "a@x"}, True),
        ({"id": 5.0}, {"id": 5, "email": "a@x"}, True),
        ({"id": Decimal("5")}, {"id": 5, "email": "a@x"}, False),  # renders user:5, the worker's key
        ({"email": "A@X"}, {"id": 5, "email": "a@x"}, True),
        ({"email": "a@x "}, {"id": 5, "email": "a@x"}, True),
        ({"email": "a@x"}, {"id": 5, "email": "a@x"}, False),
    ],
)
def test_a_loaded_row_fills_only_under_its_own_key(
    base: _ReaderBase, where: dict[str, object], row: dict[str, object], refused: bool
) -> None:
    """The key rendered from the loaded row must be the key looked up (MySQL matched another spelling)."""
    lookup, _rule, template = base.row_lookup("shop.users", where)
    assert (row_refusal(lookup, template, where, row, None) == "noncanonical") is refused


@pytest.mark.parametrize(
    ("where", "refused"),
    [({"id": 9}, False), ({"id": "9"}, False), ({"id": "09"}, True), ({"id": 9.0}, True), ({"email": "a@x"}, True)],
)
def test_absence_is_cached_only_for_canonical_key_values(
    base: _ReaderBase, where: dict[str, object], refused: bool
) -> None:
    """No row: 'absent' may be cached only if every row the lookup could match renders this key (a _ci
    column never: the insert of 'A@X' would render another key)."""
    lookup, _rule, template = base.row_lookup("shop.users", where)
    assert (row_refusal(lookup, template, where, None, INFO) == "noncanonical") is refused


def test_absence_without_column_info_is_not_cached(base: _ReaderBase) -> None:
    """Column info unreadable: nothing is provable, nothing is cached."""
    lookup, _rule, template = base.row_lookup("shop.users", {"id": 9})
    assert row_refusal(lookup, template, {"id": 9}, None, None) == "noncanonical"


# ---- dependency tags ---------------------------------------------------------------------------------------


def test_canonical_dependency_values_render_the_stored_form(base: _ReaderBase) -> None:
    """'05' on an INT column and Decimal('5') on DECIMAL(10,2) render the worker's tags of 5 and 5.00."""
    deps: list[Any] = [("shop.orders", {"user_id": "05"}), ("shop.orders", {"amount": Decimal("5")})]
    tags = fetch_tags(base._rules, deps, {"shop.orders": INFO})
    assert tags.tags == ("shop.orders:user_id=5", "shop.orders:amount=5.00")
    assert tags.widened == ()


def test_a_ci_dependency_widens_to_the_whole_table(base: _ReaderBase) -> None:
    """A value of a _ci column (or any uncertain one) depends on the whole-table tag instead."""
    deps: list[Any] = [("shop.orders", {"email": "ABC"}), ("shop.orders", {"user_id": 5, "email": "abc"})]
    tags = fetch_tags(base._rules, deps, {"shop.orders": INFO})
    assert tags.tags == ("shop.orders",)
    assert tags.widened == (("shop.orders", ("email",)), ("shop.orders", ("user_id", "email")))
    assert tags.tables == ("shop.orders",)


def test_dependencies_widen_without_column_info(base: _ReaderBase) -> None:
    """Column info unreadable (None): every column dependency widens."""
    tags = fetch_tags(base._rules, [("shop.orders", {"user_id": 5})], {"shop.orders": None})
    assert tags.tags == ("shop.orders",)


def test_null_dependency_needs_no_column_info(base: _ReaderBase) -> None:
    """NULL renders %N whatever the column."""
    tags = fetch_tags(base._rules, [("shop.orders", {"email": None})], {"shop.orders": None})
    assert tags.tags == ("shop.orders:email=%N",)


def test_fetch_refuses_keys_in_the_namespace(base: _ReaderBase) -> None:
    """A caller's key may not land among the worker's own keys."""
    with pytest.raises(ValueError, match="namespace"):
        base.fetch_lookup("cdc:heartbeat", 10, [])
    with pytest.raises(ValueError, match="namespace"):
        base.fetch_lookup("cdc:lease:user:1", 10, [])
    assert base.fetch_lookup("cdc-report:1", 10, []).lookup.key == "cdc-report:1"


def test_fetch_lookups_are_remembered_per_arguments(base: _ReaderBase) -> None:
    """Building a lookup (canonicalization included) happens once per distinct arguments, not per hit."""
    deps: list[Any] = [("shop.orders", {"user_id": "05"})]
    cache_key, cached = base.cached_fetch_lookup("r", 10, deps)
    assert cached is None
    built = base.fetch_lookup(
        "r", 10, deps, info={"shop.orders": INFO}, cache_key=cache_key, epochs={"shop.orders": "3"}
    )
    assert base.cached_fetch_lookup("r", 10, deps) == (cache_key, built)
    _, other = base.cached_fetch_lookup("r", 10, [("shop.orders", {"user_id": 5.0})])
    assert other is None, "5.0 is another argument than '05'"


def test_a_fetch_lookup_carries_the_epoch_its_column_info_was_read_at(base: _ReaderBase) -> None:
    """The epoch of each column-dependency table goes with the lookup (compared by the scripts); a table
    depended on only as a whole used no column info and compares none."""
    deps: list[Any] = [("shop.orders", {"user_id": 5}), "shop.users"]
    lookup = base.fetch_lookup("r", 10, deps, info={"shop.orders": INFO}, epochs={"shop.orders": "17"}).lookup
    assert lookup.tables == ("shop.orders", "shop.users")
    assert lookup.epochs == ("17", "")
    assert base.fetch_lookup("r", 10, ["shop.users"]).lookup.epochs == ()


def test_a_fetch_lookup_without_the_epoch_of_its_column_info_never_fills(base: _ReaderBase) -> None:
    """Column info whose epoch is unknown gets UNKNOWN_EPOCH, which no stored epoch equals; not remembered."""
    deps: list[Any] = [("shop.orders", {"user_id": 5})]
    cache_key, _ = base.cached_fetch_lookup("r", 10, deps)
    lookup = base.fetch_lookup("r", 10, deps, info={"shop.orders": INFO}, cache_key=cache_key).lookup
    assert lookup.epochs == (UNKNOWN_EPOCH,)
    assert base.cached_fetch_lookup("r", 10, deps)[1] is None


@pytest.mark.parametrize(("raw", "epoch"), [(None, "0"), (b"12", "12"), ("7", "7"), (3, "3")])
def test_epoch_of_reads_a_missing_epoch_as_zero(raw: object, epoch: str) -> None:
    """A table never flushed has no epoch key: '0' on both sides (the scripts read it the same way)."""
    assert epoch_of(raw) == epoch


def test_epochs_read_marks_a_failed_read_unknown(base: _ReaderBase) -> None:
    """An MGET that failed gives UNKNOWN_EPOCH (nothing filled); keys are <ns>:schema:<table>."""
    assert base.epoch_keys(["shop.orders"]) == ["cdc:schema:shop.orders"]
    assert base.epochs_read(["a.b", "c.d"], [None, b"5"]) == {"a.b": "0", "c.d": "5"}
    assert base.epochs_read(["a.b"], None) == {"a.b": UNKNOWN_EPOCH}


def test_lookups_built_without_column_info_are_not_remembered(base: _ReaderBase) -> None:
    """A widening forced by unreadable column info is not kept: the next call tries again."""
    deps: list[Any] = [("shop.orders", {"user_id": 5})]
    cache_key, _ = base.cached_fetch_lookup("r", 10, deps)
    base.fetch_lookup("r", 10, deps, info={"shop.orders": None}, cache_key=cache_key)
    assert base.cached_fetch_lookup("r", 10, deps)[1] is None


# ---- rules and tokens -------------------------------------------------------------------------------------


def test_rule_digest_is_the_sha1_of_the_fingerprint() -> None:
    """What the scripts compare with redis.sha1hex(HGET <ns>:rules <table>)."""
    rule = make_config(USERS).tables[0]
    assert rule_digest(rule) == hashlib.sha1(rule_fingerprint(rule).encode()).hexdigest()


def test_rule_digests_differ_for_any_shaping_setting() -> None:
    """exclude, also, columns, mode, format, key and tags each change the digest."""
    plain = rule_digest(make_config(USERS).tables[0])
    variants = [
        {"exclude": ["password_hash"]},
        {"also": ["user:mail:{email}"]},
        {"columns": ["id"]},
        {"mode": "update"},
        {"format": "hash"},
        {"key": "u:{id}"},
        {"tags": ["email"]},
    ]
    digests = {rule_digest(make_config({**USERS, **v}).tables[0]) for v in variants}
    assert len(digests) == len(variants) and plain not in digests


def test_tokens_are_reseeded_in_a_forked_child(base: _ReaderBase) -> None:
    """The child's tokens never repeat the parent's (prefix and counter are new)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, base.token().encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    parent = base.token()
    assert child != parent and child[:12] != parent[:12]
