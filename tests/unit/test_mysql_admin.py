"""MySQL vs MariaDB server queries, checked without a server (the SQL answers are scripted)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from cdc_sync.adapters.mysql import MySQLAdmin, connection_settings
from cdc_sync.adapters.mysql import translate_error as _translate
from cdc_sync.config import MySQLConfig
from cdc_sync.errors import PositionLostError, ServerRefused, SourceError

MYSQL8_VARS = {
    "version": "8.4.3",
    "version_comment": "MySQL Community Server - GPL",
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
    "gtid_mode": "ON",
    "gtid_executed": "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-77,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1-5",
    "server_uuid": "3e11fa47-71ca-11e1-9e33-c80aa9429562",
}


class ScriptedAdmin(MySQLAdmin):
    """MySQLAdmin whose SQL is answered from a script; unknown statements raise like a server would."""

    def __init__(self, variables: dict[str, str], statements: dict[str, list[dict[str, Any]] | Exception]) -> None:
        super().__init__(MySQLConfig())
        self.variables = variables
        self.statements = statements
        self.seen: list[str] = []

    def query(self, sql: str, args: Sequence[object] = ()) -> list[dict[str, Any]]:
        self.seen.append(sql)
        if sql.startswith("SHOW GLOBAL VARIABLES"):
            return [{"Variable_name": k, "Value": v} for k, v in self.variables.items()]
        answer = self.statements.get(sql)
        if answer is None:
            raise SourceError(f"{sql.split()[0]}: MySQL error 1064: syntax")
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_mysql84_uses_show_binary_log_status_and_gtid_executed() -> None:
    """MySQL 8.4: SHOW BINARY LOG STATUS for the file position, gtid_executed (newlines removed) for GTIDs."""
    admin = ScriptedAdmin(
        MYSQL8_VARS,
        {
            "SHOW BINARY LOG STATUS": [{"File": "binlog.000007", "Position": 1234}],
            "SHOW BINARY LOGS": [{"Log_name": "binlog.000003"}, {"Log_name": "binlog.000007"}],
        },
    )
    info = admin.server_info()
    assert info.flavor == "mysql"
    assert info.file_position == "binlog.000007:1234"
    assert info.first_file == "binlog.000003"
    assert info.gtid_position == ("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-77,4e11fa47-71ca-11e1-9e33-c80aa9429562:1-5")
    assert "SHOW MASTER STATUS" not in admin.seen


def test_older_mysql_falls_back_to_show_master_status() -> None:
    """MySQL before 8.2 has no SHOW BINARY LOG STATUS: SHOW MASTER STATUS answers instead."""
    admin = ScriptedAdmin(
        {**MYSQL8_VARS, "version": "8.0.36"},
        {
            "SHOW MASTER STATUS": [{"File": "mysql-bin.000002", "Position": 99}],
            "SHOW BINARY LOGS": [{"Log_name": "mysql-bin.000001"}],
        },
    )
    assert admin.server_info().file_position == "mysql-bin.000002:99"
    assert admin.seen.index("SHOW BINARY LOG STATUS") < admin.seen.index("SHOW MASTER STATUS")


def test_mysql_without_gtid_mode_has_no_gtid_position() -> None:
    """gtid_mode=OFF: no GTID position, so the worker falls back to file positions."""
    admin = ScriptedAdmin(
        {**MYSQL8_VARS, "gtid_mode": "OFF"},
        {
            "SHOW BINARY LOG STATUS": [{"File": "binlog.000001", "Position": 4}],
            "SHOW BINARY LOGS": [{"Log_name": "binlog.000001"}],
        },
    )
    assert admin.server_info().gtid_position == ""


def test_mariadb_uses_gtid_binlog_pos_and_show_master_status() -> None:
    """MariaDB: gtid_binlog_pos and SHOW MASTER STATUS, and the GTID state exactly at that file position."""
    admin = ScriptedAdmin(
        {"version": "10.11.19-MariaDB-0+deb12u1-log", "log_bin": "ON", "gtid_binlog_pos": "0-1-42"},
        {
            "SHOW MASTER STATUS": [{"File": "cdc-bin.000001", "Position": 777}],
            "SHOW BINARY LOGS": [{"Log_name": "cdc-bin.000001"}],
            "SELECT BINLOG_GTID_POS(%s, %s) AS g": [{"g": "0-1-41"}],
            "SHOW BINLOG EVENTS IN %s LIMIT 1": [{"Server_id": 3}],
        },
    )
    info = admin.server_info()
    assert info.file_server_id == 3, "the server id the binlog file itself carries"
    assert (info.flavor, info.gtid_position, info.file_position) == ("mariadb", "0-1-42", "cdc-bin.000001:777")
    assert info.gtid_at_file == "0-1-41", "the state at the file position, not one read apart from it"
    assert "SHOW BINARY LOG STATUS" not in admin.seen


def test_mariadb_start_position_carries_the_stream_part() -> None:
    """A MariaDB start position is the GTID state at the file position, with that position and the server id."""
    from cdc_sync.core.events import ServerInfo
    from cdc_sync.core.requirements import initial_position

    info = ServerInfo(
        "mariadb",
        "10.11",
        "0-1-42",
        "bin.000003:900",
        "bin.000001",
        variables={"server_id": "7"},
        gtid_at_file="0-1-41",
    )
    assert initial_position(info, "current", "auto") == "0-1-41@7:bin.000003:900"
    assert initial_position(info, "current", "file") == "bin.000003:900"
    renamed = ServerInfo(
        "mariadb",
        "10.11",
        "0-1-42",
        "bin.000003:900",
        "bin.000001",
        variables={"server_id": "8"},
        gtid_at_file="0-1-41",
        file_server_id=7,
    )
    assert initial_position(renamed, "current", "auto") == "0-1-41@7:bin.000003:900", "the file's own server id"
    plain = ServerInfo("mariadb", "10.11", "0-1-42", "bin.000003:900", "bin.000001", variables={"server_id": "7"})
    assert initial_position(plain, "current", "auto") == "0-1-42"


def test_error_1236_becomes_position_lost() -> None:
    """The server's 'could not find first log file' (1236) maps to PositionLostError."""
    import pymysql

    exc = pymysql.err.OperationalError(1236, "Could not find first log file name in binary log index file")
    assert isinstance(_translate(exc, "binlog stream"), PositionLostError)
    other = _translate(pymysql.err.OperationalError(2013, "Lost connection"), "binlog stream")
    assert type(other) is SourceError


