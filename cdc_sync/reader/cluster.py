"""A reader's lookup and fill on a Redis Cluster, without I/O: which scripts to run, and how their replies combine.

On one Redis a lookup is one script (lookup.lua) that reads the namespace's state (heartbeat, flushing markers,
rules, schema epochs) and the key's (value, hold-off marker, lease) in one step. On a cluster those live in two
slots, usually on two nodes, so a lookup runs two scripts in one pipeline: ``gate.lua`` on the namespace's home
slot and ``slot_lookup.lua`` in the key's slot; ``combine_lookup`` turns their replies into the reply lookup.lua
would give, so the rest of the flow (flow.py) is the same. Why two steps keep the guarantees:

* **Freshness.** A hit is served only when the gate's heartbeat is fresh and the key's slot checkpoint has reached
  the one the heartbeat recorded for that slot (the worker records them together, heartbeat.lua). Every change up
  to that point is then in the slot, whichever step ran first: the check is on content, not on time. A slot that
  lost writes (a failover) holds an older checkpoint: its keys bypass (``slot_behind``) until the worker replays.
* **Fills.** A lease is taken in the key's slot and given back when the gate forbids it (flushing, another rule, a
  schema change). The lease is what protects a fill: every change deletes it in the same slot step that changes
  the key, and a flush deletes every lease before it deletes keys, so a fill that passed a gate read before a
  flush began is either refused (its lease is gone) or lands before the flush deletes its key. The fill's own gate
  check runs alongside it; a fill it refuses is deleted again.
* **Tags.** Holding the lease, the reader joins each tag (``tag_join.lua``, in the tag's slot) before it loads.
  The worker evicts a tag by holding it off and reading its members in the tag's slot, then deleting each member
  (and its lease) in the member's slot: a reader that joined before is evicted or loses its lease; one that joins
  after finds the tag held off and bypasses.

No plain-GET trust window on a cluster: every lookup runs the scripts (two nodes cannot be read in one moment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdc_sync import config as config_mod
from cdc_sync import scripts
from cdc_sync.core.keys import Namespace, key_slot
from cdc_sync.core.positions import reached
from cdc_sync.errors import PositionError
from cdc_sync.reader.protocol import Lookup, ScriptArg, stamp_of

Call = tuple[list[str], list[ScriptArg]]  # KEYS and ARGV of one script call


def gate(ns: Namespace, cfg: config_mod.ReaderConfig, lk: Lookup, epochs: Sequence[str] | None = None) -> Call:
    """gate.lua for ``lk`` (``epochs``: the ones to compare, as fill_args takes them; None: the lookup's)."""
    keys = [ns.heartbeat, ns.rules, ns.slots, *(ns.flushing(t) for t in lk.tables), *(ns.schema(t) for t in lk.tables)]
    args: list[ScriptArg] = [cfg.max_staleness_ms, key_slot(lk.key), len(lk.tables), *lk.rules_argv()]
    args += lk.epochs_argv(epochs)
    return keys, args


def slot_lookup(ns: Namespace, cfg: config_mod.ReaderConfig, lk: Lookup, token: str) -> Call:
    keys = [lk.key, ns.inv(lk.key), ns.lease(lk.key), ns.slot_checkpoint(key_slot(lk.key))]
    if lk.stamped:
        keys.append(ns.stamp(lk.key))
    return keys, [cfg.lease_ttl_ms, token, lk.fmt, "1" if lk.stamped else ""]


def tag_joins(ns: Namespace, cfg: config_mod.ReaderConfig, lk: Lookup) -> list[Call]:
    return [([ns.tinv(t), ns.tag(t)], [lk.key, lk.tag_ttl(cfg)]) for t in lk.tags]


def slot_fill(ns: Namespace, lk: Lookup, token: str, ttl_ms: int, payload: bytes | list[str], stamp: str) -> Call:
    keys = [lk.key, ns.lease(lk.key), *([ns.stamp(lk.key)] if lk.stamped else [])]
    args: list[ScriptArg] = [token, lk.fmt, ttl_ms, stamp if lk.stamped else ""]
    args.extend(payload if isinstance(payload, list) else [payload])
    return keys, args


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def combine_lookup(lk: Lookup, gated: Sequence[Any], slot: Sequence[Any]) -> tuple[list[Any], bool]:
    """lookup.lua's reply from gate.lua's and slot_lookup.lua's, and whether the lease the slot gave must be given
    back (the gate forbids it)."""
    status, fresh, heartbeat, recorded, why, table = (_text(x) for x in gated[:6])
    epochs = list(gated[6:])
    kind = scripts.reply_name(slot[0])
    leased = kind == scripts.LEASE
    if status != "OK":
        return [scripts.BYPASS, status.encode()], leased
    if kind == scripts.HIT:
        if not _has_reached(_text(slot[2]), recorded):
            return [scripts.BYPASS, b"slot_behind"], False
        if lk.stamped and _text(slot[3]) != stamp_of(epochs):
            return [scripts.BYPASS, b"stamp_changed"], False  # (filled before a flush of one of its tables)
        return [scripts.HIT, slot[1], int(fresh), heartbeat.encode()], False
    if kind == scripts.BYPASS:
        return [scripts.BYPASS, slot[1]], False
    if leased:
        if why:
            return [scripts.BYPASS, why.encode(), table.encode()], True
        return [scripts.LEASE, *epochs], False
    return [scripts.WAIT], False


def combine_fill(gated: Sequence[Any], stored: object) -> tuple[str, bool]:
    """fill.lua's reply from gate.lua's and slot_fill.lua's, and whether the value just stored must be deleted
    again (the gate refuses it)."""
    status, why = _text(gated[0]), _text(gated[4])
    outcome = scripts.reply_name(stored)
    refusal = scripts.LOST if status != "OK" else {"rule_mismatch": scripts.RULE_MISMATCH}.get(why)
    if why == "schema_changed" and status == "OK":
        refusal = scripts.SCHEMA_CHANGED
    if refusal is None:
        return outcome, False
    return refusal, outcome == scripts.STORED


def _has_reached(slot_checkpoint: str, recorded: str) -> bool:
    """Whether the slot holds every change the heartbeat vouches for in it (nothing recorded: nothing to hold)."""
    if not recorded:
        return True
    if not slot_checkpoint:
        return False
    try:
        return reached(slot_checkpoint, recorded)
    except PositionError:
        return False
