"""cdc_sync.core.positions.reached: does an applied position include everything up to a target?"""

from __future__ import annotations

import pytest

from cdc_sync.core.positions import reached
from cdc_sync.errors import PositionError

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "4f22fb58-82db-22f2-af44-d91bb0530673"


# ---- file positions ---------------------------------------------------------------------------------


def test_file_same_position_is_reached() -> None:
    """A position reaches itself."""
    assert reached("bin.000003:400", "bin.000003:400")


def test_file_later_offset_reaches_earlier() -> None:
    """A larger offset in the same file reaches a smaller one."""
    assert reached("bin.000003:500", "bin.000003:400")


def test_file_earlier_offset_does_not_reach_later() -> None:
    """A smaller offset in the same file does not reach a larger one."""
    assert not reached("bin.000003:399", "bin.000003:400")


def test_file_next_file_reaches_any_offset_of_previous() -> None:
    """The start of the next file reaches the end of the previous, whatever the offsets."""
    assert reached("bin.000004:4", "bin.000003:999999")


def test_file_previous_file_does_not_reach_next() -> None:
    """A large offset in an older file does not reach a small offset in a newer one."""
    assert not reached("bin.000003:999999", "bin.000004:4")


def test_file_sequence_compares_numerically() -> None:
    """bin.10 is after bin.9 (numbers, not text)."""
    assert reached("bin.10:4", "bin.9:500")
    assert not reached("bin.9:500", "bin.10:4")


# ---- MariaDB GTID states --------------------------------------------------------------------------------


def test_mariadb_same_state_is_reached() -> None:
    """A state reaches itself."""
    assert reached("0-1-100", "0-1-100")


def test_mariadb_higher_sequence_reaches_lower() -> None:
    """A higher sequence number in the domain reaches a lower one."""
    assert reached("0-1-101", "0-1-100")
    assert not reached("0-1-99", "0-1-100")


def test_mariadb_server_id_does_not_matter() -> None:
    """Only the domain's sequence number is compared (a failover changes the server id)."""
    assert reached("0-2-100", "0-1-100")


def test_mariadb_every_domain_must_be_reached() -> None:
    """Multi-domain: every target domain must be at or past its target sequence."""
    assert reached("0-1-100,1-7-50", "0-1-90,1-7-50")
    assert not reached("0-1-100,1-7-49", "0-1-90,1-7-50")


def test_mariadb_missing_domain_is_not_reached() -> None:
    """A target domain absent from the applied state is not reached."""
    assert not reached("0-1-100", "0-1-100,1-7-1")


def test_mariadb_extra_applied_domain_is_fine() -> None:
    """Domains the target does not mention are ignored."""
    assert reached("0-1-100,1-7-1,2-3-9", "0-1-100")


def test_mariadb_domain_order_does_not_matter() -> None:
    """Domains are matched by number, not by position in the text."""
    assert reached("1-7-50,0-1-100", "0-1-100,1-7-50")


# ---- MySQL GTID sets --------------------------------------------------------------------------------------


def test_mysql_same_set_is_reached() -> None:
    """A set reaches itself."""
    assert reached(f"{U1}:1-100", f"{U1}:1-100")


def test_mysql_superset_reaches_subset() -> None:
    """A larger interval reaches a contained one."""
    assert reached(f"{U1}:1-100", f"{U1}:20-30")


def test_mysql_subset_does_not_reach_superset() -> None:
    """A contained interval does not reach a larger one."""
    assert not reached(f"{U1}:1-99", f"{U1}:1-100")


def test_mysql_gap_in_applied_is_not_reached() -> None:
    """Applied 1-5 and 7-10 miss transaction 6, so 1-10 is not reached."""
    assert not reached(f"{U1}:1-5:7-10", f"{U1}:1-10")


def test_mysql_target_inside_one_side_of_a_gap_is_reached() -> None:
    """Applied 1-5 and 7-10 does reach 7-8 and 2."""
    assert reached(f"{U1}:1-5:7-10", f"{U1}:7-8:2")


def test_mysql_target_with_gap_is_reached_by_a_full_range() -> None:
    """A gapped target is reached by a range covering all its parts."""
    assert reached(f"{U1}:1-10", f"{U1}:1-3:8")


def test_mysql_adjacent_intervals_merge() -> None:
    """1-5 and 6-10 together reach 3-8 (adjacent intervals are one)."""
    assert reached(f"{U1}:1-5:6-10", f"{U1}:3-8")


