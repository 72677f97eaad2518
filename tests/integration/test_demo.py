"""`make demo` runs end to end: throwaway servers, the real worker, a writer, and a cache that follows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_live_sync_and_cleans_up() -> None:
    """The demo (bounded by --duration) ends with the cache equal to the table and exits 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo.py"), "--duration", "4"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "final: in sync" in proc.stdout
    assert "demo stopped: worker and servers are down" in proc.stdout
    assert "cache == database" in proc.stdout
