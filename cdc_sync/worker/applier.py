"""The applier thread: takes whole transactions off the queue and applies them to Redis.

It takes every transaction that is waiting (up to ``batch_max_rows`` rows), plans it (pure planner) and
applies it in one atomic step that compare-and-sets the checkpoint, so batches grow by themselves while
Redis is the bottleneck and decoding overlaps Redis I/O.

* The checkpoint moves only inside the same atomic step as the data it covers, after everything before it.
* A Redis failure retries the same step with backoff; nothing is skipped and the position stays.
* Redis holding another checkpoint than the one written last means Redis lost writes: the applier asks the
  reading side to rewind to the stored position (``rewind_to``) and drops what was queued until then.
"""

from __future__ import annotations

import operator
import queue
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.config import TableRule, WorkerConfig
from cdc_sync.core.cascades import CascadeWatch, flushes_for
from cdc_sync.core.events import Flush, Heartbeat, Op, StreamItem, Transaction
from cdc_sync.core.planner import Count, EvictTag, MissingColumn, RedisOp, plan_change, tags_of
from cdc_sync.errors import RewindRequired, SinkUnavailable
from cdc_sync.worker.ports import SinkPort
from cdc_sync.worker.retry import Backoff, retry

log = logs.get("cdc_sync.applier")
T = TypeVar("T")


class _Rewind(Exception):
    def __init__(self, position: str) -> None:
        super().__init__(position)
        self.position = position


_STOP = object()


