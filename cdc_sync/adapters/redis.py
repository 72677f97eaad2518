"""Redis side: the atomic apply step (Lua), checkpoint, heartbeat and wholesale flushes.

The only module besides the reader that imports redis. Every redis-py error is translated here
(``redis_error``) into SinkUnavailable (retryable), or ServerRefused when retrying cannot help (wrong password,
an ACL that denies a command); the apply step's replies become RewindRequired or Fenced.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import redis
from redis.commands.core import Script

from cdc_sync.config import RedisConfig, TableRule
from cdc_sync.core.events import RedisMemory
from cdc_sync.core.keys import glob_escape
from cdc_sync.core.planner import Count, Delete, EvictTag, RedisOp, SetHash, SetJson
from cdc_sync.errors import TLS_UNTRUSTED, Fenced, OperatorLockLost, RewindRequired, ServerRefused, SinkUnavailable

# KEYS: none (the keys are data-dependent; a Redis Cluster deployment needs hash-tagged templates).
# ARGV: namespace, expected checkpoint, has_expected (0/1), new checkpoint, holdoff ms, leader token ('' = HA off),
#       then the operations:  D key | J key value ttl_ms | H key ttl_ms nfields f1 v1 ... | T tag-suffix
# Reply: {'OK'} | {'DUP'} (this very step was applied already) | {'REWIND', stored} | {'LOST'} | {'FENCED'}
APPLY_LUA = r"""
local ns, expected, has_expected, new = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local holdoff, token = tonumber(ARGV[5]), ARGV[6]
if token ~= '' and redis.call('GET', ns .. ':leader') ~= token then return {'FENCED'} end
local ck = ns .. ':checkpoint'
local cur = redis.call('GET', ck)
if has_expected then
  if cur ~= expected then
    if cur == new then return {'DUP'} end
    if cur then return {'REWIND', cur} end
    return {'LOST'}
  end
elseif cur then
  if cur == new then return {'DUP'} end
  return {'REWIND', cur}
end
local i, n = 7, #ARGV
while i <= n do
  local op, k = ARGV[i], ARGV[i + 1]
  local lease = ns .. ':lease:' .. k
  if op == 'D' then
    redis.call('DEL', k, lease)
    if holdoff > 0 then redis.call('SET', ns .. ':inv:' .. k, '1', 'PX', holdoff) end
    i = i + 2
  elseif op == 'J' then
    local ttl = tonumber(ARGV[i + 3])
    if ttl > 0 then redis.call('SET', k, ARGV[i + 2], 'PX', ttl) else redis.call('SET', k, ARGV[i + 2]) end
    redis.call('DEL', lease)
    i = i + 4
  elseif op == 'H' then
    local ttl, nf = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    redis.call('DEL', k, lease)
    local j = i + 4
    local last = i + 3 + nf * 2
    while j <= last do
      local stop = math.min(j + 999, last)
      redis.call('HSET', k, unpack(ARGV, j, stop))
      j = stop + 1
    end
    if ttl > 0 then redis.call('PEXPIRE', k, ttl) end
    i = last + 1
  elseif op == 'C' then
    redis.call('HINCRBY', ns .. ':stats', k, ARGV[i + 2])
    i = i + 3
  elseif op == 'T' then
    local tag = ns .. ':tag:' .. k
    for _, member in ipairs(redis.call('SMEMBERS', tag)) do
      redis.call('DEL', member, ns .. ':lease:' .. member)
      if holdoff > 0 then redis.call('SET', ns .. ':inv:' .. member, '1', 'PX', holdoff) end
    end
    redis.call('DEL', tag)
    if holdoff > 0 then redis.call('SET', ns .. ':tinv:' .. k, '1', 'PX', holdoff) end
    i = i + 2
  else
    return redis.error_reply('cdc-sync: unknown op ' .. tostring(op))
  end
