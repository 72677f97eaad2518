"""cdc_sync.config: loading, defaults, env overrides, secrets, and field-exact error messages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cdc_sync.config import (
    Config,
    LogConfig,
    MySQLConfig,
    RedisConfig,
    WorkerConfig,
    check_against_schema,
    from_dict,
    load,
    redact_url,
    resolve_path,
)
from cdc_sync.errors import ConfigError
from tests.unit.factories import make_config

EXAMPLE = """\
[mysql]
host = "127.0.0.1"
port = 3306
user = "cdc"
password = ""
server_id = 4242
start = "current"
[redis]
url = "redis://127.0.0.1:6379/0"
namespace = "cdc"
[[tables]]
table = "shop.users"
key = "user:{id}"
also = ["user:email:{email}"]
mode = "evict"
format = "json"
columns = ["id", "email", "name"]
ttl = 3600
"""

SECRET = "s3cr3t-Pa55w0rd"
USERS = {"table": "shop.users", "key": "user:{id}"}


def _raw(**overrides: Any) -> dict[str, Any]:
    """A minimal valid document; each keyword replaces one top-level section."""
    raw: dict[str, Any] = {"tables": [dict(USERS)]}
    raw.update(copy.deepcopy(overrides))
    return raw


def _error(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(raw, env=env or {})
    return str(info.value)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    path = tmp_path / "cdc-sync.toml"
    path.write_text(EXAMPLE, encoding="utf-8")
    return path


# ---- loading and defaults ------------------------------------------------------------------------


def test_example_file_loads(example: Path) -> None:
    """The documented example loads with every value as written."""
    cfg = load(example, env={})
    assert (cfg.mysql.host, cfg.mysql.port, cfg.mysql.user, cfg.mysql.password) == ("127.0.0.1", 3306, "cdc", "")
    assert (cfg.mysql.server_id, cfg.mysql.start) == (4242, "current")
    assert (cfg.redis.url, cfg.redis.namespace) == ("redis://127.0.0.1:6379/0", "cdc")
    assert cfg.path == str(example)


def test_example_table_rule(example: Path) -> None:
    """The example's [[tables]] entry becomes a complete TableRule."""
    (rule,) = load(example, env={}).tables
    assert (rule.index, rule.schema, rule.table, rule.name) == (0, "shop", "users", "shop.users")
    assert rule.key.source == "user:{id}"
    assert [t.source for t in rule.also] == ["user:email:{email}"]
    assert (rule.mode, rule.format, rule.ttl) == ("evict", "json", 3600)
    assert rule.columns == ("id", "email", "name")
    assert rule.exclude == ()


def test_defaults_for_omitted_sections() -> None:
    """With only [[tables]], every section takes its dataclass defaults."""
    cfg = from_dict(_raw(), env={})
    assert cfg.mysql == MySQLConfig()
    assert cfg.redis == RedisConfig()
    assert cfg.worker == WorkerConfig()
    assert cfg.log == LogConfig()


def test_rule_defaults() -> None:
    """A rule with only table and key evicts, as JSON, every column, without TTL."""
    (rule,) = from_dict(_raw(), env={}).tables
    assert (rule.mode, rule.format, rule.columns, rule.exclude, rule.ttl, rule.also) == (
        "evict",
        "json",
        None,
        (),
        0,
        (),
    )


def test_integer_accepted_where_number_wanted() -> None:
    """An integer is a valid float setting and is stored as a float."""
    cfg = from_dict(_raw(mysql={"heartbeat_s": 2}), env={})
    assert cfg.mysql.heartbeat_s == 2.0
    assert isinstance(cfg.mysql.heartbeat_s, float)


def test_load_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the path."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found"):
        load(path, env={})


