"""cdc_sync.reader.client's pure parts: building lookups, script arguments, TTL jitter, fill payloads and encoding.

Nothing here talks to Redis or MySQL: building a reader creates clients without connecting them.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import orjson
import pytest

from cdc_sync.config import ReaderConfig
from cdc_sync.core.canonical import ColumnInfo
from cdc_sync.core.keys import Namespace
from cdc_sync.reader.base import _ReaderBase, _template_for
from cdc_sync.reader.client import NEGATIVE, CacheReader, Lookup
from cdc_sync.reader.flow import fill_payload as _payload
from cdc_sync.reader.protocol import rule_digest
from tests.unit.factories import make_config

USERS = {"table": "shop.users", "key": "user:{id}", "also": ["user:email:{email}"], "ttl": 60}
ITEMS = {"table": "shop.items", "key": "item:{shop_id}:{sku}", "mode": "update", "format": "hash"}
ORDERS = {"table": "shop.orders", "tags": ["user_id", ["shop_id", "sku"]]}
NOTES = {"table": "shop.notes", "key": "note:{id}", "mode": "update", "columns": ["id", "body"]}
LOGS = {"table": "shop.logs", "key": "log:{id}", "mode": "update", "exclude": ["secret"]}

NS = "cdc"
READER = {"max_staleness_ms": 5000, "lease_ttl_ms": 3000, "ttl_jitter": 0.25, "negative_ttl": 30}
ROW: dict[str, Any] = {
    "id": 1,
    "name": "Ann",
    "price": Decimal("12.50"),
    "born": dt.date(1990, 5, 17),
    "note": None,
    "secret": "x",
}


@pytest.fixture
def base() -> _ReaderBase:
    return _ReaderBase(make_config(USERS, ITEMS, ORDERS, NOTES, LOGS, reader=READER))


@pytest.fixture
def cache_reader() -> Iterator[CacheReader]:
    reader = CacheReader(make_config(USERS, ITEMS, ORDERS, reader=READER))
    try:
        yield reader
    finally:
        reader.close()


def _lookup(**overrides: Any) -> Lookup:
    settings: dict[str, Any] = {
        "key": "user:5",
        "fmt": "j",
        "tables": ("shop.users",),
        "tags": (),
        "ttl_ms": 60_000,
    }
    settings.update(overrides)
    settings.setdefault("digests", tuple(f"sha-{t}" for t in settings["tables"]))
    return Lookup(**settings)


ORDERS_INFO = {
    "shop.orders": {
        "user_id": ColumnInfo("int", "int(11)"),
        "shop_id": ColumnInfo("int", "int(11)"),
        "sku": ColumnInfo("varchar", "varchar(20)", charset="utf8mb4", collation="utf8mb4_bin"),
        "status": ColumnInfo("varchar", "varchar(20)", charset="utf8mb4", collation="utf8mb4_general_ci"),
    }
}


def _fetch(base: _ReaderBase, key: str, ttl: float, deps: Any) -> Lookup:
    """fetch_lookup with the column info of shop.orders given (no server)."""
    return base.fetch_lookup(key, ttl, deps, info=ORDERS_INFO).lookup


# ---- row_lookup ------------------------------------------------------------------------------------


def test_row_lookup_by_key_template(base: _ReaderBase) -> None:
    """kwargs over the key's fields render the key; the lookup is gated by the table and has its TTL."""
    lookup, rule, template = base.row_lookup("shop.users", {"id": 5})
    assert lookup == Lookup("user:5", "j", ("shop.users",), (), 60_000, None, (), (rule_digest(rule),))
    assert (rule.name, template.source) == ("shop.users", "user:{id}")


def test_row_lookup_by_also_template(base: _ReaderBase) -> None:
    """kwargs over an also template's fields use that template."""
    lookup = base.row_lookup("shop.users", {"email": "ann@x"}).lookup
    assert lookup.key == "user:email:ann@x"


def test_row_lookup_ignores_kwarg_order(base: _ReaderBase) -> None:
    """The fields are matched as a set and rendered in template order."""
    lookup = base.row_lookup("shop.items", {"sku": "A", "shop_id": 1}).lookup
    assert lookup.key == "item:1:A"


