"""Cache-aside reads that cooperate with the worker: leases, hold-off markers and a freshness gate.

One Lua round trip per checked lookup (``LOOKUP_LUA``) decides, on Redis's own clock:

1. the worker's heartbeat is missing or older than ``max_staleness_ms``, or a table is being flushed
   → **bypass**: read MySQL, fill nothing;
2. the value is there → **hit**;
3. a hold-off marker of the key (or of a tag it depends on) exists → **bypass** (an invalidation just
   happened; its commit may not be visible to us yet);
4. ``SET lease NX PX`` succeeds → **lease**: this reader loads and fills; the key joins its tags' sets in
   the same step; otherwise → **wait** for the holder's fill, then bypass after ``lease_wait_ms``.

A fill lands only while the reader's lease still holds its token (``FILL_LUA``). The worker deletes the
lease with every change of the key or of a tag it depends on, so a fill that loaded before a change never
lands after it. Redis errors fall back to MySQL (logged and counted) unless ``strict`` is set.

**Hits between checks.** A hit also tells the reader how long the heartbeat it saw keeps the cache trusted
(``max_staleness_ms`` minus its age, on Redis's clock). The heartbeat only moves forward, so until that much
time has passed (measured locally from before the script was sent, and capped at ``freshness_check_ms``)
every value in the cache is known to be within the staleness bound: hits in that window are a plain ``GET``
(``HGETALL``), one round trip and no script, and a hit counts only if its reply arrived inside the window.
A miss in the window runs the script as usual. What the window gives up is only the early warnings: a
flushing marker or a vanished heartbeat is noticed within ``freshness_check_ms``, not at once; the
staleness bound itself holds exactly. ``freshness_check_ms = 0`` runs the script for every lookup.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pymysql
import redis
import redis.asyncio

from cdc_sync import config as config_mod
from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.codec import encode_hash, encode_json, json_default
from cdc_sync.config import Config, TableRule
from cdc_sync.errors import CdcSyncError
from cdc_sync.keys import KeyTemplate, tag_suffix
from cdc_sync.mysql import RowLoader, translate_error
from cdc_sync.sink import client_kwargs

log = logs.get("cdc_sync.reader")
T = TypeVar("T")

# KEYS: key, heartbeat, hold-off of key, lease of key, then nflush flushing markers, then the tags'
#       hold-off markers and the tag sets (ntags each).
# ARGV: max_staleness_ms, lease_ttl_ms, token, nflush, format ('j' | 'h'), tag ttl ms (0: no expiry), ntags
LOOKUP_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hb = redis.call('GET', KEYS[2])
if not hb then return {'B', 'no_heartbeat'} end
local fresh = tonumber(ARGV[1]) - (now - tonumber(hb))  -- ms this heartbeat keeps the cache trusted
if fresh < 0 then return {'B', 'stale'} end
local nflush, ntags = tonumber(ARGV[4]), tonumber(ARGV[7])
for i = 5, 4 + nflush do
  if redis.call('EXISTS', KEYS[i]) == 1 then return {'B', 'flushing'} end
end
if ARGV[5] == 'h' then
  local v = redis.call('HGETALL', KEYS[1])
  if #v > 0 then return {'H', v, fresh} end
else
  local v = redis.call('GET', KEYS[1])
  if v then return {'H', v, fresh} end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'B', 'holdoff'} end
local first_tag = 5 + nflush
for i = first_tag, first_tag + ntags - 1 do
  if redis.call('EXISTS', KEYS[i]) == 1 then return {'B', 'holdoff'} end
end
if not redis.call('SET', KEYS[4], ARGV[3], 'NX', 'PX', ARGV[2]) then return {'W'} end
local tag_ttl = tonumber(ARGV[6])
for i = first_tag + ntags, first_tag + 2 * ntags - 1 do
  local existed = redis.call('EXISTS', KEYS[i]) == 1
  redis.call('SADD', KEYS[i], KEYS[1])
  if tag_ttl == 0 then
    redis.call('PERSIST', KEYS[i])
  else
    local p = redis.call('PTTL', KEYS[i])
    if (not existed) or (p >= 0 and p < tag_ttl) then redis.call('PEXPIRE', KEYS[i], tag_ttl) end
  end
end
return {'L'}
"""

