"""What the worker requires of a server, and where it starts on one: pure decisions over ``ServerInfo``,
shared by the worker, doctor and the checkpoint commands."""

from __future__ import annotations

from cdc_sync.core.events import ServerInfo
from cdc_sync.core.positions import has_tagged_gtids
from cdc_sync.errors import ConfigError, ServerConfigError

REQUIRED_SETTINGS = {
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
}
# (variable, value that is refused, why). Compressed binlogs (MariaDB log_bin_compress, MySQL
# binlog_transaction_compression) are read: adapters/readahead.py expands them.
REFUSED_SETTINGS = (("binlog_row_value_options", "PARTIAL_JSON", "partial JSON updates carry diffs, not values"),)


def check_server(info: ServerInfo) -> None:
    """Refuse a server whose binlog cannot drive the cache exactly."""
    for name, want in REQUIRED_SETTINGS.items():
        have = info.variables.get(name, "(missing)").upper()
        if have != want:
            raise ServerConfigError(f"MySQL {name} is {have}; cdc-sync needs {name}={want}")
    for name, refused, why in REFUSED_SETTINGS:
        if info.variables.get(name, "").upper() == refused:
            raise ServerConfigError(f"MySQL {name} is {refused}: {why}; turn it off")
    if info.flavor == "mysql" and has_tagged_gtids(info.gtid_position):
        raise ServerConfigError(
            "the server's GTID set holds tagged GTIDs (uuid:tag:n, MySQL 8.3+), which cdc-sync cannot follow; "
            'stop using tagged GTIDs or set mysql.position_mode = "file"'
        )


def server_identity(info: ServerInfo) -> str:
    """Which server this is (``ns:server``): its server_uuid (MySQL), else its server_id (MariaDB)."""
    return f"{info.flavor}:{info.server_uuid or info.variables.get('server_id', '')}"


def initial_position(info: ServerInfo, start: str, mode: str) -> str:
    """Where to start when Redis holds no checkpoint (or must start over at the server's end).

    On MariaDB the GTID state comes with its stream part, so the first connection resumes by file position:
    a GTID resume from a state whose numbers went backwards is refused by the server.
    """
    if start == "earliest":
        if mode == "gtid":
            raise ConfigError("mysql.start: 'earliest' reads by file position; set mysql.position_mode to auto or file")
        if not info.first_file:
            raise ServerConfigError("the server lists no binary logs")
        return f"{info.first_file}:4"
    if mode != "file" and info.gtid_position:
        # the server id the binlog file itself carries (after SET GLOBAL server_id, the old one until it rotates)
        server_id = str(info.file_server_id or info.variables.get("server_id", ""))
        if info.flavor == "mariadb" and info.gtid_at_file and info.file_position and server_id.isdigit():
            return f"{info.gtid_at_file}@{server_id}:{info.file_position}"
        return info.gtid_position
    if mode == "gtid":
        raise ServerConfigError("mysql.position_mode is 'gtid' but the server has no GTID position yet")
    if not info.file_position:
        raise ServerConfigError("the server reports no binlog position (is log_bin on?)")
    return info.file_position
