"""The pure core: what a change means and what the cache must do about it, with no I/O (no Redis, MySQL,
replication, CLI or metrics libraries imported; tests/unit/test_purity.py holds it to that)."""