class Applier:
    """Owns the queue between decoding and Redis, and the thread that drains it."""

    def __init__(self, rules: Sequence[TableRule], sink: SinkPort, backoff: Backoff, cfg: WorkerConfig) -> None:
        self.rules = list(rules)
        self._rule_by_table = {r.stored_as: r for r in self.rules}  # by the names binlog events carry
        self.sink = sink
        self.backoff = backoff
        self.cfg = cfg
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=cfg.queue_max_transactions)
        self.expected: str | None = None  # the checkpoint last written (or found) in Redis
        self.rewind_to: str | None = None  # set by this thread; the reader rewinds and calls rewound()
        self.failure: BaseException | None = None
        self.abort = threading.Event()
        self._gen = 0  # generation of what the reader queues; bumped on every rewind
        self._drop_gen = -1  # queued items of this generation or older are dropped
        self._watches: dict[tuple[str, str], list[CascadeWatch]] = {}
        self.last_applied = time.monotonic()  # of the last successful step (for the watchdog)
        self.lag_s = 0.0  # now minus the binlog time of the last applied transaction
        self._rows = threading.Condition()  # guards _queued_rows: rows waiting in the queue (memory bound)
        self._queued_rows = 0
        self._thread = threading.Thread(target=self._loop, name="cdc-sync-applier", daemon=True)
        self._last_progress = time.monotonic()
        self._applied_since = 0
        # After Redis lost everything (no checkpoint): what the worker records besides the checkpoint (rule
        # fingerprints, server identity) is written again, so the next start does not flush for nothing.
        self.on_checkpoint_lost: Callable[[], None] | None = None
        self.on_progress: Callable[[], None] | None = None  # after every step applied (the heartbeat follows)
        self.on_applied: Callable[[Sequence[RedisOp]], None] | None = None  # a step's operations (the verifier)

    # ---- called from the reading (main) thread -----------------------------------------------------

    def set_cascades(self, watches: Sequence[CascadeWatch]) -> None:
        """Parent tables whose deletes/updates flush mapped children (see cascades.py).

        May be called while running (after DDL): the new map replaces the old one in one assignment, and the
        caller only ever adds watches, so transactions still queued are planned with at least the old ones.
        """
        by_parent: dict[tuple[str, str], list[CascadeWatch]] = {}
        for w in watches:
            by_parent.setdefault(w.parent, []).append(w)
        self._watches = by_parent

    def set_rules(self, rules: Sequence[TableRule]) -> None:
        """The rules with their tables' stored names re-resolved (after DDL). Names seen before stay mapped,
        so changes still queued under an earlier name are planned too."""
        by_table = dict(self._rule_by_table)
        by_table.update({r.stored_as: r for r in rules})
        self.rules = list(rules)
        self._rule_by_table = by_table

    def start(self) -> None:
        m.QUEUE_ITEMS.set_function(self.queue.qsize)
        m.QUEUE_ROWS.set_function(lambda: self._queued_rows)
        self._thread.start()

    def put(self, item: StreamItem, give_up: Callable[[], bool] | None = None) -> None:
        """Queue an item (blocks while the queue is full); raises the applier's failure if it died.

        Returns without queueing once ``give_up()`` is true (shutting down: the item stays unapplied and
        its position unrecorded, so it is read again after the restart).
        """
        rows = _rows(item)
        while True:
            self.raise_failure()
            if self.rewind_to is not None or (give_up is not None and give_up()):
                return  # this generation is dropped anyway, or we are stopping
            if rows:  # (most transactions of a busy server touch no mapped table: no rows to count)
                with self._rows:
                    if self._queued_rows and self._queued_rows + rows > self.cfg.queue_max_rows:
                        self._rows.wait(0.2)
                        continue
                    self._queued_rows += rows
            try:
                self.queue.put((self._gen, item), timeout=0.2)
                return
            except queue.Full:
                if rows:
                    self._release_rows(rows)

    @property
    def generation(self) -> int:
        """Bumped by every rewind: what the reading side read before one is dropped."""
        return self._gen

    def rewound(self) -> str:
        """The reader has restarted at ``rewind_to``: start a new generation; returns the position."""
        target = self.rewind_to
        assert target is not None
        self._gen += 1
        self.rewind_to = None
        return target

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _release_rows(self, rows: int) -> None:
        with self._rows:
            self._queued_rows -= rows
            self._rows.notify_all()

    def drain(self, give_up: Callable[[], bool] | None = None) -> None:
        """Wait until everything queued so far is applied (or ``give_up()``)."""
        while self.queue.unfinished_tasks and self.failure is None and not (give_up is not None and give_up()):
            time.sleep(0.02)
        self.raise_failure()

    def stop(self, timeout: float) -> bool:
        """Apply what is queued and stop the thread; False if it did not finish within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive():
            try:
                self.queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self.abort.set()
            return False
        return True

    def retry(self, what: str, fn: Callable[[], T], give_up: Callable[[], bool] | None = None) -> T:
        """Call ``fn`` until Redis answers, with backoff; re-raise when aborted or ``give_up()``."""

        def failed(exc: Exception, attempt: int, delay: float) -> None:
            m.SINK_ERRORS.labels(kind="unavailable").inc()
            log.warning("sink.unavailable", step=what, error=str(exc), retry_in_s=round(delay, 3), attempt=attempt)

        return retry(
            fn,
            retryable=SinkUnavailable,
            backoff=self.backoff,
            wait=self.abort.wait,
            failed=failed,
            give_up=lambda: self.abort.is_set() or (give_up is not None and give_up()),
        )

    def flush(self, flushes: Sequence[Flush]) -> None:
        """Invalidate the tables named by ``flushes`` (each table once), logged and counted.

        Every table is marked as flushing before the first is flushed: a flush of many tables takes a while, and
        the heartbeat may vouch meanwhile (after a lost position, say), so no table may wait unmarked.
        """
        todo: list[tuple[TableRule, Flush]] = []
        for f in flushes:
            for rule in self.rules:
                if any(rule is r for r, _ in todo):
                    continue
                if f.table is None or (rule.schema, rule.table) == (f.schema, f.table):
                    todo.append((rule, f))
            if f.reason == "unknown_event":
                m.UNKNOWN_EVENTS.labels(event_type=f.detail.split(" ", 1)[0]).inc()
        # holds and releases without a flush touch the markers only, no key
        held = [rule for rule, f in todo if f.hold == "hold"]
        if held:
            self.retry("hold flushing", lambda: self.sink.hold_flushing(held))
            log.warning("sync.tables_held", tables=[r.name for r in held])
        unheld = [rule for rule, f in todo if f.hold == "unhold"]
        if unheld:
            self.retry("release flushing", lambda: self.sink.release_flushing(unheld))
            log.info("sync.tables_released", tables=[r.name for r in unheld])
        todo = [(rule, f) for rule, f in todo if f.hold not in ("hold", "unhold")]
        if len(todo) > 1:
            rules = [rule for rule, _ in todo]
            self.retry("mark flushing", lambda: self.sink.mark_flushing(rules))
        for rule, f in todo:
            self.flush_rule(rule, f.reason, f.detail, release=f.hold == "release")

    def flush_rule(
        self,
        rule: TableRule,
        reason: str,
        detail: str = "",
        give_up: Callable[[], bool] | None = None,
        release: bool = False,
    ) -> None:
        """Invalidate one table's keys (retried while Redis is away), logged and counted by reason; ``release``:
        also end a hold of its flushing marker."""
        deleted = self.retry("flush", lambda: self.sink.flush(rule, held=release), give_up=give_up)
        m.FLUSHES.labels(table=rule.name, reason=reason).inc()
        log.warning("sync.table_flushed", table=rule.name, reason=reason, keys=deleted, detail=detail)

    # ---- the thread --------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self.abort.is_set():
                items, stop = self._take_batch()
                try:
                    if items:
                        self._apply_batch(items)
                except _Rewind as rw:
                    self.expected = rw.position
                    self._drop_gen = self._gen
                    self.rewind_to = rw.position
                finally:
                    rows = sum(_rows(i) for i in items)
                    if rows:
                        self._release_rows(rows)
                    for _ in range(len(items) + (1 if stop else 0)):
                        self.queue.task_done()
                if stop:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, which raises it
            if self.abort.is_set():
                log.warning("sync.applier_aborted", error=repr(exc), checkpoint=self.expected)
            else:
                log.error("sync.applier_failed", error=repr(exc))
            self.failure = exc

    def _take_batch(self) -> tuple[list[StreamItem], bool]:
        items: list[StreamItem] = []
        rows = 0
        block = True
        while rows < self.cfg.batch_max_rows:
            try:
                entry = self.queue.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                if block and not items:
                    if self.abort.is_set():
                        return items, True
                    continue
                break
            block = False
            if entry is _STOP:
                return items, True
            gen, item = entry
            if gen <= self._drop_gen:
                if _rows(item):
                    self._release_rows(_rows(item))
                self.queue.task_done()
                continue
            items.append(item)
            if isinstance(item, Transaction):
                rows += len(item.changes)
        return items, False

    def _apply_batch(self, items: list[StreamItem]) -> None:
        ops: list[RedisOp] = []
        tags: dict[str, None] = {}  # dependency tags hit in this step, evicted once at its end
        done: list[Transaction] = []
        for item in items:
            if isinstance(item, Heartbeat):
                if item.position:
                    done.append(Transaction(position=item.position))
                continue
            planned, hit, flushes = self._plan(item)
            if flushes:  # a barrier: what came before is applied, then the flush, then the rest
                if done:
                    self._apply_step(ops, tags, done)
                    ops, tags, done = [], {}, []
                self.flush(flushes)
            ops.extend(planned)
            tags.update(dict.fromkeys(hit))
            done.append(item)
        caught_up = isinstance(items[-1], Heartbeat)
        if done or caught_up:
            # A heartbeat alone is an empty step: it still checks the checkpoint, so an idle worker
            # notices a Redis rollback within one server heartbeat period.
            self._apply_step(ops, tags, done)
        if caught_up:
            self.lag_s = 0.0
            m.LAG_SECONDS.set(0)

    def _plan(self, txn: Transaction) -> tuple[list[RedisOp], list[str], list[Flush]]:
        ops: list[RedisOp] = []
        tags: list[str] = []
        flushes = list(txn.flushes)
        broken: set[tuple[str, str]] = set()
        for change in txn.changes:
            table = (change.schema, change.table)
            watches = self._watches.get(table)
            if watches:
                flushes.extend(flushes_for(change, watches))
            rule = self._rule_by_table.get(table)
            if rule is None or table in broken:
                continue
            try:
                ops.extend(plan_change(change, rule, evict_only=txn.evict_only))
                if rule.tags or not tags or tags[-1] != rule.name:
                    tags.extend(tags_of(rule, change))
            except (MissingColumn, TypeError, ValueError) as exc:  # a value that cannot be keyed or encoded
                m.PLAN_ERRORS.labels(table=rule.name).inc()
                log.error("sync.plan_failed", table=rule.name, error=repr(exc), action="flush")
                broken.add(table)
                flushes.append(Flush("plan_error", rule.schema, rule.table, detail=repr(exc)[:200]))
        return ops, tags, flushes

    def _apply_step(self, ops: list[RedisOp], tags: dict[str, None], txns: list[Transaction]) -> None:
        tally = _tally(txns)
        ops = ops + [EvictTag(t) for t in tags] + [Count(f"{table}:{op}", n) for (table, op), n in tally.items()]
        new = txns[-1].position if txns else self.expected
        assert new is not None, "the checkpoint is known from start-up on"
        while True:
            started = time.perf_counter()
            try:
                # Checkpoint only here, in the same atomic step as the data, after Redis acknowledged it.
                self.retry("apply", lambda: self.sink.apply(ops, self.expected, new))
            except RewindRequired as exc:
                if exc.stored is not None:
                    m.REWINDS.labels(reason="checkpoint_mismatch").inc()
                    log.error("sync.rewind", expected=self.expected, stored=exc.stored)
                    raise _Rewind(exc.stored) from None
                # Redis holds no checkpoint at all (emptied): nothing it holds can be vouched for.
                m.REWINDS.labels(reason="checkpoint_lost").inc()
                log.error("sync.checkpoint_lost", expected=self.expected, action="flush_all")
                self.flush([Flush("checkpoint_lost")])
                if self.on_checkpoint_lost is not None:  # <ns>:rules went too: readers fill only under them
                    self.on_checkpoint_lost()
                self.expected = None
                continue
            break
        self.expected = new
        self.last_applied = time.monotonic()
        if self.on_progress is not None:
            self.on_progress()
        if self.on_applied is not None:
            self.on_applied(ops)
        self._record(ops, txns, tally, time.perf_counter() - started)

    def _record(
        self, ops: list[RedisOp], txns: list[Transaction], tally: Tally[tuple[str, str]], seconds: float
    ) -> None:
        for (table, op), count in tally.items():
            m.CHANGES_APPLIED.labels(table=table, op=op).inc(count)
        rows = sum(tally.values())
        m.BATCHES.inc()
        m.BATCH_ROWS.observe(rows)
        m.APPLY_SECONDS.observe(seconds)
        chunks = sum(1 for t in txns if t.partial)
        m.TRANSACTIONS_APPLIED.inc(len(txns) - chunks + sum(t.folded for t in txns))
        if chunks:
            m.CHUNKS_APPLIED.inc(chunks)
        stamp = max((t.timestamp for t in txns), default=0)
        if stamp:
            self.lag_s = max(0.0, time.time() - stamp)
            m.LAST_APPLIED_TIMESTAMP.set(stamp)
            m.LAG_SECONDS.set(self.lag_s)
            for table in {table for table, _op in tally}:
                m.TABLE_LAG_SECONDS.labels(table=table).set(self.lag_s)
        log.debug("sync.batch_applied", transactions=len(txns), rows=rows, ops=len(ops), checkpoint=self.expected)
        self._applied_since += rows
        now = time.monotonic()
        if now - self._last_progress >= 30:
            seconds_since = round(now - self._last_progress, 1)
            log.info("sync.progress", rows=self._applied_since, seconds=seconds_since, checkpoint=self.expected)
            self._last_progress, self._applied_since = now, 0


_TALLY_KEY = operator.itemgetter(1, 2, 0)  # RowChange → (schema, table, op)


def _rows(item: StreamItem) -> int:
    return len(item.changes) if isinstance(item, Transaction) else 0


def _tally(txns: Sequence[Transaction]) -> Tally[tuple[str, str]]:
    """Changes per (table, op): counted by (schema, table, op) in C, named once per key."""
    raw: Tally[tuple[str, str, Op]] = Tally()
    for txn in txns:
        raw.update(map(_TALLY_KEY, txn.changes))
    tally: Tally[tuple[str, str]] = Tally()
    for (schema, table, op), n in raw.items():
        tally[(f"{schema}.{table}", op.value)] += n
    return tally
