"""Cache-aside reads that cooperate with the worker: leases, hold-off markers and a freshness gate.

One Lua round trip per checked lookup (``lookup.lua``, cdc_sync/scripts) decides, on Redis's own clock:

1. the worker's heartbeat is missing or older than ``max_staleness_ms``, or a table is being flushed
   → **bypass**: read MySQL, fill nothing;
2. the value is there → **hit**;
3. the worker's rule for a table the value depends on (``<ns>:rules``) is not the reader's → **bypass**
   (``rule_mismatch``): the reader would fill keys or shapes the worker does not maintain;
4. a hold-off marker of the key (or of a tag it depends on) exists → **bypass** (an invalidation just
   happened; its commit may not be visible to us yet);
5. ``SET lease NX PX`` succeeds → **lease**: this reader loads and fills; the key joins its tags' sets in
   the same step; otherwise → **wait** for the holder's fill, then bypass after ``lease_wait_ms``.

A fill lands only while the reader's lease still holds its token, the rules still agree and no table's schema
epoch moved since the column info its keys and tags were computed with was read (``fill.lua``; reader/protocol.py).
The worker deletes the lease with every change of the key or of a tag it depends on, so a fill that loaded
before a change never lands after it. Redis errors fall back to MySQL (logged and counted) unless ``strict``.

**Keys and tags come from the database's values.** ``get_row`` fills only when the key rendered from the
loaded row is the key looked up (``id='05'`` loads the row ``id=5``, whose key is ``user:5``: nothing is
filled under ``user:05``), and caches "absent" only for canonical key values (canonical.py). ``fetch``
renders a dependency's values as the worker renders the stored values, or widens it to the whole-table tag.

**Hits between checks.** A hit also tells the reader how long the heartbeat it saw keeps the cache trusted
(``max_staleness_ms`` minus its age, on Redis's clock) and that heartbeat. For that long (measured locally
from before the script was sent, and capped at ``freshness_check_ms``) hits are a plain ``MGET key
<ns>:heartbeat <ns>:flushing:<table>...`` (``HGETALL`` + ``MGET`` in one ``MULTI`` for hashes), one round trip and no
script, accepted only if the heartbeat read with the value is present and not older than the one that opened
the window, no table of the lookup is being flushed (the window may have been opened by another table's
lookup), and the reply arrived inside the window. A heartbeat seen going back (Redis restarted from an older
snapshot, a failover to a lagging replica), any bypass, lease or wait reply, and any Redis error end the
window. A miss in the window runs the script as usual. What the window gives up is only noticing a changed
rule within ``freshness_check_ms``, not at once; the staleness bound holds exactly. ``freshness_check_ms = 0``
runs the script for every lookup.

Fork-safe: a child process gets a new lease-token prefix, a closed window and (RowLoader) no inherited
MySQL connection; redis-py replaces inherited Redis connections itself.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import orjson
import redis
import redis.asyncio

from cdc_sync import config as config_mod
from cdc_sync import scripts
from cdc_sync.adapters.mysql import RowLoader
from cdc_sync.adapters.redis import REDIS_ERRORS, cluster_eval, make_async_client, make_client
from cdc_sync.config import Config
from cdc_sync.core.codec import json_default
from cdc_sync.errors import CacheUnavailable
from cdc_sync.reader import flow
from cdc_sync.reader.base import (
    NEAR_MISS,
    ColumnInfos,
    Dependency,
    Epochs,
    Loaded,
    ReaderStats,
    RowLookup,
    _ReaderBase,
)
from cdc_sync.reader.protocol import (
    NEGATIVE,
    Lookup,
    column_dependency_tables,
)

__all__ = ["NEGATIVE", "AsyncCacheReader", "CacheReader", "CacheUnavailable", "Lookup", "ReaderStats"]

T = TypeVar("T")
P = ParamSpec("P")


class CacheReader(_ReaderBase):
    """Synchronous reader. Thread-safe; share one per process."""

    def __init__(self, config: Config, client: redis.Redis | None = None, loader: RowLoader | None = None) -> None:
        super().__init__(config, loader)
        self.redis = client if client is not None else _client(config)
        names = flow.CLUSTER_SCRIPTS if self.cluster else flow.SCRIPTS
        self._scripts = {name: self.redis.register_script(scripts.source(name)) for name in names}

    @classmethod
    def from_config(cls, path: str | None = None) -> CacheReader:
        """A reader for the same TOML file as the worker (its ``[reader]`` section)."""
        return cls(config_mod.load(config_mod.resolve_path(path)))

    def get_row(self, table: str, **where: object) -> dict[str, Any] | None:
        """The row's cached value (the worker's update-mode format), loading it from MySQL on a miss."""
        row_lookup = self.row_lookup(table, where)
        result = self._get(row_lookup.lookup, lambda epochs: self.load_row(row_lookup, where, epochs))
        return None if result is None else dict(result)

    def get_rows(self, table: str, wheres: Sequence[Mapping[str, object]]) -> list[dict[str, Any] | None]:
        """``get_row`` for many rows of one table, in order: the near cache first, then every lookup script in one
        round trip (one pipeline; on a cluster, one per node), then a load and fill for each row not cached."""
        lookups = [self.row_lookup(table, where) for where in wheres]
        out: list[Any] = [self.near_first(rl.lookup) if self.near is not None else NEAR_MISS for rl in lookups]
        todo = [i for i, got in enumerate(out) if got is NEAR_MISS]
        if todo:
            now = time.monotonic()
            verdicts = self._run(flow.lookup_batch(self, [lookups[i].lookup for i in todo], now))
            for i, verdict in zip(todo, verdicts, strict=True):
                rl, where = lookups[i], wheres[i]

                def load(epochs: Epochs, rl: RowLookup = rl, where: Mapping[str, object] = where) -> Loaded:
                    return self.load_row(rl, where, epochs)

                out[i] = self._run(flow.after_verdict(self, rl.lookup, verdict, now), load)
        return [None if row is None else dict(row) for row in out]

    def fetch(self, key: str, loader: Callable[[], T], ttl: float, depends_on: Sequence[Dependency] = ()) -> T:
        """Any JSON-serialisable result, cached under ``key`` and evicted when a dependency changes."""
        cache_key, fetch = self.cached_fetch_lookup(key, ttl, depends_on)
        if fetch is None:
            info, epochs = self.column_info_at(column_dependency_tables(depends_on))
            fetch = self.fetch_lookup(key, ttl, depends_on, info=info, cache_key=cache_key, epochs=epochs)
        for table, _cols in fetch.widened:
            self.stats.add("widened", table)

        def load(_epochs: Epochs) -> Loaded:
            value = loader()
            return (None if value is None else orjson.dumps(value, default=json_default)), None

        result: T = self._get(fetch.lookup, load)
        return result

    def cached(
        self,
        ttl: float,
        depends_on: Sequence[Dependency] | Callable[..., Sequence[Dependency]] = (),
        key: str | None = None,
    ) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """A decorator: the function's result is ``fetch``-ed under a key built from its arguments (``key``: the
        key's prefix, default ``cached:<module>.<qualname>``), evicted when a dependency changes. ``depends_on``: a
        list as for ``fetch``, or a function of the same arguments returning one (``lambda user_id:
        [("shop.orders", {"user_id": user_id})]``)."""

        def decorate(fn: Callable[P, T]) -> Callable[P, T]:
            self.cached_call_key(fn, key, (), {})  # (refuses a nested function without a key, now)

            @functools.wraps(fn)
            def call(*args: P.args, **kwargs: P.kwargs) -> T:
                name = self.cached_call_key(fn, key, args, kwargs)
                deps = self.call_dependencies(depends_on, args, kwargs)
                return self.fetch(name, lambda: fn(*args, **kwargs), ttl, deps)

            return call

        return decorate

    def column_info_at(self, tables: Sequence[str]) -> tuple[ColumnInfos, dict[str, str]]:
        """Column info of ``tables`` and the schema epoch each was read at: what is remembered, else the epochs
        read from Redis first and then the info (so that the info is at least as new as its epoch)."""
        info, epochs, missing = self.cached_column_info(tables)
        if missing:
            epochs.update(self.schema_epochs(missing))
            info.update(self.read_column_info(missing, epochs))
        return info, epochs

    def schema_epochs(self, tables: Sequence[str]) -> dict[str, str]:
        """The tables' schema epochs now (``UNKNOWN_EPOCH`` when Redis fails: nothing is then filled)."""
        try:
            raw = self.redis.mget(self.epoch_keys(tables))
        except REDIS_ERRORS as exc:
            self._redis_failed(exc, self.epoch_keys(tables)[0])
            raw = None
        return self.epochs_read(tables, raw)

    def fill_rows(
        self, table: str, rows: Sequence[Mapping[str, object]], selected_at: float, epoch: str | None = None
    ) -> tuple[int, int, dict[str, int]]:
        """Pre-fill rows read from MySQL (at monotonic time ``selected_at``) through the lease protocol.

        Two pipelined round trips. A change committed after the SELECT leaves a hold-off marker for
        ``holdoff_ms`` from when the worker applies it, so leases granted within half that time of the SELECT
        cannot cover a newer change; if the leases took longer, they are given back and nothing is filled
        (bypass reason ``slow``: retry with fewer rows). A rule that is not the worker's fills nothing (bypass
        reason ``rule_mismatch``). ``epoch``: the table's schema epoch read before the column info the rows were
        read with (``schema_epochs``); when it moved, nothing is filled (bypass reason ``schema_changed``).
        Returns (filled, not filled, bypass reasons).
        """
        result: tuple[int, int, dict[str, int]] = self._run(flow.fill_rows(self, table, rows, selected_at, epoch))
        return result

    def _get(self, lookup: Lookup, load: Callable[[Epochs], Loaded]) -> Any:
        if self.near is not None and (kept := self.near_first(lookup)) is not NEAR_MISS:
            return kept
        return self._run(flow.lookup(self, lookup, time.monotonic()), load)

    def _run(self, steps: flow.Flow, load: Callable[[Epochs], Loaded] | None = None) -> Any:
        """Perform the flow's steps until it returns (the flow decides; see flow.py)."""
        try:
            step = next(steps)
            while True:
                if isinstance(step, flow.Load):
                    assert load is not None
                    try:
                        loaded = load(step.epochs)
                    except BaseException as exc:  # noqa: BLE001 (into the flow: it gives the lease back, re-raises)
                        step = steps.throw(exc)
                        continue
                    step = steps.send(flow.Reply(loaded))
                elif isinstance(step, flow.Sleep):
                    time.sleep(step.seconds)
                    step = steps.send(flow.Reply())
                else:
                    step = steps.send(self._perform(step))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()  # (a flow left mid-way, by an error here, ends now, not at garbage collection)

    def _perform(self, step: flow.PlainGet | flow.Script | flow.Batch | flow.Unlink) -> flow.Reply:
        sent = time.monotonic()
        try:
            value: Any
            if isinstance(step, flow.PlainGet):
                if step.hash:
                    with self.redis.pipeline(transaction=True) as pipe:  # one moment: value and gates together
                        pipe.hgetall(step.key)
                        pipe.mget(step.gates)
                        value = tuple(pipe.execute())
                else:
                    raw, *seen = self.redis.mget(step.key, *step.gates)
                    value = (raw, seen)
            elif isinstance(step, flow.Script):
                value = self._scripts[step.name](keys=step.keys, args=step.args)
            elif isinstance(step, flow.Unlink):
                with self.redis.pipeline(transaction=False) as pipe:
                    for group in step.groups:
                        pipe.execute_command("UNLINK", *group)  # type: ignore[no-untyped-call]
                    value = pipe.execute()
            elif self.cluster:
                value = cluster_eval(self.redis, [(self._scripts[c.name], c.keys, c.args) for c in step.scripts])
            else:
                with self.redis.pipeline(transaction=False) as pipe:
                    for script in step.scripts:
                        self._scripts[script.name](keys=script.keys, args=script.args, client=pipe)
                    value = pipe.execute()
        except REDIS_ERRORS as exc:
            return flow.Reply(error=exc, sent=sent, received=time.monotonic())
        return flow.Reply(value, sent=sent, received=time.monotonic())

    def close(self) -> None:
        self.redis.close()
        if not self.cluster:
            self.redis.connection_pool.disconnect()
        if self.tracker is not None:
            self.tracker.close()
        self.row_loader.close()


