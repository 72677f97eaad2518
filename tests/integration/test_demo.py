"""`make demo` runs end to end: throwaway servers, the real worker, a writer, and a cache that follows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("topology", ["single", "sentinel", "cluster"])
def test_demo_shows_live_sync_and_cleans_up(topology: str) -> None:
    """The demo (bounded by --duration) ends with the cache equal to the table and exits 0; on a Sentinel set it
    fails the master over half-way, and the worker follows."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo.py"), "--duration", "6", "--topology", topology],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "final: in sync" in proc.stdout
    assert "demo stopped: worker and servers are down" in proc.stdout
    assert "cache == database" in proc.stdout
    verified = re.search(r"sampled verifier: (\d+) keys checked against MariaDB, (\d+) inconsistent", proc.stdout)
    assert verified is not None and int(verified.group(1)) > 0 and verified.group(2) == "0", proc.stdout[-2000:]
    if topology == "sentinel":
        assert "failing the master over" in proc.stdout