def test_load_invalid_toml(tmp_path: Path) -> None:
    """Broken TOML is a ConfigError, not a tomllib exception."""
    path = tmp_path / "bad.toml"
    path.write_text("[mysql\nhost = ", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(path, env={})


def test_load_passes_env(example: Path) -> None:
    """load() applies the env mapping it is given."""
    assert load(example, env={"CDC_SYNC_MYSQL_PASSWORD": SECRET}).mysql.password == SECRET


def test_resolve_path_prefers_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """--config beats $CDC_SYNC_CONFIG."""
    monkeypatch.setenv("CDC_SYNC_CONFIG", "/from/env.toml")
    assert resolve_path("/from/cli.toml") == Path("/from/cli.toml")


def test_resolve_path_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """$CDC_SYNC_CONFIG is used when no --config, else ./cdc-sync.toml."""
    monkeypatch.setenv("CDC_SYNC_CONFIG", "/from/env.toml")
    assert resolve_path(None) == Path("/from/env.toml")
    monkeypatch.delenv("CDC_SYNC_CONFIG")
    assert resolve_path(None) == Path("cdc-sync.toml")


def test_rule_for() -> None:
    """rule_for finds a mapped table and returns None for others."""
    cfg = make_config(USERS, {"table": "shop.orders", "key": "order:{id}"})
    rule = cfg.rule_for("shop", "orders")
    assert rule is not None and rule.index == 1
    assert cfg.rule_for("shop", "missing") is None


def test_value_columns_projection() -> None:
    """columns fixes the value's columns; exclude removes from the row's columns in table order."""
    listed = make_config({**USERS, "columns": ["name", "id"]}).tables[0]
    excluded = make_config({**USERS, "exclude": ["secret"]}).tables[0]
    assert listed.value_columns(["id", "name", "secret"]) == ["name", "id"]
    assert excluded.value_columns(["id", "secret", "name"]) == ["id", "name"]


def test_tls_on_when_any_ssl_setting() -> None:
    """Setting any ssl_* file turns TLS on."""
    assert not from_dict(_raw(), env={}).mysql.tls
    assert from_dict(_raw(mysql={"ssl_ca": "/ca.pem"}), env={}).mysql.tls


# ---- secrets and env overrides -------------------------------------------------------------------


def test_env_password_beats_password() -> None:
    """CDC_SYNC_MYSQL_PASSWORD overrides mysql.password."""
    cfg = from_dict(_raw(mysql={"password": "file-pw"}), env={"CDC_SYNC_MYSQL_PASSWORD": SECRET})
    assert cfg.mysql.password == SECRET


def test_env_password_beats_password_file(tmp_path: Path) -> None:
    """CDC_SYNC_MYSQL_PASSWORD overrides mysql.password_file."""
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\n", encoding="utf-8")
    cfg = from_dict(_raw(mysql={"password_file": str(pw_file)}), env={"CDC_SYNC_MYSQL_PASSWORD": SECRET})
    assert cfg.mysql.password == SECRET


def test_password_file_is_read(tmp_path: Path) -> None:
    """password_file is read, its line ending dropped, and it beats an inline password."""
    pw_file = tmp_path / "pw"
    pw_file.write_text(f"{SECRET}\r\n", encoding="utf-8")
    cfg = from_dict(_raw(mysql={"password": "inline", "password_file": str(pw_file)}), env={})
    assert cfg.mysql.password == SECRET


def test_password_file_unreadable(tmp_path: Path) -> None:
    """An unreadable password_file is an error naming mysql.password_file."""
    msg = _error(_raw(mysql={"password_file": str(tmp_path / "missing")}))
    assert msg.startswith("mysql.password_file: cannot read ")


def test_env_redis_url_beats_url() -> None:
    """CDC_SYNC_REDIS_URL overrides redis.url."""
    cfg = from_dict(_raw(redis={"url": "redis://a:6379/0"}), env={"CDC_SYNC_REDIS_URL": "redis://b:6380/2"})
    assert cfg.redis.url == "redis://b:6380/2"


def test_env_redis_url_is_validated() -> None:
    """A bad URL from the environment is reported against redis.url."""
    msg = _error(_raw(), env={"CDC_SYNC_REDIS_URL": "http://b:6380/2"})
    assert msg.startswith("redis.url: scheme must be")


def test_password_not_in_repr() -> None:
    """The MySQL password appears in neither repr(config) nor repr(config.mysql)."""
    cfg = from_dict(_raw(mysql={"password": SECRET}), env={})
    assert cfg.mysql.password == SECRET
    assert SECRET not in repr(cfg)
    assert SECRET not in repr(cfg.mysql)


def test_redis_url_password_not_in_repr() -> None:
    """A password in the Redis URL appears in neither repr(config) nor repr(config.redis)."""
    cfg = from_dict(_raw(redis={"url": f"redis://:{SECRET}@cache:6379/0"}), env={})
    assert SECRET not in repr(cfg)
    assert SECRET not in repr(cfg.redis)


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"rediss://app:{SECRET}@cache.example.com:6380/1", "rediss://app:***@cache.example.com:6380/1"),
        (f"unix://:{SECRET}@/run/redis.sock?db=3", "unix://:***@/run/redis.sock?db=3"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_safe_url_redacts(url: str, safe: str) -> None:
    """safe_url replaces the password with *** and keeps everything else."""
    cfg = from_dict(_raw(redis={"url": url}), env={})
    assert cfg.redis.safe_url == safe


def test_bad_scheme_error_redacts_password() -> None:
    """The bad-scheme error shows the URL without its password."""
    msg = _error(_raw(redis={"url": f"http://:{SECRET}@cache:6379/0"}))
    assert msg.startswith("redis.url:")
    assert SECRET not in msg
    assert "***" in msg


def test_redact_url_query_password() -> None:
    """A password given as a URL query argument is redacted too."""
    assert SECRET not in redact_url(f"redis://cache:6379/0?password={SECRET}")


def test_redact_url_never_raises() -> None:
    """Redacting a malformed URL still returns a redacted string."""
    assert SECRET not in redact_url(f"redis://:{SECRET}@cache:notaport/0")


def test_bad_scheme_and_port_is_config_error() -> None:
    """A URL with a bad scheme and a bad port is still a ConfigError naming redis.url."""
    assert _error(_raw(redis={"url": f"http://:{SECRET}@cache:notaport/0"})).startswith("redis.url:")


def test_redact_url_keeps_ipv6_brackets() -> None:
    """An IPv6 host keeps its brackets so the redacted URL stays a valid URL."""
    assert redact_url(f"redis://:{SECRET}@[::1]:6379/0") == "redis://:***@[::1]:6379/0"


# ---- errors name the exact field -----------------------------------------------------------------

ERROR_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown mysql", _raw(mysql={"hots": "db"}), "mysql.hots: unknown setting"),
    ("unknown redis", _raw(redis={"nmespace": "x"}), "redis.nmespace: unknown setting"),
    ("unknown top", _raw(tabels=[]), "tabels: unknown setting"),
    ("unknown table", _raw(tables=[{**USERS, "kye": "x"}]), "tables[0].kye: unknown setting"),
    ("unknown worker", _raw(worker={"batch": 1}), "worker.batch: unknown setting"),
    ("port range", _raw(mysql={"port": 70000}), "mysql.port: must be between 1 and 65535, got 70000"),
    ("port string", _raw(mysql={"port": "3306"}), "mysql.port: must be an integer, not str"),
    ("port bool", _raw(mysql={"port": True}), "mysql.port: must be an integer, not a boolean"),
    ("port float", _raw(mysql={"port": 3306.0}), "mysql.port: must be an integer, not float"),
    ("server_id -1", _raw(mysql={"server_id": -1}), "mysql.server_id: must be between 0 and 4294967295, got -1"),
    ("ttl bool", _raw(tables=[{**USERS, "ttl": False}]), "tables[0].ttl: must be an integer, not a boolean"),
    ("heartbeat bool", _raw(mysql={"heartbeat_s": True}), "mysql.heartbeat_s: must be a number, not a boolean"),
    ("heartbeat low", _raw(mysql={"heartbeat_s": 0}), "mysql.heartbeat_s: must be >= 0.1, got 0"),
    ("verify str", _raw(mysql={"ssl_verify_identity": "yes"}), "mysql.ssl_verify_identity: must be true or false"),
    ("host empty", _raw(mysql={"host": ""}), "mysql.host: must not be empty"),
    ("start", _raw(mysql={"start": "beginning"}), "mysql.start: must be one of current, earliest; got 'beginning'"),
    ("mysql type", _raw(mysql="db"), "mysql: must be a table, not str"),
    ("namespace colon", _raw(redis={"namespace": "a:b"}), "redis.namespace: 'a:b' must be non-empty"),
    ("namespace empty", _raw(redis={"namespace": ""}), "redis.namespace: '' must be non-empty"),
    ("namespace glob", _raw(redis={"namespace": "c*"}), "redis.namespace: 'c*' must be non-empty"),
    ("namespace space", _raw(redis={"namespace": "a b"}), "redis.namespace: 'a b' must be non-empty"),
    ("redis scheme", _raw(redis={"url": "http://x/0"}), "redis.url: scheme must be"),
    ("batch rows", _raw(worker={"batch_max_rows": 0}), "worker.batch_max_rows: must be between 1 and 1000000"),
    ("log level", _raw(log={"level": "verbose"}), "log.level: must be one of debug, info, warning, error"),
    ("no tables", {}, "tables: at least one [[tables]] entry is required"),
    ("empty tables", _raw(tables=[]), "tables: at least one [[tables]] entry is required"),
    ("tables type", _raw(tables={"table": "a.b"}), "tables: must be an array of tables ([[tables]]), not dict"),
    ("entry type", _raw(tables=["shop.users"]), "tables[0]: must be a table"),
    ("missing table", _raw(tables=[{"key": "u:{id}"}]), 'tables[0].table: required ("schema.table")'),
    (
        "table no dot",
        _raw(tables=[{**USERS, "table": "users"}]),
        "tables[0].table: must be \"schema.table\"; got 'users'",
    ),
    ("table 3 parts", _raw(tables=[{**USERS, "table": "a.b.c"}]), 'tables[0].table: must be "schema.table"'),
    ("table no schema", _raw(tables=[{**USERS, "table": ".users"}]), 'tables[0].table: must be "schema.table"'),
    ("table no name", _raw(tables=[{**USERS, "table": "shop."}]), 'tables[0].table: must be "schema.table"'),
    ("table type", _raw(tables=[{**USERS, "table": 5}]), "tables[0].table: must be a string, not int"),
    ("missing key", _raw(tables=[{"table": "shop.users"}]), "tables[0].key: required"),
    ("key no field", _raw(tables=[{**USERS, "key": "user"}]), "tables[0].key: template 'user' has no {column} field"),
    ("key adjacent", _raw(tables=[{**USERS, "key": "u:{a}{b}"}]), "tables[0].key: fields in template"),
    ("key unclosed", _raw(tables=[{**USERS, "key": "u:{id"}]), "tables[0].key: unclosed '{'"),
    (
        "also second table",
        _raw(tables=[USERS, {"table": "shop.orders", "key": "o:{id}", "also": ["o:{a}-{b}"]}]),
        "tables[1].also[0]: fields in template",
    ),
    ("also type", _raw(tables=[{**USERS, "also": "u:{email}"}]), "tables[0].also: must be a list of strings, not str"),
    ("key in namespace", _raw(tables=[{**USERS, "key": "{a}:heartbeat"}]), "tables[0].key: template '{a}:heartbeat'"),
    ("key literal namespace", _raw(tables=[{**USERS, "key": "cdc:{x}"}]), "tables[0].key: template 'cdc:{x}' can"),
    (
        "also in namespace",
        _raw(tables=[{**USERS, "also": ["u:{e}", "c{x}:{y}"]}]),
        "tables[0].also[1]: template 'c{x}:{y}' can render keys starting with 'cdc:'",
    ),
    (
        "key in custom namespace",
        _raw(redis={"namespace": "app"}, tables=[{**USERS, "key": "ap{x}:{id}"}]),
        "tables[0].key: template 'ap{x}:{id}' can render keys starting with 'app:'",
    ),
    ("also item", _raw(tables=[{**USERS, "also": ["u:{e}", 3]}]), "tables[0].also[1]: must be a string"),
    ("mode", _raw(tables=[{**USERS, "mode": "write"}]), "tables[0].mode: must be one of evict, update; got 'write'"),
    ("format", _raw(tables=[{**USERS, "format": "xml"}]), "tables[0].format: must be one of json, hash; got 'xml'"),
    ("ttl negative", _raw(tables=[{**USERS, "ttl": -1}]), "tables[0].ttl: must be between 0 and"),
    ("ttl float", _raw(tables=[{**USERS, "ttl": 1.5}]), "tables[0].ttl: must be an integer, not float"),
    (
        "columns and exclude",
        _raw(tables=[{**USERS, "columns": ["id"], "exclude": ["pw"]}]),
        "tables[0].exclude: give either columns or exclude, not both",
    ),
    ("columns empty", _raw(tables=[{**USERS, "columns": []}]), "tables[0].columns: must not be empty"),
    ("columns twice", _raw(tables=[{**USERS, "columns": ["id", "id"]}]), "tables[0].columns: column 'id' listed twice"),
    ("exclude twice", _raw(tables=[{**USERS, "exclude": ["a", "a"]}]), "tables[0].exclude: column 'a' listed twice"),
    (
        "duplicate mapping",
        _raw(tables=[USERS, {"table": "shop.users", "key": "u2:{id}"}]),
        "tables[1].table: shop.users is already mapped by tables[0]",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_error_names_field(raw: dict[str, Any], expected: str) -> None:
    """Every invalid setting is a ConfigError whose message starts with the exact field."""
    assert _error(raw).startswith(expected)


# ---- check_against_schema ------------------------------------------------------------------------


def _schema_config() -> Config:
    return make_config(
        {**USERS, "also": ["user:email:{emial}"]},
        {"table": "shop.orders", "key": "order:{id}"},
    )


def test_schema_check_passes() -> None:
    """A config whose every column exists passes."""
    cfg = make_config({**USERS, "also": ["user:email:{email}"], "columns": ["id", "email"]})
    check_against_schema(cfg, {"shop.users": ["id", "email", "name"]})


def test_schema_unknown_also_column() -> None:
    """A typo in an also template names tables[0].also[0], the column and the table."""
    with pytest.raises(ConfigError) as info:
        check_against_schema(_schema_config(), {"shop.users": ["id", "email"], "shop.orders": ["id"]})
    assert str(info.value) == "tables[0].also[0]: unknown column 'emial' in shop.users"


def test_schema_missing_table() -> None:
    """A mapped table absent from the server names its tables[i].table."""
    cfg = make_config(USERS, {"table": "shop.orders", "key": "order:{id}"})
    with pytest.raises(ConfigError) as info:
        check_against_schema(cfg, {"shop.users": ["id"]})
    assert str(info.value) == "tables[1].table: table shop.orders does not exist"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"key": "user:{uid}"}, "tables[0].key: unknown column 'uid' in shop.users"),
        ({"columns": ["id", "nmae"]}, "tables[0].columns: unknown column 'nmae' in shop.users"),
        ({"exclude": ["pwd"]}, "tables[0].exclude: unknown column 'pwd' in shop.users"),
    ],
)
def test_schema_unknown_column_fields(settings: dict[str, Any], expected: str) -> None:
    """Unknown columns in key, columns and exclude each name their field."""
    cfg = make_config({**USERS, **settings})
    with pytest.raises(ConfigError) as info:
        check_against_schema(cfg, {"shop.users": ["id", "name"]})
    assert str(info.value) == expected