class AsyncCacheReader(_ReaderBase):
    """asyncio reader with the same semantics; the built-in loader runs PyMySQL in a worker thread."""

    def __init__(
        self, config: Config, client: redis.asyncio.Redis | None = None, loader: RowLoader | None = None
    ) -> None:
        super().__init__(config, loader)
        self._own_client = client is None
        self._use(client if client is not None else _async_client(config))

    def _use(self, client: redis.asyncio.Redis) -> None:
        self.redis = client
        names = flow.CLUSTER_SCRIPTS if self.cluster else flow.SCRIPTS
        self._scripts = {name: client.register_script(scripts.source(name)) for name in names}

    def _after_fork(self) -> None:
        """In a forked child: the redis.asyncio pool (unlike the sync one) never checks the pid, and its
        connections belong to the parent's event loop, so a reader of its own gets a new pool. The parent's
        connections are left alone (closing them here would write on the parent's sockets). A client the
        application passed in is its own to replace."""
        super()._after_fork()
        if self._own_client:
            self._use(_async_client(self.config))

    @classmethod
    def from_config(cls, path: str | None = None) -> AsyncCacheReader:
        return cls(config_mod.load(config_mod.resolve_path(path)))

    async def get_row(self, table: str, **where: object) -> dict[str, Any] | None:
        row_lookup = self.row_lookup(table, where)

        async def load(epochs: Epochs) -> Loaded:
            return await asyncio.to_thread(self.load_row, row_lookup, where, epochs)

        result = await self._get(row_lookup.lookup, load)
        return None if result is None else dict(result)

    async def get_rows(self, table: str, wheres: Sequence[Mapping[str, object]]) -> list[dict[str, Any] | None]:
        """``CacheReader.get_rows``, awaited (the loads one after another, each in a worker thread)."""
        lookups = [self.row_lookup(table, where) for where in wheres]
        out: list[Any] = [self.near_first(rl.lookup) if self.near is not None else NEAR_MISS for rl in lookups]
        todo = [i for i, got in enumerate(out) if got is NEAR_MISS]
        if todo:
            now = time.monotonic()
            verdicts = await self._run(flow.lookup_batch(self, [lookups[i].lookup for i in todo], now))
            for i, verdict in zip(todo, verdicts, strict=True):
                rl, where = lookups[i], wheres[i]

                async def load(epochs: Epochs, rl: RowLookup = rl, where: Mapping[str, object] = where) -> Loaded:
                    return await asyncio.to_thread(self.load_row, rl, where, epochs)

                out[i] = await self._run(flow.after_verdict(self, rl.lookup, verdict, now), load)
        return [None if row is None else dict(row) for row in out]

    async def fetch(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]] | Callable[[], T],
        ttl: float,
        depends_on: Sequence[Dependency] = (),
    ) -> T:
        cache_key, fetch = self.cached_fetch_lookup(key, ttl, depends_on)
        if fetch is None:
            info, epochs, missing = self.cached_column_info(column_dependency_tables(depends_on))
            if missing:  # the epochs first, then the column info (see the sync reader's column_info_at)
                epochs.update(await self.schema_epochs(missing))
                info.update(await asyncio.to_thread(self.read_column_info, missing, epochs))
            fetch = self.fetch_lookup(key, ttl, depends_on, info=info, cache_key=cache_key, epochs=epochs)
        for table, _cols in fetch.widened:
            self.stats.add("widened", table)

        async def load(_epochs: Epochs) -> Loaded:
            value = loader()
            if inspect.isawaitable(value):
                value = await value
            return (None if value is None else orjson.dumps(value, default=json_default)), None

        result: T = await self._get(fetch.lookup, load)
        return result

    def cached(
        self,
        ttl: float,
        depends_on: Sequence[Dependency] | Callable[..., Sequence[Dependency]] = (),
        key: str | None = None,
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
        """``CacheReader.cached`` for coroutine functions."""

        def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
            self.cached_call_key(fn, key, (), {})  # (refuses a nested function without a key, now)

            @functools.wraps(fn)
            async def call(*args: P.args, **kwargs: P.kwargs) -> T:
                name = self.cached_call_key(fn, key, args, kwargs)
                deps = self.call_dependencies(depends_on, args, kwargs)
                result: T = await self.fetch(name, lambda: fn(*args, **kwargs), ttl, deps)
                return result

            return call

        return decorate

    async def schema_epochs(self, tables: Sequence[str]) -> dict[str, str]:
        """The tables' schema epochs now (``UNKNOWN_EPOCH`` when Redis fails: nothing is then filled)."""
        try:
            raw = await self.redis.mget(self.epoch_keys(tables))
        except REDIS_ERRORS as exc:
            self._redis_failed(exc, self.epoch_keys(tables)[0])
            raw = None
        return self.epochs_read(tables, raw)

    async def fill_rows(
        self, table: str, rows: Sequence[Mapping[str, object]], selected_at: float, epoch: str | None = None
    ) -> tuple[int, int, dict[str, int]]:
        """``CacheReader.fill_rows``, awaited."""
        result: tuple[int, int, dict[str, int]] = await self._run(flow.fill_rows(self, table, rows, selected_at, epoch))
        return result

    async def _get(self, lookup: Lookup, load: Callable[[Epochs], Awaitable[Loaded]]) -> Any:
        if self.near is not None and (kept := self.near_first(lookup)) is not NEAR_MISS:
            return kept  # (no await: one non-blocking check of the tracking connection, then memory)
        return await self._run(flow.lookup(self, lookup, time.monotonic()), load)

    async def _run(self, steps: flow.Flow, load: Callable[[Epochs], Awaitable[Loaded]] | None = None) -> Any:
        """``CacheReader._run``, awaiting each step."""
        try:
            step = next(steps)
            while True:
                if isinstance(step, flow.Load):
                    assert load is not None
                    try:
                        loaded = await load(step.epochs)
                    except BaseException as exc:  # noqa: BLE001 (into the flow: it gives the lease back, re-raises)
                        step = steps.throw(exc)
                        continue
                    step = steps.send(flow.Reply(loaded))
                elif isinstance(step, flow.Sleep):
                    await asyncio.sleep(step.seconds)
                    step = steps.send(flow.Reply())
                else:
                    step = steps.send(await self._perform(step))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()  # (a flow left mid-way, by an error here, ends now, not at garbage collection)

    async def _perform(self, step: flow.PlainGet | flow.Script | flow.Batch | flow.Unlink) -> flow.Reply:
        sent = time.monotonic()
        try:
            value: Any
            if isinstance(step, flow.PlainGet):
                if step.hash:
                    # one moment: value and gates together (the block gives the connection back on any exit,
                    # a cancellation included)
                    async with self.redis.pipeline(transaction=True) as pipe:
                        pipe.hgetall(step.key)
                        pipe.mget(step.gates)
                        value = tuple(await pipe.execute())
                else:
                    raw, *seen = await self.redis.mget(step.key, *step.gates)
                    value = (raw, seen)
            elif isinstance(step, flow.Script):
                value = await self._scripts[step.name](keys=step.keys, args=step.args)
            elif isinstance(step, flow.Unlink):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for group in step.groups:
                        pipe.execute_command("UNLINK", *group)
                    value = await pipe.execute()
            elif self.cluster:
                value = await self._cluster_batch(step)
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for script in step.scripts:
                        await self._scripts[script.name](keys=script.keys, args=script.args, client=pipe)
                    value = await pipe.execute()
        except REDIS_ERRORS as exc:
            return flow.Reply(error=exc, sent=sent, received=time.monotonic())
        return flow.Reply(value, sent=sent, received=time.monotonic())

    async def _cluster_batch(self, step: flow.Batch) -> list[Any]:
        """``cluster_eval`` (adapters/redis.py), awaited."""
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for c in step.scripts:
                pipe.execute_command("EVALSHA", self._scripts[c.name].sha, len(c.keys), *c.keys, *c.args)
            try:
                return list(await pipe.execute(raise_on_error=True))
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                for c in step.scripts:
                    await self.redis.script_load(self._scripts[c.name].script)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.cluster:
            await self.redis.aclose()  # (a cluster client closes its nodes' pools)
        else:
            await self.redis.aclose(close_connection_pool=True)
        if self.tracker is not None:
            self.tracker.close()
        self.row_loader.close()


def _pool(config: Config) -> dict[str, Any]:
    # threads wait for a free connection (up to the socket timeout) instead of failing when all are busy
    return {"max_connections": config.reader.redis_max_connections, "timeout": config.redis.socket_timeout_s}


def _client(config: Config) -> redis.Redis:
    return make_client(config.redis, **_pool(config))


def _async_client(config: Config) -> redis.asyncio.Redis:
    return make_async_client(config.redis, **_pool(config))
