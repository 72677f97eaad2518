"""Each Lua script of cdc_sync/scripts against a real Redis, every reply it can give.

Scripts run under an ACL user allowed exactly the keys the caller declares (``declared_only``), so a script that
touches a key it does not declare fails with NOPERM: the declared KEYS are the keys it touches (what Redis
Cluster needs to route it). The one exception is a tag set's members, found at run time: those tests allow them.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
import redis

from cdc_sync import scripts
from cdc_sync.config import ReaderConfig
from cdc_sync.core.keys import Namespace, glob_escape, key_slot
from cdc_sync.reader import cluster
from cdc_sync.reader.protocol import Lookup
from tests.servers import RedisTarget

NS = Namespace("cdc")
COVERED: set[str] = set()


@pytest.fixture
def acl(r: redis.Redis, redis_server: RedisTarget) -> Iterator[list[str]]:
    """ACL users made by ``declared_only``, deleted at the end."""
    users: list[str] = []
    yield users
    for user in users:
        r.acl_deluser(user)


def run(r: redis.Redis, users: list[str], name: str, keys: Sequence[str], args: Sequence[object]) -> object:
    """Run script ``name`` as a user allowed only ``keys`` (exact names): touching any other key fails."""
    return declared_only(r, users, keys).eval(scripts.source(name), len(keys), *keys, *args)


def declared_only(r: redis.Redis, users: list[str], keys: Sequence[str]) -> redis.Redis:
    user, password = f"t{secrets.token_hex(4)}", secrets.token_hex(8)
    patterns = [f"~{glob_escape(k)}" for k in dict.fromkeys(keys)]
    r.acl_setuser(user, enabled=True, passwords=[f"+{password}"], commands=["+@all"], keys=patterns or None)
    users.append(user)
    kwargs = r.connection_pool.connection_kwargs
    return redis.Redis(host=kwargs["host"], port=kwargs["port"], username=user, password=password)


def names(reply: object) -> list[object]:
    """A table reply with its first element (the reply's name) as text."""
    assert isinstance(reply, list), reply
    return [scripts.reply_name(reply[0]), *reply[1:]]


# ---- apply.lua -------------------------------------------------------------------------------------------


def apply(
    r: redis.Redis, users: list[str], expected: str | None, new: str, ops: list[tuple[str, ...]], **kw: object
) -> list[object]:
    COVERED.add("apply")
    keys = [NS.checkpoint, NS.leader, NS.stats]
    args: list[object] = [expected or "", "1" if expected is not None else "0", new, kw.get("holdoff", 1000)]
    args += [kw.get("token", ""), NS.lease_prefix, NS.inv_prefix]
    extra = list(kw.get("members", []))  # type: ignore[call-overload]
    for op in ops:
        code, *rest = op
        if code == "D":
            keys += (rest[0], NS.lease(rest[0]), NS.inv(rest[0]))
            args.append("D")
        elif code == "J":
            keys += (rest[0], NS.lease(rest[0]))
            args += ("J", rest[1], rest[2])
        elif code == "C":
            args += ("C", rest[0], rest[1])
        elif code == "T":
            keys += (NS.tag(rest[0]), NS.tinv(rest[0]))
            args.append("T")
    allowed = [*keys, *extra, *(NS.lease(m) for m in extra), *(NS.inv(m) for m in extra)]
    return names(declared_only(r, users, allowed).eval(scripts.source("apply"), len(keys), *keys, *args))


def test_apply_ok_applies_the_ops_and_moves_the_checkpoint(r: redis.Redis, acl: list[str]) -> None:
    r.set("k", "old")
    r.set(NS.lease("k"), "tok")
    r.set(NS.lease("j"), "tok")
    assert apply(r, acl, None, "p1", [("D", "k"), ("J", "j", '{"a":1}', "0"), ("C", "s.t:insert", "2")]) == ["OK"]
    assert r.get("k") is None and r.get(NS.lease("k")) is None
    assert 0 < r.pttl(NS.inv("k")) <= 1000
    assert r.get("j") == b'{"a":1}' and r.get(NS.lease("j")) is None
    assert r.hget(NS.stats, "s.t:insert") == b"2"
    assert r.get(NS.checkpoint) == b"p1"


def test_apply_dup_when_the_step_was_applied_already(r: redis.Redis, acl: list[str]) -> None:
    r.set(NS.checkpoint, "p2")
    assert apply(r, acl, "p1", "p2", [("J", "j", "1", "0")]) == ["DUP"]
    assert r.get("j") is None  # (nothing applied twice)


def test_apply_rewind_when_another_checkpoint_is_stored(r: redis.Redis, acl: list[str]) -> None:
    r.set(NS.checkpoint, "p0")
    assert apply(r, acl, "p1", "p2", [("J", "j", "1", "0")]) == ["REWIND", b"p0"]
    assert apply(r, acl, None, "p2", [("J", "j", "1", "0")]) == ["REWIND", b"p0"]
    assert r.get("j") is None and r.get(NS.checkpoint) == b"p0"


def test_apply_lost_when_the_checkpoint_is_gone(r: redis.Redis, acl: list[str]) -> None:
    assert apply(r, acl, "p1", "p2", [("J", "j", "1", "0")]) == ["LOST"]
    assert r.get("j") is None and r.get(NS.checkpoint) is None


def test_apply_fenced_when_another_worker_holds_the_lease(r: redis.Redis, acl: list[str]) -> None:
    r.set(NS.leader, "them")
    assert apply(r, acl, None, "p1", [("J", "j", "1", "0")], token="me") == ["FENCED"]
    assert r.get("j") is None and r.get(NS.checkpoint) is None
    r.set(NS.leader, "me")
    assert apply(r, acl, None, "p1", [("J", "j", "1", "0")], token="me") == ["OK"]


def test_apply_tag_eviction_evicts_members_and_holds_the_tag_off(r: redis.Redis, acl: list[str]) -> None:
    r.sadd(NS.tag("s.t:a=1"), "m1", "m2")
    r.set("m1", "v")
    r.set(NS.lease("m2"), "tok")
    assert apply(r, acl, None, "p1", [("T", "s.t:a=1")], members=["m1", "m2"]) == ["OK"]
    assert r.exists("m1", NS.lease("m2"), NS.tag("s.t:a=1")) == 0
    assert r.exists(NS.inv("m1"), NS.inv("m2"), NS.tinv("s.t:a=1")) == 3


# ---- evict_tags.lua, flush_step.lua ----------------------------------------------------------------------


def evict_tags(r: redis.Redis, users: list[str], tags: list[str], members: list[str], **kw: str) -> list[object]:
    COVERED.add("evict_tags")
    keys = [NS.leader, NS.operator, *(k for t in tags for k in (NS.tag(t), NS.tinv(t)))]
    args = [kw.get("token", ""), kw.get("operator", ""), 500, NS.lease_prefix, NS.inv_prefix]
    allowed = [*keys, *members, *(NS.lease(m) for m in members), *(NS.inv(m) for m in members)]
    return names(declared_only(r, users, allowed).eval(scripts.source("evict_tags"), len(keys), *keys, *args))


def test_evict_tags_ok_fenced_lock_lost(r: redis.Redis, acl: list[str]) -> None:
    r.sadd(NS.tag("s.t"), "m1", "m2")
    r.sadd(NS.tag("s.t:b=2"), "m3")
    r.set(NS.leader, "them")
    assert evict_tags(r, acl, ["s.t"], ["m1", "m2"], token="me") == ["FENCED"]
    r.set(NS.operator, "other command")
    assert evict_tags(r, acl, ["s.t"], ["m1", "m2"], operator="mine") == ["LOCK_LOST"]
    assert r.scard(NS.tag("s.t")) == 2
    assert evict_tags(r, acl, ["s.t", "s.t:b=2"], ["m1", "m2", "m3"]) == ["OK", 3]
    assert r.exists(NS.tag("s.t"), NS.tag("s.t:b=2")) == 0 and r.exists(NS.inv("m3"), NS.tinv("s.t:b=2")) == 2


def flush_step(r: redis.Redis, users: list[str], op: str, keys: list[str], ms: int = 0, **kw: str) -> list[object]:
    COVERED.add("flush_step")
    all_keys = [NS.leader, NS.operator, *keys]
    return names(run(r, users, "flush_step", all_keys, [kw.get("token", ""), kw.get("operator", ""), op, ms]))


def test_flush_step_marks_bump_epochs_and_release(r: redis.Redis, acl: list[str]) -> None:
    marker, epoch = NS.flushing("s.t"), NS.schema("s.t")
    r.set(epoch, "99999999999999999")  # an epoch past Redis's clock: the bump goes one past it
    assert flush_step(r, acl, "hold", [marker, epoch]) == ["OK", 1]
    assert r.pttl(marker) == -1 and r.get(epoch) == b"100000000000000000"
    assert flush_step(r, acl, "mark", [marker, epoch], 5000) == ["OK", 1]
    assert r.pttl(marker) == -1  # (a mark never shortens a held one)
    assert flush_step(r, acl, "unmark", [marker], 300) == ["OK", 1]
    assert r.pttl(marker) == -1  # (the worker's unmark leaves a held one)
    assert flush_step(r, acl, "release", [marker], 300) == ["OK", 1]
    assert 0 < r.pttl(marker) <= 300
    r.set("a", "1")
    assert flush_step(r, acl, "unlink", ["a", "b"]) == ["OK", 1]


def test_flush_step_refused_when_fenced_or_the_lock_is_lost(r: redis.Redis, acl: list[str]) -> None:
    r.set(NS.leader, "them")
    r.set(NS.operator, "theirs")
    r.set("a", "1")
    assert flush_step(r, acl, "unlink", ["a"], token="me") == ["FENCED"]
    assert flush_step(r, acl, "unlink", ["a"], operator="mine") == ["LOCK_LOST"]
    assert r.get("a") == b"1"


# ---- heartbeat.lua, set_checkpoint.lua, operator_lock.lua -------------------------------------------------


def test_heartbeat_moves_forward_only_while_the_checkpoint_is_ours(r: redis.Redis, acl: list[str]) -> None:
    COVERED.add("heartbeat")
    keys = [NS.checkpoint, NS.heartbeat, NS.leader]
    r.set(NS.checkpoint, "p1")
    assert run(r, acl, "heartbeat", keys, ["p1", 2000, ""]) == 1
    assert run(r, acl, "heartbeat", keys, ["p1", 1000, ""]) == 1
    assert r.get(NS.heartbeat) == b"2000"  # (never back)
    assert run(r, acl, "heartbeat", keys, ["p0", 3000, ""]) == 0  # the checkpoint moved: another's
    r.set(NS.leader, "them")
    assert run(r, acl, "heartbeat", keys, ["p1", 3000, "me"]) == 0
    assert r.get(NS.heartbeat) == b"2000"


def test_set_checkpoint_drops_the_heartbeat_unless_the_lock_is_lost(r: redis.Redis, acl: list[str]) -> None:
    COVERED.add("set_checkpoint")
    keys = [NS.checkpoint, NS.heartbeat, NS.operator]
    r.set(NS.heartbeat, "5")
    r.set(NS.operator, "theirs")
    assert run(r, acl, "set_checkpoint", keys, ["p9", "mine"]) == 0
    assert r.get(NS.heartbeat) == b"5"
    assert run(r, acl, "set_checkpoint", keys, ["p9", ""]) == 1
    assert r.get(NS.checkpoint) == b"p9" and r.get(NS.heartbeat) is None


def test_operator_lock_extends_and_releases_only_its_own(r: redis.Redis, acl: list[str]) -> None:
    COVERED.add("operator_lock")
    r.set(NS.operator, "mine", px=1000)
    assert run(r, acl, "operator_lock", [NS.operator], ["theirs", 60000]) == 0
    assert run(r, acl, "operator_lock", [NS.operator], ["mine", 60000]) == 1
    assert r.pttl(NS.operator) > 1000
    assert run(r, acl, "operator_lock", [NS.operator], ["mine", 0]) == 1
    assert r.get(NS.operator) is None


# ---- lease_acquire.lua, lease_renew.lua, release.lua, status_refresh.lua ----------------------------------


def test_leader_lease_acquire_renew_release(r: redis.Redis, acl: list[str]) -> None:
    COVERED.update({"lease_acquire", "lease_renew", "release"})
    assert run(r, acl, "lease_acquire", [NS.leader, NS.fence], ["a", 5000]) == 1
    assert run(r, acl, "lease_acquire", [NS.leader, NS.fence], ["b", 5000]) == 0
    assert run(r, acl, "lease_renew", [NS.leader], ["b", 5000]) == 0
    assert run(r, acl, "lease_renew", [NS.leader], ["a", 9000]) == 1 and r.pttl(NS.leader) > 5000
    assert run(r, acl, "release", [NS.leader], ["b"]) == 0
    assert run(r, acl, "release", [NS.leader], ["a"]) == 1
    assert run(r, acl, "lease_acquire", [NS.leader, NS.fence], ["b", 5000]) == 2  # the next fence number


def test_status_refresh_stamps_with_redis_time(r: redis.Redis, acl: list[str]) -> None:
    COVERED.add("status_refresh")
    stamp = run(r, acl, "status_refresh", [NS.workers], ["w1", '{"state":"streaming"}', 1000])
    seconds, micros = r.time()
    assert isinstance(stamp, int) and 0 <= seconds * 1000 + micros // 1000 - stamp < 5000
    assert b'"last_seen_ms"' in r.hget(NS.workers, "w1")  # type: ignore[operator]


# ---- lookup.lua, fill.lua --------------------------------------------------------------------------------

TABLE = "s.t"
FINGERPRINT = "rule v1"
DIGEST = hashlib.sha1(FINGERPRINT.encode()).hexdigest()


def _lookup(**kw: object) -> Lookup:
    fields: dict[str, object] = {"key": "k:1", "fmt": "j", "tables": (TABLE,), "tags": (), "ttl_ms": 0}
    fields["digests"] = (DIGEST,)
    fields.update(kw)
    return Lookup(**fields)  # type: ignore[arg-type]


def lookup(r: redis.Redis, users: list[str], lk: Lookup, token: str = "tok") -> list[object]:
    COVERED.add("lookup")
    keys, args = lk.lookup_args(NS, ReaderConfig(max_staleness_ms=2000, lease_ttl_ms=3000), token)
    return names(run(r, users, "lookup", keys, args))


def fill(r: redis.Redis, users: list[str], lk: Lookup, value: bytes, token: str = "tok") -> str:
    COVERED.add("fill")
    keys, args = lk.fill_args(NS, token, 0, value)
    return scripts.reply_name(run(r, users, "fill", keys, args))


def _fresh(r: redis.Redis) -> None:
    seconds, micros = r.time()
    r.set(NS.heartbeat, seconds * 1000 + micros // 1000)
    r.hset(NS.rules, TABLE, FINGERPRINT)


def test_lookup_hit(r: redis.Redis, acl: list[str]) -> None:
    _fresh(r)
    r.set("k:1", '{"id":1}')
    reply = lookup(r, acl, _lookup())
    assert reply[:2] == ["HIT", b'{"id":1}'] and 0 < int(reply[2]) <= 2000  # type: ignore[call-overload]


def test_lookup_bypasses(r: redis.Redis, acl: list[str]) -> None:
    assert lookup(r, acl, _lookup()) == ["BYPASS", b"no_heartbeat"]
    r.set(NS.heartbeat, 1)
    assert lookup(r, acl, _lookup()) == ["BYPASS", b"stale"]
    _fresh(r)
    r.set(NS.flushing(TABLE), "1")
    assert lookup(r, acl, _lookup()) == ["BYPASS", b"flushing"]
    r.delete(NS.flushing(TABLE))
    r.hset(NS.rules, TABLE, "another rule")
    assert lookup(r, acl, _lookup()) == ["BYPASS", b"rule_mismatch", TABLE.encode()]
    _fresh(r)
    assert lookup(r, acl, _lookup(epochs=("7",))) == ["BYPASS", b"schema_changed", TABLE.encode()]
    r.set(NS.inv("k:1"), "1")
    assert lookup(r, acl, _lookup()) == ["BYPASS", b"holdoff"]
    r.delete(NS.inv("k:1"))
    r.set(NS.tinv("s.t:a=1"), "1")
    assert lookup(r, acl, _lookup(tags=("s.t:a=1",))) == ["BYPASS", b"holdoff"]
    assert r.get(NS.lease("k:1")) is None


def test_lookup_lease_then_wait_then_fill(r: redis.Redis, acl: list[str]) -> None:
    _fresh(r)
    r.set(NS.schema(TABLE), "42")
    lk = _lookup(tags=("s.t:a=1",))
    assert lookup(r, acl, lk, "tok") == ["LEASE", b"42"]
    assert r.smembers(NS.tag("s.t:a=1")) == {b"k:1"}  # joined its tag before loading
    assert lookup(r, acl, lk, "other") == ["WAIT"]
    assert fill(r, acl, lk, b'{"id":1}', "other") == "LOST"  # not its lease
    assert fill(r, acl, lk, b'{"id":1}', "tok") == "STORED"
    assert r.get("k:1") == b'{"id":1}' and r.get(NS.lease("k:1")) is None


def test_fill_lost_refused_rule_and_schema(r: redis.Redis, acl: list[str]) -> None:
    _fresh(r)
    lk = _lookup()
    assert fill(r, acl, lk, b"1") == "LOST"  # no lease: a change deleted it
    r.set(NS.lease("k:1"), "tok")
    r.set(NS.flushing(TABLE), "1")
    assert fill(r, acl, lk, b"1") == "LOST"  # a flush runs
    r.delete(NS.flushing(TABLE))
    r.set(NS.lease("k:1"), "tok")
    r.hset(NS.rules, TABLE, "another rule")
    assert fill(r, acl, lk, b"1") == "RULE_MISMATCH"
    _fresh(r)
    r.set(NS.lease("k:1"), "tok")
    assert fill(r, acl, _lookup(epochs=("3",)), b"1") == "SCHEMA_CHANGED"
    assert r.get("k:1") is None


def test_stamped_fill_and_hit(r: redis.Redis, acl: list[str]) -> None:
    _fresh(r)
    r.set(NS.schema(TABLE), "5")
    lk = _lookup(key="f:1", stamped=True)
    assert lookup(r, acl, lk) == ["LEASE", b"5"]
    assert fill(r, acl, lk, b"[1]") == "STORED"
    assert r.get(NS.stamp("f:1")) == b"5"
    assert lookup(r, acl, lk)[0] == "HIT"
    r.set(NS.schema(TABLE), "6")  # a flush bumped the epoch: the stamped value is no hit
    assert lookup(r, acl, lk, "t2") == ["LEASE", b"6"]


# ---- slot_apply.lua, tag_take.lua, heartbeat.lua's slot record (a cluster's scripts, on one node) ---------------

CNS = Namespace("cdc", cluster=True)


def slot_apply(
    r: redis.Redis, users: list[str], slot: int, expected: str | None, new: str, key: str, fence: str = ""
) -> list[object]:
    COVERED.add("slot_apply")
    keys = [CNS.slot_checkpoint(slot), CNS.slot_fence(slot), key, CNS.lease(key), CNS.inv(key)]
    args = [expected or "", "1" if expected is not None else "0", new, 500, fence, "D"]
    return names(run(r, users, "slot_apply", keys, args))


def test_slot_apply_replies(r: redis.Redis, acl: list[str]) -> None:
    r.set("u:1", "v")
    assert slot_apply(r, acl, 7, None, "p1", "u:1") == ["OK"]
    assert r.get("u:1") is None and r.get(CNS.slot_checkpoint(7)) == b"p1" and r.exists(CNS.inv("u:1"))
    assert slot_apply(r, acl, 7, None, "p1", "u:1") == ["DUP"]
    assert slot_apply(r, acl, 7, "p0", "p2", "u:1") == ["REWIND", b"p1"]
    assert slot_apply(r, acl, 8, "p0", "p2", "u:1") == ["LOST"]
    assert slot_apply(r, acl, 7, "p1", "p2", "u:1", fence="3") == ["OK"]
    assert r.get(CNS.slot_fence(7)) == b"3"
    r.set("u:1", "w")
    assert slot_apply(r, acl, 7, "p2", "p3", "u:1", fence="2") == ["FENCED"]  # an older term
    assert r.get("u:1") == b"w" and r.get(CNS.slot_checkpoint(7)) == b"p2"


def test_slot_fence_only_rises(r: redis.Redis, acl: list[str]) -> None:
    COVERED.add("slot_fence")
    assert run(r, acl, "slot_fence", [CNS.slot_fence(5)], [4]) == 1 and r.get(CNS.slot_fence(5)) == b"4"
    assert run(r, acl, "slot_fence", [CNS.slot_fence(5)], [3]) == 1 and r.get(CNS.slot_fence(5)) == b"4"
    assert slot_apply(r, acl, 5, None, "p1", "u:5", fence="3") == ["FENCED"]  # an older term, claimed before it wrote


def test_tag_take_holds_the_tag_off_and_keeps_the_members(r: redis.Redis, acl: list[str]) -> None:
    COVERED.add("tag_take")
    tag, tinv = CNS.tag("s.t:a=1"), CNS.tinv("s.t:a=1")
    r.sadd(tag, "m1", "m2")
    assert sorted(run(r, acl, "tag_take", [tag, tinv], [300])) == [b"m1", b"m2"]  # type: ignore[type-var]
    assert 0 < r.pttl(tinv) <= 300 and r.scard(tag) == 2  # (the caller removes them once evicted)


def test_heartbeat_records_slot_checkpoints_with_the_beat(r: redis.Redis, acl: list[str]) -> None:
    keys = [CNS.checkpoint, CNS.heartbeat, CNS.leader, CNS.slots]
    r.set(CNS.checkpoint, "p5")
    assert run(r, acl, "heartbeat", keys, ["p5", 100, "", 7, "p4", 9, "p5"]) == 1
    assert r.hgetall(CNS.slots) == {b"7": b"p4", b"9": b"p5"} and r.get(CNS.heartbeat) == b"100"
    assert run(r, acl, "heartbeat", keys, ["p0", 200, "", 7, "p9"]) == 0  # refused: nothing recorded
    assert r.hget(CNS.slots, "7") == b"p4"
    every: list[object] = [x for slot in range(16384) for x in (slot, "p5")]  # (after a step touching every slot)
    assert run(r, acl, "heartbeat", keys, ["p5", 300, "", *every]) == 1  # (more than Lua's unpack takes at once)
    assert r.hlen(CNS.slots) == 16384 and r.get(CNS.heartbeat) == b"300"


# ---- gate.lua, slot_lookup.lua, tag_join.lua, slot_fill.lua (a cluster reader's scripts, on one node) -----------


def _cluster_call(r: redis.Redis, users: list[str], name: str, call: tuple[list[str], list[object]]) -> object:
    COVERED.add(name)
    return run(r, users, name, *call)


def test_gate_replies(r: redis.Redis, acl: list[str]) -> None:
    cfg = ReaderConfig(max_staleness_ms=2000)
    lk = _lookup(key="k:1")
    assert names(_cluster_call(r, acl, "gate", cluster.gate(CNS, cfg, lk)))[0] == "no_heartbeat"
    seconds, micros = r.time()
    r.set(CNS.heartbeat, seconds * 1000 + micros // 1000)
    r.hset(CNS.rules, TABLE, FINGERPRINT)
    r.hset(CNS.slots, str(key_slot("k:1")), "p7")
    r.set(CNS.schema(TABLE), "4")
    status, fresh, _hb, recorded, why, table, epoch = names(_cluster_call(r, acl, "gate", cluster.gate(CNS, cfg, lk)))
    assert (status, recorded, why, table, epoch) == ("OK", b"p7", b"", b"", b"4") and 0 < int(fresh) <= 2000  # type: ignore[call-overload]
    assert names(_cluster_call(r, acl, "gate", cluster.gate(CNS, cfg, _lookup(epochs=("3",)))))[4] == b"schema_changed"
    r.hset(CNS.rules, TABLE, "another rule")
    assert names(_cluster_call(r, acl, "gate", cluster.gate(CNS, cfg, lk)))[4:6] == [b"rule_mismatch", TABLE.encode()]
    r.set(CNS.flushing(TABLE), "1")
    assert names(_cluster_call(r, acl, "gate", cluster.gate(CNS, cfg, lk)))[0] == "flushing"


def test_slot_lookup_tag_join_and_slot_fill(r: redis.Redis, acl: list[str]) -> None:
    cfg = ReaderConfig(lease_ttl_ms=3000)
    lk = _lookup(key="k:1", tags=("s.t:a=1",), ttl_ms=60000)
    r.set(CNS.slot_checkpoint(key_slot("k:1")), "p3")
    assert names(_cluster_call(r, acl, "slot_lookup", cluster.slot_lookup(CNS, cfg, lk, "tok"))) == ["LEASE", b"p3"]
    assert names(_cluster_call(r, acl, "slot_lookup", cluster.slot_lookup(CNS, cfg, lk, "other"))) == ["WAIT"]
    [join] = cluster.tag_joins(CNS, cfg, lk)
    assert _cluster_call(r, acl, "tag_join", join) == 1 and r.smembers(CNS.tag("s.t:a=1")) == {b"k:1"}
    assert 0 < r.pttl(CNS.tag("s.t:a=1")) <= 63000
    r.set(CNS.tinv("s.t:a=1"), "1")
    assert _cluster_call(r, acl, "tag_join", join) == 0  # held off
    stamped = replace(lk, stamped=True)
    assert (
        scripts.reply_name(_cluster_call(r, acl, "slot_fill", cluster.slot_fill(CNS, stamped, "x", 0, b"1", "4")))
        == "LOST"
    )
    assert (
        scripts.reply_name(_cluster_call(r, acl, "slot_fill", cluster.slot_fill(CNS, stamped, "tok", 0, b"1", "4")))
        == "STORED"
    )
    assert r.get("k:1") == b"1" and r.get(CNS.stamp("k:1")) == b"4" and r.get(CNS.lease("k:1")) is None
    wide = replace(lk, key="k:wide", fmt="h")  # a hash of 4096 columns: more than Lua's unpack takes at once
    r.set(CNS.lease("k:wide"), "tok")
    fields = [x for i in range(4096) for x in (f"c{i}", str(i))]
    filled = _cluster_call(r, acl, "slot_fill", cluster.slot_fill(CNS, wide, "tok", 0, fields, ""))
    assert scripts.reply_name(filled) == "STORED" and r.hlen("k:wide") == 4096 and r.hget("k:wide", "c4095") == b"4095"
    hit = names(_cluster_call(r, acl, "slot_lookup", cluster.slot_lookup(CNS, cfg, stamped, "t")))
    assert hit == ["HIT", b"1", b"p3", b"4"]
    r.delete("k:1")
    r.set(CNS.inv("k:1"), "1")
    assert names(_cluster_call(r, acl, "slot_lookup", cluster.slot_lookup(CNS, cfg, lk, "t"))) == ["BYPASS", b"holdoff"]


def test_every_script_is_tested() -> None:
    """Runs last in this file (pytest keeps file order): each .lua file but the shared part was run above."""
    assert set(scripts.names()) - {"evict_tag", "apply_op", "checkpoint_cas", "hset_args"} == COVERED


def test_an_undeclared_key_is_refused(r: redis.Redis, acl: list[str]) -> None:
    """The check itself can fail: a script touching a key it does not declare is refused."""
    client = declared_only(r, acl, ["a"])
    with pytest.raises(redis.ResponseError, match=r"No permissions|NOPERM|can't access"):
        client.eval("return redis.call('GET', 'b')", 1, "a")
