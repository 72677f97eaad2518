"""cdc_sync.core.planner: row changes → Redis operations, and which statements flush which tables."""

from __future__ import annotations

from typing import Any

import pytest

from cdc_sync.core.events import Op, RowChange
from cdc_sync.core.planner import (
    Delete,
    MissingColumn,
    RedisOp,
    SetHash,
    SetJson,
    is_txn_control,
    keys_of,
    merge_row,
    plan_change,
    statement_flushes,
)
from tests.unit.factories import make_rule, make_rules

ALSO = ["user:email:{email}"]
ANN = {"id": 1, "email": "ann@x", "name": "Ann"}
ANN_JSON = b'{"id":1,"email":"ann@x","name":"Ann"}'


def _insert(after: dict[str, Any]) -> RowChange:
    return RowChange(Op.INSERT, "shop", "users", None, after)


def _update(before: dict[str, Any], after: dict[str, Any]) -> RowChange:
    return RowChange(Op.UPDATE, "shop", "users", before, after)


def _delete(before: dict[str, Any]) -> RowChange:
    return RowChange(Op.DELETE, "shop", "users", before, None)


def _keys(ops: list[RedisOp]) -> list[str]:
    return [op.key for op in ops]


def _evict() -> Any:
    return make_rule(also=ALSO)


def _update_rule(**settings: Any) -> Any:
    return make_rule(also=ALSO, mode="update", **settings)


# ---- evict mode ------------------------------------------------------------------------------------


def test_evict_insert_deletes_after_keys() -> None:
    """An insert in evict mode deletes every key of the new row."""
    assert plan_change(_insert(ANN), _evict()) == [Delete("user:1"), Delete("user:email:ann@x")]


def test_evict_update_same_keys_no_duplicates() -> None:
    """An update that keeps the keys deletes each key once."""
    ops = plan_change(_update(ANN, {**ANN, "name": "Anna"}), _evict())
    assert ops == [Delete("user:1"), Delete("user:email:ann@x")]


def test_evict_update_changed_keys_deletes_both_images() -> None:
    """An update that changes the key columns deletes the keys of both images."""
    ops = plan_change(_update(ANN, {**ANN, "id": 2, "email": "b@x"}), _evict())
    assert ops == [Delete("user:1"), Delete("user:email:ann@x"), Delete("user:2"), Delete("user:email:b@x")]


def test_evict_delete() -> None:
    """A delete deletes the keys of the old row."""
    assert plan_change(_delete(ANN), _evict()) == [Delete("user:1"), Delete("user:email:ann@x")]


def test_evict_missing_key_column() -> None:
    """A row without a key column raises MissingColumn naming it."""
    with pytest.raises(MissingColumn, match="'email'"):
        plan_change(_insert({"id": 1}), _evict())


# ---- update mode: JSON -----------------------------------------------------------------------------


def test_update_insert_sets_json_under_every_key() -> None:
    """An insert writes the JSON value under the key and each also-key, with the TTL in ms."""
    ops = plan_change(_insert(ANN), _update_rule(ttl=3600))
    assert ops == [SetJson("user:1", ANN_JSON, 3_600_000), SetJson("user:email:ann@x", ANN_JSON, 3_600_000)]


def test_update_no_ttl() -> None:
    """ttl = 0 means no expiry (ttl_ms 0)."""
    assert {op.ttl_ms for op in plan_change(_insert(ANN), _update_rule()) if isinstance(op, SetJson)} == {0}


def test_update_same_keys_only_sets() -> None:
    """An update that keeps the keys writes them and deletes nothing."""
    ops = plan_change(_update(ANN, {**ANN, "name": "Bo"}), _update_rule())
    assert [type(op) for op in ops] == [SetJson, SetJson]
    assert _keys(ops) == ["user:1", "user:email:ann@x"]


def test_update_also_change_deletes_orphan() -> None:
    """A changed also column deletes the old also-key and writes the new one."""
    after = {**ANN, "email": "new@x"}
    value = b'{"id":1,"email":"new@x","name":"Ann"}'
    ops = plan_change(_update(ANN, after), _update_rule())
    assert ops == [Delete("user:email:ann@x"), SetJson("user:1", value, 0), SetJson("user:email:new@x", value, 0)]


def test_update_primary_key_change_deletes_orphan() -> None:
    """A changed primary key deletes the old key; the unchanged also-key is rewritten, not deleted."""
    ops = plan_change(_update(ANN, {**ANN, "id": 9}), _update_rule())
    assert [(type(op).__name__, op.key) for op in ops] == [
        ("Delete", "user:1"),
        ("SetJson", "user:9"),
        ("SetJson", "user:email:ann@x"),
    ]


def test_update_never_duplicates_a_key() -> None:
    """No key appears in two operations of one change."""
    for after in ({**ANN, "id": 9}, {**ANN, "email": "z"}, {**ANN, "id": 9, "email": "z"}, ANN):
        keys = _keys(plan_change(_update(ANN, after), _update_rule()))
        assert len(keys) == len(set(keys))