def test_row_lookup_escapes_values(base: _ReaderBase) -> None:
    """Values are escaped as the worker escapes them (':' → %3A)."""
    lookup = base.row_lookup("shop.users", {"id": "a:b"}).lookup
    assert lookup.key == "user:a%3Ab"


def test_row_lookup_format_hash(base: _ReaderBase) -> None:
    """A hash-format rule gives fmt 'h' (and no TTL when ttl is 0)."""
    lookup = base.row_lookup("shop.items", {"shop_id": 1, "sku": "A"}).lookup
    assert (lookup.fmt, lookup.ttl_ms) == ("h", 0)


def test_row_lookup_carries_columns_and_exclude(base: _ReaderBase) -> None:
    """The rule's columns and exclude settings are copied for encoding the loaded row."""
    notes = base.row_lookup("shop.notes", {"id": 1}).lookup
    logs = base.row_lookup("shop.logs", {"id": 1}).lookup
    assert (notes.columns, notes.exclude) == (("id", "body"), ())
    assert (logs.columns, logs.exclude) == (None, ("secret",))


def test_row_lookup_unknown_table(base: _ReaderBase) -> None:
    """A table without a [[tables]] entry raises ValueError."""
    with pytest.raises(ValueError, match=re.escape("shop.nope is not a mapped table")):
        base.row_lookup("shop.nope", {"id": 1})


def test_row_lookup_kwargs_matching_no_template(base: _ReaderBase) -> None:
    """A subset of a template's fields matches nothing."""
    with pytest.raises(ValueError, match="no key template over"):
        base.row_lookup("shop.items", {"shop_id": 1})


def test_row_lookup_kwargs_superset_matches_no_template(base: _ReaderBase) -> None:
    """Extra kwargs beyond a template's fields match nothing either."""
    with pytest.raises(ValueError, match="no key template over"):
        base.row_lookup("shop.users", {"id": 5, "email": "ann@x"})


def test_row_lookup_on_a_tags_only_table(base: _ReaderBase) -> None:
    """A tags-only table has no template, so get_row cannot look it up."""
    with pytest.raises(ValueError, match="no key template over"):
        base.row_lookup("shop.orders", {"user_id": 5})


def test_row_lookup_null_key_value(base: _ReaderBase) -> None:
    """A NULL key value raises ValueError instead of rendering a key."""
    with pytest.raises(ValueError, match="NULL"):
        base.row_lookup("shop.users", {"id": None})


def test_template_for_picks_matching_template() -> None:
    """_template_for returns the also template whose fields equal the kwargs."""
    rule = make_config(USERS).tables[0]
    assert _template_for(rule, {"email": "x"}).source == "user:email:{email}"


def test_cache_reader_builds_lookups_without_servers(cache_reader: CacheReader) -> None:
    """A CacheReader built from config (nothing connected) builds the same lookups."""
    lookup = cache_reader.row_lookup("shop.users", {"id": 7}).lookup
    assert lookup.key == "user:7"
    assert cache_reader.ns == NS


# ---- fetch_lookup ----------------------------------------------------------------------------------


def test_fetch_lookup_whole_table(base: _ReaderBase) -> None:
    """A table name depends on its whole-table tag and is gated by its flushing marker."""
    lookup = _fetch(base, "report:1", 10, ["shop.orders"])
    digest = rule_digest(base.rule("shop.orders"))
    assert lookup == Lookup(
        "report:1", "j", ("shop.orders",), ("shop.orders",), 10_000, digests=(digest,), stamped=True
    )


def test_fetch_lookup_column_tag(base: _ReaderBase) -> None:
    """(table, {col: value}) depends on the column tag."""
    lookup = _fetch(base, "r", 10, [("shop.orders", {"user_id": 5})])
    assert lookup.tables == ("shop.orders",)
    assert lookup.tags == ("shop.orders:user_id=5",)


