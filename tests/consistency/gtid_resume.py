"""Where MariaDB resumes a GTID binlog stream when sequence numbers are out of order (gtid_strict_mode OFF).

    python -m tests.consistency.gtid_resume

Writes a binlog in domain 0 whose numbers go 3 4 5 1000 1001 500 501 1002 502 | 503 1003 504 (``|`` is a
FLUSH BINARY LOGS: the second file starts with Gtid_list [0-1-502]), then asks for the stream from each GTID:

* ``library``: python-mysql-replication 1.0.17 with ``auto_position`` (it always sends
  ``SET @slave_gtid_strict_mode=1``), as the worker does;
* ``non-strict``: the same request with ``@slave_gtid_strict_mode=0``, what a replica sends by default;
* ``replica``: a real MariaDB replica, ``SET GLOBAL gtid_slave_pos=...; CHANGE MASTER TO ... master_use_gtid=slave_pos``
  (which transactions it applied).

A correct resume from G delivers exactly the transactions after G in the binlog.
"""

from __future__ import annotations

import time
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import MariadbGtidEvent

from tools.devservers import LocalServer, start_mariadb

SEQUENCE = [None, None, None, 1000, None, 500, 501, None, 502, "flush", 503, None, 504]  # None: the next number
STARTS = ["0-1-2", "0-1-5", "0-1-1000", "0-1-1001", "0-1-499", "0-1-500", "0-1-501", "0-1-502", "0-1-503"]
STARTS += ["0-1-504", "0-1-1003", "0-1-700"]


class NonStrictReader(BinLogStreamReader):
    """The library's MariaDB dump request with ``@slave_gtid_strict_mode=0``."""

    def _BinLogStreamReader__set_mariadb_settings(self) -> Any:
        conn = self._stream_connection
        plain = conn.cursor

        def cursor(*args: Any, **kwargs: Any) -> Any:
            cur = plain(*args, **kwargs)
            execute = cur.execute
            cur.execute = lambda q, a=None: execute(q.replace("strict_mode=1", "strict_mode=0"), a)
            return cur

        conn.cursor = cursor
        try:
            return BinLogStreamReader._BinLogStreamReader__set_mariadb_settings(self)  # type: ignore[attr-defined]
        finally:
            conn.cursor = plain


def _q(cur: Any, sql: str) -> Any:
    cur.execute(sql)
    return cur.fetchall()


def build(master: LocalServer) -> dict[int, str]:
    """The out-of-order binlog; returns row id -> GTID of the transaction that inserted it."""
    cur = pymysql.connect(host="127.0.0.1", port=master.port, user="root", autocommit=True).cursor()
    _q(cur, "CREATE DATABASE p")
    _q(cur, "CREATE TABLE p.t (id INT PRIMARY KEY)")
    gtids: dict[int, str] = {}
    row = 0
    for seq in SEQUENCE:
        if seq == "flush":
            _q(cur, "FLUSH BINARY LOGS")
            continue
        if seq is not None:
            _q(cur, f"SET SESSION gtid_seq_no = {seq}")
        row += 1
        _q(cur, f"INSERT INTO p.t VALUES ({row})")
        gtids[row] = _q(cur, "SELECT @@last_gtid")[0][0]
    return gtids


def stream(port: int, start: str, strict: bool) -> str:
    cls = BinLogStreamReader if strict else NonStrictReader
    reader = cls(
        connection_settings={"host": "127.0.0.1", "port": port, "user": "root", "passwd": ""},
        server_id=99,
        blocking=False,
        is_mariadb=True,
        auto_position=start,
        resume_stream=True,
    )
    got = []
    try:
        for ev in reader:
            if isinstance(ev, MariadbGtidEvent):
                got.append(ev.gtid)
    except pymysql.MySQLError as exc:
        return f"error {exc.args[0]}: {exc.args[1]}"
    finally:
        reader.close()
    return " ".join(g.split("-")[2] for g in got) or "(nothing)"


def replica(rcur: Any, master_port: int, start: str, gtids: dict[int, str]) -> str:
    _q(rcur, "STOP SLAVE")
    _q(rcur, "RESET SLAVE ALL")
    _q(rcur, "DELETE FROM p.t")
    _q(rcur, f"SET GLOBAL gtid_slave_pos = '{start}'")
    _q(
        rcur,
        f"CHANGE MASTER TO master_host='127.0.0.1', master_port={master_port}, master_user='root', "
        "master_use_gtid=slave_pos",
    )
    _q(rcur, "START SLAVE")
    time.sleep(2)
    rcur.execute("SHOW SLAVE STATUS")
    status = dict(zip([d[0] for d in rcur.description], rcur.fetchone(), strict=True))
    if status["Last_IO_Error"] or status["Last_SQL_Error"]:
        return f"error: {status['Last_IO_Error'] or status['Last_SQL_Error']}"
    ids = [r[0] for r in _q(rcur, "SELECT id FROM p.t ORDER BY id")]
    return " ".join(gtids[i].split("-")[2] for i in ids) or "(nothing)"


def main() -> None:
    master, slave = start_mariadb(), start_mariadb(extra_args=("--server-id=2",))
    try:
        gtids = build(master)
        rcur = pymysql.connect(host="127.0.0.1", port=slave.port, user="root", autocommit=True).cursor()
        _q(rcur, "CREATE DATABASE p")
        _q(rcur, "CREATE TABLE p.t (id INT PRIMARY KEY)")
        cur = pymysql.connect(host="127.0.0.1", port=master.port, user="root", autocommit=True).cursor()
        version, strict_mode = _q(cur, "SELECT VERSION(), @@gtid_strict_mode")[0]
        print(f"MariaDB {version}, gtid_strict_mode={strict_mode}")
        order: list[str] = []
        for log_name, _size in _q(cur, "SHOW BINARY LOGS"):
            events = _q(cur, f"SHOW BINLOG EVENTS IN '{log_name}'")
            lists = [r[5] for r in events if r[2] == "Gtid_list"]
            order += [r[5].split()[-1].split("-")[2] for r in events if r[2] == "Gtid"]
            print(
                f"  {log_name}: starts with Gtid_list {lists[0] if lists else '?'}; GTIDs up to here: {' '.join(order)}"
            )
        print(f"gtid_binlog_pos {_q(cur, 'SELECT @@gtid_binlog_pos')[0][0]}")
        for start in STARTS:
            seq = int(start.split("-")[2])
            if str(seq) in order:
                want = " ".join(order[order.index(str(seq)) + 1 :]) or "(nothing)"
            else:
                want = "(not in the binlog)"
            print(f"resume from {start}: correct {want}")
            print(f"    library     {stream(master.port, start, strict=True)}")
            print(f"    non-strict  {stream(master.port, start, strict=False)}")
            print(f"    replica     {replica(rcur, master.port, start, gtids)}")
    finally:
        master.stop()
        slave.stop()


if __name__ == "__main__":
    main()
