"""High availability: one applier per namespace, elected through a Redis lease with a fencing counter.

The leader holds ``<ns>:leader`` (its token, with a TTL) and renews it well inside the TTL; every
acquisition increments ``<ns>:fence``. The apply step itself (apply.lua) checks the token, so a
leader that was paused or partitioned past its TTL cannot write one key when it wakes: its next step is
refused (Fenced), and it steps down to standby. Standbys poll for the lease and, once it expires, take
over from the checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any

import redis

from cdc_sync import logs, scripts
from cdc_sync import metrics as m
from cdc_sync.adapters.redis import redis_errors
from cdc_sync.core.keys import Namespace
from cdc_sync.errors import ServerRefused, SinkUnavailable

log = logs.get("cdc_sync.ha")


class LeaderLease:
    def __init__(self, client: redis.Redis, ns: Namespace, ttl_ms: int) -> None:
        self.client = client
        self.ttl_ms = ttl_ms
        self.key, self.fence_key = ns.leader, ns.fence
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self.fence = 0
        self._acquire = client.register_script(scripts.source("lease_acquire"))
        self._renew = client.register_script(scripts.source("lease_renew"))
        self._release = client.register_script(scripts.source("release"))

    def _run(self, what: str, fn: Callable[[], Any]) -> int:
        with redis_errors(f"lease {what}"):
            return int(fn())

    def new_term(self) -> None:
        """A fresh token for the next leadership term (a fenced term's token must never match again)."""
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"

    def try_acquire(self) -> bool:
        """Take the lease if it is free, with the next fence number."""
        fence = self._run(
            "acquire", lambda: self._acquire(keys=[self.key, self.fence_key], args=[self.token, self.ttl_ms])
        )
        if fence:
            self.fence = fence
        return bool(fence)

    def renew(self) -> bool:
        return bool(self._run("renew", lambda: self._renew(keys=[self.key], args=[self.token, self.ttl_ms])))

    def release(self) -> None:
        with contextlib.suppress(SinkUnavailable):  # if Redis is away, the lease expires by itself
            self._run("release", lambda: self._release(keys=[self.key], args=[self.token]))


class Renewer:
    """Renews the lease every ttl/3 from a daemon thread; calls ``on_lost`` once if it is lost."""

    def __init__(self, lease: LeaderLease, on_lost: Callable[[], None]) -> None:
        self.lease = lease
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cdc-sync-lease", daemon=True)
        self.lost = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        interval = self.lease.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if self.lease.renew():
                    continue
            except SinkUnavailable as exc:
                log.warning("ha.renew_failed", error=str(exc))
                continue  # if Redis stays away past the TTL, the next renewal finds the lease gone
            except ServerRefused as exc:  # a wrong password or an ACL: the lease cannot be held; the term ends
                log.error("ha.renew_refused", error=str(exc), fix=exc.fix)
            m.HA_TRANSITIONS.labels(to="lost").inc()
            log.error("ha.lease_lost", fence=self.lease.fence, action="step_down")
            self.lost = True
            self.on_lost()
            return
