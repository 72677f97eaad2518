"""cdc-sync: keep a Redis cache exactly in step with a MySQL/MariaDB database."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
