"""cdc_sync.core.positions: the three position forms, their ordering, and the PositionTracker."""

from __future__ import annotations

import pytest

from cdc_sync.core.positions import (
    FilePos,
    PositionError,
    PositionTracker,
    kind_of,
    parse_mariadb,
    parse_mysql,
    render_mariadb,
    render_mysql,
)

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "8a94f357-aab4-11df-86ab-c80aa9429562"


# ---- kind_of ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("bin.000042:1234", "file"),
        ("mysql-bin.000001:4", "file"),
        ("  host.name-bin.000010:4\n", "file"),
        ("0-1-100", "mariadb"),
        ("0-1-100,1-7-5", "mariadb"),
        (f"{U1}:1-100", "mysql"),
        (f"{U1}:1-100:200-210,{U2}:5", "mysql"),
        (f"{U1}:1-5,\n{U2}:1", "mysql"),
        (f"{U1.upper()}:7", "mysql"),
    ],
)
def test_kind_of(text: str, kind: str) -> None:
    """Each textual form is recognised."""
    assert kind_of(text) == kind


GARBAGE = [
    "",
    " ",
    "\n",
    "garbage",
    "bin.000001",
    "bin.000001:",
    ":4",
    "bin:4",
    "bin.000001:4:5",
    "bin.000001:-4",
    "0-1",
    "0-1-x",
    "0-1-100,",
    "0-1-100;1-2-3",
    f"{U1}",
    f"{U1}:",
    f"{U1}:1-5,",
    f"{U1}:a-b",
    "3e11fa47:1-5",
    "none",
    "0",
]


@pytest.mark.parametrize("text", GARBAGE)
def test_kind_of_rejects_garbage(text: str) -> None:
    """Empty or malformed text raises PositionError."""
    with pytest.raises(PositionError):
        kind_of(text)


@pytest.mark.parametrize("text", GARBAGE)
def test_tracker_rejects_garbage(text: str) -> None:
    """A tracker never starts from an empty or garbage position (never 'from the beginning')."""
    with pytest.raises(PositionError):
        PositionTracker(text)


# ---- file positions --------------------------------------------------------------------------------


def test_filepos_parse_and_str() -> None:
    """A file position parses into seq/pos/file and renders back unchanged."""
    p = FilePos.parse("mysql-bin.000123:456")
    assert (p.seq, p.pos, p.file) == (123, 456, "mysql-bin.000123")
    assert str(p) == "mysql-bin.000123:456"


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("bin.000009:99999", "bin.000010:4"),
        ("bin.000010:4", "bin.000010:5"),
        ("bin.999999:4", "bin.1000000:4"),
        ("bin.000001:1000", "bin.000002:4"),
    ],
)
def test_filepos_ordering(lower: str, higher: str) -> None:
    """Positions order by file sequence number first (numerically), then offset."""
    assert FilePos.parse(lower) < FilePos.parse(higher)
    assert not FilePos.parse(higher) <= FilePos.parse(lower)


@pytest.mark.parametrize("text", ["bin.000001", "bin:4", "", "0-1-1"])
def test_filepos_rejects(text: str) -> None:
    """FilePos.parse rejects anything but file:pos."""
    with pytest.raises(PositionError):
        FilePos.parse(text)


# ---- MariaDB ---------------------------------------------------------------------------------------


def test_mariadb_parse_multi_domain() -> None:
    """Each domain maps to its (server_id, sequence)."""
    assert parse_mariadb("0-1-100,1-7-5,10-3-9") == {0: (1, 100), 1: (7, 5), 10: (3, 9)}


def test_mariadb_render_sorted_by_domain() -> None:
    """Rendering sorts domains numerically."""
    assert render_mariadb({10: (3, 9), 1: (7, 5), 0: (1, 100)}) == "0-1-100,1-7-5,10-3-9"


def test_mariadb_round_trip() -> None:
    """parse then render gives the canonical state back."""
    assert render_mariadb(parse_mariadb(" 1-7-5,0-1-100 ")) == "0-1-100,1-7-5"


@pytest.mark.parametrize("text", ["", "0-1", f"{U1}:1", "bin.000001:4", "0-1-1,,1-1-1"])
def test_mariadb_parse_rejects(text: str) -> None:
    """parse_mariadb rejects other forms."""
    with pytest.raises(PositionError):
        parse_mariadb(text)


