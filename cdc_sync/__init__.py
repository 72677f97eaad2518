"""cdc-sync: keep a Redis cache exactly in step with a MySQL/MariaDB database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdc_sync.reader import AsyncCacheReader, CacheReader, CacheUnavailable, ReaderStats, last_gtid

__version__ = "0.1.0"

__all__ = ["AsyncCacheReader", "CacheReader", "CacheUnavailable", "ReaderStats", "__version__", "last_gtid"]


def __getattr__(name: str) -> Any:
    """The reader's names, imported on first use: the worker never loads the reader (nor redis.asyncio)."""
    if name in __all__:
        from cdc_sync import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'cdc_sync' has no attribute {name!r}")
