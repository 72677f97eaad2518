"""Configuration: one TOML file, loaded once into frozen dataclasses and validated.

Every error names the exact field (``tables[1].key: ...``); the CLI exits 2 on a ConfigError.
Secrets (the MySQL password, a Redis URL that may carry one) are ``repr=False`` and never logged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import socket
import tomllib
import typing
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from cdc_sync.core.keys import KeyTemplate, Namespace, renders_with_prefix
from cdc_sync.errors import ConfigError

DEFAULT_PATH = "cdc-sync.toml"
ENV_CONFIG = "CDC_SYNC_CONFIG"
ENV_MYSQL_PASSWORD = "CDC_SYNC_MYSQL_PASSWORD"  # noqa: S105 - a variable name, not a secret
ENV_REDIS_URL = "CDC_SYNC_REDIS_URL"
ENV_SENTINEL_PASSWORD = "CDC_SYNC_SENTINEL_PASSWORD"  # noqa: S105 - a variable name


@dataclass(frozen=True)
class MySQLConfig:
    """The binlog connection."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = field(default="", repr=False)  # from password / password_file / env
    server_id: int = 4242  # replica id of the binlog connection, unique among replicas; 0: derived from the host name
    start: str = "current"  # with no checkpoint: "current" (server's end) or "earliest" (oldest binlog)
    position_mode: str = "auto"  # "auto" (GTID when the server has GTIDs), "gtid" or "file"
    heartbeat_s: float = 1.0  # server heartbeat period while idle; also bounds stall detection
    connect_timeout_s: float = 10.0
    ssl_ca: str | None = None  # TLS: CA file; setting any ssl_* turns TLS on
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_verify_identity: bool = True  # check the server's host name against its certificate

    @property
    def tls(self) -> bool:
        return bool(self.ssl_ca or self.ssl_cert or self.ssl_key)