def test_update_delete_only_evicts() -> None:
    """A delete in update mode deletes the old keys."""
    assert plan_change(_delete(ANN), _update_rule()) == [Delete("user:1"), Delete("user:email:ann@x")]


def test_evict_only_never_writes() -> None:
    """evict_only (rolled-back group) turns an update into deletes of both images."""
    ops = plan_change(_update(ANN, {**ANN, "email": "b@x"}), _update_rule(), evict_only=True)
    assert ops == [Delete("user:1"), Delete("user:email:ann@x"), Delete("user:email:b@x")]


def test_null_also_column_renders_no_key() -> None:
    """A NULL also column gives no also-key on insert."""
    ops = plan_change(_insert({**ANN, "email": None}), _update_rule())
    assert _keys(ops) == ["user:1"]


def test_also_column_becoming_null_deletes_old_key() -> None:
    """An also column set to NULL deletes the old also-key."""
    ops = plan_change(_update(ANN, {**ANN, "email": None}), _update_rule())
    assert [(type(op).__name__, op.key) for op in ops] == [("Delete", "user:email:ann@x"), ("SetJson", "user:1")]


def test_columns_projection() -> None:
    """columns limits the value to the listed columns, in the listed order."""
    (op, _) = plan_change(_insert(ANN), _update_rule(columns=["name", "id"]))
    assert isinstance(op, SetJson)
    assert op.value == b'{"name":"Ann","id":1}'


def test_exclude_projection() -> None:
    """exclude drops the listed columns and keeps the rest in row order."""
    (op, _) = plan_change(_insert({**ANN, "pw": "h"}), _update_rule(exclude=["pw", "email"]))
    assert isinstance(op, SetJson)
    assert op.value == b'{"id":1,"name":"Ann"}'


def test_update_missing_value_column() -> None:
    """A listed value column missing from the row (DROP COLUMN) raises MissingColumn."""
    with pytest.raises(MissingColumn, match="'age'"):
        plan_change(_insert(ANN), _update_rule(columns=["id", "age"]))


# ---- update mode: hash -----------------------------------------------------------------------------


def test_hash_sets_fields_without_nulls() -> None:
    """Hash format writes a field per non-NULL column under every key."""
    ops = plan_change(_insert({**ANN, "name": None}), _update_rule(format="hash", ttl=5))
    fields = ("id", "1", "email", "ann@x")
    assert ops == [SetHash("user:1", fields, 5000), SetHash("user:email:ann@x", fields, 5000)]


def test_hash_all_null_evicts() -> None:
    """A hash with no non-NULL value column cannot exist: the keys are deleted instead."""
    rule = _update_rule(format="hash", columns=["name"])
    ops = plan_change(_update(ANN, {**ANN, "name": None}), rule)
    assert ops == [Delete("user:1"), Delete("user:email:ann@x")]


def test_hash_all_null_with_orphan() -> None:
    """All-NULL hash after a key change deletes old and new keys, each once."""
    rule = _update_rule(format="hash", columns=["name"])
    ops = plan_change(_update(ANN, {**ANN, "id": 2, "name": None}), rule)
    assert ops == [Delete("user:1"), Delete("user:2"), Delete("user:email:ann@x")]


# ---- keys_of ---------------------------------------------------------------------------------------


def test_keys_of_dedupes() -> None:
    """Two templates rendering the same key yield it once."""
    assert keys_of(make_rule(key="u:{id}", also=["u:{id}"]), {"id": 3}) == ["u:3"]


def test_keys_of_escapes_values() -> None:
    """Key values are escaped."""
    assert keys_of(_evict(), {"id": "a:b", "email": "x y"}) == ["user:a%3Ab", "user:email:x%20y"]


def test_merge_row() -> None:
    """merge_row zips names and values and refuses a length mismatch."""
    assert merge_row(["a", "b"], [1, None]) == {"a": 1, "b": None}
    with pytest.raises(ValueError):
        merge_row(["a"], [1, 2])


# ---- statements ------------------------------------------------------------------------------------


def _rules() -> Any:
    return make_rules(
        {"table": "shop.users", "key": "user:{id}"},
        {"table": "shop.orders", "key": "order:{id}"},
        {"table": "d2.t", "key": "t:{id}"},
    )


