"""cdc_sync.core.keys: escaping, template parsing, rendering, and SCAN patterns.

hypothesis is not installed in the venv, so injectivity is checked exhaustively over small alphabets
of the troublesome characters, plus a seeded random sample, plus a decoder that must invert escape().
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
from decimal import Decimal

import pytest

from cdc_sync.core.keys import KeyTemplate, escape
from cdc_sync.errors import ConfigError

# Characters a value can hold that could confuse key boundaries or the escaping itself.
TRICKY = [":", "{", "}", "%", " ", "\x00", "\t", "\n", "\x1f", "\x7f", "a", "Z", "3", "A", "é", "€", "*", "-"]
_ESCAPE_SEQ = re.compile(r"%([0-9A-F]{2})")


def _unescape_text(text: str) -> str:
    return _ESCAPE_SEQ.sub(lambda m: chr(int(m.group(1), 16)), text)


def _unescape_bytes(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(text[i].encode("ascii"))
            i += 1
    return bytes(out)


def _strings(alphabet: list[str], max_len: int) -> list[str]:
    return ["".join(p) for n in range(max_len + 1) for p in itertools.product(alphabet, repeat=n)]


def _random_strings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = [*TRICKY, "%3A", "%25", "b", "\u2028", "\U0001f600"]
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 8))) for _ in range(count)]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Redis glob (as produced by pattern(): '*', '?' and backslash escapes) to a regex."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.S)


# ---- escape ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("", ""),
        ("a:b", "a%3Ab"),
        ("100%", "100%25"),
        ("{x}", "%7Bx%7D"),
        ("a b", "a%20b"),
        ("\x00\n\x1f\x7f", "%00%0A%1F%7F"),
        ("é€*?[]", "é€*?[]"),
        (42, "42"),
        (-7, "-7"),
        (18446744073709551615, "18446744073709551615"),
        (True, "1"),
        (False, "0"),
        (Decimal("12.50"), "12.50"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03%3A04%3A05"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 6), "2024-01-02T03%3A04%3A05.000006"),
        (dt.time(3, 4, 5), "03%3A04%3A05"),
        (b"a:b\x00\xff %", "a%3Ab%00%FF%20%25"),
        (bytearray(b"{}"), "%7B%7D"),
        (memoryview(b"ok~"), "ok~"),
    ],
)
def test_escape_values(value: object, expected: str) -> None:
    """Each value type renders as documented in the keys module docstring."""
    assert escape(value) == expected


def test_escaped_text_has_no_reserved_characters() -> None:
    """No escaped text value contains ':', braces, space or a control character."""
    for value in _strings(TRICKY, 2) + _random_strings(500, seed=7):
        out = escape(value)
        assert not set(out) & set(":{} \x7f"), (value, out)
        assert all(ord(c) >= 0x20 for c in out), (value, out)


def test_escape_text_round_trips() -> None:
    """escape() on text is inverted by %XX decoding, so it is injective."""
    for value in _strings(TRICKY, 2) + _random_strings(2000, seed=1):
        assert _unescape_text(escape(value)) == value


def test_escape_text_injective_exhaustive() -> None:
    """All strings up to length 3 over the tricky alphabet escape to distinct texts."""
    values = _strings(TRICKY, 3)
    assert len({escape(v) for v in values}) == len(values)


def test_escape_bytes_round_trips() -> None:
    """escape() on bytes is inverted by %XX decoding, over every single byte and random strings."""
    rng = random.Random(3)
    samples = [bytes([b]) for b in range(256)]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 10))) for _ in range(2000)]
    for value in samples:
        out = escape(value)
        assert out.isascii()
        assert _unescape_bytes(out) == value


def test_escape_bytes_injective_exhaustive() -> None:
    """All byte pairs over a tricky byte alphabet escape to distinct texts."""
    alphabet = [0x00, 0x20, 0x25, 0x3A, 0x7B, 0x7D, 0x7F, 0x80, 0xFF, 0x41, 0x33]
    values = [bytes(p) for n in range(3) for p in itertools.product(alphabet, repeat=n)]
    assert len({escape(v) for v in values}) == len(values)


# ---- parse -----------------------------------------------------------------------------------------


def test_parse_composite() -> None:
    """A composite template splits into literals and fields."""
    t = KeyTemplate.parse("item:{shop_id}:{sku}", "tables[0].key")
    assert t.literals == ("item:", ":", "")
    assert t.fields == ("shop_id", "sku")
    assert t.source == "item:{shop_id}:{sku}"


def test_parse_literal_braces() -> None:
    """{{ and }} stand for literal braces."""
    t = KeyTemplate.parse("obj{{x}}:{id}:{{{n}}}", "k")
    assert t.literals == ("obj{x}:", ":{", "}")
    assert t.fields == ("id", "n")
    assert t.render({"id": 5, "n": "a:b"}) == "obj{x}:5:{a%3Ab}"


def test_parse_separator_with_colon_and_text() -> None:
    """Fields may be separated by any literal text that contains ':'."""
    t = KeyTemplate.parse("a{x}-:-{y}", "k")
    assert t.render({"x": 1, "y": 2}) == "a1-:-2"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("u:{a}{b}", "fields in template 'u:{a}{b}' must be separated by text containing ':'"),
        ("u:{a}-{b}", "must be separated by text containing ':'"),
        ("{a}_{b}:{c}", "must be separated by text containing ':'"),
        ("u:{a}:{b}{c}", "must be separated by text containing ':'"),
        ("user", "has no {column} field"),
        ("user:{{id}}", "has no {column} field"),
        ("u:{id", "unclosed '{'"),
        ("u:id}", "unmatched '}'"),
        ("u:{}", "bad column name ''"),
        ("u:{1id}", "bad column name '1id'"),
        ("u:{a b}", "bad column name 'a b'"),
        ("u:{a{b}", "bad column name 'a{b'"),
    ],
)
def test_parse_rejects(source: str, message: str) -> None:
    """Bad templates are ConfigErrors that start with the config field and explain the problem."""
    with pytest.raises(ConfigError) as info:
        KeyTemplate.parse(source, "tables[3].also[1]")
    text = str(info.value)
    assert text.startswith("tables[3].also[1]: ")
    assert message in text


def test_parse_accepts_dollar_and_underscore_names() -> None:
    """Column names may use letters, digits (not first), '_' and '$'."""
    assert KeyTemplate.parse("k:{_a$1}", "k").fields == ("_a$1",)


# ---- render ----------------------------------------------------------------------------------------


def test_render_escapes_values() -> None:
    """Rendered values are escaped; literal text is kept."""
    t = KeyTemplate.parse("user:email:{email}", "k")
    assert t.render({"email": "a b:c@x"}) == "user:email:a%20b%3Ac@x"


@pytest.mark.parametrize("row", [{"a": None, "b": 1}, {"a": 1, "b": None}, {"a": None, "b": None}])
def test_render_null_gives_none(row: dict[str, object]) -> None:
    """Any NULL field means no key."""
    assert KeyTemplate.parse("item:{a}:{b}", "k").render(row) is None


def test_render_missing_column_raises_keyerror() -> None:
    """A row without a template column raises KeyError naming the column."""
    with pytest.raises(KeyError, match="b"):
        KeyTemplate.parse("item:{a}:{b}", "k").render({"a": 1})


def test_render_ignores_extra_columns() -> None:
    """Columns the template does not use do not affect the key."""
    t = KeyTemplate.parse("user:{id}", "k")
    assert t.render({"id": 7, "name": "x"}) == t.render({"id": 7}) == "user:7"


PAIR_VALUES: list[object] = [
    "",
    ":",
    "::",
    "a:b",
    "a",
    "b",
    "b:c",
    "{",
    "}",
    "{}",
    "%",
    "%3A",
    "%25",
    " ",
    "a b",
    "\x00",
    "\n",
    "\x7f",
    "*",
    "é",
]


def test_composite_render_injective() -> None:
    """item:{a}:{b} renders distinct keys for all distinct pairs of tricky text values."""
    t = KeyTemplate.parse("item:{a}:{b}", "k")
    values = PAIR_VALUES + _strings([":", "%", "{", " ", "x"], 2)
    pairs = list(itertools.product(dict.fromkeys(values), repeat=2))
    keys = {t.render({"a": a, "b": b}) for a, b in pairs}
    assert len(keys) == len(pairs)


def test_composite_render_injective_bytes() -> None:
    """item:{a}:{b} renders distinct keys for distinct pairs of byte values."""
    t = KeyTemplate.parse("item:{a}:{b}", "k")
    values = [b"", b":", b"a:b", b"%", b"%3A", b"\x00", b"\xff", b" ", b"{}", b"a", b"b:c"]
    pairs = list(itertools.product(values, repeat=2))
    assert len({t.render({"a": a, "b": b}) for a, b in pairs}) == len(pairs)


def test_composite_render_splits_back() -> None:
    """A composite key splits on ':' back into its escaped values."""
    t = KeyTemplate.parse("item:{a}:{b}", "k")
    for a, b in itertools.product(PAIR_VALUES, repeat=2):
        key = t.render({"a": a, "b": b})
        assert key is not None
        prefix, ea, eb = key.split(":")
        assert (prefix, _unescape_text(ea), _unescape_text(eb)) == ("item", a, b)


# ---- pattern ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        ("user:{id}", "user:*"),
        ("item:{a}:{b}", "item:*:*"),
        ("{id}:x", "*:x"),
        ("k*[x]?\\:{id}", "k\\*\\[x\\]\\?\\\\:*"),
        ("obj{{x}}:{id}", "obj{x}:*"),
    ],
)
def test_pattern_text(source: str, pattern: str) -> None:
    """Fields become '*' and glob specials in literals are backslash-escaped."""
    assert KeyTemplate.parse(source, "k").pattern() == pattern


@pytest.mark.parametrize("source", ["user:{id}", "item:{a}:{b}", "k*[x]?\\:{a}:?{b}", "{a}:mid*:{b}"])
def test_pattern_matches_rendered_keys(source: str) -> None:
    """The glob matches every key the template renders, including values holding glob specials."""
    t = KeyTemplate.parse(source, "k")
    regex = _glob_regex(t.pattern())
    for a, b in itertools.product([*PAIR_VALUES, "*", "?", "[x]", "\\"], repeat=2):
        key = t.render({"id": a, "a": a, "b": b})
        assert key is not None
        assert regex.match(key), (t.pattern(), key)


def test_pattern_literals_are_not_globs() -> None:
    """Escaped glob specials in literals match only themselves."""
    regex = _glob_regex(KeyTemplate.parse("k*[x]?:{id}", "k").pattern())
    assert regex.match("k*[x]?:5")
    assert not regex.match("kkk[x]?:5")
    assert not regex.match("k*x!:5")
    assert not regex.match("other:5")


def test_time_values_render_like_the_cached_values() -> None:
    """A TIME (timedelta) in a key is [-]HH:MM:SS[.ffffff], escaped, as in update-mode values."""
    import datetime as _dt

    from cdc_sync.core.keys import escape as _escape

    assert _escape(_dt.timedelta(days=1, hours=2)) == "26%3A00%3A00"
    assert _escape(-_dt.timedelta(hours=838, minutes=59, seconds=59, microseconds=500000)) == "-838%3A59%3A59.500000"


# ---- Redis Cluster slots and the cluster layout --------------------------------------------------------------


def test_key_slot_is_redis_clusters() -> None:
    """The pure CRC16 slot equals redis-py's, hash tags included (first '{', next '}', not empty)."""
    import random

    from redis.crc import key_slot as redis_slot

    from cdc_sync.core.keys import key_slot

    rng = random.Random(7)
    samples = ["user:1", "{user}:1", "a{}b", "a{b}c{d}", "}{x}", "{", "x{y", "", "é:{ü}"]
    samples += ["".join(rng.choice("ab{}:x1é") for _ in range(rng.randrange(12))) for _ in range(2000)]
    for key in samples:
        assert key_slot(key) == redis_slot(key.encode()), key


