"""cdc-sync: keep a Redis cache exactly in step with a MySQL/MariaDB database."""

from __future__ import annotations

from cdc_sync.reader import AsyncCacheReader, CacheReader, CacheUnavailable, ReaderStats

__version__ = "0.1.0"

__all__ = ["AsyncCacheReader", "CacheReader", "CacheUnavailable", "ReaderStats", "__version__"]