def test_fetch_lookup_column_set_in_any_order(base: _ReaderBase) -> None:
    """A multi-column tag matches whatever the dict order; the tag renders in configured order."""
    lookup = _fetch(base, "r", 10, [("shop.orders", {"sku": "A", "shop_id": 1})])
    assert lookup.tags == ("shop.orders:shop_id=1:sku=A",)


def test_fetch_lookup_escapes_tag_values(base: _ReaderBase) -> None:
    """Tag values are escaped exactly as the worker escapes them."""
    lookup = _fetch(base, "r", 10, [("shop.orders", {"shop_id": 1, "sku": "a:b"})])
    assert lookup.tags == ("shop.orders:shop_id=1:sku=a%3Ab",)


def test_fetch_lookup_null_tag_value(base: _ReaderBase) -> None:
    """A NULL tag value renders %N, as the worker does."""
    lookup = _fetch(base, "r", 10, [("shop.orders", {"user_id": None})])
    assert lookup.tags == ("shop.orders:user_id=%N",)


def test_fetch_lookup_fractional_ttl(base: _ReaderBase) -> None:
    """ttl is in seconds and may be fractional."""
    assert _fetch(base, "r", 1.5, []).ttl_ms == 1500


def test_fetch_lookup_without_dependencies(base: _ReaderBase) -> None:
    """No dependencies: no tables, no tags, JSON format."""
    lookup = _fetch(base, "r", 0, [])
    assert (lookup.tables, lookup.tags, lookup.fmt, lookup.ttl_ms) == ((), (), "j", 0)


def test_fetch_lookup_unmapped_table(base: _ReaderBase) -> None:
    """A table that is not mapped raises ValueError."""
    with pytest.raises(ValueError, match="not a mapped table"):
        _fetch(base, "r", 10, ["shop.nope"])


def test_fetch_lookup_unmapped_table_with_columns(base: _ReaderBase) -> None:
    """A (table, values) dependency on an unmapped table raises ValueError."""
    with pytest.raises(ValueError, match="not a mapped table"):
        _fetch(base, "r", 10, [("shop.nope", {"user_id": 1})])


def test_fetch_lookup_columns_not_a_tag(base: _ReaderBase) -> None:
    """Columns that are not a configured tag raise ValueError."""
    with pytest.raises(ValueError, match="no tags entry for columns"):
        _fetch(base, "r", 10, [("shop.orders", {"status": "paid"})])


def test_fetch_lookup_subset_of_a_tag_is_not_a_tag(base: _ReaderBase) -> None:
    """One column of a two-column tag is not a tag."""
    with pytest.raises(ValueError, match="no tags entry for columns"):
        _fetch(base, "r", 10, [("shop.orders", {"shop_id": 1})])


def test_fetch_lookup_columns_on_a_table_without_tags(base: _ReaderBase) -> None:
    """A keyed table with no tags accepts only whole-table dependencies."""
    with pytest.raises(ValueError, match="no tags entry for columns"):
        _fetch(base, "r", 10, [("shop.users", {"id": 5})])


def test_fetch_lookup_deduplicates(base: _ReaderBase) -> None:
    """Repeated dependencies give each table and each tag once, in first-seen order."""
    deps: list[Any] = [
        ("shop.orders", {"user_id": 5}),
        "shop.users",
        "shop.orders",
        ("shop.orders", {"user_id": 5}),
        "shop.users",
        ("shop.orders", {"user_id": 6}),
    ]
    lookup = _fetch(base, "r", 10, deps)
    assert lookup.tables == ("shop.orders", "shop.users")
    assert lookup.tags == ("shop.orders:user_id=5", "shop.users", "shop.orders", "shop.orders:user_id=6")


# ---- script arguments --------------------------------------------------------------------------------


