"""Reader dependency tags: the ``tags`` setting, tag names (keys.tag_suffix), planner.tags_of and the T op."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cdc_sync.adapters.redis import encode_ops
from cdc_sync.config import check_against_schema, rule_fingerprint, rule_from_fingerprint
from cdc_sync.core.events import Op, RowChange
from cdc_sync.core.keys import Namespace, glob_escape, tag_suffix
from cdc_sync.core.planner import Delete, EvictTag, MissingColumn, plan_change, tags_of
from cdc_sync.errors import ConfigError
from tests.unit.factories import make_config, make_rule

ORDERS = {"table": "s.t", "tags": ["user_id", ["shop_id", "sku"]]}


def _error(*tables: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        make_config(*tables)
    return str(info.value)


def _tagged(tags: Any, **settings: Any) -> dict[str, Any]:
    return {"table": "s.t", "key": "t:{id}", "tags": tags, **settings}


def _insert(after: dict[str, Any]) -> RowChange:
    return RowChange(Op.INSERT, "s", "t", None, after)


def _update(before: dict[str, Any], after: dict[str, Any]) -> RowChange:
    return RowChange(Op.UPDATE, "s", "t", before, after)


def _delete(before: dict[str, Any]) -> RowChange:
    return RowChange(Op.DELETE, "s", "t", before, None)


# ---- config: the tags setting ---------------------------------------------------------------------


def test_tags_parse_to_tuples_of_columns() -> None:
    """A single column becomes a one-column tuple; a list becomes a tuple in the given order."""
    rule = make_config(ORDERS).tables[0]
    assert rule.tags == (("user_id",), ("shop_id", "sku"))


def test_tags_default_to_none() -> None:
    """A rule without tags has an empty tags tuple."""
    assert make_rule().tags == ()


def test_tags_must_be_a_list() -> None:
    """A bare string for tags names the field tables[0].tags."""
    assert _error(_tagged("user_id")).startswith("tables[0].tags: must be a list")


def test_non_string_tag_item_names_its_index() -> None:
    """An integer item is reported as tables[0].tags[1]."""
    assert _error(_tagged(["user_id", 5])).startswith("tables[0].tags[1]: must be a column name")


def test_non_string_column_inside_a_tag_set_names_the_set() -> None:
    """A non-string inside a column list is reported at that tag's index."""
    assert _error(_tagged(["user_id", ["shop_id", 3]])).startswith("tables[0].tags[1]: must be a column name")


def test_boolean_tag_item_is_refused() -> None:
    """A boolean is not a column name."""
    assert _error(_tagged([True])).startswith("tables[0].tags[0]: must be a column name")


def test_empty_tag_list_is_refused() -> None:
    """An empty column list is reported as tables[0].tags[1]."""
    assert _error(_tagged(["user_id", []])).startswith(
        "tables[0].tags[1]: must be a column name or a non-empty list of column names"
    )


def test_empty_column_name_is_refused() -> None:
    """An empty string is not a column name."""
    assert _error(_tagged([""])).startswith("tables[0].tags[0]: must be a column name")


def test_duplicate_column_within_a_tag_is_refused() -> None:
    """A column listed twice in one tag names that tag."""
    assert _error(_tagged(["user_id", ["sku", "sku"]])) == "tables[0].tags[1]: a column is listed twice"


def test_duplicate_column_set_in_another_order_is_refused() -> None:
    """["a", "b"] and ["b", "a"] are the same tag; the second is reported."""
    message = _error(_tagged([["shop_id", "sku"], "user_id", ["sku", "shop_id"]]))
    assert message == "tables[0].tags[2]: the same column set is already a tag"


def test_single_column_and_one_element_list_are_the_same_tag() -> None:
    """ "user_id" and ["user_id"] name the same column set."""
    assert _error(_tagged(["user_id", ["user_id"]])) == "tables[0].tags[1]: the same column set is already a tag"


def test_tag_errors_name_the_table_index() -> None:
    """An error in the second [[tables]] entry says tables[1]."""
    message = _error({"table": "s.a", "key": "a:{id}"}, {"table": "s.b", "tags": [7]})
    assert message.startswith("tables[1].tags[0]: ")


def test_rule_with_tags_and_no_key_is_valid() -> None:
    """A tags-only rule has no key and no templates."""
    rule = make_config(ORDERS).tables[0]
    assert rule.key is None
    assert rule.templates == ()


def test_rule_without_key_or_tags_is_an_error() -> None:
    """Neither key nor tags: the error names tables[0].key."""
    assert _error({"table": "s.t"}).startswith("tables[0].key: required")


