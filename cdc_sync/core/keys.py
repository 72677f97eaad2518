"""Key templates: parsing, rendering, escaping and SCAN patterns.

A template such as ``item:{shop_id}:{sku}`` is literal text with ``{column}`` fields (``{{`` and ``}}``
stand for literal braces). The worker and the reader render keys with the same functions, so any app
that follows these rules can build the same keys.

Value encoding (``escape``), chosen so that two different rows can never render the same key:

* ``%``, ``:``, ``{``, ``}``, control characters (U+0000-U+001F, U+007F) and space are written as
  ``%XX``, the upper-case hex of their UTF-8 byte; every other character is kept as it is.
* ``bytes`` values: every byte outside printable ASCII, and the characters above, as ``%XX``.
* integers in decimal; ``bool`` as ``0``/``1``; ``Decimal`` with ``str()``; date and time values in ISO 8601
  (``2024-01-02T03:04:05``), TIME as ``[-]HH:MM:SS[.ffffff]``, then escaped like text (``:`` becomes ``%3A``).
* ``NULL``: a template with a NULL field renders no key at all (a NULL is not a lookup value and many
  rows may share it).

Because ``:`` is always escaped inside values, a template must have ``:`` in the literal text between
any two fields; then the rendered key splits back into its values unambiguously. Since no field renders
``:``, whether a template can render a key among the worker's own (``<ns>:heartbeat``, ``<ns>:lease:...``)
is decidable exactly (``renders_with_prefix``); config refuses such templates.

Dependency tags (``tag_suffix``) render values the same way, except that text loses its trailing spaces
(PAD SPACE collations compare ``'a '`` equal to ``'a'``). Keys keep them: a key names one stored value.
Keys and tag values are rendered from the database's values (the binlog, a loaded row) or from caller values
proven canonical (canonical.py), never from a caller's spelling as such.
"""

from __future__ import annotations

import binascii
import datetime as dt
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from cdc_sync.core.codec import time_text
from cdc_sync.errors import ConfigError

_FIELD_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*\Z")
_ESCAPED_CHARS = frozenset("%:{} ") | {chr(c) for c in range(0x20)} | {"\x7f"}
_ESCAPE_TABLE = {ord(c): f"%{ord(c):02X}" for c in _ESCAPED_CHARS}
_SAFE_BYTES = frozenset(range(0x21, 0x7F)) - {ord(c) for c in "%:{}"}
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
# One rendered value: characters escape() keeps, or %XX escapes; never ':', '{', '}', '%', space, control chars.
_PERCENT = re.compile(r"%([0-9A-F]{2})")
_VALUE_RE = r"(?:[^:{}% \x00-\x1f\x7f]|%[0-9A-F]{2})*"  # (the empty text too: a field renders it)


