"""The reader's lookup flow without I/O (h11's shape): generators that yield the next step and take each step's
reply with the clock readings around it, so that the sync and asyncio readers (client.py) are thin loops that
perform steps, and the flow itself can be driven offline with scripted replies (tests/unit/test_reader_flow.py).

A flow yields one of:

* ``PlainGet``: the value and its gates in one moment (``MGET``, or ``HGETALL`` + ``MGET`` in ``MULTI``);
  reply value ``(raw, gates)``;
* ``Script``: one call of a registered script (lookup, fill or release, see protocol.py);
* ``Batch``: several ``Script`` calls in one pipeline; reply value the list of their replies;
* ``Load``: call the lookup's loader with the lease's schema epochs; reply value its ``Loaded``. A loader that
  raises is thrown into the flow (it gives a held lease back, then the error goes on to the caller);
* ``Sleep``: wait that long (a lease holder's fill is awaited);
* ``Unlink``: delete keys, each group in one slot (a Redis Cluster: a fill its gate refused is deleted again).

With a near cache (``[reader] near_cache_size``) the driver asks it first (``_ReaderBase.near_first``: the
invalidations that have arrived applied, then a local hit where a plain GET would be allowed); the flow then marks
the near cache before each read and offers it the hits.

On a Redis Cluster a lookup and a fill are each two scripts in one pipeline (reader/cluster.py), whose replies are
combined into the one-node replies before the flow goes on.

and returns the lookup's result. A Redis error comes back as ``Reply.error`` (the driver catches only redis-py's
errors); the flow decides what it means (bypass to MySQL, or ``CacheUnavailable`` in strict mode).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from cdc_sync import scripts
from cdc_sync.reader import cluster
from cdc_sync.reader.protocol import (
    NEGATIVE,
    Lookup,
    ScriptArg,
    Written,
    epoch_of,
    stamp_of,
)

if TYPE_CHECKING:  # (the reader's shared state and decisions; base.py imports the MySQL driver)
    from cdc_sync.reader.base import Epochs, Loaded, Payload, _ReaderBase

ScriptName = Literal["lookup", "fill", "release", "gate", "slot_lookup", "tag_join", "slot_fill"]
SCRIPTS: tuple[ScriptName, ...] = ("lookup", "fill", "release")
CLUSTER_SCRIPTS: tuple[ScriptName, ...] = ("release", "gate", "slot_lookup", "tag_join", "slot_fill")


@dataclass(frozen=True, slots=True)
class PlainGet:
    key: str
    gates: list[str]
    hash: bool  # HGETALL the value (a hash), else GET it with the gates in one MGET


@dataclass(frozen=True, slots=True)
class Script:
    name: ScriptName
    keys: list[str]
    args: list[ScriptArg]


@dataclass(frozen=True, slots=True)
class Batch:
    scripts: list[Script]  # one pipeline (no transaction); a Redis error fails the whole batch


@dataclass(frozen=True, slots=True)
class Load:
    epochs: Epochs  # None: a bypass (nothing will be filled)


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Unlink:
    groups: list[list[str]]  # each group's keys in one slot


Step = PlainGet | Script | Batch | Load | Sleep | Unlink


@dataclass(frozen=True, slots=True)
class Reply:
    """What a step gave: its value, or the Redis error it failed with, and the monotonic clock when the
    request was sent and when its reply was in hand."""

    value: Any = None
    error: Exception | None = None
    sent: float = 0.0
    received: float = 0.0


Flow = Generator[Step, Reply, Any]


def lookup(core: _ReaderBase, lk: Lookup, now: float) -> Flow:
    """One cache-aside lookup (``now``: the monotonic clock as it starts): a plain read inside the trust window,
    else the lookup script, then a hit, a bypass, a lease (load, fill) or a wait for another holder's fill. Inside
    ``reader.after(gtid)``, first the wait for the worker's checkpoint to cover that write (else MySQL)."""
    written = core.written()
    if written is not None and not written.covered and not (yield from _await_write(core, written, now)):
        return (yield from _bypass(core, lk, "behind_write"))
    near = core.near if core.near_keeps(lk) else None  # (the driver asked it first: base.near_first)
    if not core.cluster and core.window.is_open(now):
        mark = near.mark() if near is not None else 0
        reply = yield PlainGet(lk.key, core.plain_keys(lk), lk.fmt == "h")
        if reply.error is not None:
            core._redis_failed(reply.error, lk.key)
            return (yield from _bypass(core, lk, "redis_error"))
        raw, seen = reply.value
        hit, value = core.plain_hit(lk, raw, seen, reply.sent, reply.received)
        if hit:
            if near is not None:
                near.put(lk.key, core.near_value(lk, raw), mark, reply.sent)
            return value
    token = core.token()
    keys, args = core.lookup_plan(lk, token)
    deadline: float | None = None
    while True:
        mark = near.mark() if near is not None else 0
        if core.cluster:
            reply = _only((yield from _cluster_lookups(core, [(lk, token)])))
        else:
            reply = yield Script("lookup", keys, args)
        if reply.error is not None:
            core._redis_failed(reply.error, lk.key)
            return (yield from _bypass(core, lk, "redis_error"))
        kind, detail = core.verdict(lk, reply.value, reply.sent, reply.received)
        if kind == scripts.HIT:
            if near is not None:
                near.put(lk.key, core.near_value(lk, reply.value[1]), mark, reply.sent)
            return detail
        if kind == scripts.BYPASS:
            return (yield from _bypass(core, lk, detail))
        if kind == scripts.LEASE:
            return (yield from _load_and_fill(core, lk, token, detail))
        now = reply.received
        if deadline is None:
            core.stats.add("lease_wait")
            deadline = now + core.cfg.lease_wait_ms / 1000
        if now >= deadline:
            return (yield from _bypass(core, lk, "lease_wait_timeout"))
        yield Sleep(min(0.01, deadline - now) * (0.5 + random.random()))