@dataclass(frozen=True)
class RedisConfig:
    """The Redis server that holds the cache and the worker's state."""

    url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # may carry a password
    namespace: str = "cdc"  # prefix of the worker's own keys
    ssl_ca_certs: str | None = None  # CA file for rediss:// URLs (default: the system's CAs)
    ssl_certfile: str | None = None  # client certificate (Redis's tls-auth-clients)
    ssl_keyfile: str | None = None
    ssl_verify_identity: bool = True  # check the server's host name against its certificate
    socket_timeout_s: float = 10.0
    # Sentinel: the Sentinels ("host:port") that name the master ``master_name``; the url then gives the master's
    # user, password, database and scheme (rediss: TLS), not its address
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_username: str | None = None  # the Sentinels' own ACL user (sentinel's requirepass / ACL)
    sentinel_password: str = field(default="", repr=False)
    sentinel_tls: bool = False  # the Sentinels speak TLS too (with the ssl_* settings above)
    # every apply step waits for this many replicas to acknowledge it (WAIT), at most wait_timeout_ms
    wait_replicas: int = 0
    wait_timeout_ms: int = 100
    cluster: bool = False  # a Redis Cluster, seeded by the url's node

    @property
    def names(self) -> Namespace:
        """The namespace's key layout (for one node, or for a cluster)."""
        return Namespace(self.namespace, cluster=self.cluster)

    @property
    def safe_url(self) -> str:
        """The URL with any password replaced by ``***`` (for logs and status); with Sentinels, the Sentinels and
        the master's name (``redis+sentinel://s1:26379,s2:26379/cache/0``)."""
        if not self.sentinels:
            return redact_url(self.url)
        hosts = ",".join(_host_port(h, p) for h, p in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/{self.db}"

    @property
    def db(self) -> int:
        """The database number of the url (``/0`` by default)."""
        path = urlsplit(self.url).path.strip("/")
        return int(path) if path.isdigit() else 0


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class TableRule:
    """How one MySQL table maps to Redis keys."""

    index: int  # position in [[tables]], for messages
    schema: str
    table: str
    key: KeyTemplate | None  # None: the table is mapped only for reader dependencies (tags)
    also: tuple[KeyTemplate, ...] = ()
    mode: str = "evict"  # "evict" (DEL) or "update" (write the row)
    format: str = "json"  # update mode: "json" (string) or "hash"
    columns: tuple[str, ...] | None = None  # None: every column (minus exclude)
    exclude: tuple[str, ...] = ()
    ttl: int = 0  # seconds; 0 = no expiry
    tags: tuple[tuple[str, ...], ...] = ()  # column sets readers may depend on (reader.fetch depends_on)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)  # as written
    # (schema, table) as the server stores them (lower_case_table_names), resolved by the worker at start and
    # after DDL; None: as configured. The binlog names tables this way; Redis keys use the configured name.
    stored: tuple[str, str] | None = field(default=None, compare=False, hash=False)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def stored_as(self) -> tuple[str, str]:
        """(schema, table) as binlog events name this table."""
        return self.stored or (self.schema, self.table)

    @functools.cached_property
    def templates(self) -> tuple[KeyTemplate, ...]:
        return (self.key, *self.also) if self.key is not None else ()

    def where(self, name: str) -> str:
        return f"tables[{self.index}].{name}"

    def value_columns(self, row_columns: list[str]) -> list[str]:
        """The columns an update-mode value holds, given the row's columns in table order."""
        if self.columns is not None:
            return list(self.columns)
        return [c for c in row_columns if c not in self.exclude]


def _bound(default: Any, minimum: float = 0, maximum: float | None = None) -> Any:
    """A setting's default with the bounds the loader enforces (``_read_section``): declared once, here."""
    return field(default=default, metadata={"min": minimum, "max": maximum})


@dataclass(frozen=True)
class WorkerConfig:
    """Tuning of the sync loop."""

    batch_max_rows: int = _bound(2000, 1, 1_000_000)  # rows per atomic Redis step (whole transactions, or a chunk)
    chunk_rows: int = _bound(5000, 1, 10_000_000)  # a transaction larger than this is applied in chunks
    queue_max_transactions: int = _bound(2000, 1, 1_000_000)  # decoded transactions waiting for Redis
    queue_max_rows: int = _bound(20000, 1, 100_000_000)  # ... and their rows: with chunk_rows, bounded memory
    retry_initial_s: float = _bound(0.1, 0.001)  # backoff for Redis and MySQL reconnects
    retry_max_s: float = _bound(5.0, 0.001)
    shutdown_timeout_s: float = _bound(4.0, 0.1)  # SIGTERM: time to finish the transaction in hand
    heartbeat_interval_ms: int = _bound(500, 10, 60_000)  # how often the freshness heartbeat is sampled when idle
    heartbeat_min_gap_ms: int = _bound(20, 1, 60_000)  # ... and at most how often while changes are applied


@dataclass(frozen=True)
class ReaderConfig:
    """Readers (cdc_sync.CacheReader); ``holdoff_ms`` is also what the worker's hold-off markers last."""

    max_staleness_ms: int = _bound(5000, 1, 86_400_000)  # bypass the cache when the heartbeat is older than this
    holdoff_ms: int = _bound(1000, 0, 3_600_000)  # after an eviction, readers do not fill the key for this long
    lease_ttl_ms: int = _bound(3000, 1, 3_600_000)  # a fill lease expires after this (a crashed reader's)
    lease_wait_ms: int = _bound(200, 0, 3_600_000)  # a reader that finds another's lease waits this long
    freshness_check_ms: int = _bound(100, 0, 60_000)  # hits this soon after a checked hit skip the script
    ttl_jitter: float = _bound(0.1, 0.0)  # fills use ttl * (1 - jitter*random) (below 1)
    negative_ttl: int = _bound(0, 0, 10 * 365 * 86400)  # seconds to cache "row absent"; 0 = never
    pool_size: int = _bound(4, 1, 1000)  # MySQL connections of the built-in loader
    redis_max_connections: int = _bound(64, 1, 100_000)  # Redis connections per reader; more lookups wait
    strict: bool = False  # raise CacheUnavailable when Redis fails, instead of reading MySQL
    # inside reader.after(gtid): how long lookups wait for the worker to apply that write before reading MySQL
    read_your_writes_wait_ms: int = _bound(1000, 0, 60_000)
    near_cache_size: int = _bound(0, 0, 100_000_000)  # values kept in the reader's memory (LRU); 0 = no near cache


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics and health endpoints (/metrics, /healthz, /readyz) of the worker."""

    listen: str = "127.0.0.1:9108"  # host:port; "" turns the HTTP endpoint off
    ready_max_lag_s: float = _bound(30.0, 0.1)  # /readyz fails when the freshness heartbeat is older than this


@dataclass(frozen=True)
class HAConfig:
    """Several workers on one namespace, exactly one applying (see ha.py)."""

    enabled: bool = False
    lease_ttl_ms: int = _bound(5000, 300, 600_000)  # a leader that stops renewing is replaced after this


@dataclass(frozen=True)
class VerifyConfig:
    """The worker's continuous sampled verifier (worker/verifier.py): off unless ``sample_rate`` > 0."""

    sample_rate: float = _bound(0.0, 0.0)  # the share of keys each apply step writes or evicts checked (0..1)
    max_checks_per_s: int = _bound(50, 1, 100_000)  # keys compared with MySQL at most this often
    repair: bool = True  # evict a confirmed inconsistent key (the next reader fills it from MySQL)


@dataclass(frozen=True)
class DoctorConfig:
    # binlogs must be kept at least this long (a worker down longer loses its place)
    max_downtime_s: int = _bound(86400, 0, 10 * 365 * 86400)


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # "auto": JSON unless stdout is a TTY


@dataclass(frozen=True)
class Config:
    mysql: MySQLConfig
    redis: RedisConfig
    tables: tuple[TableRule, ...]
    worker: WorkerConfig = WorkerConfig()
    reader: ReaderConfig = ReaderConfig()
    metrics: MetricsConfig = MetricsConfig()
    doctor: DoctorConfig = DoctorConfig()
    ha: HAConfig = HAConfig()
    log: LogConfig = LogConfig()
    path: str = ""
    verify: VerifyConfig = VerifyConfig()

    def rule_for(self, schema: str, table: str) -> TableRule | None:
        for rule in self.tables:
            if rule.schema == schema and rule.table == table:
                return rule
        return None


_QUERY_SECRET = re.compile(r"(?i)((?:^|&)(?:password|passwd|pass|pwd)=)[^&]*")


def derived_server_id(host: str | None = None) -> int:
    """A server_id from the host (pod) name: stable per host, distinct across hosts with high probability.

    Kept in 1000..2^31 so it stays clear of small hand-picked ids; ``doctor`` checks it is free.
    """
    name = host if host is not None else socket.gethostname()
    return 1000 + zlib.crc32(name.encode()) % (2**31 - 1000)


def redact_url(url: str) -> str:
    """The URL with the password of its user part and any ``password=`` query value replaced by ``***``.

    Works on the text, never raising, whatever the URL holds (a bad port, an IPv6 host).
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if (":" in userinfo or not user) else f"***@{hostport}"
    query = _QUERY_SECRET.sub(r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# ---- loading -------------------------------------------------------------------------------------


def resolve_path(cli_path: str | None) -> Path:
    """--config PATH, else $CDC_SYNC_CONFIG, else ./cdc-sync.toml."""
    return Path(cli_path or os.environ.get(ENV_CONFIG) or DEFAULT_PATH)


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file at ``path``."""
    env = os.environ if env is None else env
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return from_dict(raw, env=env, path=str(p))


class _Section:
    """Typed access to one TOML table that records which keys were used."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a table")
        self.data: dict[str, Any] = data
        self.where = where
        self.used: set[str] = set()

    def _get(self, key: str, types: type | tuple[type, ...], default: Any, tname: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise ConfigError(f"{self.at(key)}: must be {tname}, not a boolean")
        if not isinstance(value, types):
            raise ConfigError(f"{self.at(key)}: must be {tname}, not {type(value).__name__}")
        return value

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def str_(self, key: str, default: str | None) -> Any:
        return self._get(key, str, default, "a string")

    def int_(self, key: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value: int = self._get(key, int, default, "an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{self.at(key)}: must be {bound}, got {value}")
        return value

    def float_(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self._get(key, (int, float), default, "a number")
        if value < minimum:
            raise ConfigError(f"{self.at(key)}: must be >= {minimum}, got {value}")
        return float(value)

    def bool_(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, bool, default, "true or false")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self.str_(key, default)
        if value not in choices:
            raise ConfigError(f"{self.at(key)}: must be one of {', '.join(choices)}; got {value!r}")
        return value

    def strs(self, key: str) -> tuple[str, ...] | None:
        value = self._get(key, list, None, "a list of strings")
        if value is None:
            return None
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{self.at(key)}[{i}]: must be a string")
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.at(unknown[0])}: unknown setting")


S = TypeVar("S")


def _read_section(cls: type[S], top: _Section, name: str) -> S:
    """The ``[name]`` table as ``cls``: each field of the dataclass is a setting, read by its type (int, float,
    bool, str, or a Literal of choices) with the default and bounds the field declares; unknown keys refused."""
    section = _Section(top._get(name, dict, {}, "a table"), name)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind, low, high = hints[f.name], f.metadata.get("min", 0), f.metadata.get("max")
        default: Any = f.default  # (every field of a section has a default)
        if typing.get_origin(kind) is Literal:
            values[f.name] = section.choice(f.name, default, typing.get_args(kind))
        elif kind is bool:
            values[f.name] = section.bool_(f.name, default)
        elif kind is int:
            values[f.name] = section.int_(f.name, default, int(low), None if high is None else int(high))
        elif kind is float:
            values[f.name] = section.float_(f.name, default, float(low))
        elif kind is str:
            values[f.name] = section.str_(f.name, default)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no reader for {kind}")
    section.finish()
    return cls(**values)


def _mysql(raw: object, env: Mapping[str, str]) -> MySQLConfig:
    s = _Section(raw, "mysql")
    password = s.str_("password", "")
    password_file = s.str_("password_file", None)
    if password_file:
        password_file = os.path.expandvars(password_file)  # e.g. ${CREDENTIALS_DIRECTORY}/mysql (systemd)
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"mysql.password_file: cannot read {password_file}: {exc.strerror}") from None
    if ENV_MYSQL_PASSWORD in env:
        password = env[ENV_MYSQL_PASSWORD]
    cfg = MySQLConfig(
        host=s.str_("host", "127.0.0.1"),
        port=s.int_("port", 3306, 1, 65535),
        user=s.str_("user", "root"),
        password=password,
        server_id=s.int_("server_id", 4242, 0, 2**32 - 1) or derived_server_id(),
        start=s.choice("start", "current", ("current", "earliest")),
        position_mode=s.choice("position_mode", "auto", ("auto", "gtid", "file")),
        heartbeat_s=s.float_("heartbeat_s", 1.0, 0.1),
        connect_timeout_s=s.float_("connect_timeout_s", 10.0, 0.1),
        ssl_ca=s.str_("ssl_ca", None),
        ssl_cert=s.str_("ssl_cert", None),
        ssl_key=s.str_("ssl_key", None),
        ssl_verify_identity=s.bool_("ssl_verify_identity", True),
    )
    s.finish()
    if not cfg.host:
        raise ConfigError("mysql.host: must not be empty")
    return cfg


def _redis(raw: object, env: Mapping[str, str]) -> RedisConfig:
    s = _Section(raw, "redis")
    url = s.str_("url", "redis://127.0.0.1:6379/0")
    if ENV_REDIS_URL in env:
        url = env[ENV_REDIS_URL]
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"redis.url: scheme must be redis://, rediss:// or unix://; got {redact_url(url)!r}")
    try:
        urlsplit(url).port  # noqa: B018 - parsing it validates it
    except ValueError:
        raise ConfigError(f"redis.url: bad port in {redact_url(url)!r}") from None
    namespace = s.str_("namespace", "cdc")
    if not namespace or any(c in namespace for c in " {}*?[]\\") or ":" in namespace:
        raise ConfigError(f"redis.namespace: {namespace!r} must be non-empty, without ':', spaces, braces or globs")
    cfg = RedisConfig(
        url=url,
        namespace=namespace,
        ssl_ca_certs=s.str_("ssl_ca_certs", None),
        ssl_certfile=s.str_("ssl_certfile", None),
        ssl_keyfile=s.str_("ssl_keyfile", None),
        ssl_verify_identity=s.bool_("ssl_verify_identity", True),
        socket_timeout_s=s.float_("socket_timeout_s", 10.0, 0.1),
    )
    tls_set = [k for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if getattr(cfg, k)]
    if tls_set and scheme != "rediss":
        raise ConfigError(f"redis.{tls_set[0]}: TLS needs a rediss:// url; got {redact_url(url)!r}")
    if cfg.ssl_keyfile and not cfg.ssl_certfile:
        raise ConfigError("redis.ssl_keyfile: set redis.ssl_certfile too (the client certificate)")
    cfg = _sentinel_settings(s, cfg, env, scheme)
    s.finish()
    return cfg


def _sentinel_settings(s: _Section, cfg: RedisConfig, env: Mapping[str, str], scheme: str) -> RedisConfig:
    """The Sentinel and WAIT settings of ``[redis]``."""
    sentinels = tuple(_sentinel_address(s.at(f"sentinels[{i}]"), a) for i, a in enumerate(s.strs("sentinels") or ()))
    master_name = s.str_("master_name", None)
    password = env.get(ENV_SENTINEL_PASSWORD, s.str_("sentinel_password", ""))
    cfg = dataclasses.replace(
        cfg,
        sentinels=sentinels,
        master_name=master_name,
        sentinel_username=s.str_("sentinel_username", None),
        sentinel_password=password,
        sentinel_tls=s.bool_("sentinel_tls", False),
        wait_replicas=s.int_("wait_replicas", 0, 0, 1000),
        wait_timeout_ms=s.int_("wait_timeout_ms", 100, 1, 60_000),
        cluster=s.bool_("cluster", False),
    )
    if cfg.cluster and sentinels:
        raise ConfigError("redis.cluster: a cluster fails over by itself; leave redis.sentinels out")
    if cfg.cluster and scheme == "unix":
        raise ConfigError("redis.url: a cluster needs a redis:// or rediss:// url of one of its nodes")
    if cfg.cluster and cfg.wait_replicas:
        raise ConfigError("redis.wait_replicas: not supported on a cluster yet")
    if sentinels and not master_name:
        raise ConfigError("redis.master_name: required with redis.sentinels (the name the Sentinels monitor)")
    if master_name is not None and not sentinels:
        raise ConfigError('redis.sentinels: required with redis.master_name (e.g. ["10.0.0.1:26379"])')
    if sentinels and scheme == "unix":
        raise ConfigError("redis.url: with Sentinels it must be redis:// or rediss:// (it names no address then)")
    if not sentinels:
        for name in ("sentinel_username", "sentinel_password", "sentinel_tls"):
            if s.data.get(name):
                raise ConfigError(f"redis.{name}: only with redis.sentinels")
    if cfg.sentinel_tls and scheme != "rediss":
        raise ConfigError("redis.sentinel_tls: the master must speak TLS too: use a rediss:// url")
    return cfg


def _sentinel_address(where: str, text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` of one Sentinel."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'{where}: must be "host:port" (e.g. "10.0.0.1:26379"); got {text!r}')
    return host, int(port)


def _rule(raw: object, index: int) -> TableRule:
    s = _Section(raw, f"tables[{index}]")
    name = s.str_("table", None)
    if not name:
        raise ConfigError(f'{s.at("table")}: required ("schema.table")')
    schema, dot, table = name.partition(".")
    if not dot or not schema or not table or "." in table:
        raise ConfigError(f'{s.at("table")}: must be "schema.table"; got {name!r}')
    tags = _tags(s)
    key_src = s.str_("key", None)
    if not key_src and not tags:
        raise ConfigError(f'{s.at("key")}: required (a template such as "user:{{id}}"), unless the table has tags')
    key = KeyTemplate.parse(key_src, s.at("key")) if key_src else None
    also = tuple(KeyTemplate.parse(t, f"{s.at('also')}[{i}]") for i, t in enumerate(s.strs("also") or ()))
    if also and key is None:
        raise ConfigError(f"{s.at('also')}: needs a key")
    mode = s.choice("mode", "evict", ("evict", "update"))
    fmt = s.choice("format", "json", ("json", "hash"))
    columns = s.strs("columns")
    exclude = s.strs("exclude") or ()
    if columns is not None and exclude:
        raise ConfigError(f"{s.at('exclude')}: give either columns or exclude, not both")
    if columns is not None and not columns:
        raise ConfigError(f"{s.at('columns')}: must not be empty")
    for label, names in (("columns", columns or ()), ("exclude", exclude)):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{s.at(label)}: column {dupes[0]!r} listed twice")
    rule = TableRule(
        index=index,
        schema=schema,
        table=table,
        key=key,
        also=also,
        mode=mode,
        format=fmt,
        columns=columns,
        exclude=exclude,
        ttl=s.int_("ttl", 0, 0, 10 * 365 * 86400),
        tags=tags,
        raw=dict(s.data),
    )
    s.finish()
    return rule


def _tags(s: _Section) -> tuple[tuple[str, ...], ...]:
    """``tags = ["user_id", ["shop_id", "sku"]]``: single columns or column sets."""
    raw = s._get("tags", list, [], "a list of column names (or lists of them)")
    out: list[tuple[str, ...]] = []
    for i, item in enumerate(raw):
        where = f"{s.at('tags')}[{i}]"
        cols = (item,) if isinstance(item, str) else item
        if not isinstance(cols, list | tuple) or not cols or not all(isinstance(c, str) and c for c in cols):
            raise ConfigError(f"{where}: must be a column name or a non-empty list of column names")
        if len(set(cols)) != len(cols):
            raise ConfigError(f"{where}: a column is listed twice")
        if any(set(cols) == set(prev) for prev in out):
            raise ConfigError(f"{where}: the same column set is already a tag")
        out.append(tuple(cols))
    return tuple(out)


# Settings that change what a cached value or key looks like; a change of any of them flushes the table.
_SHAPE_SETTINGS = ("table", "key", "also", "mode", "format", "columns", "exclude", "tags")


# How values and keys are rendered from rows, in the fingerprint: a release that renders some value differently
# (2: FLOAT as the server prints it, UUID/INET as text, YEAR 0000 as 0, latin1 as MySQL's) counts as a changed
# rule, so its first start flushes what the older one wrote, and readers of the other release fill nothing.
ENCODING = 2


def rule_fingerprint(rule: TableRule) -> str:
    """The rule's key- and value-shaping settings as canonical JSON (stored in ``<ns>:rules``), and ``ENCODING``."""
    shape: dict[str, Any] = {k: rule.raw[k] for k in _SHAPE_SETTINGS if k in rule.raw}
    shape["encoding"] = ENCODING
    return json.dumps(shape, sort_keys=True, separators=(",", ":"))


def rule_from_fingerprint(text: str) -> TableRule:
    """Rebuild a rule from its fingerprint (to flush the keys of a rule no longer configured)."""
    try:
        shape = json.loads(text)
        if isinstance(shape, dict):
            shape.pop("encoding", None)
        return _rule(shape, -1)
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"stored rule {text[:100]!r} is unreadable: {exc}") from None


