"""Read-your-writes, the application's side: the GTID of the write a session just committed, for
``reader.after(gtid)``. Any DB-API connection (pymysql, mysqlclient, mysql-connector)."""

from __future__ import annotations

from typing import Any


def last_gtid(connection: Any) -> str:
    """The GTID to wait for after this connection's last commit ('' when it wrote nothing).

    MariaDB: ``@@last_gtid``, the session's own last transaction. MySQL: its session's own GTID comes only in the
    OK packet (``session_track_gtids = OWN_GTID``), which pymysql and mysqlclient do not read, so this gives
    ``@@GLOBAL.gtid_executed`` read after the commit: a superset holding it (the wait may then also cover other
    sessions' later writes, never less than this one's)."""
    cursor = connection.cursor()
    try:
        cursor.execute("SELECT VERSION()")
        row = cursor.fetchone()
        version = str(row[0] if row else "")
        cursor.execute("SELECT @@last_gtid" if "mariadb" in version.lower() else "SELECT @@GLOBAL.gtid_executed")
        row = cursor.fetchone()
    finally:
        cursor.close()
    value = row[0] if row else None
    if isinstance(value, bytes | bytearray):
        value = value.decode()
    return "" if value is None else str(value).replace("\n", "").strip()
