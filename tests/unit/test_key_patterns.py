"""Exact key matching (flushes touch only a rule's own keys) and overlap detection between templates."""

from __future__ import annotations

import pytest

from cdc_sync.core.keys import KeyTemplate, templates_overlap


def t(source: str) -> KeyTemplate:
    return KeyTemplate.parse(source, "tables[0].key")


def test_matches_exactly_what_the_template_renders() -> None:
    """user:{id} matches user:5, escaped values and user: (what an empty text renders: flushes must find it),
    not user:email:x nor other prefixes."""
    tpl = t("user:{id}")
    assert tpl.matches("user:5") and tpl.matches("user:a%3Ab") and tpl.matches(tpl.render({"id": "x:{y} z"}) or "")
    assert not tpl.matches("user:email:x")
    assert tpl.matches("user:") and tpl.render({"id": ""}) == "user:"
    assert t("a:{x}:{y}").parse_key("a::") == {"x": "", "y": ""}
    assert not tpl.matches("users:5")


def test_glob_is_broader_than_matches() -> None:
    """The SCAN glob user:* also covers user:email:x, which the exact check then leaves alone."""
    import fnmatch

    tpl = t("user:{id}")
    assert fnmatch.fnmatchcase("user:email:x", tpl.pattern())
    assert not tpl.matches("user:email:x")


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("user:{id}", "user:{email}", True),
        ("user:{id}", "user:email:{email}", False),
        ("user:{id}", "order:{id}", False),
        ("item:{shop}:{sku}", "item:{a}:{b}", True),
        ("u{id}", "v{id}", False),
        ("{a}:x", "y:{b}", True),
        ("a{x}b:c", "a:{y}", False),
        ("k:{a}z", "k:y{b}", True),
    ],
)
def test_templates_overlap(a: str, b: str, overlap: bool) -> None:
    """Two templates overlap when some key could be rendered by both."""
    assert templates_overlap(t(a), t(b)) is overlap
    assert templates_overlap(t(b), t(a)) is overlap


@pytest.mark.parametrize(
    ("source", "renders"),
    [
        ("{a}:heartbeat", True),  # a = 'cdc'
        ("cdc:{x}", True),
        ("c{x}:{y}", True),  # x = 'dc'
        ("cd{x}", False),  # a field never renders ':'
        ("{a}", False),
        ("{a}:{b}", True),
        ("cdc{x}:y", True),  # x empty
        ("cdcx:{a}", False),
        ("cdc%3A{x}", False),  # an escaped colon is not a colon
        ("user:{id}", False),
        ("x{a}:{b}", False),
        ("{a}cdc:{b}", True),
        ("{a}c:{b}", True),
        ("{a}d:{b}", False),  # the prefix's last character before ':' is 'c'
        ("cd", None),  # no field: not a template
    ],
)
def test_renders_with_prefix(source: str, renders: bool | None) -> None:
    """A template can render a key in the namespace 'cdc:' exactly when some field values spell it."""
    from cdc_sync.core.keys import renders_with_prefix
    from cdc_sync.errors import ConfigError

    if renders is None:
        with pytest.raises(ConfigError):
            t(source)
        return
    assert renders_with_prefix(t(source), "cdc:") is renders


def test_renders_with_prefix_agrees_with_brute_force() -> None:
    """Over every short template of a small alphabet, the automaton agrees with rendering every field value
    up to four characters (values hold anything but ':')."""
    import itertools

    from cdc_sync.core.keys import renders_with_prefix

    values = ["".join(p) for n in range(5) for p in itertools.product("cdx", repeat=n)]
    pieces = ["c", "d", ":", "x", "{a}", "{b}"]
    checked = 0
    for n in range(1, 5):
        for parts in itertools.product(pieces, repeat=n):
            source = "".join(parts)
            try:
                tpl = t(source)
            except Exception:
                continue  # not a valid template (no field, adjacent fields, a field reused)
            fields = sorted(set(tpl.fields))
            found = any(
                (tpl.render(dict(zip(fields, combo, strict=True))) or "").startswith("cd:")
                for combo in itertools.product(values, repeat=len(fields))
            )
            assert renders_with_prefix(tpl, "cd:") is found, source
            checked += 1
    assert checked > 50
