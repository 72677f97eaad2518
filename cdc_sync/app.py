"""Composition root: config → adapters → worker; HA terms; signals; exit codes.

Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration, a server not set up for CDC, or a server
that refuses us for a reason no retry can fix (errors.ServerRefused: credentials, privileges, a duplicate
server_id); transient failures (a server down or restarting, a timeout) are retried, never an exit.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType

from redis.backoff import ExponentialWithJitterBackoff

from cdc_sync import logs
from cdc_sync import metrics as m
from cdc_sync.adapters.binlog import BinlogSource
from cdc_sync.adapters.mysql import MySQLAdmin
from cdc_sync.adapters.redis_cluster import make_sink
from cdc_sync.config import Config
from cdc_sync.errors import CdcSyncError, ConfigError, Fenced, ServerRefused, SinkUnavailable
from cdc_sync.ops import doctor
from cdc_sync.worker.ha import LeaderLease, Renewer
from cdc_sync.worker.health import Health, HealthServer
from cdc_sync.worker.heartbeat import Prober
from cdc_sync.worker.loop import Worker
from cdc_sync.worker.notify import Notifier
from cdc_sync.worker.statusreport import StatusReporter
from cdc_sync.worker.verifier import SampledVerifier

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

log = logs.get("cdc_sync.app")


class Service:
    """The worker with its adapters, the heartbeat prober, the HTTP endpoint and (with HA) the leader lease.

    Without HA it runs one Worker. With HA it waits as a standby until it holds the lease, runs a Worker
    for that term, and goes back to standby when the lease is lost or its writes are fenced.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sink = make_sink(config.redis, holdoff_ms=config.reader.holdoff_ms)
        self.backoff = ExponentialWithJitterBackoff(cap=config.worker.retry_max_s, base=config.worker.retry_initial_s)
        self.notifier = Notifier()  # (one per process: its watchdog pings are rate-limited across HA terms)
        self.worker = self._new_worker()
        self.prober: Prober | None = None
        self.verifier: SampledVerifier | None = None  # [verify] sample_rate > 0: started with the prober
        self.lease = LeaderLease(self.sink.client, config.redis.names, config.ha.lease_ttl_ms)
        self._stop = threading.Event()
        self.role = "leader" if not config.ha.enabled else "standby"
        self._standby_tick = time.monotonic()
        self.reporter = StatusReporter(self.sink.client, config.redis.names, facts=self._status_facts)
        self.reporter.update({"ha": config.ha.enabled, "role": None if not config.ha.enabled else "standby"})
        self.sink.on_status = self.reporter.update  # the sync loop sets the state; the reporter keeps it in Redis
        self.http: HealthServer | None = None
        if config.metrics.listen:
            try:
                self.http = HealthServer(config.metrics.listen, self.health)
            except OSError as exc:
                raise ConfigError(f"metrics.listen: cannot listen on {config.metrics.listen}: {exc.strerror}") from None

    def _new_worker(self) -> Worker:
        admin = MySQLAdmin(self.config.mysql)
        return Worker(
            self.config, self._source, admin, self.sink, self.backoff, rules_store=self.sink, notifier=self.notifier
        )

    def _source(self, tables: Mapping[tuple[str, str], frozenset[str] | None]) -> BinlogSource:
        # prepare() has read the server's flavor before the first stream is opened
        flavor = self.worker.info.flavor if self.worker.info else "mysql"
        return BinlogSource(self.config.mysql, tables, flavor, needed=tables, kinds=self.worker.value_kinds)

    def _status_facts(self) -> dict[str, object]:
        """Live facts for the status record: how long the loop has been still, and failing Redis steps."""
        tick = self._standby_tick if self.role == "standby" else self.worker.last_tick
        return {"loop_idle_s": time.monotonic() - tick, "redis_failing": dict(self.sink.failing)}

    def _heartbeat_age(self) -> float | None:
        return self.prober.heartbeat_age_s() if self.prober is not None else None

    def health(self) -> Health:
        if self.role == "standby":
            alive = time.monotonic() - self._standby_tick < 60
            return Health(alive=alive, ready=alive, detail={"role": "standby"})
        health = self.worker.health(self._heartbeat_age, self.config.metrics.ready_max_lag_s)
        return Health(health.alive, health.ready, {"role": "leader", **health.detail})

    def _start_prober(self) -> None:
        flavor = self.worker.info.flavor if self.worker.info else "mysql"
        worker = self.worker
        self.prober = Prober(
            self.sink,
            MySQLAdmin(self.config.mysql),
            flavor,
            lambda: worker.applier.expected,
            interval_s=self.config.worker.heartbeat_interval_ms / 1000,
            min_gap_s=self.config.worker.heartbeat_min_gap_ms / 1000,
            streaming=lambda: worker.streaming,
            settled=worker.evictions_settled,
        )
        worker.applier.on_progress = self.prober.nudge
        self.prober.start()
        if self.config.verify.sample_rate > 0:
            self.verifier = SampledVerifier(self.config)
            worker.applier.on_applied = self.verifier.offer
            self.verifier.start()

    def stop(self) -> None:
        self._stop.set()
        self.reporter.update({"state": "stopping"})
        self.worker.stop()

    def run(self) -> None:
        if self.http is not None:
            self.http.start()
            log.info("worker.http_listening", listen=self.config.metrics.listen, port=self.http.port)
        self.reporter.start()
        failure: BaseException | None = None
        try:
            if not self.config.ha.enabled:
                m.HA_LEADER.set(1)
                self._term()
                return
            while not self._stop.is_set():
                if not self._wait_for_lease():
                    return
                try:
                    self._term()
                except Fenced as exc:
                    m.HA_TRANSITIONS.labels(to="fenced").inc()
                    log.error("ha.fenced", fence=self.lease.fence, error=str(exc), action="step_down")
                    self.reporter.update({"state": "fenced", "last_error": f"fenced: {exc}"[:500]})
                finally:
                    m.HA_LEADER.set(0)
                    self.role = "standby"
                    self.lease.release()
                if not self._stop.is_set():
                    log.warning("ha.stepped_down", fence=self.lease.fence)
                    self.worker = self._new_worker()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.notifier.send("STOPPING=1")
            # the final record: a clean stop (also when asked to stop while connecting), or the failure
            if failure is None or (self._stop.is_set() and not isinstance(failure, ConfigError)):
                self.reporter.stop("stopped")
            else:
                self.reporter.stop("failed", last_error=str(failure)[:500])
            if self.http is not None:
                self.http.stop()
            self.sink.close()

    def _still_leader(self) -> bool:
        try:
            return self.lease.renew()
        except CdcSyncError:
            return False

    def _wait_for_lease(self) -> bool:
        """Standby: poll for the lease until it is ours (True) or we are stopped (False)."""
        self.lease.new_term()
        log.info("ha.standby", holder=self.lease.token)
        self.notifier.send("READY=1", "STATUS=standby: waiting for the leader lease")
        self.reporter.update({"state": "standby", "role": "standby", "fence": None})
        poll = max(0.1, self.config.ha.lease_ttl_ms / 10000)
        while not self._stop.is_set():
            self._standby_tick = time.monotonic()
            self.notifier.watchdog("standby: waiting for the leader lease")
            try:
                if self.lease.try_acquire():
                    m.HA_TRANSITIONS.labels(to="leader").inc()
                    m.HA_LEADER.set(1)
                    log.info("ha.acquired", fence=self.lease.fence, holder=self.lease.token)
                    self.role = "leader"
                    self.reporter.update({"state": "starting", "role": "leader", "fence": self.lease.fence})
                    return True
            except SinkUnavailable as exc:
                log.warning("ha.acquire_failed", error=str(exc))
            self._stop.wait(poll)
        return False

    def _term(self) -> None:
        """One Worker run (the whole life without HA; one leadership term with it)."""
        renewer: Renewer | None = None
        if self.config.ha.enabled:
            self.sink.leader_token = self.lease.token
            self.sink.fence = self.lease.fence
            renewer = Renewer(self.lease, self.worker.stop)
            renewer.start()
        try:
            try:
                self.worker.run(on_ready=self._start_prober)
            except CdcSyncError as exc:
                if renewer is not None and renewer.lost and not isinstance(exc, Fenced):
                    raise Fenced(f"the leader lease was lost ({exc})") from exc  # a step-down, not a failure
                taken_over = renewer is not None and isinstance(exc, ServerRefused) and exc.kind == "server_id"
                if taken_over and not self._still_leader():
                    # a new leader with the same server_id took over the binlog stream: a step-down, not a failure
                    raise Fenced(f"another leader took over ({exc})") from exc
                raise
            if isinstance(self.worker.applier.failure, Fenced):
                raise self.worker.applier.failure
            if renewer is not None and renewer.lost and not self._stop.is_set():
                raise Fenced("the leader lease was lost")
        finally:
            if renewer is not None:
                renewer.stop()
            if self.prober is not None:
                self.prober.stop()
                self.prober = None
            if self.verifier is not None:
                self.verifier.stop()
                self.verifier = None
            self.worker.close()


