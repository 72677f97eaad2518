"""The ``cdc-sync`` command line (click). Thin: parse options, set up logging, call app.py or ops/.

Every command takes ``--config PATH`` (before or after the command name) and prints a human view;
``--json`` prints the same as JSON. Exit codes: 0 fine, 1 a problem was found (doctor FAIL, divergence,
status not OK, runtime failure), 2 bad configuration, or a server that refuses us for good (wrong password,
missing privilege, a duplicate server_id), with a ``fix:`` line.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
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


# What an operator command returns: (the JSON view, the human view, the exit code)
Outcome = tuple[Any, str, int]


def command(parent: click.Group, name: str | None = None) -> Callable[[Callable[..., Outcome]], click.Command]:
    """An operator command of ``parent``: ``--config`` and ``--json``, the config loaded (exit 2 when invalid),
    the body run under ``_guard`` (exit 2 for a refusal with its fix, 1 for a failure) and its outcome printed.
    The body is ``fn(cfg, as_json, **its own options) -> (data, text, exit code)``."""

    def wrap(fn: Callable[..., Outcome]) -> click.Command:
        @functools.wraps(fn)
        @click.pass_context
        def cmd(ctx: click.Context, /, config_path: str | None, as_json: bool, **options: Any) -> None:
            cfg = _load(ctx, config_path)

            def go() -> int:
                data, text, code = fn(cfg, as_json, **options)
                _emit(data, text, as_json)
                return code

            _guard(go)

        return parent.command(name)(_config_option(_json_option(cmd)))

    return wrap


@contextlib.contextmanager
def _progress(as_json: bool, unit: str) -> Iterator[tuple[Callable[[str, int], None], Callable[[int], None]]]:
    """(on_start(table, estimate), on_progress(n)): a click progress bar per table on stderr, with the rate in
    ``unit``/s (none with --json); the last bar is closed on the way out."""
    bars: list[Any] = []
    counts = {"n": 0, "started": 0.0}

    def close() -> None:
        while bars:
            bars.pop().__exit__(None, None, None)

    def on_start(table: str, estimate: int) -> None:
        close()
        counts.update(n=0, started=time.monotonic())
        if not as_json:
            bar: Any = click.progressbar(
                length=max(estimate, 1),
                label=table,
                show_eta=True,
                show_percent=True,
                item_show_func=lambda item: item,
                file=sys.stderr,
            )
            bar.__enter__()
            bars.append(bar)

    def on_progress(n: int) -> None:
        counts["n"] += n
        if bars:
            rate = counts["n"] / max(time.monotonic() - counts["started"], 1e-6)
            bars[0].update(n, f"{rate:,.0f} {unit}/s")

    try:
        yield on_start, on_progress
    finally:
        close()


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


@command(main, "check-config")
def check_config(cfg: config_mod.Config, as_json: bool) -> Outcome:
    """Validate the config file (no server is contacted) and print a summary (exit 2 when invalid)."""
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
    return data, "\n".join(lines), 0


@command(main)
def doctor(cfg: config_mod.Config, as_json: bool) -> Outcome:
    """Check every precondition of exact sync: PASS/WARN/FAIL with the fix. Exit 1 on any FAIL."""
    from cdc_sync.ops import doctor as doc

    checks = doc.run(cfg)
    fails = sum(c.status == doc.FAIL for c in checks)
    warns = sum(c.status == doc.WARN for c in checks)
    skips = sum(c.status == doc.SKIP for c in checks)
    summary = f"\n{len(checks)} checks: {fails} FAIL, {warns} WARN" + (f", {skips} SKIP" if skips else "")
    return doc.as_json(checks), "\n".join(c.line() for c in checks) + summary, 1 if fails else 0


@command(main)
def status(cfg: config_mod.Config, as_json: bool) -> Outcome:
    """Is a worker alive and streaming, and the cache fresh? Exit 1 when not (the problems are listed).

    Also shows the checkpoint, the server's position, lag, flushing tables and applied counts.
    """
    from cdc_sync.ops import status as st

    data = st.collect(cfg)
    return data, st.render(data), 0 if data["ok"] else 1


@main.group()
def checkpoint() -> None:
    """Show, set or reset the position the worker resumes from."""


@command(checkpoint, "show")
def checkpoint_show(cfg: config_mod.Config, as_json: bool) -> Outcome:
    """Print the stored checkpoint."""
    from cdc_sync.ops import maintenance

    position = maintenance.show(cfg)
    return {"checkpoint": position}, position or "(no checkpoint)", 0


@command(checkpoint, "set")
@click.argument("position")
def checkpoint_set(cfg: config_mod.Config, as_json: bool, position: str) -> Outcome:
    """Store POSITION (a GTID state/set or file:pos); a running worker rewinds to it.

    A position behind the stored one replays from there; any other (a jump) flushes every mapped table first.
    """
    from cdc_sync.ops import maintenance

    previous, flushed = maintenance.set_position(cfg, position)
    text = f"checkpoint set to {position} (was {previous or 'none'})"
    text += "; a rewind: the worker replays from there" if flushed is None else f"; flushed {flushed} key(s)"
    return {"checkpoint": position, "previous": previous or None, "flushed_keys": flushed}, text, 0


@command(checkpoint, "reset")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def checkpoint_reset(cfg: config_mod.Config, as_json: bool, yes: bool) -> Outcome:
    """Flush every mapped table's keys and start from the server's current position."""
    from cdc_sync.ops import maintenance

    if not yes:
        click.confirm(f"Flush all keys of namespace {cfg.redis.namespace!r} and restart from now?", abort=True)
    position, deleted = maintenance.reset(cfg)
    text = f"flushed {deleted} key(s); checkpoint reset to {position}"
    return {"checkpoint": position, "flushed_keys": deleted}, text, 0


@command(main)
@click.argument("tables", nargs=-1)
def flush(cfg: config_mod.Config, as_json: bool, tables: tuple[str, ...]) -> Outcome:
    """Invalidate TABLES' keys (all mapped tables when none are named), as DDL does."""
    from cdc_sync.ops import maintenance

    deleted = maintenance.flush(cfg, tables)
    names = ", ".join(tables) or "every mapped table"
    return {"tables": list(tables), "flushed_keys": deleted}, f"flushed {deleted} key(s) of {names}", 0


