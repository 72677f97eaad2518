"""What the sync and async readers (reader.py) share: stats, lookups, loading rows, and the decisions on the
lookup script's replies. The protocol itself (scripts, argument layouts, pure decisions) is in lookup.py.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import itertools
import os
import random
import secrets
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
import pymysql

from cdc_sync import logs, scripts
from cdc_sync import metrics as m
from cdc_sync.adapters.mysql import COLUMN_INFO_MAX_AGE_S, RowLoader, translate_error
from cdc_sync.config import Config, TableRule
from cdc_sync.core.canonical import ColumnInfo
from cdc_sync.core.codec import encode_hash, encode_json, json_default
from cdc_sync.core.keys import KeyTemplate
from cdc_sync.errors import CacheUnavailable, CdcSyncError
from cdc_sync.reader.nearcache import NearCache
from cdc_sync.reader.protocol import (
    NEGATIVE,
    NO_EPOCH,
    UNKNOWN_EPOCH,
    Lookup,
    ScriptArg,
    TrustWindow,
    Written,
    column_dependency_tables,
    epoch_of,
    fetch_tags,
    row_refusal,
    rule_digest,
    stamp_of,
)
from cdc_sync.reader.tracking import Tracker

log = logs.get("cdc_sync.reader")

_PLAN_CACHE_SIZE = 10_000  # lookups remembered per reader (cleared when full)
Dependency = str | tuple[str, Mapping[str, object]]
Payload = bytes | list[str]
Loaded = tuple[Payload | None, str | None]  # (value to return and maybe fill, why it must not be filled)
# The schema epoch of each table of a lookup as its lease reply gave them (None: no lease, nothing is filled)
Epochs = tuple[str, ...] | None
ColumnInfos = dict[str, Mapping[str, ColumnInfo] | None]
_readers: weakref.WeakSet[_ReaderBase] = weakref.WeakSet()
NEAR_MISS = object()  # near_first: not served from the near cache


class ReaderStats:
    """Counts of hits, misses, bypasses by reason, lease waits, fills by result, widened dependencies and
    errors (also exported to Prometheus)."""

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
    if name in ("hit", "miss", "bypass", "near_hit"):
        children.append(m.READER_LOOKUPS.labels(result=name))
        if name == "bypass":
            children.append(m.READER_BYPASSES.labels(reason=reason))
    elif name == "fill":
        children.append(m.READER_FILLS.labels(result=reason))
    elif name == "widened":
        children.append(m.READER_WIDENED_DEPENDENCIES.labels(table=reason))
    else:
        plain = {
            "lease_wait": m.READER_LEASE_WAITS,
            "write_wait": m.READER_WRITE_WAITS,
            "loader_error": m.READER_LOADER_ERRORS,
            "redis_error": m.READER_REDIS_ERRORS,
            "heartbeat_regression": m.READER_HEARTBEAT_REGRESSIONS,
        }
        if name in plain:
            children.append(plain[name])

    def inc() -> None:
        for child in children:
            child.inc()

    return inc


class RowLookup(NamedTuple):
    lookup: Lookup
    rule: TableRule
    template: KeyTemplate  # the template ``lookup.key`` was rendered with (a loaded row must render it too)


class FetchLookup(NamedTuple):
    lookup: Lookup
    widened: tuple[tuple[str, tuple[str, ...]], ...]  # dependencies widened to their whole-table tag
    expires: float  # monotonic time after which column info is read again (inf: it used none)


class _ReaderBase:
    """What the sync and async readers share: config, lookups, the decisions on replies, encoding."""

    def __init__(self, config: Config, loader: RowLoader | None = None) -> None:
        self.config = config
        self.cfg = config.reader
        self.cluster = config.redis.cluster  # two scripts per lookup and per fill (reader/cluster.py)
        self.ns = config.redis.namespace
        self.keys = config.redis.names
        self.stats = ReaderStats()
        self._row_lookups: dict[Any, RowLookup] = {}
        self._fetch_lookups: dict[Any, FetchLookup] = {}
        self._plans: dict[Lookup, tuple[list[str], list[ScriptArg]]] = {}
        self._plain: dict[Lookup, list[str]] = {}
        self._rules = {r.name: r for r in config.tables}
        self._digests = {r.name: rule_digest(r) for r in config.tables}
        self.row_loader = loader if loader is not None else RowLoader(config.mysql, self.cfg.pool_size)
        self.window = TrustWindow()  # plain-GET hits between checks (see the module docstring)
        # hot values in this process (``near_cache_size``), served only where a plain GET would be (reader/flow.py)
        self.near = NearCache(self.cfg.near_cache_size) if self.cfg.near_cache_size > 0 else None
        # only keys under the templates' literal prefixes (what the tracking connection hears of) are kept
        self.near_prefixes = tuple(t.literals[0] for r in config.tables for t in r.templates)
        self.tracker = self._tracker() if self.near is not None else None
        # read-your-writes: the write the current context's lookups must see (``after``); one variable per reader
        self._written: contextvars.ContextVar[Written | None] = contextvars.ContextVar(
            f"cdc_sync_written_{id(self)}", default=None
        )
        self._heartbeat_key = self.keys.heartbeat
        self._mismatched: dict[str, bool] = {}  # table → whether the last verdict on its rule was a mismatch
        self._noted: set[Any] = set()  # what was logged once already (non-canonical keys, widened tags)
        self._schema_reread: dict[str, float] = {}  # table → when its column info was last dropped (a flush seen)
        self._reseed()
        _readers.add(self)

    def _reseed(self) -> None:
        """A new lease-token prefix and counter (at start, and in a forked child: tokens must never repeat)."""
        self._token_prefix = secrets.token_hex(6)
        self._tokens = itertools.count()

    def _after_fork(self) -> None:
        self._reseed()
        self.window.close()  # a new process, new connections: trust is re-established by a checked hit
        self.stats._lock = threading.Lock()  # another thread of the parent may have held it
        if self.near is not None:  # (the tracking connection is the parent's: the child hears nothing on it)
            self.near = NearCache(self.cfg.near_cache_size)
            self.tracker = self._tracker()

    def _tracker(self) -> Tracker:
        assert self.near is not None
        resets = [self.keys.flushing(""), self.keys.rules, self.keys.schema("")]
        tracker = Tracker(self.config.redis, self.near, self.near_prefixes, resets)
        tracker.ready()  # (connected now, so the first values read can be kept; else again at a lookup)
        return tracker

    def near_keeps(self, lookup: Lookup) -> bool:
        """Whether the near cache may hold this lookup's value: a key the tracking connection hears of, not a
        stamped fetch result (its stamp is checked against the schema epochs on every read)."""
        return self.near is not None and not lookup.stamped and lookup.key.startswith(self.near_prefixes)

    def near_first(self, lookup: Lookup) -> Any:
        """Before a lookup's flow (both drivers): apply the invalidations that have arrived (so the flow's marks
        come after them), then serve a local hit if a plain GET would be allowed now (the window open, outside
        ``after`` or once it is covered). ``NEAR_MISS``: go on with the flow."""
        near, tracker = self.near, self.tracker
        if near is None or tracker is None or not self.near_keeps(lookup) or not tracker.ready():
            return NEAR_MISS
        if not self.window.is_open(time.monotonic()):
            return NEAR_MISS
        entry = near.entry(lookup.key)
        if entry is None:
            return NEAR_MISS
        kept, read_at = entry
        written = self._written.get()
        if written is not None and read_at < written.covered_at:  # (not covered yet, or read before it was)
            return NEAR_MISS
        self.stats.add("near_hit")
        if lookup.fmt == "h":
            return dict(kept)  # type: ignore[call-overload]
        return None if kept == NEGATIVE else orjson.loads(kept)  # type: ignore[arg-type]

    # ---- building lookups -----------------------------------------------------------------------

    def rule(self, table: str) -> TableRule:
        rule = self._rules.get(table)
        if rule is None:
            raise ValueError(f"{table} is not a mapped table (add a [[tables]] entry)")
        return rule

    def row_lookup(self, table: str, where: Mapping[str, object]) -> RowLookup:
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

    def _row_lookup(self, table: str, where: Mapping[str, object]) -> RowLookup:
        rule = self.rule(table)
        template = _template_for(rule, where)
        key = template.render(where)
        if key is None:
            raise ValueError(f"{table}: a key value is NULL")
        return RowLookup(self.rule_lookup(rule, key), rule, template)

    def rule_lookup(self, rule: TableRule, key: str) -> Lookup:
        """The lookup of one key of ``rule`` (get_row, fill_rows)."""
        fmt = "h" if rule.format == "hash" else "j"
        digests = (self._digests[rule.name],)
        return Lookup(key, fmt, (rule.name,), (), rule.ttl * 1000, rule.columns, rule.exclude, digests)

    @staticmethod
    def cached_call_key(
        fn: Callable[..., Any], prefix: str | None, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> str:
        """The key ``@reader.cached`` stores a call's result under: ``<prefix>:<digest of the arguments>``
        (prefix: ``cached:<module>.<qualname>``). Arguments must be JSON-serialisable (orjson: str, int, float,
        bool, None, lists, dicts, dates, Decimal...); keyword order does not matter."""
        try:
            text = orjson.dumps([list(args), kwargs], default=json_default, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise TypeError(
                f"reader.cached: the arguments of {fn.__qualname__} must be JSON-serialisable: {exc}"
            ) from None
        if prefix is None and "<locals>" in fn.__qualname__:
            raise ValueError(
                f"reader.cached: {fn.__qualname__} is defined inside a function (functions made by one factory "
                'share that name, and would share their results): pass key="..."'
            )
        head = prefix if prefix is not None else f"cached:{fn.__module__}.{fn.__qualname__}"
        return f"{head}:{hashlib.blake2b(text, digest_size=16).hexdigest()}"

    @staticmethod
    def call_dependencies(
        depends_on: Sequence[Dependency] | Callable[..., Sequence[Dependency]],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> Sequence[Dependency]:
        """``@reader.cached``'s dependencies of one call: a list, or a function of the call's arguments."""
        return depends_on(*args, **kwargs) if callable(depends_on) else depends_on

    def cached_fetch_lookup(self, key: str, ttl: float, depends_on: Sequence[Dependency]) -> tuple[Any, Any]:
        """(cache key, the cached FetchLookup or None)."""
        try:
            cache_key: Any = (key, ttl, tuple(_dep_key(d) for d in depends_on))
            cached = self._fetch_lookups.get(cache_key)
        except TypeError:
            return None, None
        if cached is not None and cached.expires < time.monotonic():
            cached = None
        return cache_key, cached

    def fetch_lookup(
        self,
        key: str,
        ttl: float,
        depends_on: Sequence[Dependency],
        info: Mapping[str, Mapping[str, ColumnInfo] | None] | None = None,
        cache_key: Any = None,
        epochs: Mapping[str, str] | None = None,
    ) -> FetchLookup:
        """Build (and remember under ``cache_key``) the lookup of a fetch; ``info``: the column info of each
        column-dependency table (None: none needed, or read it now through the row loader); ``epochs``: the
        schema epoch each was read at, read from Redis before it (``column_info_at``). A table without one
        (None: all) gets ``UNKNOWN_EPOCH``, which the scripts never accept: such a lookup fills nothing."""
        if self.keys.owns(key):
            raise ValueError(f"fetch key {key!r} is in the worker's namespace {self.ns!r}; use another prefix")
        for rule in self._rules.values():
            for template in rule.templates:
                if template.matches(key):
                    raise ValueError(
                        f"fetch key {key!r} is a key of {rule.name} ({template.source!r}), which the worker "
                        "maintains; use a prefix no key template renders"
                    )
        needed = column_dependency_tables(depends_on)
        if info is None:
            info = self.read_column_info(needed) if needed else {}
        epochs = epochs or {}
        tags = fetch_tags(self._rules, depends_on, info)
        digests = tuple(self._digests[t] for t in tags.tables)
        table_epochs = tuple(epochs.get(t, UNKNOWN_EPOCH) if t in needed else NO_EPOCH for t in tags.tables)
        if all(e == NO_EPOCH for e in table_epochs):
            table_epochs = ()  # no column info used: nothing to compare
        lookup = Lookup(
            key, "j", tags.tables, tags.tags, int(ttl * 1000), digests=digests, epochs=table_epochs, stamped=True
        )
        complete = all(info.get(t) is not None and t in epochs for t in needed)
        expires = float("inf") if not needed else time.monotonic() + COLUMN_INFO_MAX_AGE_S
        result = FetchLookup(lookup, tags.widened, expires)
        for table, cols in tags.widened:
            self._note_once(
                ("widened", table, cols),
                "reader.dependency_widened",
                table=table,
                columns=list(cols),
                tag=table,
                why="a value is not canonical for its column (collation, type)" if info.get(table) else "no info",
            )
        if cache_key is not None and complete:
            if len(self._fetch_lookups) >= _PLAN_CACHE_SIZE:
                self._fetch_lookups.clear()
            self._fetch_lookups[cache_key] = result
        return result

    def read_column_info(
        self, tables: Sequence[str], epochs: Mapping[str, str] | None = None
    ) -> dict[str, Mapping[str, ColumnInfo] | None]:
        """Column info per table read now through the row loader, remembered with its schema epoch (read from
        Redis before this call); None for a table it could not be read for: the dependency is then widened, and
        the lookup not remembered."""
        out: dict[str, Mapping[str, ColumnInfo] | None] = {}
        for table in tables:
            try:
                out[table] = self.row_loader.read_column_info(table, (epochs or {}).get(table, UNKNOWN_EPOCH))
            except (CdcSyncError, pymysql.MySQLError) as exc:
                log.warning("reader.column_info_error", table=table, error=f"{type(exc).__name__}: {exc}")
                out[table] = None
        return out

    def cached_column_info(self, tables: Sequence[str]) -> tuple[ColumnInfos, dict[str, str], list[str]]:
        """(column info, the schema epoch each was read at, the tables with none remembered: to be read, with
        their epochs read from Redis first, as ``column_info_at`` does)."""
        info: ColumnInfos = {}
        epochs: dict[str, str] = {}
        missing: list[str] = []
        for table in tables:
            stamped = self.row_loader.stamped_column_info(table)
            stamp = None if stamped is None else stamped[1]
            if stamped is None or stamp is None or stamp == UNKNOWN_EPOCH:
                missing.append(table)
            else:
                info[table], epochs[table] = stamped[0], stamp
        return info, epochs, missing

    def epoch_keys(self, tables: Sequence[str]) -> list[str]:
        return [self.keys.schema(t) for t in tables]

    def epochs_read(self, tables: Sequence[str], raw: Sequence[object] | None) -> dict[str, str]:
        """The tables' epochs from an MGET of ``epoch_keys`` (None: Redis failed, ``UNKNOWN_EPOCH``)."""
        if raw is None:
            return dict.fromkeys(tables, UNKNOWN_EPOCH)
        return {t: epoch_of(r) for t, r in zip(tables, raw, strict=True)}

    def lookup_plan(self, lookup: Lookup, token: str) -> tuple[list[str], list[ScriptArg]]:
        """KEYS and ARGV of the lookup script (built once per key, the token filled in per call)."""
        plan = self._plans.get(lookup)
        if plan is None:
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            plan = self._plans[lookup] = lookup.lookup_args(self.keys, self.cfg, "")
        keys, args = plan
        return keys, [args[0], args[1], token, *args[3:]]

    def plain_keys(self, lookup: Lookup) -> list[str]:
        """What a plain read inside the window reads with the value: the heartbeat and the flushing markers of
        the lookup's tables (the window was opened by some lookup, maybe of another table: a table flushed or
        held meanwhile must not be read by it). Built once per key."""
        keys = self._plain.get(lookup)
        if keys is None:
            if len(self._plain) >= _PLAN_CACHE_SIZE:
                self._plain.clear()
            keys = [self._heartbeat_key, *(self.keys.flushing(t) for t in lookup.tables)]
            if lookup.stamped:  # and the result's stamp with its tables' epochs now (see Lookup.stamped)
                keys += [self.keys.stamp(lookup.key), *(self.keys.schema(t) for t in lookup.tables)]
            self._plain[lookup] = keys
        return keys

    @contextlib.contextmanager
    def after(self, gtid: str | None, wait_ms: int | None = None) -> Iterator[None]:
        """Read-your-writes: inside the block, lookups (``get_row``, ``fetch``, ...) use the cache only once the
        worker's checkpoint covers the write ``gtid`` (``cdc_sync.last_gtid(connection)`` right after its commit),
        waiting for it up to ``wait_ms`` (default ``[reader] read_your_writes_wait_ms``) from the block's first
        lookup, then reading MySQL (``bypass`` reason ``behind_write``). A block per request or task: the setting
        is a context variable, so threads and asyncio tasks each have their own. ``gtid`` empty or None (the
        session wrote nothing): the block changes nothing."""
        if not gtid:
            yield
            return
        wait = self.cfg.read_your_writes_wait_ms if wait_ms is None else wait_ms
        if wait < 0:
            raise ValueError(f"reader.after: wait_ms must be >= 0; got {wait}")
        token = self._written.set(Written(gtid.strip(), wait / 1000))
        try:
            yield
        finally:
            self._written.reset(token)

    def written(self) -> Written | None:
        """The write this context's lookups must see (``after``), if any."""
        return self._written.get()

    def token(self) -> str:
        return f"{self._token_prefix}{next(self._tokens):x}"

    def jittered(self, ttl_ms: int) -> int:
        if ttl_ms <= 0 or self.cfg.ttl_jitter <= 0:
            return ttl_ms
        return max(1, int(ttl_ms * (1 - self.cfg.ttl_jitter * random.random())))

    # ---- loading rows ---------------------------------------------------------------------------

    def load_row(self, row_lookup: RowLookup, where: Mapping[str, object], epochs: Epochs = None) -> Loaded:
        """Load the row (blocking: the async reader runs this in a thread) and decide whether it may fill.

        ``epochs``: the lease reply's schema epochs. The column info the row is normalized with (and absence
        judged by) must be read since then: remembered info read at another epoch is read again, stamped with
        the lease's, which the fill then checks (a DDL flushed meanwhile refuses it)."""
        lookup, rule, template = row_lookup
        epoch = epochs[lookup.tables.index(rule.name)] if epochs else None
        try:
            info = self._row_column_info(rule.name, epoch)
            row = self.row_loader.load(rule.name, dict(where))
        except pymysql.MySQLError as exc:
            raise translate_error(exc, f"load {rule.name}") from exc
        payload = None if row is None else self.encode_row(lookup, row)
        if row is None and not (self.cfg.negative_ttl > 0 and lookup.fmt == "j"):
            return None, None  # nothing would be filled anyway
        refusal = row_refusal(lookup, template, where, row, info if row is None else None)
        if refusal is not None:
            rendered = template.render(row) if row is not None else None
            self._note_once(
                ("noncanonical", rule.name, template.source),
                "reader.noncanonical_key",
                table=rule.name,
                template=template.source,
                key=lookup.key,
                row_key=rendered,
                absent=row is None,
                action="returned without filling",
            )
        return payload, refusal

    def _row_column_info(self, table: str, epoch: str | None) -> Mapping[str, ColumnInfo]:
        """The remembered column info if it was read at ``epoch`` (any, when None: nothing is filled), else
        read now. The loader then normalizes with it or a later read (it keeps the latest started)."""
        stamped = self.row_loader.stamped_column_info(table)
        if stamped is not None and (epoch is None or stamped[1] == epoch):
            return stamped[0]
        return self.row_loader.read_column_info(table, epoch if epoch is not None else UNKNOWN_EPOCH)

    def _note_once(self, what: Any, event: str, **fields: Any) -> None:
        if what not in self._noted:
            self._noted.add(what)
            log.warning(event, **fields)

    # ---- replies --------------------------------------------------------------------------------

    def verdict(self, lookup: Lookup, reply: Sequence[Any], sent: float, received: float) -> tuple[str, Any]:
        """The lookup script's reply (request sent at monotonic ``sent``, reply in hand at ``received``) as
        (kind, detail): (HIT, value), (BYPASS, reason), (LEASE, the schema epoch of each table), (WAIT, None). Every
        reply but a hit ends the plain-GET window; a hit opens or extends it."""
        kind = scripts.reply_name(reply[0])
        if kind == scripts.HIT:
            if not self.window.opened(sent, received, int(reply[2]), reply[3], self.cfg.freshness_check_ms):
                self._heartbeat_regressed(reply[3])
            self.stats.add("hit")
            return kind, None if reply[1] == NEGATIVE else self.decode(lookup, reply[1])
        self.close_window()
        if kind == scripts.BYPASS:
            reason = reply[1].decode()
            if reason == "rule_mismatch":
                self._rule_verdict(reply[2].decode(), True)
            elif reason == "flushing":  # after DDL, say: column types and collations are read again
                self._reread_schema(lookup.tables)
            elif reason == "schema_changed":
                self.schema_changed([reply[2].decode()])
            return kind, reason
        if kind == scripts.LEASE:
            for table in lookup.tables:
                if self._mismatched.get(table):
                    self._rule_verdict(table, False)
            epochs: tuple[str, ...] = tuple(epoch_of(e) for e in reply[1:])
            return kind, epochs if len(epochs) == len(lookup.tables) else None
        return kind, None

    def schema_changed(self, tables: Sequence[str]) -> None:
        """A table's schema epoch moved since its column info was read (a DDL, or a flush that may stand for
        one): the info and the lookups built on it are dropped, to be read again at the next lookup."""
        self.row_loader.forget_column_info(tables)
        self._fetch_lookups.clear()
        log.info("reader.schema_changed", tables=list(tables), action="not filled; column info read again")

    def _reread_schema(self, tables: Sequence[str]) -> None:
        """Drop the tables' column info and the lookups built on it, once per flush: a flush leaves its marker
        for the hold-off, and every lookup in that time bypasses with reason "flushing"."""
        now = time.monotonic()
        stale = [t for t in tables if now - self._schema_reread.get(t, -1e9) > max(1.0, self.cfg.holdoff_ms / 1000)]
        if stale:
            for t in stale:
                self._schema_reread[t] = now
            self.row_loader.forget_column_info(stale)
            self._fetch_lookups.clear()

    def _rule_verdict(self, table: str, mismatch: bool) -> None:
        """Log a table's rule agreement when it changes (not per lookup)."""
        if self._mismatched.get(table, False) == mismatch:
            return
        self._mismatched[table] = mismatch
        if mismatch:
            log.warning(
                "reader.rule_mismatch",
                table=table,
                action="no fills for this table (hits are still served); give the reader the worker's rule",
            )
        else:
            log.info("reader.rule_agreed", table=table)

    def plain_hit(
        self, lookup: Lookup, raw: Any, gates: Sequence[Any], sent: float, received: float
    ) -> tuple[bool, Any]:
        """A plain read's reply inside the window: (hit?, value). ``gates``: what ``plain_keys`` read with it.
        Not a hit: the key is absent, the reply came after the window closed, the heartbeat read with it is
        missing or went back (the window closes), or a table of the lookup is being flushed (the script decides)."""
        heartbeat = gates[0]
        verdict = self.window.accepts(sent, received, heartbeat)
        if verdict != "ok":
            if verdict == "regressed":
                self._heartbeat_regressed(heartbeat)
            return False, None
        n = len(lookup.tables)
        if not raw or any(marker is not None for marker in gates[1 : 1 + n]):
            return False, None
        if lookup.stamped:
            stamp = gates[1 + n]
            if stamp is None or (stamp.decode() if isinstance(stamp, bytes) else str(stamp)) != stamp_of(
                gates[2 + n :]
            ):
                return False, None  # stamped before a flush of one of its tables (the script decides)
        self.stats.add("hit")
        if lookup.fmt == "h":
            return True, {k.decode(): v.decode() for k, v in raw.items()}
        return True, (None if raw == NEGATIVE else orjson.loads(raw))

    def near_value(self, lookup: Lookup, raw: Any) -> object:
        """What the near cache keeps of a hit's payload: a JSON value's bytes (decoded anew for every local hit,
        so callers never share an object), a hash decoded (its str values cannot be changed)."""
        if lookup.fmt == "h":
            return self.decode(lookup, [x for kv in raw.items() for x in kv] if isinstance(raw, dict) else raw)
        return bytes(raw)

    def _heartbeat_regressed(self, heartbeat: Any) -> None:
        if self.near is not None:
            self.near.clear()
            m.READER_NEAR_CACHE_RESETS.labels(reason="heartbeat_went_back").inc()
        self.stats.add("heartbeat_regression")
        seen = heartbeat.decode() if isinstance(heartbeat, bytes) else heartbeat
        log.warning("reader.heartbeat_went_back", heartbeat=seen, action="window closed; every lookup checked")

    def close_window(self) -> None:
        self.window.close()

    def fill_outcome(self, stored: Any, lookup: Lookup) -> None:
        outcomes = {
            scripts.STORED: "stored",
            scripts.LOST: "lost",
            scripts.RULE_MISMATCH: "rule_mismatch",
            scripts.SCHEMA_CHANGED: "schema_changed",
        }
        result = outcomes.get(scripts.reply_name(stored))
        if result == "schema_changed":
            self.schema_changed(lookup.tables)
        self.stats.add("fill", result or "lost")

    # ---- values ---------------------------------------------------------------------------------

    @staticmethod
    def encode_row(lookup: Lookup, row: Mapping[str, object]) -> Payload:
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
        return self.window.is_open(time.monotonic())

    def _redis_failed(self, exc: Exception, key: str) -> None:
        self.close_window()
        self.stats.add("redis_error")
        log.warning("reader.redis_error", key=key, error=f"{type(exc).__name__}: {exc}")
        if self.cfg.strict:
            raise CacheUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


def _dep_key(dep: Dependency) -> Any:
    if isinstance(dep, str):
        return dep
    table, values = dep
    return (table, tuple((k, type(v), v) for k, v in values.items()))


def _template_for(rule: TableRule, where: Mapping[str, object]) -> KeyTemplate:
    for template in rule.templates:
        if set(template.fields) == set(where):
            return template
    known = [sorted(t.fields) for t in rule.templates]
    raise ValueError(f"{rule.name}: no key template over {sorted(where)} (templates use {known})")


def _readers_after_fork() -> None:
    for reader in list(_readers):
        reader._after_fork()


os.register_at_fork(after_in_child=_readers_after_fork)