def escape(value: object) -> str:
    """Render one non-NULL column value for use inside a key (see the module docstring)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.translate(_ESCAPE_TABLE)
    if isinstance(value, bytes | bytearray | memoryview):
        return "".join(chr(b) if b in _SAFE_BYTES else f"%{b:02X}" for b in bytes(value))
    if isinstance(value, Decimal | float):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat().translate(_ESCAPE_TABLE)
    if isinstance(value, dt.timedelta):  # MySQL TIME, rendered as the values are
        return time_text(value).translate(_ESCAPE_TABLE)
    if isinstance(value, set | frozenset):  # MySQL SET: members sorted (a set's own order varies by process)
        return ",".join(sorted(str(v) for v in value)).translate(_ESCAPE_TABLE)
    return str(value).translate(_ESCAPE_TABLE)


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """A parsed key template: literal parts interleaved with field names."""

    source: str
    literals: tuple[str, ...]  # len(fields) + 1 parts
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, source: str, where: str) -> KeyTemplate:
        """Parse ``source``; ``where`` names the config field in error messages."""
        literals: list[str] = []
        fields: list[str] = []
        buf: list[str] = []
        i = 0
        while i < len(source):
            ch = source[i]
            if ch in "{}" and source[i : i + 2] in ("{{", "}}"):
                buf.append(ch)
                i += 2
                continue
            if ch == "}":
                raise ConfigError(f"{where}: unmatched '}}' in template {source!r}")
            if ch == "{":
                end = source.find("}", i)
                if end < 0:
                    raise ConfigError(f"{where}: unclosed '{{' in template {source!r}")
                name = source[i + 1 : end]
                if not _FIELD_NAME.match(name):
                    raise ConfigError(f"{where}: bad column name {name!r} in template {source!r}")
                literals.append("".join(buf))
                buf = []
                fields.append(name)
                i = end + 1
                continue
            buf.append(ch)
            i += 1
        literals.append("".join(buf))
        if not fields:
            raise ConfigError(f"{where}: template {source!r} has no {{column}} field")
        for between in literals[1:-1]:
            if ":" not in between:
                raise ConfigError(f"{where}: fields in template {source!r} must be separated by text containing ':'")
        return cls(source, tuple(literals), tuple(fields))

    def render(self, row: Mapping[str, object]) -> str | None:
        """Render the key for ``row``, or None when a field is NULL. Raises KeyError for a missing column."""
        if len(self.fields) == 1:  # the common case, on the worker's hot path
            value = row[self.fields[0]]
            if value is None:
                return None
            text = str(value) if type(value) is int else escape(value)
            return f"{self.literals[0]}{text}{self.literals[1]}"
        parts = [self.literals[0]]
        for name, literal in zip(self.fields, self.literals[1:], strict=True):
            value = row[name]
            if value is None:
                return None
            parts.append(escape(value))
            parts.append(literal)
        return "".join(parts)

    def matches(self, key: str) -> bool:
        """True when ``key`` is one this template can render (exact: SCAN patterns are broader)."""
        return self._regex().fullmatch(key) is not None

    def parse_key(self, key: str) -> dict[str, str] | None:
        """The field values a rendered key holds, unescaped (``%XX`` back to its character), or None.

        A bytes value comes back as text whose characters are its bytes (``.encode("latin-1")`` restores it).
        """
        m = self._regex(groups=True).fullmatch(key)
        if m is None:
            return None
        return {
            name: _PERCENT.sub(lambda e: chr(int(e.group(1), 16)), raw)
            for name, raw in zip(self.fields, m.groups(), strict=True)
        }

    def _regex(self, groups: bool = False) -> re.Pattern[str]:
        value = f"({_VALUE_RE})" if groups else _VALUE_RE
        parts = [re.escape(self.literals[0])]
        for literal in self.literals[1:]:
            parts.append(value)
            parts.append(re.escape(literal))
        return re.compile("".join(parts), re.S)

    def pattern(self) -> str:
        """A Redis SCAN/KEYS glob that matches every key this template can render (and few others)."""
        parts = [glob_escape(self.literals[0])]
        for literal in self.literals[1:]:
            parts.append("*")
            parts.append(glob_escape(literal))
        return "".join(parts)


def glob_escape(text: str) -> str:
    """Escape Redis glob specials so that ``text`` matches only itself in SCAN MATCH."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def tag_suffix(table: str, columns: Sequence[str] = (), row: Mapping[str, object] | None = None) -> str:
    """The name of a dependency tag, below ``<ns>:tag:``: ``schema.table`` or ``schema.table:col=val:...``.

    Values are escaped like key values (so ``:`` cannot appear inside one); NULL renders as ``%N``, which no
    escaped value can produce. Text values lose their trailing spaces first: under PAD SPACE collations (the
    default) ``'a '`` and ``'a'`` are the same value, so they must name the same tag. The worker renders tags
    from stored values and readers from canonical caller values (canonical.py) with this one function; where a
    collation is NO PAD the tag is merely coarser (both spellings evict each other's dependents), never wrong.
    """
    if not columns:
        return table
    assert row is not None
    parts = [table]
    for col in columns:
        value = row[col]
        if value is None:
            parts.append(f"{col}=%N")
        else:
            parts.append(f"{col}={escape(value.rstrip(' ') if isinstance(value, str) else value)}")
    return ":".join(parts)