def test_lookup_args_key_layout() -> None:
    """KEYS: key, heartbeat, hold-off, lease, rules, flushing markers, tag hold-offs, tag sets, schema epochs,
    and for a stamped lookup the key's stamp."""
    lookup = _lookup(key="r", tables=("s.a", "s.b"), tags=("s.a", "s.b:x=1"))
    keys, _ = lookup.lookup_args(Namespace(NS), ReaderConfig(), "tok")
    assert keys == [
        "r",
        "cdc:heartbeat",
        "cdc:inv:r",
        "cdc:lease:r",
        "cdc:rules",
        "cdc:flushing:s.a",
        "cdc:flushing:s.b",
        "cdc:tinv:s.a",
        "cdc:tinv:s.b:x=1",
        "cdc:tag:s.a",
        "cdc:tag:s.b:x=1",
        "cdc:schema:s.a",
        "cdc:schema:s.b",
    ]
    stamped, _ = replace(lookup, stamped=True).lookup_args(Namespace(NS), ReaderConfig(), "tok")
    assert stamped == [*keys, "cdc:stamp:r"]


def test_lookup_args_argv_layout() -> None:
    """ARGV: staleness, lease ttl, token, nflush, fmt, tag ttl (ttl + lease ttl), ntags, (table, rule digest)s,
    then the schema epoch of each table ('' where no column info was used), then whether the value is stamped."""
    lookup = _lookup(tables=("s.a", "s.b"), tags=("s.a",), ttl_ms=60_000, epochs=("", "7"))
    cfg = ReaderConfig(max_staleness_ms=4000, lease_ttl_ms=2500)
    _, args = lookup.lookup_args(Namespace(NS), cfg, "tok")
    assert args == [4000, 2500, "tok", 2, "j", 62_500, 1, "s.a", "sha-s.a", "s.b", "sha-s.b", "", "7", ""]
    _, stamped = replace(lookup, stamped=True).lookup_args(Namespace(NS), cfg, "tok")
    assert stamped[-1] == "1"


def test_lookup_args_without_epochs_compare_none() -> None:
    """A lookup that used no column info sends '' for every table: the scripts compare nothing."""
    _, args = _lookup(tables=("s.a", "s.b")).lookup_args(Namespace(NS), ReaderConfig(), "tok")
    assert args[-3:-1] == ["", ""]


def test_lookup_args_need_an_epoch_per_table() -> None:
    """Epochs are per table: a lookup with another count of them cannot be sent."""
    with pytest.raises(ValueError, match="schema epochs"):
        _lookup(tables=("s.a", "s.b"), epochs=("1",)).lookup_args(Namespace(NS), ReaderConfig(), "tok")


def test_lookup_args_need_a_digest_per_table() -> None:
    """A lookup without the rule digest of each table cannot be sent (it would fill unchecked)."""
    with pytest.raises(ValueError):
        _lookup(tables=("s.a",), digests=()).lookup_args(Namespace(NS), ReaderConfig(), "tok")


def test_lookup_args_tag_ttl_zero_without_ttl() -> None:
    """A lookup without TTL gives tag ttl 0 (the tag sets never expire)."""
    _, args = _lookup(ttl_ms=0, tags=("s.a",), fmt="h").lookup_args(
        Namespace(NS), ReaderConfig(lease_ttl_ms=2500), "tok"
    )
    assert args[4:] == ["h", 0, 1, "shop.users", "sha-shop.users", "", ""]


def test_lookup_args_counts_match_keys() -> None:
    """5 fixed keys + 2 * nflush + 2 * ntags keys (+ the stamp when stamped), as the script expects."""
    lookup = _lookup(tables=("a.b", "c.d", "e.f"), tags=("a.b", "c.d:x=1"))
    keys, args = lookup.lookup_args(Namespace(NS), ReaderConfig(), "tok")
    nflush, ntags = args[3], args[6]
    assert isinstance(nflush, int) and isinstance(ntags, int)
    assert len(keys) == 5 + 2 * nflush + 2 * ntags
    assert len(args) == 7 + 3 * nflush + 1


