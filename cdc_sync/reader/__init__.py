"""The application side: ``CacheReader`` and ``AsyncCacheReader`` (client.py) over what both share (base.py)
and the protocol with Redis (protocol.py: scripts, argument layouts, pure decisions; no I/O imports).

The drivers are imported on first use, so that the protocol can be imported without redis-py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdc_sync.errors import CacheUnavailable
    from cdc_sync.reader.base import ReaderStats
    from cdc_sync.reader.client import AsyncCacheReader, CacheReader
    from cdc_sync.reader.writes import last_gtid

__all__ = ["AsyncCacheReader", "CacheReader", "CacheUnavailable", "ReaderStats", "last_gtid"]


def __getattr__(name: str) -> Any:
    if name == "last_gtid":  # (no redis-py needed)
        from cdc_sync.reader import writes

        return writes.last_gtid
    if name in __all__:
        from cdc_sync.reader import client

        return getattr(client, name)
    raise AttributeError(f"module 'cdc_sync.reader' has no attribute {name!r}")
