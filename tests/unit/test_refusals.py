"""Failures that no retry heals are classified once, where the driver's error is translated; every message is
a plain sentence (never a driver's exception repr)."""

from __future__ import annotations

import re

import pymysql
import pytest
import redis
import redis.sentinel

from cdc_sync.adapters.mysql import plain_error, translate_error
from cdc_sync.adapters.redis import plain_redis_error, redis_error
from cdc_sync.errors import ConfigError, ServerRefused, SinkUnavailable, SourceError

_REPR = re.compile(r"\b\w*(Error|Exception)\(|\[Errno")


def _mysql(code: int, text: str) -> pymysql.err.OperationalError:
    return pymysql.err.OperationalError(code, text)


@pytest.mark.parametrize(
    ("code", "text", "kind", "fix_words"),
    [
        (1045, "Access denied for user 'cdc'@'10.0.0.2' (using password: YES)", "credentials", "password"),
        (1049, "Unknown database 'shop'", "database", "schema"),
        (1227, "Access denied; you need (at least one of) the REPLICATION SLAVE privilege(s)", "privilege", "GRANT"),
        (4052, "A slave with the same server_uuid/server_id is already connected; the first event", "server_id", "0"),
        (
            1236,
            "A slave with the same server_uuid/server_id as this slave has connected to the master",
            "server_id",
            "",
        ),
    ],
)
def test_mysql_refusals_are_server_refused_with_a_fix(code: int, text: str, kind: str, fix_words: str) -> None:
    """Wrong password, unknown database, missing privilege, a server_id taken over: ServerRefused (exit 2)."""
    error = translate_error(_mysql(code, text), "binlog stream")
    assert isinstance(error, ServerRefused) and isinstance(error, ConfigError) and not isinstance(error, SourceError)
    assert error.kind == kind and fix_words in error.fix
    assert f"MySQL error {code}" in str(error) and not _REPR.search(str(error))


def test_a_duplicate_server_id_names_the_setting_and_the_derived_id() -> None:
    """The fix line for a taken server_id says how to pick another: mysql.server_id, or 0 for a derived one."""
    error = translate_error(_mysql(4052, "A slave with the same server_uuid/server_id is already connected"), "x")
    assert isinstance(error, ServerRefused)
    assert "server_id" in str(error) and "mysql.server_id" in error.fix and "server_id = 0" in error.fix


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (2003, "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)"),
        (2003, "Can't connect to MySQL server on 'db' (timed out)"),
        (2013, "Lost connection to MySQL server during query ([Errno 104] Connection reset by peer)"),
        (1040, "Too many connections"),
        (1053, "Server shutdown in progress"),
        (1236, "Error reading packet from server: binlog truncated"),
    ],
)
def test_transient_mysql_failures_stay_retryable(code: int, text: str) -> None:
    """A refused connection, a timeout, a restarting server: SourceError, which the worker retries."""
    error = translate_error(_mysql(code, text), "binlog stream")
    assert type(error) is SourceError
    assert not _REPR.search(str(error)), str(error)


def test_mysql_messages_are_plain_sentences() -> None:
    """``OperationalError(2003, ...)``, ``ProgrammingError(1146, ...)`` and ``[Errno 111]`` become sentences."""
    refused = plain_error(_mysql(2003, "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)"))
    assert refused == "Can't connect to MySQL server on '127.0.0.1': connection refused (MySQL error 2003)"
    missing = str(translate_error(pymysql.err.ProgrammingError(1146, "Table 's.t' doesn't exist"), "SELECT"))
    assert missing == "SELECT: Table 's.t' doesn't exist (MySQL error 1146)"
    assert plain_error(ConnectionResetError(104, "Connection reset by peer")) == "connection reset by peer"


@pytest.mark.parametrize(
    "exc",
    [
        redis.AuthenticationError("invalid username-password pair or user is disabled."),
        redis.exceptions.AuthenticationWrongNumberOfArgsError("wrong number of arguments for 'auth' command"),
        redis.exceptions.NoPermissionError("this user has no permissions to run the 'hset' command"),
        # inside a script (redis 7): a plain error, worded its own way
        redis.ResponseError(
            "The user executing the script can't access at least one of the keys mentioned in the command "
            "arguments script: a297a5c762c0523e8999829d973177e226d859dc, on @user_script:1."
        ),
        redis.ResponseError("The user executing the script can't run this command or subcommand script: f0, on @x:1."),
    ],
)
def test_redis_refusals_are_server_refused(exc: redis.RedisError) -> None:
    """WRONGPASS / NOAUTH and an ACL refusal: ServerRefused with a fix, not a retry forever."""
    error = redis_error(exc, "apply")
    assert isinstance(error, ServerRefused) and error.fix and not isinstance(error, SinkUnavailable)


@pytest.mark.parametrize(
    "exc",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis.TimeoutError("Timeout reading from socket"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.ResponseError("ERR Error running script (call to f_1): @user_script:1: user_script:1: OOM"),
    ],
)
def test_transient_redis_failures_stay_retryable(exc: redis.RedisError) -> None:
    """Refused connections, timeouts, loading, a replica after failover: SinkUnavailable (retried)."""
    assert type(redis_error(exc, "apply")) is SinkUnavailable


def test_redis_messages_are_plain_sentences() -> None:
    """``Error 111 connecting to h:p. Connection refused.`` reads as a sentence without the errno."""
    text = plain_redis_error(redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused."))
    assert text == "cannot connect to 127.0.0.1:6390: connection refused"
    assert "Error 111" not in str(redis_error(redis.ConnectionError("Error 111 connecting to h:1. Refused."), "x"))


_SENTINEL = "<redis.client.Redis(<redis.connection.ConnectionPool(<redis.connection.SSLConnection(host=127.0.0.1,port=26400,db=0)>)>)>"  # noqa: E501


def test_a_sentinel_refusing_the_login_is_server_refused_and_named_by_address() -> None:
    """redis-py folds each Sentinel's refusal into MasterNotFoundError: still a refusal (not retried forever), with
    the Sentinels named by address, not by client reprs; Sentinels that are only unreachable stay retryable."""
    refused = redis.sentinel.MasterNotFoundError(
        f"No master found for 'cache' : {_SENTINEL} - AuthenticationError(...): invalid username-password pair or "
        f"user is disabled., {_SENTINEL} - AuthenticationError(...): invalid username-password pair"
    )
    error = redis_error(refused, "GET operator")
    assert isinstance(error, ServerRefused) and "sentinel_password" in error.fix
    assert "Sentinel 127.0.0.1:26400" in str(error) and "redis.client.Redis" not in str(error)
    down = redis.sentinel.MasterNotFoundError(f"No master found for 'cache' : {_SENTINEL} - ConnectionError(...)")
    assert type(redis_error(down, "apply")) is SinkUnavailable