end
redis.call('SET', ck, new)
return {'OK'}
"""

# KEYS: checkpoint, heartbeat, leader. ARGV: expected checkpoint, time (ms), leader token ('' = HA off).
# Only moves forward, and only while the checkpoint (and lease) is still this worker's.
HEARTBEAT_LUA = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""

# ARGV: namespace, holdoff ms, leader token, operator token ('' = none), then T ops. Evicts the members of each tag
# (for a flush); returns how many, or -1 / -2 when fenced like a flush step.
EVICT_TAGS_LUA = r"""
local ns, holdoff, n = ARGV[1], tonumber(ARGV[2]), 0
if ARGV[3] ~= '' and redis.call('GET', ns .. ':leader') ~= ARGV[3] then return -1 end
if ARGV[4] ~= '' and redis.call('GET', ns .. ':operator') ~= ARGV[4] then return -2 end
for i = 6, #ARGV, 2 do
  local tag = ns .. ':tag:' .. ARGV[i]
  for _, member in ipairs(redis.call('SMEMBERS', tag)) do
    redis.call('DEL', member, ns .. ':lease:' .. member)
    if holdoff > 0 then redis.call('SET', ns .. ':inv:' .. member, '1', 'PX', holdoff) end
    n = n + 1
  end
  redis.call('DEL', tag)
  if holdoff > 0 then redis.call('SET', ns .. ':tinv:' .. ARGV[i], '1', 'PX', holdoff) end