# ---- MySQL -----------------------------------------------------------------------------------------


def test_mysql_parse_uuid_case_insensitive() -> None:
    """The same UUID in both cases is one entry, lower-cased, with merged intervals."""
    assert parse_mysql(f"{U1.upper()}:1-5,{U1}:6-10") == {U1: [(1, 10)]}


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        (":1-5:6-10", [(1, 10)]),
        (":1-5:7-10", [(1, 5), (7, 10)]),
        (":3:1-2", [(1, 3)]),
        (":1-10:5-6", [(1, 10)]),
        (":7:7", [(7, 7)]),
        (":20-30:1-4:5", [(1, 5), (20, 30)]),
    ],
)
def test_mysql_parse_merges_intervals(ranges: str, expected: list[tuple[int, int]]) -> None:
    """Intervals are sorted and adjacent or overlapping ones merged."""
    assert parse_mysql(U1 + ranges) == {U1: expected}


def test_mysql_parse_multiline() -> None:
    """gtid_executed's ',\\n' separators are accepted."""
    assert parse_mysql(f"{U2}:1-3,\n{U1}:5") == {U1: [(5, 5)], U2: [(1, 3)]}


def test_mysql_render_compact_and_sorted() -> None:
    """Singletons render without '-', UUIDs in sorted order."""
    assert render_mysql({U2: [(1, 1)], U1: [(1, 100), (102, 110)]}) == f"{U1}:1-100:102-110,{U2}:1"


def test_mysql_round_trip() -> None:
    """parse then render canonicalises a GTID set."""
    assert render_mysql(parse_mysql(f"{U2.upper()}:3:1-2,\n{U1}:4")) == f"{U1}:4,{U2}:1-3"


@pytest.mark.parametrize("text", ["", f"{U1}", f"{U1}:1,", "0-1-1", f"{U1}:x"])
def test_mysql_parse_rejects(text: str) -> None:
    """parse_mysql rejects other forms."""
    with pytest.raises(PositionError):
        parse_mysql(text)


# ---- tracker: file ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "pos", "covered"),
    [
        ("bin.000010", 499, True),
        ("bin.000010", 500, True),
        ("bin.000010", 501, False),
        ("bin.000009", 99999, True),
        ("bin.000011", 4, False),
    ],
)
def test_file_tracker_covers(file: str, pos: int, covered: bool) -> None:
    """A file tracker covers transactions ending at or before its position."""
    assert PositionTracker("bin.000010:500").covers(None, file, pos) is covered


def test_file_tracker_advance_and_render() -> None:
    """advance moves to the transaction's end, across files; a GTID is ignored."""
    t = PositionTracker("bin.000009:700")
    t.advance(None, "bin.000010", 120)
    assert t.render() == "bin.000010:120"
    t.advance("0-1-5", "bin.000010", 300)
    assert (t.kind, t.render()) == ("file", "bin.000010:300")
    assert t.covers(None, "bin.000010", 300)


# ---- tracker: MariaDB ------------------------------------------------------------------------------


@pytest.mark.parametrize("gtid", ["0-1-99", "0-1-100", "0-1-101", "1-7-5", "1-7-6", "2-1-1"])
def test_mariadb_tracker_never_skips_by_number(gtid: str) -> None:
    """A MariaDB tracker never calls a transaction applied by its sequence number: numbers may go backwards
    (gtid_strict_mode=OFF), and the server streams exactly what follows the requested position."""
    assert not PositionTracker("0-1-100,1-7-5").covers(gtid, "bin.000001", 4)


def test_mariadb_tracker_without_gtid_not_covered() -> None:
    """A transaction without GTID is never considered applied in GTID mode."""
    assert not PositionTracker("0-1-100").covers(None, "bin.000001", 4)


def test_mariadb_tracker_advance_render() -> None:
    """advance updates one domain (and its server id), adds new domains, and takes lower numbers as they come."""
    t = PositionTracker("0-1-100,1-7-5")
    t.advance("1-8-6", "bin.000001", 900)
    assert t.render() == "0-1-100,1-8-6"
    t.advance("3-1-1", "bin.000001", 1000)
    assert t.render() == "0-1-100,1-8-6,3-1-1"
    t.advance("0-1-50", "bin.000001", 1100)  # out of order: later in the stream, lower in number
    assert t.render() == "0-1-50,1-8-6,3-1-1"


