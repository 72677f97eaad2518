"""Composition root: config → adapters → worker; signals; exit codes.

Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration (or a server not set up for CDC).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from redis.backoff import ExponentialWithJitterBackoff

from cdc_sync import logs
from cdc_sync.config import Config
from cdc_sync.errors import CdcSyncError, ConfigError
from cdc_sync.sink import RedisSink
from cdc_sync.source import BinlogSource, MySQLAdmin
from cdc_sync.sync import Worker

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

log = logs.get("cdc_sync.app")


def build_worker(config: Config) -> Worker:
    """Wire the real adapters around a Worker."""
    admin = MySQLAdmin(config.mysql)
    sink = RedisSink(config.redis, holdoff_ms=config.worker.holdoff_ms)

    def source_factory() -> BinlogSource:
        # prepare() has read the server's flavor before the first stream is opened
        return BinlogSource(config.mysql, config.tables, worker.info.flavor if worker.info else "mysql")

    backoff = ExponentialWithJitterBackoff(cap=config.worker.retry_max_s, base=config.worker.retry_initial_s)
    worker = Worker(config, source_factory, admin, sink, backoff)
    return worker


def run(config: Config) -> int:
    """Run the worker until SIGTERM/SIGINT; return the process exit code."""
    worker = build_worker(config)

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
        worker.run()
    except ConfigError as exc:
        log.error("worker.config_error", error=str(exc))
        return EXIT_CONFIG
    except CdcSyncError as exc:
        if worker.stopping:  # asked to stop while still connecting: not a failure
            log.info("worker.stopped", during="start-up", error=str(exc))
            return EXIT_OK
        log.error("worker.failed", error=str(exc), error_type=type(exc).__name__)
        return EXIT_FAILURE
    return EXIT_OK
