"""Throwaway local MariaDB and Redis servers for tests, the demo and benchmarks.

Each server lives in its own temporary directory, listens on a free loopback port and is
stopped (and its directory removed) by :meth:`stop`. Nothing here is used by the worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cdc_sync.errors import CdcSyncError

MARIADB_BINLOG_ARGS = (
    "--log-bin=bin",
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
    "--server-id=1",
)


class ServerStartError(CdcSyncError):
    """A throwaway server could not be started."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _which(*names: str) -> str:
    for name in names:
        for folder in (None, "/usr/sbin", "/usr/local/sbin", "/usr/bin"):
            found = shutil.which(name, path=folder)
            if found:
                return found
    raise ServerStartError(f"none of {', '.join(names)} is installed (run 'make setup')")


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServerStartError(f"server exited with {proc.returncode}: {tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerStartError(f"server did not listen on port {port} within {timeout}s")


@dataclass
class LocalServer:
    """A running server process and the directory that holds its data."""

    name: str
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]
    keep_dir: bool = False
    args: list[str] = field(default_factory=list)  # the command line, for restart()
    log: Path | None = None

    def restart(self, timeout: float = 60.0, files: Mapping[str, Path] | None = None) -> None:
        """Stop the server (keeping its data) and start it again with the same command line and port.

        ``files`` (name → path) are copied into the server's directory while it is down, e.g.
        ``{"dump.rdb": older}`` to bring Redis back from an older snapshot.
        """
        keep, self.keep_dir = self.keep_dir, True
        self.stop()
        self.keep_dir = keep
        for name, source in (files or {}).items():
            shutil.copyfile(source, self.directory / name)
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_port(self.port, self.proc, self.log or self.directory / "none.log", timeout)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if not self.keep_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_mariadb(extra_args: tuple[str, ...] = (), timeout: float = 60.0, binlog: bool = True) -> LocalServer:
    """Start a private mariadbd with ROW binlog, FULL image/metadata and GTIDs (``binlog=False``: none)."""
    mariadbd = _which("mariadbd", "mysqld")
    install_db = _which("mariadb-install-db", "mysql_install_db")
    directory = Path(tempfile.mkdtemp(prefix="cdc-sync-mariadb-"))
    datadir = directory / "data"
    log = directory / "error.log"
    subprocess.run(
        [
            install_db,
            "--no-defaults",
            f"--datadir={datadir}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port = free_port()
    args = [
        mariadbd,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--socket={directory / 's.sock'}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        "--user=root",
        f"--log-error={log}",
        "--log-basename=cdc",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_general_ci",
        "--innodb-buffer-pool-size=64M",
        "--innodb-log-file-size=32M",
        "--innodb-flush-log-at-trx-commit=2",
        "--sync-binlog=0",
        "--skip-name-resolve",
        *(MARIADB_BINLOG_ARGS if binlog else ("--server-id=1",)),
        *extra_args,
    ]
    # own session: a Ctrl-C meant for the caller (demo, pytest) must not kill the server under it
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    server = LocalServer("mariadb", port, directory, proc, args=args, log=log)
    try:
        _wait_port(port, proc, log, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def start_redis(
    timeout: float = 20.0,
    rdb: str = "dump.rdb",
    extra_args: tuple[str, ...] = (),
    tls: tuple[Path, Path, Path] | None = None,
) -> LocalServer:
    """Start a private redis-server that keeps nothing on disk by itself.

    No save points and no AOF: only an explicit ``SAVE`` writes a snapshot, to ``rdb`` in the server's
    directory, and a restart loads that file if it is there (see ``LocalServer.restart(files=...)``).
    ``tls`` = (certificate, key, CA): TLS only on the port (no plain port), clients need a certificate the CA
    signed.
    """
    redis_server = _which("redis-server")
    directory = Path(tempfile.mkdtemp(prefix="cdc-sync-redis-"))
    port = free_port()
    log = directory / "redis.log"
    args = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    if tls is not None:
        cert, key, ca = tls
        args[1:3] = ["--port", "0", "--tls-port", str(port)]
        args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
    args += ["--save", "", "--appendonly", "no", "--dbfilename", rdb, "--logfile", str(log), *extra_args]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    server = LocalServer("redis", port, directory, proc, args=args, log=log)
    try:
        _wait_port(port, proc, log, timeout)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass(frozen=True)
class Access:
    """How a helper here logs in to a server: an ACL user (None: ``default``) and password, and TLS
    (certificate, key, CA: the certificate is presented as the client's). The default: plain, no password."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: tuple[Path, Path, Path] | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py connection arguments (none by default)."""
        kwargs: dict[str, Any] = {}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls is not None:
            cert, key, ca = self.tls
            kwargs.update(ssl=True, ssl_certfile=str(cert), ssl_keyfile=str(key), ssl_ca_certs=str(ca))
            kwargs["host"] = "127.0.0.1"  # (the name the servers' certificate holds; not localhost)
        return kwargs


@dataclass
class SentinelSet:
    """A Redis master with replicas, watched by Sentinels (``start_sentinel_set``)."""

    master_name: str
    servers: list[LocalServer]  # the data servers; servers[0] was the first master
    sentinels: list[LocalServer]
    access: Access = field(default_factory=Access)  # how to log in to the data servers
    sentinel_access: Access = field(default_factory=Access)  # ... and to the Sentinels

    @property
    def addresses(self) -> list[str]:
        """The Sentinels as ``host:port`` (``[redis] sentinels``)."""
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel that answers names it (None: none knows)."""
        for sentinel in self.sentinels:
            try:
                reply = _ask(
                    sentinel.port, "SENTINEL", "get-master-addr-by-name", self.master_name, access=self.sentinel_access
                )
            except OSError:
                continue
            if isinstance(reply, list | tuple) and len(reply) == 2:
                return int(reply[1])
        return None

    def server(self, port: int) -> LocalServer:
        return next(s for s in self.servers if s.port == port)

    def client(self, port: int, **kwargs: Any) -> Any:
        """A redis-py client of the data server or Sentinel on ``port``, logged in as the helpers are."""
        import redis

        sentinel = any(s.port == port for s in self.sentinels)
        access = self.sentinel_access if sentinel else self.access
        return redis.Redis(port=port, **{**access.client_kwargs(), **kwargs})

    def ask(self, port: int, *command: str) -> Any:
        """One command to the data server or Sentinel on ``port`` (OSError: it does not answer)."""
        sentinel = any(s.port == port for s in self.sentinels)
        return _ask(port, *command, access=self.sentinel_access if sentinel else self.access)

    def stop(self) -> None:
        for server in (*self.sentinels, *self.servers):
            if server.proc.poll() is None:
                with contextlib.suppress(OSError):  # (a stopped process, SIGSTOP in a test, first goes on)
                    os.kill(server.proc.pid, signal.SIGCONT)
            server.stop()


def start_sentinel_set(
    replicas: int = 1,
    sentinels: int = 3,
    master_name: str = "cache",
    down_after_ms: int = 1000,
    timeout: float = 30.0,
    *,
    tls: tuple[Path, Path, Path] | None = None,
    user: str | None = None,
    password: str | None = None,
    sentinel_user: str | None = None,
    sentinel_password: str | None = None,
) -> SentinelSet:
    """A master, ``replicas`` replicas of it and ``sentinels`` Sentinels (quorum: a majority), each its own
    process on a free loopback port, ready: every Sentinel knows every replica and the other Sentinels.

    ``tls`` = (certificate, key, CA): every server and Sentinel on a TLS-only port, client certificates required,
    replication and the Sentinels' own links over TLS too (the certificate is also their client certificate: it
    must be valid for client authentication). ``password``: the data servers require it (``requirepass``), or with
    ``user`` only that ACL user may log in (the default user off); replicas and Sentinels log in so.
    ``sentinel_password``: the Sentinels require it of their clients and of each other (``requirepass``), or with
    ``sentinel_user`` only that ACL user of theirs may log in. The SentinelSet's helpers log in the same ways."""
    if (user and not password) or (sentinel_user and not sentinel_password):
        raise ValueError("an ACL user needs a password")
    redis_server = _which("redis-server")
    started = SentinelSet(
        master_name,
        [],
        [],
        Access(user, password, tls),
        Access(sentinel_user, sentinel_password, tls),
    )
    try:
        sync_now: tuple[str, ...] = (
            "--repl-diskless-sync-delay",
            "0",
        )  # (not 5 s: every replica is synced before a test starts)
        if tls is not None:
            sync_now += ("--tls-replication", "yes")
        if user:  # (the first master too: demoted in a failover, it logs in to the new one)
            sync_now += ("--user", "default", "off", "--user", user, "on", f">{password}", "~*", "&*", "+@all")
            sync_now += ("--masteruser", user, "--masterauth", str(password))
        elif password:
            sync_now += ("--requirepass", password, "--masterauth", password)
        master = start_redis(extra_args=sync_now, tls=tls)
        started.servers.append(master)
        for _ in range(replicas):
            replica = start_redis(extra_args=(*sync_now, "--replicaof", "127.0.0.1", str(master.port)), tls=tls)
            started.servers.append(replica)
            _until(partial(_synced, replica.port, started.access), timeout, f"the replica on {replica.port} to sync")
        quorum = sentinels // 2 + 1
        for _ in range(sentinels):
            directory = Path(tempfile.mkdtemp(prefix="cdc-sync-sentinel-"))
            port = free_port()
            conf = directory / "sentinel.conf"
            listen = f"port {port}\n"
            if tls is not None:
                cert, key, ca = tls
                listen = (
                    f"port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n"
                    "tls-replication yes\n"
                )
            own = ""
            if sentinel_user:
                own = (
                    f"user default off\nuser {sentinel_user} on >{sentinel_password} ~* &* +@all\n"
                    f"sentinel sentinel-user {sentinel_user}\nsentinel sentinel-pass {sentinel_password}\n"
                )
            elif sentinel_password:
                own = f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
            login = f"sentinel auth-user {master_name} {user}\n" if user else ""
            login += f"sentinel auth-pass {master_name} {password}\n" if password else ""
            conf.write_text(
                f"{listen}bind 127.0.0.1\ndir {directory}\nlogfile {directory / 'sentinel.log'}\n{own}"
                f"sentinel monitor {master_name} 127.0.0.1 {master.port} {quorum}\n{login}"
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                f"sentinel failover-timeout {master_name} {max(3 * down_after_ms, 3000)}\n"
                f"sentinel parallel-syncs {master_name} 1\n",
                encoding="utf-8",
            )
            args = [redis_server, str(conf), "--sentinel"]
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            sentinel = LocalServer("sentinel", port, directory, proc, args=args, log=directory / "sentinel.log")
            started.sentinels.append(sentinel)
            _wait_port(port, proc, directory / "sentinel.log", timeout)

        def ready() -> bool:
            for sentinel in started.sentinels:
                state = _ask(sentinel.port, "SENTINEL", "master", master_name, access=started.sentinel_access)
                fields = state if isinstance(state, dict) else {}
                if fields.get("num-slaves") != str(replicas) or fields.get("num-other-sentinels") != str(sentinels - 1):
                    return False
            return True

        _until(ready, timeout, "the Sentinels to know each other and the replicas")
    except BaseException:
        started.stop()
        raise
    return started


@dataclass
class RedisClusterSet:
    """A Redis Cluster of local servers (``start_cluster``): primaries and their replicas."""

    servers: list[LocalServer]

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        """A seed node (any node: the client learns the others)."""
        return f"redis://127.0.0.1:{self.servers[0].port}/0"

    def server(self, port: int) -> LocalServer:
        return next(s for s in self.servers if s.port == port)

    def primaries(self) -> list[int]:
        """The ports of the nodes serving slots now (``CLUSTER NODES`` of the first node that answers)."""
        for server in self.servers:
            try:
                nodes = cluster_nodes(server.port)
            except OSError:
                continue
            return sorted(
                n["port"] for n in nodes if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]
            )
        return []

    def stop(self) -> None:
        for server in self.servers:
            if server.proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(server.proc.pid, signal.SIGCONT)
            server.stop()


def start_cluster(
    primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 2000, timeout: float = 60.0
) -> RedisClusterSet:
    """``primaries`` primaries with ``replicas`` replicas each (``redis-cli --cluster create``), every slot served
    and every node agreeing (``cluster_state:ok``) before it returns."""
    redis_cli = _which("redis-cli")
    started = RedisClusterSet([])
    try:
        for _ in range(primaries * (1 + replicas)):
            node_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            node_args += ("--cluster-port", str(free_port()))  # (not port + 10000: free ports go past 55535)
            node_args += ("--cluster-node-timeout", str(node_timeout_ms), "--repl-diskless-sync-delay", "0")
            started.servers.append(start_redis(extra_args=node_args))
        create = [redis_cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in started.ports)]
        create += ["--cluster-replicas", str(replicas), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ServerStartError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

        def ready() -> bool:
            for port in started.ports:
                info = cluster_info(port)
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(started.ports):
                    return False
            nodes = cluster_nodes(started.ports[0])
            if sum(1 for n in nodes if "slave" in n["flags"]) != primaries * replicas:
                return False
            return all(_synced(n["port"]) for n in nodes if "slave" in n["flags"])

        _until(ready, timeout, "the cluster to be ready")
    except BaseException:
        started.stop()
        raise
    return started


def cluster_info(port: int) -> dict[str, str]:
    """``CLUSTER INFO`` of the node on ``port``, as a dict."""
    text = str(_ask(port, "CLUSTER", "INFO"))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def cluster_nodes(port: int) -> list[dict[str, Any]]:
    """``CLUSTER NODES`` of the node on ``port``: each node's id, port, flags, primary id and slot ranges."""
    out = []
    for line in str(_ask(port, "CLUSTER", "NODES")).splitlines():
        fields = line.split()
        if len(fields) >= 8:
            address = fields[1].split("@")[0]
            out.append(
                {
                    "id": fields[0],
                    "port": int(address.rsplit(":", 1)[1]),
                    "flags": fields[2].split(","),
                    "primary": fields[3],
                    "slots": fields[8:],
                }
            )
    return out


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ServerStartError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _synced(port: int, access: Access | None = None) -> bool:
    info = _ask(port, "INFO", "replication", access=access)
    return bool(info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"))


def _ask(port: int, *command: str, access: Access | None = None) -> Any:
    """One command to the server on ``port`` (redis-py, imported here: the worker never imports this module),
    logged in and over TLS as ``access`` says (default: plain, no password)."""
    import redis

    login = access.client_kwargs() if access is not None else {}
    client = redis.Redis(port=port, socket_timeout=2, decode_responses=True, **login)
    try:
        return client.execute_command(*command)
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # (a server down: callers skip it)
        raise OSError(f"port {port}: {exc}") from exc
    finally:
        client.close()


def env_flag(name: str) -> bool:
    """True when the environment variable is set to a truthy value."""
    return os.environ.get(name, "").lower() in {"1", "true", "yes", "on"}
