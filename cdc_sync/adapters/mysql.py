"""MySQL/MariaDB over ordinary connections (PyMySQL): settings, error translation and admin queries.

Used by the worker (server identity, positions, table columns, foreign keys) and, later, by readers.
The binlog stream itself lives in source.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import re
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import pymysql
import pymysql.cursors

from cdc_sync.config import MySQLConfig
from cdc_sync.core.canonical import ColumnInfo
from cdc_sync.core.cascades import CascadeEdge
from cdc_sync.core.events import ServerInfo
from cdc_sync.core.rowdecode import WIDE_CHARSETS, CharsetTable, value_kind
from cdc_sync.errors import TLS_UNTRUSTED, PositionLostError, ServerRefused, SourceError

ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236
# Error 1236 means a lost position only with these texts; otherwise (a duplicate server_id, say) it is an
# ordinary connection failure, retried.
_POSITION_LOST_TEXTS = (
    "could not find first log file",
    "purged binary logs",
    "not in the master's binlog",
    "could not find gtid state",
    "is missing the gtid",  # MariaDB: a GTID resume after sequence numbers went backwards (strict mode)
    "impossible position",  # a file position past the end (a binlog tail lost in a crash, a bad checkpoint)
    "bogus data in log event",  # a file position inside an event
    "exceeded max_allowed_packet",  # ... as MariaDB reports some of those (or an event no replica can read)
)


def connection_settings(cfg: MySQLConfig) -> dict[str, Any]:
    """PyMySQL keyword arguments for ``cfg`` (TLS included). Holds the password: never log it."""
    settings: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "user": cfg.user,
        "password": cfg.password,
        "connect_timeout": cfg.connect_timeout_s,
        "charset": "utf8mb4",
    }
    if cfg.tls:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca)
        ctx.check_hostname = cfg.ssl_verify_identity
        if cfg.ssl_cert:
            ctx.load_cert_chain(cfg.ssl_cert, cfg.ssl_key)
        settings["ssl"] = ctx
    # else PyMySQL's own default: TLS when the server offers it, unverified ("preferred"; MySQL 8's
    # caching_sha2_password needs it, or RSA, for a full login), its context built once (_preferred_context)
    return settings


_library_ssl_ctx = pymysql.connections.Connection._create_ssl_ctx  # type: ignore[attr-defined]  # not in the stubs


@functools.lru_cache(maxsize=1)
def _preferred_context() -> ssl.SSLContext:
    """PyMySQL's context for "preferred" TLS (no ssl_* set), made once: the library builds it anew for every
    connection, loading the system's CA store each time (tens of ms of every connect) only to verify nothing."""
    ctx: ssl.SSLContext = _library_ssl_ctx(None, {})
    return ctx


def _create_ssl_ctx(self: pymysql.connections.Connection[Any], sslp: Any) -> ssl.SSLContext:
    if isinstance(sslp, dict) and not sslp:
        return _preferred_context()
    ctx: ssl.SSLContext = _library_ssl_ctx(self, sslp)
    return ctx


pymysql.connections.Connection._create_ssl_ctx = _create_ssl_ctx  # type: ignore[attr-defined]