Verdict = tuple[str, Any, str]  # (kind, detail, lease token) of one lookup of a batch


def lookup_batch(core: _ReaderBase, lks: Sequence[Lookup], now: float) -> Generator[Step, Reply, list[Verdict]]:
    """Many lookups' scripts in one round trip (``get_rows``): each one's verdict, to go on with ``after_verdict``
    one by one (the loads are each lookup's own). A Redis error, or a write not covered in time inside
    ``reader.after``: every lookup bypasses."""
    written = core.written()
    if written is not None and not written.covered and not (yield from _await_write(core, written, now)):
        return [(scripts.BYPASS, "behind_write", "") for _ in lks]
    tokens = [core.token() for _ in lks]
    near = core.near
    mark = near.mark() if near is not None else 0
    if core.cluster:
        reply = yield from _cluster_lookups(core, list(zip(lks, tokens, strict=True)))
    else:
        reply = yield Batch(
            [Script("lookup", *core.lookup_plan(lk, token)) for lk, token in zip(lks, tokens, strict=True)]
        )
    if reply.error is not None:
        core._redis_failed(reply.error, lks[0].key)
        return [(scripts.BYPASS, "redis_error", "") for _ in lks]
    out: list[Verdict] = []
    for lk, token, one in zip(lks, tokens, reply.value, strict=True):
        kind, detail = core.verdict(lk, one, reply.sent, reply.received)
        if kind == scripts.HIT and near is not None and core.near_keeps(lk):
            near.put(lk.key, core.near_value(lk, one[1]), mark, reply.sent)
        out.append((kind, detail, token))
    return out


def after_verdict(core: _ReaderBase, lk: Lookup, verdict: Verdict, now: float) -> Flow:
    """One lookup of a batch, from its verdict: a hit's value, a bypass's or a lease's load (and fill), or, when
    another reader holds the lease, the whole lookup again (it waits as ``lookup`` does)."""
    kind, detail, token = verdict
    if kind == scripts.HIT:
        return detail
    if kind == scripts.BYPASS:
        return (yield from _bypass(core, lk, detail))
    if kind == scripts.LEASE:
        return (yield from _load_and_fill(core, lk, token, detail))
    return (yield from lookup(core, lk, now))


def _await_write(core: _ReaderBase, written: Written, now: float) -> Generator[Step, Reply, bool]:
    """Read-your-writes: read the worker's checkpoint until it covers the write, for up to ``written.wait_s``
    from the block's first lookup (later lookups of a block that waited in vain read it once each)."""
    if written.deadline is None:
        written.deadline = now + written.wait_s
    waited = False
    while True:
        reply = yield PlainGet(core.keys.checkpoint, [], False)
        if reply.error is not None:
            core._redis_failed(reply.error, core.keys.checkpoint)
            return False
        if written.seen(reply.value[0]):
            written.covered_at = reply.received  # (a near-cache value counts only if read after this)
            return True
        if not waited:
            core.stats.add("write_wait")
            waited = True
        if reply.received >= written.deadline:
            return False
        yield Sleep(min(0.005, written.deadline - reply.received))


def _load(core: _ReaderBase, epochs: Epochs) -> Generator[Step, Reply, Loaded]:
    try:
        reply = yield Load(epochs)
    except Exception:
        core.stats.add("loader_error")
        raise
    loaded: Loaded = reply.value
    return loaded