def test_server_id_zero_is_derived_from_the_host_name() -> None:
    """server_id = 0: a stable id from the host (pod) name, clear of small hand-picked ids."""
    from cdc_sync.config import derived_server_id

    cfg = from_dict(_raw(mysql={"server_id": 0}), env={})
    assert cfg.mysql.server_id == derived_server_id() >= 1000
    assert derived_server_id("pod-a") != derived_server_id("pod-b")
    assert derived_server_id("pod-a") == derived_server_id("pod-a")


def test_section_settings_are_declared_once_with_their_defaults_and_bounds() -> None:
    """The loader reads each [worker]/[reader]/[log]/... setting from its dataclass field: an empty section is
    the dataclass's defaults, a bound or a choice the field declares is enforced with the field's name."""
    import dataclasses

    from cdc_sync.config import HAConfig, LogConfig, ReaderConfig, WorkerConfig

    table = {"table": "shop.users", "key": "user:{id}"}
    cfg = from_dict({"tables": [table]}, env={})
    assert (cfg.worker, cfg.reader, cfg.log, cfg.ha) == (WorkerConfig(), ReaderConfig(), LogConfig(), HAConfig())
    for f in dataclasses.fields(WorkerConfig):
        assert f.default is not dataclasses.MISSING, f.name
    with pytest.raises(ConfigError, match=r"worker\.batch_max_rows: must be between 1 and 1000000, got 0"):
        from_dict({"tables": [table], "worker": {"batch_max_rows": 0}}, env={})
    with pytest.raises(ConfigError, match=r"ha\.lease_ttl_ms: must be between 300 and 600000"):
        from_dict({"tables": [table], "ha": {"lease_ttl_ms": 10}}, env={})
    with pytest.raises(ConfigError, match=r"log\.format: must be one of auto, json, console"):
        from_dict({"tables": [table], "log": {"format": "xml"}}, env={})
    with pytest.raises(ConfigError, match=r"reader\.strict: must be true or false"):
        from_dict({"tables": [table], "reader": {"strict": "yes"}}, env={})


