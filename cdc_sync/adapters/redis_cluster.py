"""The Redis side on a Redis Cluster: the apply step per slot, each slot with its own checkpoint.

Every script declares its keys and touches one slot (keys.Namespace(cluster=True) lays them out):

* **Apply.** A batch's data operations are grouped by slot; each slot's group runs as one ``slot_apply.lua`` with
  that slot's checkpoint (compare-and-set, as on one node) and fence, all the slots' scripts pipelined (redis-py's
  cluster pipeline: one round trip per node, MOVED/ASK/TRYAGAIN retried). Then the *home step* (``apply.lua`` on the
  namespace's home slot, with only the stats counts) moves the home checkpoint: every slot has everything up to it.
  A slot whose checkpoint already reached a transaction skips it (a replay after a crash, or after one slot lost
  writes); every other slot applies it.
* **Loss.** A primary that fails over and loses writes shows an older (or no) checkpoint in its slots: that slot's
  script replies REWIND or LOST, the sink reads every slot's checkpoint again and the worker resumes from the oldest
  (``RewindRequired``), each slot skipping what it has; other slots are not rewritten.
* **Tags.** A tag set sits in one slot and its members in many: ``tag_take.lua`` holds the tag's fills off and reads
  its members, each member is deleted in its own slot's script (with its lease, leaving its hold-off marker), then
  just those members leave the set (SREM). A crash in between leaves them in the set: the replay evicts them again.
  A replay leaves alone the members whose slots have the step already (neither deleted nor taken out of the set).
* **Heartbeat.** On the home slot, with the checkpoint of each slot written since the last one (``<ns>:{<ns>}:slots``):
  a reader trusts a slot's key only while the slot's own checkpoint has reached what the heartbeat recorded.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis
import redis.cluster

from cdc_sync import logs, scripts
from cdc_sync import metrics as m
from cdc_sync.adapters.redis import (
    REDIS_ERRORS,
    RedisSink,
    client_kwargs,
    cluster_eval,
    encode_ops,
    redis_error,
)
from cdc_sync.config import RedisConfig
from cdc_sync.core.events import RedisMemory
from cdc_sync.core.keys import SLOTS, Namespace, key_slot
from cdc_sync.core.planner import Count, Delete, EvictTag, RedisOp
from cdc_sync.core.positions import reached
from cdc_sync.errors import Fenced, PositionError, RewindRequired

log = logs.get("cdc_sync.redis_cluster")

Ops = tuple[list[str], list[bytes | str | int]]  # a slot's KEYS and ARGV tail


def make_cluster_client(cfg: RedisConfig, **pool: Any) -> redis.RedisCluster:
    """A redis-py cluster client seeded by the url's node (it learns the others, and follows slot moves)."""
    return redis.RedisCluster.from_url(cfg.url, **client_kwargs(cfg), **pool)


def make_sink(cfg: RedisConfig, holdoff_ms: int) -> RedisSink:
    """The sink for ``cfg``: one Redis (or a Sentinel's master), or a cluster."""
    return ClusterSink(cfg, holdoff_ms) if cfg.cluster else RedisSink(cfg, holdoff_ms)