def test_empty_tags_do_not_replace_a_key() -> None:
    """tags = [] with no key is still missing its key."""
    assert _error({"table": "s.t", "tags": []}).startswith("tables[0].key: required")


def test_also_without_key_is_an_error() -> None:
    """also templates need a key, even on a tags-only rule."""
    assert _error({**ORDERS, "also": ["o:{id}"]}) == "tables[0].also: needs a key"


# ---- config: schema check and fingerprints ----------------------------------------------------------


def test_schema_check_reports_an_unknown_tag_column() -> None:
    """An unknown column in a tag is reported as tables[0].tags[0]."""
    config = make_config({"table": "s.t", "tags": ["x"]})
    with pytest.raises(ConfigError) as info:
        check_against_schema(config, {"s.t": ["id", "user_id"]})
    assert str(info.value) == "tables[0].tags[0]: unknown column 'x' in s.t"


def test_schema_check_names_the_tag_set_with_the_unknown_column() -> None:
    """The second tag's index is reported when its second column is unknown."""
    config = make_config({"table": "s.t", "tags": ["user_id", ["shop_id", "skew"]]})
    with pytest.raises(ConfigError) as info:
        check_against_schema(config, {"s.t": ["id", "user_id", "shop_id", "sku"]})
    assert str(info.value) == "tables[0].tags[1]: unknown column 'skew' in s.t"


def test_schema_check_accepts_a_tags_only_rule() -> None:
    """A tags-only rule whose columns exist passes the check (no key to check)."""
    check_against_schema(make_config(ORDERS), {"s.t": ["id", "user_id", "shop_id", "sku"]})


def test_fingerprint_changes_with_tags() -> None:
    """Adding a tag changes the fingerprint (the table is flushed)."""
    assert rule_fingerprint(make_rule(tags=["user_id"])) != rule_fingerprint(make_rule())


def test_fingerprint_changes_with_tag_columns() -> None:
    """A different tag column changes the fingerprint."""
    assert rule_fingerprint(make_rule(tags=["user_id"])) != rule_fingerprint(make_rule(tags=["shop_id"]))


def test_fingerprint_changes_with_columns() -> None:
    """The value's columns are part of the fingerprint."""
    assert rule_fingerprint(make_rule(columns=["id"])) != rule_fingerprint(make_rule(columns=["id", "name"]))


def test_fingerprint_changes_with_mode() -> None:
    """Switching evict → update changes the fingerprint."""
    assert rule_fingerprint(make_rule(mode="update")) != rule_fingerprint(make_rule(mode="evict"))


def test_fingerprint_ignores_ttl() -> None:
    """A TTL change does not reshape keys or values: same fingerprint."""
    assert rule_fingerprint(make_rule(ttl=60, tags=["a"])) == rule_fingerprint(make_rule(ttl=3600, tags=["a"]))


def test_fingerprint_round_trip_rebuilds_an_equivalent_rule() -> None:
    """rule_from_fingerprint(rule_fingerprint(r)) has the same templates, mode, format, columns and tags."""
    rule = make_rule(
        key="u:{id}", also=["u:mail:{email}"], mode="update", format="hash", columns=["id", "email"], tags=["org"]
    )
    rebuilt = rule_from_fingerprint(rule_fingerprint(rule))
    assert rebuilt.name == rule.name
    assert rebuilt.templates == rule.templates
    assert (rebuilt.mode, rebuilt.format, rebuilt.columns, rebuilt.tags) == (
        "update",
        "hash",
        ("id", "email"),
        (("org",),),
    )


def test_fingerprint_round_trip_of_a_tags_only_rule() -> None:
    """A tags-only rule rebuilds with no key and the same tags."""
    rule = make_config(ORDERS).tables[0]
    rebuilt = rule_from_fingerprint(rule_fingerprint(rule))
    assert rebuilt.key is None
    assert rebuilt.templates == ()
    assert rebuilt.tags == rule.tags


# ---- keys: tag names ----------------------------------------------------------------------------------


def test_whole_table_tag_is_the_table_name() -> None:
    """No columns: the tag is just schema.table."""
    assert tag_suffix("s.t") == "s.t"


def test_column_tag_renders_column_and_value() -> None:
    """One column renders schema.table:col=value."""
    assert tag_suffix("s.t", ["user_id"], {"user_id": 5}) == "s.t:user_id=5"


def test_column_order_follows_the_given_columns() -> None:
    """The columns argument, not the row's order, decides the order of the parts."""
    assert tag_suffix("s.t", ["sku", "shop_id"], {"shop_id": 1, "sku": "A"}) == "s.t:sku=A:shop_id=1"


