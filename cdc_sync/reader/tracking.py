"""The near cache's invalidations (reader/nearcache.py): one RESP3 connection of the reader's own with
``CLIENT TRACKING on BCAST`` for the prefixes of the keys it may keep, so Redis pushes the name of every such key
that changes, expires or is evicted, whoever changed it (the worker's steps, flushes, other readers' fills).

``ready()`` runs before every local hit and, from a thread of its own, every 0.1 s (so an idle reader's pushes do
not pile up in Redis, and its PINGs keep going): it reads what has arrived (one non-blocking check when nothing
has), and says whether the near cache may serve: the connection is there and a PONG came within 1.5 s. A
connection lost, refused or made anew (by redis-py itself too: tracking was on the old socket), a PING unanswered
for a second (a silent network, a NAT), on Sentinel a master other than the one the Sentinels name, a push that
cannot be read, a flush marker, rule or schema epoch of the namespace changed: the near cache is emptied.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.adapters.redis import REDIS_ERRORS, make_client
from cdc_sync.config import RedisConfig
from cdc_sync.errors import ConfigError
from cdc_sync.reader.nearcache import NearCache, tracking_prefixes

log = logs.get("cdc_sync.reader")

PING_EVERY_S = 0.5  # a PING on the tracking connection this often (by the drain thread, lookups or not) ...
PONG_WITHIN_S = 1.0  # ... answered within this, or the connection counts as lost
PROVEN_FOR_S = PING_EVERY_S + PONG_WITHIN_S  # a local hit needs a PONG this recent (a silent network, a NAT)
DRAIN_EVERY_S = 0.1  # the drain thread: an idle reader's pushes do not pile up in Redis's output buffer
RETRY_AFTER_S = 1.0  # after a failed connect, lookups skip the near cache this long
MASTER_CHECK_S = 1.0  # Sentinel: the master the Sentinels name, asked this often


class Tracker:
    def __init__(self, cfg: RedisConfig, near: NearCache, prefixes: Sequence[str], resets: Sequence[str]) -> None:
        """``prefixes``: the keys the near cache may keep; ``resets``: prefixes of namespace keys whose change
        empties it (flush markers, rules, schema epochs)."""
        self.near = near
        self.prefixes = tracking_prefixes([*prefixes, *resets])
        self._resets = tuple(resets)
        self._client = make_client(cfg, protocol=3, max_connections=1)
        self._sentinel = bool(cfg.sentinels)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._poll: Any = None  # select.poll of the tracking connection's socket
        self._ping_sent: float | None = None
        self._next_ping = 0.0
        self._pong_at = 0.0  # monotonic: the last PONG, the proof that pushes still arrive
        self._retry_at = 0.0
        self._next_master_check = 0.0
        self._reconnected = False  # redis-py connected the socket again by itself: tracking is off on it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain_loop, name="cdc-sync-tracking", daemon=True)
        self._thread.start()

    def _drain_loop(self) -> None:
        while not self._stop.wait(DRAIN_EVERY_S):
            self.ready()

    def ready(self) -> bool:
        """Apply every invalidation that has arrived; False when there is no tracking connection (the near cache
        is then empty, and must not serve)."""
        with self._lock:
            try:
                if self._conn is None:
                    if time.monotonic() < self._retry_at:
                        return False
                    self._connect()
                conn = self._conn
                # (after a drain the parser's buffer is empty: new pushes can only be on the socket, and one
                # poll of it is a tenth of redis-py's can_read)
                if self._poll is None or self._poll.poll(0):
                    while conn.can_read(timeout=0):
                        if conn.read_response(push_request=True) in (b"PONG", "PONG"):
                            self._ping_sent, self._pong_at = None, time.monotonic()
                if self._reconnected:
                    raise redis.ConnectionError("the tracking connection was made again without CLIENT TRACKING")
                now = time.monotonic()
                if self._ping_sent is not None and now - self._ping_sent > PONG_WITHIN_S:
                    raise redis.ConnectionError(f"no PONG within {PONG_WITHIN_S} s on the tracking connection")
                if self._ping_sent is None and now >= self._next_ping:
                    if self._sentinel and now >= self._next_master_check:
                        self._next_master_check = now + MASTER_CHECK_S
                        self._check_master(conn)
                    conn.send_command("PING", check_health=False)
                    self._ping_sent, self._next_ping = now, now + PING_EVERY_S
                return now - self._pong_at <= PROVEN_FOR_S
            except (*REDIS_ERRORS, OSError) as exc:
                self._lost(exc)
                return False

    def _connect(self) -> None:
        conn: Any = self._client.connection_pool.get_connection()
        setter = getattr(getattr(conn, "_parser", None), "set_invalidation_push_handler", None)
        if setter is None or getattr(conn, "protocol", 3) not in (3, "3"):
            self._client.connection_pool.release(conn)
            raise ConfigError("reader.near_cache_size: needs redis-py's RESP3 push handling (redis-py 5.1 or later)")
        setter(self._pushed)
        self._reconnected = False
        conn.register_connect_callback(self._on_reconnect)
        self._conn = conn
        args: list[str] = ["CLIENT", "TRACKING", "on", "BCAST"]
        for prefix in self.prefixes:
            args += ["PREFIX", prefix]
        conn.send_command(*args, check_health=False)
        reply = conn.read_response()
        if reply not in (b"OK", "OK"):
            raise redis.ResponseError(f"CLIENT TRACKING answered {reply!r}")
        self._pong_at = time.monotonic()  # (the reply proves the connection as a PONG would)
        # Only now: a value read before this point (marked before the clear) is never kept; one read after it
        # is, since from now on any change of its key is pushed.
        self.near.clear(live=True)
        self._ping_sent, self._next_ping = None, time.monotonic() + PING_EVERY_S
        sock = getattr(conn, "_sock", None)  # (redis-py's socket; without it, can_read every time)
        self._poll = None
        if sock is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        log.info("reader.near_cache_tracking", prefixes=self.prefixes)

    def _on_reconnect(self, _conn: Any) -> None:
        """redis-py connected this connection again by itself (a health check, a retry): CLIENT TRACKING was
        on the old socket only."""
        self._reconnected = True

    def _check_master(self, conn: Any) -> None:
        """Sentinel: the tracking connection must be on the master the Sentinels name now (the data connections
        move there; the old master may keep this one for seconds before it is demoted)."""
        host, port = self._client.connection_pool.get_master_address()  # type: ignore[attr-defined]
        if (str(host), int(port)) != (str(conn.host), int(conn.port)):
            raise redis.ConnectionError(f"the Sentinels name another master ({host}:{port})")

    def _pushed(self, push: Sequence[Any]) -> None:
        """An invalidation push (redis-py calls this while reading; an error here would be logged and dropped by
        redis-py, so none may escape: anything unreadable empties the near cache)."""
        try:
            keys = push[1] if len(push) > 1 else None
            if keys is None:  # FLUSHALL, FLUSHDB
                self._reset("redis_flushed")
                return
            names = [k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k) for k in keys]
            if any(n.startswith(self._resets) for n in names):
                self._reset("namespace_changed")  # a flush began, a rule or a schema epoch changed
            else:
                self.near.invalidate(names)
        except Exception:  # noqa: BLE001 - (see above: never lose an invalidation silently)
            self._reset("unreadable_push")

    def _reset(self, reason: str) -> None:
        self.near.clear()
        m.READER_NEAR_CACHE_RESETS.labels(reason=reason).inc()

    def _lost(self, exc: BaseException) -> None:
        self.near.clear(live=False)
        m.READER_NEAR_CACHE_RESETS.labels(reason="tracking_lost").inc()
        log.warning("reader.near_cache_tracking_lost", error=repr(exc)[:300], action="near cache emptied")
        conn, self._conn, self._poll = self._conn, None, None
        self._retry_at = time.monotonic() + RETRY_AFTER_S
        if conn is not None:
            conn.disconnect()
            self._client.connection_pool.release(conn)

    def close(self) -> None:
        self._stop.set()
        self.near.clear(live=False)
        with self._lock:
            if self._conn is not None:
                self._conn.disconnect()
                self._client.connection_pool.release(self._conn)
                self._conn = None
        self._client.close()