def _bypass(core: _ReaderBase, lk: Lookup, reason: str) -> Flow:
    core.stats.add("bypass", reason)
    payload, _ = yield from _load(core, None)
    return None if payload is None else core.decode(lk, payload)


def _release(core: _ReaderBase, lk: Lookup, token: str) -> Generator[Step, Reply, None]:
    reply = yield Script("release", [core.keys.lease(lk.key)], [token])
    if reply.error is not None:
        core._redis_failed(reply.error, lk.key)


def _load_and_fill(core: _ReaderBase, lk: Lookup, token: str, epochs: Epochs) -> Flow:
    core.stats.add("miss")
    try:
        payload, refusal = yield from _load(core, epochs)
    except GeneratorExit:  # (closed by its driver: nothing more may be yielded; the lease expires by itself)
        raise
    except BaseException:
        yield from _release(core, lk, token)
        raise
    fill, ttl_ms = fill_payload(lk, payload, core.cfg.negative_ttl) if refusal is None else (None, None)
    if refusal is not None:
        core.stats.add("fill", refusal)
    if fill is None or ttl_ms is None:
        yield from _release(core, lk, token)
    else:
        if core.cluster:
            item = (lk, token, core.jittered(ttl_ms), fill, epochs)
            reply = _only((yield from _cluster_fills(core, [item])))
        else:
            keys, args = lk.fill_args(core.keys, token, core.jittered(ttl_ms), fill, epochs)
            reply = yield Script("fill", keys, args)
        if reply.error is not None:
            core._redis_failed(reply.error, lk.key)
        else:
            core.fill_outcome(reply.value, lk)
    return None if payload is None else core.decode(lk, payload)


def fill_payload(lk: Lookup, value: Payload | None, negative_ttl: int) -> tuple[Payload | None, int | None]:
    """What to fill for a loaded value, and with which TTL (None: fill nothing)."""
    if value == []:  # a hash whose columns are all NULL cannot exist in Redis (the worker evicts it too)
        return None, None
    if value is None:
        if negative_ttl > 0 and lk.fmt == "j":
            return NEGATIVE, negative_ttl * 1000
        return None, None
    return value, lk.ttl_ms


def fill_rows(
    core: _ReaderBase,
    table: str,
    rows: Sequence[Mapping[str, object]],
    selected_at: float,
    epoch: str | None,
) -> Generator[Step, Reply, tuple[int, int, dict[str, int]]]:
    """Pre-fill rows read from MySQL at monotonic time ``selected_at`` (see ``CacheReader.fill_rows``): the
    leases of every key in one batch, then the fills (or leases given back) in another."""
    rule = core.rule(table)
    lookups: list[tuple[Lookup, str, Payload]] = []
    for row in rows:
        for template in rule.templates:
            key = template.render(row)
            if key is None:
                continue
            lk = core.rule_lookup(rule, key)
            if epoch is not None:
                lk = replace(lk, epochs=(epoch,))
            lookups.append((lk, core.token(), core.encode_row(lk, row)))
    if core.cluster:
        reply = yield from _cluster_lookups(core, [(lk, token) for lk, token, _ in lookups])
    else:
        leases = [Script("lookup", *lk.lookup_args(core.keys, core.cfg, token)) for lk, token, _ in lookups]
        reply = yield Batch(leases)
    if reply.error is not None:
        raise reply.error
    too_slow = reply.received - selected_at > core.cfg.holdoff_ms / 2000
    second: list[Script] = []
    is_fill: list[bool] = []  # per queued script: a fill (counted) or a lease given back
    cluster_fills: list[tuple[Lookup, str, int, Payload, Epochs]] = []
    bypass: Counter[str] = Counter()
    for (lk, token, payload), lease in zip(lookups, reply.value, strict=True):
        kind = scripts.reply_name(lease[0])
        if kind != scripts.HIT:
            core.close_window()  # as for any lookup: only hits keep the window
        if kind == scripts.BYPASS:
            reason = lease[1].decode()
            bypass[reason] += 1
            if reason == "rule_mismatch":
                core._rule_verdict(lease[2].decode(), True)
            elif reason == "schema_changed":
                core.schema_changed([table])
        if kind != scripts.LEASE:
            continue
        if too_slow or payload == []:
            second.append(Script("release", [core.keys.lease(lk.key)], [token]))
            bypass["slow" if too_slow else "empty_hash"] += 1
            is_fill.append(False)
            continue
        epochs = (epoch,) if epoch is not None else tuple(epoch_of(e) for e in lease[1:])
        if core.cluster:
            cluster_fills.append((lk, token, core.jittered(lk.ttl_ms), payload, epochs))
            continue
        keys, args = lk.fill_args(core.keys, token, core.jittered(lk.ttl_ms), payload, epochs)
        second.append(Script("fill", keys, args))
        is_fill.append(True)
    results: list[Any] = []
    if second:
        reply = yield Batch(second)
        if reply.error is not None:
            raise reply.error
        results = reply.value
    if cluster_fills:
        reply = yield from _cluster_fills(core, cluster_fills)
        if reply.error is not None:
            raise reply.error
        is_fill += [True] * len(cluster_fills)
        results += reply.value
    filled = 0
    for fill, reply_name in zip(is_fill, results, strict=True):
        stored = scripts.reply_name(reply_name)
        if fill and stored == scripts.STORED:
            filled += 1
        elif fill and stored == scripts.RULE_MISMATCH:
            bypass["rule_mismatch"] += 1
        elif fill and stored == scripts.SCHEMA_CHANGED:
            bypass["schema_changed"] += 1
            core.schema_changed([table])
    return filled, len(lookups) - filled, dict(bypass)