end
return n
"""

# One step of a wholesale flush, refused when HA is on and the lease is not ours (-1), or when run by an operator
# command whose lock ``<ns>:operator`` no longer holds its token (-2: it was paused past the lock's TTL, and the
# next command may hold the same markers).
# ARGV: namespace, leader token ('' = HA off), op, ms, operator token ('' = the worker). KEYS: the keys. Ops on
# flushing markers:
#   hold     mark until released (operator commands: an interrupted one leaves the tables bypassed, never stale)
#   mark     mark for ms (the worker: a crashed flush is redone by the replay); never shortens a held mark
#   unmark   end the worker's mark (a held one stays), leaving it as a hold-off marker for ms (0: delete it)
#   release  end any mark the same way
#   unlink   UNLINK the keys
# The hold-off after a flush: the flush evicted keys whose newest commit a reader's SELECT may not see yet (the
# binlog event can arrive before the commit is visible), so readers do not fill for that long.
# hold and mark also bump each table's schema epoch <ns>:schema:<table> (lookup.py): a flush may stand for a DDL
# (or a jump past one), so readers' column info read before it no longer fills. Each bump goes to Redis's clock in
# microseconds, or one past the epoch if that is later: an emptied namespace, or one restored from an older
# snapshot, never repeats an epoch a reader may have seen before.
FLUSH_STEP_LUA = r"""
if ARGV[2] ~= '' and redis.call('GET', ARGV[1] .. ':leader') ~= ARGV[2] then return -1 end
if ARGV[5] ~= '' and redis.call('GET', ARGV[1] .. ':operator') ~= ARGV[5] then return -2 end
local op, ms = ARGV[3], tonumber(ARGV[4])
if op == 'unlink' then return redis.call('UNLINK', unpack(KEYS)) end
local prefix = ARGV[1] .. ':flushing:'
for _, k in ipairs(KEYS) do
  if (op == 'hold' or op == 'mark') and string.sub(k, 1, #prefix) == prefix then
    local epoch = ARGV[1] .. ':schema:' .. string.sub(k, #prefix + 1)
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local next = (tonumber(redis.call('GET', epoch) or '0') or 0) + 1
    if next < now then next = now end
    redis.call('SET', epoch, string.format('%.0f', next))
  end
  local held = redis.call('PTTL', k) == -1
  if op == 'hold' then
    redis.call('SET', k, '1')
  elseif op == 'mark' then
    if not held then redis.call('SET', k, '1', 'PX', ms) end
  elseif op == 'release' or (op == 'unmark' and not held) then
    if ms > 0 then redis.call('SET', k, '1', 'PX', ms) else redis.call('DEL', k) end
  end
end
return #KEYS
"""

# KEYS: the lock. ARGV: token, ms. Extends the lock while it is ours (1), or releases it (ms = 0).
OPERATOR_LOCK_LUA = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""

# KEYS: checkpoint, heartbeat, operator lock. ARGV: position, operator token ('' = none). Replaces the checkpoint
# and drops the heartbeat (1), refused (0) when the operator lock no longer holds the token.
SET_CHECKPOINT_LUA = r"""
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

FLUSH_MARKER_TTL_MS = 600_000  # a crashed flush leaves the marker at most this long (replay redoes it)


def client_kwargs(cfg: RedisConfig) -> dict[str, Any]:
    """Connection settings shared by every Redis client (timeouts; TLS with rediss:// and ssl_ca_certs)."""
    kwargs: dict[str, Any] = {"socket_timeout": cfg.socket_timeout_s, "socket_connect_timeout": cfg.socket_timeout_s}
    if cfg.url.startswith("rediss:"):
        kwargs["ssl_check_hostname"] = cfg.ssl_verify_identity
        if cfg.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = cfg.ssl_ca_certs
        if cfg.ssl_certfile:
            kwargs.update(ssl_certfile=cfg.ssl_certfile, ssl_keyfile=cfg.ssl_keyfile)
    return kwargs


def make_client(cfg: RedisConfig) -> redis.Redis:
    """A redis-py client for ``cfg``."""
    return redis.Redis.from_url(cfg.url, **client_kwargs(cfg))


_REDIS_AUTH_FIX = (
    "check the user and password in redis.url (or $CDC_SYNC_REDIS_URL) against the server's ACL/requirepass"
)
_REDIS_TLS_FIX = (
    "set redis.ssl_ca_certs to the CA that signed the server's certificate, and a host in redis.url that the "
    "certificate holds (or redis.ssl_verify_identity = false to skip that check)"
)
_SCRIPT_ACL = re.compile(r"The user executing the script can't (?:access|run)|\bNOPERM\b")
_CONNECT_FAILED = re.compile(r"^Error (-?\d+) connecting to (.+?)\. (.+?)\.?$", re.S)


def redis_error(exc: BaseException, what: str) -> SinkUnavailable | ServerRefused:
    """Translate a redis-py error, once, for every Redis client of the worker and the CLI.

    A wrong password or missing password (WRONGPASS, NOAUTH) and a command or key the ACL denies (NOPERM, or
    inside a script "The user executing the script can't access ...") cannot heal by retrying: ServerRefused
    (exit 2). Everything else (refused connection, timeout, loading, read-only replica after a failover, out of
    memory) is SinkUnavailable, which the worker retries.
    """
    text = plain_redis_error(exc)
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return ServerRefused(f"redis {what}: Redis refused the login: {text}", _REDIS_AUTH_FIX, "redis_auth")
    if isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.ResponseError) and _SCRIPT_ACL.search(text)
    ):  # (inside a script, a refused key or command is a plain error with its own wording)
        fix = (
            "allow the command and the keys for the Redis user (run cdc-sync doctor: redis.acl lists every "
            "command and key pattern needed)"
        )
        return ServerRefused(f"redis {what}: the Redis ACL denies a command or key: {text}", fix, "redis_acl")
    if TLS_UNTRUSTED.search(text):
        why = "the Redis server's TLS certificate is not trusted"
        return ServerRefused(f"redis {what}: {why}: {text}", _REDIS_TLS_FIX, "redis_tls")
    return SinkUnavailable(f"redis {what}: {text}")


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Inside: any redis-py error leaves as the project's (``redis_error``), its cause kept (httpx's
    ``map_httpcore_exceptions`` shape). The one translation every Redis caller of the worker and the CLI uses."""
    try:
        yield
    except redis.RedisError as exc:
        raise redis_error(exc, what) from exc


def plain_redis_error(exc: BaseException) -> str:
    """A redis-py error as a plain sentence: ``cannot connect to 127.0.0.1:6379: connection refused``."""
    text = str(exc).strip()
    match = _CONNECT_FAILED.match(text)
    if match:
        reason = match.group(3)
        return f"cannot connect to {match.group(2)}: {reason[:1].lower()}{reason[1:]}"
    if isinstance(exc, redis.TimeoutError):
        return f"no answer in time ({text.lower() or 'timeout'})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return text.rstrip(".") or type(exc).__name__


def encode_ops(ops: Iterable[RedisOp]) -> list[bytes | str | int]:
    """Flatten planner operations into the script's ARGV tail."""
    out: list[bytes | str | int] = []
    for op in ops:
        if isinstance(op, Delete):
            out += ("D", op.key)
        elif isinstance(op, SetJson):
            out += ("J", op.key, op.value, op.ttl_ms)
        elif isinstance(op, SetHash):
            out += ("H", op.key, op.ttl_ms, len(op.fields) // 2, *op.fields)
        elif isinstance(op, Count):
            out += ("C", op.name, op.n)
        else:
            out += ("T", op.suffix)
    return out


class RedisSink:
    """Applies planned operations atomically and keeps the checkpoint."""

    def __init__(self, cfg: RedisConfig, holdoff_ms: int, client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self.ns = cfg.namespace
        self.holdoff_ms = holdoff_ms
        self.leader_token: str | None = None  # HA: every apply checks that this token still holds <ns>:leader
        # an operator command: every flush and checkpoint step checks that this token still holds <ns>:operator
        self.operator_token: str | None = None
        self.client = client if client is not None else make_client(cfg)
        # step name -> (monotonic time of its first failure, why) while it keeps failing (statusreport.py)
        self.failing: dict[str, tuple[float, str]] = {}
        self.on_status: Callable[[Mapping[str, str | int | float]], None] | None = None  # see report_status
        self._apply: Script = self.client.register_script(APPLY_LUA)
        self._beat: Script = self.client.register_script(HEARTBEAT_LUA)
        self._evict: Script = self.client.register_script(EVICT_TAGS_LUA)
        self._flush_step: Script = self.client.register_script(FLUSH_STEP_LUA)
        self._operator: Script = self.client.register_script(OPERATOR_LOCK_LUA)
        self._set_checkpoint: Script = self.client.register_script(SET_CHECKPOINT_LUA)

    @property
    def checkpoint_key(self) -> str:
        return f"{self.ns}:checkpoint"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except redis.RedisError as exc:
            error = redis_error(exc, what)
            self.failing.setdefault(what, (time.monotonic(), str(error)))
            raise error from exc
        if self.failing:
            self.failing.pop(what, None)
        return result

    def load_checkpoint(self) -> str | None:
        value = self._call("GET checkpoint", self.client.get, self.checkpoint_key)
        return value.decode() if value is not None else None

    def set_checkpoint(self, position: str) -> None:
        """Replace the checkpoint, and drop the heartbeat in the same step: what the cache holds is vouched
        for again only once the worker has caught up from the new position. Refused (OperatorLockLost) once
        ``operator_token`` no longer holds the operator lock."""
        keys = [self.checkpoint_key, f"{self.ns}:heartbeat", f"{self.ns}:operator"]
        args = [position, self.operator_token or ""]
        if not self._call("SET checkpoint", self._set_checkpoint, keys=keys, args=args):
            raise self._lock_lost("checkpoint set")

    def apply(self, ops: Sequence[RedisOp], expected: str | None, new: str) -> bool:
        """One atomic step: check ``expected``, apply ``ops``, set the checkpoint to ``new``.

        Returns False when Redis already holds ``new`` (a step whose reply was lost). Raises
        RewindRequired when Redis holds another checkpoint (stored=None: it holds none at all).
        """
        args: list[bytes | str | int] = [
            self.ns,
            expected or "",
            "1" if expected is not None else "0",
            new,
            self.holdoff_ms,
            self.leader_token or "",
        ]
        args += encode_ops(ops)
        reply = self._call("apply", self._apply, keys=[], args=args)
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status == "OK":
            return True
        if status == "DUP":
            return False
        if status == "REWIND":
            raise RewindRequired(reply[1].decode())
        if status == "FENCED":
            raise Fenced("another worker holds the leader lease")
        raise RewindRequired(None)

    def time_ms(self) -> int:
        """Redis server time in milliseconds (the clock readers compare the heartbeat with)."""
        seconds, micros = self._call("TIME", self.client.time)
        return int(seconds) * 1000 + int(micros) // 1000

    def set_heartbeat(self, ms: int, expected: str) -> bool:
        """Move ``<ns>:heartbeat`` forward to ``ms`` if the checkpoint is still ``expected``."""
        keys = [self.checkpoint_key, f"{self.ns}:heartbeat", f"{self.ns}:leader"]
        return bool(self._call("heartbeat", self._beat, keys=keys, args=[expected, ms, self.leader_token or ""]))

    def server_identity(self) -> str | None:
        """Which MySQL server the checkpoint was read from (``<ns>:server``)."""
        value = self._call("GET server", self.client.get, f"{self.ns}:server")
        return value.decode() if value is not None else None

    def save_server_identity(self, identity: str) -> None:
        self._call("SET server", self.client.set, f"{self.ns}:server", identity)

    def memory(self) -> RedisMemory:
        """Redis's count of keys evicted under maxmemory since it started, with its eviction policy and limit
        (``INFO stats memory``: CONFIG may be disabled on managed Redis). Any eviction may have taken a tag set or
        a marker an invalidation depends on (sync.py ``evictions_settled``)."""
        return RedisMemory.from_info(self._call("INFO stats memory", self.client.info, "stats", "memory"))

    def recorded_evictions(self) -> int | None:
        """The eviction count the cache was last made whole at (``<ns>:evictions``), None when never recorded."""
        value = self._call("GET evictions", self.client.get, f"{self.ns}:evictions")
        return int(value) if value is not None else None

    def record_evictions(self, count: int) -> None:
        self._call("SET evictions", self.client.set, f"{self.ns}:evictions", str(count))

    def report_status(self, fields: Mapping[str, str | int | float]) -> None:
        """Record the worker's state for ``cdc-sync status``: handed to ``on_status`` (app.py attaches the
        StatusReporter, which keeps the record in ``<ns>:workers``, refreshed every second)."""
        if self.on_status is not None:
            self.on_status(fields)

    def rule_fingerprints(self) -> dict[str, str]:
        """What ``<ns>:rules`` records of the rules the cache was last filled under (table → JSON)."""
        raw = self._call("HGETALL rules", self.client.hgetall, f"{self.ns}:rules")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def save_rule_fingerprints(self, fingerprints: Mapping[str, str]) -> None:
        """Replace ``<ns>:rules`` with ``fingerprints`` in one step."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(f"{self.ns}:rules")
        if fingerprints:
            mapping: dict[str | bytes, str | bytes] = {k: v for k, v in fingerprints.items()}
            pipe.hset(f"{self.ns}:rules", mapping=mapping)  # type: ignore[arg-type]
        self._call("save rules", pipe.execute)

    def _scan(self, pattern: str) -> Iterator[list[bytes]]:
        """SCAN in pages; each page's keys as a list (errors translated)."""
        cursor = 0
        while True:
            cursor, keys = self._call("SCAN", self.client.scan, cursor, match=pattern, count=1000)
            if keys:
                yield list(keys)
            if cursor == 0:
                return

    def count_keys(self, rules: Sequence[TableRule], limit: int = 1) -> int:
        """How many keys the rules' patterns match, and reader tag sets of their tables (whose members are
        reader-filled keys, of tag-only rules too); stops once ``limit`` is reached."""
        found = 0
        for rule in rules:
            table_tag = f"{self.ns}:tag:{glob_escape(rule.name)}"
            for pattern in (*(t.pattern() for t in rule.templates), table_tag, f"{table_tag}:*"):
                for page in self._scan(pattern):
                    found += len(page)
                    if found >= limit:
                        return found
        return found

    def take_operator_lock(self, token: str, ttl_ms: int) -> str | None:
        """``<ns>:operator``: one operator command at a time moves checkpoints or holds tables. Returns None when
        taken, else who holds it."""
        key = f"{self.ns}:operator"
        if self._call("SET operator", self.client.set, key, token, nx=True, px=ttl_ms):
            return None
        holder = self._call("GET operator", self.client.get, key)
        return holder.decode(errors="replace") if holder is not None else "(just released)"

    def keep_operator_lock(self, token: str, ttl_ms: int) -> bool:
        """Extend the lock while it is ours (``ttl_ms`` 0: release it)."""
        key = f"{self.ns}:operator"
        return bool(self._call("operator lock", self._operator, keys=[key], args=[token, ttl_ms]))

    def release_flushing(self, rules: Sequence[TableRule]) -> None:
        """End held marks without flushing, leaving each as a hold-off marker for ``holdoff_ms``."""
        if rules:
            self._step("release", [f"{self.ns}:flushing:{r.name}" for r in rules], self.holdoff_ms)

    def held_tables(self, rules: Sequence[TableRule]) -> list[TableRule]:
        """The tables whose flushing marker is held (no expiry) while no operator command runs: a held marker
        nobody will release (a worker died holding it)."""
        if self._call("GET operator", self.client.get, f"{self.ns}:operator") is not None:
            return []
        pipe = self.client.pipeline(transaction=False)
        for rule in rules:
            pipe.pttl(f"{self.ns}:flushing:{rule.name}")
        ttls = self._call("PTTL flushing", pipe.execute)
        return [rule for rule, ttl in zip(rules, ttls, strict=True) if ttl == -1]

    def mark_flushing(self, rules: Sequence[TableRule]) -> None:
        """Mark the tables as being flushed, as ``flush`` does (expiring after FLUSH_MARKER_TTL_MS), before a
        flush of several tables starts: none of them waits unmarked while the others are flushed."""
        if rules:
            self._step("mark", [f"{self.ns}:flushing:{r.name}" for r in rules], FLUSH_MARKER_TTL_MS)

    def hold_flushing(self, rules: Sequence[TableRule]) -> None:
        """Mark the tables as being flushed (readers bypass them, fills are refused) until ``flush(rule,
        held=True)`` releases each: no expiry, so an interrupted operator command leaves them bypassed."""
        if rules:
            self._step("hold", [f"{self.ns}:flushing:{r.name}" for r in rules])

    def flush(self, rule: TableRule, held: bool = False) -> int:
        """Invalidate every key of ``rule``'s table, and every lease on one; returns the keys deleted.

        Readers bypass the cache while ``<ns>:flushing:<schema.table>`` exists, and for ``holdoff_ms`` after;
        deleting the leases makes any fill that loaded the table before the flush fail. The worker's marker
        expires after FLUSH_MARKER_TTL_MS (a crash mid-flush is redone by the replay); ``held``: the marker was
        set by ``hold_flushing`` and this flush releases it.
        """
        marker = f"{self.ns}:flushing:{rule.name}"
        self._step("mark", [marker], FLUSH_MARKER_TTL_MS)
        deleted = 0
        # Leases first: a fill that loaded before the flush must find its lease gone, whichever key it is.
        for template in rule.templates:
            for page in self._scan(f"{self.ns}:lease:{template.pattern()}"):
                self._step("unlink", page)
        for template in rule.templates:
            for page in self._scan(template.pattern()):
                # the glob is broader than the template (a field's * also matches ':'): keep only its own keys
                mine = [k for k in page if template.matches(k.decode(errors="replace"))]
                if mine:
                    deleted += self._step("unlink", mine)
        # Keys that depend on the table through reader tags: the whole-table tag and every column tag.
        table_tag = f"{self.ns}:tag:{glob_escape(rule.name)}"
        tag_suffixes = [rule.name]
        for page in self._scan(f"{table_tag}:*"):
            tag_suffixes.extend(k.decode()[len(self.ns) + 5 :] for k in page)
        for start in range(0, len(tag_suffixes), 500):
            chunk = [EvictTag(s) for s in tag_suffixes[start : start + 500]]
            args = [self.ns, self.holdoff_ms, self.leader_token or "", self.operator_token or "", *encode_ops(chunk)]
            deleted += self._fenced("evict tags", int(self._call("evict tags", self._evict, keys=[], args=args)))
        self._step("release" if held else "unmark", [marker], self.holdoff_ms)
        return deleted

    def _step(self, op: str, keys: Sequence[bytes | str], ms: int = 0) -> int:
        """One fenced step of a flush (HA: refused once the lease is someone else's; an operator command: once
        its lock is)."""
        args = [self.ns, self.leader_token or "", op, ms, self.operator_token or ""]
        return self._fenced(f"flush {op}", int(self._call(f"flush {op}", self._flush_step, keys=list(keys), args=args)))

    def _fenced(self, what: str, result: int) -> int:
        """A flush script's reply: -1 (the leader lease is another's) and -2 (the operator lock is) are refusals."""
        if result == -1:
            raise Fenced("another worker holds the leader lease")
        if result == -2:
            raise self._lock_lost(what)
        return result

    def _lock_lost(self, what: str) -> OperatorLockLost:
        """The refusal of a step whose operator command no longer holds ``<ns>:operator``."""
        holder = self._call("GET operator", self.client.get, f"{self.ns}:operator")
        now = f"held by {holder.decode(errors='replace')}" if holder is not None else "free"
        return OperatorLockLost(
            f"{self.ns}:operator no longer holds this command's lock ({self.operator_token}): its {what} step was "
            f"refused and it stopped (it was paused longer than the lock lasts; the lock is now {now}). Tables it "
            "held as flushing stay bypassed, never stale, until a flush releases them: run the command again"
        )

    def close(self) -> None:
        self.client.close()
