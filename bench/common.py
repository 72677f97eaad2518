"""Shared by the benchmark scripts: result files and clean-up."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from cdc_sync.devservers import LocalServer

BENCH = Path(__file__).resolve().parent


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write bench/<name>.json with the figures, the date and the machine."""
    machine = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    path = BENCH / f"{name}.json"
    path.write_text(json.dumps({**data, "date": time.strftime("%Y-%m-%d"), "machine": machine}, indent=2))
    return path


def shutdown(worker: subprocess.Popen[bytes] | None, *servers: LocalServer) -> None:
    """Stop the worker (SIGTERM) and the throwaway servers."""
    if worker is not None and worker.poll() is None:
        worker.terminate()
        worker.wait(10)
    for server in servers:
        server.stop()