def test_mysql_multi_uuid_needs_every_uuid() -> None:
    """Each uuid of the target must be contained."""
    assert reached(f"{U1}:1-10,{U2}:1-5", f"{U1}:1-10,{U2}:1-5")
    assert not reached(f"{U1}:1-10,{U2}:1-4", f"{U1}:1-10,{U2}:1-5")


def test_mysql_missing_uuid_is_not_reached() -> None:
    """A target uuid absent from the applied set is not reached."""
    assert not reached(f"{U1}:1-10", f"{U1}:1-10,{U2}:1")


def test_mysql_extra_applied_uuid_is_fine() -> None:
    """Uuids only in the applied set are ignored."""
    assert reached(f"{U1}:1-10,{U2}:1-3", f"{U1}:5")


def test_mysql_uuid_case_is_ignored() -> None:
    """Upper- and lower-case uuids are the same server."""
    assert reached(f"{U1.upper()}:1-10", f"{U1}:1-10")


def test_mysql_newlines_as_printed_by_the_server() -> None:
    """gtid_executed as printed (with newlines after commas) parses the same."""
    assert reached(f"{U1}:1-10,\n{U2}:1-5", f"{U2}:2,{U1}:3")


# ---- mismatched or invalid --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("applied", "target"),
    [
        ("bin.000003:400", "0-1-100"),
        ("0-1-100", "bin.000003:400"),
        ("0-1-100", f"{U1}:1-10"),
        (f"{U1}:1-10", "bin.000003:400"),
    ],
)
def test_mismatched_kinds_raise(applied: str, target: str) -> None:
    """Positions of different forms cannot be compared."""
    with pytest.raises(PositionError, match="cannot compare"):
        reached(applied, target)


def test_garbage_position_raises() -> None:
    """Text that is no position raises PositionError."""
    with pytest.raises(PositionError, match="not a binlog position"):
        reached("bin.000003:400", "not-a-position")


# ---- MariaDB stream order (gtid_strict_mode=OFF: numbers may go backwards) -----------------------------


def test_mariadb_stream_parts_compare_by_file_position_not_by_number() -> None:
    """0-1-10 applied, 0-1-5 committed after it (SET gtid_seq_no): the number is lower, the stream is not."""
    assert not reached("0-1-10@1:bin.000001:900", "0-1-5@1:bin.000001:1200")
    assert reached("0-1-5@1:bin.000001:1200", "0-1-5@1:bin.000001:1200")
    assert reached("0-1-5@1:bin.000002:4", "0-1-10@1:bin.000001:900")


def test_mariadb_stream_parts_of_two_servers_never_reach() -> None:
    """File coordinates of different servers say nothing about each other."""
    assert not reached("0-1-10@1:bin.000009:900", "0-1-10@2:bin.000001:4")


def test_mariadb_target_with_a_stream_part_needs_one_applied() -> None:
    """A bare applied state cannot prove it reached a point in the stream."""
    assert not reached("0-1-99", "0-1-5@1:bin.000001:4")


def test_mariadb_contains_ignores_stream_parts() -> None:
    """Lineage containment compares GTIDs only, whatever the stream order."""
    from cdc_sync.core.positions import contains

    assert contains("0-1-10,1-2-3", "0-1-10@1:bin.000001:900")
    assert not contains("0-1-9", "0-1-10@1:bin.000001:900")


def test_a_promoted_replica_that_fell_behind_does_not_hold_the_checkpoint() -> None:
    """It held 0-1-5, then wrote 0-2-6..0-2-11: its domain position 0-2-11 'contains' 0-1-8 by number, its
    binlog state (last number per domain and server) shows it never had 0-1-8."""
    from cdc_sync.core.positions import binlog_state_holds, contains

    checkpoint = "0-1-8@1:bin.000003:1234/1796168716"
    assert contains("0-2-11", checkpoint)
    assert not binlog_state_holds("0-1-5,0-2-11", checkpoint)


def test_a_failover_to_a_replica_that_applied_the_checkpoint_keeps_it() -> None:
    """A replica that applied 0-1-8 (log_slave_updates) and wrote 0-2-9..: its binlog state keeps 0-1-8 (or later)."""
    from cdc_sync.core.positions import binlog_state_holds

    assert binlog_state_holds("0-1-8,0-2-11", "0-1-8")
    assert binlog_state_holds("0-2-11,0-1-9", "0-1-8@1:bin.000001:4/1")
    assert binlog_state_holds("0-1-8,1-3-2,1-7-5", "0-1-8,1-7-4")
    assert not binlog_state_holds("0-1-8,1-3-9", "0-1-8,1-7-4"), "another server's number in the domain"
    assert not binlog_state_holds("", "0-1-8") and binlog_state_holds("", "") and binlog_state_holds("0-1-2", "")
