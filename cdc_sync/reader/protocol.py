"""What a reader lookup sends to Redis, and the pure decisions around it (used by cdc_sync.reader.client).

* ``Lookup``, which lays out the KEYS and ARGV of the scripts ``lookup.lua``, ``fill.lua`` and ``release.lua``
  (cdc_sync/scripts) for one key;
* ``rule_digest``: how a reader proves it runs the worker's rule (the scripts compare it with ``<ns>:rules``);
* schema epochs (``Namespace.schema``, ``epoch_of``): how a reader proves its column info is not older than the last
  DDL of a table (below);
* ``row_refusal``: whether a loaded row may be filled under the key that was looked up;
* ``fetch_tags``: the dependency tags of ``fetch(..., depends_on=...)``, canonical or widened;
* ``TrustWindow``: the plain-GET window after a checked hit, and what ends it.

**Schema epochs.** Keys and tags a reader renders depend on column info read from ``information_schema`` (types
and collations: whether ``code='X'`` is the precise tag ``code=X`` or must widen; how a loaded row is normalized)
and kept for a while. The worker bumps ``<ns>:schema:<table>`` whenever it marks the table as flushing (every
DDL of a mapped table flushes it, and so does every jump that may skip one), before it scans the table's keys
and tags. A reader reads the epoch *before* it reads the column info and keeps the two together; the scripts
compare the epoch of every table whose column info a lookup used with the current one: a lease is refused
(bypass ``schema_changed``) and so is a fill (``SCHEMA_CHANGED``). A fill that lands before the bump is
evicted by the flush that follows it (its key joined its tags at the lease). A missing epoch is ``'0'`` on
both sides; every bump sets Redis's clock in microseconds (or one past the epoch, if that is later), not a
count, so a namespace emptied, or restored from an older snapshot, never shows a reader an epoch it saw before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cdc_sync import config as config_mod
from cdc_sync.config import TableRule
from cdc_sync.core.canonical import NOT_CANONICAL, ColumnInfo, canonical, renders_as_given
from cdc_sync.core.keys import KeyTemplate, Namespace, tag_suffix
from cdc_sync.core.positions import contains, kind_of, parse_mariadb
from cdc_sync.errors import PositionError

ScriptArg = bytes | str | int | float
NEGATIVE = b"null"  # a cached "row absent" (JSON format only)
NO_EPOCH = ""  # in a lookup's or fill's epochs: no column info of that table was used (not compared)
UNKNOWN_EPOCH = "?"  # the epoch could not be read (Redis failed): never equal to a stored one


def stamp_of(epochs: Sequence[object]) -> str:
    """The stamp of these schema epochs (as read from Redis): what fill.lua writes and a hit must find."""
    return ",".join(epoch_of(e) for e in epochs)


def epoch_of(raw: object) -> str:
    """A schema epoch as read from Redis (GET or a script's reply): missing (never bumped) is ``'0'``."""
    if raw is None:
        return "0"
    if isinstance(raw, bytes):
        return raw.decode()
    return str(raw)


def rule_digest(rule: TableRule) -> str:
    """What lookup.lua and fill.lua compare with ``sha1(HGET <ns>:rules <table>)``."""
    return hashlib.sha1(config_mod.rule_fingerprint(rule).encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Lookup:
    """Everything one lookup needs, built once (pure)."""

    key: str
    fmt: str  # 'j' (JSON string) or 'h' (hash)
    tables: tuple[str, ...]  # whose flushing markers gate the lookup, and whose rules must be the worker's
    tags: tuple[str, ...]  # dependency tag suffixes
    ttl_ms: int
    columns: tuple[str, ...] | None = None  # get_row: the value's columns (None: every column minus exclude)
    exclude: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()  # rule_digest of each table, in the order of ``tables`` (scripts only)
    # the schema epoch each table's column info was read at, in the order of ``tables`` (NO_EPOCH: none used;
    # () for all: none at all)
    epochs: tuple[str, ...] = ()
    # a fetch result: filled with a stamp of its tables' schema epochs, a hit only while they are unchanged (a
    # flush bumps them, so it invalidates the result even when Redis evicted the tag set that leads to it)
    stamped: bool = False

    def tag_ttl(self, cfg: config_mod.ReaderConfig) -> int:
        """The tag sets must outlive whatever this key may be filled with (a value, or a cached absence)."""
        return max(self.ttl_ms, cfg.negative_ttl * 1000) + cfg.lease_ttl_ms if self.ttl_ms else 0

    def rules_argv(self) -> list[ScriptArg]:
        return self._rules_argv()

    def epochs_argv(self, epochs: Sequence[str] | None = None) -> list[str]:
        return self._epochs(epochs)

    def _rules_argv(self) -> list[ScriptArg]:
        out: list[ScriptArg] = []
        for table, digest in zip(self.tables, self.digests, strict=True):
            out += (table, digest)
        return out

    def _epochs(self, epochs: Sequence[str] | None = None) -> list[str]:
        chosen = self.epochs if epochs is None else tuple(epochs)
        if not chosen:
            return [NO_EPOCH] * len(self.tables)
        if len(chosen) != len(self.tables):
            raise ValueError(f"{self.key}: {len(chosen)} schema epochs for {len(self.tables)} tables")
        return list(chosen)

    def lookup_args(self, ns: Namespace, cfg: config_mod.ReaderConfig, token: str) -> tuple[list[str], list[ScriptArg]]:
        keys = [self.key, ns.heartbeat, ns.inv(self.key), ns.lease(self.key), ns.rules]
        keys += [ns.flushing(t) for t in self.tables]
        keys += [ns.tinv(t) for t in self.tags]
        keys += [ns.tag(t) for t in self.tags]
        keys += [ns.schema(t) for t in self.tables]
        if self.stamped:
            keys.append(ns.stamp(self.key))
        args: list[ScriptArg] = [cfg.max_staleness_ms, cfg.lease_ttl_ms, token, len(self.tables), self.fmt]
        args.append(self.tag_ttl(cfg))
        args.append(len(self.tags))
        args += self._rules_argv()
        args += self._epochs()
        args.append("1" if self.stamped else "")
        return keys, args

    def fill_args(
        self, ns: Namespace, token: str, ttl_ms: int, payload: bytes | list[str], epochs: Sequence[str] | None = None
    ) -> tuple[list[str], list[ScriptArg]]:
        """``epochs``: the schema epoch of each table the filled value's keys, tags and form were computed
        with (the lease reply's, for column info checked against it); None: the lookup's own."""
        keys = [self.key, ns.lease(self.key), ns.rules, *(ns.flushing(t) for t in self.tables)]
        keys += [ns.schema(t) for t in self.tables]
        if self.stamped:
            keys.append(ns.stamp(self.key))
        args: list[ScriptArg] = [token, self.fmt, ttl_ms, len(self.tables), *self._rules_argv()]
        args += self._epochs(epochs)
        args.append("1" if self.stamped else "")
        args.extend(payload if isinstance(payload, list) else [payload])
        return keys, args


def row_refusal(
    lookup: Lookup,
    template: KeyTemplate,
    where: Mapping[str, object],
    row: Mapping[str, object] | None,
    info: Mapping[str, ColumnInfo] | None,
) -> str | None:
    """Why a loaded row must not be filled under ``lookup.key`` (None: it may be).

    A row found: the key rendered from the row's own values must be the key looked up (``id='05'`` finds the
    row ``id=5``, whose key is ``user:5``, not ``user:05``). No row: "absent" may be cached only when every key
    value is canonical for its column (``info``: the table's columns; None when not needed or unreadable),
    so that the insert of any row the lookup would have matched renders this very key.
    """
    if row is not None:
        return None if template.render(row) == lookup.key else "noncanonical"
    if info is not None and all(renders_as_given(info.get(c), where[c]) for c in template.fields):
        return None
    return "noncanonical"


@dataclass(frozen=True)
class FetchTags:
    """The tags of one ``depends_on`` list; ``widened``: (table, columns) whose values were not canonical."""

    tables: tuple[str, ...]
    tags: tuple[str, ...]
    widened: tuple[tuple[str, tuple[str, ...]], ...] = ()


def fetch_tags(
    rules: Mapping[str, TableRule],
    depends_on: Sequence[str | tuple[str, Mapping[str, object]]],
    info: Mapping[str, Mapping[str, ColumnInfo] | None],
) -> FetchTags:
    """Dependency tags as the worker renders them from the stored values (``info``: each column-dependency
    table's columns, None when unreadable). A dependency whose values are not all canonical for their columns
    widens to the whole-table tag, which the worker evicts on every change of the table. Raises ValueError
    for an unmapped table or columns that are not one of its ``tags``."""
    tables: list[str] = []
    tags: list[str] = []
    widened: list[tuple[str, tuple[str, ...]]] = []
    for dep in depends_on:
        if isinstance(dep, str):
            _rule_of(rules, dep)
            tables.append(dep)
            tags.append(tag_suffix(dep))
            continue
        table, values = dep
        rule = _rule_of(rules, table)
        cols = next((c for c in rule.tags if set(c) == set(values)), None)
        if cols is None:
            raise ValueError(f"{table}: no tags entry for columns {sorted(values)} (configured: {list(rule.tags)})")
        tables.append(table)
        columns = info.get(table)
        canon = {c: canonical(columns.get(c) if columns is not None else None, values[c]) for c in cols}
        if any(v is NOT_CANONICAL for v in canon.values()):
            widened.append((table, cols))
            tags.append(tag_suffix(table))
        else:
            tags.append(tag_suffix(table, cols, canon))
    return FetchTags(tuple(dict.fromkeys(tables)), tuple(dict.fromkeys(tags)), tuple(dict.fromkeys(widened)))


def column_dependency_tables(depends_on: Sequence[str | tuple[str, Mapping[str, object]]]) -> list[str]:
    """The tables whose column info ``fetch_tags`` needs."""
    return list(dict.fromkeys(dep[0] for dep in depends_on if not isinstance(dep, str)))


def _rule_of(rules: Mapping[str, TableRule], table: str) -> TableRule:
    rule = rules.get(table)
    if rule is None:
        raise ValueError(f"{table} is not a mapped table (add a [[tables]] entry)")
    return rule


class TrustWindow:
    """Hits without the script, between checks (see the reader's module docstring).

    State: (until, floor, floor_at). A checked hit that saw heartbeat ``hb`` with ``fresh_ms`` of trust left
    opens the window until ``sent + min(fresh_ms, cap)`` with the floor ``hb``, set at local time ``floor_at``
    (when its reply was in hand). A plain hit is served only before ``until`` and only if the heartbeat read
    with it is not below the floor. A heartbeat below the floor (or missing) in a reply to a request sent
    after ``floor_at`` means the heartbeat went back (Redis restarted from an older snapshot, a failover to a
    lagging replica): the window closes. A request sent before ``floor_at`` may have run before the one that
    set the floor (threads' replies arrive in any order): its low heartbeat proves nothing, so it is not served
    from the window but does not close it. The reader also closes it on every reply that is not a hit. One
    tuple, replaced whole, so threads never see half an update.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state: tuple[float, int, float] = (0.0, 0, 0.0)

    def is_open(self, now: float) -> bool:
        return now < self._state[0]

    def close(self) -> None:
        self._state = (0.0, 0, 0.0)

    def opened(self, sent: float, now: float, fresh_ms: int, heartbeat: object, cap_ms: int) -> bool:
        """A checked hit (request sent at ``sent``, reply in hand at ``now``): open or extend the window.
        Returns False, closing it, when the heartbeat went back below the floor."""
        until, floor, floor_at = self._state
        seen = _heartbeat_ms(heartbeat)
        if seen is None or seen < floor:
            if until != 0.0 and sent > floor_at:
                self.close()
                return False
            return True  # an older reply overtaken by the one that set the floor: nothing learnt
        window_ms = min(fresh_ms, cap_ms)
        if window_ms > 0:
            # the floor is the newest heartbeat seen: it vouches for the old end as well as the new one
            at = now if seen > floor or until == 0.0 else min(floor_at, now)
            self._state = (max(until, sent + window_ms / 1000), seen, at)
        return True

    def accepts(self, sent: float, now: float, heartbeat: object) -> str:
        """A plain read sent at ``sent``, its reply (with ``heartbeat``) in hand at ``now``: ``"ok"`` (serve
        it), ``"late"`` (not from the window: run the script) or ``"regressed"`` (the heartbeat is missing or
        went back below the floor: the window is closed)."""
        until, floor, floor_at = self._state
        if until == 0.0:
            return "late"
        seen = _heartbeat_ms(heartbeat)
        if seen is None or seen < floor:
            if sent > floor_at:
                self.close()
                return "regressed"
            return "late"
        return "ok" if now < until else "late"


def _heartbeat_ms(raw: object) -> int | None:
    if isinstance(raw, bytes | str | int):
        try:
            return int(raw)
        except ValueError:
            return None
    return None


@dataclass(slots=True)
class Written:
    """Read-your-writes (``reader.after(gtid)``): lookups use the cache only once the worker's checkpoint covers
    the write ``gtid`` (a MariaDB GTID or GTID state, or a MySQL GTID set); until then, for up to ``wait_s`` from
    the first lookup, they wait, then read MySQL. The checkpoint moves only after the step that applied a change
    (and so every key it evicted or wrote), so once it covers the write no cached value is older than it: seen
    once, covered for the rest of the block."""

    gtid: str
    wait_s: float
    deadline: float | None = None  # monotonic: set by the first lookup that waits
    covered: bool = False
    # monotonic: when the checkpoint read that showed it covered was in hand; a near-cache value read before
    # then may predate the write (its invalidation still on the way), so it is not served inside the block
    covered_at: float = float("inf")

    def __post_init__(self) -> None:
        try:
            kind = kind_of(self.gtid)
        except PositionError as exc:
            raise ValueError(f"reader.after: not a GTID: {self.gtid[:200]!r} ({exc})") from None
        if kind == "file":
            raise ValueError(f"reader.after: a GTID is needed (e.g. from cdc_sync.last_gtid), not {self.gtid!r}")

    def seen(self, checkpoint: bytes | None) -> bool:
        """Whether the worker's checkpoint (``ns:checkpoint`` as Redis holds it; None: none) covers the write."""
        if not self.covered and checkpoint is not None:
            stored = checkpoint.decode()
            try:
                state = stored.partition("@")[0]
                self.covered = contains(state, self.gtid) and _same_writers(state, self.gtid)
            except PositionError:
                raise ValueError(
                    f"reader.after: the worker's checkpoint {stored[:100]!r} cannot be compared with {self.gtid!r} "
                    "(file positions, or another server's GTIDs)"
                ) from None
        return self.covered


def _same_writers(state: str, gtid: str) -> bool:
    """MariaDB: each domain of the write has, in the checkpoint, a last GTID of the same server. Sequence numbers
    of two servers writing one domain say nothing about order, so such a write is never taken as applied (the
    lookup waits, then reads MySQL). A MySQL GTID set names its source in every GTID: nothing to check."""
    if kind_of(gtid) != "mariadb":
        return True
    have = parse_mariadb(state)
    return all(d in have and have[d][0] == server for d, (server, _seq) in parse_mariadb(gtid).items())
