"""The consistency checker's own judgement (so a green checker means something)."""

from __future__ import annotations

from tests.consistency.model import History


def _history() -> History:
    h = History()
    h.record("items", 1, "a", 1, 10.0, 10.1)
    h.record("items", 1, "b", 1, 20.0, 20.1)
    h.record("items", 1, None, None, 30.0, 30.1)
    return h


def test_current_value_is_fresh() -> None:
    """The latest version read at any time is fresh."""
    assert _history().judge_row("items", 1, None, 40.0, 40.1, 2.0).kind == "fresh"


def test_superseded_value_within_the_bound_is_fresh() -> None:
    """'a' read 1.5 s after 'b' committed, with a 2 s bound: fresh, staleness 1.4 s."""
    verdict = _history().judge_row("items", 1, "a", 21.5, 21.6, 2.0)
    assert verdict.kind == "fresh" and abs(verdict.staleness_s - 1.4) < 1e-9


def test_superseded_value_past_the_bound_is_stale() -> None:
    """'a' read 5 s after 'b' committed: stale."""
    assert _history().judge_row("items", 1, "a", 25.1, 25.2, 2.0).kind == "stale"


def test_absence_after_the_delete_is_fresh_and_before_the_insert_too() -> None:
    """None matches the initial absence or the delete, whichever is fresher."""
    h = _history()
    assert h.judge_row("items", 1, None, 5.0, 5.1, 2.0).kind == "fresh"
    assert h.judge_row("items", 1, None, 15.0, 15.1, 2.0).kind == "stale", "row 'a' existed for 5 s"


def test_unknown_rolled_back_or_future_values_are_phantoms() -> None:
    """A value never committed, rolled back, or read before its commit began is a phantom."""
    h = _history()
    h.rollback("x")
    assert h.judge_row("items", 1, "zzz", 40.0, 40.1, 2.0).kind == "phantom"
    assert h.judge_row("items", 1, "x", 40.0, 40.1, 2.0).kind == "phantom"
    assert h.judge_row("items", 1, "b", 12.0, 12.5, 2.0).kind == "phantom"


def test_group_results_check_members_and_absences() -> None:
    """A group result missing a member that joined long ago is stale; the complete one is fresh."""
    h = History()
    h.record("items", 1, "a", 7, 10.0, 10.1)
    h.record("items", 2, "b", 7, 11.0, 11.1)
    assert h.judge_group(7, [(1, "a"), (2, "b")], 20.0, 20.1, 2.0).kind == "fresh"
    assert h.judge_group(7, [(1, "a")], 20.0, 20.1, 2.0).kind == "stale"
    assert h.judge_group(7, [(1, "a")], 11.5, 11.6, 2.0).kind == "fresh"
    assert h.judge_group(8, [(1, "a")], 20.0, 20.1, 2.0).kind == "phantom"