def _check_namespace(rules: tuple[TableRule, ...], namespace: str) -> None:
    """No template may render a key in the worker's own namespace (``<ns>:heartbeat``, ``<ns>:lease:...``)."""
    prefix = Namespace(namespace).prefix
    for rule in rules:
        named = [("key", rule.key)] if rule.key is not None else []
        named += [(f"also[{i}]", t) for i, t in enumerate(rule.also)]
        for label, template in named:
            if template is not None and renders_with_prefix(template, prefix):
                raise ConfigError(
                    f"{rule.where(label)}: template {template.source!r} can render keys starting with {prefix!r}, "
                    f"the worker's own namespace (redis.namespace); start it with other text"
                )


def from_dict(raw: Mapping[str, Any], env: Mapping[str, str] | None = None, path: str = "") -> Config:
    """Validate an already-parsed TOML document."""
    env = os.environ if env is None else env
    top = _Section(dict(raw), "")
    mysql = _mysql(top._get("mysql", dict, {}, "a table"), env)
    redis_cfg = _redis(top._get("redis", dict, {}, "a table"), env)
    tables_raw = top._get("tables", list, None, "an array of tables ([[tables]])")
    if not tables_raw:
        raise ConfigError("tables: at least one [[tables]] entry is required")
    rules = tuple(_rule(t, i) for i, t in enumerate(tables_raw))
    _check_namespace(rules, redis_cfg.namespace)
    seen: dict[str, int] = {}
    for rule in rules:
        if rule.name in seen:
            raise ConfigError(f"{rule.where('table')}: {rule.name} is already mapped by tables[{seen[rule.name]}]")
        seen[rule.name] = rule.index
    worker = _read_section(WorkerConfig, top, "worker")
    reader = _read_section(ReaderConfig, top, "reader")
    if reader.ttl_jitter >= 1:
        raise ConfigError(f"reader.ttl_jitter: must be below 1, got {reader.ttl_jitter}")
    if reader.near_cache_size and redis_cfg.cluster:
        raise ConfigError("reader.near_cache_size: not supported on a Redis Cluster yet (set it to 0)")
    log = _read_section(LogConfig, top, "log")
    metrics = _read_section(MetricsConfig, top, "metrics")
    if metrics.listen:
        host, _, port = metrics.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"metrics.listen: must be host:port (or empty to turn it off); got {metrics.listen!r}")
    doctor = _read_section(DoctorConfig, top, "doctor")
    ha = _read_section(HAConfig, top, "ha")
    verify = _read_section(VerifyConfig, top, "verify")
    if verify.sample_rate > 1:
        raise ConfigError(f"verify.sample_rate: a share of the keys, from 0 to 1; got {verify.sample_rate}")
    top.finish()
    return Config(
        mysql=mysql,
        redis=redis_cfg,
        tables=rules,
        worker=worker,
        reader=reader,
        metrics=metrics,
        doctor=doctor,
        ha=ha,
        log=log,
        path=path,
        verify=verify,
    )


def check_against_schema(config: Config, columns_of: Mapping[str, list[str]]) -> None:
    """Check every rule against the live table columns (``columns_of["schema.table"]``).

    Raises ConfigError naming the field: ``tables[1].key: unknown column 'emial' in shop.users``.
    """
    for rule in config.tables:
        cols = columns_of.get(rule.name)
        if cols is None:
            raise ConfigError(f"{rule.where('table')}: table {rule.name} does not exist")
        known = set(cols)
        checks: list[tuple[str, tuple[str, ...]]] = [("key", rule.key.fields)] if rule.key is not None else []
        checks += [(f"also[{i}]", t.fields) for i, t in enumerate(rule.also)]
        checks += [(f"tags[{i}]", cols) for i, cols in enumerate(rule.tags)]
        checks += [("columns", rule.columns or ()), ("exclude", rule.exclude)]
        for label, names in checks:
            for name in names:
                if name not in known:
                    raise ConfigError(f"{rule.where(label)}: unknown column {name!r} in {rule.name}")
