"""The sync loop: binlog → transactions → planned operations → one atomic Redis step per batch.

Three threads. The Worker reads and decodes the binlog on the main thread and queues whole transactions;
the applier thread (applier.py) batches and applies them to Redis; the heartbeat prober (heartbeat.py)
keeps ``<ns>:heartbeat`` truthful for readers.

Rules this module keeps:
* The checkpoint moves only in the same atomic step as the data it covers, and only after Redis
  acknowledged it (the Lua script sets it last).
* Nothing is skipped: a Redis failure retries the same step with backoff; a binlog failure reconnects
  from the position of the last transaction queued; a change that cannot be planned flushes its table.
* If Redis holds a checkpoint other than the one this worker wrote (Redis lost writes), the worker
  rewinds to the stored position and replays; replays are harmless.
* What the cache holds was written under the configured rules: a rule added, changed or removed since
  the last run flushes its table before anything else happens.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.config import Config, TableRule, check_against_schema, rule_fingerprint, rule_from_fingerprint
from cdc_sync.core import cascades
from cdc_sync.core.cascades import CascadeEdge, CascadeWatch
from cdc_sync.core.events import (
    Flush,
    RawBegin,
    RawQuery,
    RawRows,
    RedisMemory,
    ServerInfo,
    StreamItem,
    Transaction,
)
from cdc_sync.core.keys import Namespace
from cdc_sync.core.planner import needed_columns, sql_for_log, statement_flushes
from cdc_sync.core.positions import (
    PositionTracker,
    binlog_state_holds,
    contains,
    kind_of,
    reached,
    same_state,
    split_stream,
)
from cdc_sync.core.requirements import check_server, initial_position, server_identity
from cdc_sync.core.rowdecode import register_server_charset, server_charset_known
from cdc_sync.core.transactions import Assembler
from cdc_sync.errors import (
    CdcSyncError,
    ConfigError,
    PositionError,
    PositionLostError,
    RewindRequired,
    ServerChanged,
    SinkUnavailable,
    SourceError,
)
from cdc_sync.worker.applier import Applier
from cdc_sync.worker.health import Health
from cdc_sync.worker.ports import AdminPort, NotifyPort, RulesPort, Silent, SinkPort, SourceFactory
from cdc_sync.worker.retry import Backoff, retry

log = logs.get("cdc_sync.sync")
_FOLD_MAX = 1000  # empty transactions one queued item stands for, at most
T = TypeVar("T")


class Worker:
    """Reads the binlog and feeds the applier until ``stop()``; see the module docstring."""

    def __init__(
        self,
        config: Config,
        source_factory: SourceFactory,
        admin: AdminPort,
        sink: SinkPort,
        backoff: Backoff,
        rules_store: RulesPort | None = None,
        notifier: NotifyPort | None = None,
    ) -> None:
        self.config = config
        self.rules = list(config.tables)
        self._source_factory = source_factory
        self._admin = admin
        self._sink = sink
        self._rules_store = rules_store
        self._backoff = backoff
        self._stop = threading.Event()
        self.applier = Applier(self.rules, sink, backoff, config.worker)
        self.info: ServerInfo | None = None
        self.tables = needed_columns(self.rules, ())
        self.watches: list[CascadeWatch] = []  # only grows while running (see _derive_schema)
        # per mapped table, the columns whose binlog value is not what a SELECT prints (rowdecode.server_text),
        # updated in place after DDL: the stream reads it for every rows event it translates
        self.value_kinds: dict[tuple[str, str], dict[str, str]] = {}
        self._evictions_whole: int | None = None  # INFO evicted_keys when the cache was last made whole
        self._memory_settings: tuple[str, int] | None = None  # maxmemory-policy and maxmemory last seen
        self._hidden_noted: set[str] = set()  # tables whose foreign keys' actions information_schema hides
        self._uncertain_rules: list[TableRule] = []  # held as flushing until the stream reaches _uncertain_until
        self._uncertain_until = ""
        self._uncertain_dirty = False  # another rewiring statement came inside the window: flush at its end
        self.applier.on_checkpoint_lost = self._republish
        self.notifier: NotifyPort = notifier if notifier is not None else Silent()
        self.streaming = False  # the binlog stream is connected and delivering events
        m.CONNECTED.labels(side="mysql").set_function(lambda: 1.0 if self.streaming else 0.0)
        m.CONNECTED.labels(side="redis").set_function(lambda: 0.0 if getattr(sink, "failing", None) else 1.0)
        self.last_tick = time.monotonic()
        self._ready_sent = False
        self._watchdog_at = -1.0  # monotonic time the watchdog was last looked at
        self._held: tuple[Transaction, int] | None = None  # an empty transaction waiting (see _hand_over), and how
        # many transactions it stands for

    # ---- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the transaction in hand, apply what is queued, and return from run().

        If Redis does not take it within ``shutdown_timeout_s`` the applier is aborted: what it held is
        not checkpointed and is read again after the restart.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        timer = threading.Timer(self.config.worker.shutdown_timeout_s, self.applier.abort.set)
        timer.daemon = True
        timer.start()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ---- start-up --------------------------------------------------------------------------------

    def prepare(self) -> str:
        """Check the server and the rules, reconcile the cache with them; return the start position."""
        info = self._retry_source("server_info", self._admin.server_info)
        self.info = info
        check_server(info)
        names = [r.name for r in self.rules]
        check_against_schema(self.config, self._retry_source("table_columns", lambda: self._admin.table_columns(names)))
        self._derive_schema()
        self._release_leftover_holds()
        checkpoint = self._retry_sink("load_checkpoint", self._sink.load_checkpoint)
        self._evictions_at_start(fresh=checkpoint is None)
        if checkpoint is not None:
            try:
                PositionTracker(checkpoint)
            except PositionError as exc:
                where = Namespace(self.config.redis.namespace).checkpoint
                raise ConfigError(f"Redis key {where} holds {exc}") from None
            self.applier.expected = checkpoint
            self._reconcile_rules(fresh=False)
            checkpoint = self._check_lineage(info, checkpoint)
            log.info("sync.resume", checkpoint=checkpoint, flavor=info.flavor, server_version=info.version)
            self._report_start(checkpoint)
            return checkpoint
        start = initial_position(info, self.config.mysql.start, self.config.mysql.position_mode)
        if self._retry_sink("scan", lambda: self._sink.count_keys(self.rules)):
            # Keys without a checkpoint were written by nobody we can vouch for: an empty cache is correct.
            log.error("sync.no_checkpoint_with_keys", action="flush")
            self.applier.flush([Flush("no_checkpoint", r.schema, r.table) for r in self.rules])
        self._reconcile_rules(fresh=True)
        identity = server_identity(info)
        self._retry_sink("server identity", lambda: self._sink.save_server_identity(identity))
        # Record the start at once, so a restart before the first change resumes from here.
        try:
            self._retry_sink("checkpoint", lambda: self._sink.apply([], None, start))
        except RewindRequired as exc:  # another worker wrote one meanwhile: follow it
            if exc.stored is None:
                raise
            start = exc.stored
        self.applier.expected = start
        log.info("sync.fresh_start", start=start, mode=self.config.mysql.start, flavor=info.flavor)
        self._report_start(start)
        return start

    # ---- evictions ---------------------------------------------------------------------------------

    def _evictions_at_start(self, fresh: bool) -> None:
        """Keys Redis evicted since the cache was last known whole (``<ns>:evictions``, the INFO count then) may
        include tag sets and markers that invalidations depend on, also while no worker ran: flush every table
        (a fresh start flushes anyway). A count never recorded counts as a change when Redis has evicted at all,
        and one that went down means another Redis (a restart, a restore): flush as well."""
        memory = self._retry_sink("evicted keys", self._sink.memory)
        self._watch_policy(memory)
        now = memory.evicted_keys
        recorded = self._retry_sink("evictions", self._sink.recorded_evictions)
        if not fresh and recorded != now and (recorded is not None or now > 0):
            m.EVICTION_FLUSHES.inc()
            log.error("sync.keys_evicted", evicted=now, recorded=recorded, when="while stopped", action="flush_all")
            self.applier.flush([Flush("evicted", r.schema, r.table) for r in self.rules])
        self._retry_sink("evictions", lambda: self._sink.record_evictions(now))
        self._evictions_whole = now

    def evictions_settled(self) -> bool:
        """Whether the heartbeat may vouch: no key was evicted since the cache was last made whole (any eviction
        may have taken a tag set or a hold-off, flushing or schema marker that the next invalidation depends on,
        and INFO does not say which keys went).

        Called by the prober (its thread) after the checkpoint reached its target and before it moves the
        heartbeat, so an eviction before that probe's T0 holds the heartbeat back. A new eviction count flushes
        every table here (eviction-safe: the flush only removes, concurrent applies write fresh values), then
        records the count it made whole; the next probe vouches again. A crash before the record flushes again
        at start. Under steady memory pressure this is a flush per probe (doctor WARNs about every evicting
        policy)."""
        memory = self._sink.memory()
        self._watch_policy(memory)
        now = memory.evicted_keys
        if now == self._evictions_whole:
            return True
        m.EVICTION_FLUSHES.inc()
        log.error("sync.keys_evicted", evicted=now, previous=self._evictions_whole, when="running", action="flush_all")
        self.applier.flush([Flush("evicted", r.schema, r.table) for r in self.rules])
        self._republish()  # an allkeys-* policy may have evicted <ns>:rules or <ns>:server too
        self._restore_checkpoint()
        self._sink.record_evictions(now)
        self._evictions_whole = now
        return False

    def _restore_checkpoint(self) -> None:
        """After an eviction flush: write the checkpoint again if Redis evicted it (allkeys-*). Without it the
        heartbeat cannot move until the next change. It is the position this worker wrote last, and every table
        was just flushed. When the key is there (the applier moved it meanwhile) nothing is written; an applier
        step that found it missing flushes and writes its own (applier.py ``checkpoint_lost``)."""
        position = self.applier.expected
        if position is None:
            return
        try:
            restored = self._sink.apply([], None, position)
        except RewindRequired:  # present, and another position: nothing was lost
            return
        if restored:
            log.error("sync.checkpoint_lost", checkpoint=position, when="evicted", action="flushed_and_restored")

    def _watch_policy(self, memory: RedisMemory) -> None:
        """Say when Redis's eviction settings change (read with every eviction count, so a ``CONFIG SET`` at run
        time is seen within a heartbeat). Evictions themselves are what the worker acts on (``evictions_settled``):
        under any policy the next one flushes every table before the heartbeat vouches again."""
        seen = (memory.policy, memory.maxmemory)
        if seen == self._memory_settings:
            return
        self._memory_settings = seen
        m.REDIS_MAY_EVICT.set(int(memory.may_evict))
        event = dict(policy=memory.policy, maxmemory=memory.maxmemory, may_evict=memory.may_evict)
        if memory.may_evict:
            log.warning("sync.eviction_policy", **event, effect="each eviction flushes every table")
        else:
            log.info("sync.eviction_policy", **event)

    def _release_leftover_holds(self) -> None:
        """A table held as flushing with no operator command running (``<ns>:operator``) was held by a worker
        that died before releasing it (``_hold_while_uncertain``): flush it and release it."""
        held = self._retry_sink("held tables", lambda: self._sink.held_tables(self.rules))
        for rule in held:
            self.applier.flush_rule(rule, "leftover_hold", give_up=self._waiting, release=True)

    def _report_start(self, position: str) -> None:
        from cdc_sync import __version__

        host = socket.gethostname()
        self._report(
            state="starting", host=host, pid=os.getpid(), version=__version__, started_at=time.time(), start=position
        )

    def _check_lineage(self, info: ServerInfo, checkpoint: str) -> str:
        """Make sure the server's history contains the checkpoint; if not, flush and start at its end.

        GTID checkpoints: the server's GTID state must include the checkpoint (a server with another
        lineage, or one restored from an older backup, does not). File checkpoints: the server must be the
        one that wrote them (same ``server_uuid``/``server_id``), since file offsets mean nothing elsewhere.
        """
        # The server's position now, read after the checkpoint: a single worker's checkpoint cannot be past it.
        info = self._retry_source("server_info", self._admin.server_info)
        identity = server_identity(info)
        stored = self._retry_sink("server identity", self._sink.server_identity)
        kind = PositionTracker(checkpoint).kind
        if kind == "file":
            changed = stored is not None and stored != identity
        else:
            changed = not self._gtid_lineage_holds(info, checkpoint)
        if changed:
            start = initial_position(info, "current", self.config.mysql.position_mode)
            m.REWINDS.labels(reason="lineage_changed").inc()
            log.error(
                "source.lineage_changed",
                checkpoint=checkpoint,
                server_position=info.gtid_position or info.file_position,
                server=identity,
                previous_server=stored,
                action="flush_all",
                start=start,
            )
            self.applier.flush([Flush("lineage_changed", r.schema, r.table) for r in self.rules])
            try:
                self._retry_sink("checkpoint", lambda: self._sink.apply([], checkpoint, start))
            except RewindRequired as exc:
                raise CdcSyncError(f"another worker is writing this namespace ({exc}); run one per namespace") from None
            self.applier.expected = checkpoint = start
        if stored != identity:
            self._retry_sink("server identity", lambda: self._sink.save_server_identity(identity))
        return checkpoint

    def _gtid_lineage_holds(self, info: ServerInfo, checkpoint: str) -> bool:
        """Whether the server's history holds the GTID checkpoint.

        A MariaDB checkpoint that records a position in a binlog file this server wrote holds exactly when the
        server's GTID state at that position is the checkpoint's (sequence numbers may have gone backwards since,
        so comparing numbers with the current state proves nothing); the checkpoint's own server without that
        file (purged) is a lost position, which resuming finds (and flushes). Otherwise (a failover to a replica
        that applied it) the server's current GTID state must contain the checkpoint's.
        """
        gtid, stream = split_stream(checkpoint) if info.flavor == "mariadb" else (checkpoint, None)
        if stream is not None:
            writer = self._retry_source("binlog file", lambda: self._admin.binlog_server_id(stream.at.file))
            if writer == stream.server_id:
                at = self._retry_source("binlog position", lambda: self._admin.gtid_at(str(stream.at)))
                return at is not None and same_state(at, gtid)
            if writer is None and info.variables.get("server_id") == str(stream.server_id):
                return True  # its own server, its file gone (purged): a lost position, which the resume finds
        try:
            held = bool(info.gtid_position) and contains(info.gtid_position, checkpoint)
            # ... and, on MariaDB, hold each of the checkpoint's GTIDs from its own server (a replica promoted
            # after it fell behind has the domain's number past them, from its own later transactions)
            state = info.variables.get("gtid_binlog_state")
            if held and info.flavor == "mariadb" and state is not None:
                held = binlog_state_holds(state, checkpoint)
            return held
        except PositionError:
            return False

    def _derive_schema(self, ddl: RawQuery | None = None) -> bool:
        """(Re)derive what depends on the schema: each rule's table as the server stores its name, the
        foreign-key cascades leading to mapped tables, and the tables (and columns) the stream decodes.

        Run at start and after every DDL statement. Watches and streamed tables only grow during a run, and a
        DDL that declares a cascading key is watched from its text too: information_schema may be read long
        after the statement (the worker lags, or a later DDL dropped the key again), while the parent's deletes
        in between did cascade. Returns True when the streamed tables changed (the stream must reconnect).
        """
        names = [r.name for r in self.config.tables]
        stored = self._retry_source("table names", lambda: self._admin.stored_names(names))
        previous = {r.name: r.stored for r in self.rules}
        self.rules = [replace(r, stored=stored.get(r.name, previous.get(r.name))) for r in self.config.tables]
        for rule in self.rules:
            if rule.stored is not None and rule.stored != (rule.schema, rule.table):
                log.info("sync.table_name_resolved", table=rule.name, stored=".".join(rule.stored))
        mapped = [r.stored_as for r in self.rules]
        kinds = self._retry_source("column types", lambda: self._admin.value_kinds(mapped))
        self.value_kinds.clear()
        self.value_kinds.update(kinds)
        # 8-bit text decoded with the server's own table of each charset (before any row is decoded)
        charsets = self._retry_source(
            "charsets", lambda: self._admin.server_charsets(mapped, known=server_charset_known)
        )
        for charset, (table, sequences) in charsets.items():
            register_server_charset(charset, table, sequences)
        edges = self._retry_source("foreign keys", self._admin.cascade_edges)
        hidden = sorted({e.child for e in edges if e.assumed} - self._hidden_noted)
        if hidden:
            self._hidden_noted.update(hidden)
            log.warning(
                "sync.cascade_actions_hidden",
                tables=hidden,
                action="their foreign keys are watched as if they cascaded (parent changes flush mapped children)",
                fix=f"GRANT REFERENCES ON *.* TO '{self.config.mysql.user}'@'%' so that their actions can be read",
            )
        found = cascades.watches(edges, self.rules) + (self._ddl_watches(ddl, edges) if ddl is not None else [])
        new = [w for w in dict.fromkeys(found) if w not in self.watches]
        self.watches += new
        self.applier.set_rules(self.rules)
        self.applier.set_cascades(self.watches)
        for w in new:
            m.CASCADE_WATCHES.inc()
            log.warning(
                "sync.cascade_watched",
                parent=".".join(w.parent),
                children=[t.name for t in w.targets],
                on_delete=w.on_delete,
                on_update=w.on_update,
                after_ddl=ddl is not None,
                note="foreign-key actions are not in the binlog: these parent changes flush the children",
            )
        tables = needed_columns(self.rules, [(w.parent, None if w.fold_case else w.columns) for w in self.watches])
        if ddl is not None:
            # Watches only grow and the rules stay, so a table streamed before keeps at least its columns; one no
            # longer named (a stored name that changed) keeps streaming for changes still queued.
            tables = {**self.tables, **tables}
        changed = tables != self.tables
        self.tables = tables
        if ddl is not None:
            m.SCHEMA_REFRESHES.inc()
            log.info("sync.schema_refreshed", statement=sql_for_log(ddl.sql), streamed_tables_changed=changed)
        return changed

    def _schema_changed_by(self, query: RawQuery, assembler: Assembler) -> bool:
        """After a DDL statement: re-derive the schema state; True when the stream must reconnect."""
        if not cascades.is_schema_change(query.sql):
            return False
        changed = self._derive_schema(query)
        if cascades.may_rewire(query.sql):
            self._hold_while_uncertain(query, assembler)
        return changed

    def _hold_while_uncertain(self, query: RawQuery, assembler: Assembler) -> None:
        """A DDL that may rewire foreign keys, read while the stream lags behind the server: information_schema
        may already show a later schema (a swap renamed again, a key dropped again), so a cascade between the
        statement and the server's position now may go unwatched. The mapped tables it names, and every mapped
        table a cascade watch reaches, are held as flushing from here until the stream reaches that position
        (``_release_when_certain``). The statements in between are all read on the way: if none of them may
        rewire keys, information_schema showed exactly the graph of that stretch and the tables are released as
        they are; if one does, the window was uncertain and they are flushed before the release."""
        if self._uncertain_rules:
            self._uncertain_dirty = True  # another rewiring statement inside the window: it was uncertain
        info = self.info
        target = ""
        if info is not None:
            kind = assembler.tracker.kind
            target = self._retry_source("binlog position", lambda: self._admin.current_position(info.flavor, kind))
        try:
            lagging = not target or not reached(assembler.tracker.render(), target)
        except PositionError:
            lagging = True
        if not lagging:
            return
        named = {(f.schema, f.table) for f in statement_flushes(query.sql, self.rules)}
        rules = [r for r in self.rules if (r.schema, r.table) in named or any(r in w.targets for w in self.watches)]
        fresh = [r for r in rules if r.name not in {h.name for h in self._uncertain_rules}]
        self._uncertain_rules += fresh
        self._uncertain_until = target
        if fresh:
            flushes = tuple(
                Flush("schema_uncertain", r.schema, r.table, detail=sql_for_log(query.sql), hold="hold") for r in fresh
            )
            self._hand_over(Transaction(position=assembler.tracker.render(), flushes=flushes))
        log.warning(
            "sync.schema_uncertain",
            statement=sql_for_log(query.sql),
            held=[r.name for r in self._uncertain_rules],
            until=target,
            note="read while lagging: these tables bypass the cache until the stream reaches the position",
        )

    def _release_when_certain(self, assembler: Assembler) -> None:
        """Once the stream has reached the position of the last uncertain schema read: flush and release."""
        if not self._uncertain_rules or assembler.in_txn:
            return
        try:
            done = not self._uncertain_until or reached(assembler.tracker.render(), self._uncertain_until)
        except PositionError:
            done = False
        if not done:
            return
        rules, self._uncertain_rules, self._uncertain_until = self._uncertain_rules, [], ""
        dirty, self._uncertain_dirty = self._uncertain_dirty, False
        mode = "release" if dirty else "unhold"
        flushes = tuple(Flush("schema_certain", r.schema, r.table, hold=mode) for r in rules)
        self._hand_over(Transaction(position=assembler.tracker.render(), flushes=flushes))
        log.info(
            "sync.schema_certain", released=[r.name for r in rules], flushed=dirty, position=assembler.tracker.render()
        )

    def _ddl_watches(self, ddl: RawQuery, edges: Sequence[CascadeEdge]) -> list[CascadeWatch]:
        """Watches for the cascading keys a DDL statement's text declares (names resolved as stored)."""
        child, keys = cascades.ddl_references(ddl.sql, ddl.schema)
        if not keys:
            return []
        named = [".".join(t) for t in (*(k.parent for k in keys), *([child] if child is not None else []))]
        stored = self._retry_source("table names", lambda: self._admin.stored_names(named))
        child = stored.get(".".join(child), child) if child is not None else None
        keys = [replace(k, parent=stored.get(".".join(k.parent), k.parent)) for k in keys]
        return cascades.provisional_watches(child, keys, edges, self.rules)

    def _reconcile_rules(self, fresh: bool) -> None:
        """Flush tables whose rule was added, changed or removed since the cache was last written.

        On a fresh start the configured tables were just dealt with (no checkpoint: flushed if they had keys).
        """
        if self._rules_store is None:
            return
        store = self._rules_store
        stored = self._retry_sink("rules", store.rule_fingerprints)
        current = {r.name: rule_fingerprint(r) for r in self.rules}
        flushes: list[tuple[TableRule, str]] = []
        for rule in [] if fresh else self.rules:
            if stored.get(rule.name) != current[rule.name]:
                flushes.append((rule, "rule_changed" if rule.name in stored else "rule_added"))
        for name, text in stored.items():
            if name not in current:
                try:
                    flushes.append((rule_from_fingerprint(text), "rule_removed"))
                except ConfigError as exc:
                    log.error("sync.stored_rule_unreadable", table=name, error=str(exc))
        for rule, reason in flushes:
            self.applier.flush_rule(rule, reason, give_up=self._waiting)
        if flushes or stored != current:
            self._retry_sink("rules", lambda: store.save_rule_fingerprints(current))

    def _republish(self) -> None:
        """Redis lost everything: record the rules and the server identity again (as a fresh start does)."""
        if self._rules_store is not None:
            store, current = self._rules_store, {r.name: rule_fingerprint(r) for r in self.rules}
            self._retry_sink("rules", lambda: store.save_rule_fingerprints(current))
        if self.info is not None:
            identity = server_identity(self.info)
            self._retry_sink("server identity", lambda: self._sink.save_server_identity(identity))

    def _retry_source(self, what: str, fn: Callable[[], T]) -> T:
        def failed(exc: Exception, attempt: int, _delay: float) -> None:
            m.SOURCE_ERRORS.labels(kind=type(exc).__name__).inc()
            log.warning("source.unavailable", step=what, error=str(exc), attempt=attempt)
            self.report_error("source", str(exc))

        def wait(delay: float) -> None:
            self._stop.wait(delay)
            self.tick()

        return retry(
            fn, retryable=SourceError, backoff=self._backoff, wait=wait, failed=failed, give_up=lambda: self.stopping
        )

    def _retry_sink(self, what: str, fn: Callable[[], T]) -> T:
        return self.applier.retry(what, fn, give_up=self._waiting)

    # ---- main loop -------------------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run until stopped. Raises CdcSyncError on a fatal problem."""
        start = self.prepare()
        assembler = self._assembler(start)
        self.applier.start()
        if on_ready is not None:
            on_ready()
        failures = 0
        try:
            while not self.stopping:
                self.applier.raise_failure()
                position = assembler.tracker.render()
                source = self._source_factory(self.tables)
                reconnect = False  # the streamed tables changed (DDL): reconnect once between transactions
                generation = self.applier.generation
                log.info("source.connecting", position=position)
                try:
                    if assembler.tracker.stream is not None and not self._file_resume_holds(assembler):
                        continue  # resume by GTID instead (the finally below resets the assembler)
                    for raw in source.events(position):
                        failures = 0
                        self._on_event(assembler)
                        item = assembler.feed(raw)
                        # A DDL statement: the schema is read again (and any hold queued) before its own
                        # transaction moves the checkpoint past it, so a caught-up checkpoint means a schema read
                        # at least that late. The tables to stream may have grown (a new cascade parent): they are
                        # read again from the position just after the statement.
                        if isinstance(raw, RawQuery) and self._schema_changed_by(raw, assembler):
                            reconnect = True
                        if item is not None:
                            self._hand_over(item, source.more_buffered())
                            self._release_when_certain(assembler)  # (after the statement was seen as rewiring)
                        elif self._held is not None and not isinstance(raw, RawBegin | RawRows):
                            self._hand_over(None)  # the stream went on without a transaction: queue what waits
                        if reconnect and not assembler.in_txn:  # (CREATE ... SELECT: after its rows)
                            log.info("source.reconnect_for_schema", position=assembler.tracker.render())
                            self._hand_over(None)
                            break
                        if self.applier.rewind_to is not None:
                            self._held = None  # read before the rewind: dropped with everything else of it
                            target = self.applier.rewound()
                            log.warning("sync.rewound", position=target)
                            if self._readable(target):
                                assembler = self._assembler(target)
                            else:  # written by hand: another server's form, or garbage
                                lost = PositionLostError(f"the stored checkpoint {target!r} cannot be read here")
                                assembler = self._position_lost(assembler, lost)
                            break
                        if self.stopping and not assembler.in_txn:
                            self._hand_over(None)
                            break
                except ServerChanged as exc:
                    # a failover behind the same address: this server's file offsets mean nothing, resume by GTID
                    self._resume_by_gtid(assembler, str(exc))
                except PositionLostError as exc:
                    assembler = self._position_lost(assembler, exc)
                except SourceError as exc:
                    self.streaming = False
                    m.SOURCE_ERRORS.labels(kind=type(exc).__name__).inc()
                    m.RECONNECTS.inc()
                    delay = self._backoff.compute(failures)
                    log.warning("source.disconnected", error=str(exc), retry_in_s=round(delay, 3), attempt=failures + 1)
                    self.report_error("source", str(exc))
                    failures += 1
                    self._stop.wait(delay)
                    self.tick()
                finally:
                    self.streaming = False  # until the next connection delivers: the prober does not vouch
                    source.close()
                    assembler.reset()
                    # A held transaction is whole and in order: queued (the reconnect resumes after it), unless
                    # the applier asked for a rewind (or one happened: a new generation), which drops what was read.
                    if self.applier.rewind_to is None and self.applier.generation == generation and not self.stopping:
                        self._hand_over(None)
                    self._held = None
        finally:
            self.streaming = False
            if self.applier.stop(self.config.worker.shutdown_timeout_s) and self.applier.failure is None:
                log.info("worker.stopped", checkpoint=self.applier.expected)
            else:
                queued = self.applier.queue.qsize()
                log.warning("worker.shutdown_incomplete", queued=queued, checkpoint=self.applier.expected)

    def _hand_over(self, item: StreamItem | None, more: bool = False) -> None:
        """Queue ``item`` for the applier (None: only what is held), or hold it. Every item is queued through
        here, so the queue stays in stream order and the checkpoint never moves back.

        An empty transaction (no change, no flush: a busy server's unmapped tables) is held while ``more`` (the
        next event is already read), and the next one replaces it: only the last position of a run of them
        matters. The next whole transaction stands for the held ones (``folded``); anything else (a heartbeat, a
        chunk) is queued after them.
        """
        held = self._held
        if isinstance(item, Transaction) and more and not (item.changes or item.flushes or item.partial):
            count = 1 + item.folded + (held[1] if held is not None else 0)
            if count < _FOLD_MAX:  # (a long backlog of them still moves the checkpoint now and then)
                self._held = (item, count)
                return
            held, item = None, replace(item, folded=count - 1)
        self._held = None
        if held is not None:
            txn, count = held
            if isinstance(item, Transaction) and not item.partial:
                item = replace(item, folded=item.folded + count)
            else:
                self.applier.put(replace(txn, folded=count - 1) if count > 1 else txn, give_up=self._waiting)
        if item is not None:
            self.applier.put(item, give_up=self._waiting)

    def close(self) -> None:
        """Release the admin connection (each HA term has its own Worker)."""
        close = getattr(self._admin, "close", None)
        if close is not None:
            close()

    # ---- liveness, readiness, systemd, status ------------------------------------------------------

    def tick(self) -> None:
        """The loop is alive (called on every event, retry and wait)."""
        self.last_tick = time.monotonic()

    def _waiting(self) -> bool:
        self.tick()
        return self.stopping

    def _on_event(self, assembler: Assembler) -> None:
        now = self.last_tick = time.monotonic()  # (tick(), inline: this runs for every event)
        if not self.streaming:
            self.streaming = True
            self._report(state="streaming")  # again after every reconnect
            if not self._ready_sent:
                self._ready_sent = True
                self.notifier.send("READY=1", f"STATUS=streaming from {assembler.tracker.render()}")
        # The watchdog is fed only while Redis takes what is decoded (or nothing waits for it); looked at no more
        # than every 0.1 s (the notifier pings at most twice per watchdog period anyway).
        if now - self._watchdog_at < 0.1:
            return
        self._watchdog_at = now
        applier = self.applier
        if applier.queue.qsize() == 0 or now - applier.last_applied < 30:
            self.notifier.watchdog(f"streaming; checkpoint {applier.expected}; lag {applier.lag_s:.1f}s")

    def health(self, heartbeat_age_s: Callable[[], float | None], ready_max_lag_s: float) -> Health:
        alive = time.monotonic() - self.last_tick < 60 and self.applier.failure is None
        age = heartbeat_age_s()
        ready = alive and self.streaming and age is not None and age <= ready_max_lag_s
        detail = {"streaming": self.streaming, "checkpoint": self.applier.expected, "heartbeat_age_s": age}
        return Health(alive=alive, ready=ready, detail=detail)

    def report_error(self, kind: str, message: str) -> None:
        """A connection failed and is being retried: the state is "reconnecting" until events flow again."""
        self._report(state="reconnecting", last_error=f"{kind}: {message}"[:500], last_error_at=time.time())

    def _report(self, **fields: str | int | float) -> None:
        with contextlib.suppress(SinkUnavailable):  # best effort: if Redis is down, the logs have it
            self._sink.report_status(fields)

    def _assembler(self, position: str) -> Assembler:
        return Assembler(
            PositionTracker(position), self.rules, on_skip=self._on_skip, chunk_rows=self.config.worker.chunk_rows
        )

    def _readable(self, position: str) -> bool:
        """Whether ``position`` is one this server's binlog can be read from (its form fits the server)."""
        try:
            kind = kind_of(position)
        except PositionError:
            return False
        flavor = self.info.flavor if self.info is not None else ""
        return kind == "file" or kind == flavor

    def _file_resume_holds(self, assembler: Assembler) -> bool:
        """Before resuming a MariaDB position by its file position: is that file this very server's?

        The file's own format description names the server that wrote it. Another server's file (a failover
        behind one address: its offsets mean nothing here), or no such file on another server: resume by GTID
        (returns False). No such file on the server the checkpoint came from (purged, RESET MASTER): the position
        is lost (PositionLostError); resuming by GTID could start after a later repeat of the same GTID.
        """
        stream = assembler.tracker.stream
        assert stream is not None
        writer = self._retry_source("binlog file", lambda: self._admin.binlog_server_id(stream.at.file))
        if writer == stream.server_id:
            return True
        if writer is None:
            info = self._retry_source("server_info", self._admin.server_info)
            if info.variables.get("server_id") == str(stream.server_id):
                raise PositionLostError(f"binlog file {stream.at.file} is gone from server {stream.server_id}")
        self._resume_by_gtid(assembler, f"binlog file {stream.at.file} is not server {stream.server_id}'s here")
        return False

    def _resume_by_gtid(self, assembler: Assembler, why: str) -> None:
        log.warning("source.resume_by_gtid", error=why, position=assembler.tracker.render())
        m.SOURCE_ERRORS.labels(kind="ServerChanged").inc()
        assembler.tracker.forget_stream()

    def _position_lost(self, assembler: Assembler, exc: PositionLostError) -> Assembler:
        """The position is gone from the server: drain, flush everything, restart at the server's end."""
        log.error("source.position_lost", error=str(exc), position=assembler.tracker.render(), action="flush_all")
        m.SOURCE_ERRORS.labels(kind="PositionLostError").inc()
        self.applier.drain(give_up=self._waiting)
        info = self._retry_source("server_info", self._admin.server_info)
        start = initial_position(info, "current", self.config.mysql.position_mode)
        flushes = tuple(Flush("position_lost", r.schema, r.table) for r in self.rules)
        self._hand_over(Transaction(position=start, flushes=flushes))
        return self._assembler(start)

    def _on_skip(self, txn: Transaction) -> None:
        m.TRANSACTIONS_SKIPPED.inc()
        log.debug("sync.replay_skipped", position=txn.position, gtid=txn.gtid)


__all__ = ["Worker"]
