"""The README's configuration reference cannot drift from config.py; the CLI shows defaults and checks configs
as JSON."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from cdc_sync import config as config_mod
from cdc_sync.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS: dict[str, Any] = {
    "mysql": config_mod.MySQLConfig,
    "redis": config_mod.RedisConfig,
    "worker": config_mod.WorkerConfig,
    "reader": config_mod.ReaderConfig,
    "metrics": config_mod.MetricsConfig,
    "ha": config_mod.HAConfig,
    "doctor": config_mod.DoctorConfig,
    "log": config_mod.LogConfig,
}


def _reference() -> dict[str, set[str]]:
    """Section -> settings shown in the README's configuration reference (commented-out ones included)."""
    text = README.read_text()
    block = text.split("## Configuration reference", 1)[1].split("```toml\n", 1)[1].split("\n```", 1)[0]
    out: dict[str, set[str]] = {}
    section = ""
    for line in block.splitlines():
        line = re.sub(r"^#\s?", "", line.strip())
        header = re.match(r"^\[\[?([a-z_]+)\]\]?", line)
        if header:
            section = header.group(1)
            out.setdefault(section, set())
            continue
        setting = re.match(r"^([a-z_]+)\s*=", line)
        if setting:
            out.setdefault(section, set()).add(setting.group(1))
    return out


def _accepted(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """Section -> every setting the loader reads (it records each key it looks up)."""
    seen: dict[str, set[str]] = {}
    finish = config_mod._Section.finish

    def record(self: Any) -> None:
        seen.setdefault(re.sub(r"\[\d+\]$", "", self.where), set()).update(self.used)
        finish(self)

    monkeypatch.setattr(config_mod._Section, "finish", record)
    config_mod.from_dict({"tables": [{"table": "a.b", "key": "k:{id}"}]}, env={})
    return seen


def test_every_setting_the_loader_reads_is_in_the_readme_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each section and each of its settings (as config.py reads them) appears in the README's TOML reference,
    and the reference shows no setting the loader would reject."""
    reference, accepted = _reference(), _accepted(monkeypatch)
    top = accepted.pop("")
    assert top == set(reference), "sections"
    for section, names in accepted.items():
        assert names == reference[section], (
            f"[{section}]: missing {names - reference[section]}, unknown {reference[section] - names}"
        )


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_config_dataclass_field_is_documented(section: str) -> None:
    """Every field of config.py's section dataclasses is a documented setting of that section."""
    fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
    assert fields <= _reference()[section]


def test_every_table_rule_field_is_documented() -> None:
    """TableRule's fields (schema and table come from ``table``; index, raw and stored are internal) are
    documented."""
    fields = {f.name for f in dataclasses.fields(config_mod.TableRule)} - {"index", "schema", "raw", "stored"}
    assert fields <= _reference()["tables"]


def test_the_log_bin_snippet_names_a_file_basename() -> None:
    """``log_bin = ON`` in my.cnf names the binlog files ON.000001: the README shows a basename and says why."""
    text = README.read_text()
    requirements = text.split("## MySQL requirements", 1)[1].split("```ini\n", 1)[1].split("```", 1)[0]
    line = next(ln for ln in requirements.splitlines() if ln.startswith("log_bin "))
    assert "mysql-bin" in line and "ON.000001" in line


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        out.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            out.extend(_commands(command, (*prefix, name)))
    return out


def test_every_option_with_a_default_shows_it() -> None:
    """Every option that has a default (not a flag, not None) is declared with show_default=True."""
    missing = [
        f"{' '.join(path)} {param.opts[0]}"
        for path, command in _commands(main)
        for param in command.params
        if isinstance(param, click.Option)
        and not param.is_flag
        and param.default is not None
        and not param.show_default
    ]
    assert missing == []


@pytest.mark.parametrize(("command", "default"), [(["warm"], "default: 500"), (["verify"], "default: 0")])
def test_help_shows_defaults(command: list[str], default: str) -> None:
    """The defaults are in --help."""
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and default in result.output


def test_check_config_json(tmp_path: Path) -> None:
    """check-config --json: the validated summary as JSON, without the password; a bad file exits 2."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[mysql]\npassword = "Top-Secret-1"\nserver_id = 7\n[redis]\nurl = "redis://u:Redis-Secret@h:1/0"\n'
        '[ha]\nenabled = true\n[[tables]]\ntable = "s.users"\nkey = "user:{id}"\nmode = "update"\n'
    )
    result = CliRunner().invoke(main, ["check-config", "--json", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True and data["mysql"]["server_id"] == 7 and data["ha"]["enabled"] is True
    assert data["tables"] == [
        {"table": "s.users", "keys": ["user:{id}"], "mode": "update", "format": "json", "ttl": 0, "tags": []}
    ]
    assert "Top-Secret-1" not in result.output and "Redis-Secret" not in result.output
    cfg.write_text('[mysql]\nport = "x"\n')
    bad = CliRunner().invoke(main, ["check-config", "--json", "--config", str(cfg)])
    assert bad.exit_code == 2
