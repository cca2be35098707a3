"""The shipped GB/T 2260 table and how its codes nest (Henan, 41xxxx, is the province we serve)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.regions import Level, Region, RegionTable, default_table, is_well_formed, level_of

TABLE = default_table()
HENAN_CODES = [code for n in range(10_000) if (code := f"41{n:04d}") in TABLE]


def test_henan_is_in_the_table() -> None:
    assert "410000" in TABLE
    assert TABLE.get("410000") == Region("410000", "河南省", Level.PROVINCE)
    assert TABLE.name("410100") == "郑州市"
    assert TABLE.name("419001") == "济源市"


def test_henan_has_175_codes() -> None:
    assert len(HENAN_CODES) == 175
    assert sorted(TABLE.subtree("410000")) == HENAN_CODES


def test_the_table_is_loaded_once() -> None:
    assert default_table() is TABLE
    assert len(TABLE) > 3000


def test_unknown_codes() -> None:
    assert "419999" not in TABLE
    assert TABLE.get("419999") is None
    assert TABLE.name("419999") == "419999"
    assert TABLE.parent("419999") is None
    assert TABLE.children("419999") == []
    assert TABLE.ancestors("419999") == []
    assert 410000 not in TABLE  # codes are strings


@pytest.mark.parametrize(
    ("code", "parent"),
    [
        ("410102", "410100"),
        ("410122", "410100"),
        ("410100", "410000"),
        ("419001", "410000"),  # 济源, administered directly by the province
        ("410000", None),
        ("110101", "110000"),  # a district of a municipality hangs under the municipality
    ],
)
def test_parent(code: str, parent: str | None) -> None:
    assert TABLE.parent(code) == parent


def test_children() -> None:
    zhengzhou = TABLE.children("410100")
    assert {"410102", "410122", "410181", "410185"} <= set(zhengzhou)
    assert zhengzhou == sorted(zhengzhou)
    assert all(TABLE.parent(child) == "410100" for child in zhengzhou)
    henan = TABLE.children("410000")
    assert {"410100", "410200", "419001"} <= set(henan)
    assert "410102" not in henan
    assert TABLE.children("410102") == []


def test_ancestors() -> None:
    assert TABLE.ancestors("410102") == ["410100", "410000"]
    assert TABLE.ancestors("419001") == ["410000"]
    assert TABLE.ancestors("410100") == ["410000"]
    assert TABLE.ancestors("410000") == []


@pytest.mark.parametrize(
    ("code", "ancestor", "within"),
    [
        ("410102", "410102", True),
        ("410102", "410100", True),
        ("410102", "410000", True),
        ("419001", "410000", True),
        ("419001", "410100", False),
        ("410202", "410100", False),
        ("410100", "410102", False),
        ("420102", "410000", False),
    ],
)
def test_is_within(code: str, ancestor: str, within: bool) -> None:
    assert TABLE.is_within(code, ancestor) is within


def test_subtree() -> None:
    zhengzhou = TABLE.subtree("410100")
    assert zhengzhou[0] == "410100"
    assert {"410102", "410122"} <= set(zhengzhou)
    assert "410202" not in zhengzhou
    assert "419001" not in zhengzhou
    assert TABLE.subtree("410102") == ["410102"]
    henan = set(TABLE.subtree("410000"))
    assert "419001" in henan
    assert all(TABLE.is_within(code, "410000") for code in henan)


@pytest.mark.parametrize(
    ("code", "level"),
    [
        ("410000", Level.PROVINCE),
        ("410100", Level.CITY),
        ("419001", Level.COUNTY),
        ("410102", Level.COUNTY),
        ("110000", Level.PROVINCE),
    ],
)
def test_level_of(code: str, level: Level) -> None:
    assert level_of(code) is level
    assert TABLE.get(code) == Region(code, TABLE.name(code), level)


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("410102", True),
        ("41010", False),
        ("4101020", False),
        ("41010a", False),
        ("４１０１０２", False),
        ("", False),
        (" 41010", False),
    ],
)
def test_is_well_formed(code: str, ok: bool) -> None:
    assert is_well_formed(code) is ok


def test_parse_a_small_table() -> None:
    table = RegionTable.parse("410000 河南省\n\n410100 郑州市\n  410102 中原区  \n419001 济源市\n")
    assert len(table) == 4
    assert table.name("410102") == "中原区"
    assert table.parent("410102") == "410100"
    assert table.parent("419001") == "410000"


def test_parse_a_county_without_its_city_hangs_under_the_province() -> None:
    table = RegionTable.parse("410000 河南省\n410102 中原区\n")
    assert table.parent("410102") == "410000"
    assert RegionTable.parse("410102 中原区\n").parent("410102") is None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("410000 河南省\n41010 郑州市\n", 2),
        ("410000 河南省\n\n410100\n", 3),
        ("410000\t河南省\n", 1),
        ("410000 河南省\n410100 郑州市\nabcdef 中原区\n", 3),
    ],
)
def test_parse_errors_name_the_line(text: str, line: int) -> None:
    bad = text.splitlines()[line - 1]
    with pytest.raises(ValueError, match=re.escape(f"region table line {line}: expected 'CODE NAME', got {bad!r}")):
        RegionTable.parse(text)


@given(st.sampled_from(sorted(TABLE.subtree("410000"))))
def test_every_henan_code_reaches_the_province(code: str) -> None:
    chain = TABLE.ancestors(code)
    assert (chain[-1] if chain else code) == "410000"
    assert TABLE.is_within(code, "410000")
    assert code in TABLE.subtree(chain[0] if chain else code)