SENTINELS = {"sentinels": ["10.0.0.1:26379", "[::1]:26380"], "master_name": "cache"}


def test_sentinels_name_the_master() -> None:
    """Sentinels as host:port (IPv6 in brackets); safe_url names them and the master, never a password."""
    redis_raw = {**SENTINELS, "url": f"rediss://app:{SECRET}@ignored:1/3", "sentinel_password": SECRET}
    cfg = from_dict(_raw(redis={**redis_raw, "sentinel_tls": True}), env={}).redis
    assert cfg.sentinels == (("10.0.0.1", 26379), ("::1", 26380)) and cfg.master_name == "cache"
    assert cfg.safe_url == "redis+sentinel://10.0.0.1:26379,[::1]:26380/cache/3"
    assert cfg.db == 3 and cfg.sentinel_tls
    assert SECRET not in repr(cfg) and SECRET not in cfg.safe_url


def test_sentinel_password_from_the_environment() -> None:
    env = {"CDC_SYNC_SENTINEL_PASSWORD": SECRET}
    assert from_dict(_raw(redis=dict(SENTINELS)), env=env).redis.sentinel_password == SECRET


@pytest.mark.parametrize(
    ("redis_raw", "message"),
    [
        ({"sentinels": ["10.0.0.1:26379"]}, "redis.master_name: required with redis.sentinels"),
        ({"master_name": "cache"}, "redis.sentinels: required with redis.master_name"),
        ({**SENTINELS, "sentinels": ["10.0.0.1"]}, 'redis.sentinels[0]: must be "host:port"'),
        ({**SENTINELS, "sentinels": ["h:0"]}, 'redis.sentinels[0]: must be "host:port"'),
        ({**SENTINELS, "url": "unix:///tmp/r.sock"}, "redis.url: with Sentinels it must be"),
        ({**SENTINELS, "sentinel_tls": True}, "redis.sentinel_tls: the master must speak TLS too"),
        ({"sentinel_password": "x"}, "redis.sentinel_password: only with redis.sentinels"),
        ({"wait_replicas": -1}, "redis.wait_replicas: must be between 0 and 1000"),
        ({"wait_timeout_ms": 0}, "redis.wait_timeout_ms: must be between 1 and 60000"),
    ],
)
def test_bad_sentinel_settings_are_refused(redis_raw: dict[str, Any], message: str) -> None:
    assert _error(_raw(redis=redis_raw)).startswith(message)
