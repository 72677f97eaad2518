"""The pure core stays pure: each module of ``cdc_sync/core`` (and the config, the error tree and the reader's
protocol) imports in a fresh interpreter without any I/O library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_LIBRARIES = ("redis", "pymysql", "pymysqlreplication", "click", "prometheus_client")
PURE = sorted(
    [f"cdc_sync.core.{p.stem}" for p in (ROOT / "cdc_sync" / "core").glob("*.py") if p.stem != "__init__"]
    + ["cdc_sync.config", "cdc_sync.errors", "cdc_sync.reader.protocol", "cdc_sync.reader.cluster", "cdc_sync.scripts"]
)


def test_the_core_has_modules() -> None:
    assert len(PURE) >= 12, PURE


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_io_library(module: str) -> None:
    probe = (
        f"import json, sys; import {module}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {IO_LIBRARIES!r})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout) == [], f"{module} pulls in {out.stdout.strip()}"
