"""systemd's notify protocol (sd_notify): READY=1, WATCHDOG=1, STATUS=..., STOPPING=1.

A datagram to the socket named by ``$NOTIFY_SOCKET``; a no-op when it is not set (not under systemd).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(usec) / 2_000_000 if usec.isdigit() else 0.0  # ping twice per period
        self._last_ping = 0.0
        self._last_status = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        # systemd gone or its socket unreachable: nothing to tell, nothing to fail
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto("\n".join(lines).encode(), self.address)

    def watchdog(self, status: str | None = None) -> None:
        """Ping the watchdog (at most twice per period) and refresh STATUS= (at most every 5 s)."""
        now = time.monotonic()
        lines: list[str] = []
        if self.watchdog_interval_s and now - self._last_ping >= self.watchdog_interval_s:
            lines.append("WATCHDOG=1")
            self._last_ping = now
        if status is not None and now - self._last_status >= 5:
            lines.append(f"STATUS={status}")
            self._last_status = now
        if lines:
            self.send(*lines)
