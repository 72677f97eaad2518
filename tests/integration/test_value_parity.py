"""One encoding per value: the worker (binlog, both decoders) and the reader's loader (SELECT) write the same
bytes for every type a mapped table can hold, in JSON and hash formats."""

from __future__ import annotations

import json
import random
from typing import Any

import pymysql
import pytest
import redis

from cdc_sync.adapters.mysql import RowLoader
from cdc_sync.config import load
from cdc_sync.core.codec import encode_hash, encode_json
from tests.helpers import cli, execute, wait_caught_up
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget

SINGLE_BYTE = ("cp1250", "cp1251", "cp1256", "cp1257", "greek", "hebrew", "cp866", "dec8", "swe7", "keybcs2")
# multi-byte charsets: codes Python maps elsewhere (sjis 815f, ujis a1c0, eucjpms a1c1, big5 a15a), codes it has
# none for (euckr's CP949 8141, eucjpms ada1, ujis f5a1, big5 f9d6), codes the server stores without a Unicode
# mapping (it prints '?': gbk a440, gb2312 a2a1, sjis 81ad), three-byte and half-width kana (8fb0a1, 8ea1, a1)
MULTI_BYTE = {
    "gbk": "41a440a1a4b0a1",
    "gb2312": "a2a1b0a142",
    "big5": "a15af9d6a3c0a440",
    "sjis": "815fa181ad5c7e",
    "cp932": "81ad8740a1815f",
    "euckr": "8141a2e8b0a1",
    "ujis": "a1c0f5a18fb0a18ea1",
    "eucjpms": "a1c1ada18fb0a18ea1",
}
# wide charsets: MySQL's byte order, characters beyond the BMP where the charset has them
WIDE = {"ucs2": "'Aé€'", "utf16": "_utf8mb4'A😀é'", "utf16le": "_utf8mb4'A😀é'", "utf32": "_utf8mb4'😀x'"}
HIGH_BYTES = "x'" + "".join(f"{b:02x}" for b in range(0x80, 0xA8)) + "'"  # 40 bytes, undefined ones among them

# (column definition, values): one row per value, id = position; NULL rows are added for every column.
COLUMNS: list[tuple[str, list[str]]] = [
    (
        "f FLOAT",
        [
            *("1.1", "0.1234567", "123456789", "3.4028235e38", "-1.5e-40", "0", "-0.0", "16777217", "1e-45"),
            *("0.3", "-7.25e-7", "999999.5", "1234567.5", "0.1", "100"),
        ],
    ),
    ("f2 FLOAT(7,2)", ["1.1", "12345.67", "-0.01"]),
    ("f10 FLOAT(10,4)", ["123456.7891", "0.0001"]),
    ("d DOUBLE", ["1.1", "0.1234567890123456789", "1e308", "-2.2250738585072014e-308"]),
    ("d2 DOUBLE(10,3)", ["1.1", "-1234567.891"]),
    ("y YEAR", ["0", "1901", "2155", "70"]),
    ("u UUID", ["'123e4567-e89b-12d3-a456-426614174000'", "'00000000-0000-0000-0000-000000000000'"]),
    ("i4 INET4", ["'10.0.0.1'", "'255.255.255.255'"]),
    (
        "i6 INET6",
        [
            *("'::1'", "'2001:db8::ff00:42:8329'", "'::ffff:1.2.3.4'", "'::'", "'::2'", "'::1.2.3.4'"),
            *("'::ffff:0.0.0.0'", "'1:0:0:2:0:0:0:3'", "'fe80::1:0:0:1'", "'1::'", "'1:2:3:4:5:6:7:8'"),
        ],
    ),
    ("l1 VARCHAR(10) CHARACTER SET latin1", ["x'81'", "x'80'", "x'e9'", "x'8d8f909d'", "x'ff'"]),
    ("l1t TEXT CHARACTER SET latin1", ["x'81e9'"]),
    # single-byte charsets where Python's codec of the name differs from MySQL's, or is missing
    *((f"c_{cs} VARCHAR(40) CHARACTER SET {cs}", [HIGH_BYTES]) for cs in SINGLE_BYTE),
    *((f"m_{cs} VARCHAR(20) CHARACTER SET {cs}", [f"x'{raw}'", "'plain'"]) for cs, raw in MULTI_BYTE.items()),
    *((f"w_{cs} VARCHAR(10) CHARACTER SET {cs}", [value]) for cs, value in WIDE.items()),
    ("wc CHAR(5) CHARACTER SET ucs2", ["'ab'", "''"]),
    ("dc DECIMAL(30,10)", ["'-12345678901234567890.0123456789'", "0"]),
    ("bt BIT(64)", ["b'1111111111111111111111111111111111111111111111111111111111111111'", "0"]),
    ("tm TIME(6)", ["'-838:59:59.000000'", "'00:00:00.000001'"]),
    ("dt DATETIME(6)", ["'0000-00-00 00:00:00'", "'9999-12-31 23:59:59.999999'"]),
    ("dte DATE", ["'0000-00-00'", "'2024-02-29'"]),
    ("st SET('b','a')", ["'a,b'", "''"]),
    ("js JSON", ['\'{"a": 1.10, "b": [1e2]}\'', "'null'"]),
]