def test_mariadb_tracker_follows_the_stream_position_of_its_server() -> None:
    """Once the server is known, positions carry @server:file:pos; another server's position is dropped."""
    t = PositionTracker("0-1-100@1:bin.000002:500")
    assert t.stream is not None and str(t.stream) == "1:bin.000002:500"
    t.set_server(1)
    t.advance("0-1-40", "bin.000002", 800)
    assert t.render() == "0-1-40@1:bin.000002:800"
    assert t.advance_stream("bin.000003", 4)
    assert t.render() == "0-1-40@1:bin.000003:4"
    assert not t.advance_stream("bin.000003", 4), "no move, no new position"
    t.set_server(2)
    assert t.render() == "0-1-40", "file coordinates of server 1 mean nothing on server 2"
    t.advance("0-2-41", "bin.000009", 300)
    assert t.render() == "0-2-41@2:bin.000009:300"


def test_mariadb_tracker_without_a_known_server_renders_the_state_only() -> None:
    """Before the binlog's server is known (no format description yet), no stream part is invented."""
    t = PositionTracker("0-1-100")
    t.advance("0-1-101", "bin.000001", 900)
    assert t.render() == "0-1-101"
    t.forget_stream()
    assert PositionTracker("0-1-5@3:bin.000001:4").render() == "0-1-5@3:bin.000001:4"


def test_mariadb_tracker_advance_requires_gtid() -> None:
    """Advancing without a GTID in GTID mode raises."""
    with pytest.raises(PositionError):
        PositionTracker("0-1-100").advance(None, "bin.000001", 4)


# ---- tracker: MySQL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gtid", "covered"),
    [
        (f"{U1}:1", True),
        (f"{U1}:100", True),
        (f"{U1}:101", False),
        (f"{U1}:150", True),
        (f"{U1.upper()}:150", True),
        (f"{U1}:201", False),
        (f"{U2}:1", False),
    ],
)
def test_mysql_tracker_covers(gtid: str, covered: bool) -> None:
    """A MySQL tracker covers GNOs inside its intervals only (gaps are not covered)."""
    assert PositionTracker(f"{U1}:1-100:150-200").covers(gtid, "bin.000001", 4) is covered


def test_mysql_tracker_advance_merges() -> None:
    """advance extends the adjacent interval and fills gaps."""
    t = PositionTracker(f"{U1}:1-100:102-110")
    t.advance(f"{U1}:111", "bin.000001", 4)
    assert t.render() == f"{U1}:1-100:102-111"
    t.advance(f"{U1.upper()}:101", "bin.000001", 8)
    assert t.render() == f"{U1}:1-111"


def test_mysql_tracker_advance_new_uuid() -> None:
    """A GTID from a new server UUID adds a sorted entry."""
    t = PositionTracker(f"{U2}:1-5")
    t.advance(f"{U1}:1", "bin.000001", 4)
    assert t.render() == f"{U1}:1,{U2}:1-5"


def test_mysql_tracker_advance_requires_gtid() -> None:
    """Advancing without a GTID in GTID mode raises."""
    with pytest.raises(PositionError):
        PositionTracker(f"{U1}:1-5").advance(None, "bin.000001", 4)


def test_tracker_renders_start_canonically() -> None:
    """A tracker renders its start position in canonical form before any advance."""
    assert PositionTracker(f" {U1.upper()}:3:1-2 ").render() == f"{U1}:1-3"
    assert PositionTracker("1-1-1,0-1-1").render() == "0-1-1,1-1-1"
    assert PositionTracker("bin.000001:4").render() == "bin.000001:4"


def test_mariadb_stream_part_records_the_binlog_files_creation_time() -> None:
    """The stream part names the file's creation time once the format description told it: a file of the same
    name written anew (RESET MASTER) is then told apart. Positions without it still parse."""
    t = PositionTracker("0-1-5")
    t.set_server(1, "bin.000002", 1796168716)
    t.advance("0-1-6", "bin.000002", 900)
    assert t.render() == "0-1-6@1:bin.000002:900/1796168716"
    again = PositionTracker(t.render())
    assert again.stream is not None and again.stream.created == 1796168716
    assert str(again.stream.at) == "bin.000002:900"
    t.advance_stream("bin.000003", 4)  # a rotation before the next file's format description: time unknown
    assert t.render() == "0-1-6@1:bin.000003:4"
