"""The project's exception tree.

CdcSyncError
├── ConfigError            bad configuration; the CLI exits 2
│   ├── ServerConfigError  the MySQL server lacks a required binlog setting
│   └── ServerRefused      a server refused us for a reason retrying cannot fix (credentials, unknown
│                          database, missing privilege, server_id taken by another replica); carries ``fix``
├── PositionError          a position string could not be parsed (a checkpoint, ``--start``, a stored value)
├── SourceError            the binlog source failed (connection, protocol)
│   ├── PositionLostError  the start position is no longer on the server (purged)
│   │   └── HistoryChanged the binlog file of the position was written anew (RESET MASTER)
│   ├── ServerChanged      a file position was resumed on another server's binlog
│   └── DecodeError        row bytes do not fit their table map (rowdecode; the event is reported unknown)
├── SinkError              Redis failed
│   └── SinkUnavailable    Redis could not be reached (retryable)
├── CacheUnavailable       Redis failed and the reader is in strict mode (no fallback to MySQL)
├── RewindRequired         Redis holds a checkpoint other than the one the worker wrote
├── Fenced                 HA: another worker holds the leader lease; this one must stop applying
└── OperatorLockLost       an operator command lost ``<ns>:operator`` (paused past its TTL); its steps are refused
"""

from __future__ import annotations

import re


class CdcSyncError(Exception):
    """Root of every error cdc-sync raises on purpose."""


class ConfigError(CdcSyncError):
    """The configuration is invalid; the message names the field."""


class SourceError(CdcSyncError):
    """The binlog source failed."""


class PositionLostError(SourceError):
    """The requested binlog position is not on the server any more."""


class HistoryChanged(PositionLostError):
    """The binlog file a position names exists, but was created anew since (RESET MASTER): the position is lost."""


class ServerChanged(SourceError):
    """The binlog a file position was resumed from belongs to another server (a failover behind one address)."""


class DecodeError(SourceError, ValueError):
    """A binlog event's row bytes do not fit its table map (truncated or misaligned rows)."""


class PositionError(CdcSyncError):
    """A position string could not be parsed."""


class CacheUnavailable(CdcSyncError):
    """Redis failed and the reader is in strict mode (no fallback to MySQL)."""


class SinkError(CdcSyncError):
    """The Redis side failed."""


class SinkUnavailable(SinkError):
    """Redis could not be reached; the step can be retried."""


class RewindRequired(CdcSyncError):
    """Redis's checkpoint differs from the one this worker last wrote."""

    def __init__(self, stored: str | None) -> None:
        super().__init__(f"stored checkpoint is {stored!r}")
        self.stored = stored


class ServerConfigError(ConfigError):
    """The MySQL server is not set up for row-based change capture (log_bin, ROW, FULL image/metadata)."""


# A server certificate the client cannot verify (a wrong or missing CA, a name the certificate does not hold), in
# the wording of Python's ssl module: a refusal (no retry heals it), on either side.
TLS_UNTRUSTED = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|hostname mismatch|IP address mismatch")


class ServerRefused(ConfigError):
    """A server refused this client for good: retrying cannot help, a person must change something.

    Classified once, where the driver's error is translated (mysql.translate_error, sink.redis_error):
    a wrong password (MySQL 1045, Redis WRONGPASS), an unknown database (1049), a missing privilege, another
    replica connected with this worker's ``server_id``. ``kind`` says which; ``fix`` is one line saying what
    to change. Transient failures (refused connection, timeout, a restarting server) are never this.
    """

    def __init__(self, message: str, fix: str, kind: str) -> None:
        super().__init__(message)
        self.fix = fix
        # "credentials" | "database" | "privilege" | "server_id" | "tls" | "redis_auth" | "redis_acl" | "redis_tls"
        self.kind = kind


class Fenced(CdcSyncError):
    """HA: the leader lease belongs to another worker; this one's writes are refused."""


class OperatorLockLost(CdcSyncError):
    """An operator command's lock ``<ns>:operator`` no longer holds its token (the command was paused longer than
    the lock lasts, and another command may hold it): its flush and checkpoint steps are refused; the CLI exits 1,
    as for a concurrent operator command."""
