"""Redis side: the atomic apply step (Lua), checkpoint, heartbeat and wholesale flushes.

The only module besides the reader that imports redis. Every redis-py error is translated here
(``redis_error``) into SinkUnavailable (retryable), or ServerRefused when retrying cannot help (wrong password,
an ACL that denies a command); the apply step's replies become RewindRequired or Fenced.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.commands.core import Script

from cdc_sync import logs, scripts
from cdc_sync import metrics as m
from cdc_sync.config import RedisConfig, TableRule
from cdc_sync.core.events import RedisMemory
from cdc_sync.core.keys import Namespace, glob_escape, key_slot
from cdc_sync.core.planner import Count, Delete, EvictTag, RedisOp, SetHash, SetJson
from cdc_sync.errors import TLS_UNTRUSTED, Fenced, OperatorLockLost, RewindRequired, ServerRefused, SinkUnavailable

log = logs.get("cdc_sync.redis")

# What a Redis call may raise: redis-py's errors, and its cluster client's own, which are not RedisErrors (no node
# reachable, a slot not covered during a failover)
REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)

FLUSH_MARKER_TTL_MS = 600_000  # a crashed flush leaves the marker at most this long (replay redoes it)


def client_kwargs(cfg: RedisConfig) -> dict[str, Any]:
    """Connection settings shared by every Redis client (timeouts; TLS with rediss:// and ssl_ca_certs)."""
    kwargs: dict[str, Any] = {"socket_timeout": cfg.socket_timeout_s, "socket_connect_timeout": cfg.socket_timeout_s}
    if cfg.url.startswith("rediss:"):
        kwargs["ssl_check_hostname"] = cfg.ssl_verify_identity
        if cfg.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = cfg.ssl_ca_certs
        if cfg.ssl_certfile:
            kwargs.update(ssl_certfile=cfg.ssl_certfile, ssl_keyfile=cfg.ssl_keyfile)
    return kwargs


def make_client(cfg: RedisConfig, **pool: Any) -> redis.Redis:
    """A redis-py client for ``cfg``: of the url's server, or of the master the Sentinels name, followed across
    failovers (each new connection asks the Sentinels; a connection to a demoted master fails and is replaced).
    ``pool``: connection pool settings (``max_connections``, and ``timeout`` for a blocking pool). A cluster
    (``redis.cluster``): redis-py's cluster client, which has the same commands (routed by key; see
    redis_cluster.py for what one step may touch)."""
    if cfg.cluster:
        pool.pop("timeout", None)  # (per-node pools, not blocking ones)
        return cast(redis.Redis, redis.RedisCluster.from_url(cfg.url, **client_kwargs(cfg), **pool))
    if cfg.sentinels:
        pool_class = _BlockingSentinelPool if "timeout" in pool else redis.sentinel.SentinelConnectionPool
        sentinel: Any = redis.sentinel.Sentinel  # (typed in some redis-py versions, not in others)
        manager = sentinel(list(cfg.sentinels), sentinel_kwargs=sentinel_kwargs(cfg))
        kwargs = {**master_kwargs(cfg), **pool}
        client: redis.Redis = manager.master_for(str(cfg.master_name), connection_pool_class=pool_class, **kwargs)
        return client
    if "timeout" in pool:
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(cfg.url, **client_kwargs(cfg), **pool))
    return redis.Redis.from_url(cfg.url, **client_kwargs(cfg), **pool)


