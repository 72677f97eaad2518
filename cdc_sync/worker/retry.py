"""The worker's one retry loop: call a step until it succeeds, waiting by a backoff policy between failures
(redis-py's ``ExponentialWithJitterBackoff``, built in app.py), reporting each failure, and re-raising when the
caller gives up (stopping, or fenced: an HA term that ended)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Backoff(Protocol):
    """Retry policy: seconds to wait after ``failures`` consecutive failures (redis-py's backoff objects fit)."""

    def compute(self, failures: int) -> float: ...


def retry(
    fn: Callable[[], T],
    *,
    retryable: type[Exception] | tuple[type[Exception], ...],
    backoff: Backoff,
    wait: Callable[[float], object],
    failed: Callable[[Exception, int, float], None],
    give_up: Callable[[], bool],
) -> T:
    """``fn()`` until it returns. A ``retryable`` error is reported (``failed(error, attempt, delay)``), then
    re-raised if ``give_up()``, else waited out (``wait(delay)``) and tried again; any other error goes on."""
    failures = 0
    while True:
        try:
            return fn()
        except retryable as exc:
            delay = backoff.compute(failures)
            failed(exc, failures + 1, delay)
            if give_up():
                raise
            failures += 1
            wait(delay)