def _flushed(sql: str) -> list[str]:
    return [f"{f.schema}.{f.table}" for f in statement_flushes(sql, _rules())]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("TRUNCATE TABLE users", ["shop.users"]),
        ("truncate `Users`", ["shop.users"]),
        ("DROP TABLE IF EXISTS `d2`.`t` /* generated by server */", ["d2.t"]),
        ("ALTER TABLE shop.orders ADD COLUMN note TEXT", ["shop.orders"]),
        ("RENAME TABLE users TO users_old, users_new TO users", ["shop.users"]),
        ("RENAME TABLE `shop`.`tmp` TO `shop`.`orders`", ["shop.orders"]),
        ("DROP DATABASE shop", ["shop.users", "shop.orders"]),
        ("/* maintenance */ DROP SCHEMA IF EXISTS `d2`", ["d2.t"]),
        ("UPDATE users SET name = 'x' WHERE id = 1", ["shop.users"]),
        ("ALTER TABLE orders ENGINE=InnoDB -- rebuild", ["shop.orders"]),
    ],
)
def test_statement_flushes_mapped_tables(sql: str, expected: list[str]) -> None:
    """DDL or DML naming a mapped table flushes that table (and a database DDL its tables)."""
    assert _flushed(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE USER 'bob'@'%' IDENTIFIED BY 'pw'",
        "GRANT SELECT ON shop.products TO 'bob'@'%'",
        "CREATE TABLE shop.products (id INT PRIMARY KEY)",
        "TRUNCATE TABLE shop.users_archive",
        "ALTER TABLE customers ADD INDEX (ordersum)",
        "ANALYZE TABLE products",
        "ALTER DATABASE other CHARACTER SET utf8mb4",
    ],
)
def test_statement_unrelated_no_flush(sql: str) -> None:
    """Statements that do not name a mapped table (outside comments) flush nothing."""
    assert _flushed(sql) == []


def test_statement_flush_details() -> None:
    """A statement flush carries reason "statement" and the SQL cut before its first literal."""
    sql = "ALTER TABLE users COMMENT '" + "x" * 300 + "', " + "ADD COLUMN c INT, " * 20
    (flush,) = statement_flushes(sql, _rules())
    assert flush.reason == "statement" and (flush.schema, flush.table) == ("shop", "users")
    assert flush.detail == "ALTER TABLE users COMMENT '?'..."


@pytest.mark.parametrize("sql", ["XA COMMIT 'trx1'", "/* x */ xa commit X'01'", "XA ROLLBACK 'trx1'"])
def test_xa_commit_flushes_every_rule(sql: str) -> None:
    """XA COMMIT/ROLLBACK flushes every mapped table with reason xa_commit."""
    flushes = statement_flushes(sql, _rules())
    assert [(f.reason, f.schema, f.table) for f in flushes] == [
        ("xa_commit", "shop", "users"),
        ("xa_commit", "shop", "orders"),
        ("xa_commit", "d2", "t"),
    ]


def test_statement_unquoted_unicode_table() -> None:
    """An unquoted non-ASCII table name (legal in MySQL) flushes its rule."""
    rules = make_rules({"table": "shop.café", "key": "c:{id}"})
    assert [f.table for f in statement_flushes("TRUNCATE TABLE café", rules)] == ["café"]


def test_statement_executable_comment() -> None:
    """A statement inside a MySQL executable comment still flushes the table it names."""
    assert _flushed("/*!40000 TRUNCATE TABLE users */") == ["shop.users"]


def test_statement_comment_marker_inside_quotes() -> None:
    """A '#' inside a quoted identifier does not hide the rest of the statement."""
    assert _flushed("RENAME TABLE `tmp#1` TO users") == ["shop.users"]


@pytest.mark.parametrize(
    ("sql", "control"),
    [
        ("BEGIN", True),
        ("begin", True),
        ("COMMIT", True),
        ("ROLLBACK", True),
        ("ROLLBACK TO SAVEPOINT s1", True),
        ("SAVEPOINT s1", True),
        ("RELEASE SAVEPOINT s1", True),
        ("XA START 'x'", True),
        ("XA END 'x'", True),
        ("XA PREPARE 'x'", True),
        ("/* c */ BEGIN", True),
        ("XA COMMIT 'x'", False),
        ("XA ROLLBACK 'x'", False),
        ("ALTER TABLE users ADD c INT", False),
        ("BEGINNING", False),
        ("COMMITTED_TABLE", False),
        ("INSERT INTO t VALUES ('BEGIN')", False),
    ],
)
def test_is_txn_control(sql: str, control: bool) -> None:
    """Only transaction-control statements (not XA COMMIT/ROLLBACK) count as control."""
    assert is_txn_control(sql) is control


@pytest.mark.parametrize(
    "sql",
    ["/* users */ CREATE TABLE x (id INT)", "CREATE TABLE x (id INT) -- users\n", "CREATE TABLE x (id INT) # users"],
)
def test_statement_names_in_comments_flush_on_purpose(sql: str) -> None:
    """A table named only in a comment is flushed too: comments are searched, since the server runs some."""
    assert _flushed(sql) == ["shop.users"]


def test_statements_are_logged_without_their_string_literals() -> None:
    """A statement in a log line never shows a literal: ALTER USER ... IDENTIFIED BY 'secret', data values."""
    from cdc_sync.core.planner import sql_for_log

    text = sql_for_log("ALTER USER 'cdc'@'%' IDENTIFIED BY 'It''s \\'secret\\''; UPDATE t SET a = \"x\"")
    assert "secret" not in text and "cdc" not in text and '"x"' not in text
    assert text == "ALTER USER '?'..."
    no_backslash = sql_for_log("UPDATE users SET name = 'C:\\' , pw = 'Top-Secret' WHERE id = 1")
    assert "Top-Secret" not in no_backslash and no_backslash.startswith("UPDATE users SET name = ")