def make_async_client(cfg: RedisConfig, **pool: Any) -> redis.asyncio.Redis:
    """``make_client`` for asyncio."""
    if cfg.cluster:
        pool.pop("timeout", None)
        return cast(redis.asyncio.Redis, redis.asyncio.RedisCluster.from_url(cfg.url, **client_kwargs(cfg), **pool))
    if cfg.sentinels:
        async_sentinel: Any = redis.asyncio.sentinel.Sentinel
        manager = async_sentinel(list(cfg.sentinels), sentinel_kwargs=sentinel_kwargs(cfg))
        pool.pop("timeout", None)  # (redis.asyncio has no blocking Sentinel pool: beyond max_connections, an error)
        aclient: redis.asyncio.Redis = manager.master_for(str(cfg.master_name), **master_kwargs(cfg), **pool)
        return aclient
    if "timeout" in pool:
        blocking = redis.asyncio.BlockingConnectionPool.from_url(cfg.url, **client_kwargs(cfg), **pool)
        return redis.asyncio.Redis(connection_pool=blocking)
    return redis.asyncio.Redis.from_url(cfg.url, **client_kwargs(cfg), **pool)


def master_kwargs(cfg: RedisConfig) -> dict[str, Any]:
    """With Sentinels: the master's credentials, database and TLS, from the url (whose address is not used)."""
    parts = urlsplit(cfg.url)
    kwargs = {**client_kwargs(cfg), "db": cfg.db}
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        kwargs["ssl"] = True
    return kwargs


def sentinel_kwargs(cfg: RedisConfig) -> dict[str, Any]:
    """How to talk to the Sentinels themselves: their own user and password, and TLS when ``sentinel_tls``."""
    kwargs: dict[str, Any] = {"socket_timeout": cfg.socket_timeout_s, "socket_connect_timeout": cfg.socket_timeout_s}
    if cfg.sentinel_username:
        kwargs["username"] = cfg.sentinel_username
    if cfg.sentinel_password:
        kwargs["password"] = cfg.sentinel_password
    if cfg.sentinel_tls:
        kwargs["ssl"] = True
        kwargs.update({k: v for k, v in client_kwargs(cfg).items() if k.startswith("ssl_")})
    return kwargs


# Replies meaning a script did not run where it was sent: the cluster pipeline sends it again (and follows the move).
_NOT_RUN_THERE = (
    redis.exceptions.AskError,  # (MovedError too)
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.NoScriptError,
    redis.exceptions.ReadOnlyError,  # (a replica now: a failover)
)


def cluster_eval(client: Any, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]) -> list[Any]:
    """Script calls on a Redis Cluster, each on the node serving its keys' slot, replies in call order.

    The fast way first: by the client's slot map, every node's calls are packed at once (hiredis) and sent, to
    all nodes before any reply is read, so the nodes run them side by side (redis-py's cluster pipeline costs about
    0.5 ms a command in Python, its plain one still encodes each argument in Python). Calls a node lacks the script
    of (NOSCRIPT: a new node, a restart) go the fast way again once the scripts are loaded on every primary. A call
    that did not run there (MOVED, ASK, TRYAGAIN, a node away: the map is out of date, a slot moves, a failover)
    goes again through the cluster pipeline, which follows redirections and refreshes the map. Only for calls that
    may run twice: the worker's steps reply DUP, a reader's lookups and fills are guarded by their lease."""
    results: list[Any] = [None] * len(calls)
    again, noscript = _eval_by_node(client, calls, range(len(calls)), results)
    if noscript:
        for script in {id(s): s for s, _, _ in (calls[i] for i in noscript)}.values():
            client.script_load(script.script)
        more, still = _eval_by_node(client, calls, noscript, results)
        again += more + still
    if again:
        again.sort()
        for i, reply in zip(again, _cluster_pipeline_eval(client, [calls[i] for i in again]), strict=True):
            results[i] = reply
    return results


