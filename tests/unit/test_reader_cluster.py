"""reader/cluster.py: how a cluster lookup's and fill's two replies combine into the one-node replies (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from cdc_sync import scripts
from cdc_sync.config import ReaderConfig
from cdc_sync.core.keys import Namespace, key_slot
from cdc_sync.reader import cluster
from cdc_sync.reader.protocol import Lookup

NS = Namespace("cdc", cluster=True)
LK = Lookup("user:1", "j", ("s.t",), (), 0, digests=("d",))


def gate(
    status: str = "OK", recorded: str = "", why: str = "", table: str = "", epochs: tuple[str, ...] = ("7",)
) -> list[Any]:
    return [
        status.encode(),
        1500,
        b"123",
        recorded.encode(),
        why.encode(),
        table.encode(),
        *(e.encode() for e in epochs),
    ]


P1, P2 = "0-1-10@1:bin.000001:100", "0-1-20@1:bin.000001:200"


def test_a_hit_needs_a_fresh_gate_and_a_slot_at_least_as_far_as_recorded() -> None:
    assert cluster.combine_lookup(LK, gate(recorded=P1), [b"HIT", b"v", P2.encode(), b""]) == (
        [scripts.HIT, b"v", 1500, b"123"],
        False,
    )
    assert cluster.combine_lookup(LK, gate(), [b"HIT", b"v", b"", b""])[0][0] == scripts.HIT  # nothing recorded
    behind = cluster.combine_lookup(LK, gate(recorded=P2), [b"HIT", b"v", P1.encode(), b""])
    assert behind == ([scripts.BYPASS, b"slot_behind"], False)
    gone = cluster.combine_lookup(LK, gate(recorded=P2), [b"HIT", b"v", b"", b""])
    assert gone == ([scripts.BYPASS, b"slot_behind"], False)  # the slot lost its checkpoint too
    other = cluster.combine_lookup(LK, gate(recorded="uuid:1-5"), [b"HIT", b"v", P1.encode(), b""])
    assert other[0] == [scripts.BYPASS, b"slot_behind"]  # positions that cannot be ordered: not trusted


@pytest.mark.parametrize("status", ["no_heartbeat", "stale", "flushing"])
def test_a_gate_bypass_wins_and_gives_a_lease_back(status: str) -> None:
    assert cluster.combine_lookup(LK, gate(status), [b"HIT", b"v", b"", b""]) == (
        [scripts.BYPASS, status.encode()],
        False,
    )
    assert cluster.combine_lookup(LK, gate(status), [b"LEASE", b""]) == ([scripts.BYPASS, status.encode()], True)


def test_a_lease_the_gate_forbids_is_given_back() -> None:
    reply = cluster.combine_lookup(LK, gate(why="rule_mismatch", table="s.t"), [b"LEASE", b""])
    assert reply == ([scripts.BYPASS, b"rule_mismatch", b"s.t"], True)
    assert cluster.combine_lookup(LK, gate(), [b"LEASE", b""]) == ([scripts.LEASE, b"7"], False)
    assert cluster.combine_lookup(LK, gate(), [b"WAIT"]) == ([scripts.WAIT], False)
    assert cluster.combine_lookup(LK, gate(), [b"BYPASS", b"holdoff"]) == ([scripts.BYPASS, b"holdoff"], False)


def test_a_stamped_hit_needs_the_epochs_of_now() -> None:
    stamped = Lookup("f:1", "j", ("s.t",), (), 0, digests=("d",), stamped=True)
    assert cluster.combine_lookup(stamped, gate(epochs=("7",)), [b"HIT", b"v", b"", b"7"])[0][0] == scripts.HIT
    assert cluster.combine_lookup(stamped, gate(epochs=("8",)), [b"HIT", b"v", b"", b"7"])[0] == [
        scripts.BYPASS,
        b"stamp_changed",
    ]


def test_a_fill_the_gate_refuses_is_deleted_again() -> None:
    assert cluster.combine_fill(gate(), b"STORED") == ("STORED", False)
    assert cluster.combine_fill(gate(), b"LOST") == ("LOST", False)
    assert cluster.combine_fill(gate("flushing"), b"STORED") == ("LOST", True)
    assert cluster.combine_fill(gate(why="rule_mismatch"), b"STORED") == ("RULE_MISMATCH", True)
    assert cluster.combine_fill(gate(why="schema_changed"), b"STORED") == ("SCHEMA_CHANGED", True)
    assert cluster.combine_fill(gate(why="schema_changed"), b"LOST") == ("SCHEMA_CHANGED", False)


def test_the_calls_touch_one_slot_each() -> None:
    cfg = ReaderConfig()
    tagged = Lookup("user:{9}:x", "j", ("s.t",), ("s.t:a=1",), 1000, digests=("d",), stamped=True)
    keys, _ = cluster.gate(NS, cfg, tagged)
    assert {key_slot(k) for k in keys} == {key_slot(NS.heartbeat)}
    keys, _ = cluster.slot_lookup(NS, cfg, tagged, "tok")
    assert {key_slot(k) for k in keys} == {key_slot(tagged.key)}
    [(keys, args)] = cluster.tag_joins(NS, cfg, tagged)
    assert len({key_slot(k) for k in keys}) == 1 and args[0] == tagged.key
    keys, _ = cluster.slot_fill(NS, tagged, "tok", 0, b"v", "7")
    assert {key_slot(k) for k in keys} == {key_slot(tagged.key)}
