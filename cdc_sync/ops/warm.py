"""``cdc-sync warm [TABLE...]``: backfill update-mode tables, pre-fill evict-mode ones.

Rows are read in primary-key chunks and filled through the reader's lease protocol, so warming while the
worker runs never overwrites a newer change. Progress is kept in ``<ns>:warm:<table>`` (the last key done),
so an interrupted warm resumes where it stopped; ``restart`` starts over.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cdc_sync.adapters.redis import redis_errors
from cdc_sync.config import Config
from cdc_sync.core.keys import Namespace
from cdc_sync.ops.maintenance import select_rules
from cdc_sync.reader.client import CacheReader


@dataclass
class WarmResult:
    table: str
    rows: int = 0
    filled: int = 0
    skipped: int = 0
    seconds: float = 0.0
    bypassed: Counter[str] = field(default_factory=Counter)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def warm(
    config: Config,
    tables: Sequence[str],
    *,
    chunk: int = 500,
    rate: float = 0.0,
    restart: bool = False,
    on_start: Callable[[str, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    reader: CacheReader | None = None,
) -> list[WarmResult]:
    """Warm each table; ``rate`` caps rows per second (0: no cap). Resumable after an interruption."""
    reader = reader or CacheReader(config)
    loader = reader.row_loader
    results: list[WarmResult] = []
    try:
        with redis_errors("warm"):
            for rule in select_rules(config, tables):
                if rule.key is None:
                    continue  # mapped only for dependencies: nothing to fill
                result = WarmResult(rule.name)
                results.append(result)
                progress_key = Namespace(config.redis.namespace).warm(rule.name)
                if restart:
                    reader.redis.delete(progress_key)
                saved = reader.redis.get(progress_key)
                after = json.loads(saved) if saved else None
                pk = loader.primary_key(rule.name)
                if not pk:
                    raise ValueError(f"{rule.name} has no primary key: warm reads in primary-key order")
                if on_start is not None:
                    on_start(rule.name, loader.estimate_rows(rule.name))
                started = time.monotonic()
                size = chunk
                while True:
                    # The rows are normalized with the table's column info: read since the schema epoch filled with.
                    epoch = reader.schema_epochs([rule.name])[rule.name]
                    stamped = loader.stamped_column_info(rule.name)
                    if stamped is None or stamped[1] != epoch:
                        loader.read_column_info(rule.name, epoch)
                    selected_at = time.monotonic()
                    rows = loader.scan(rule.name, pk, after, size)
                    if not rows:
                        reader.redis.delete(progress_key)
                        break
                    filled, skipped, bypassed = reader.fill_rows(rule.name, rows, selected_at, epoch)
                    if bypassed.get("slow") and size > 1:
                        size = max(1, size // 2)  # the chunk took longer than half the hold-off: smaller, again
                        continue
                    result.rows += len(rows)
                    result.filled += filled
                    result.skipped += skipped
                    result.bypassed.update(bypassed)
                    after = [rows[-1][c] for c in pk]
                    reader.redis.set(progress_key, json.dumps(after, default=str))
                    if on_progress is not None:
                        on_progress(len(rows))
                    if rate > 0:
                        ahead = result.rows / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                result.seconds = time.monotonic() - started
    finally:
        reader.close()
    return results
