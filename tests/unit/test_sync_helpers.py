"""cdc_sync.worker.loop pure helpers: server checks and the start position without a checkpoint."""

from __future__ import annotations

from typing import Any

import pytest

from cdc_sync.core.events import ServerInfo
from cdc_sync.core.positions import kind_of
from cdc_sync.core.requirements import check_server, initial_position
from cdc_sync.errors import ConfigError, ServerConfigError

GOOD_VARS = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}
U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


def _info(**overrides: Any) -> ServerInfo:
    fields: dict[str, Any] = {
        "flavor": "mariadb",
        "version": "11.4.2-MariaDB",
        "gtid_position": "0-1-100",
        "file_position": "bin.000007:1234",
        "first_file": "bin.000003",
        "variables": dict(GOOD_VARS),
    }
    fields.update(overrides)
    return ServerInfo(**fields)


# ---- check_server ----------------------------------------------------------------------------------


def test_check_server_accepts_required_settings() -> None:
    """A server with every required binlog setting passes."""
    check_server(_info())


def test_check_server_case_insensitive() -> None:
    """Values are compared case-insensitively."""
    check_server(_info(variables={k: v.lower() for k, v in GOOD_VARS.items()}))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("log_bin", "OFF", "MySQL log_bin is OFF; cdc-sync needs log_bin=ON"),
        ("binlog_format", "MIXED", "MySQL binlog_format is MIXED; cdc-sync needs binlog_format=ROW"),
        ("binlog_format", "statement", "MySQL binlog_format is STATEMENT; cdc-sync needs binlog_format=ROW"),
        ("binlog_row_image", "MINIMAL", "MySQL binlog_row_image is MINIMAL; cdc-sync needs binlog_row_image=FULL"),
        ("binlog_row_metadata", "MINIMAL", "MySQL binlog_row_metadata is MINIMAL; cdc-sync needs"),
    ],
)
def test_check_server_rejects_wrong_setting(name: str, value: str, message: str) -> None:
    """A wrong setting is a ServerConfigError naming the variable, its value and the requirement."""
    with pytest.raises(ServerConfigError) as info:
        check_server(_info(variables={**GOOD_VARS, name: value}))
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("name", sorted(GOOD_VARS))
def test_check_server_rejects_missing_setting(name: str) -> None:
    """A variable the server does not report (e.g. an old server) is refused by name."""
    variables = {k: v for k, v in GOOD_VARS.items() if k != name}
    with pytest.raises(ServerConfigError, match=f"MySQL {name} is \\(MISSING\\)"):
        check_server(_info(variables=variables))


def test_server_config_error_is_config_error() -> None:
    """ServerConfigError is a ConfigError (the CLI exits 2 for both)."""
    assert issubclass(ServerConfigError, ConfigError)


# ---- initial_position ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "mode", "expected"),
    [
        (_info(), "auto", "0-1-100"),
        (_info(), "gtid", "0-1-100"),
        (_info(), "file", "bin.000007:1234"),
        (_info(gtid_position=""), "auto", "bin.000007:1234"),
        (_info(flavor="mysql", gtid_position=f"{U1}:1-5"), "auto", f"{U1}:1-5"),
        (_info(flavor="mysql", gtid_position=""), "file", "bin.000007:1234"),
    ],
)
def test_initial_position_current(info: ServerInfo, mode: str, expected: str) -> None:
    """start=current uses the server's GTID position unless in file mode or none exists."""
    assert initial_position(info, "current", mode) == expected


@pytest.mark.parametrize("mode", ["auto", "file"])
def test_initial_position_earliest(mode: str) -> None:
    """start=earliest begins at offset 4 of the oldest binlog file."""
    assert initial_position(_info(), "earliest", mode) == "bin.000003:4"


def test_earliest_in_gtid_mode_is_config_error() -> None:
    """earliest with position_mode=gtid is a plain ConfigError naming mysql.start."""
    with pytest.raises(ConfigError) as info:
        initial_position(_info(), "earliest", "gtid")
    assert not isinstance(info.value, ServerConfigError)
    assert str(info.value).startswith("mysql.start: ")


def test_earliest_without_binlogs() -> None:
    """earliest on a server that lists no binlogs is a ServerConfigError."""
    with pytest.raises(ServerConfigError, match="no binary logs"):
        initial_position(_info(first_file=""), "earliest", "auto")


def test_gtid_mode_without_gtid_position() -> None:
    """position_mode=gtid on a server without GTIDs is a ServerConfigError."""
    with pytest.raises(ServerConfigError, match="position_mode is 'gtid'"):
        initial_position(_info(gtid_position=""), "current", "gtid")


@pytest.mark.parametrize("mode", ["auto", "file"])
def test_no_position_at_all(mode: str) -> None:
    """No GTID and no file position is a ServerConfigError, never an empty start."""
    with pytest.raises(ServerConfigError, match="no binlog position"):
        initial_position(_info(gtid_position="", file_position=""), "current", mode)


@pytest.mark.parametrize(
    ("start", "mode"), [("current", "auto"), ("current", "file"), ("current", "gtid"), ("earliest", "auto")]
)
def test_initial_position_is_parseable(start: str, mode: str) -> None:
    """Whatever initial_position returns is a valid position string."""
    assert kind_of(initial_position(_info(), start, mode)) in ("file", "mariadb")


def test_check_server_refuses_settings_that_hide_changes() -> None:
    """Partial JSON updates (diffs, not values) are refused at start, naming the variable."""
    with pytest.raises(ServerConfigError, match="binlog_row_value_options"):
        check_server(_info(variables={**GOOD_VARS, "binlog_row_value_options": "PARTIAL_JSON"}))


@pytest.mark.parametrize(("name", "value"), [("log_bin_compress", "ON"), ("binlog_transaction_compression", "ON")])
def test_check_server_accepts_compressed_binlogs(name: str, value: str) -> None:
    """Compressed binlogs are read (the read-ahead expands them), so they are no reason to refuse a server."""
    check_server(_info(variables={**GOOD_VARS, name: value}))


def test_tagged_mysql_gtids_are_refused_at_start() -> None:
    """MySQL 8.3+ tagged GTIDs (uuid:tag:n): a clear configuration error (exit 2), never a crash loop."""
    from cdc_sync.core.positions import has_tagged_gtids, kind_of
    from cdc_sync.errors import PositionError

    tagged = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:nightly:1-3"
    assert has_tagged_gtids(tagged) and not has_tagged_gtids("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5")
    info = ServerInfo("mysql", "8.4.3", tagged, "binlog.000001:4", "binlog.000001", variables=dict(GOOD_VARS))
    with pytest.raises(ServerConfigError, match="tagged GTIDs"):
        check_server(info)
    with pytest.raises(PositionError, match="tagged GTIDs"):
        kind_of(tagged)


def test_doctor_fails_tagged_gtids_and_explains_mariadb_strict_mode() -> None:
    """doctor: tagged GTIDs are a FAIL; MariaDB with gtid_strict_mode=OFF is a WARN that says what it means."""
    from cdc_sync.ops.doctor import FAIL, WARN, _gtid_check

    tagged = _gtid_check("mysql", "3e11fa47-71ca-11e1-9e33-c80aa9429562:t:1", {"gtid_mode": "ON"})
    assert tagged.status == FAIL and "tagged" in tagged.detail
    loose = _gtid_check("mariadb", "0-1-5", {"gtid_strict_mode": "OFF"})
    assert loose.status == WARN and "backwards" in loose.detail and "gtid_strict_mode=ON" in loose.fix
    assert _gtid_check("mariadb", "0-1-5", {"gtid_strict_mode": "ON"}).status == "PASS"
