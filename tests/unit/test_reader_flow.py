"""The reader's lookup flow (reader/flow.py) driven offline: scripted replies and clock readings in, the next
step out, as the sync and asyncio drivers perform them against Redis."""

from __future__ import annotations

from typing import Any

import pytest

from cdc_sync.errors import CacheUnavailable
from cdc_sync.reader import flow
from cdc_sync.reader.base import _ReaderBase
from cdc_sync.reader.protocol import Lookup
from tests.unit.factories import make_config

USERS = {"table": "shop.users", "key": "user:{id}", "mode": "update"}


def _reader(**reader: Any) -> _ReaderBase:
    settings = {"ttl_jitter": 0, "lease_wait_ms": 100, "freshness_check_ms": 1000, **reader}
    return _ReaderBase(make_config(USERS, reader=settings))


def _lookup(core: _ReaderBase) -> Lookup:
    return core.rule_lookup(core.rule("shop.users"), "user:5")


class Driver:
    """Sends each scripted reply in turn and records the steps the flow asked for."""

    def __init__(self, steps: flow.Flow) -> None:
        self.flow = steps
        self.steps: list[flow.Step] = [next(steps)]
        self.result: Any = None
        self.done = False

    @property
    def step(self) -> flow.Step:
        return self.steps[-1]

    def send(self, reply: flow.Reply) -> None:
        try:
            self.steps.append(self.flow.send(reply))
        except StopIteration as stop:
            self.result, self.done = stop.value, True

    def throw(self, exc: BaseException) -> None:
        self.steps.append(self.flow.throw(exc))


def test_a_miss_takes_the_lease_loads_with_its_epochs_and_fills() -> None:
    core = _reader()
    d = Driver(flow.lookup(core, _lookup(core), now=0.0))
    assert isinstance(d.step, flow.Script) and d.step.name == "lookup" and d.step.keys[0] == "user:5"
    token = d.step.args[2]
    d.send(flow.Reply([b"LEASE", b"7"], sent=0.0, received=0.001))
    assert d.step == flow.Load(("7",))
    d.send(flow.Reply((b'{"id":5}', None)))
    assert isinstance(d.step, flow.Script) and d.step.name == "fill"
    assert d.step.args[0] == token, "the fill carries the lease's token"
    d.send(flow.Reply(b"STORED", sent=0.002, received=0.003))
    assert d.done and d.result == {"id": 5}
    assert (core.stats["miss"], core.stats["fill:stored"]) == (1, 1)


def test_a_checked_hit_opens_the_window_and_the_next_lookup_is_a_plain_read() -> None:
    core = _reader()
    lk = _lookup(core)
    d = Driver(flow.lookup(core, lk, now=10.0))
    d.send(flow.Reply([b"HIT", b'{"id":5}', 5000, b"1000"], sent=10.0, received=10.001))
    assert d.done and d.result == {"id": 5}
    # inside the window (1 s, the cap): value and gates in one read, no script
    d = Driver(flow.lookup(core, lk, now=10.5))
    assert isinstance(d.step, flow.PlainGet) and d.step.key == "user:5" and not d.step.hash
    assert d.step.gates[0] == "cdc:heartbeat"
    d.send(flow.Reply((b'{"id":5}', [b"1000", None]), sent=10.5, received=10.501))
    assert d.done and d.result == {"id": 5}
    # a heartbeat read below the one that opened it: the window closes and the script decides
    d = Driver(flow.lookup(core, lk, now=10.6))
    d.send(flow.Reply((b'{"id":5}', [b"900", None]), sent=10.6, received=10.601))
    assert isinstance(d.step, flow.Script) and d.step.name == "lookup"
    assert core.stats["heartbeat_regression"] == 1
    # past the window's end: the script runs at once
    d = Driver(flow.lookup(core, lk, now=20.0))
    assert isinstance(d.step, flow.Script)


