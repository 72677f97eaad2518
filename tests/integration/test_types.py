"""Every documented type survives exactly into update-mode values (JSON and hash)."""

from __future__ import annotations

import base64
import json

import pymysql
import redis

from tests.helpers import wait_caught_up
from tests.integration.conftest import StartWorker
from tests.servers import MySQLTarget

TABLE = """
CREATE TABLE alltypes (
  id BIGINT UNSIGNED PRIMARY KEY,
  n_null INT NULL,
  i_small SMALLINT, i_tiny_u TINYINT UNSIGNED, i_big BIGINT,
  dec_v DECIMAL(20,6), f FLOAT, d DOUBLE,
  dt DATETIME(6), dt0 DATETIME, ts TIMESTAMP(3) NULL, dte DATE, tm TIME(2), yr YEAR,
  vc VARCHAR(50), txt TEXT, ch CHAR(5),
  bin BINARY(4), vbin VARBINARY(10), bl BLOB,
  js JSON, en ENUM('small','large'), st SET('a','b','c'), st_empty SET('a','b'), bt BIT(10)
) DEFAULT CHARSET=utf8mb4
"""

INSERT = """
INSERT INTO alltypes VALUES (
  18446744073709551615, NULL,
  -32768, 255, -9223372036854775808,
  '-12345678901234.500000', 1.5, 2.25,
  '2024-02-29 23:59:59.123456', '1999-12-31 00:00:00', '2024-01-02 03:04:05.678', '2024-02-29', '-838:59:59.50', 2155,
  'héllo wörld 😀', 'line1\\nline2 "quoted"', 'ab',
  x'6162', x'00ff10', x'deadbeef',
  '{"k": [1, 2.5, "x", null, true], "u": "é"}', 'large', 'c,a', '', b'1010000001'
)
"""

EXPECTED = {
    "id": 18446744073709551615,
    "n_null": None,
    "i_small": -32768,
    "i_tiny_u": 255,
    "i_big": -9223372036854775808,
    "dec_v": "-12345678901234.500000",
    "f": 1.5,
    "d": 2.25,
    "dt": "2024-02-29T23:59:59.123456",
    "dt0": "1999-12-31T00:00:00",
    "ts": "2024-01-02T03:04:05.678000",
    "dte": "2024-02-29",
    "tm": "-838:59:59.500000",
    "yr": 2155,
    "vc": "héllo wörld 😀",
    "txt": 'line1\nline2 "quoted"',
    "ch": "ab",
    "bin": base64.b64encode(b"ab\0\0").decode(),
    "vbin": base64.b64encode(b"\x00\xff\x10").decode(),
    "bl": base64.b64encode(b"\xde\xad\xbe\xef").decode(),
    "en": "large",
    "st": ["a", "c"],
    "st_empty": [],
    "bt": 0b1010000001,
}


def _prepare(sql: pymysql.Connection) -> None:  # type: ignore[type-arg]
    with sql.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(TABLE)


def test_update_mode_json_keeps_every_type_exactly(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """NULL, DECIMAL, dates and times, binary, JSON, ENUM/SET, BIT, unsigned BIGINT and utf8mb4 survive."""
    _prepare(sql)
    w = start_worker(f"""
[[tables]]
table = "{db}.alltypes"
key = "t:{{id}}"
mode = "update"
""")
    with sql.cursor() as cur:
        cur.execute(INSERT)
    wait_caught_up(r, sql, mysql_server.flavor, w)
    value = json.loads(r.get("t:18446744073709551615") or b"{}")
    js = value.pop("js")
    assert value == EXPECTED
    if mysql_server.flavor == "mariadb":  # MariaDB's JSON is LONGTEXT: the text itself
        assert json.loads(js) == {"k": [1, 2.5, "x", None, True], "u": "é"}
    else:
        assert js == {"k": [1, 2.5, "x", None, True], "u": "é"}


def test_update_mode_hash_keeps_every_type_as_text(
    start_worker: StartWorker, mysql_server: MySQLTarget, db: str, sql: pymysql.Connection, r: redis.Redis
) -> None:  # type: ignore[type-arg]
    """Hash format: one field per non-NULL column, values as text."""
    _prepare(sql)
    w = start_worker(f"""
[[tables]]
table = "{db}.alltypes"
key = "t:{{id}}"
mode = "update"
format = "hash"
""")
    with sql.cursor() as cur:
        cur.execute(INSERT)
    wait_caught_up(r, sql, mysql_server.flavor, w)
    fields = {k.decode(): v.decode() for k, v in r.hgetall("t:18446744073709551615").items()}
    assert "n_null" not in fields
    assert fields["id"] == "18446744073709551615"
    assert fields["dec_v"] == "-12345678901234.500000"
    assert fields["dt"] == "2024-02-29T23:59:59.123456"
    assert fields["tm"] == "-838:59:59.500000"
    assert fields["vc"] == "héllo wörld 😀"
    assert fields["bin"] == base64.b64encode(b"ab\0\0").decode()
    assert json.loads(fields["st"]) == ["a", "c"]
    assert fields["bt"] == str(0b1010000001)