def _eval_by_node(
    client: Any, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]], which: Iterable[int], results: list[Any]
) -> tuple[list[int], list[int]]:
    """cluster_eval's fast way for the calls ``which``: replies into ``results``; returns the calls that did not
    run where they were sent, and those that met NOSCRIPT."""
    by_node: dict[str, list[int]] = {}
    nodes: dict[str, Any] = {}
    for i in which:
        node = client.nodes_manager.get_node_from_slot(key_slot(calls[i][1][0]))
        by_node.setdefault(node.name, []).append(i)
        nodes[node.name] = node
    again: list[int] = []
    noscript: list[int] = []
    sent: list[tuple[Any, Any, list[int]]] = []
    try:
        for name, indexes in by_node.items():
            pool = client.get_redis_connection(nodes[name]).connection_pool
            conn = pool.get_connection()
            sent.append((pool, conn, indexes))
            packed = b"".join(
                hiredis.pack_command(("EVALSHA", calls[i][0].sha, len(calls[i][1]), *calls[i][1], *calls[i][2]))
                for i in indexes
            )
            try:
                conn.send_packed_command([packed])
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                sent[-1] = (pool, None, indexes)
        for _pool, conn, indexes in sent:
            if conn is None:
                again += indexes
                continue
            read = 0
            try:
                for i in indexes:
                    try:
                        results[i] = conn.read_response()
                    except redis.exceptions.NoScriptError:
                        noscript.append(i)
                    except redis.ResponseError as exc:
                        if not isinstance(exc, _NOT_RUN_THERE):
                            raise
                        again.append(i)
                    read += 1
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                again += indexes[read:]  # (they may have run: see above)
            except BaseException:
                conn.disconnect()  # (replies of the rest may still be on the socket)
                raise
    finally:
        for pool, conn, _indexes in sent:
            if conn is not None:
                pool.release(conn)
    return again, noscript


def _cluster_pipeline_eval(client: Any, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]) -> list[Any]:
    """The calls through redis-py's cluster pipeline (which refuses ``evalsha()``, since a node may lack the
    script: the raw command is queued instead); on NOSCRIPT every script of the calls is loaded on every node and
    the calls run again."""
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return list(pipe.execute(raise_on_error=True))
        except redis.exceptions.NoScriptError:
            if attempt == 2:
                raise
            for script in {id(s): s for s, _, _ in calls}.values():
                client.script_load(script.script)
    raise AssertionError("unreachable")


class _BlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel pool whose callers wait for a free connection (up to ``timeout``) instead of failing when all
    ``max_connections`` are busy, as the reader's pool does without Sentinels."""


_REDIS_AUTH_FIX = (
    "check the user and password in redis.url (or $CDC_SYNC_REDIS_URL) against the server's ACL/requirepass"
)
_REDIS_TLS_FIX = (
    "set redis.ssl_ca_certs to the CA that signed the server's certificate, and a host in redis.url that the "
    "certificate holds (or redis.ssl_verify_identity = false to skip that check)"
)
_SCRIPT_ACL = re.compile(r"The user executing the script can't (?:access|run)|\bNOPERM\b")
_SENTINEL_AUTH = re.compile(r"AuthenticationError|invalid username-password|\bWRONGPASS\b|\bNOAUTH\b")
_SENTINEL_AUTH_FIX = (
    "check redis.sentinel_username and redis.sentinel_password (or $CDC_SYNC_SENTINEL_PASSWORD) against the "
    "Sentinels' requirepass or ACL users, and redis.sentinel_tls"
)
# redis-py names each Sentinel it asked by its client's repr: <redis.client.Redis(<...(host=h,port=p,db=0)>)>
_SENTINEL_REPR = re.compile(r"<redis\.(?:asyncio\.)?client\.Redis\(<.*?host=([^,>]+),port=(\d+)[^>]*>\)>\)>")
_CONNECT_FAILED = re.compile(r"^Error (-?\d+) connecting to (.+?)\. (.+?)\.?$", re.S)


