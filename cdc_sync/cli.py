"""The ``cdc-sync`` command line (click). Thin: parse options, set up logging, call app.py or ops/.

Every command takes ``--config PATH`` (before or after the command name) and prints a human view;
``--json`` prints the same as JSON. Exit codes: 0 fine, 1 a problem was found (doctor FAIL, divergence,
status not OK, runtime failure), 2 bad configuration, or a server that refuses us for good (wrong password,
missing privilege, a duplicate server_id), with a ``fix:`` line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson

from cdc_sync import __version__, app, logs
from cdc_sync import config as config_mod
from cdc_sync.errors import CdcSyncError, ConfigError, ServerRefused

F = TypeVar("F", bound=Callable[..., Any])

_config_option = click.option(
    "--config",
    "config_path",
    metavar="PATH",
    default=None,
    help="Config file (default: $CDC_SYNC_CONFIG, else ./cdc-sync.toml).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the human view.")


def _load(ctx: click.Context, config_path: str | None) -> config_mod.Config:
    obj: dict[str, Any] = ctx.obj or {}
    path = config_mod.resolve_path(config_path or obj.get("config_path"))
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        click.echo(f"cdc-sync: config error: {exc}", err=True)
        sys.exit(app.EXIT_CONFIG)


def _emit(data: Any, text: str, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        click.echo(text)


def _shown(item: str | None) -> str | None:
    return item


def _close_bars(bars: list[Any]) -> None:
    while bars:
        bars.pop().__exit__(None, None, None)


def _guard(fn: Callable[[], int | None]) -> None:
    """Run an operator command: configuration errors exit 2, other failures 1, with a message, no traceback."""
    try:
        code = fn()
    except ConfigError as exc:
        click.echo(f"cdc-sync: {exc}", err=True)
        if isinstance(exc, ServerRefused):
            click.echo(f"  fix: {exc.fix}", err=True)
        sys.exit(app.EXIT_CONFIG)
    except (CdcSyncError, ValueError) as exc:
        click.echo(f"cdc-sync: {exc}", err=True)
        sys.exit(app.EXIT_FAILURE)
    sys.exit(code or 0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cdc-sync")
@_config_option
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Keep a Redis cache exactly in step with a MySQL/MariaDB database."""
    ctx.obj = {"config_path": config_path}


@main.command()
@_config_option
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Log level (default: [log] level of the config file).",
)
@click.pass_context
def run(ctx: click.Context, config_path: str | None, log_level: str | None) -> None:
    """Run the worker: tail the binlog and keep Redis in step until SIGTERM/SIGINT."""
    cfg = _load(ctx, config_path)
    logs.configure(log_level or cfg.log.level, cfg.log.format)
    sys.exit(app.run(cfg))