def test_fill_args_json_layout() -> None:
    """Fill KEYS: key, lease, rules, flushing markers, schema epochs (stamp when stamped); ARGV: token, fmt, ttl,
    ntables,
    (table, digest)s, the lookup's epochs, whether to stamp, value."""
    keys, args = _lookup(key="k", tables=("s.a", "s.b"), epochs=("3", "")).fill_args(
        Namespace(NS), "tok", 1234, b'{"a":1}'
    )
    assert keys == [
        "k",
        "cdc:lease:k",
        "cdc:rules",
        "cdc:flushing:s.a",
        "cdc:flushing:s.b",
        "cdc:schema:s.a",
        "cdc:schema:s.b",
    ]
    assert args == ["tok", "j", 1234, 2, "s.a", "sha-s.a", "s.b", "sha-s.b", "3", "", "", b'{"a":1}']


def test_fill_args_take_the_lease_epochs() -> None:
    """The epochs a fill is checked against may be given (the lease reply's), replacing the lookup's."""
    _, args = _lookup(key="k", tables=("s.a",), epochs=("3",)).fill_args(Namespace(NS), "tok", 0, b"1", epochs=("4",))
    assert args == ["tok", "j", 0, 1, "s.a", "sha-s.a", "4", "", b"1"]


def test_fill_args_hash_payload_is_flattened() -> None:
    """A hash payload's field/value list follows the ttl in ARGV."""
    keys, args = _lookup(key="k", fmt="h", tables=()).fill_args(Namespace(NS), "tok", 0, ["a", "1", "b", "x"])
    assert keys == ["k", "cdc:lease:k", "cdc:rules"]
    assert args == ["tok", "h", 0, 0, "", "a", "1", "b", "x"]


# ---- TTL jitter ----------------------------------------------------------------------------------------


def test_jittered_zero_ttl_stays_zero(base: _ReaderBase) -> None:
    """0 means no expiry and is never jittered."""
    assert base.jittered(0) == 0


def test_jittered_without_randomness_is_the_ttl(base: _ReaderBase, monkeypatch: pytest.MonkeyPatch) -> None:
    """random() == 0 gives the full TTL."""
    monkeypatch.setattr(random, "random", lambda: 0.0)
    assert base.jittered(1000) == 1000


def test_jittered_maximum_randomness_is_the_lower_bound(base: _ReaderBase, monkeypatch: pytest.MonkeyPatch) -> None:
    """random() just below 1 gives ttl * (1 - jitter) (jitter 0.25 here)."""
    monkeypatch.setattr(random, "random", lambda: 0.999999999)
    assert base.jittered(1000) == 750


