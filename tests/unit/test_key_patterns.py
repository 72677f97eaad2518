"""Exact key matching (flushes touch only a rule's own keys) and overlap detection between templates."""

from __future__ import annotations

import pytest

from cdc_sync.keys import KeyTemplate, templates_overlap


def t(source: str) -> KeyTemplate:
    return KeyTemplate.parse(source, "tables[0].key")


def test_matches_exactly_what_the_template_renders() -> None:
    """user:{id} matches user:5 and escaped values, not user:email:x nor user: nor other prefixes."""
    tpl = t("user:{id}")
    assert tpl.matches("user:5") and tpl.matches("user:a%3Ab") and tpl.matches(tpl.render({"id": "x:{y} z"}) or "")
    assert not tpl.matches("user:email:x")
    assert not tpl.matches("user:")
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