def translate_error(exc: BaseException, what: str) -> SourceError | ServerRefused:
    """Map a PyMySQL error to the project's tree (the message never holds the password).

    A refusal that retrying cannot fix (see ``refusal``) becomes ServerRefused; a purged position
    PositionLostError; anything else SourceError, which the worker retries.
    """
    if isinstance(exc, pymysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
        text = str(exc.args[1]) if len(exc.args) > 1 else ""
        if code == ER_MASTER_FATAL_ERROR_READING_BINLOG and any(t in text.lower() for t in _POSITION_LOST_TEXTS):
            return PositionLostError(f"{what}: server error {code}: {text}")
        refused = refusal(code, text)
        if refused is not None:
            kind, why, fix = refused
            if code == 1045 and what.startswith("binlog stream"):
                # MariaDB refuses a dump without REPLICATION SLAVE with 1045 too, after the same login worked
                why, fix = (
                    "MySQL refused the binlog stream",
                    (
                        "GRANT REPLICATION SLAVE ON *.* TO the user (MariaDB answers a dump without it with error "
                        "1045); if cdc-sync doctor cannot log in either, " + _CREDENTIALS_FIX
                    ),
                )
            return ServerRefused(f"{what}: {why}: {plain_error(exc)}", fix, kind)
        return SourceError(f"{what}: {plain_error(exc)}")
    return SourceError(f"{what}: {plain_error(exc)}")


# MySQL/MariaDB error codes that no retry can heal, with what they mean and the fix (kind, why, fix).
_CREDENTIALS_FIX = (
    "check mysql.user and its password (mysql.password, mysql.password_file or $CDC_SYNC_MYSQL_PASSWORD), "
    "and that the user may connect from this host"
)
_REFUSALS: dict[int, tuple[str, str, str]] = {
    1045: ("credentials", "MySQL refused the login", _CREDENTIALS_FIX),
    1698: ("credentials", "MySQL refused the login", _CREDENTIALS_FIX),
    1130: ("credentials", "MySQL does not let this host connect", "allow the user to connect from this host"),
    1251: (
        "credentials",
        "MySQL asks for an authentication method this client does not support",
        "give the user an authentication plugin PyMySQL supports (e.g. mysql_native_password or caching_sha2_password)",
    ),
    3118: ("credentials", "the MySQL account is locked", "unlock it: ALTER USER ... ACCOUNT UNLOCK"),
    4151: ("credentials", "the MySQL account is locked", "unlock it: ALTER USER ... ACCOUNT UNLOCK"),
    1820: ("credentials", "the MySQL password has expired", "set a new password: ALTER USER ... IDENTIFIED BY ..."),
    1862: ("credentials", "the MySQL password has expired", "set a new password: ALTER USER ... IDENTIFIED BY ..."),
    1044: ("privilege", "MySQL denied access to a database", "grant the user access to the mapped schemas"),
    1142: ("privilege", "MySQL denied a table privilege", "GRANT SELECT ON each mapped table (all its columns)"),
    1143: ("privilege", "MySQL denied a column privilege", "GRANT SELECT ON each mapped table (all its columns)"),
    3159: (
        "tls",
        "MySQL requires TLS (require_secure_transport=ON)",
        "set mysql.ssl_ca (and ssl_cert/ssl_key if the server asks for a client certificate)",
    ),
    1049: ("database", "the database does not exist", 'check the schema part of [[tables]] table = "schema.table"'),
    1227: (
        "privilege",
        "MySQL denied a privilege the worker needs",
        "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* (MariaDB >= 10.5: also BINLOG MONITOR); "
        "run cdc-sync doctor for the exact statements",
    ),
}
ER_SLAVE_SAME_ID = 4052  # MariaDB, sent to the stream whose server_id a newer connection took over
_SERVER_ID_FIX = (
    "give every replica and every cdc-sync worker its own mysql.server_id, "
    "or set mysql.server_id = 0 to derive one from the host name"
)


def refusal(code: int, text: str) -> tuple[str, str, str] | None:
    """(kind, why, fix) when MySQL error ``code`` is one that no retry heals, else None.

    A duplicate ``server_id``: MariaDB 10.11 sends error 4052 ("A slave with the same server_uuid/server_id is
    already connected") to the binlog stream another connection with the same id took over (measured); MySQL
    sends 1236 "A slave with the same server_uuid/server_id as this slave has connected to the master".
    """
    if code == ER_SLAVE_SAME_ID or (code == ER_MASTER_FATAL_ERROR_READING_BINLOG and "same server_" in text.lower()):
        return (
            "server_id",
            "another replica connected with this worker's server_id and took over its stream",
            _SERVER_ID_FIX,
        )
    if code == 2003 and TLS_UNTRUSTED.search(text):
        return ("tls", "the MySQL server's TLS certificate is not trusted", _MYSQL_TLS_FIX)
    return _REFUSALS.get(code)


_MYSQL_TLS_FIX = (
    "set mysql.ssl_ca to the CA that signed the server's certificate, and mysql.host to a name or address the "
    "certificate holds (or mysql.ssl_verify_identity = false to skip that check)"
)


_ERRNO = re.compile(r"\s*\(\[Errno -?\d+\] ([^)]*)\)")
_PAREN_TIMEOUT = re.compile(r"\s*\((timed out)\)")


def plain_error(exc: BaseException) -> str:
    """A driver error as one plain sentence: ``Can't connect to MySQL server on '10.0.0.5': connection refused
    (MySQL error 2003)``, never a repr such as ``OperationalError(2003, ...)``."""
    if isinstance(exc, pymysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        text = str(exc.args[1]) if len(exc.args) > 1 else ""
        text = _ERRNO.sub(lambda m: ": " + m.group(1).lower(), text)
        text = _PAREN_TIMEOUT.sub(r": \1", text)
        return f"{text} (MySQL error {exc.args[0]})" if text else f"MySQL error {exc.args[0]}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if not exc.filename else f"{exc.strerror.lower()}: {exc.filename}"
    text = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    return text or type(exc).__name__


class MySQLAdmin:
    """Short queries over an ordinary connection: server identity, positions, table columns, foreign keys."""

    def __init__(self, cfg: MySQLConfig) -> None:
        self.cfg = cfg
        self._conn: pymysql.connections.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._file_servers: dict[str, int] = {}  # binlog file → the server_id of its format description

    def query(self, sql: str, args: Sequence[object] = ()) -> list[dict[str, Any]]:
        """Run one statement on a kept-open connection (reopened after any failure)."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = pymysql.connect(
                        **connection_settings(self.cfg),
                        cursorclass=pymysql.cursors.DictCursor,
                        autocommit=True,
                        read_timeout=30,  # a stalled server must not hang start-up, probes or shutdown
                        write_timeout=30,
                    )
                with self._conn.cursor() as cur:
                    cur.execute(sql, args)
                    return list(cur.fetchall())
            except pymysql.MySQLError as exc:
                if not isinstance(exc, pymysql.err.ProgrammingError):
                    self._close()
                raise translate_error(exc, sql.split()[0]) from exc

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.MySQLError, OSError):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def server_info(self) -> ServerInfo:
        """Flavor, version, current GTID and file positions, oldest binlog, key variables."""
        rows = self.query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('version', 'version_comment', 'log_bin', "
            "'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'gtid_mode', 'gtid_binlog_pos', "
            "'gtid_executed', 'server_uuid', 'server_id', 'gtid_domain_id', 'log_bin_compress', "
            "'binlog_transaction_compression', 'binlog_row_value_options', 'gtid_strict_mode', 'gtid_binlog_state')"
        )
        variables = {r["Variable_name"].lower(): str(r["Value"]) for r in rows}
        names = (variables.get("version", "") + variables.get("version_comment", "")).lower()
        flavor = "mariadb" if "mariadb" in names else "mysql"
        status = self._binlog_status(flavor)
        logs = self.query("SHOW BINARY LOGS") if variables.get("log_bin", "OFF").upper() == "ON" else []
        # MariaDB: the state exactly at that file position (gtid_binlog_pos, read apart, may include a later commit)
        gtid_at_file = self.gtid_at(status) if flavor == "mariadb" and status else None
        file_server_id = self.binlog_server_id(status.rpartition(":")[0]) if flavor == "mariadb" and status else None
        return ServerInfo(
            flavor=flavor,
            version=variables.get("version", ""),
            gtid_position=self._gtid(flavor, variables),
            file_position=status,
            first_file=str(logs[0]["Log_name"]) if logs else "",
            server_uuid=variables.get("server_uuid", ""),
            variables=variables,
            gtid_at_file=gtid_at_file,
            file_server_id=file_server_id,
        )

    @staticmethod
    def _gtid(flavor: str, variables: dict[str, str]) -> str:
        if flavor == "mariadb":
            return variables.get("gtid_binlog_pos", "")
        if variables.get("gtid_mode", "OFF").upper() != "ON":
            return ""
        return variables.get("gtid_executed", "").replace("\n", "")

    def current_position(self, flavor: str, kind: str) -> str:
        """The server's binlog end, in the form of ``kind`` ("file", "mariadb" or "mysql").

        MariaDB positions carry the stream part (``@server_id:file:pos``), which is what they compare by.
        """
        if kind == "file":
            return self._binlog_status(flavor)
        if kind == "mariadb":
            # The server id of the binlog file itself (what the stream's format description events say): after a
            # SET GLOBAL server_id the current file still carries the old one until it rotates.
            rows = self.query("SELECT @@global.gtid_binlog_pos AS p")
            state, end = str(rows[0]["p"] or ""), self._binlog_status(flavor)
            server = self.binlog_server_id(end.rpartition(":")[0]) if end else None
            if not state or server is None:
                return ""  # nothing to compare with in stream order: the prober does not vouch
            return f"{state}@{server}:{end}"
        rows = self.query("SELECT @@global.gtid_executed AS p")
        return str(rows[0]["p"] or "").replace("\n", "")

    def _binlog_status(self, flavor: str) -> str:
        """``file:pos`` of the server's binlog end: SHOW BINARY LOG STATUS (MySQL 8.2+), else SHOW MASTER STATUS."""
        statements = ["SHOW MASTER STATUS"] if flavor == "mariadb" else ["SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"]
        for i, sql in enumerate(statements):
            try:
                rows = self.query(sql)
            except SourceError:
                if i + 1 < len(statements):
                    continue
                raise
            return f"{rows[0]['File']}:{rows[0]['Position']}" if rows else ""
        return ""

    def table_columns(self, names: Sequence[str]) -> dict[str, list[str]]:
        """Columns in table order for each ``schema.table`` that exists."""
        out: dict[str, list[str]] = {}
        for name in names:
            schema, _, table = name.partition(".")
            rows = self.query(
                "SELECT COLUMN_NAME AS c FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                (schema, table),
            )
            if rows:
                out[name] = [str(r["c"]) for r in rows]
        return out

    def value_kinds(self, tables: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
        """Per table, the columns whose binlog value is not what a SELECT prints, with their
        rowdecode.server_text kind (FLOAT; MariaDB's UUID, INET4, INET6). Tables without such columns are left out."""
        out: dict[tuple[str, str], dict[str, str]] = {}
        for schema, table in tables:
            rows = self.query(
                "SELECT COLUMN_NAME AS c, DATA_TYPE AS t, NUMERIC_SCALE AS s FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND DATA_TYPE IN ('float', 'uuid', 'inet4', 'inet6')",
                (schema, table),
            )
            kinds = {
                str(r["c"]): kind
                for r in rows
                if (kind := value_kind(str(r["t"]).lower(), None if r["s"] is None else int(r["s"]))) is not None
            }
            if kinds:
                out[(schema, table)] = kinds
        return out

    def server_charsets(
        self, tables: Sequence[tuple[str, str]], known: Callable[[str], bool] = lambda name: False
    ) -> dict[str, CharsetTable]:
        """The server's own decoding of each 8-bit charset among the text columns of ``tables`` (those ``known``
        says were read before are left out): each byte alone and, for a multi-byte charset, every sequence of
        two or three bytes it reads as one character, as ``CONVERT(bytes USING charset)`` read back as UTF-8 gives
        them, which is what a SELECT returns. UTF-8, UTF-16/32 and UCS-2 are left to Python's codecs."""
        names: dict[str, int] = {}
        for schema, table in tables:
            rows = self.query(
                "SELECT DISTINCT c.CHARACTER_SET_NAME AS cs, s.MAXLEN AS maxlen FROM information_schema.COLUMNS c "
                "JOIN information_schema.CHARACTER_SETS s ON s.CHARACTER_SET_NAME = c.CHARACTER_SET_NAME "
                "WHERE c.TABLE_SCHEMA = %s AND c.TABLE_NAME = %s",
                (schema, table),
            )
            names.update((str(r["cs"]).lower(), int(r["maxlen"])) for r in rows if r["cs"] is not None)
        out: dict[str, CharsetTable] = {}
        for name, maxlen in sorted(names.items()):
            if name.startswith("utf8") or name in WIDE_CHARSETS or name == "binary" or maxlen > 3 or known(name):
                continue
            if not re.fullmatch(r"[a-z0-9_]+", name):
                continue
            probes = ", ".join(f"CONVERT(x'{b:02x}' USING {name}) AS b{b}" for b in range(256))
            row = self.query(f"SELECT {probes}")[0]
            chars = ["\0" if row[f"b{b}"] is None else str(row[f"b{b}"]) for b in range(256)]
            if maxlen == 1:
                if all(len(c) == 1 for c in chars):
                    out[name] = ("".join(chars), {})
                continue
            sequences = self._multibyte_sequences(name, maxlen)
            if sequences is not None:
                out[name] = ("".join(c if len(c) == 1 else "?" for c in chars), sequences)
        return out

    def _converted(self, charset: str, pieces: Sequence[bytes]) -> list[str] | None:
        """What the server makes of each of ``pieces`` (none holds a newline) in ``charset``, in one statement."""
        blob = b"\n".join(pieces).hex()
        text = self.query(f"SELECT CONVERT(CONVERT(x'{blob}' USING {charset}) USING utf8mb4) AS t")[0]["t"]
        got = str(text).split("\n")
        return got if len(got) == len(pieces) else None

    def _multibyte_sequences(self, charset: str, maxlen: int) -> dict[bytes, str] | None:
        """Every sequence the server converts as one character: a piece of two (or three) bytes that comes back as
        one character ('?' included: a code it stores but cannot map; a byte that starts nothing comes back as '?'
        followed by the next). None if a reply cannot be split back into its pieces."""
        bytes_ = [b for b in range(0x100) if b != 0x0A]
        pairs = [bytes([lead, trail]) for lead in range(0x80, 0x100) for trail in bytes_]
        got = self._converted(charset, pairs)
        if got is None:
            return None
        sequences = {p: g for p, g in zip(pairs, got, strict=True) if len(g) == 1}
        leads = {p[0] for p in sequences}
        for lead in sorted(set(range(0x80, 0x100)) - leads) if maxlen == 3 else []:
            # (a lead of three bytes, as EUC-JP's 0x8F: found by a second byte with a common third)
            tries = [bytes([lead, mid, 0xA1]) for mid in range(0x80, 0x100)]
            first = self._converted(charset, tries)
            if first is None or not any(len(g) == 1 for g in first):
                continue
            triples = [bytes([lead, mid, last]) for mid in range(0x80, 0x100) for last in bytes_]
            got3 = self._converted(charset, triples)
            if got3 is None:
                return None
            sequences.update((t, g) for t, g in zip(triples, got3, strict=True) if len(g) == 1)
        return sequences

    def binlog_server_id(self, file: str) -> int | None:
        """The server id in the format description of binlog ``file`` (the server that wrote it), None when the
        server has no such file. Cached per file name (a file's first event never changes)."""
        known = self._file_servers.get(file)
        if known is not None:
            return known
        try:
            rows = self.query("SHOW BINLOG EVENTS IN %s LIMIT 1", (file,))
        except SourceError as exc:
            if "1220" in str(exc) or "could not find target log" in str(exc).lower():
                return None
            raise
        if not rows:
            return None
        server = int(rows[0]["Server_id"])
        if len(self._file_servers) > 1000:
            self._file_servers.clear()
        self._file_servers[file] = server
        return server

    def gtid_at(self, file_pos: str) -> str | None:
        """MariaDB: the GTID state at ``file:pos`` of this server's binlog (None: no such position any more).
        A failure to ask is raised (the callers retry): it must never read as "no such position"."""
        file, _, pos = file_pos.rpartition(":")
        rows = self.query("SELECT BINLOG_GTID_POS(%s, %s) AS g", (file, int(pos)))
        value = rows[0]["g"] if rows else None
        return None if value is None else str(value)

    def stored_names(self, names: Sequence[str]) -> dict[str, tuple[str, str]]:
        """``schema.table`` → (schema, table) as the server stores them, for each that exists.

        information_schema compares names as the server does (case-insensitively under
        ``lower_case_table_names`` 1 or 2, exactly under 0) and returns the stored spelling, which is what
        binlog events carry.
        """
        out: dict[str, tuple[str, str]] = {}
        for name in names:
            schema, _, table = name.partition(".")
            rows = self.query(
                "SELECT TABLE_SCHEMA AS s, TABLE_NAME AS t FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                (schema, table),
            )
            exact = [r for r in rows if (r["s"], r["t"]) == (schema, table)]
            chosen = exact or rows
            if len(chosen) == 1:
                out[name] = (str(chosen[0]["s"]), str(chosen[0]["t"]))
        return out

    def cascade_edges(self) -> list[CascadeEdge]:
        """Every foreign key whose action rewrites child rows (those changes never reach the binlog)."""
        rows = self.query(
            "SELECT rc.CONSTRAINT_SCHEMA AS cs, rc.TABLE_NAME AS ct, rc.UNIQUE_CONSTRAINT_SCHEMA AS ps, "
            "rc.REFERENCED_TABLE_NAME AS pt, rc.UPDATE_RULE AS ur, rc.DELETE_RULE AS dr, "
            "kcu.REFERENCED_COLUMN_NAME AS pc, rc.CONSTRAINT_NAME AS n "
            "FROM information_schema.REFERENTIAL_CONSTRAINTS rc "
            "JOIN information_schema.KEY_COLUMN_USAGE kcu ON kcu.CONSTRAINT_SCHEMA = rc.CONSTRAINT_SCHEMA "
            "AND kcu.CONSTRAINT_NAME = rc.CONSTRAINT_NAME AND kcu.TABLE_NAME = rc.TABLE_NAME "
            "WHERE rc.UPDATE_RULE NOT IN ('RESTRICT', 'NO ACTION') OR rc.DELETE_RULE NOT IN ('RESTRICT', 'NO ACTION') "
            "ORDER BY rc.CONSTRAINT_SCHEMA, rc.TABLE_NAME, rc.CONSTRAINT_NAME, kcu.ORDINAL_POSITION"
        )
        grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in rows:
            grouped.setdefault((str(r["cs"]), str(r["ct"]), str(r["n"])), []).append(r)
        acting = ("CASCADE", "SET NULL", "SET DEFAULT")
        edges: list[CascadeEdge] = []
        for (schema, table, _name), cols in grouped.items():
            first = cols[0]
            edges.append(
                CascadeEdge(
                    parent=f"{first['ps']}.{first['pt']}",
                    child=f"{schema}.{table}",
                    parent_columns=tuple(str(c["pc"]) for c in cols),
                    on_delete=str(first["dr"]).upper() in acting,
                    on_update=str(first["ur"]).upper() in acting,
                )
            )
        return edges + self.hidden_foreign_keys()

    def hidden_foreign_keys(self) -> list[CascadeEdge]:
        """Foreign keys whose actions this user cannot see, taken to cascade on delete and update.

        information_schema shows a user KEY_COLUMN_USAGE for the tables it may SELECT, but
        REFERENTIAL_CONSTRAINTS (the ON DELETE/UPDATE rules) only with a privilege besides SELECT (REFERENCES,
        INSERT, ...). A key whose rule is unknown may cascade: watched as if it did (a needless flush is safe).
        """
        known = {
            (str(r["s"]), str(r["t"]), str(r["n"]))
            for r in self.query(
                "SELECT CONSTRAINT_SCHEMA AS s, TABLE_NAME AS t, CONSTRAINT_NAME AS n "
                "FROM information_schema.REFERENTIAL_CONSTRAINTS"
            )
        }
        grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in self.query(
            "SELECT CONSTRAINT_SCHEMA AS s, TABLE_NAME AS t, CONSTRAINT_NAME AS n, REFERENCED_TABLE_SCHEMA AS ps, "
            "REFERENCED_TABLE_NAME AS pt, REFERENCED_COLUMN_NAME AS pc FROM information_schema.KEY_COLUMN_USAGE "
            "WHERE REFERENCED_TABLE_NAME IS NOT NULL ORDER BY CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, "
            "ORDINAL_POSITION"
        ):
            ident = (str(r["s"]), str(r["t"]), str(r["n"]))
            if ident not in known:
                grouped.setdefault(ident, []).append(r)
        return [
            CascadeEdge(
                parent=f"{cols[0]['ps']}.{cols[0]['pt']}",
                child=f"{schema}.{table}",
                parent_columns=tuple(str(c["pc"]) for c in cols),
                on_delete=True,
                on_update=True,
                assumed=True,
            )
            for (schema, table, _name), cols in grouped.items()
        ]


# ---- reading rows the way the worker sees them (for reader fills) -----------------------------------


def _quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


def quote_for_args(identifier: str) -> str:
    """``_quote`` for a statement PyMySQL formats with arguments: a ``%`` in a name must not read as one."""
    return _quote(identifier).replace("%", "%%")


def normalize_row(row: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """Make a PyMySQL row equal to the binlog's view of it (see source.py's fix-ups).

    ``kinds`` maps column → information_schema DATA_TYPE. SET arrives as ``'a,c'``, BIT as bytes, MySQL JSON
    as text, and zero dates as strings; the binlog gives a set, an int, a JSON value and NULL.
    """
    for col, kind in kinds.items():
        value = row.get(col)
        if value is None:
            continue
        if kind == "set" and isinstance(value, str):
            row[col] = set(value.split(",")) if value else set()
        elif kind == "bit" and isinstance(value, bytes):
            row[col] = int.from_bytes(value, "big")
        elif kind == "json" and isinstance(value, str | bytes):
            row[col] = json.loads(value)
        elif kind in ("date", "datetime", "timestamp") and isinstance(value, str):
            row[col] = None  # PyMySQL gives text only for dates it cannot parse (zero parts); the binlog gives NULL
    return row


# Column types and collations are read again after this, when a reader sees a table being flushed (the worker
# flushes on DDL, which may change them), and when the table's schema epoch (``<ns>:schema:<table>``, see
# lookup.py) is no longer the one read just before them.
COLUMN_INFO_MAX_AGE_S = 30.0
_UNKNOWN_COLUMN = 1054  # ER_BAD_FIELD_ERROR
_loaders: weakref.WeakSet[RowLoader] = weakref.WeakSet()


class RowLoader:
    """Loads one row by key columns over a small pool of PyMySQL connections (time zone UTC).

    Fork-safe: in a child process the pool starts empty (the parent's sockets are left to the parent, never
    used or closed by the child) with fresh locks.
    """

    def __init__(self, cfg: MySQLConfig, pool_size: int) -> None:
        self.cfg = cfg
        self.pool_size = pool_size
        self._pool: queue.LifoQueue[pymysql.connections.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._info_lock = threading.Lock()
        # table → (read at, column → info, column → DATA_TYPE, stamp: the reader's schema epoch read before it)
        self._info: dict[str, tuple[float, dict[str, ColumnInfo], dict[str, str], str | None]] = {}
        _loaders.add(self)

    def _after_fork(self) -> None:
        """In the child: forget the parent's connections (dropping, not closing: a close would send COM_QUIT on
        the parent's socket) and locks another thread of the parent may have held."""
        self._pool = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(self.pool_size)
        self._info_lock = threading.Lock()

    def _connect(self) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            **connection_settings(self.cfg),
            cursorclass=pymysql.cursors.DictCursor,
            autocommit=True,
            init_command="SET time_zone = '+00:00'",
        )

    def _run(self, sql: str, args: Sequence[object]) -> list[dict[str, Any]]:
        with self._slots:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                conn = None
            try:
                if conn is None:
                    conn = self._connect()
                with conn.cursor() as cur:
                    cur.execute(sql, args)
                    rows = list(cur.fetchall())
            except pymysql.MySQLError:
                if conn is not None:
                    with contextlib.suppress(pymysql.MySQLError, OSError):
                        conn.close()
                raise
            self._pool.put(conn)
            return rows

    def kinds(self, table: str) -> dict[str, str]:
        """Column → DATA_TYPE for ``schema.table`` (cached, see ``column_info``)."""
        entry = self._info.get(table)
        if entry is None or time.monotonic() - entry[0] > COLUMN_INFO_MAX_AGE_S:
            info = self.read_column_info(table)
            return {c: i.data_type for c, i in info.items()}
        return entry[2]

    def column_info(self, table: str) -> dict[str, ColumnInfo]:
        """Column → type and collation for ``schema.table``, read at most every ``COLUMN_INFO_MAX_AGE_S``."""
        cached = self.cached_column_info(table)
        if cached is not None:
            return cached
        return self.read_column_info(table)

    def read_column_info(self, table: str, stamp: str | None = None) -> dict[str, ColumnInfo]:
        """Read ``table``'s column info now and remember it with ``stamp`` (what the caller read before it: a
        reader's schema epoch). Of two reads of one table the one started later is kept, whichever ends first:
        what is remembered is never older than a read that started before it."""
        started = time.monotonic()
        schema, _, name = table.partition(".")
        rows = self._run(
            "SELECT COLUMN_NAME AS c, DATA_TYPE AS t, COLUMN_TYPE AS ct, NUMERIC_SCALE AS s, "
            "DATETIME_PRECISION AS p, CHARACTER_SET_NAME AS cs, COLLATION_NAME AS co "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (schema, name),
        )
        info = {
            str(r["c"]): ColumnInfo(
                data_type=str(r["t"]).lower(),
                column_type=str(r["ct"]).lower(),
                numeric_scale=None if r["s"] is None else int(r["s"]),
                datetime_precision=None if r["p"] is None else int(r["p"]),
                charset=None if r["cs"] is None else str(r["cs"]).lower(),
                collation=None if r["co"] is None else str(r["co"]).lower(),
            )
            for r in rows
        }
        with self._info_lock:
            current = self._info.get(table)
            if current is None or current[0] <= started:
                self._info[table] = (started, info, {c: i.data_type for c, i in info.items()}, stamp)
        return info

    def cached_column_info(self, table: str) -> dict[str, ColumnInfo] | None:
        """``column_info`` if it was read recently enough, else None (no query)."""
        stamped = self.stamped_column_info(table)
        return None if stamped is None else stamped[0]

    def stamped_column_info(self, table: str) -> tuple[dict[str, ColumnInfo], str | None] | None:
        """The remembered column info and its stamp (``read_column_info``) if read recently enough, else None."""
        entry = self._info.get(table)
        if entry is None or time.monotonic() - entry[0] > COLUMN_INFO_MAX_AGE_S:
            return None
        return entry[1], entry[3]

    def forget_column_info(self, tables: Sequence[str]) -> None:
        """Read these tables' column info again at next use (a flush, e.g. after DDL, was seen)."""
        with self._info_lock:
            for table in tables:
                self._info.pop(table, None)

    def primary_key(self, table: str) -> list[str]:
        schema, _, name = table.partition(".")
        rows = self._run(
            "SELECT COLUMN_NAME AS c FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = %s "
            "AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
            (schema, name),
        )
        return [str(r["c"]) for r in rows]

    def estimate_rows(self, table: str) -> int:
        schema, _, name = table.partition(".")
        rows = self._run(
            "SELECT TABLE_ROWS AS n FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (schema, name),
        )
        return int(rows[0]["n"] or 0) if rows else 0

    def scan(self, table: str, pk: Sequence[str], after: Sequence[object] | None, limit: int) -> list[dict[str, Any]]:
        """The next ``limit`` rows in primary-key order after the key ``after`` (normalized)."""
        cols = ", ".join(quote_for_args(c) for c in pk)
        where = f"WHERE ({cols}) > ({', '.join(['%s'] * len(pk))}) " if after is not None else ""
        args = list(after) if after is not None else []
        rows = self._select(table, f"{where}ORDER BY {cols} LIMIT {int(limit)}", args)
        kinds = self.kinds(table)
        return [normalize_row(r, kinds) for r in rows]

    def load(self, table: str, where: dict[str, object]) -> dict[str, Any] | None:
        """The row of ``table`` whose columns equal ``where`` (None when absent), normalized."""
        cond = " AND ".join(f"{quote_for_args(c)} <=> %s" for c in where)
        rows = self._select(table, f"WHERE {cond} LIMIT 2", list(where.values()))
        if len(rows) > 1:
            raise SourceError(f"{table}: {sorted(where)} matches more than one row; key templates need unique columns")
        return normalize_row(rows[0], self.kinds(table)) if rows else None

    def _select(self, table: str, tail: str, args: list[object]) -> list[dict[str, Any]]:
        """``SELECT`` every column of ``table`` by name, in table order, then ``tail``: never ``*``, which leaves
        out INVISIBLE columns (the binlog image has them, so the worker's values do). A column list read before a
        DDL that dropped one of them is read again, once."""
        schema, _, name = table.partition(".")
        for attempt in (0, 1):
            cols = ", ".join(quote_for_args(c) for c in self.kinds(table))
            sql = f"SELECT {cols} FROM {quote_for_args(schema)}.{quote_for_args(name)} {tail}"  # noqa: S608 - quoted names
            try:
                return self._run(sql, args)
            except pymysql.MySQLError as exc:
                if attempt or not exc.args or exc.args[0] != _UNKNOWN_COLUMN:
                    raise
                self.forget_column_info([table])
        raise AssertionError("unreachable")

    def close(self) -> None:
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(pymysql.MySQLError, OSError):
                conn.close()


def _loaders_after_fork() -> None:
    for loader in list(_loaders):
        loader._after_fork()


os.register_at_fork(after_in_child=_loaders_after_fork)
