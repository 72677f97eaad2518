"""``cdc-sync verify [TABLE...] [--sample N] [--repair]``: compare cached values with MySQL.

Every key a rule can render (SCAN, then the exact template match) is parsed back into its column values,
the row is read from MySQL and encoded the way the worker encodes it, and the two are compared. A mismatch
may only mean the worker has not applied that change yet, so mismatches are checked again once the
freshness heartbeat has passed the time of the first comparison; only what still differs is divergent.
Excluded columns never appear in a report (the cached value does not hold them; the database side is encoded
with the rule's columns). ``repair`` evicts divergent keys (with a hold-off marker, as the worker does).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from cdc_sync.config import Config, TableRule
from cdc_sync.ops.maintenance import select_rules
from cdc_sync.reader import NEGATIVE, CacheReader, Lookup

_BINARY = {"binary", "varbinary", "blob", "tinyblob", "mediumblob", "longblob"}


@dataclass
class Divergence:
    key: str
    cached: Any
    database: Any


@dataclass
class VerifyResult:
    table: str
    checked: int = 0
    divergent: list[Divergence] = field(default_factory=list)
    repaired: int = 0


def _cached(reader: CacheReader, lookup: Lookup) -> Any:
    if lookup.fmt == "h":
        fields: dict[bytes, bytes] = reader.redis.hgetall(lookup.key)  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in fields.items()} if fields else None
    raw: bytes | None = reader.redis.get(lookup.key)  # type: ignore[assignment]
    if raw is None:
        return None
    return "(absent)" if raw == NEGATIVE else orjson.loads(raw)


def _expected(reader: CacheReader, rule: TableRule, lookup: Lookup, where: dict[str, object]) -> Any:
    row = reader.row_loader.load(rule.name, where)
    if row is None:
        return "(absent)"
    return reader.decode(lookup, reader.encode_row(lookup, row))


def _compare(reader: CacheReader, rule: TableRule, keys: Sequence[str]) -> list[Divergence]:
    kinds = reader.row_loader.kinds(rule.name)
    out: list[Divergence] = []
    for key in keys:
        template = next((t for t in rule.templates if t.matches(key)), None)
        parsed = template.parse_key(key) if template is not None else None
        if parsed is None:
            continue
        where: dict[str, object] = {c: v.encode("latin-1") if kinds.get(c) in _BINARY else v for c, v in parsed.items()}
        lookup = Lookup(key, "h" if rule.format == "hash" else "j", (rule.name,), (), 0, rule.columns, rule.exclude)
        cached = _cached(reader, lookup)
        if cached is None:
            continue  # evicted meanwhile: nothing to compare
        expected = _expected(reader, rule, lookup, where)
        if cached != expected:
            out.append(Divergence(key, cached, expected))
    return out


def _redis_ms(reader: CacheReader) -> int:
    s, us = reader.redis.time()
    return int(s) * 1000 + int(us) // 1000


def _wait_for_heartbeat(reader: CacheReader, past_ms: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        beat = reader.redis.get(f"{reader.ns}:heartbeat")
        if beat is not None and int(beat) >= past_ms:
            return True
        time.sleep(0.1)
    return False


def verify(
    config: Config,
    tables: Sequence[str],
    *,
    sample: int = 0,
    repair: bool = False,
    recheck_timeout_s: float = 30.0,
    reader: CacheReader | None = None,
) -> tuple[list[VerifyResult], bool]:
    """Results per table, and whether mismatches were re-checked after the heartbeat (False: worker not fresh)."""
    reader = reader or CacheReader(config)
    results: list[VerifyResult] = []
    confirmed = True
    try:
        for rule in select_rules(config, tables):
            keys: list[str] = []
            for template in rule.templates:
                for key in reader.redis.scan_iter(match=template.pattern(), count=1000):
                    text = key.decode(errors="replace")
                    if template.matches(text) and text not in keys:
                        keys.append(text)
            if sample and len(keys) > sample:
                keys = random.sample(keys, sample)
            result = VerifyResult(rule.name, checked=len(keys))
            suspects = _compare(reader, rule, keys)
            if suspects:
                # A change not yet applied is not divergence. For each suspect: read the row (d1), note Redis's
                # time, wait until the worker has applied everything committed before it, read the cache, read
                # the row again (d2): divergent only if the row did not move (d1 == d2) and the cache differs.
                first = {d.key: d.database for d in _compare(reader, rule, [d.key for d in suspects])}
                at = _redis_ms(reader)
                confirmed = _wait_for_heartbeat(reader, at, recheck_timeout_s) and confirmed
                again = _compare(reader, rule, list(first))
                suspects = [d for d in again if first.get(d.key) == d.database]
            result.divergent = suspects
            if repair and suspects:
                result.repaired = _evict(reader, [d.key for d in suspects])
            results.append(result)
    finally:
        reader.close()
    return results, confirmed


def _evict(reader: CacheReader, keys: Sequence[str]) -> int:
    pipe = reader.redis.pipeline(transaction=True)
    holdoff = reader.cfg.holdoff_ms
    for key in keys:
        pipe.delete(key, f"{reader.ns}:lease:{key}")
        if holdoff > 0:
            pipe.set(f"{reader.ns}:inv:{key}", "1", px=holdoff)
    pipe.execute()
    return len(keys)