TABLE = "parity"


def _create(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    defs = ", ".join(d for d, _ in COLUMNS)
    execute(
        sql,
        f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, {defs}, "
        "hid INT INVISIBLE DEFAULT 7, gen INT AS (id * 2) VIRTUAL, gens INT AS (id + 1) STORED) "
        "DEFAULT CHARSET=utf8mb4",
    )


def _insert(sql: pymysql.Connection) -> int:  # type: ignore[type-arg]
    execute(sql, "SET SESSION sql_mode = ''")
    n = 0
    for definition, values in COLUMNS:
        name = definition.split()[0]
        for value in [*values, "NULL"]:
            n += 1
            execute(sql, f"INSERT INTO {TABLE} (id, {name}) VALUES ({n}, {value})")
    return n


def _differences(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    tmp_path: Any,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    fmt: str,
) -> list[tuple[int, dict[str, Any]]]:
    """(row id, column -> (worker's value, loader's value)) for every row whose two encodings differ."""
    _create(sql)
    w = start_worker(f'[[tables]]\ntable = "{db}.{TABLE}"\nkey = "p:{{id}}"\nmode = "update"\nformat = "{fmt}"\n')
    n = _insert(sql)
    execute(sql, f"UPDATE {TABLE} SET hid = 8")  # every row once more, through an update image
    wait_caught_up(r, sql, mysql_server.flavor, w)
    loader = RowLoader(load(tmp_path / "w.toml").mysql, 1)
    diffs = []
    try:
        for i in range(1, n + 1):
            row = loader.load(f"{db}.{TABLE}", {"id": i})
            assert row is not None
            if fmt == "json":
                worker = r.get(f"p:{i}")
                mine = encode_json(row, list(row))
                if worker != mine:
                    diffs.append((i, _delta(json.loads(worker or b"{}"), json.loads(mine))))
            else:
                got = {k.decode(): v.decode() for k, v in r.hgetall(f"p:{i}").items()}
                flat = encode_hash(row, list(row))
                mine_h = dict(zip(flat[::2], flat[1::2], strict=True))
                if got != mine_h:
                    diffs.append((i, _delta(got, mine_h)))
    finally:
        loader.close()
    return diffs


@pytest.mark.parametrize("fmt", ["json", "hash"])
def test_the_worker_and_the_loader_write_the_same_bytes(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    tmp_path: Any,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
    fmt: str,
) -> None:
    """Every type of COLUMNS (FLOAT as the server prints it, UUID/INET as text, YEAR 0000, latin1's undefined
    bytes, 8-bit charsets as the server maps them, UCS-2/UTF-16/UTF-32, DOUBLE, DECIMAL, BIT, TIME, zero dates,
    SET, JSON), INVISIBLE and generated columns, NULL of each."""
    diffs = _differences(start_worker, mysql_server, tmp_path, db, sql, r, fmt)
    assert not diffs, "\n".join(f"row {i}: {d}" for i, d in diffs)


def _delta(worker: dict[str, Any], loader: dict[str, Any]) -> dict[str, Any]:
    missing = "(missing)"
    keys = sorted(set(worker) | set(loader))
    return {
        k: (worker.get(k, missing), loader.get(k, missing))
        for k in keys
        if worker.get(k, missing) != loader.get(k, missing)
    }


def test_verify_agrees_with_the_worker_on_invisible_year_and_latin1_columns(
    start_worker: StartWorker,
    mysql_server: MySQLTarget,
    tmp_path: Any,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
    r: redis.Redis,
) -> None:
    """verify loads rows by an explicit column list too: an INVISIBLE column the worker writes is no divergence,
    nor are YEAR 0000 and latin1's undefined bytes."""
    execute(
        sql,
        "CREATE TABLE vis (id INT PRIMARY KEY, y YEAR, l1 VARCHAR(5) CHARACTER SET latin1, h INT INVISIBLE DEFAULT 3)",
    )
    w = start_worker(f'[[tables]]\ntable = "{db}.vis"\nkey = "v:{{id}}"\nmode = "update"\n')
    execute(sql, "INSERT INTO vis (id, y, l1) VALUES (1, 0, x'81e9'), (2, 2001, 'a')")
    wait_caught_up(r, sql, mysql_server.flavor, w)
    assert json.loads(r.get("v:1") or b"{}") == {"id": 1, "y": 0, "l1": "\x81é", "h": 3}
    proc = cli(tmp_path / "w.toml", "verify", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_loader_reads_its_column_list_again_after_a_column_is_dropped(
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
) -> None:
    """The loader names every column (never ``*``) from column info it keeps for a while: a column dropped since
    makes the SELECT fail with 1054, and the loader reads the list again once instead of failing the lookup."""
    from cdc_sync.config import MySQLConfig

    execute(sql, "CREATE TABLE dropped (id INT PRIMARY KEY, a INT, b INT)", "INSERT INTO dropped VALUES (1, 2, 3)")
    loader = RowLoader(MySQLConfig(host=mysql_server.host, port=mysql_server.port, user="root", password=""), 1)
    try:
        assert loader.load(f"{db}.dropped", {"id": 1}) == {"id": 1, "a": 2, "b": 3}
        execute(sql, "ALTER TABLE dropped DROP COLUMN b")
        assert loader.load(f"{db}.dropped", {"id": 1}) == {"id": 1, "a": 2}
    finally:
        loader.close()


def test_multibyte_text_decodes_as_the_server_converts_it(
    mysql_server: MySQLTarget,
    db: str,
    sql: pymysql.Connection,  # type: ignore[type-arg]
) -> None:
    """The tables ``server_charsets`` reads, against the server itself on random byte strings: valid codes,
    codes without a mapping, lone and cut-off lead bytes, stray trail bytes. ``bytes.decode`` with the
    registered codec gives what ``CONVERT(... USING utf8mb4)`` gives, character for character."""
    from cdc_sync.adapters.mysql import MySQLAdmin
    from cdc_sync.config import MySQLConfig
    from cdc_sync.core.rowdecode import register_server_charset, server_codec

    defs = ", ".join(f"m_{cs} TEXT CHARACTER SET {cs}" for cs in MULTI_BYTE)
    execute(sql, f"CREATE TABLE mb (id INT PRIMARY KEY, {defs})")
    admin = MySQLAdmin(MySQLConfig(host=mysql_server.host, port=mysql_server.port, user="root", password=""))
    rng = random.Random(17)
    try:
        tables = admin.server_charsets([(db, "mb")])
        assert sorted(tables) == sorted(MULTI_BYTE), "a table for every multi-byte charset"
        mismatches: list[tuple[str, str, str, str]] = []
        for cs, (table, sequences) in tables.items():
            assert len(sequences) > 5000, (cs, len(sequences))
            register_server_charset(cs, table, sequences)
            codec = server_codec(cs)
            assert codec is not None
            known = list(sequences)
            samples: list[bytes] = []
            for _ in range(400):
                parts = []
                for _ in range(rng.randint(1, 6)):
                    pick = rng.random()
                    if pick < 0.5:
                        parts.append(rng.choice(known))
                    elif pick < 0.7:
                        parts.append(bytes([rng.randint(0x20, 0x7E)]))
                    else:
                        parts.append(bytes([rng.choice([b for b in range(0x80, 0x100)])]))
                samples.append(b"".join(parts))
            # the reference: the server, one statement per batch, a newline between the samples
            blob = b"\n".join(samples).hex()
            with sql.cursor() as cur:
                cur.execute(f"SELECT CONVERT(CONVERT(x'{blob}' USING {cs}) USING utf8mb4)")
                (text,) = cur.fetchone()  # type: ignore[misc]
            server = text.split("\n")
            assert len(server) == len(samples)
            for raw, want in zip(samples, server, strict=True):
                got = raw.decode(codec)
                if got != want:
                    mismatches.append((cs, raw.hex(), want, got))
        assert not mismatches, mismatches[:20]
    finally:
        admin.close()