# KEYS: key, lease, then flushing markers. ARGV: token, format, ttl_ms, value | field value ...
FILL_LUA = r"""
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
local ttl = tonumber(ARGV[3])
if ARGV[2] == 'h' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
elseif ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[4])
end
return 1
"""

# KEYS: lease. ARGV: token. Give a lease back (the loader failed), so waiters need not wait it out.
RELEASE_LUA = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

ScriptArg = bytes | str | int | float
_PLAN_CACHE_SIZE = 10_000  # lookups remembered per reader (cleared when full)
NEGATIVE = b"null"  # a cached "row absent" (JSON format only)
Dependency = str | tuple[str, Mapping[str, object]]


class CacheUnavailable(CdcSyncError):
    """Redis failed and the reader is in strict mode."""


class ReaderStats:
    """Counts of hits, misses, bypasses by reason, lease waits, fills and errors (also exported to Prometheus)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._exported: dict[str, Callable[[], None]] = {}  # label → the bound Prometheus increments (hot path)

    def add(self, name: str, reason: str = "") -> None:
        label = f"{name}:{reason}" if reason else name
        with self._lock:
            self.counts[label] += 1
        inc = self._exported.get(label)
        if inc is None:
            inc = self._exported[label] = _exporter(name, reason)
        inc()

    def __getitem__(self, label: str) -> int:
        with self._lock:
            return self.counts[label]


def _exporter(name: str, reason: str) -> Callable[[], None]:
    """The Prometheus increments for one stats label, with their label children bound once."""
    children: list[Any] = []
    if name in ("hit", "miss", "bypass"):
        children.append(m.READER_LOOKUPS.labels(result=name))
        if name == "bypass":
            children.append(m.READER_BYPASSES.labels(reason=reason))
    elif name == "fill":
        children.append(m.READER_FILLS.labels(result=reason))
    else:
        plain = {
            "lease_wait": m.READER_LEASE_WAITS,
            "loader_error": m.READER_LOADER_ERRORS,
            "redis_error": m.READER_REDIS_ERRORS,
        }
        if name in plain:
            children.append(plain[name])

    def inc() -> None:
        for child in children:
            child.inc()

    return inc


@dataclass(frozen=True)
class Lookup:
    """Everything one lookup needs, built once (pure)."""

    key: str
    fmt: str  # 'j' (JSON string) or 'h' (hash)
    tables: tuple[str, ...]  # whose flushing markers gate the lookup
    tags: tuple[str, ...]  # dependency tag suffixes
    ttl_ms: int
    columns: tuple[str, ...] | None = None  # get_row: the value's columns (None: every column minus exclude)
    exclude: tuple[str, ...] = ()

    def lookup_args(self, ns: str, cfg: config_mod.ReaderConfig, token: str) -> tuple[list[str], list[ScriptArg]]:
        keys = [self.key, f"{ns}:heartbeat", f"{ns}:inv:{self.key}", f"{ns}:lease:{self.key}"]
        keys += [f"{ns}:flushing:{t}" for t in self.tables]
        keys += [f"{ns}:tinv:{t}" for t in self.tags]
        keys += [f"{ns}:tag:{t}" for t in self.tags]
        # the tag sets must outlive whatever this key may be filled with (a value, or a cached absence)
        tag_ttl = max(self.ttl_ms, cfg.negative_ttl * 1000) + cfg.lease_ttl_ms if self.ttl_ms else 0
        args: list[ScriptArg] = [cfg.max_staleness_ms, cfg.lease_ttl_ms, token, len(self.tables), self.fmt, tag_ttl]
        args.append(len(self.tags))
        return keys, args

    def fill_args(
        self, ns: str, token: str, ttl_ms: int, payload: bytes | list[str]
    ) -> tuple[list[str], list[ScriptArg]]:
        keys = [self.key, f"{ns}:lease:{self.key}", *(f"{ns}:flushing:{t}" for t in self.tables)]
        args: list[ScriptArg] = [token, self.fmt, ttl_ms]
        args.extend(payload if isinstance(payload, list) else [payload])
        return keys, args


class _ReaderBase:
    """What the sync and async readers share: config, lookups, encoding."""

    def __init__(self, config: Config, loader: RowLoader | None = None) -> None:
        self.config = config
        self.cfg = config.reader
        self.ns = config.redis.namespace
        self.stats = ReaderStats()
        self._row_lookups: dict[Any, tuple[Lookup, TableRule]] = {}
        self._plans: dict[Lookup, tuple[list[str], list[ScriptArg]]] = {}
        self._token_prefix = secrets.token_hex(6)  # lease tokens: unique per reader and lookup, cheap to make
        self._tokens = itertools.count()
        self._rules = {r.name: r for r in config.tables}
        self.row_loader = loader if loader is not None else RowLoader(config.mysql, self.cfg.pool_size)
        self._trusted_until = 0.0  # monotonic time until which hits need no script (see the module docstring)

    # ---- building lookups -----------------------------------------------------------------------

    def rule(self, table: str) -> TableRule:
        rule = self._rules.get(table)
        if rule is None:
            raise ValueError(f"{table} is not a mapped table (add a [[tables]] entry)")
        return rule

    def row_lookup(self, table: str, where: Mapping[str, object]) -> tuple[Lookup, TableRule]:
        try:
            cache_key: Any = (table, tuple((k, type(v), v) for k, v in where.items()))  # 1 and 1.0 render apart
            cached = self._row_lookups.get(cache_key)
        except TypeError:  # an unhashable value: no caching
            cache_key, cached = None, None
        if cached is not None:
            return cached
        result = self._row_lookup(table, where)
        if cache_key is not None:
            if len(self._row_lookups) >= _PLAN_CACHE_SIZE:
                self._row_lookups.clear()
            self._row_lookups[cache_key] = result
        return result

    def _row_lookup(self, table: str, where: Mapping[str, object]) -> tuple[Lookup, TableRule]:
        rule = self.rule(table)
        template = _template_for(rule, where)
        key = template.render(where)
        if key is None:
            raise ValueError(f"{table}: a key value is NULL")
        lookup = Lookup(
            key, "h" if rule.format == "hash" else "j", (table,), (), rule.ttl * 1000, rule.columns, rule.exclude
        )
        return lookup, rule

    def fetch_lookup(self, key: str, ttl: float, depends_on: Sequence[Dependency]) -> Lookup:
        tables: list[str] = []
        tags: list[str] = []
        for dep in depends_on:
            if isinstance(dep, str):
                self.rule(dep)
                tables.append(dep)
                tags.append(tag_suffix(dep))
                continue
            table, values = dep
            rule = self.rule(table)
            cols = next((c for c in rule.tags if set(c) == set(values)), None)
            if cols is None:
                raise ValueError(f"{table}: no tags entry for columns {sorted(values)} (configured: {list(rule.tags)})")
            tables.append(table)
            tags.append(tag_suffix(table, cols, values))
        return Lookup(key, "j", tuple(dict.fromkeys(tables)), tuple(dict.fromkeys(tags)), int(ttl * 1000))

    def lookup_plan(self, lookup: Lookup, token: str) -> tuple[list[str], list[ScriptArg]]:
        """KEYS and ARGV of the lookup script (built once per key, the token filled in per call)."""
        plan = self._plans.get(lookup)
        if plan is None:
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            plan = self._plans[lookup] = lookup.lookup_args(self.ns, self.cfg, "")
        keys, args = plan
        return keys, [args[0], args[1], token, *args[3:]]

    def token(self) -> str:
        return f"{self._token_prefix}{next(self._tokens):x}"

    def jittered(self, ttl_ms: int) -> int:
        if ttl_ms <= 0 or self.cfg.ttl_jitter <= 0:
            return ttl_ms
        return max(1, int(ttl_ms * (1 - self.cfg.ttl_jitter * random.random())))

    # ---- values ---------------------------------------------------------------------------------

    @staticmethod
    def encode_row(lookup: Lookup, row: Mapping[str, object]) -> bytes | list[str]:
        cols = list(lookup.columns) if lookup.columns is not None else [c for c in row if c not in lookup.exclude]
        return encode_hash(row, cols) if lookup.fmt == "h" else encode_json(row, cols)

    @staticmethod
    def decode(lookup: Lookup, payload: Any) -> Any:
        if lookup.fmt == "h":
            items = [i.decode() if isinstance(i, bytes) else str(i) for i in payload]  # Redis bytes or encoded str
            return {items[i]: items[i + 1] for i in range(0, len(items), 2)}
        return orjson.loads(payload)

    def in_window(self) -> bool:
        """Whether a hit may be read with a plain GET now (the freshness window of the last checked hit)."""
        return time.monotonic() < self._trusted_until

    def plain_hit(self, lookup: Lookup, raw: Any) -> tuple[bool, Any]:
        """A plain read's reply inside the window: (hit?, value). Not a hit: the key is absent, or the reply
        came after the window closed (then the script decides)."""
        if not raw or time.monotonic() >= self._trusted_until:
            return False, None
        self.stats.add("hit")
        if lookup.fmt == "h":
            return True, {k.decode(): v.decode() for k, v in raw.items()}
        return True, (None if raw == NEGATIVE else orjson.loads(raw))

    def script_hit(self, lookup: Lookup, reply: Sequence[Any], sent: float) -> Any:
        """A hit the script answered: opens (or extends) the window, then returns the value."""
        window_ms = min(int(reply[2]), self.cfg.freshness_check_ms)
        if window_ms > 0:
            self._trusted_until = max(self._trusted_until, sent + window_ms / 1000)
        self.stats.add("hit")
        return None if reply[1] == NEGATIVE else self.decode(lookup, reply[1])

    def _redis_failed(self, exc: Exception, key: str) -> None:
        self.stats.add("redis_error")
        log.warning("reader.redis_error", key=key, error=f"{type(exc).__name__}: {exc}")
        if self.cfg.strict:
            raise CacheUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


def _template_for(rule: TableRule, where: Mapping[str, object]) -> KeyTemplate:
    for template in rule.templates:
        if set(template.fields) == set(where):
            return template
    known = [sorted(t.fields) for t in rule.templates]
    raise ValueError(f"{rule.name}: no key template over {sorted(where)} (templates use {known})")


def _payload(lookup: Lookup, value: Any, negative_ttl: int) -> tuple[bytes | list[str] | None, int | None]:
    """What to fill for a loaded value, and with which TTL (None: fill nothing)."""
    if value == []:  # a hash whose columns are all NULL cannot exist in Redis (the worker evicts it too)
        return None, None
    if value is None:
        if negative_ttl > 0 and lookup.fmt == "j":
            return NEGATIVE, negative_ttl * 1000
        return None, None
    return value, lookup.ttl_ms


class CacheReader(_ReaderBase):
    """Synchronous reader. Thread-safe; share one per process."""

    def __init__(self, config: Config, client: redis.Redis | None = None, loader: RowLoader | None = None) -> None:
        super().__init__(config, loader)
        self.redis = client if client is not None else _client(config)
        self._lookup_script = self.redis.register_script(LOOKUP_LUA)
        self._fill_script = self.redis.register_script(FILL_LUA)
        self._release_script = self.redis.register_script(RELEASE_LUA)

    @classmethod
    def from_config(cls, path: str | None = None) -> CacheReader:
        """A reader for the same TOML file as the worker (its ``[reader]`` section)."""
        return cls(config_mod.load(config_mod.resolve_path(path)))

    def get_row(self, table: str, **where: object) -> dict[str, Any] | None:
        """The row's cached value (the worker's update-mode format), loading it from MySQL on a miss."""
        lookup, _rule = self.row_lookup(table, where)

        def load() -> bytes | list[str] | None:
            try:
                row = self.row_loader.load(table, dict(where))
            except pymysql.MySQLError as exc:
                raise translate_error(exc, f"load {table}") from exc
            return None if row is None else self.encode_row(lookup, row)

        result = self._get(lookup, load)
        return None if result is None else dict(result)

    def fetch(self, key: str, loader: Callable[[], T], ttl: float, depends_on: Sequence[Dependency] = ()) -> T:
        """Any JSON-serialisable result, cached under ``key`` and evicted when a dependency changes."""
        lookup = self.fetch_lookup(key, ttl, depends_on)

        def load() -> bytes | None:
            value = loader()
            return None if value is None else orjson.dumps(value, default=json_default)

        result: T = self._get(lookup, load)
        return result

    def fill_rows(
        self, table: str, rows: Sequence[Mapping[str, object]], selected_at: float
    ) -> tuple[int, int, dict[str, int]]:
        """Pre-fill rows read from MySQL (at monotonic time ``selected_at``) through the lease protocol.

        Two pipelined round trips. A change committed after the SELECT leaves a hold-off marker for
        ``holdoff_ms`` from when the worker applies it, so leases granted within half that time of the SELECT
        cannot cover a newer change; if the leases took longer, they are given back and nothing is filled
        (bypass reason ``slow``: retry with fewer rows). Returns (filled, not filled, bypass reasons).
        """
        rule = self.rule(table)
        lookups: list[tuple[Lookup, str, bytes | list[str]]] = []
        for row in rows:
            for template in rule.templates:
                key = template.render(row)
                if key is None:
                    continue
                lookup = Lookup(
                    key,
                    "h" if rule.format == "hash" else "j",
                    (table,),
                    (),
                    rule.ttl * 1000,
                    rule.columns,
                    rule.exclude,
                )
                lookups.append((lookup, secrets.token_hex(8), self.encode_row(lookup, row)))
        pipe = self.redis.pipeline(transaction=False)
        for lookup, token, _ in lookups:
            keys, args = lookup.lookup_args(self.ns, self.cfg, token)
            self._lookup_script(keys=keys, args=args, client=pipe)
        replies = pipe.execute()
        too_slow = time.monotonic() - selected_at > self.cfg.holdoff_ms / 2000
        pipe = self.redis.pipeline(transaction=False)
        is_fill: list[bool] = []  # per queued command: a fill (counted) or a lease given back
        bypass: Counter[str] = Counter()
        for (lookup, token, payload), reply in zip(lookups, replies, strict=True):
            kind = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if kind == "B":
                bypass[reply[1].decode()] += 1
            if kind != "L":
                continue
            if too_slow or payload == []:
                self._release_script(keys=[f"{self.ns}:lease:{lookup.key}"], args=[token], client=pipe)
                bypass["slow" if too_slow else "empty_hash"] += 1
                is_fill.append(False)
                continue
            keys, args = lookup.fill_args(self.ns, token, self.jittered(lookup.ttl_ms), payload)
            self._fill_script(keys=keys, args=args, client=pipe)
            is_fill.append(True)
        results = pipe.execute() if is_fill else []
        filled = sum(1 for fill, stored in zip(is_fill, results, strict=True) if fill and stored)
        return filled, len(lookups) - filled, dict(bypass)

    def _get(self, lookup: Lookup, load: Callable[[], bytes | list[str] | None]) -> Any:
        if self.in_window():
            try:
                raw = self.redis.hgetall(lookup.key) if lookup.fmt == "h" else self.redis.get(lookup.key)
            except redis.RedisError as exc:
                self._redis_failed(exc, lookup.key)
                return self._bypass(lookup, load, "redis_error")
            hit, value = self.plain_hit(lookup, raw)
            if hit:
                return value
        token = self.token()
        keys, args = self.lookup_plan(lookup, token)
        deadline: float | None = None
        while True:
            sent = time.monotonic()
            try:
                reply = self._lookup_script(keys=keys, args=args)
            except redis.RedisError as exc:
                self._redis_failed(exc, lookup.key)
                return self._bypass(lookup, load, "redis_error")
            kind = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if kind == "H":
                return self.script_hit(lookup, reply, sent)
            if kind == "B":
                return self._bypass(lookup, load, reply[1].decode())
            if kind == "L":
                return self._load_and_fill(lookup, load, token)
            now = time.monotonic()
            if deadline is None:
                self.stats.add("lease_wait")
                deadline = now + self.cfg.lease_wait_ms / 1000
            if now >= deadline:
                return self._bypass(lookup, load, "lease_wait_timeout")
            time.sleep(min(0.01, deadline - now) * (0.5 + random.random()))

    def _bypass(self, lookup: Lookup, load: Callable[[], bytes | list[str] | None], reason: str) -> Any:
        self.stats.add("bypass", reason)
        payload = self._call_loader(load)
        return None if payload is None else self.decode(lookup, payload)

    def _call_loader(self, load: Callable[[], bytes | list[str] | None]) -> bytes | list[str] | None:
        try:
            return load()
        except Exception:
            self.stats.add("loader_error")
            raise

    def _load_and_fill(self, lookup: Lookup, load: Callable[[], bytes | list[str] | None], token: str) -> Any:
        self.stats.add("miss")
        try:
            payload = self._call_loader(load)
        except BaseException:
            self._release(lookup, token)
            raise
        fill, ttl_ms = _payload(lookup, payload, self.cfg.negative_ttl)
        if fill is None or ttl_ms is None:
            self._release(lookup, token)
        else:
            keys, args = lookup.fill_args(self.ns, token, self.jittered(ttl_ms), fill)
            try:
                stored = self._fill_script(keys=keys, args=args)
                self.stats.add("fill", "stored" if stored else "lost")
            except redis.RedisError as exc:
                self._redis_failed(exc, lookup.key)
        return None if payload is None else self.decode(lookup, payload)

    def _release(self, lookup: Lookup, token: str) -> None:
        try:
            self._release_script(keys=[f"{self.ns}:lease:{lookup.key}"], args=[token])
        except redis.RedisError as exc:
            self._redis_failed(exc, lookup.key)

    def close(self) -> None:
        self.redis.close()
        self.redis.connection_pool.disconnect()
        self.row_loader.close()


class AsyncCacheReader(_ReaderBase):
    """asyncio reader with the same semantics; the built-in loader runs PyMySQL in a worker thread."""

    def __init__(
        self, config: Config, client: redis.asyncio.Redis | None = None, loader: RowLoader | None = None
    ) -> None:
        super().__init__(config, loader)
        self.redis = client if client is not None else _async_client(config)
        self._lookup_script = self.redis.register_script(LOOKUP_LUA)
        self._fill_script = self.redis.register_script(FILL_LUA)
        self._release_script = self.redis.register_script(RELEASE_LUA)

    @classmethod
    def from_config(cls, path: str | None = None) -> AsyncCacheReader:
        return cls(config_mod.load(config_mod.resolve_path(path)))

    async def get_row(self, table: str, **where: object) -> dict[str, Any] | None:
        lookup, _rule = self.row_lookup(table, where)

        async def load() -> bytes | list[str] | None:
            try:
                row = await asyncio.to_thread(self.row_loader.load, table, dict(where))
            except pymysql.MySQLError as exc:
                raise translate_error(exc, f"load {table}") from exc
            return None if row is None else self.encode_row(lookup, row)

        result = await self._get(lookup, load)
        return None if result is None else dict(result)

    async def fetch(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]] | Callable[[], T],
        ttl: float,
        depends_on: Sequence[Dependency] = (),
    ) -> T:
        lookup = self.fetch_lookup(key, ttl, depends_on)

        async def load() -> bytes | None:
            value = loader()
            if inspect.isawaitable(value):
                value = await value
            return None if value is None else orjson.dumps(value, default=json_default)

        result: T = await self._get(lookup, load)
        return result

    async def _get(self, lookup: Lookup, load: Callable[[], Awaitable[bytes | list[str] | None]]) -> Any:
        if self.in_window():
            try:
                raw: Any = await (self.redis.hgetall(lookup.key) if lookup.fmt == "h" else self.redis.get(lookup.key))
            except redis.RedisError as exc:
                self._redis_failed(exc, lookup.key)
                return await self._bypass(lookup, load, "redis_error")
            hit, value = self.plain_hit(lookup, raw)
            if hit:
                return value
        token = self.token()
        keys, args = self.lookup_plan(lookup, token)
        deadline: float | None = None
        while True:
            sent = time.monotonic()
            try:
                reply = await self._lookup_script(keys=keys, args=args)
            except redis.RedisError as exc:
                self._redis_failed(exc, lookup.key)
                return await self._bypass(lookup, load, "redis_error")
            kind = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if kind == "H":
                return self.script_hit(lookup, reply, sent)
            if kind == "B":
                return await self._bypass(lookup, load, reply[1].decode())
            if kind == "L":
                return await self._load_and_fill(lookup, load, token)
            now = time.monotonic()
            if deadline is None:
                self.stats.add("lease_wait")
                deadline = now + self.cfg.lease_wait_ms / 1000
            if now >= deadline:
                return await self._bypass(lookup, load, "lease_wait_timeout")
            await asyncio.sleep(min(0.01, deadline - now) * (0.5 + random.random()))

    async def _bypass(
        self, lookup: Lookup, load: Callable[[], Awaitable[bytes | list[str] | None]], reason: str
    ) -> Any:
        self.stats.add("bypass", reason)
        payload = await self._call_loader(load)
        return None if payload is None else self.decode(lookup, payload)

    async def _call_loader(self, load: Callable[[], Awaitable[bytes | list[str] | None]]) -> bytes | list[str] | None:
        try:
            return await load()
        except Exception:
            self.stats.add("loader_error")
            raise

    async def _load_and_fill(
        self, lookup: Lookup, load: Callable[[], Awaitable[bytes | list[str] | None]], token: str
    ) -> Any:
        self.stats.add("miss")
        try:
            payload = await self._call_loader(load)
        except BaseException:
            await self._release(lookup, token)
            raise
        fill, ttl_ms = _payload(lookup, payload, self.cfg.negative_ttl)
        if fill is None or ttl_ms is None:
            await self._release(lookup, token)
        else:
            keys, args = lookup.fill_args(self.ns, token, self.jittered(ttl_ms), fill)
            try:
                stored = await self._fill_script(keys=keys, args=args)
                self.stats.add("fill", "stored" if stored else "lost")
            except redis.RedisError as exc:
                self._redis_failed(exc, lookup.key)
        return None if payload is None else self.decode(lookup, payload)

    async def _release(self, lookup: Lookup, token: str) -> None:
        try:
            await self._release_script(keys=[f"{self.ns}:lease:{lookup.key}"], args=[token])
        except redis.RedisError as exc:
            self._redis_failed(exc, lookup.key)

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)
        self.row_loader.close()


def _client_kwargs(config: Config) -> dict[str, Any]:
    # threads wait for a free connection (up to the socket timeout) instead of failing when all are busy
    pool = {"max_connections": config.reader.redis_max_connections, "timeout": config.redis.socket_timeout_s}
    return {**client_kwargs(config.redis), **pool}


def _client(config: Config) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(config.redis.url, **_client_kwargs(config))
    return redis.Redis(connection_pool=pool)


def _async_client(config: Config) -> redis.asyncio.Redis:
    pool = redis.asyncio.BlockingConnectionPool.from_url(config.redis.url, **_client_kwargs(config))
    return redis.asyncio.Redis(connection_pool=pool)
