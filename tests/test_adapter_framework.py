"""The adapter framework: plugins and their manifests, strict configs, hardened XML, the dead-letter
store, and the region of a point."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.deadletter import REPLAY, REPLAYED, STORED, DeadLetters
from adapters.errors import AdapterError
from adapters.plugin import Adapter, Direction, Manifest, by_format, discover, stable_id
from adapters.safexml import parse
from gateway.config import from_dict
from gateway.errors import ConfigError
from gateway.places import default_places, distance_km

EXPECTED = {"cap", "edxl", "gbt35965", "quake", "mapping"}


# -- plugins ------------------------------------------------------------------------------------


def test_every_installed_adapter_has_a_sound_manifest() -> None:
    adapters = discover()
    assert set(adapters) >= EXPECTED
    for name, adapter in adapters.items():
        manifest = adapter.manifest
        assert manifest.name == name
        assert manifest.problems() == [], name
        schema = manifest.schema()
        assert {"agency", "region", "system"} <= set(schema["keys"]), name
        assert manifest.directions, name
        required = {key for key, spec in schema["keys"].items() if spec["required"]}
        if not required:
            assert adapter.load_config({}).agency == manifest.agency
        else:
            with pytest.raises(ConfigError, match="required"):
                adapter.load_config({})
    formats = by_format(adapters)
    assert formats["cap"].manifest.name == "cap"
    assert Direction.OUT in formats["cap"].manifest.directions
    assert formats["quakeml"].manifest.name == "quake"


def test_manifest_problems_are_named() -> None:
    @dataclasses.dataclass  # not an AdapterConfig
    class Loose:
        colour: str = ""

    bad = Manifest(name="Bad Name", title="", inbound=(), outbound=(), agency="Nope!", config=Loose)  # type: ignore[arg-type]
    problems = "\n".join(bad.problems())
    for expected in ("name 'Bad Name'", "title: required", "at least one format", "agency 'Nope!'", "AdapterConfig"):
        assert expected in problems


def test_adapter_configs_are_strict_and_name_the_key() -> None:
    cap = discover()["cap"]
    with pytest.raises(ConfigError, match=r"file cap\.toml, key 'colour'.*unknown key"):
        cap.load_config({"colour": "red"}, "cap.toml")
    with pytest.raises(ConfigError, match=r"key 'adapters\[0\]\.config\.agency'"):
        cap.load_config({"agency": "Weather Bureau"}, "node.toml", prefix="adapters[0].config")
    with pytest.raises(ConfigError, match="'419999' is not a known GB/T 2260"):
        cap.load_config({"region": "419999"})
    with pytest.raises(ConfigError, match=r"key 'region'.*expected str"):
        cap.load_config({"region": 410000})
    assert cap.load_config({"region": "410100", "agency": "water"}).agency == "water"


def test_an_unknown_format_is_refused_by_name() -> None:
    cap: Adapter = discover()["cap"]
    with pytest.raises(ConfigError, match="no format 'cot'"):
        cap.open("cot")


def test_stable_ids_are_stable_and_distinct() -> None:
    one = stable_id("cap", "w-nws.webmaster@noaa.gov", "KSTO1055887203")
    assert one == stable_id("cap", "w-nws.webmaster@noaa.gov", "KSTO1055887203")
    assert one != stable_id("cap", "w-nws.webmaster@noaa.gov", "KSTO1055887204")
    assert one != stable_id("cap", "w-nws.webmaster@noaa.govKSTO", "1055887203")  # parts do not run together
    assert one.startswith("cap-")
    assert " " not in one
    assert len(one) < 64


def test_node_config_takes_adapter_sections_strictly() -> None:
    base = {"node": {"id": "zz", "region": "410100"}, "tls": {"insecure": True}}
    config = from_dict(
        {
            **base,
            "adapters": [
                {
                    "name": "qxj-cap",
                    "adapter": "cap",
                    "source": {"type": "http-push"},
                    "config": {"region": "410100"},
                }
            ],
        },
        "node.toml",
    )
    assert config.adapters[0].source.type == "http-push"
    with pytest.raises(ConfigError, match=r"key 'adapters\[0\].source.folder'"):
        from_dict({**base, "adapters": [{"name": "x", "adapter": "cap", "source": {"folder": "in"}}]}, "node.toml")
    with pytest.raises(ConfigError, match=r"key 'adapters\[0\].name'.*required"):
        from_dict({**base, "adapters": [{"adapter": "cap"}]}, "node.toml")


# -- hostile and broken XML -----------------------------------------------------------------------

HOSTILE = {
    "a DTD": b'<?xml version="1.0"?><!DOCTYPE alert SYSTEM "http://127.0.0.1:1/x.dtd"><alert/>',
    "an external entity": b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>',
    "an entity bomb": (
        b'<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><a>&c;</a>'
    ),
    "XInclude": b'<a xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file:///etc/passwd"/></a>',
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_hostile_xml_is_refused_saying_why(what: str) -> None:
    with pytest.raises(AdapterError) as refused:
        parse(HOSTILE[what])
    assert refused.value.kind == "hostile"
    assert any(word in str(refused.value) for word in ("DTD", "entit", "XInclude", "external"))


def test_broken_xml_is_refused_with_its_place() -> None:
    with pytest.raises(AdapterError, match=r"not well-formed XML.*line 1, column") as broken:
        parse(b"<alert><sender>x</alert>")
    assert broken.value.kind == "xml"
    with pytest.raises(AdapterError, match="more than the limit") as big:
        parse(b"<a>" + b"x" * 100 + b"</a>", limit=50)
    assert big.value.kind == "size"
    with pytest.raises(AdapterError, match="empty"):
        parse(b"  \n")
    with pytest.raises(AdapterError) as encoding:
        parse(b'<?xml version="1.0" encoding="no-such-charset"?><a/>')
    assert encoding.value.kind in {"encoding", "xml"}


def test_declared_encodings_are_honoured() -> None:
    root = parse('<?xml version="1.0" encoding="ISO-8859-1"?><a>Montréal</a>'.encode("iso-8859-1"))
    assert root.text == "Montréal"
    root = parse('<?xml version="1.0" encoding="GB18030"?><a>郑州</a>'.encode("gb18030"))
    assert root.text == "郑州"


@given(st.binary(max_size=300))
def test_only_adapter_errors_escape_the_xml_parser(data: bytes) -> None:
    with contextlib.suppress(AdapterError):
        parse(data)


# -- the dead-letter store ----------------------------------------------------------------------------


def test_dead_letters_survive_and_replay(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.sqlite"
    store = DeadLetters(path)
    first = store.add("qxj-cap", "cap", source="a.xml", kind="xml", reason="not well-formed", data=b"<alert>")
    store.add("gongan", "mapping-csv", source="b.csv", kind="value", reason="records[3]: bad", data=b"\xff")
    store.close()
    store = DeadLetters(path)  # reopened: nothing lost
    assert [letter.id for letter in store.list()] == [first, first + 1]
    assert store.list("qxj-cap")[0].data == b"<alert>"
    assert store.ask_replay(first)
    assert not store.ask_replay(999)
    assert [letter.id for letter in store.list(state=REPLAY)] == [first]
    store.settle(first, delivered=False, reason="still broken", kind="xml")
    again = store.get(first)
    assert again is not None
    assert (again.state, again.reason, again.attempts) == (STORED, "still broken", 1)
    store.ask_replay(first)
    store.settle(first, delivered=True)
    done = store.get(first)
    assert done is not None
    assert (done.state, done.attempts) == (REPLAYED, 2)
    assert done.summary()["bytes"] == len(b"<alert>")
    store.close()


# -- places -----------------------------------------------------------------------------------------


def test_the_region_of_a_point_is_the_nearest_division() -> None:
    places = default_places()
    assert len(places) > 3000
    zhengzhou = places.nearest(34.7466, 113.6253)  # 郑州 city centre
    assert zhengzhou.code.startswith("4101")
    assert zhengzhou.distance_km < 10
    luoyang = places.nearest(34.62, 112.45)
    assert luoyang.code.startswith("4103")
    jiyuan = places.nearest(35.07, 112.60)
    assert jiyuan.code == "419001"
    inside = places.nearest(36.0, 117.0, within="41")  # in Shandong, but asked within Henan
    assert inside.code.startswith("41")
    assert inside.distance_km > 50
    for renamed in ("410307", "410308", "410783", "411003", "411603"):  # re-coded divisions have points
        assert places.point_of(renamed) is not None
    with pytest.raises(ValueError, match="finite"):
        places.nearest(math.nan, 113.0)


def test_distances() -> None:
    assert distance_km(34.7466, 113.6253, 34.7466, 113.6253) == 0
    assert 620 < distance_km(34.7466, 113.6253, 39.9042, 116.4074) < 640  # 郑州 to 北京