def test_a_reply_arriving_after_the_window_closed_is_not_served() -> None:
    core = _reader()
    lk = _lookup(core)
    d = Driver(flow.lookup(core, lk, now=0.0))
    d.send(flow.Reply([b"HIT", b'{"id":5}', 5000, b"1000"], sent=0.0, received=0.0))
    d = Driver(flow.lookup(core, lk, now=0.9))
    d.send(flow.Reply((b'{"id":5}', [b"1000", None]), sent=0.9, received=1.2))  # (the window ended at 1.0)
    assert isinstance(d.step, flow.Script) and d.step.name == "lookup"


def test_a_lease_held_elsewhere_is_waited_for_then_bypassed() -> None:
    core = _reader(lease_wait_ms=100)
    d = Driver(flow.lookup(core, _lookup(core), now=0.0))
    d.send(flow.Reply([b"WAIT"], sent=0.0, received=0.0))
    assert isinstance(d.step, flow.Sleep) and 0 < d.step.seconds <= 0.015
    d.send(flow.Reply())
    assert isinstance(d.step, flow.Script) and d.step.name == "lookup"
    d.send(flow.Reply([b"WAIT"], sent=0.05, received=0.05))
    assert isinstance(d.step, flow.Sleep)
    d.send(flow.Reply())
    d.send(flow.Reply([b"WAIT"], sent=0.1, received=0.1))  # the deadline: a bypass, nothing filled
    assert d.step == flow.Load(None)
    d.send(flow.Reply((b'{"id":5}', None)))
    assert d.done and d.result == {"id": 5}
    assert (core.stats["lease_wait"], core.stats["bypass:lease_wait_timeout"]) == (1, 1)


def test_a_redis_error_bypasses_to_mysql_or_raises_in_strict_mode() -> None:
    core = _reader()
    d = Driver(flow.lookup(core, _lookup(core), now=0.0))
    d.send(flow.Reply(error=ConnectionError("gone"), sent=0.0, received=0.1))
    assert d.step == flow.Load(None)
    d.send(flow.Reply((None, None)))
    assert d.done and d.result is None
    assert (core.stats["redis_error"], core.stats["bypass:redis_error"]) == (1, 1)
    strict = _reader(strict=True)
    d = Driver(flow.lookup(strict, _lookup(strict), now=0.0))
    with pytest.raises(CacheUnavailable):
        d.send(flow.Reply(error=ConnectionError("gone"), sent=0.0, received=0.1))


def test_a_loader_that_raises_gives_the_lease_back_and_the_error_goes_on() -> None:
    core = _reader()
    d = Driver(flow.lookup(core, _lookup(core), now=0.0))
    token = d.step.args[2]  # type: ignore[union-attr]
    d.send(flow.Reply([b"LEASE", b"0"], sent=0.0, received=0.0))
    d.throw(RuntimeError("mysql down"))
    assert d.step == flow.Script("release", ["cdc:lease:user:5"], [token])
    with pytest.raises(RuntimeError, match="mysql down"):
        d.send(flow.Reply(1))
    assert core.stats["loader_error"] == 1


def test_a_refused_or_lost_fill_is_counted_and_the_value_still_returned() -> None:
    core = _reader()
    d = Driver(flow.lookup(core, _lookup(core), now=0.0))
    d.send(flow.Reply([b"LEASE", b"0"], sent=0.0, received=0.0))
    d.send(flow.Reply((b'{"id":5}', "not_canonical")))  # the loader says: do not fill
    assert isinstance(d.step, flow.Script) and d.step.name == "release"
    d.send(flow.Reply(1))
    assert d.done and d.result == {"id": 5} and core.stats["fill:not_canonical"] == 1
    d = Driver(flow.lookup(core, _lookup(core), now=0.0))
    d.send(flow.Reply([b"LEASE", b"0"], sent=0.0, received=0.0))
    d.send(flow.Reply((b'{"id":5}', None)))
    d.send(flow.Reply(b"LOST"))  # a change deleted the lease meanwhile
    assert d.done and core.stats["fill:lost"] == 1