def test_every_slot_has_a_tag_of_its_own() -> None:
    from cdc_sync.core.keys import SLOTS, key_slot, slot_tag

    tags = [slot_tag(s) for s in range(SLOTS)]
    assert len(set(tags)) == SLOTS and all("{" not in t and "}" not in t for t in tags)
    assert all(key_slot(f"{{{slot_tag(s)}}}") == s for s in range(0, SLOTS, 97))


@pytest.mark.parametrize("key", ["user:42", "user:{42}", "a}b", "x:{}", "{", "t:%7B{u}", "é{"])
def test_a_keys_bookkeeping_sits_in_its_slot_on_a_cluster(key: str) -> None:
    from cdc_sync.core.keys import Namespace, key_slot

    ns = Namespace("cdc", cluster=True)
    for name in (ns.lease(key), ns.inv(key), ns.stamp(key)):
        assert key_slot(name) == key_slot(key) and name.endswith(key) and name.startswith("cdc:")
    assert key_slot(ns.tag(key)) == key_slot(ns.tinv(key)) and ns.tag_suffix_of(ns.tag(key)) == key


def test_the_worker_keys_share_the_home_slot_on_a_cluster() -> None:
    from cdc_sync.core.keys import Namespace, key_slot

    ns = Namespace("cdc", cluster=True)
    home = {key_slot(k) for k in (ns.checkpoint, ns.heartbeat, ns.leader, ns.rules, ns.slots, ns.flushing("s.t"))}
    assert home == {key_slot("cdc")} and ns.heartbeat == "cdc:{cdc}:heartbeat"
    assert key_slot(ns.slot_checkpoint(123)) == 123 and key_slot(ns.slot_fence(9000)) == 9000
    single = Namespace("cdc")
    assert (single.heartbeat, single.lease("u:1"), single.tag("s.t")) == (
        "cdc:heartbeat",
        "cdc:lease:u:1",
        "cdc:tag:s.t",
    )