# ---- a Redis Cluster (reader/cluster.py) ---------------------------------------------------------------------


def _only(reply: Reply) -> Reply:
    """The reply of a one-item cluster step."""
    return reply if reply.error is not None else replace(reply, value=reply.value[0])


def _cluster_lookups(core: _ReaderBase, items: Sequence[tuple[Lookup, str]]) -> Generator[Step, Reply, Reply]:
    """lookup.lua's replies for ``items`` (lookup, lease token) on a cluster: each lookup's gate and slot scripts
    in one pipeline, then the tag joins of the leases taken, then the leases to give back, in one pipeline each."""
    calls: list[Script] = []
    for lk, token in items:
        calls.append(Script("gate", *cluster.gate(core.keys, core.cfg, lk)))
        calls.append(Script("slot_lookup", *cluster.slot_lookup(core.keys, core.cfg, lk, token)))
    first = yield Batch(calls)
    if first.error is not None:
        return first
    out: list[list[Any]] = []
    give_back: list[int] = []
    joins: list[tuple[int, Script]] = []
    for i, (lk, _token) in enumerate(items):
        combined, release = cluster.combine_lookup(lk, first.value[2 * i], first.value[2 * i + 1])
        out.append(combined)
        if release:
            give_back.append(i)
        elif combined[0] == scripts.LEASE:
            joins += [(i, Script("tag_join", keys, args)) for keys, args in cluster.tag_joins(core.keys, core.cfg, lk)]
    if joins:
        joined = yield Batch([step for _, step in joins])
        if joined.error is not None:
            yield from _give_back(core, [items[i] for i in dict.fromkeys(i for i, _ in joins)])
            return joined
        for i in dict.fromkeys(i for (i, _), ok in zip(joins, joined.value, strict=True) if int(ok) != 1):
            out[i] = [scripts.BYPASS, b"holdoff"]  # a tag just evicted: held off as on one node
            give_back.append(i)
    if give_back:
        yield from _give_back(core, [items[i] for i in give_back])
    return Reply(out, sent=first.sent, received=first.received)


def _give_back(core: _ReaderBase, items: Sequence[tuple[Lookup, str]]) -> Generator[Step, Reply, None]:
    reply = yield Batch([Script("release", [core.keys.lease(lk.key)], [token]) for lk, token in items])
    if reply.error is not None:  # (the leases expire by themselves)
        core._redis_failed(reply.error, items[0][0].key)


def _cluster_fills(
    core: _ReaderBase, items: Sequence[tuple[Lookup, str, int, Payload, Epochs]]
) -> Generator[Step, Reply, Reply]:
    """fill.lua's replies for ``items`` (lookup, token, ttl, payload, the lease's epochs) on a cluster: each fill's
    gate and slot scripts in one pipeline; fills the gate refuses are deleted again."""
    calls: list[Script] = []
    for lk, token, ttl_ms, payload, epochs in items:
        stamp = stamp_of(epochs) if epochs else ""
        calls.append(Script("gate", *cluster.gate(core.keys, core.cfg, lk, epochs)))
        calls.append(Script("slot_fill", *cluster.slot_fill(core.keys, lk, token, ttl_ms, payload, stamp)))
    reply = yield Batch(calls)
    if reply.error is not None:
        return reply
    out: list[str] = []
    undo: list[list[str]] = []
    for i, (lk, *_rest) in enumerate(items):
        outcome, delete = cluster.combine_fill(reply.value[2 * i], reply.value[2 * i + 1])
        out.append(outcome)
        if delete:
            undo.append([lk.key, core.keys.stamp(lk.key)])
    if undo:
        done = yield Unlink(undo)
        if done.error is not None:
            core._redis_failed(done.error, undo[0][0])
    return Reply(out, sent=reply.sent, received=reply.received)
