"""The ``cdc-sync`` command line (click). Thin: parse options, set up logging, call app.py."""

from __future__ import annotations

import sys
from typing import Any

import click

from cdc_sync import __version__, app, logs
from cdc_sync import config as config_mod
from cdc_sync.errors import ConfigError

_config_option = click.option(
    "--config",
    "config_path",
    metavar="PATH",
    default=None,
    help="Config file (default: $CDC_SYNC_CONFIG, else ./cdc-sync.toml).",
)


def _load(config_path: str | None) -> config_mod.Config:
    path = config_mod.resolve_path(config_path)
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        click.echo(f"cdc-sync: config error: {exc}", err=True)
        sys.exit(app.EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cdc-sync")
@_config_option
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Keep a Redis cache exactly in step with a MySQL/MariaDB database."""
    ctx.obj = {"config_path": config_path}


def _path(ctx: click.Context, config_path: str | None) -> str | None:
    obj: dict[str, Any] = ctx.obj or {}
    return config_path or obj.get("config_path")


@main.command()
@_config_option
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.pass_context
def run(ctx: click.Context, config_path: str | None, log_level: str | None) -> None:
    """Run the worker: tail the binlog and keep Redis in step until SIGTERM/SIGINT."""
    cfg = _load(_path(ctx, config_path))
    logs.configure(log_level or cfg.log.level, cfg.log.format)
    sys.exit(app.run(cfg))


@main.command("check-config")
@_config_option
@click.pass_context
def check_config(ctx: click.Context, config_path: str | None) -> None:
    """Validate the config file (no server is contacted) and print a summary."""
    cfg = _load(_path(ctx, config_path))
    click.echo(f"config OK: {cfg.path}")
    click.echo(f"  mysql  {cfg.mysql.user}@{cfg.mysql.host}:{cfg.mysql.port} server_id={cfg.mysql.server_id}")
    click.echo(f"  redis  {cfg.redis.safe_url} namespace={cfg.redis.namespace}")
    for rule in cfg.tables:
        keys = ", ".join(t.source for t in rule.templates)
        click.echo(f"  table  {rule.name} -> {keys} ({rule.mode}{', ' + rule.format if rule.mode == 'update' else ''})")