def templates_overlap(a: KeyTemplate, b: KeyTemplate) -> bool:
    """True when some key could be rendered by both templates (two rules would then share keys).

    Fields never contain ':' (it is always escaped), so a field may stand for any text without ':'; the
    two patterns are intersected on that basis (conservative: it may report an overlap that would need an
    empty field value).
    """
    if "".join(a.literals).count(":") != "".join(b.literals).count(":"):
        return False
    p, q = _glob_tokens(a), _glob_tokens(b)

    @functools.cache
    def meet(i: int, j: int) -> bool:
        if i == len(p) and j == len(q):
            return True
        if i < len(p) and p[i] is None:  # p's field ends here, or takes one more character of q
            return meet(i + 1, j) or (j < len(q) and q[j] != ":" and meet(i, j + 1))
        if j < len(q) and q[j] is None:
            return meet(i, j + 1) or (i < len(p) and p[i] != ":" and meet(i + 1, j))
        if i < len(p) and j < len(q):
            return p[i] == q[j] and meet(i + 1, j + 1)
        return False

    return meet(0, 0)


def renders_with_prefix(template: KeyTemplate, prefix: str) -> bool:
    """True when some row renders a key that starts with ``prefix`` (e.g. the worker's namespace, ``cdc:``).

    Exact for the rendering rules: a field renders any text without ``:`` (the empty text included), literals
    render themselves. The template's tokens are matched against the prefix; once the prefix is used up,
    whatever follows can be rendered.
    """
    tokens = _glob_tokens(template)

    @functools.cache
    def meet(i: int, j: int) -> bool:
        if j == len(prefix):
            return True
        if i == len(tokens):
            return False
        token = tokens[i]
        if token is None:  # the field ends here, or renders one more character of the prefix
            return meet(i + 1, j) or (prefix[j] != ":" and meet(i, j + 1))
        return token == prefix[j] and meet(i + 1, j + 1)

    return meet(0, 0)


def _glob_tokens(t: KeyTemplate) -> tuple[str | None, ...]:
    """Literal characters, with None for each field."""
    out: list[str | None] = list(t.literals[0])
    for literal in t.literals[1:]:
        out.append(None)
        out.extend(literal)
    return tuple(out)


SLOTS = 16384  # Redis Cluster's hash slots


def key_slot(key: str | bytes) -> int:
    """Redis Cluster's slot of ``key``: CRC16 (XMODEM) of its hash tag (the text between the first ``{`` and the
    next ``}``, when not empty), else of the whole key, modulo 16384."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the shortest hex text (the first found, counting up) whose slot it is."""
    tags: list[str | None] = [None] * SLOTS
    left, n = SLOTS, 0
    while left:
        text = format(n, "x")
        slot = binascii.crc_hqx(text.encode(), 0) % SLOTS
        if tags[slot] is None:
            tags[slot] = text
            left -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def slot_tag(slot: int) -> str:
    """A short hash tag that maps to ``slot``: ``{<tag>}`` in a key puts the key in that slot."""
    return _slot_tags()[slot]