def test_fill_rows_leases_in_one_batch_and_gives_them_back_when_too_slow() -> None:
    core = _reader(holdoff_ms=1000)
    rows = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    d = Driver(flow.fill_rows(core, "shop.users", rows, selected_at=0.0, epoch=None))
    assert isinstance(d.step, flow.Batch) and [s.keys[0] for s in d.step.scripts] == ["user:1", "user:2"]
    d.send(flow.Reply([[b"LEASE", b"0"], [b"HIT", b"{}", 1, b"1"]], sent=0.0, received=0.2))
    assert isinstance(d.step, flow.Batch) and [s.name for s in d.step.scripts] == ["fill"]
    d.send(flow.Reply([b"STORED"], sent=0.2, received=0.3))
    assert d.done and d.result == (1, 1, {})
    # the leases came back after half the hold-off: given back, nothing filled
    d = Driver(flow.fill_rows(core, "shop.users", rows, selected_at=0.0, epoch=None))
    d.send(flow.Reply([[b"LEASE", b"0"], [b"LEASE", b"0"]], sent=0.0, received=0.6))
    assert isinstance(d.step, flow.Batch) and [s.name for s in d.step.scripts] == ["release", "release"]
    d.send(flow.Reply([1, 1]))
    assert d.done and d.result == (0, 2, {"slow": 2})


def test_a_flow_closed_while_it_loads_ends_quietly() -> None:
    """A driver that stops at a Load step (an error of its own) closes the flow: it must not try to yield the
    lease's release then (the lease expires by itself), or Python raises "generator ignored GeneratorExit"."""
    core = _reader()
    d = Driver(flow.lookup(core, _lookup(core), now=0.0))
    d.send(flow.Reply([b"LEASE", b"0"], sent=0.0, received=0.0))
    assert isinstance(d.step, flow.Load)
    d.flow.close()  # raises RuntimeError if the flow yields instead of ending


def test_read_your_writes_waits_for_the_checkpoint_then_uses_the_cache() -> None:
    """Inside after(gtid): the checkpoint first (even inside the plain-GET window), polled until it covers the
    write; then the lookup as usual, and later lookups of the block skip the wait."""
    core = _reader()
    lk = _lookup(core)
    d = Driver(flow.lookup(core, lk, now=10.0))
    d.send(flow.Reply([b"HIT", b'{"id":5}', 5000, b"1000"], sent=10.0, received=10.001))  # (opens the window)
    with core.after("0-1-120"):
        d = Driver(flow.lookup(core, lk, now=10.1))
        assert d.step == flow.PlainGet("cdc:checkpoint", [], False)
        d.send(flow.Reply((b"0-1-119@1:bin.000001:900/7", []), sent=10.1, received=10.101))
        assert isinstance(d.step, flow.Sleep) and 0 < d.step.seconds <= 0.005
        d.send(flow.Reply())
        assert d.step == flow.PlainGet("cdc:checkpoint", [], False)
        d.send(flow.Reply((b"0-1-121@1:bin.000001:990/7", []), sent=10.11, received=10.111))
        assert isinstance(d.step, flow.PlainGet) and d.step.key == "user:5"  # covered: the window's plain read
        d.send(flow.Reply((b'{"id":5,"n":2}', [b"1000", None]), sent=10.12, received=10.121))
        assert d.done and d.result == {"id": 5, "n": 2}
        d = Driver(flow.lookup(core, lk, now=10.2))
        assert isinstance(d.step, flow.PlainGet) and d.step.key == "user:5", "covered once: no more waits"
    assert core.written() is None and core.stats["write_wait"] == 1


