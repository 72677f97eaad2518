"""In-memory twins of the worker's ports (source, admin, sink) for unit tests of the sync loop.

FakeSink keeps the apply script's semantics (compare-and-set of the checkpoint, then the operations,
then the new checkpoint) over a dict, and can be told to fail or to lose replies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from cdc_sync.config import TableRule
from cdc_sync.core.cascades import CascadeEdge
from cdc_sync.core.events import RawEvent, RawHeartbeat, RedisMemory, ServerInfo
from cdc_sync.core.planner import Delete, RedisOp, SetHash, SetJson
from cdc_sync.core.rowdecode import CharsetTable
from cdc_sync.errors import Fenced, RewindRequired, SinkUnavailable

ROW_SETTINGS = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}


@dataclass
class FakeAdmin:
    columns: dict[str, list[str]]
    gtid_position: str = "0-1-1"
    edges: list[CascadeEdge] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=lambda: dict(ROW_SETTINGS))

    def server_info(self) -> ServerInfo:
        return ServerInfo(
            "mariadb", "10.11-fake", self.gtid_position, "bin.000001:4", "bin.000001", variables=self.variables
        )

    def table_columns(self, names: Sequence[str]) -> dict[str, list[str]]:
        return {n: c for n, c in self.columns.items() if n in names}

    def cascade_edges(self) -> list[CascadeEdge]:
        return list(self.edges)

    def current_position(self, flavor: str, kind: str) -> str:
        return self.gtid_position

    def binlog_server_id(self, file: str) -> int | None:
        return None  # no binlog files here: a stream part resumes by GTID

    def gtid_at(self, file_pos: str) -> str | None:
        return None  # no binlog to look into: the lineage check compares GTID states

    def value_kinds(self, tables: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
        return {}  # (no column types here: values pass as decoded)

    def server_charsets(
        self, tables: Sequence[tuple[str, str]], known: Callable[[str], bool] = lambda name: False
    ) -> dict[str, CharsetTable]:
        return {}

    def stored_names(self, names: Sequence[str]) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for n in names:
            match = next((c for c in self.columns if c.lower() == n.lower()), None)  # lower_case_table_names=1
            if match is not None:
                schema, _, table = match.partition(".")
                out[n] = (schema, table)
        return out


class FakeSource:
    """Replays a scripted list of raw events for each start position, then idles with heartbeats."""

    def __init__(self, script: dict[str, list[RawEvent]], idle: threading.Event) -> None:
        self.script = script
        self.idle = idle  # set once the source has delivered everything for its start position
        self.starts: list[str] = []
        self.tables: set[tuple[str, str]] = set()
        self.buffering = False  # more_buffered() says True while scripted events remain
        self._left = 0

    def __call__(self, tables: Iterable[tuple[str, str]]) -> FakeSource:  # used as the worker's source_factory
        self.tables = set(tables)
        return self

    def events(self, start: str) -> Iterator[RawEvent]:
        self.starts.append(start)
        self.idle.clear()
        events = self.script.get(start, [])
        for i, event in enumerate(events):
            self._left = len(events) - i - 1
            if isinstance(event, Exception):  # (a scripted connection failure)
                raise event
            if callable(event):  # (a scripted action, between two events)
                event()
                continue
            yield event
        self._left = 0
        while True:
            self.idle.set()
            threading.Event().wait(0.01)
            yield RawHeartbeat()

    def more_buffered(self) -> bool:
        return self.buffering and self._left > 0

    def close(self) -> None:
        pass


class FakeSink:
    def __init__(self) -> None:
        self.store: dict[str, object] = {}
        self.evictions = 0
        self.policy, self.maxmemory = "noeviction", 0
        self.fail_next = 0  # raise SinkUnavailable before applying, this many times
        self.lose_reply_next = 0  # apply, then raise SinkUnavailable (the reply was lost), this many times
        self.applied_steps: list[str] = []
        self.flushed: list[str] = []
        self.lock = threading.Lock()
        self.leader_token: str | None = None  # HA: apply only while "cdc:leader" holds it (as RedisSink)

    def load_checkpoint(self) -> str | None:
        value = self.store.get("cdc:checkpoint")
        return None if value is None else str(value)

    def apply(self, ops: Sequence[RedisOp], expected: str | None, new: str) -> bool:
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                raise SinkUnavailable("fake: connection refused")
            if self.leader_token and self.store.get("cdc:leader") != self.leader_token:
                raise Fenced("another worker holds the leader lease")
            cur = self.store.get("cdc:checkpoint")
            if cur != expected:
                if cur == new:
                    return False
                raise RewindRequired(None if cur is None else str(cur))
            for op in ops:
                if isinstance(op, Delete):
                    self.store.pop(op.key, None)
                elif isinstance(op, SetJson):
                    self.store[op.key] = op.value
                elif isinstance(op, SetHash):
                    self.store[op.key] = op.fields
            self.store["cdc:checkpoint"] = new
            self.applied_steps.append(new)
            if self.lose_reply_next:
                self.lose_reply_next -= 1
                raise SinkUnavailable("fake: timeout reading reply")
            return True

    def server_identity(self) -> str | None:
        value = self.store.get("cdc:server")
        return None if value is None else str(value)

    def save_server_identity(self, identity: str) -> None:
        self.store["cdc:server"] = identity

    def memory(self) -> RedisMemory:
        return RedisMemory(self.evictions, self.policy, self.maxmemory)  # what INFO says (tests change it)

    def recorded_evictions(self) -> int | None:
        value = self.store.get("cdc:evictions")
        return None if value is None else int(str(value))

    def record_evictions(self, count: int) -> None:
        self.store["cdc:evictions"] = str(count)

    def rule_fingerprints(self) -> dict[str, str]:
        value = self.store.get("cdc:rules")
        return dict(value) if isinstance(value, dict) else {}

    def save_rule_fingerprints(self, fingerprints: dict[str, str]) -> None:
        self.store["cdc:rules"] = dict(fingerprints)

    def report_status(self, fields: object) -> None:
        self.store["cdc:status"] = fields

    def count_keys(self, rules: Sequence[TableRule], limit: int = 1) -> int:
        return sum(1 for k in self.store if not k.startswith("cdc:"))

    def mark_flushing(self, rules: Sequence[TableRule]) -> None:
        self.marked = [r.name for r in rules]

    def hold_flushing(self, rules: Sequence[TableRule]) -> None:
        self.held = [r.name for r in rules]

    def held_tables(self, rules: Sequence[TableRule]) -> list[TableRule]:
        return []

    def release_flushing(self, rules: Sequence[TableRule]) -> None:
        self.released = [r.name for r in rules]

    def flush(self, rule: TableRule, held: bool = False) -> int:
        self.flushed.append(rule.name)
        prefixes = tuple(t.literals[0] for t in rule.templates)
        doomed = [k for k in self.store if k.startswith(prefixes)]
        for k in doomed:
            del self.store[k]
        return len(doomed)


class NoBackoff:
    def compute(self, failures: int) -> float:
        return 0.0