def test_jittered_stays_within_bounds(base: _ReaderBase, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over many random draws, ttl * (1 - jitter) <= result <= ttl."""
    rng = random.Random(1234)
    monkeypatch.setattr(random, "random", rng.random)
    results = {base.jittered(1000) for _ in range(2000)}
    assert min(results) >= 750
    assert max(results) <= 1000
    assert len(results) > 100  # it does vary


def test_jittered_tiny_ttl_never_becomes_zero(base: _ReaderBase, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 ms TTL stays 1 ms (0 would mean no expiry)."""
    monkeypatch.setattr(random, "random", lambda: 0.999999999)
    assert base.jittered(1) == 1


def test_jittered_without_jitter_is_exact() -> None:
    """ttl_jitter = 0 returns the TTL unchanged."""
    reader = _ReaderBase(make_config(USERS, reader={"ttl_jitter": 0}))
    assert reader.jittered(1234) == 1234


# ---- fill payloads -----------------------------------------------------------------------------------------


def test_payload_of_a_value_uses_the_lookup_ttl() -> None:
    """A loaded value is filled with the lookup's TTL."""
    assert _payload(_lookup(ttl_ms=60_000), b"{}", 30) == (b"{}", 60_000)


def test_payload_of_absent_row_is_negative_with_negative_ttl() -> None:
    """An absent row is cached as null for negative_ttl seconds in JSON format."""
    assert _payload(_lookup(), None, 30) == (NEGATIVE, 30_000)
    assert NEGATIVE == b"null"


def test_payload_of_absent_row_without_negative_ttl() -> None:
    """negative_ttl = 0: an absent row fills nothing."""
    assert _payload(_lookup(), None, 0) == (None, None)


def test_payload_of_absent_row_in_hash_format() -> None:
    """A hash cannot hold "absent": nothing is filled even with negative_ttl."""
    assert _payload(_lookup(fmt="h"), None, 30) == (None, None)


def test_payload_of_hash_value() -> None:
    """A hash field list is filled as is."""
    assert _payload(_lookup(fmt="h", ttl_ms=0), ["a", "1"], 30) == (["a", "1"], 0)


def test_payload_of_an_empty_hash_fills_nothing() -> None:
    """A row whose selected columns are all NULL encodes to no hash field; nothing is filled."""
    lookup = _lookup(fmt="h", columns=("note",))
    fields = _ReaderBase.encode_row(lookup, ROW)
    assert fields == []
    assert _payload(lookup, fields, 0) == (None, None)


# ---- encoding loaded rows ------------------------------------------------------------------------------


def _as_redis_hash(fields: list[str]) -> list[bytes]:
    """What HGETALL through the script hands back: a flat list of bytes."""
    return [f.encode() for f in fields]


def test_json_row_round_trips() -> None:
    """A JSON-encoded row decodes to the documented JSON values."""
    lookup = _lookup(fmt="j")
    payload = _ReaderBase.encode_row(lookup, ROW)
    assert isinstance(payload, bytes)
    assert _ReaderBase.decode(lookup, payload) == {
        "id": 1,
        "name": "Ann",
        "price": "12.50",
        "born": "1990-05-17",
        "note": None,
        "secret": "x",
    }


def test_json_row_keeps_column_order() -> None:
    """The JSON object lists columns in row order, as the worker writes it."""
    payload = _ReaderBase.encode_row(_lookup(fmt="j"), {"b": 1, "a": 2})
    assert payload == b'{"b":1,"a":2}'


def test_json_row_respects_columns() -> None:
    """Only the configured columns are encoded, in their configured order."""
    lookup = _lookup(fmt="j", columns=("name", "id"))
    payload = _ReaderBase.encode_row(lookup, ROW)
    assert payload == b'{"name":"Ann","id":1}'
    assert _ReaderBase.decode(lookup, payload) == {"name": "Ann", "id": 1}


def test_json_row_respects_exclude() -> None:
    """Excluded columns are left out."""
    lookup = _lookup(fmt="j", exclude=("secret", "price"))
    decoded = _ReaderBase.decode(lookup, _ReaderBase.encode_row(lookup, ROW))
    assert set(decoded) == {"id", "name", "born", "note"}


def test_hash_row_round_trips_as_text() -> None:
    """A hash-encoded row decodes to text fields; NULL columns have no field."""
    lookup = _lookup(fmt="h")
    fields = _ReaderBase.encode_row(lookup, ROW)
    assert isinstance(fields, list)
    assert _ReaderBase.decode(lookup, _as_redis_hash(fields)) == {
        "id": "1",
        "name": "Ann",
        "price": "12.50",
        "born": "1990-05-17",
        "secret": "x",
    }


def test_hash_row_respects_columns() -> None:
    """Only the configured columns become hash fields."""
    assert _ReaderBase.encode_row(_lookup(fmt="h", columns=("name", "id")), ROW) == ["name", "Ann", "id", "1"]


def test_hash_row_respects_exclude() -> None:
    """Excluded columns have no hash field."""
    lookup = _lookup(fmt="h", exclude=("secret", "note", "born", "price"))
    fields = _ReaderBase.encode_row(lookup, ROW)
    assert isinstance(fields, list)
    assert _ReaderBase.decode(lookup, _as_redis_hash(fields)) == {"id": "1", "name": "Ann"}


def test_decode_hash_accepts_any_iterable() -> None:
    """decode takes a tuple (or any iterable) of field/value bytes as well as a list."""
    assert _ReaderBase.decode(_lookup(fmt="h"), (b"a", b"1", b"b", "é".encode())) == {"a": "1", "b": "é"}


def test_decode_json_of_fetch_value() -> None:
    """A fetch value (orjson-encoded) decodes back to the same structure."""
    value = {"ids": [1, 2], "total": 3.5, "name": "x"}
    assert _ReaderBase.decode(_lookup(), orjson.dumps(value)) == value