class ClusterSink(RedisSink):
    """RedisSink for a Redis Cluster (see the module docstring)."""

    def __init__(self, cfg: RedisConfig, holdoff_ms: int, client: redis.RedisCluster | None = None) -> None:
        cluster = client if client is not None else make_cluster_client(cfg)
        super().__init__(cfg, holdoff_ms, client=cluster)  # type: ignore[arg-type]
        self.cluster = cluster
        self.keys = Namespace(cfg.namespace, cluster=True)
        self.fence: int | None = None  # HA: this leadership term's fence number (slot_apply.lua's fence)
        self.slot_checkpoints: dict[int, str] = {}  # what each written slot holds, as this worker knows it
        self._unvouched: dict[int, str] = {}  # slots written since the last heartbeat (recorded with the next)
        self._lock = threading.Lock()
        self._epoch: str | None = None  # the cluster's current epoch when slots were last known to be whole
        self._suspect = False  # a step failed to reach a node: its slots are checked at the next step
        self._next_check = 0.0
        self._slot_apply = self.cluster.register_script(scripts.source("slot_apply"))
        self._tag_take = self.cluster.register_script(scripts.source("tag_take"))
        self._slot_fence = self.cluster.register_script(scripts.source("slot_fence"))

    def _pipe(self) -> Any:
        """A cluster pipeline: commands grouped by node, one round trip each; MOVED, ASK and TRYAGAIN retried."""
        return self.cluster.pipeline(transaction=False)  # type: ignore[no-untyped-call]

    # ---- checkpoints ---------------------------------------------------------------------------------

    def load_checkpoint(self) -> str | None:
        """Where to resume: the oldest of the home checkpoint and every slot's (each slot then skips what it has).
        None when Redis holds none at all; RewindRequired(None) (the checkpoint is lost) when they cannot be
        ordered, or slots hold checkpoints while the home slot holds none."""
        if self.fence is not None:
            self._fence_slots(self.fence)
        home = super().load_checkpoint()
        if home is None:
            if self._read_slot_checkpoints():
                raise RewindRequired(None)
            return None
        return self._resume_from(home)

    def _resume_from(self, home: str) -> str:
        """Read every slot's checkpoint again and return the oldest of them and the home one (``home``). When a
        slot is behind the home checkpoint, the home checkpoint is moved back to it first (a compare-and-set from
        ``home``): the worker's steps from there must find it where they resume, or the home step's REWIND would
        send the worker forward again, past what that slot lost."""
        self.slot_checkpoints = self._read_slot_checkpoints()
        oldest = self._oldest([home, *self.slot_checkpoints.values()])
        if oldest != home:
            super().apply([], home, oldest)
            log.warning("redis.home_checkpoint_moved_back", stored=home, to=oldest, why="a slot is behind it")
        return oldest

    def _fence_slots(self, fence: int) -> None:
        """HA: this term claims every slot (``slot_fence.lua``) before it reads where to resume, so a leader of an
        older term that wakes up is refused in each slot it would write (FENCED), and steps down. All 16384 calls
        go at once (``cluster_eval``: packed per node, and a slot that moved meanwhile is followed)."""
        calls = [(self._slot_fence, [self.keys.slot_fence(slot)], [fence]) for slot in range(SLOTS)]
        self._call("fence slots", self._run_scripts, calls)
        log.info("redis.slots_fenced", fence=fence, slots=SLOTS)

    def _read_slot_checkpoints(self) -> dict[int, str]:
        names: list[bytes] = []
        for page in self._scan(self.keys.slot_checkpoint_pattern):
            names.extend(page)
        if not names:
            return {}
        pipe = self._pipe()
        for name in names:
            pipe.get(name)
        values = self._call("GET slot checkpoints", pipe.execute)
        return {key_slot(n): v.decode() for n, v in zip(names, values, strict=True) if v is not None}

    @staticmethod
    def _oldest(positions: Sequence[str]) -> str:
        """The position every other one has reached; RewindRequired(None) when there is none (another lineage)."""
        try:
            for candidate in positions:
                if all(reached(other, candidate) for other in positions):
                    return candidate
        except PositionError:
            pass
        raise RewindRequired(None)

    def set_checkpoint(self, position: str) -> None:
        """Replace the checkpoint (``checkpoint set``): the home one; every slot's goes, and so does what the
        heartbeat recorded of them (a slot's checkpoint must never claim what the new position does not, and a
        recorded one must not keep a slot's keys bypassed)."""
        super().set_checkpoint(position)  # (the heartbeat goes with it: readers bypass until the worker vouches again)
        self._call("DEL slots", self.cluster.delete, self.keys.slots)  # (what it recorded is the old position's)
        for page in self._scan(self.keys.slot_checkpoint_pattern):
            self._unlink(page)
        self.slot_checkpoints.clear()

    # ---- the apply step ------------------------------------------------------------------------------

    def apply(self, ops: Sequence[RedisOp], expected: str | None, new: str) -> bool:
        self._check_slots()
        data: list[RedisOp] = []
        home: list[RedisOp] = []
        tags: list[str] = []
        for op in ops:
            if isinstance(op, Count):
                home.append(op)
            elif isinstance(op, EvictTag):
                tags.append(op.suffix)
            else:
                data.append(op)
        members = self._take_tags(tags) if tags else {}
        # A member whose slot has this step already (a replay) is neither deleted nor released: a reader may
        # have filled it since, under the tag, and the next change of the tag must still find it in the set.
        members = {
            suffix: kept
            for suffix, names in members.items()
            if (kept := [name for name in names if not self._has(key_slot(name), new)])
        }
        data += [Delete(m) for members_of in members.values() for m in members_of]
        self._apply_slots(data, new)
        if members:
            self._release_tags(members)
        return self._home_step(home, expected, new)

    def _apply_slots(self, data: Sequence[RedisOp], new: str) -> None:
        groups: dict[int, list[RedisOp]] = {}
        for op in data:
            groups.setdefault(key_slot(op.key), []).append(op)  # type: ignore[union-attr]
        todo = {slot: ops for slot, ops in groups.items() if not self._has(slot, new)}
        if not todo:
            return
        calls = []
        for slot, ops in todo.items():
            op_keys, op_args = encode_ops(self.keys, ops, slot)
            stored = self.slot_checkpoints.get(slot)
            keys = [self.keys.slot_checkpoint(slot), self.keys.slot_fence(slot), *op_keys]
            args: list[bytes | str | int] = [stored or "", "1" if stored is not None else "0", new, self.holdoff_ms]
            args += [str(self.fence) if self.fence is not None else "", *op_args]
            calls.append((self._slot_apply, keys, args))
        replies = self._call("apply", self._run_scripts, calls)
        refused: list[tuple[int, Any]] = []
        for slot, reply in zip(todo, replies, strict=True):
            status = scripts.reply_name(reply[0])
            if status in (scripts.OK, scripts.DUP):
                self._applied(slot, new)
            else:
                refused.append((slot, reply))
        if refused:
            self._refused(refused)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._call(what, fn, *args, **kwargs)
        except Exception:
            self._suspect = True  # (a node away may come back as another: a failover, a restart from a snapshot)
            raise

    def _check_slots(self) -> None:
        """At most once a second (every step, the server heartbeat's empty ones too): when the cluster's epoch moved
        (a failover, a slot moved) or a step failed to reach a node, read every slot's checkpoint again. A slot
        holding another than this worker wrote lost writes (or another worker wrote it): the worker resumes from
        the oldest (RewindRequired), whether or not a change touches that slot soon."""
        now = time.monotonic()
        if now < self._next_check and not self._suspect:
            return
        self._next_check = now + 1.0
        node = self.cluster.get_node_from_key(self.keys.checkpoint)  # type: ignore[no-untyped-call]
        text = self._call("CLUSTER INFO", self.cluster.execute_command, "CLUSTER INFO", target_nodes=node)
        info = (
            text
            if isinstance(text, dict)
            else dict(
                line.split(":", 1)
                for line in str(text.decode() if isinstance(text, bytes) else text).splitlines()
                if ":" in line
            )
        )
        epoch = str(info.get("cluster_current_epoch", ""))
        suspect, self._suspect = self._suspect, False
        if self._epoch is not None and epoch == self._epoch and not suspect:
            return
        first, self._epoch = self._epoch is None, epoch
        if first and not suspect:
            return
        stored = self._read_slot_checkpoints()
        lost = [
            (slot, [b"LOST" if stored.get(slot) is None else b"REWIND"])
            for slot, position in self.slot_checkpoints.items()
            if stored.get(slot) != position
        ]
        m.REDIS_TOPOLOGY_CHECKS.labels(outcome="lost" if lost else "whole").inc()
        log.info(
            "redis.slots_checked",
            epoch=epoch,
            reason="a step failed" if suspect else "the epoch moved",
            slots=len(stored),
            lost=len(lost),
        )
        if lost:
            self._refused(lost)

    def _has(self, slot: int, new: str) -> bool:
        """Whether the slot's checkpoint has reached ``new`` already (a replay: skipped there)."""
        stored = self.slot_checkpoints.get(slot)
        return stored is not None and _reached(stored, new)

    def _applied(self, slot: int, position: str) -> None:
        with self._lock:
            self.slot_checkpoints[slot] = position
            self._unvouched[slot] = position

    def _refused(self, refused: Sequence[tuple[int, Any]]) -> None:
        """Some slots' checkpoints are not what this worker wrote: fenced, or writes lost (a failover, a restart)
        or made by another worker. Every slot's checkpoint is read again, and the worker resumes from the oldest."""
        if any(scripts.reply_name(reply[0]) == scripts.FENCED for _, reply in refused):
            raise Fenced("another worker holds the leader lease (a slot was written in a later term)")
        detail = {slot: scripts.reply_name(reply[0]) for slot, reply in refused[:10]}
        log.error("redis.slot_checkpoint_mismatch", slots=detail, count=len(refused), action="resume from the oldest")
        home = super().load_checkpoint()
        if home is None:
            raise RewindRequired(None)
        raise RewindRequired(self._resume_from(home))

    def _home_step(self, counts: Sequence[RedisOp], expected: str | None, new: str) -> bool:
        """apply.lua on the home slot with only the counts: the home checkpoint's compare-and-set (and HA's
        leader check). When the home checkpoint is another (``checkpoint set``, another worker), the slots'
        checkpoints are read again too, so the replay that follows skips only what each slot really holds."""
        try:
            return super().apply(counts, expected, new)
        except RewindRequired as exc:
            if exc.stored is None:
                self.slot_checkpoints = self._read_slot_checkpoints()
                raise
            raise RewindRequired(self._resume_from(exc.stored)) from None

    def _run_scripts(self, calls: Sequence[tuple[Any, Sequence[str], Sequence[bytes | str | int]]]) -> list[Any]:
        return cluster_eval(self.cluster, calls)

    # ---- tags ----------------------------------------------------------------------------------------

    def _take_tags(self, suffixes: Sequence[str]) -> dict[str, list[str]]:
        calls = [(self._tag_take, [self.keys.tag(s), self.keys.tinv(s)], [self.holdoff_ms]) for s in suffixes]
        replies = self._call("tag take", self._run_scripts, calls)
        return {s: [m.decode() for m in r] for s, r in zip(suffixes, replies, strict=True) if r}

    def _release_tags(self, members: Mapping[str, Sequence[str]]) -> None:
        pipe = self._pipe()
        for suffix, names in members.items():
            pipe.srem(self.keys.tag(suffix), *names)
        self._call("tag release", pipe.execute)

    def _evict_tags(self, suffixes: Sequence[str]) -> int:
        """A flush's eviction of tag sets, fenced like a flush step: members deleted in their slots with their
        leases, held off."""
        super()._step("release", [], 0)  # (refused once the lease or the operator lock is another's)
        members = self._take_tags(suffixes)
        names = [m for ms in members.values() for m in ms]
        pipe = self._pipe()
        for name in names:
            pipe.execute_command("DEL", name, self.keys.lease(name))  # (no multi-key delete() in a cluster pipeline)
            if self.holdoff_ms > 0:
                pipe.set(self.keys.inv(name), "1", px=self.holdoff_ms)
        if names:
            self._call("evict members", pipe.execute)
        self._release_tags(members)
        return len(names)

    # ---- the heartbeat -------------------------------------------------------------------------------

    def set_heartbeat(self, ms: int, expected: str) -> bool:
        with self._lock:
            unvouched, self._unvouched = self._unvouched, {}
        keys = [self.keys.checkpoint, self.keys.heartbeat, self.keys.leader, self.keys.slots]
        args: list[str | int] = [expected, ms, self.leader_token or ""]
        for slot, position in unvouched.items():
            args += (slot, position)
        try:
            moved = bool(self._call("heartbeat", self._beat, keys=keys, args=args))
        except BaseException:
            with self._lock:  # (recorded with the next one)
                self._unvouched = {**unvouched, **self._unvouched}
            raise
        if not moved:
            with self._lock:
                self._unvouched = {**unvouched, **self._unvouched}
        return moved

    # ---- flushes and scans across the nodes ------------------------------------------------------------

    def _scan(self, pattern: str) -> Iterator[list[bytes]]:
        """SCAN every primary, in pages."""
        page: list[bytes] = []
        try:
            for key in self.cluster.scan_iter(match=pattern, count=1000):
                page.append(key)
                if len(page) >= 1000:
                    yield page
                    page = []
        except REDIS_ERRORS as exc:
            raise redis_error(exc, "SCAN") from exc
        if page:
            yield page

    def _unlink(self, keys: Sequence[bytes | str]) -> int:
        """UNLINK keys of any slots (deleting a cached key is always safe: the next read fills it again)."""
        by_slot: dict[int, list[bytes | str]] = {}
        for k in keys:
            by_slot.setdefault(key_slot(k), []).append(k)
        pipe = self._pipe()
        for names in by_slot.values():
            pipe.execute_command("UNLINK", *names)
        return sum(int(n) for n in self._call("flush unlink", pipe.execute))

    def _step(self, op: str, keys: Sequence[bytes | str], ms: int = 0) -> int:
        if op != "unlink":  # markers and schema epochs: all in the home slot, fenced like on one node
            return super()._step(op, keys, ms)
        super()._step("release", [], 0)  # (fenced: refused once the lease or the operator lock is another's)
        return self._unlink(keys)

    def memory(self) -> RedisMemory:
        """Evictions summed over every primary (any of them may have taken a tag set or a marker)."""
        replies = self._call("INFO stats memory", self._info_everywhere)
        evicted = sum(int(str(info.get("evicted_keys", 0))) for info in replies)
        policies = [RedisMemory.from_info(info) for info in replies]
        worst = next((p for p in policies if p.may_evict), policies[0])
        return RedisMemory(evicted, worst.policy, worst.maxmemory)

    def _info_everywhere(self) -> list[Mapping[str, object]]:
        reply = self.cluster.info("stats", "memory", target_nodes=redis.RedisCluster.PRIMARIES)
        if isinstance(reply, dict) and all(isinstance(v, dict) for v in reply.values()):
            return list(reply.values())
        return [reply]

    def time_ms(self) -> int:
        """The clock of the node serving the home slot: the one readers compare the heartbeat with."""
        node = self.cluster.get_node_from_key(self.keys.heartbeat)  # type: ignore[no-untyped-call]
        seconds, micros = self._call("TIME", self.cluster.time, target_nodes=node)
        return int(seconds) * 1000 + int(micros) // 1000


@functools.lru_cache(maxsize=4096)
def _reached(stored: str, new: str) -> bool:
    """positions.reached (False when they cannot be compared), remembered: a step asks it of thousands of slots
    holding a few distinct checkpoints."""
    try:
        return reached(stored, new)
    except PositionError:
        return False


def _field(info: object, name: str) -> str:
    """A field of an INFO-style reply, parsed by redis-py (a dict) or not (``name:value`` lines)."""
    if isinstance(info, dict):
        return str(info.get(name, ""))
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return fields.get(name, "").strip()