@dataclass(frozen=True, slots=True)
class Namespace:
    """Every bookkeeping key of one namespace (``cdc`` by default): the one place their layout is written.

    On one Redis the worker's own keys are ``<ns>:<kind>`` (checkpoint, heartbeat, leader, ...), per table
    ``<ns>:<kind>:<schema.table>`` (flushing markers, schema epochs, warm progress), per dependency tag
    ``<ns>:tag:<suffix>`` and ``<ns>:tinv:<suffix>``, and per cached key ``<ns>:<kind>:<key>`` (its lease, hold-off
    marker and stamp). Scripts that find keys at run time (a tag set's members) get the per-key prefixes
    (``lease_prefix``, ``inv_prefix``) as arguments rather than spelling them.

    On a Redis Cluster (``cluster=True``) every key a script touches must sit in one slot. The worker's own keys and
    the per-table ones share the namespace's home slot (``<ns>:{<ns>}:<kind>``); a cached key's lease, hold-off
    marker and stamp sit in that key's slot (``<ns>:lease:{<tag>}<key>``, where ``<tag>`` is the short hash tag
    of the key's slot, ``slot_tag``: whatever braces the key holds); a tag set and its hold-off marker share one
    slot (``<ns>:tag:{<tag>}<suffix>``); and each slot the worker writes has its checkpoint there
    (``<ns>:checkpoint:{<tag>}``).
    """

    name: str
    cluster: bool = False

    def _key(self, kind: str, rest: str = "") -> str:
        if self.cluster:
            return f"{self.name}:{{{self.name}}}:{kind}:{rest}" if rest else f"{self.name}:{{{self.name}}}:{kind}"
        return f"{self.name}:{kind}:{rest}" if rest else f"{self.name}:{kind}"

    def _in_slot_of(self, kind: str, item: str, slot: int | None = None) -> str:
        if self.cluster:
            return f"{self.name}:{kind}:{{{slot_tag(key_slot(item) if slot is None else slot)}}}{item}"
        return f"{self.name}:{kind}:{item}"

    # the worker's state
    @property
    def checkpoint(self) -> str:
        return self._key("checkpoint")

    @property
    def heartbeat(self) -> str:
        return self._key("heartbeat")

    @property
    def leader(self) -> str:
        return self._key("leader")

    @property
    def fence(self) -> str:
        return self._key("fence")

    @property
    def operator(self) -> str:
        return self._key("operator")

    @property
    def rules(self) -> str:
        return self._key("rules")

    @property
    def stats(self) -> str:
        return self._key("stats")

    @property
    def server(self) -> str:
        return self._key("server")

    @property
    def evictions(self) -> str:
        return self._key("evictions")

    @property
    def workers(self) -> str:
        return self._key("workers")

    @property
    def doctor_probe(self) -> str:
        return self._key("doctor", "probe")

    # per table
    def flushing(self, table: str) -> str:
        return self._key("flushing", table)

    def schema(self, table: str) -> str:
        return self._key("schema", table)

    def warm(self, table: str) -> str:
        return self._key("warm", table)

    # per dependency tag
    def tag(self, suffix: str) -> str:
        return self._in_slot_of("tag", suffix)

    def tinv(self, suffix: str) -> str:
        return self._in_slot_of("tinv", suffix)

    @property
    def tag_prefix(self) -> str:
        """What a tag set's name starts with, before its suffix (one Redis: the suffix follows at once)."""
        return f"{self.name}:tag:"

    def column_tags_pattern(self, table: str) -> str:
        """A SCAN glob of the table's column tags (``<table>:<col>=<val>...``; the whole-table tag is ``tag``)."""
        if self.cluster:
            return f"{glob_escape(self.tag_prefix)}\\{{*\\}}{glob_escape(table)}:*"
        return glob_escape(self.tag(table)) + ":*"

    def tag_suffix_of(self, tag_key: str) -> str:
        """The suffix a tag set's name holds (the inverse of ``tag``)."""
        rest = tag_key[len(self.tag_prefix) :]
        return rest[rest.index("}") + 1 :] if self.cluster else rest

    # per cached key
    def lease(self, key: str, slot: int | None = None) -> str:
        """``slot``: the key's slot, when the caller knows it already (``key_slot(key)``)."""
        return self._in_slot_of("lease", key, slot)

    def inv(self, key: str, slot: int | None = None) -> str:
        return self._in_slot_of("inv", key, slot)

    def stamp(self, key: str) -> str:
        return self._in_slot_of("stamp", key)

    @property
    def lease_prefix(self) -> str:
        """One Redis: ``lease(key)`` is this followed by the key (apply.lua builds a tag member's so)."""
        return f"{self.name}:lease:"

    @property
    def inv_prefix(self) -> str:
        return f"{self.name}:inv:"

    def lease_pattern(self, pattern: str) -> str:
        """A SCAN glob of the leases of the keys ``pattern`` (a SCAN glob) matches."""
        if self.cluster:
            return f"{glob_escape(self.lease_prefix)}\\{{*\\}}{pattern}"
        return glob_escape(self.lease_prefix) + pattern

    # per slot (a cluster)
    def slot_checkpoint(self, slot: int) -> str:
        return f"{self.name}:checkpoint:{{{slot_tag(slot)}}}"

    @property
    def slot_checkpoint_pattern(self) -> str:
        """A SCAN glob of every slot's checkpoint."""
        return f"{glob_escape(self.name)}:checkpoint:\\{{*\\}}"

    def slot_fence(self, slot: int) -> str:
        return f"{self.name}:fence:{{{slot_tag(slot)}}}"

    @property
    def slots(self) -> str:
        """A cluster: the hash of each slot's checkpoint as the heartbeat vouches for it (home slot)."""
        return self._key("slots")

    @property
    def prefix(self) -> str:
        """What every key of the namespace starts with (no template may render one: config.py)."""
        return f"{self.name}:"

    def owns(self, key: str) -> bool:
        return key.startswith(self.prefix)