@main.command("check-config")
@_config_option
@_json_option
@click.pass_context
def check_config(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Validate the config file (no server is contacted) and print a summary (exit 2 when invalid)."""
    cfg = _load(ctx, config_path)
    lines = [f"config OK: {cfg.path}"]
    lines.append(f"  mysql  {cfg.mysql.user}@{cfg.mysql.host}:{cfg.mysql.port} server_id={cfg.mysql.server_id}")
    lines.append(f"  redis  {cfg.redis.safe_url} namespace={cfg.redis.namespace}")
    lines.append(f"  ha     {'on' if cfg.ha.enabled else 'off'}; metrics {cfg.metrics.listen or 'off'}")
    tables = []
    for rule in cfg.tables:
        keys = ", ".join(t.source for t in rule.templates) or "(dependencies only)"
        mode = f"{rule.mode}, {rule.format}" if rule.mode == "update" else rule.mode
        tags = f" tags={[list(t) for t in rule.tags]}" if rule.tags else ""
        lines.append(f"  table  {rule.name} -> {keys} ({mode}){tags}")
        tables.append(
            {
                "table": rule.name,
                "keys": [t.source for t in rule.templates],
                "mode": rule.mode,
                "format": rule.format,
                "ttl": rule.ttl,
                "tags": [list(t) for t in rule.tags],
            }
        )
    data = {
        "ok": True,
        "path": cfg.path,
        "mysql": {
            "user": cfg.mysql.user,
            "host": cfg.mysql.host,
            "port": cfg.mysql.port,
            "server_id": cfg.mysql.server_id,
            "tls": cfg.mysql.tls,
        },
        "redis": {"url": cfg.redis.safe_url, "namespace": cfg.redis.namespace},
        "ha": {"enabled": cfg.ha.enabled, "lease_ttl_ms": cfg.ha.lease_ttl_ms},
        "metrics": {"listen": cfg.metrics.listen, "ready_max_lag_s": cfg.metrics.ready_max_lag_s},
        "tables": tables,
    }
    _emit(data, "\n".join(lines), as_json)


@main.command()
@_config_option
@_json_option
@click.pass_context
def doctor(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Check every precondition of exact sync: PASS/WARN/FAIL with the fix. Exit 1 on any FAIL."""
    from cdc_sync.ops import doctor as doc

    cfg = _load(ctx, config_path)

    def go() -> int:
        checks = doc.run(cfg)
        fails = sum(c.status == doc.FAIL for c in checks)
        warns = sum(c.status == doc.WARN for c in checks)
        skips = sum(c.status == doc.SKIP for c in checks)
        summary = f"\n{len(checks)} checks: {fails} FAIL, {warns} WARN" + (f", {skips} SKIP" if skips else "")
        _emit(doc.as_json(checks), "\n".join(c.line() for c in checks) + summary, as_json)
        return 1 if fails else 0

    _guard(go)


@main.command()
@_config_option
@_json_option
@click.pass_context
def status(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Is a worker alive and streaming, and the cache fresh? Exit 1 when not (the problems are listed).

    Also shows the checkpoint, the server's position, lag, flushing tables and applied counts.
    """
    from cdc_sync.ops import status as st

    cfg = _load(ctx, config_path)

    def go() -> int:
        data = st.collect(cfg)
        _emit(data, st.render(data), as_json)
        return 0 if data["ok"] else 1

    _guard(go)


@main.group()
def checkpoint() -> None:
    """Show, set or reset the position the worker resumes from."""


@checkpoint.command("show")
@_config_option
@_json_option
@click.pass_context
def checkpoint_show(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Print the stored checkpoint."""
    from cdc_sync.ops import maintenance

    cfg = _load(ctx, config_path)

    def go() -> int:
        position = maintenance.show(cfg)
        _emit({"checkpoint": position}, position or "(no checkpoint)", as_json)
        return 0

    _guard(go)


@checkpoint.command("set")
@click.argument("position")
@_config_option
@_json_option
@click.pass_context
def checkpoint_set(ctx: click.Context, position: str, config_path: str | None, as_json: bool) -> None:
    """Store POSITION (a GTID state/set or file:pos); a running worker rewinds to it.

    A position behind the stored one replays from there; any other (a jump) flushes every mapped table first.
    """
    from cdc_sync.ops import maintenance

    cfg = _load(ctx, config_path)

    def go() -> int:
        previous, flushed = maintenance.set_position(cfg, position)
        text = f"checkpoint set to {position} (was {previous or 'none'})"
        text += "; a rewind: the worker replays from there" if flushed is None else f"; flushed {flushed} key(s)"
        _emit({"checkpoint": position, "previous": previous or None, "flushed_keys": flushed}, text, as_json)
        return 0

    _guard(go)


@checkpoint.command("reset")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_config_option
@_json_option
@click.pass_context
def checkpoint_reset(ctx: click.Context, yes: bool, config_path: str | None, as_json: bool) -> None:
    """Flush every mapped table's keys and start from the server's current position."""
    from cdc_sync.ops import maintenance

    cfg = _load(ctx, config_path)
    if not yes:
        click.confirm(f"Flush all keys of namespace {cfg.redis.namespace!r} and restart from now?", abort=True)

    def go() -> int:
        position, deleted = maintenance.reset(cfg)
        text = f"flushed {deleted} key(s); checkpoint reset to {position}"
        _emit({"checkpoint": position, "flushed_keys": deleted}, text, as_json)
        return 0

    _guard(go)


@main.command()
@click.argument("tables", nargs=-1)
@_config_option
@_json_option
@click.pass_context
def flush(ctx: click.Context, tables: tuple[str, ...], config_path: str | None, as_json: bool) -> None:
    """Invalidate TABLES' keys (all mapped tables when none are named), as DDL does."""
    from cdc_sync.ops import maintenance

    cfg = _load(ctx, config_path)

    def go() -> int:
        deleted = maintenance.flush(cfg, tables)
        names = ", ".join(tables) or "every mapped table"
        _emit({"tables": list(tables), "flushed_keys": deleted}, f"flushed {deleted} key(s) of {names}", as_json)
        return 0

    _guard(go)


@main.command()
@click.argument("tables", nargs=-1)
@click.option(
    "--rate", type=float, default=0.0, show_default=True, help="At most this many rows per second (0: no limit)."
)
@click.option(
    "--chunk", type=click.IntRange(1, 100_000), default=500, show_default=True, help="Rows per primary-key chunk."
)
@click.option("--restart", is_flag=True, help="Start over instead of resuming an interrupted warm.")
@_config_option
@_json_option
@click.pass_context
def warm(
    ctx: click.Context,
    tables: tuple[str, ...],
    rate: float,
    chunk: int,
    restart: bool,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Backfill TABLES through the lease protocol (safe while the worker runs; resumable)."""
    from cdc_sync.ops import warm as warm_mod

    cfg = _load(ctx, config_path)
    bars: list[Any] = []
    counts = {"rows": 0, "started": 0.0}

    def on_start(table: str, estimate: int) -> None:
        _close_bars(bars)
        counts.update(rows=0, started=time.monotonic())
        if not as_json:
            bar = click.progressbar(
                length=max(estimate, 1), label=table, show_eta=True, show_percent=True, item_show_func=lambda x: x
            )
            bar.__enter__()
            bars.append(bar)

    def on_progress(n: int) -> None:
        counts["rows"] += n
        if bars:
            rate = counts["rows"] / max(time.monotonic() - counts["started"], 1e-6)
            bars[0].update(n, f"{rate:,.0f} rows/s")

    def go() -> int:
        try:
            results = warm_mod.warm(
                cfg, tables, chunk=chunk, rate=rate, restart=restart, on_start=on_start, on_progress=on_progress
            )
        finally:
            _close_bars(bars)
        lines = []
        for r in results:
            lines.append(
                f"{r.table}: {r.rows} rows in {r.seconds:.1f} s ({r.rows_per_s:,.0f} rows/s); "
                f"{r.filled} keys filled, {r.skipped} not (cached already, changed meanwhile, or bypassed)"
            )
            if r.bypassed:
                lines.append(f"  bypassed: {dict(r.bypassed)} (is the worker running and fresh?)")
        data = [
            {
                "table": r.table,
                "rows": r.rows,
                "filled": r.filled,
                "skipped": r.skipped,
                "seconds": round(r.seconds, 3),
                "rows_per_s": round(r.rows_per_s),
                "bypassed": dict(r.bypassed),
            }
            for r in results
        ]
        _emit(data, "\n".join(lines), as_json)
        return 0

    try:
        _guard(go)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run warm again to resume where it stopped", err=True)
        sys.exit(130)


@main.command()
@click.argument("tables", nargs=-1)
@click.option(
    "--sample",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Check only the first N keys per table in SCAN order (spread over the keyspace; 0: all).",
)
@click.option("--repair", is_flag=True, help="Evict the divergent keys.")
@_config_option
@_json_option
@click.pass_context
def verify(
    ctx: click.Context, tables: tuple[str, ...], sample: int, repair: bool, config_path: str | None, as_json: bool
) -> None:
    """Compare cached values with MySQL; exit 1 on any divergence."""
    from cdc_sync.ops import verify as verify_mod

    cfg = _load(ctx, config_path)
    bars: list[Any] = []
    counts = {"keys": 0, "started": 0.0}

    def on_start(table: str, estimate: int) -> None:
        _close_bars(bars)
        counts.update(keys=0, started=time.monotonic())
        if not as_json:
            bar: Any = click.progressbar(
                length=max(estimate, 1),
                label=table,
                show_eta=True,
                show_percent=True,
                item_show_func=_shown,
                file=sys.stderr,
            )
            bar.__enter__()
            bars.append(bar)

    def on_progress(n: int) -> None:
        counts["keys"] += n
        if bars:
            rate = counts["keys"] / max(time.monotonic() - counts["started"], 1e-6)
            bars[0].update(n, f"{rate:,.0f} keys/s")

    def go() -> int:
        try:
            results, confirmed = verify_mod.verify(
                cfg, tables, sample=sample, repair=repair, on_start=on_start, on_progress=on_progress
            )
        finally:
            _close_bars(bars)
        lines: list[str] = []
        divergent = 0
        for r in results:
            divergent += len(r.divergent)
            lines.append(
                f"{r.table}: {r.checked} key(s) checked, {len(r.divergent)} divergent"
                + (f", {r.repaired} evicted" if r.repaired else "")
            )
            for d in r.divergent[:50]:
                lines.append(f"  {d.key}\n    cached:   {d.cached}\n    database: {d.database}")
        if divergent and not confirmed:
            lines.append("note: the worker's heartbeat did not pass the check; some keys may just be lagging")
        data = {
            "confirmed_after_heartbeat": confirmed,
            "tables": [
                {
                    "table": r.table,
                    "checked": r.checked,
                    "repaired": r.repaired,
                    "divergent": [{"key": d.key, "cached": d.cached, "database": d.database} for d in r.divergent],
                }
                for r in results
            ],
        }
        _emit(data, "\n".join(lines), as_json)
        return 1 if divergent else 0

    _guard(go)
