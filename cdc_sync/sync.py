"""The sync loop: binlog → transactions → planned operations → one atomic Redis step per batch.

Two threads. This module's Worker reads and decodes the binlog on the main thread and queues whole
transactions; the applier thread (applier.py) batches and applies them to Redis.

Rules this module keeps:
* The checkpoint moves only in the same atomic step as the data it covers, and only after Redis
  acknowledged it (the Lua script sets it last).
* Nothing is skipped: a Redis failure retries the same step with backoff; a binlog failure reconnects
  from the position of the last transaction queued; a change that cannot be planned flushes its table.
* If Redis holds a checkpoint other than the one this worker wrote (Redis lost writes), the worker
  rewinds to the stored position and replays; replays are harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.applier import Applier, Backoff, SinkPort
from cdc_sync.config import Config, check_against_schema
from cdc_sync.errors import ConfigError, PositionLostError, RewindRequired, ServerConfigError, SourceError
from cdc_sync.events import Flush, RawEvent, ServerInfo, Transaction
from cdc_sync.positions import PositionError, PositionTracker
from cdc_sync.transactions import Assembler

log = logs.get("cdc_sync.sync")
T = TypeVar("T")


class SourcePort(Protocol):
    def events(self, start: str) -> Iterator[RawEvent]: ...
    def close(self) -> None: ...


class AdminPort(Protocol):
    def server_info(self) -> ServerInfo: ...
    def table_columns(self, names: Sequence[str]) -> dict[str, list[str]]: ...


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
    """Reads the binlog and feeds the applier until ``stop()``; see the module docstring."""

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
        self._source_factory = source_factory
        self._admin = admin
        self._sink = sink
        self._backoff = backoff
        self._stop = threading.Event()
        self.applier = Applier(self.rules, sink, backoff, config.worker)
        self.info: ServerInfo | None = None

    # ---- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the transaction in hand, apply what is queued and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ---- start-up --------------------------------------------------------------------------------

    def prepare(self) -> str:
        """Check the server and the rules, load the checkpoint; return the start position."""
        info = self._retry_source("server_info", self._admin.server_info)
        self.info = info
        check_server(info)
        names = [r.name for r in self.rules]
        check_against_schema(self.config, self._retry_source("table_columns", lambda: self._admin.table_columns(names)))
        checkpoint = self._retry_sink("load_checkpoint", self._sink.load_checkpoint)
        if checkpoint is not None:
            try:
                PositionTracker(checkpoint)
            except PositionError as exc:
                raise ConfigError(f"Redis key {self.config.redis.namespace}:checkpoint holds {exc}") from None
            self.applier.expected = checkpoint
            log.info("sync.resume", checkpoint=checkpoint, flavor=info.flavor, server_version=info.version)
            return checkpoint
        start = initial_position(info, self.config.mysql.start, self.config.mysql.position_mode)
        if self._retry_sink("scan", lambda: self._sink.count_keys(self.rules)):
            # Keys without a checkpoint were written by nobody we can vouch for: an empty cache is correct.
            log.error("sync.no_checkpoint_with_keys", action="flush")
            self.applier.flush([Flush("no_checkpoint", r.schema, r.table) for r in self.rules])
        # Record the start at once, so a restart before the first change resumes from here.
        try:
            self._retry_sink("checkpoint", lambda: self._sink.apply([], None, start))
        except RewindRequired as exc:  # another worker wrote one meanwhile: follow it
            if exc.stored is None:
                raise
            start = exc.stored
        self.applier.expected = start
        log.info("sync.fresh_start", start=start, mode=self.config.mysql.start, flavor=info.flavor)
        return start

    def _retry_source(self, what: str, fn: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return fn()
            except SourceError as exc:
                m.SOURCE_ERRORS.labels(kind=type(exc).__name__).inc()
                log.warning("source.unavailable", step=what, error=str(exc), attempt=failures + 1)
                if self.stopping:
                    raise
                self._stop.wait(self._backoff.compute(failures))
                failures += 1

    def _retry_sink(self, what: str, fn: Callable[[], T]) -> T:
        return self.applier.retry(what, fn, give_up=lambda: self.stopping)

    # ---- main loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped. Raises CdcSyncError on a fatal problem."""
        start = self.prepare()
        assembler = self._assembler(start)
        self.applier.start()
        failures = 0
        try:
            while not self.stopping:
                self.applier.raise_failure()
                position = assembler.tracker.render()
                source = self._source_factory()
                log.info("source.connecting", position=position)
                try:
                    for raw in source.events(position):
                        failures = 0
                        item = assembler.feed(raw)
                        if item is not None:
                            self.applier.put(item)
                        if self.applier.rewind_to is not None:
                            target = self.applier.rewound()
                            log.warning("sync.rewound", position=target)
                            assembler = self._assembler(target)
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
                    self._stop.wait(delay)
                finally:
                    source.close()
                    assembler.reset()
        finally:
            if self.applier.stop(self.config.worker.shutdown_timeout_s):
                log.info("worker.stopped", checkpoint=self.applier.expected)
            else:
                log.warning(
                    "worker.shutdown_incomplete", queued=self.applier.queue.qsize(), checkpoint=self.applier.expected
                )

    def _assembler(self, position: str) -> Assembler:
        return Assembler(PositionTracker(position), self.rules, on_skip=self._on_skip)

    def _position_lost(self, assembler: Assembler, exc: PositionLostError) -> Assembler:
        """The position is gone from the server: drain, flush everything, restart at the server's end."""
        log.error("source.position_lost", error=str(exc), position=assembler.tracker.render(), action="flush_all")
        m.SOURCE_ERRORS.labels(kind="PositionLostError").inc()
        self.applier.drain()
        info = self._retry_source("server_info", self._admin.server_info)
        start = initial_position(info, "current", self.config.mysql.position_mode)
        flushes = tuple(Flush("position_lost", r.schema, r.table) for r in self.rules)
        self.applier.put(Transaction(position=start, flushes=flushes))
        return self._assembler(start)

    def _on_skip(self, txn: Transaction) -> None:
        m.TRANSACTIONS_SKIPPED.inc()
        log.debug("sync.replay_skipped", position=txn.position, gtid=txn.gtid)


__all__ = ["Worker", "check_server", "initial_position"]