def redis_error(exc: BaseException, what: str) -> SinkUnavailable | ServerRefused:
    """Translate a redis-py error, once, for every Redis client of the worker and the CLI.

    A wrong password or missing password (WRONGPASS, NOAUTH) and a command or key the ACL denies (NOPERM, or
    inside a script "The user executing the script can't access ...") cannot heal by retrying: ServerRefused
    (exit 2). Everything else (refused connection, timeout, loading, read-only replica after a failover, out of
    memory) is SinkUnavailable, which the worker retries.
    """
    text = plain_redis_error(exc)
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return ServerRefused(f"redis {what}: Redis refused the login: {text}", _REDIS_AUTH_FIX, "redis_auth")
    if isinstance(exc, redis.sentinel.MasterNotFoundError) and _SENTINEL_AUTH.search(text):
        # (redis-py folds each Sentinel's refusal into "no master found": retrying would never heal it)
        why = "a Sentinel refused the login"
        return ServerRefused(f"redis {what}: {why}: {text}", _SENTINEL_AUTH_FIX, "redis_auth")
    if isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.ResponseError) and _SCRIPT_ACL.search(text)
    ):  # (inside a script, a refused key or command is a plain error with its own wording)
        fix = (
            "allow the command and the keys for the Redis user (run cdc-sync doctor: redis.acl lists every "
            "command and key pattern needed)"
        )
        return ServerRefused(f"redis {what}: the Redis ACL denies a command or key: {text}", fix, "redis_acl")
    if TLS_UNTRUSTED.search(text):
        why = "the Redis server's TLS certificate is not trusted"
        return ServerRefused(f"redis {what}: {why}: {text}", _REDIS_TLS_FIX, "redis_tls")
    return SinkUnavailable(f"redis {what}: {text}")


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Inside: any redis-py error leaves as the project's (``redis_error``), its cause kept (httpx's
    ``map_httpcore_exceptions`` shape). The one translation every Redis caller of the worker and the CLI uses."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise redis_error(exc, what) from exc


def plain_redis_error(exc: BaseException) -> str:
    """A redis-py error as a plain sentence: ``cannot connect to 127.0.0.1:6379: connection refused``."""
    text = _SENTINEL_REPR.sub(r"Sentinel \1:\2", str(exc).strip())
    match = _CONNECT_FAILED.match(text)
    if match:
        reason = match.group(3)
        return f"cannot connect to {match.group(2)}: {reason[:1].lower()}{reason[1:]}"
    if isinstance(exc, redis.TimeoutError):
        return f"no answer in time ({text.lower() or 'timeout'})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return text.rstrip(".") or type(exc).__name__