@command(main)
@click.argument("tables", nargs=-1)
@click.option(
    "--rate", type=float, default=0.0, show_default=True, help="At most this many rows per second (0: no limit)."
)
@click.option(
    "--chunk", type=click.IntRange(1, 100_000), default=500, show_default=True, help="Rows per primary-key chunk."
)
@click.option("--restart", is_flag=True, help="Start over instead of resuming an interrupted warm.")
def warm(
    cfg: config_mod.Config, as_json: bool, tables: tuple[str, ...], rate: float, chunk: int, restart: bool
) -> Outcome:
    """Backfill TABLES through the lease protocol (safe while the worker runs; resumable)."""
    from cdc_sync.ops import warm as warm_mod

    try:
        with _progress(as_json, "rows") as (on_start, on_progress):
            results = warm_mod.warm(
                cfg, tables, chunk=chunk, rate=rate, restart=restart, on_start=on_start, on_progress=on_progress
            )
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run warm again to resume where it stopped", err=True)
        sys.exit(130)
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
    return data, "\n".join(lines), 0


@command(main)
@click.argument("tables", nargs=-1)
@click.option(
    "--sample",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Check only the first N keys per table in SCAN order (spread over the keyspace; 0: all).",
)
@click.option("--repair", is_flag=True, help="Evict the divergent keys.")
def verify(cfg: config_mod.Config, as_json: bool, tables: tuple[str, ...], sample: int, repair: bool) -> Outcome:
    """Compare cached values with MySQL; exit 1 on any divergence."""
    from cdc_sync.ops import verify as verify_mod

    with _progress(as_json, "keys") as (on_start, on_progress):
        results, confirmed = verify_mod.verify(
            cfg, tables, sample=sample, repair=repair, on_start=on_start, on_progress=on_progress
        )
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
    return data, "\n".join(lines), 1 if divergent else 0
