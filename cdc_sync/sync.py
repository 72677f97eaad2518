"""The sync loop: binlog → transactions → planned operations → one atomic Redis step per batch.

Two threads. The main thread reads and decodes the binlog and queues whole transactions; the applier
thread takes every transaction that is waiting (up to ``batch_max_rows`` rows), plans it and applies it
to Redis in one atomic step that also compare-and-sets the checkpoint. Decoding thus overlaps Redis I/O,
and batches grow by themselves while the applier is behind.

Rules this module keeps:
* The checkpoint moves only in the same atomic step as the data it covers, and only after Redis
  acknowledged it (the Lua script sets it last).
* Nothing is skipped: a Redis failure retries the same step with backoff; a binlog failure reconnects
  from the position of the last transaction queued; a change that cannot be planned flushes its table.
* If Redis holds a checkpoint other than the one this worker wrote (Redis lost writes), the worker
  rewinds to the stored position and replays; replays are harmless.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.config import Config, TableRule, check_against_schema
from cdc_sync.errors import (
    CdcSyncError,
    ConfigError,
    PositionLostError,
    RewindRequired,
    ServerConfigError,
    SinkUnavailable,
    SourceError,
)
from cdc_sync.events import Flush, Heartbeat, RawEvent, ServerInfo, StreamItem, Transaction
from cdc_sync.planner import MissingColumn, RedisOp, plan_change
from cdc_sync.positions import PositionError, PositionTracker
from cdc_sync.transactions import Assembler

log = logs.get("cdc_sync.sync")


class SourcePort(Protocol):
    def events(self, start: str) -> Iterator[RawEvent]: ...
    def close(self) -> None: ...


class AdminPort(Protocol):
    def server_info(self) -> ServerInfo: ...
    def table_columns(self, names: Sequence[str]) -> dict[str, list[str]]: ...


class SinkPort(Protocol):
    def load_checkpoint(self) -> str | None: ...
    def apply(self, ops: Sequence[RedisOp], expected: str | None, new: str, heartbeat: bool = False) -> bool: ...
    def heartbeat(self, expected: str | None) -> bool: ...
    def count_keys(self, rules: Sequence[TableRule], limit: int = 1) -> int: ...
    def flush(self, rule: TableRule) -> int: ...


class Backoff(Protocol):
    """Retry policy: seconds to wait after ``failures`` consecutive failures (redis-py's backoff objects fit)."""

    def compute(self, failures: int) -> float: ...


class _Rewind(Exception):
    def __init__(self, position: str) -> None:
        super().__init__(position)
        self.position = position


_STOP = object()

REQUIRED_SETTINGS = {
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
}


def check_server(info: ServerInfo) -> None:
    """Refuse a server whose binlog cannot drive the cache exactly."""
    for name, want in REQUIRED_SETTINGS.items():
        have = info.variables.get(name, "(missing)").upper()
        if have != want:
            raise ServerConfigError(f"MySQL {name} is {have}; cdc-sync needs {name}={want}")


def initial_position(info: ServerInfo, start: str, mode: str) -> str:
    """Where to start when Redis holds no checkpoint."""
    if start == "earliest":
        if mode == "gtid":
            raise ConfigError("mysql.start: 'earliest' reads by file position; set mysql.position_mode to auto or file")
        if not info.first_file:
            raise ServerConfigError("the server lists no binary logs")
        return f"{info.first_file}:4"
    if mode != "file" and info.gtid_position:
        return info.gtid_position
    if mode == "gtid":
        raise ServerConfigError("mysql.position_mode is 'gtid' but the server has no GTID position yet")
    if not info.file_position:
        raise ServerConfigError("the server reports no binlog position (is log_bin on?)")
    return info.file_position


class Worker:
    """Runs the sync loop until ``stop()``; see the module docstring."""

    def __init__(
        self,
        config: Config,
        source_factory: Callable[[], SourcePort],
        admin: AdminPort,
        sink: SinkPort,
        backoff: Backoff,
    ) -> None:
        self.config = config
        self.rules = list(config.tables)
        self._rule_by_table = {(r.schema, r.table): r for r in self.rules}
        self._source_factory = source_factory
        self._admin = admin
        self._sink = sink
        self._backoff = backoff
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.worker.queue_max_transactions)
        self._gen = 0  # bumped by the main thread on every rewind
        self._drop_gen = -1  # the applier drops queued items of this generation or older
        self._rewind_to: str | None = None
        self._failure: BaseException | None = None
        self._expected: str | None = None  # the checkpoint this worker last wrote (or found)
        self.applied_position: str | None = None
        self.info: ServerInfo | None = None
        self._last_progress = time.monotonic()
        self._applied_since = 0

    # ---- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the transaction in hand, apply what is queued and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # ---- start-up --------------------------------------------------------------------------------

    def prepare(self) -> str:
        """Check the server and the rules, load the checkpoint; return the start position."""
        info = self._retry_source("server_info", self._admin.server_info)
        self.info = info
        check_server(info)
        columns = self._retry_source("table_columns", lambda: self._admin.table_columns([r.name for r in self.rules]))
        check_against_schema(self.config, columns)
        checkpoint = self._retry_sink("load_checkpoint", self._sink.load_checkpoint)
        if checkpoint is not None:
            try:
                PositionTracker(checkpoint)
            except PositionError as exc:
                raise ConfigError(f"Redis key {self.config.redis.namespace}:checkpoint holds {exc}") from None
            self._expected = checkpoint
            log.info("sync.resume", checkpoint=checkpoint, flavor=info.flavor, server_version=info.version)
            return str(checkpoint)
        start = initial_position(info, self.config.mysql.start, self.config.mysql.position_mode)
        if self._retry_sink("scan", lambda: self._sink.count_keys(self.rules)):
            # Keys without a checkpoint were written by nobody we can vouch for: an empty cache is correct.
            log.error("sync.no_checkpoint_with_keys", action="flush")
            self._flush([Flush("no_checkpoint", r.schema, r.table) for r in self.rules])
        # Record the start at once, so a restart before the first change resumes from here.
        try:
            self._retry_sink("checkpoint", lambda: self._sink.apply([], None, start))
        except RewindRequired as exc:  # another worker wrote one meanwhile: follow it
            if exc.stored is None:
                raise
            start = exc.stored
        self._expected = start
        log.info("sync.fresh_start", start=start, mode=self.config.mysql.start, flavor=info.flavor)
        return start

    def _retry_source(self, what: str, fn: Callable[[], Any]) -> Any:
        failures = 0
        while True:
            try:
                return fn()
            except SourceError as exc:
                m.SOURCE_ERRORS.labels(kind=type(exc).__name__).inc()
                log.warning("source.unavailable", step=what, error=str(exc), attempt=failures + 1)
                if self.stopping:
                    raise
                self._sleep(self._backoff.compute(failures))
                failures += 1

    def _retry_sink(self, what: str, fn: Callable[[], Any]) -> Any:
        failures = 0
        while True:
            try:
                return fn()
            except SinkUnavailable as exc:
                m.SINK_ERRORS.labels(kind="unavailable").inc()
                log.warning("sink.unavailable", step=what, error=str(exc), attempt=failures + 1)
                if self._abort.is_set() or (self.stopping and threading.current_thread() is threading.main_thread()):
                    raise
                time.sleep(self._backoff.compute(failures))
                failures += 1

    # ---- main loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped. Raises CdcSyncError on a fatal problem."""
        start = self.prepare()
        tracker = PositionTracker(start)
        assembler = Assembler(tracker, self.rules, on_skip=self._on_skip)
        applier = threading.Thread(target=self._apply_loop, name="cdc-sync-applier", daemon=True)
        applier.start()
        failures = 0
        try:
            while not self.stopping:
                self._raise_failure()
                position = assembler.tracker.render()
                source = self._source_factory()
                log.info("source.connecting", position=position)
                try:
                    for raw in source.events(position):
                        failures = 0
                        item = assembler.feed(raw)
                        if item is not None:
                            self._enqueue(item)
                        if self._rewind_to is not None:
                            assembler = self._begin_rewind(assembler)
                            break
                        if self.stopping and not assembler.in_txn:
                            break
                except PositionLostError as exc:
                    assembler = self._position_lost(assembler, exc)
                except SourceError as exc:
                    m.SOURCE_ERRORS.labels(kind=type(exc).__name__).inc()
                    delay = self._backoff.compute(failures)
                    log.warning("source.disconnected", error=str(exc), retry_in_s=round(delay, 3), attempt=failures + 1)
                    failures += 1
                    self._sleep(delay)
                finally:
                    source.close()
                    assembler.reset()
        finally:
            self._shutdown(applier)

    def _enqueue(self, item: StreamItem) -> None:
        while True:
            self._raise_failure()
            try:
                self._queue.put((self._gen, item), timeout=0.2)
                return
            except queue.Full:
                if self._rewind_to is not None:
                    return  # the applier drops this generation anyway

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _begin_rewind(self, assembler: Assembler) -> Assembler:
        target = self._rewind_to
        assert target is not None
        self._gen += 1
        self._rewind_to = None
        log.warning("sync.rewound", position=target)
        return Assembler(PositionTracker(target), self.rules, on_skip=self._on_skip)

    def _position_lost(self, assembler: Assembler, exc: PositionLostError) -> Assembler:
        """The position is gone from the server: drain, flush everything, restart at the server's end."""
        log.error("source.position_lost", error=str(exc), position=assembler.tracker.render(), action="flush_all")
        m.SOURCE_ERRORS.labels(kind="PositionLostError").inc()
        self._drain()
        info = self._retry_source("server_info", self._admin.server_info)
        start = initial_position(info, "current", self.config.mysql.position_mode)
        self._enqueue(
            Transaction(position=start, flushes=tuple(Flush("position_lost", r.schema, r.table) for r in self.rules))
        )
        return Assembler(PositionTracker(start), self.rules, on_skip=self._on_skip)

    def _drain(self) -> None:
        while self._queue.unfinished_tasks and self._failure is None:
            time.sleep(0.02)
        self._raise_failure()

    def _on_skip(self, txn: Transaction) -> None:
        m.TRANSACTIONS_SKIPPED.inc()
        log.debug("sync.replay_skipped", position=txn.position, gtid=txn.gtid)

    def _shutdown(self, applier: threading.Thread) -> None:
        deadline = time.monotonic() + self.config.worker.shutdown_timeout_s
        while applier.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        applier.join(max(0.0, deadline - time.monotonic()))
        if applier.is_alive():
            self._abort.set()
            log.warning("worker.shutdown_incomplete", queued=self._queue.qsize(), checkpoint=self._expected)
        else:
            log.info("worker.stopped", checkpoint=self._expected)

    # ---- applier thread --------------------------------------------------------------------------

    def _apply_loop(self) -> None:
        try:
            while not self._abort.is_set():
                items, stop = self._take_batch()
                try:
                    if items:
                        self._apply_batch(items)
                except _Rewind as rw:
                    self._expected = rw.position
                    self._drop_gen = self._gen
                    self._rewind_to = rw.position
                finally:
                    for _ in range(len(items) + (1 if stop else 0)):
                        self._queue.task_done()
                if stop:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            log.error("sync.applier_failed", error=repr(exc))
            self._failure = exc

    def _take_batch(self) -> tuple[list[StreamItem], bool]:
        items: list[StreamItem] = []
        rows = 0
        limit = self.config.worker.batch_max_rows
        block = True
        while rows < limit:
            try:
                entry = self._queue.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                if block and not items:
                    if self._abort.is_set():
                        return items, True
                    continue
                break
            block = False
            if entry is _STOP:
                return items, True
            gen, item = entry
            if gen <= self._drop_gen:
                self._queue.task_done()
                continue
            items.append(item)
            if isinstance(item, Transaction):
                rows += len(item.changes)
        return items, False

    def _apply_batch(self, items: list[StreamItem]) -> None:
        ops: list[RedisOp] = []
        done: list[Transaction] = []
        for item in items:
            if isinstance(item, Heartbeat):
                continue
            planned, flushes = self._plan(item)
            if flushes:
                if done:
                    self._apply_step(ops, done, heartbeat=False)
                    ops, done = [], []
                self._flush(flushes)
            ops.extend(planned)
            done.append(item)
        caught_up = isinstance(items[-1], Heartbeat)
        if done:
            self._apply_step(ops, done, heartbeat=caught_up)
        elif caught_up and self._retry_sink("heartbeat", lambda: self._sink.heartbeat(self._expected)):
            m.HEARTBEATS.inc()
        if caught_up:
            m.LAG_SECONDS.set(0)

    def _plan(self, txn: Transaction) -> tuple[list[RedisOp], list[Flush]]:
        ops: list[RedisOp] = []
        flushes = list(txn.flushes)
        broken: set[tuple[str, str]] = set()
        for change in txn.changes:
            rule = self._rule_by_table.get((change.schema, change.table))
            if rule is None or (change.schema, change.table) in broken:
                continue
            try:
                ops.extend(plan_change(change, rule, evict_only=txn.evict_only))
            except MissingColumn as exc:
                m.PLAN_ERRORS.labels(table=rule.name).inc()
                log.error("sync.plan_failed", table=rule.name, error=str(exc), action="flush")
                broken.add((change.schema, change.table))
                flushes.append(Flush("plan_error", rule.schema, rule.table, detail=str(exc)))
        return ops, flushes

    def _flush(self, flushes: list[Flush]) -> None:
        seen: set[str] = set()
        for f in flushes:
            targets = [r for r in self.rules if f.table is None or (r.schema, r.table) == (f.schema, f.table)]
            for rule in targets:
                if rule.name in seen:
                    continue
                seen.add(rule.name)
                deleted = self._retry_sink("flush", lambda rule=rule: self._sink.flush(rule))  # type: ignore[misc]
                m.FLUSHES.labels(table=rule.name, reason=f.reason).inc()
                log.warning("sync.table_flushed", table=rule.name, reason=f.reason, keys=deleted, detail=f.detail)
                if f.reason in ("unknown_event",):
                    m.UNKNOWN_EVENTS.labels(event_type=f.detail.split(" ", 1)[0]).inc()

    def _apply_step(self, ops: list[RedisOp], txns: list[Transaction], heartbeat: bool) -> None:
        new = txns[-1].position
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                self._sink.apply(ops, self._expected, new, heartbeat)
            except SinkUnavailable as exc:
                m.SINK_ERRORS.labels(kind="unavailable").inc()
                delay = self._backoff.compute(failures)
                log.warning(
                    "sink.unavailable", step="apply", error=str(exc), retry_in_s=round(delay, 3), attempt=failures + 1
                )
                if self._abort.is_set():
                    raise
                failures += 1
                time.sleep(delay)
                continue
            except RewindRequired as exc:
                if exc.stored is None:
                    m.REWINDS.labels(reason="checkpoint_lost").inc()
                    log.error("sync.checkpoint_lost", expected=self._expected, action="flush_all")
                    self._flush([Flush("checkpoint_lost")])
                    self._expected = None
                    continue
                m.REWINDS.labels(reason="checkpoint_mismatch").inc()
                log.error("sync.rewind", expected=self._expected, stored=exc.stored)
                raise _Rewind(exc.stored) from None
            break
        self._expected = new
        self.applied_position = new
        self._record(ops, txns, time.perf_counter() - started, heartbeat)

    def _record(self, ops: list[RedisOp], txns: list[Transaction], seconds: float, heartbeat: bool) -> None:
        tally: Tally[tuple[str, str]] = Tally()
        for txn in txns:
            for change in txn.changes:
                tally[(f"{change.schema}.{change.table}", change.op.value)] += 1
        for (table, op), count in tally.items():
            m.CHANGES_APPLIED.labels(table=table, op=op).inc(count)
        rows = sum(tally.values())
        m.BATCHES.inc()
        m.BATCH_ROWS.observe(rows)
        m.APPLY_SECONDS.observe(seconds)
        m.TRANSACTIONS_APPLIED.inc(len(txns))
        if heartbeat:
            m.HEARTBEATS.inc()
        stamp = max((t.timestamp for t in txns), default=0)
        if stamp:
            m.LAST_APPLIED_TIMESTAMP.set(stamp)
            m.LAG_SECONDS.set(max(0.0, time.time() - stamp))
        log.debug("sync.batch_applied", transactions=len(txns), rows=rows, ops=len(ops), checkpoint=self._expected)
        self._applied_since += rows
        now = time.monotonic()
        if now - self._last_progress >= 30:
            log.info(
                "sync.progress",
                rows=self._applied_since,
                seconds=round(now - self._last_progress, 1),
                checkpoint=self._expected,
            )
            self._last_progress, self._applied_since = now, 0


__all__ = ["CdcSyncError", "Worker", "check_server", "initial_position"]