def _build_info() -> dict[str, str]:
    """``cdc_sync_build_info``'s labels: this package's version and those it runs on."""
    import platform
    from importlib import metadata

    from cdc_sync import __version__

    info = {"version": __version__, "python": platform.python_version()}
    for label, dist in (("mysql_replication", "mysql-replication"), ("redis_py", "redis"), ("pymysql", "PyMySQL")):
        try:
            info[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[label] = "unknown"
    return info


def run(config: Config) -> int:
    """Run the worker until SIGTERM/SIGINT; return the process exit code."""
    m.BUILD.info(_build_info())
    # The doctor's checks first: a FAIL that configuration must fix stops here, with the same message.
    refusals = doctor.blocking_failures(doctor.run(config))
    for check in refusals:
        log.error("worker.config_error", error=f"{check.name}: {check.detail}", fix=check.fix)
    if refusals:
        return EXIT_CONFIG
    try:
        service = Service(config)
    except ConfigError as exc:
        _log_config_error(exc, config)
        return EXIT_CONFIG

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("worker.signal", signal=signal.Signals(signum).name)
        service.stop()

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
        server_id=config.mysql.server_id,
        ha=config.ha.enabled,
    )
    try:
        service.run()
    except ConfigError as exc:
        _log_config_error(exc, config)
        return EXIT_CONFIG
    except CdcSyncError as exc:
        if service.worker.stopping:  # asked to stop while still connecting: not a failure
            log.info("worker.stopped", during="start-up", error=str(exc))
            return EXIT_OK
        log.error("worker.failed", error=str(exc), error_type=type(exc).__name__)
        return EXIT_FAILURE
    except Exception as exc:  # a bug: say so loudly, exit non-zero so the supervisor restarts us
        log.exception("worker.crashed", error=repr(exc))
        return EXIT_FAILURE
    return EXIT_OK


def _log_config_error(exc: ConfigError, config: Config) -> None:
    """``worker.config_error`` with the fix line a ServerRefused carries (and the server_id it names)."""
    if isinstance(exc, ServerRefused):
        extra: dict[str, object] = {"server_id": config.mysql.server_id} if exc.kind == "server_id" else {}
        log.error("worker.config_error", error=str(exc), fix=exc.fix, refused=exc.kind, **extra)
    else:
        log.error("worker.config_error", error=str(exc))
