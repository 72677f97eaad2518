"""Composition root: config → adapters → worker; signals; exit codes.

Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration (or a server not set up for CDC).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType

from redis.backoff import ExponentialWithJitterBackoff

from cdc_sync import logs
from cdc_sync.config import Config
from cdc_sync.errors import CdcSyncError, ConfigError
from cdc_sync.health import HealthServer
from cdc_sync.heartbeat import Prober
from cdc_sync.mysql import MySQLAdmin
from cdc_sync.ops import doctor
from cdc_sync.sink import RedisSink
from cdc_sync.source import BinlogSource
from cdc_sync.sync import Worker

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

log = logs.get("cdc_sync.app")


class Service:
    """The worker with its adapters and the heartbeat prober, wired together."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sink = RedisSink(config.redis, holdoff_ms=config.reader.holdoff_ms)
        backoff = ExponentialWithJitterBackoff(cap=config.worker.retry_max_s, base=config.worker.retry_initial_s)
        self.worker = Worker(config, self._source, MySQLAdmin(config.mysql), self.sink, backoff, rules_store=self.sink)
        self.prober: Prober | None = None
        self.http: HealthServer | None = None
        if config.metrics.listen:
            ready_lag = config.metrics.ready_max_lag_s
            try:
                self.http = HealthServer(
                    config.metrics.listen, lambda: self.worker.health(self._heartbeat_age, ready_lag)
                )
            except OSError as exc:
                raise ConfigError(f"metrics.listen: cannot listen on {config.metrics.listen}: {exc.strerror}") from None

    def _heartbeat_age(self) -> float | None:
        return self.prober.heartbeat_age_s() if self.prober is not None else None

    def _source(self, tables: Iterable[tuple[str, str]]) -> BinlogSource:
        # prepare() has read the server's flavor before the first stream is opened
        flavor = self.worker.info.flavor if self.worker.info else "mysql"
        return BinlogSource(self.config.mysql, tables, flavor)

    def _start_prober(self) -> None:
        flavor = self.worker.info.flavor if self.worker.info else "mysql"
        applier = self.worker.applier
        self.prober = Prober(
            self.sink,
            MySQLAdmin(self.config.mysql),
            flavor,
            lambda: applier.expected,
            interval_s=self.config.worker.heartbeat_interval_ms / 1000,
        )
        self.prober.start()

    def run(self) -> None:
        if self.http is not None:
            self.http.start()
            log.info("worker.http_listening", listen=self.config.metrics.listen, port=self.http.port)
        try:
            self.worker.run(on_ready=self._start_prober)
        finally:
            if self.prober is not None:
                self.prober.stop()
            if self.http is not None:
                self.http.stop()
            self.sink.close()


def run(config: Config) -> int:
    """Run the worker until SIGTERM/SIGINT; return the process exit code."""
    # The doctor's checks first: a FAIL that configuration must fix stops here, with the same message.
    refusals = doctor.blocking_failures(doctor.run(config))
    for check in refusals:
        log.error("worker.config_error", error=f"{check.name}: {check.detail}", fix=check.fix)
    if refusals:
        return EXIT_CONFIG
    try:
        service = Service(config)
    except ConfigError as exc:
        log.error("worker.config_error", error=str(exc))
        return EXIT_CONFIG
    worker = service.worker

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("worker.signal", signal=signal.Signals(signum).name)
        worker.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    log.info(
        "worker.starting",
        config=config.path,
        mysql=f"{config.mysql.host}:{config.mysql.port}",
        redis=config.redis.safe_url,
        namespace=config.redis.namespace,
        tables=[r.name for r in config.tables],
    )
    try:
        service.run()
    except ConfigError as exc:
        log.error("worker.config_error", error=str(exc))
        return EXIT_CONFIG
    except CdcSyncError as exc:
        if worker.stopping:  # asked to stop while still connecting: not a failure
            log.info("worker.stopped", during="start-up", error=str(exc))
            return EXIT_OK
        log.error("worker.failed", error=str(exc), error_type=type(exc).__name__)
        return EXIT_FAILURE
    except Exception as exc:  # a bug: say so loudly, exit non-zero so the supervisor restarts us
        log.exception("worker.crashed", error=repr(exc))
        return EXIT_FAILURE
    return EXIT_OK