def test_read_your_writes_reads_mysql_when_the_worker_is_behind() -> None:
    core = _reader()
    lk = _lookup(core)
    with core.after("0-1-120", wait_ms=50):
        d = Driver(flow.lookup(core, lk, now=0.0))
        for t in (0.0, 0.02, 0.04, 0.06):
            assert d.step == flow.PlainGet("cdc:checkpoint", [], False)
            d.send(flow.Reply((b"0-1-100", []), sent=t, received=t))
            if isinstance(d.step, flow.Sleep):
                d.send(flow.Reply())
        assert d.step == flow.Load(None), "past the wait: MySQL, nothing filled"
        d.send(flow.Reply((b'{"id":5}', None)))
        assert d.done and d.result == {"id": 5} and core.stats["bypass:behind_write"] == 1
        d = Driver(flow.lookup(core, lk, now=1.0))  # the block's wait is spent: one read, then MySQL
        d.send(flow.Reply((b"0-1-100", []), sent=1.0, received=1.0))
        assert d.step == flow.Load(None)


def test_read_your_writes_refuses_what_is_not_a_gtid() -> None:
    core = _reader()
    with pytest.raises(ValueError, match="not a GTID"), core.after("yesterday"):
        pass
    with pytest.raises(ValueError, match="a GTID is needed"), core.after("bin.000001:4"):
        pass
    with core.after(""):  # the session wrote nothing
        assert core.written() is None
    with core.after("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5"):
        d = Driver(flow.lookup(core, _lookup(core), now=0.0))
        with pytest.raises(ValueError, match="cannot be compared"):
            d.send(flow.Reply((b"0-1-100@1:bin.000001:4/7", []), sent=0.0, received=0.0))


class _Heard:
    """A tracking connection with nothing pending (the near cache's decisions alone are under test)."""

    def ready(self) -> bool:
        return True


def test_a_near_value_read_before_the_write_was_covered_is_not_served_inside_after() -> None:
    """Inside after(gtid): the near cache serves only values read after the checkpoint read that showed the write
    covered (an older one may predate it, its invalidation still on the way); outside, the window decides."""
    import time

    from cdc_sync.reader.base import NEAR_MISS
    from cdc_sync.reader.nearcache import NearCache

    core = _reader(freshness_check_ms=60_000)
    core.near, core.tracker = NearCache(10), _Heard()  # type: ignore[assignment]
    core.near.clear(live=True)
    lk = _lookup(core)
    t = time.monotonic()  # (near_first reads the real clock)
    d = Driver(flow.lookup(core, lk, now=t))
    d.send(flow.Reply([b"HIT", b'{"id":5}', 50_000, b"1000"], sent=t, received=t + 0.001))  # kept, read at t
    assert core.near.entry("user:5") == (b'{"id":5}', t)
    assert core.near_first(lk) == {"id": 5}
    with core.after("0-1-120"):
        assert core.near_first(lk) is NEAR_MISS, "not covered yet"
        d = Driver(flow.lookup(core, lk, now=t + 0.002))
        d.send(flow.Reply((b"0-1-120", []), sent=t + 0.002, received=t + 0.003))  # covered, seen at t + 0.003
        assert isinstance(d.step, flow.PlainGet) and d.step.key == "user:5"
        assert core.near_first(lk) is NEAR_MISS, "read at t, before the coverage was seen"
        d.send(flow.Reply((b'{"id":5,"v":2}', [b"1000", None]), sent=t + 0.004, received=t + 0.005))
        assert d.done and core.near_first(lk) == {"id": 5, "v": 2}


def test_read_your_writes_never_takes_another_servers_gtid_in_the_domain_as_applied() -> None:
    """Two servers writing one domain: their sequence numbers say nothing about order (the checkpoint's 0-1-100
    does not cover 0-2-5)."""
    from cdc_sync.reader.protocol import Written

    assert not Written("0-2-5", 1.0).seen(b"0-1-100@1:bin.000001:4/7")
    assert Written("0-1-5", 1.0).seen(b"0-1-100@1:bin.000001:4/7")
    assert not Written("0-1-5,1-3-2", 1.0).seen(b"0-1-100,1-4-9")