def test_other_row_columns_are_ignored() -> None:
    """Only the tag's columns are rendered."""
    assert tag_suffix("s.t", ["user_id"], {"id": 9, "user_id": 5, "name": "x"}) == "s.t:user_id=5"


def test_colon_in_a_value_is_escaped() -> None:
    """':' inside a value becomes %3A."""
    assert tag_suffix("s.t", ["a"], {"a": "x:y"}) == "s.t:a=x%3Ay"


def test_different_value_tuples_never_collide() -> None:
    """Every pair of distinct value tuples over tricky strings and NULL renders distinct tags (trailing spaces
    aside: see test_trailing_spaces_are_one_value)."""
    values = [None, "", ":", "=", "%", "%N", "%25", "%3A", "a", "1:b=2", "b=", " a", "N"]
    seen: dict[str, tuple[Any, Any]] = {}
    for a, b in itertools.product(values, repeat=2):
        suffix = tag_suffix("s.t", ["a", "b"], {"a": a, "b": b})
        assert seen.setdefault(suffix, (a, b)) == (a, b), suffix
    assert len(seen) == len(values) ** 2


def test_trailing_spaces_are_one_value() -> None:
    """PAD SPACE: 'a', 'a ' and 'a  ' name one tag, on the worker's side and the reader's (leading and inner
    spaces, and bytes, are kept)."""
    assert {tag_suffix("s.t", ["a"], {"a": v}) for v in ("a", "a ", "a  ")} == {"s.t:a=a"}
    assert tag_suffix("s.t", ["a"], {"a": " "}) == tag_suffix("s.t", ["a"], {"a": ""}) == "s.t:a="
    assert tag_suffix("s.t", ["a"], {"a": " a b"}) == "s.t:a=%20a%20b"
    assert tag_suffix("s.t", ["a"], {"a": b"a "}) == "s.t:a=a%20"


def test_null_renders_as_percent_n() -> None:
    """A NULL value renders as %N."""
    assert tag_suffix("s.t", ["a"], {"a": None}) == "s.t:a=%N"


def test_the_string_percent_n_differs_from_null() -> None:
    """The text '%N' is escaped to %25N, so it cannot pass for NULL."""
    assert tag_suffix("s.t", ["a"], {"a": "%N"}) == "s.t:a=%25N"


def test_empty_string_differs_from_null() -> None:
    """'' renders an empty value, not %N."""
    assert tag_suffix("s.t", ["a"], {"a": ""}) == "s.t:a="


def test_missing_tag_column_raises_key_error() -> None:
    """A row without the tag's column raises KeyError (the planner turns it into MissingColumn)."""
    with pytest.raises(KeyError):
        tag_suffix("s.t", ["user_id"], {"id": 1})


def _differently_ordered_equal_sets() -> tuple[set[str], set[str]]:
    """Two equal sets of strings whose iteration orders differ (as in two processes with other hash seeds)."""
    names = [f"m{i}" for i in range(64)]
    for a, b in itertools.combinations(names, 2):
        first, second = {a}, {b}
        first.add(b)
        second.add(a)
        if list(first) != list(second):
            return first, second
    raise AssertionError("no pair of strings with differing set order found")


def test_equal_set_values_render_the_same_tag() -> None:
    """Two equal SET values render the same tag whatever their iteration order."""
    first, second = _differently_ordered_equal_sets()
    assert first == second
    assert tag_suffix("s.t", ["flags"], {"flags": first}) == tag_suffix("s.t", ["flags"], {"flags": second})


