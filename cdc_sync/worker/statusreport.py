"""The worker's status record in Redis, refreshed every second, so that ``cdc-sync status`` tells the truth.

Liveness is derived from what the worker keeps refreshing, never from the last state it happened to write:

* ``<ns>:workers`` is a hash with one field per worker process (``host:pid``) holding its record as JSON:
  host, pid, version, state, role and fence (HA), the start position, the last error;
* a refresher thread rewrites the whole record every ``REFRESH_S`` through a Lua script that stamps
  ``last_seen_ms`` with Redis's own ``TIME``. A record lost with Redis's data (restart, FLUSHALL) is back
  within a refresh, and no clock but Redis's is compared: the worker sends durations measured on its
  monotonic clock (uptime, the age of its state and of its last error, how long its sync loop has been idle),
  which ``status`` turns into times by subtracting them from ``last_seen_ms``;
* the script prunes records not refreshed for ``KEEP_MS``, so restarts do not pile up.

States: ``starting``, ``streaming``, ``reconnecting`` (the binlog stream is retrying, or a Redis step has been
failing for a while), ``stopping``, ``stopped`` (clean exit), ``failed`` (exited on an error), and with HA
``standby`` and ``fenced``. The sync loop only sets the state (``update``); this module keeps it in Redis.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import redis

from cdc_sync import logs, scripts
from cdc_sync import metrics as m
from cdc_sync.adapters.redis import REDIS_ERRORS, redis_error
from cdc_sync.core.keys import Namespace

log = logs.get("cdc_sync.statusreport")

REFRESH_S = 1.0  # how often the record is rewritten
KEEP_MS = 7 * 86_400_000  # records not refreshed for this long are pruned
REDIS_RETRYING_AFTER_S = 1.0  # a Redis step failing this long makes the state "reconnecting"

# Fields the reporter owns: what the worker passes for these is ignored (wall-clock times would bring skew).
_OWN = frozenset({"id", "host", "pid", "version", "started_at", "last_error_at", "last_seen_ms", "uptime_s"})


class StatusReporter:
    """Keeps this worker's record in ``<ns>:workers``; ``update()`` is cheap and thread-safe.

    ``facts`` (optional) is called at every refresh for live facts the record carries: ``loop_idle_s`` (seconds
    since the sync loop last moved) and ``redis_failing`` (Redis steps failing now: name -> (since, why)).
    """

    def __init__(
        self,
        client: redis.Redis,
        ns: Namespace,
        refresh_s: float = REFRESH_S,
        facts: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        from cdc_sync import __version__

        self.client = client
        self.key = ns.workers
        self.refresh_s = refresh_s
        self.facts = facts
        host = socket.gethostname()
        self.id = f"{host}:{os.getpid()}"
        self._started = time.monotonic()
        self._fields: dict[str, Any] = {"host": host, "pid": os.getpid(), "version": __version__}
        self._state = "starting"
        self._state_at = self._started
        self._error_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cdc-sync-status", daemon=True)
        self._script = client.register_script(scripts.source("status_refresh"))
        self._failing = False  # the last refresh failed (logged once per outage)

    # ---- what the worker tells it ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    def update(self, fields: Mapping[str, Any]) -> None:
        """Merge ``fields`` into the record (``state=...`` changes the state); written at the next refresh,
        which a state change brings forward."""
        with self._lock:
            changed = False
            for name, value in fields.items():
                if name in _OWN:
                    continue
                if name == "state":
                    if value != self._state:
                        self._state, self._state_at, changed = str(value), time.monotonic(), True
                    continue
                if name == "last_error":
                    self._error_at = time.monotonic()
                if value is None:
                    self._fields.pop(name, None)
                else:
                    self._fields[name] = value
        if changed:
            self._wake.set()

    def record(self) -> dict[str, Any]:
        """The record as it is written now (without ``last_seen_ms``, which Redis stamps)."""
        now = time.monotonic()
        with self._lock:
            rec: dict[str, Any] = {**self._fields, "id": self.id, "state": self._state}
            rec["state_age_s"] = round(now - self._state_at, 3)
            if self._error_at is not None:
                rec["last_error_age_s"] = round(now - self._error_at, 3)
        rec["uptime_s"] = round(now - self._started, 3)
        rec["refresh_ms"] = int(self.refresh_s * 1000)
        facts = self.facts() if self.facts is not None else {}
        if "loop_idle_s" in facts:
            rec["loop_idle_s"] = round(float(facts["loop_idle_s"]), 3)
        failing = [(since, f"{step}: {why}") for step, (since, why) in dict(facts.get("redis_failing") or {}).items()]
        if failing and rec["state"] in ("starting", "streaming"):
            since, why = min(failing)
            if now - since >= REDIS_RETRYING_AFTER_S:
                rec.update(state="reconnecting", reconnecting="redis", detail=why[:300])
                rec["state_age_s"] = round(now - since, 3)
        return rec

    # ---- writing it ----------------------------------------------------------------------------------

    def refresh_once(self) -> bool:
        """Write the record now; False (and a log line once per outage) when Redis does not take it."""
        payload = orjson.dumps(self.record(), default=str)
        try:
            self._script(keys=[self.key], args=[self.id, payload, KEEP_MS])
        except REDIS_ERRORS as exc:
            m.STATUS_REFRESH_ERRORS.inc()
            if not self._failing:
                log.warning("status.refresh_failed", error=str(redis_error(exc, "status record")))
            self._failing = True
            return False
        if self._failing:
            log.info("status.refresh_recovered")
        self._failing = False
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self, state: str = "stopped", **fields: Any) -> None:
        """Stop refreshing and write the final record (``stopped`` on a clean exit)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.update({**fields, "state": state})
        self.refresh_once()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh_once()
            except Exception as exc:  # noqa: BLE001 - whatever breaks one refresh, the next one must still run
                log.warning("status.refresh_failed", error=f"{type(exc).__name__}: {exc}")
            self._wake.wait(self.refresh_s)
            self._wake.clear()


def read_records(raw: Mapping[bytes, bytes]) -> list[dict[str, Any]]:
    """The records of ``HGETALL <ns>:workers`` (unreadable ones are skipped)."""
    out: list[dict[str, Any]] = []
    for value in raw.values():
        try:
            rec = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("last_seen_ms"), int | float):
            out.append(rec)
    return out
