"""verify's SCAN: each key once (SCAN may repeat keys), only the template's own keys, and --sample stops early."""

from __future__ import annotations

from typing import Any

from cdc_sync.config import from_dict
from cdc_sync.ops.verify import _batches, _scan


class ScanOnly:
    """A Redis stand-in whose SCAN replays pages (with the repeats SCAN is allowed to return)."""

    def __init__(self, pages: list[list[bytes]]) -> None:
        self.pages = pages
        self.calls = 0

    def scan(self, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        page = self.pages[self.calls]
        self.calls += 1
        return (0 if self.calls == len(self.pages) else self.calls), page


def _rule() -> Any:
    raw = {"tables": [{"table": "s.users", "key": "user:{id}"}]}
    return from_dict(raw, env={}).tables[0]


def _params(i: int, key: str) -> tuple[object, ...] | None:
    return (int(key[5:]),) if _rule().templates[i].matches(key) else None


def test_scan_yields_each_key_once_and_only_the_templates_keys() -> None:
    """Repeated keys are dropped by a set; ``user:email:x`` matches the glob ``user:*`` but not the template."""
    client = ScanOnly([[b"user:1", b"user:2"], [b"user:2", b"user:email:x", b"user:3"], [b"user:1"]])
    keys = [k for _, page in _scan(client, _rule(), 0, _params) for k, _ in page]  # type: ignore[arg-type]
    assert keys == ["user:1", "user:2", "user:3"]


def test_sample_stops_the_scan_once_n_keys_are_found() -> None:
    """--sample 3: three keys, and SCAN is not called past the page that reached them."""
    client = ScanOnly([[b"user:1", b"user:2"], [b"user:3", b"user:4"], [b"user:5"]])
    keys = [k for _, page in _scan(client, _rule(), 3, _params) for k, _ in page]  # type: ignore[arg-type]
    assert keys == ["user:1", "user:2", "user:3"] and client.calls == 2


def _items(*keys: str) -> list[tuple[str, tuple[object, ...]]]:
    return [(k, (int(k[2:]),)) for k in keys]


def test_batches_regroup_pages_per_template() -> None:
    """Pages of any size become batches of at most ``size`` keys of one template."""
    pages = iter([(0, _items("k:1", "k:2", "k:3")), (0, _items("k:4")), (1, _items("k:9")), (0, _items("k:5"))])
    batches = [(i, [k for k, _ in items]) for i, items in _batches(pages, 2)]
    assert batches == [(0, ["k:1", "k:2"]), (0, ["k:3", "k:4"]), (0, ["k:5"]), (1, ["k:9"])]


def test_windows_are_checked_in_row_order_in_batches() -> None:
    """With a window, keys gathered from SCAN (hash order) come out sorted by value, then cut into batches."""
    pages = iter([(0, _items("k:9", "k:10")), (0, _items("k:2", "k:7")), (0, _items("k:1"))])
    batches = [(i, [k for k, _ in items]) for i, items in _batches(pages, 2, 4)]
    assert batches == [(0, ["k:2", "k:7"]), (0, ["k:9", "k:10"]), (0, ["k:1"])]
