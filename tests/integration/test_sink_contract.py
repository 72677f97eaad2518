"""The in-memory FakeSink (tests/fakes/ports.py, which the worker's unit tests run against) held to the real
RedisSink: the same step gives the same answer, OK, DUP, REWIND, LOST and FENCED, and the same data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from cdc_sync.adapters.redis import RedisSink
from cdc_sync.config import RedisConfig
from cdc_sync.core.planner import Delete, SetJson
from cdc_sync.errors import Fenced, RewindRequired
from tests.fakes.ports import FakeSink
from tests.servers import RedisTarget


@dataclass
class Side:
    sink: Any
    put: Callable[[str, str], None]  # set a raw key (the checkpoint, the leader lease, a value)
    get: Callable[[str], str | None]


@pytest.fixture(params=["fake", "redis"])
def side(request: pytest.FixtureRequest, redis_server: RedisTarget, r: redis.Redis) -> Iterator[Side]:
    if request.param == "fake":
        fake = FakeSink()

        def fake_get(key: str) -> str | None:
            value = fake.store.get(key)
            return None if value is None else value.decode() if isinstance(value, bytes) else str(value)

        yield Side(fake, fake.store.__setitem__, fake_get)
        return
    sink = RedisSink(RedisConfig(url=redis_server.url), holdoff_ms=1000)

    def real_get(key: str) -> str | None:
        value = r.get(key)
        return None if value is None else value.decode()

    try:
        yield Side(sink, lambda k, v: r.set(k, v), real_get)
    finally:
        sink.close()


OPS = [SetJson("user:1", b'{"id":1}', 0), Delete("user:2")]


def test_ok_applies_the_step_and_moves_the_checkpoint(side: Side) -> None:
    side.put("user:2", "old")
    assert side.sink.apply(OPS, None, "p1") is True
    assert (side.get("user:1"), side.get("user:2"), side.get("cdc:checkpoint")) == ('{"id":1}', None, "p1")
    assert side.sink.apply([Delete("user:1")], "p1", "p2") is True
    assert (side.get("user:1"), side.get("cdc:checkpoint")) == (None, "p2")


def test_dup_a_step_whose_reply_was_lost_is_not_applied_again(side: Side) -> None:
    assert side.sink.apply(OPS, None, "p1") is True
    side.put("user:1", "changed since")
    assert side.sink.apply(OPS, None, "p1") is False
    assert side.sink.apply(OPS, "p0", "p1") is False
    assert side.get("user:1") == "changed since", "a duplicate step writes nothing"


@pytest.mark.parametrize("expected", [None, "p1"])
def test_rewind_another_checkpoint_is_reported_and_nothing_written(side: Side, expected: str | None) -> None:
    side.put("cdc:checkpoint", "p0")
    with pytest.raises(RewindRequired) as caught:
        side.sink.apply(OPS, expected, "p2")
    assert caught.value.stored == "p0"
    assert (side.get("user:1"), side.get("cdc:checkpoint")) == (None, "p0")


def test_lost_no_checkpoint_where_one_was_written(side: Side) -> None:
    with pytest.raises(RewindRequired) as caught:
        side.sink.apply(OPS, "p1", "p2")
    assert caught.value.stored is None
    assert (side.get("user:1"), side.get("cdc:checkpoint")) == (None, None)


def test_fenced_another_workers_lease_refuses_the_step(side: Side) -> None:
    side.sink.leader_token = "me"
    side.put("cdc:leader", "someone-else")
    with pytest.raises(Fenced):
        side.sink.apply(OPS, None, "p1")
    assert (side.get("user:1"), side.get("cdc:checkpoint")) == (None, None)
    side.put("cdc:leader", "me")
    assert side.sink.apply(OPS, None, "p1") is True
