"""The read-ahead's own reading of GTID and XID events equals the library's (differential, on event bytes).

The integration test (tests/integration/test_readahead.py) compares whole MariaDB streams; MySQL's GTID event
cannot be produced here, so it is built per MySQL's layout and read both ways.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from types import SimpleNamespace
from typing import Any

import pytest
from pymysql.protocol import MysqlPacket
from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, XidEvent
from pymysqlreplication.packet import BinLogPacketWrapper

from cdc_sync.adapters.readahead import ReadAhead
from cdc_sync.core.events import RawBegin, RawCommit


def _event(kind: int, body: bytes, server_id: int = 7, log_pos: int = 4321, timestamp: int = 1_700_000_000) -> bytes:
    """An OK packet holding one event (with a CRC32 footer)."""
    header = struct.pack("<IBIIIH", timestamp, kind, server_id, 19 + len(body) + 4, log_pos, 0)
    event = header + body
    return b"\0" + event + struct.pack("<I", zlib.crc32(event))


def _library(data: bytes, event_class: type) -> Any:
    wrapper = BinLogPacketWrapper(
        MysqlPacket(data, "utf8"),
        {},
        SimpleNamespace(charset="utf8", _get_dbms=lambda: "mysql"),
        (8, 0, 36),
        True,
        frozenset({event_class}),
        None,
        None,
        None,
        None,
        False,
        False,
        False,
        False,
        False,
    )
    return wrapper.event


def _stream() -> SimpleNamespace:
    return SimpleNamespace(log_file="bin.000009", log_pos=4, table_map={})


@pytest.mark.parametrize("gno", [1, 23, 2**40 + 5, 2**63 - 1])
def test_mysql_gtid_reads_as_the_library_does(gno: int) -> None:
    """uuid:gno from a MySQL GTID event, spelled as the library spells it."""
    sid = uuid.uuid4().bytes
    body = b"\x01" + sid + struct.pack("<Q", gno) + b"\x02" + struct.pack("<QQ", 5, 6) + b"\0" * 16
    data = _event(33, body)
    stream = _stream()
    raw = ReadAhead(set()).decide(data, stream)
    assert raw == RawBegin(gtid=_library(data, GtidEvent).gtid, opens=False)
    assert stream.log_pos == 4321


@pytest.mark.parametrize(("flags", "opens"), [(0x00, True), (0x01, False), (0x03, False), (0x20, True)])
def test_mariadb_gtid_reads_as_the_library_does(flags: int, opens: bool) -> None:
    """domain-server-seq from a MariaDB GTID event; a standalone one (flag 1) opens no transaction."""
    data = _event(162, struct.pack("<QIB", 2**33 + 9, 4, flags) + b"\0" * 6, server_id=77)
    library = _library(data, MariadbGtidEvent)
    raw = ReadAhead(set()).decide(data, _stream())
    assert raw == RawBegin(gtid=library.gtid, opens=opens)
    assert opens == (not library.flags & 1)


def test_xid_reads_as_the_library_does() -> None:
    """An XID commits at the event's next position, with its header's timestamp, in the file being read."""
    data = _event(16, struct.pack("<Q", 991), log_pos=98765, timestamp=1_712_345_678)
    library = _library(data, XidEvent)
    stream = _stream()
    raw = ReadAhead(set()).decide(data, stream)
    assert raw == RawCommit("bin.000009", 98765, library.timestamp)
    assert stream.log_pos == 98765


def test_packets_that_are_no_event_go_to_the_library() -> None:
    """An end-of-stream or error packet, or a too short one, is never decided here."""
    ahead = ReadAhead(set())
    assert ahead.decide(b"\xfe\0\0\0\0", _stream()) is None
    assert ahead.decide(b"\xff" + b"\0" * 30, _stream()) is None
    assert ahead.decide(b"\0" * 10, _stream()) is None