def encode_ops(
    ns: Namespace, ops: Iterable[RedisOp], slot: int | None = None
) -> tuple[list[str], list[bytes | str | int]]:
    """Planner operations as the KEYS and ARGV tails of apply.lua (each operation's keys, its code and
    arguments; a tag eviction's are also evict_tags.lua's). ``slot``: on a cluster, the one slot of all the
    operations' keys, when the caller knows it (slot_apply.lua's)."""
    keys: list[str] = []
    args: list[bytes | str | int] = []
    for op in ops:
        if isinstance(op, Delete):
            keys += (op.key, ns.lease(op.key, slot), ns.inv(op.key, slot))
            args.append("D")
        elif isinstance(op, SetJson):
            keys += (op.key, ns.lease(op.key, slot))
            args += ("J", op.value, op.ttl_ms)
        elif isinstance(op, SetHash):
            keys += (op.key, ns.lease(op.key, slot))
            args += ("H", op.ttl_ms, len(op.fields) // 2, *op.fields)
        elif isinstance(op, Count):
            args += ("C", op.name, op.n)
        else:
            keys += (ns.tag(op.suffix), ns.tinv(op.suffix))
            args.append("T")
    return keys, args


class RedisSink:
    """Applies planned operations atomically and keeps the checkpoint."""

    def __init__(self, cfg: RedisConfig, holdoff_ms: int, client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self.ns = cfg.namespace
        self.keys = Namespace(cfg.namespace)
        self.holdoff_ms = holdoff_ms
        self.leader_token: str | None = None  # HA: every apply checks that this token still holds <ns>:leader
        self.fence: int | None = None  # HA: this term's fence number (a cluster's slots check it: redis_cluster.py)
        # an operator command: every flush and checkpoint step checks that this token still holds <ns>:operator
        self.operator_token: str | None = None
        self.client = client if client is not None else make_client(cfg)
        # step name -> (monotonic time of its first failure, why) while it keeps failing (statusreport.py)
        self.failing: dict[str, tuple[float, str]] = {}
        self.on_status: Callable[[Mapping[str, str | int | float]], None] | None = None  # see report_status
        self._waiting_short = False  # the last WAIT saw fewer replicas than redis.wait_replicas (logged once)
        self._next_follow = 0.0  # Sentinel: when to ask again which master the Sentinels name
        self._master: tuple[str, int] | None = None  # ... and the one they named last
        self._apply: Script = self.client.register_script(scripts.source("apply"))
        self._beat: Script = self.client.register_script(scripts.source("heartbeat"))
        self._evict: Script = self.client.register_script(scripts.source("evict_tags"))
        self._flush_step: Script = self.client.register_script(scripts.source("flush_step"))
        self._operator: Script = self.client.register_script(scripts.source("operator_lock"))
        self._set_checkpoint: Script = self.client.register_script(scripts.source("set_checkpoint"))

    @property
    def checkpoint_key(self) -> str:
        return self.keys.checkpoint

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except REDIS_ERRORS as exc:
            error = redis_error(exc, what)
            self.failing.setdefault(what, (time.monotonic(), str(error)))
            raise error from exc
        if self.failing:
            self.failing.pop(what, None)
        return result

    def load_checkpoint(self) -> str | None:
        value = self._call("GET checkpoint", self.client.get, self.checkpoint_key)
        return value.decode() if value is not None else None

    def set_checkpoint(self, position: str) -> None:
        """Replace the checkpoint, and drop the heartbeat in the same step: what the cache holds is vouched
        for again only once the worker has caught up from the new position. Refused (OperatorLockLost) once
        ``operator_token`` no longer holds the operator lock."""
        keys = [self.keys.checkpoint, self.keys.heartbeat, self.keys.operator]
        args = [position, self.operator_token or ""]
        if not self._call("SET checkpoint", self._set_checkpoint, keys=keys, args=args):
            raise self._lock_lost("checkpoint set")

    def apply(self, ops: Sequence[RedisOp], expected: str | None, new: str) -> bool:
        """One atomic step: check ``expected``, apply ``ops``, set the checkpoint to ``new``.

        Returns False when Redis already holds ``new`` (a step whose reply was lost). Raises
        RewindRequired when Redis holds another checkpoint (stored=None: it holds none at all).
        """
        ns = self.keys
        op_keys, op_args = encode_ops(ns, ops)
        args: list[bytes | str | int] = [
            expected or "",
            "1" if expected is not None else "0",
            new,
            self.holdoff_ms,
            self.leader_token or "",
            ns.lease_prefix,
            ns.inv_prefix,
            *op_args,
        ]
        reply = self._call("apply", self._apply, keys=[ns.checkpoint, ns.leader, ns.stats, *op_keys], args=args)
        status = scripts.reply_name(reply[0])
        if status in (scripts.OK, scripts.DUP) and self.cfg.wait_replicas:
            self._wait_replicas()
        if status == scripts.OK:
            return True
        if status == scripts.DUP:
            return False
        if status == scripts.REWIND:
            raise RewindRequired(reply[1].decode())
        if status == scripts.FENCED:
            raise Fenced("another worker holds the leader lease")
        raise RewindRequired(None)

    def _follow_master(self) -> None:
        """Sentinel: learn which master the Sentinels name now. After a failover the connections to the old master
        are dropped as they come back to the pool, and the next step runs on the new one, whose checkpoint the
        compare-and-set then checks (a failover that lost writes gives REWIND or LOST, and a replay). Without this a
        connection would stay on a demoted master until the Sentinels reconfigure it, seconds later."""
        pool = self.client.connection_pool
        if not isinstance(pool, redis.sentinel.SentinelConnectionPool) or time.monotonic() < self._next_follow:
            return
        self._next_follow = time.monotonic() + 1.0
        before, now = self._master, self._call("SENTINEL get-master-addr-by-name", pool.get_master_address)
        self._master = now  # (compared with what this step saw last: a reconnect may have found it first)
        if before is not None and now != before:
            m.REDIS_MASTER_CHANGES.inc()
            log.warning(
                "redis.master_changed",
                master_name=self.cfg.master_name,
                old=f"{before[0]}:{before[1]}",
                new=f"{now[0]}:{now[1]}",
                action="steps go to the new master; its checkpoint shows whether the failover lost any",
            )

    def _wait_replicas(self) -> None:
        """``redis.wait_replicas``: wait for that many replicas to hold the step just applied (at most
        ``wait_timeout_ms``). Fewer in time is counted and logged (once until they keep up again) and the worker
        goes on: the step is applied on the master, and a failover that loses it is caught by the checkpoint's
        compare-and-set and replayed."""
        wanted = self.cfg.wait_replicas
        acked = int(self._call("WAIT", self.client.wait, wanted, self.cfg.wait_timeout_ms))
        if acked < wanted:
            m.REDIS_WAIT_SHORT.inc()
            if not self._waiting_short:
                self._waiting_short = True
                log.warning(
                    "redis.wait_short",
                    acknowledged=acked,
                    wanted=wanted,
                    timeout_ms=self.cfg.wait_timeout_ms,
                    action="applied on the master; a failover that loses it is replayed from the checkpoint",
                )
        elif self._waiting_short:
            self._waiting_short = False
            log.info("redis.wait_recovered", acknowledged=acked, wanted=wanted)

    def time_ms(self) -> int:
        """Redis server time in milliseconds (the clock readers compare the heartbeat with). The heartbeat reads
        it for every sample, so with Sentinels it also asks, at most once a second, which master they name."""
        self._follow_master()
        seconds, micros = self._call("TIME", self.client.time)
        return int(seconds) * 1000 + int(micros) // 1000

    def set_heartbeat(self, ms: int, expected: str) -> bool:
        """Move ``<ns>:heartbeat`` forward to ``ms`` if the checkpoint is still ``expected``."""
        keys = [self.keys.checkpoint, self.keys.heartbeat, self.keys.leader]
        return bool(self._call("heartbeat", self._beat, keys=keys, args=[expected, ms, self.leader_token or ""]))

    def server_identity(self) -> str | None:
        """Which MySQL server the checkpoint was read from (``<ns>:server``)."""
        value = self._call("GET server", self.client.get, self.keys.server)
        return value.decode() if value is not None else None

    def save_server_identity(self, identity: str) -> None:
        self._call("SET server", self.client.set, self.keys.server, identity)

    def memory(self) -> RedisMemory:
        """Redis's count of keys evicted under maxmemory since it started, with its eviction policy and limit
        (``INFO stats memory``: CONFIG may be disabled on managed Redis). Any eviction may have taken a tag set or
        a marker an invalidation depends on (sync.py ``evictions_settled``)."""
        return RedisMemory.from_info(self._call("INFO stats memory", self.client.info, "stats", "memory"))

    def recorded_evictions(self) -> int | None:
        """The eviction count the cache was last made whole at (``<ns>:evictions``), None when never recorded."""
        value = self._call("GET evictions", self.client.get, self.keys.evictions)
        return int(value) if value is not None else None

    def record_evictions(self, count: int) -> None:
        self._call("SET evictions", self.client.set, self.keys.evictions, str(count))

    def report_status(self, fields: Mapping[str, str | int | float]) -> None:
        """Record the worker's state for ``cdc-sync status``: handed to ``on_status`` (app.py attaches the
        StatusReporter, which keeps the record in ``<ns>:workers``, refreshed every second)."""
        if self.on_status is not None:
            self.on_status(fields)

    def rule_fingerprints(self) -> dict[str, str]:
        """What ``<ns>:rules`` records of the rules the cache was last filled under (table → JSON)."""
        raw = self._call("HGETALL rules", self.client.hgetall, self.keys.rules)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def save_rule_fingerprints(self, fingerprints: Mapping[str, str]) -> None:
        """Replace ``<ns>:rules`` with ``fingerprints`` in one step."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.rules)
        if fingerprints:
            mapping: dict[str | bytes, str | bytes] = {k: v for k, v in fingerprints.items()}
            pipe.hset(self.keys.rules, mapping=mapping)  # type: ignore[arg-type]
        self._call("save rules", pipe.execute)

    def _scan(self, pattern: str) -> Iterator[list[bytes]]:
        """SCAN in pages; each page's keys as a list (errors translated)."""
        cursor = 0
        while True:
            cursor, keys = self._call("SCAN", self.client.scan, cursor, match=pattern, count=1000)
            if keys:
                yield list(keys)
            if cursor == 0:
                return

    def count_keys(self, rules: Sequence[TableRule], limit: int = 1) -> int:
        """How many keys the rules' patterns match, and reader tag sets of their tables (whose members are
        reader-filled keys, of tag-only rules too); stops once ``limit`` is reached."""
        found = 0
        for rule in rules:
            tags = (glob_escape(self.keys.tag(rule.name)), self.keys.column_tags_pattern(rule.name))
            for pattern in (*(t.pattern() for t in rule.templates), *tags):
                for page in self._scan(pattern):
                    found += len(page)
                    if found >= limit:
                        return found
        return found

    def take_operator_lock(self, token: str, ttl_ms: int) -> str | None:
        """``<ns>:operator``: one operator command at a time moves checkpoints or holds tables. Returns None when
        taken, else who holds it."""
        key = self.keys.operator
        if self._call("SET operator", self.client.set, key, token, nx=True, px=ttl_ms):
            return None
        holder = self._call("GET operator", self.client.get, key)
        return holder.decode(errors="replace") if holder is not None else "(just released)"

    def keep_operator_lock(self, token: str, ttl_ms: int) -> bool:
        """Extend the lock while it is ours (``ttl_ms`` 0: release it)."""
        key = self.keys.operator
        return bool(self._call("operator lock", self._operator, keys=[key], args=[token, ttl_ms]))

    def release_flushing(self, rules: Sequence[TableRule]) -> None:
        """End held marks without flushing, leaving each as a hold-off marker for ``holdoff_ms``."""
        if rules:
            self._step("release", [self.keys.flushing(r.name) for r in rules], self.holdoff_ms)

    def held_tables(self, rules: Sequence[TableRule]) -> list[TableRule]:
        """The tables whose flushing marker is held (no expiry) while no operator command runs: a held marker
        nobody will release (a worker died holding it)."""
        if self._call("GET operator", self.client.get, self.keys.operator) is not None:
            return []
        pipe = self.client.pipeline(transaction=False)
        for rule in rules:
            pipe.pttl(self.keys.flushing(rule.name))
        ttls = self._call("PTTL flushing", pipe.execute)
        return [rule for rule, ttl in zip(rules, ttls, strict=True) if ttl == -1]

    def mark_flushing(self, rules: Sequence[TableRule]) -> None:
        """Mark the tables as being flushed, as ``flush`` does (expiring after FLUSH_MARKER_TTL_MS), before a
        flush of several tables starts: none of them waits unmarked while the others are flushed."""
        if rules:
            self._step("mark", self._marked(rules), FLUSH_MARKER_TTL_MS)

    def hold_flushing(self, rules: Sequence[TableRule]) -> None:
        """Mark the tables as being flushed (readers bypass them, fills are refused) until ``flush(rule,
        held=True)`` releases each: no expiry, so an interrupted operator command leaves them bypassed."""
        if rules:
            self._step("hold", self._marked(rules))

    def flush(self, rule: TableRule, held: bool = False) -> int:
        """Invalidate every key of ``rule``'s table, and every lease on one; returns the keys deleted.

        Readers bypass the cache while ``<ns>:flushing:<schema.table>`` exists, and for ``holdoff_ms`` after;
        deleting the leases makes any fill that loaded the table before the flush fail. The worker's marker
        expires after FLUSH_MARKER_TTL_MS (a crash mid-flush is redone by the replay); ``held``: the marker was
        set by ``hold_flushing`` and this flush releases it.
        """
        marker = self.keys.flushing(rule.name)
        self._step("mark", self._marked([rule]), FLUSH_MARKER_TTL_MS)
        deleted = 0
        # Leases first: a fill that loaded before the flush must find its lease gone, whichever key it is.
        for template in rule.templates:
            for page in self._scan(self.keys.lease_pattern(template.pattern())):
                self._step("unlink", page)
        for template in rule.templates:
            for page in self._scan(template.pattern()):
                # the glob is broader than the template (a field's * also matches ':'): keep only its own keys
                mine = [k for k in page if template.matches(k.decode(errors="replace"))]
                if mine:
                    deleted += self._step("unlink", mine)
        # Keys that depend on the table through reader tags: the whole-table tag and every column tag.
        tag_suffixes = [rule.name]
        for page in self._scan(self.keys.column_tags_pattern(rule.name)):
            tag_suffixes.extend(self.keys.tag_suffix_of(k.decode()) for k in page)
        deleted += self._evict_tags(tag_suffixes)
        self._step("release" if held else "unmark", [marker], self.holdoff_ms)
        return deleted

    def _evict_tags(self, suffixes: Sequence[str]) -> int:
        """A flush's eviction of reader tag sets and their members (evict_tags.lua, fenced like a flush step)."""
        deleted = 0
        for start in range(0, len(suffixes), 500):
            tag_keys, _ = encode_ops(self.keys, [EvictTag(s) for s in suffixes[start : start + 500]])
            keys = [self.keys.leader, self.keys.operator, *tag_keys]
            args = [self.leader_token or "", self.operator_token or "", self.holdoff_ms]
            args += (self.keys.lease_prefix, self.keys.inv_prefix)
            deleted += self._fenced("evict tags", self._call("evict tags", self._evict, keys=keys, args=args))
        return deleted

    def _marked(self, rules: Sequence[TableRule]) -> list[str]:
        """The keys of a hold or mark step: each table's flushing marker and its schema epoch."""
        return [k for r in rules for k in (self.keys.flushing(r.name), self.keys.schema(r.name))]

    def _step(self, op: str, keys: Sequence[bytes | str], ms: int = 0) -> int:
        """One fenced step of a flush (HA: refused once the lease is someone else's; an operator command: once
        its lock is)."""
        args = [self.leader_token or "", self.operator_token or "", op, ms]
        all_keys = [self.keys.leader, self.keys.operator, *keys]
        return self._fenced(f"flush {op}", self._call(f"flush {op}", self._flush_step, keys=all_keys, args=args))

    def _fenced(self, what: str, reply: Sequence[Any]) -> int:
        """A flush script's reply: {'OK', n} gives n; FENCED (the leader lease is another's) and LOCK_LOST (the
        operator lock is) are refusals."""
        status = scripts.reply_name(reply[0])
        if status == scripts.FENCED:
            raise Fenced("another worker holds the leader lease")
        if status == scripts.LOCK_LOST:
            raise self._lock_lost(what)
        return int(reply[1])

    def _lock_lost(self, what: str) -> OperatorLockLost:
        """The refusal of a step whose operator command no longer holds ``<ns>:operator``."""
        holder = self._call("GET operator", self.client.get, self.keys.operator)
        now = f"held by {holder.decode(errors='replace')}" if holder is not None else "free"
        return OperatorLockLost(
            f"{self.keys.operator} no longer holds this command's lock ({self.operator_token}): its {what} step was "
            f"refused and it stopped (it was paused longer than the lock lasts; the lock is now {now}). Tables it "
            "held as flushing stay bypassed, never stale, until a flush releases them: run the command again"
        )

    def close(self) -> None:
        self.client.close()