def test_connection_settings_turn_tls_on_only_when_configured(tmp_path: Any) -> None:
    """No ssl_* setting: PyMySQL's "preferred" TLS, its one context made once (not per connection); any ssl_*
    setting: an SSLContext that requires TLS."""
    import pymysql

    plain = connection_settings(MySQLConfig(password="pw"))
    assert "ssl" not in plain and "ssl_disabled" not in plain
    first = pymysql.connections.Connection(**plain, defer_connect=True)
    second = pymysql.connections.Connection(**plain, defer_connect=True)
    assert first.ssl and not first._ssl_required and first.ctx is second.ctx
    import ssl
    import subprocess

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    settings = connection_settings(MySQLConfig(ssl_ca=str(cert), ssl_verify_identity=True))
    assert isinstance(settings["ssl"], ssl.SSLContext)
    assert settings["ssl"].check_hostname is True


@pytest.mark.parametrize("secret", ["hunter2-Secret"])
def test_mysql_config_repr_hides_password(secret: str) -> None:
    """The password is repr=False: it never shows up in a repr (and so in no log of the config)."""
    assert secret not in repr(MySQLConfig(password=secret))


def test_duplicate_server_id_is_not_a_lost_position() -> None:
    """Error 1236 for a duplicate server_id is a refusal naming server_id (see test_refusals), never a purge."""
    import pymysql

    exc = pymysql.err.OperationalError(
        1236, "A slave with the same server_uuid/server_id as this slave has connected to the master"
    )
    refused = _translate(exc, "binlog stream")
    assert isinstance(refused, ServerRefused) and refused.kind == "server_id"
    assert not isinstance(refused, PositionLostError)
    gtid = pymysql.err.OperationalError(
        1236, "Error: connecting slave requested to start from GTID 0-1-5, which is not in the master's binlog"
    )
    assert isinstance(_translate(gtid, "binlog stream"), PositionLostError)