def test_glob_escape_escapes_every_special() -> None:
    """* ? [ ] and backslash are each preceded by a backslash."""
    assert glob_escape("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"


def test_glob_escape_leaves_plain_text_alone() -> None:
    """Text without specials (dots, colons, percent escapes) is unchanged."""
    assert glob_escape("s.t:user_id=%3A5") == "s.t:user_id=%3A5"


def _glob_literal(pattern: str) -> str:
    """The text a Redis glob matches, when it holds no unescaped special; fails on any unescaped special."""
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(next(chars))
        else:
            assert ch not in "*?[]", f"unescaped {ch!r} in {pattern!r}"
            out.append(ch)
    return "".join(out)


def test_glob_escape_output_matches_only_the_text() -> None:
    """Read back as a glob, the escaped text has no wildcard left and stands for exactly the original."""
    text = "s.t:a=[x]*?\\b\\*"
    assert _glob_literal(glob_escape(text)) == text


# ---- planner and sink ------------------------------------------------------------------------------------


def test_tags_of_without_tags_is_the_whole_table() -> None:
    """A rule without tags still hits its whole-table tag."""
    assert tags_of(make_rule(table="s.t"), _insert({"id": 1})) == ["s.t"]


def test_tags_of_puts_the_whole_table_first() -> None:
    """The whole-table tag comes first, then the column tags in configuration order."""
    rule = make_config(ORDERS).tables[0]
    tags = tags_of(rule, _insert({"id": 1, "user_id": 5, "shop_id": 2, "sku": "A"}))
    assert tags == ["s.t", "s.t:user_id=5", "s.t:shop_id=2:sku=A"]


def test_tags_of_an_update_includes_both_images() -> None:
    """A moved row hits the tags of its old and its new values."""
    rule = make_config({"table": "s.t", "tags": ["user_id"]}).tables[0]
    tags = tags_of(rule, _update({"id": 1, "user_id": 5}, {"id": 1, "user_id": 6}))
    assert tags == ["s.t", "s.t:user_id=5", "s.t:user_id=6"]


def test_tags_of_a_delete_uses_the_before_image() -> None:
    """A delete hits the tags of the deleted row."""
    rule = make_config({"table": "s.t", "tags": ["user_id"]}).tables[0]
    assert tags_of(rule, _delete({"id": 1, "user_id": 5})) == ["s.t", "s.t:user_id=5"]


def test_tags_of_removes_duplicates() -> None:
    """An update that keeps the tag value lists each tag once."""
    rule = make_config({"table": "s.t", "tags": ["user_id"]}).tables[0]
    tags = tags_of(rule, _update({"id": 1, "user_id": 5, "n": 1}, {"id": 1, "user_id": 5, "n": 2}))
    assert tags == ["s.t", "s.t:user_id=5"]


def test_tags_of_renders_null_values() -> None:
    """A NULL tag column yields the %N tag (readers may depend on it)."""
    rule = make_config({"table": "s.t", "tags": ["user_id"]}).tables[0]
    assert tags_of(rule, _insert({"id": 1, "user_id": None})) == ["s.t", "s.t:user_id=%N"]


def test_tags_of_missing_column_raises_missing_column() -> None:
    """A row lacking a tag column raises MissingColumn naming the column."""
    rule = make_config({"table": "s.t", "tags": ["user_id"]}).tables[0]
    with pytest.raises(MissingColumn, match="user_id"):
        tags_of(rule, _insert({"id": 1}))


@pytest.mark.parametrize("mode", ["evict", "update"])
def test_plan_change_of_a_tags_only_rule_has_no_key_operations(mode: str) -> None:
    """A tags-only rule plans no Delete/Set for inserts, updates or deletes."""
    rule = make_config({**ORDERS, "mode": mode}).tables[0]
    row = {"id": 1, "user_id": 5, "shop_id": 2, "sku": "A"}
    for change in (_insert(row), _update(row, {**row, "user_id": 6}), _delete(row)):
        assert plan_change(change, rule) == []


def test_encode_ops_of_evict_tag() -> None:
    """EvictTag declares the tag set and its hold-off marker, and flattens to the T op."""
    assert encode_ops(Namespace("cdc"), [EvictTag("s.t:a=1")]) == (["cdc:tag:s.t:a=1", "cdc:tinv:s.t:a=1"], ["T"])


def test_encode_ops_keeps_tag_ops_in_order_with_deletes() -> None:
    """Mixed ops flatten in the order given, each with its declared keys."""
    keys, args = encode_ops(Namespace("n"), [Delete("k"), EvictTag("s.t"), Delete("j")])
    assert args == ["D", "T", "D"]
    assert keys == ["k", "n:lease:k", "n:inv:k", "n:tag:s.t", "n:tinv:s.t", "j", "n:lease:j", "n:inv:j"]


def test_the_fingerprint_carries_the_encoding_so_an_upgrade_that_renders_values_anew_flushes() -> None:
    """A cache written by a release without ENCODING (or another one) reads as written under another rule; a
    stored fingerprint of either form still rebuilds its rule (to flush its keys)."""
    import json

    from cdc_sync.config import ENCODING, rule_from_fingerprint

    rule = make_rule(mode="update")
    text = rule_fingerprint(rule)
    assert json.loads(text)["encoding"] == ENCODING
    older = json.dumps({k: v for k, v in json.loads(text).items() if k != "encoding"})
    assert older != text
    assert rule_fingerprint(rule_from_fingerprint(older)) == text == rule_fingerprint(rule_from_fingerprint(text))
