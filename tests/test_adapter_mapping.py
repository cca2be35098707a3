"""The mapping adapter: each shipped mapping against its example input, mapping-file checks, bad
records reported while good ones are kept, encodings, and fuzzing of every shipped decoder."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.mapping import ADAPTER, MappingCodec, MappingConfig
from adapters.mapping.spec import load_spec, shipped_mappings
from adapters.plugin import AdapterContext
from gateway.errors import ConfigError
from gateway.regions import default_table
from gateway.validation import Validator
from tests.samples import data

NOW = dt.datetime(2024, 7, 18, 12, 0, tzinfo=dt.UTC).timestamp()
CONTEXT = AdapterContext(now=lambda: NOW)

#: Each shipped mapping with its example input.
EXAMPLES = {
    "public-security-incidents": "public-security-incidents.json",
    "transport-road-closures": "transport-road-closures.csv",
    "geohazard-monitoring": "geohazard-monitoring.csv",
    "construction-sites": "construction-sites.csv",
    "health-hospital-beds": "health-hospital-beds.json",
}


def codec_for(mapping: str, **config: Any) -> MappingCodec:
    codec = ADAPTER.open(
        "mapping-" + ("csv" if EXAMPLES.get(mapping, mapping).endswith(".csv") else "json"),
        ADAPTER.load_config({"mapping": mapping, **config}),
        CONTEXT,
    )
    assert isinstance(codec, MappingCodec)
    return codec


def decode_example(mapping: str) -> tuple[list[pb.Envelope], list[AdapterError]]:
    return codec_for(mapping).decode_report(data(f"mapping/{EXAMPLES[mapping]}").read_bytes())


def at(text: str) -> int:
    """Seconds of a Beijing time written 2024-07-18 09:00."""
    return int(
        dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp()
    )


def assert_valid(envelopes: list[pb.Envelope]) -> None:
    validator = Validator(default_table())
    for envelope in envelopes:
        validator.check(envelope, envelope.ByteSize())


# -- the manifest ----------------------------------------------------------------------------------


def test_manifest_is_sound_and_every_example_has_a_shipped_mapping() -> None:
    assert ADAPTER.manifest.problems() == []
    assert ADAPTER.manifest.inbound == ("mapping-json", "mapping-csv")
    assert ADAPTER.manifest.outbound == ()
    assert ADAPTER.manifest.schema()["keys"]["mapping"]["required"] is True
    assert sorted(EXAMPLES) == shipped_mappings()


def test_the_format_must_match_the_mapping() -> None:
    with pytest.raises(ConfigError, match="reads json"):
        ADAPTER.open("mapping-csv", ADAPTER.load_config({"mapping": "public-security-incidents"}), CONTEXT)


def test_an_unknown_shipped_mapping_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="geohazard-monitoring"):
        codec_for("no-such-mapping")


def test_encode_is_unsupported() -> None:
    with pytest.raises(AdapterError) as caught:
        codec_for("public-security-incidents").encode([])
    assert caught.value.kind == "unsupported"


# -- each shipped mapping against its example ------------------------------------------------------


def test_public_security_incidents_keeps_good_records_and_names_the_bad_one() -> None:
    envelopes, errors = decode_example("public-security-incidents")
    assert [str(e) for e in errors] == ["data.records[3].伤亡情况.死亡人数: not an integer: '三'"]
    assert len(envelopes) == 3
    assert_valid(envelopes)
    first = envelopes[0]
    assert (first.kind, first.status) == (pb.INCIDENT, pb.ACTUAL)
    assert first.origin.agency == "public_security"
    assert first.region == "410105"
    assert first.severity == pb.BLUE
    incident = first.incident
    assert incident.incident_id == "J4101052024061500123"
    assert (incident.event_type, incident.event_name) == ("020101", "道路交通事故")
    assert (incident.grade, incident.stage) == (pb.GRADE_GENERAL, pb.STAGE_INITIAL)
    assert (incident.casualties.injured, incident.casualties.dead) == (1, 0)
    assert incident.occurred_at.seconds == at("2024-06-15 08:32") + 10
    assert (first.geometry.point.lat, first.geometry.point.lon) == (34.78721, 113.67312)
    assert first.attributes["handling_unit"] == "金水分局花园路派出所"
    # the Luoyang record names no region code: its point lies in 涧西区
    luoyang = envelopes[2]
    assert luoyang.region == "410305"
    assert (luoyang.incident.grade, luoyang.severity) == (pb.GRADE_LARGER, pb.YELLOW)
    assert luoyang.incident.casualties.dead == 3


def test_transport_road_closures() -> None:
    envelopes, errors = decode_example("transport-road-closures")
    assert errors == []
    assert_valid(envelopes)
    assert [e.region for e in envelopes] == ["410181", "410184", "410325", "410721"]  # by exact name
    gongyi = envelopes[0]
    assert gongyi.origin.agency == "transport"
    assert gongyi.incident.event_type == "road_weather"
    assert gongyi.observed_at.seconds == at("2024-07-18 06:30")
    assert gongyi.expires_at.seconds == at("2024-07-18 18:00")
    assert (gongyi.attributes["road_code"], gongyi.attributes["stake_from"]) == ("G30", "K632+500")
    assert not envelopes[2].HasField("expires_at")  # no expected end given
    assert envelopes[3].incident.stage == pb.STAGE_FINAL  # 已解除


def test_geohazard_monitoring_converts_units_and_leaves_out_missing_readings() -> None:
    envelopes, errors = decode_example("geohazard-monitoring")
    assert [str(e) for e in errors] == [
        "line 5, column 监测时间: '2024-07-18 24:00' is not a time in the format '%Y-%m-%d %H:%M'"
    ]
    assert_valid(envelopes)
    first, luanchuan, songxian = envelopes
    assert (first.observation.station_id, first.region) == ("410323HP0012", "410323")
    assert first.observed_at.seconds == at("2024-07-18 09:00")
    readings = [(m.metric, m.value, m.unit, m.quality) for m in first.observation.measurements]
    assert readings == [
        ("displacement_total", 0.0126, "m", pb.GOOD),
        ("rainfall_1h", 18.5, "mm", pb.QUALITY_UNSPECIFIED),
        ("soil_moisture", 31.2, "%", pb.QUALITY_UNSPECIFIED),
    ]
    assert luanchuan.severity == pb.YELLOW
    assert luanchuan.observation.measurements[0].value == 0.0483
    # 嵩县 reports rainfall only: no made-up displacement from its quality flag
    assert [(m.metric, m.value) for m in songxian.observation.measurements] == [("rainfall_1h", 27.5)]


def test_construction_sites_from_gb18030() -> None:
    raw = data("mapping/construction-sites.csv").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    envelopes, errors = decode_example("construction-sites")
    assert errors == []
    assert_valid(envelopes)
    assert [e.region for e in envelopes] == ["410105", "410102", "410103", "410702"]
    site = envelopes[0].resource
    assert site.name == "金水区北三环与文化路安置房项目二期"
    assert (site.quantity, site.unit, site.status) == (426.0, "人", "active")
    assert envelopes[2].resource.status == "suspended"
    assert envelopes[0].observed_at.seconds == at("2024-07-18 17:00")
    assert envelopes[0].attributes["deep_excavation"] == "是"


def test_health_hospital_beds_take_the_region_of_their_point() -> None:
    envelopes, errors = decode_example("health-hospital-beds")
    assert errors == []
    assert_valid(envelopes)
    assert [e.region[:4] for e in envelopes] == ["4101", "4101", "4103", "4107"]
    beds = envelopes[0].resource
    assert (beds.resource_id, beds.quantity, beds.status) == ("12410000415800855B", 312.0, "open")
    assert envelopes[3].resource.status == "full"
    assert envelopes[0].observed_at.seconds == 1_721_293_200


def test_the_same_record_gets_the_same_id() -> None:
    first, _ = decode_example("health-hospital-beds")
    again, _ = decode_example("health-hospital-beds")
    assert [e.id for e in first] == [e.id for e in again]
    assert len({e.id for e in first}) == len(first)
    assert first[0].provenance.original_id == "12410000415800855B@1721293200000"


# -- decode() and the document --------------------------------------------------------------------


def test_decode_raises_only_when_no_record_decodes() -> None:
    codec = codec_for("public-security-incidents")
    assert len(codec.decode(data("mapping/public-security-incidents.json").read_bytes())) == 3
    bad = b'{"data": {"records": [{"\xe8\xad\xa6\xe6\x83\x85\xe7\xbc\x96\xe5\x8f\xb7": "J1"}]}}'
    with pytest.raises(AdapterError, match="no record could be mapped"):
        codec.decode(bad)
    assert codec.decode(b'{"data": {"records": []}}') == []


@pytest.mark.parametrize(
    ("document", "kind", "message"),
    [
        (b"{not json", "value", "not JSON"),
        (b'{"data": {}}', "missing", "no list of records"),
        (b'{"data": {"records": {"a": 1}}}', "value", "not a list"),
        (b"[" * 100_000, "hostile", "nested too deeply"),
        (b'{"data": "\xff"}', "encoding", "not utf-8"),
    ],
)
def test_unreadable_json_documents(document: bytes, kind: str, message: str) -> None:
    with pytest.raises(AdapterError, match=message) as caught:
        codec_for("public-security-incidents").decode_report(document)
    assert caught.value.kind == kind


def test_csv_without_its_columns_is_a_document_error() -> None:
    codec = codec_for("geohazard-monitoring")
    with pytest.raises(AdapterError, match="no column 监测时间, 监测点编号"):
        codec.decode_report("编号,时间\n1,2\n".encode())
    with pytest.raises(AdapterError, match="no header row"):
        codec.decode_report(b"")


def test_csv_rows_of_the_wrong_width_are_reported() -> None:
    header = data("mapping/geohazard-monitoring.csv").read_text(encoding="utf-8").splitlines()[:2]
    envelopes, errors = codec_for("geohazard-monitoring").decode_report(
        "\n".join([*header, "410323HP0012,只有两格"]).encode()
    )
    assert len(envelopes) == 1
    assert [str(e) for e in errors] == ["line 3: has 2 cells, the header 14"]


def test_utf8_bom_and_gb18030_bom_are_dropped() -> None:
    text = data("mapping/construction-sites.csv").read_bytes().decode("gb18030")
    with_bom = "\ufeff".encode("gb18030") + text.encode("gb18030")
    envelopes, errors = codec_for("construction-sites").decode_report(with_bom)
    assert (errors, len(envelopes)) == ([], 4)
    raw = data("mapping/transport-road-closures.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the example is as Excel writes it


def test_a_gb18030_file_read_as_utf8_is_an_encoding_error(tmp_path: Path) -> None:
    mapping = data_mapping(tmp_path, input={"format": "csv", "encoding": "utf-8"})
    with pytest.raises(AdapterError) as caught:
        MappingCodec(MappingConfig(mapping=str(mapping), agency="housing"), CONTEXT).decode(
            data("mapping/construction-sites.csv").read_bytes()
        )
    assert (caught.value.kind, caught.value.offset) == ("encoding", 0)


# -- mapping-file checks ---------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "name": "test-sites",
    "title": "test",
    "agency": "housing",
    "kind": "RESOURCE",
    "input": {"format": "csv", "encoding": "gb18030"},
    "id": {"template": "{项目编号}"},
    "region": {"path": "所在区县", "by": "name"},
    "fields": [
        {"target": "status", "value": "ACTUAL"},
        {"target": "resource.resource_id", "path": "项目编号", "required": True},
        {"target": "resource.quantity", "path": "在场人数", "type": "integer"},
    ],
}


def data_mapping(tmp_path: Path, **changes: Any) -> Path:
    """A mapping file like BASE with top-level keys replaced."""
    table = {**BASE, **changes}
    path = tmp_path / "sites.toml"
    path.write_text(to_toml(table), encoding="utf-8")
    return path


def to_toml(table: dict[str, Any]) -> str:
    """Enough TOML for these tables (tomllib only reads)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{value(k)} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict | list)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += [f"[{k}]", *(f"{value(a)} = {value(b)}" for a, b in v.items())]
    for k, v in table.items():
        if isinstance(v, list):
            for item in v:
                lines += [f"[[{k}]]", *(f"{value(a)} = {value(b)}" for a, b in item.items())]
    return "\n".join(lines) + "\n"


def with_field(n: int, **changes: Any) -> list[dict[str, Any]]:
    fields = [dict(f) for f in BASE["fields"]]
    fields[n].update(changes)
    return fields


def test_a_written_mapping_loads_and_decodes(tmp_path: Path) -> None:
    codec = MappingCodec(MappingConfig(mapping=str(data_mapping(tmp_path)), agency="housing"), CONTEXT)
    envelopes = codec.decode(data("mapping/construction-sites.csv").read_bytes())
    assert [e.resource.quantity for e in envelopes] == [426, 318, 0, 152]


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"colour": "red"}, "colour", "unknown key"),
        ({"input": {"format": "csv", "separator": ";"}}, "input.separator", "unknown key"),
        ({"fields": with_field(2, unit="m")}, "fields[2].unit", "unknown key"),
        ({"fields": with_field(2, target="resource.quantiy")}, "fields[2].target", "no field 'quantiy'"),
        ({"fields": with_field(2, target="incident.title")}, "fields[2].target", "not in the resource payload"),
        ({"fields": with_field(2, target="id")}, "fields[2].target", "set by the adapter"),
        ({"fields": with_field(2, target="resource")}, "fields[2].target", "name one of its fields"),
        ({"fields": with_field(2, type="decimal")}, "fields[2].type", "not one of string"),
        ({"fields": with_field(2, type="timestamp")}, "fields[2].type", "which a timestamp cannot fill"),
        ({"fields": with_field(1, type="integer")}, "fields[1].type", "holds a string"),
        ({"fields": with_field(2, required="yes")}, "fields[2].required", "expected bool"),
        ({"fields": with_field(0, value="REAL")}, "fields[0].value", "'REAL' is not one of ACTUAL"),
        (
            {"fields": with_field(2, target="status", type="enum", codes={"在建": "ACTUAL"})},
            "fields[2].target",
            "already the target",
        ),
        ({"fields": with_field(2, codes={"少": "few"})}, "fields[2].codes.少", "not an integer"),
        ({"fields": with_field(2, convert="li->m")}, "fields[2].convert", "not one of km->m"),
        ({"fields": with_field(1, convert="km->m")}, "fields[1].convert", "integer and float"),
        ({"fields": with_field(2, default=1, required=True)}, "fields[2].required", "never missing"),
        ({"fields": with_field(2, default="many")}, "fields[2].default", "not an integer"),
        ({"fields": with_field(2, value=3)}, "fields[2]", "exactly one of path"),
        ({"fields": BASE["fields"][1:]}, "fields", "needs a rule for status"),
        ({"kind": "COMMAND"}, "kind", "not one of ALERT"),
        ({"crs": "GCJ02"}, "crs", "not supported"),
        ({"agency": "Police Dept"}, "agency", "not an agency code"),
        ({"input": {"format": "xlsx"}}, "input.format", "not json or csv"),
        ({"input": {"format": "csv", "encoding": "latin-1"}}, "input.encoding", "not one of utf-8"),
        ({"id": {"template": "fixed"}}, "id.template", "names no source field"),
        ({"region": {"by": "guess"}}, "region.by", "not code or name"),
        ({"region": {"default": "419999"}}, "region.default", "not a known"),
    ],
)
def test_mapping_file_errors_name_the_key_and_the_file(
    tmp_path: Path, changes: dict[str, Any], key: str, message: str
) -> None:
    path = data_mapping(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message) as caught:
        MappingCodec(MappingConfig(mapping=str(path), agency="housing"), CONTEXT)
    assert (caught.value.key, caught.value.source) == (key, str(path))


def test_code_tables_mapping_to_unknown_enum_values_are_refused() -> None:
    table = {
        **BASE,
        "kind": "INCIDENT",
        "fields": [
            {"target": "status", "value": "ACTUAL"},
            {"target": "incident.incident_id", "path": "编号"},
            {"target": "incident.event_type", "value": "fire"},
            {"target": "incident.stage", "value": "STAGE_INITIAL"},
            {"target": "incident.grade", "path": "等级", "codes": {"一般": "GRADE_GENERAL", "较大": "GRADE_BIG"}},
        ],
    }
    with pytest.raises(ConfigError, match=r"'GRADE_BIG'.*not one of") as caught:
        load_spec(table, "grades.toml")
    assert (caught.value.key, caught.value.source) == ("fields[4].codes.较大", "grades.toml")


def test_timestamps_need_a_zone_and_repeated_elements_no_gaps() -> None:
    stamp = {"target": "observed_at", "path": "时间", "type": "timestamp", "format": "%Y-%m-%d %H:%M"}
    with pytest.raises(ConfigError, match="UTC offset") as caught:
        load_spec({**BASE, "fields": [*BASE["fields"], stamp]}, "t.toml")
    assert caught.value.key == "fields[3].timezone"
    obs = {
        **BASE,
        "kind": "OBSERVATION",
        "fields": [
            {"target": "status", "value": "ACTUAL"},
            {"target": "observation.station_id", "path": "站号"},
            {"target": "observation.measurements[0].metric", "value": "rain"},
            {"target": "observation.measurements[0].value", "path": "雨量"},
            {"target": "observation.measurements[2].value", "path": "水位"},
        ],
    }
    with pytest.raises(ConfigError, match=r"measurements\[1\] is missing"):
        load_spec(obs, "t.toml")


def test_a_mapping_names_nothing_it_could_run() -> None:
    # a value that looks like code is only ever a value
    table = {**BASE, "fields": with_field(1, target="resource.name", path="__import__('os').system('id')")}
    table["fields"].append({"target": "resource.resource_id", "path": "项目编号"})
    codec_spec = load_spec(table, "t.toml")
    assert codec_spec.rules[1].spec.path == "__import__('os').system('id')"


# -- record-level problems --------------------------------------------------------------------------


def test_record_problems_name_record_and_field(tmp_path: Path) -> None:
    table = {
        **BASE,
        "input": {"format": "json", "records": "rows"},
        "region": {"path": "区划", "by": "code"},
        "fields": [
            {"target": "status", "value": "ACTUAL"},
            {"target": "resource.resource_id", "path": "编号", "required": True},
            {"target": "resource.quantity", "path": "数量.值", "type": "float", "convert": "万->1"},
            {"target": "resource.status", "path": "状态", "codes": {"1": "open", "2": "closed"}},
        ],
        "id": {"template": "{编号}"},
    }
    path = tmp_path / "m.toml"
    path.write_text(to_toml(table), encoding="utf-8")
    codec = MappingCodec(MappingConfig(mapping=str(path), agency="housing"), CONTEXT)
    document = (
        '{"rows": ['
        '{"编号": "A", "区划": "410105", "数量": {"值": "1.5"}, "状态": 1},'
        '{"编号": "B", "区划": "419999", "数量": {"值": 2}, "状态": 1},'
        '{"编号": "C", "区划": 410700, "数量": {"值": "许多"}, "状态": 9},'
        '{"区划": "410300", "数量": {"值": 1}},'
        '{"编号": "E", "区划": "410300000000", "数量": {"值": -1}},'
        '"not a record"'
        "]}"
    )
    envelopes, errors = codec.decode_report(document.encode())
    assert [(e.resource.resource_id, e.resource.quantity, e.region) for e in envelopes] == [("A", 15000.0, "410105")]
    assert [str(e) for e in errors] == [
        "rows[1].区划: 419999 is not a known GB/T 2260 region code",
        "rows[2].数量.值: not a number: '许多'",
        "rows[2].状态: '9' is not in the code table",
        "rows[3].编号: is empty, and the envelope id is made from it",
        "rows[3].编号: is required (for resource.resource_id)",
        "rows[4]: the envelope's resource.quantity must be a non-negative number",
        "rows[5]: is a string, not an object",
    ]
    assert errors[-2].kind == "canonical"


# -- fuzzing ----------------------------------------------------------------------------------------

CODECS = {name: codec_for(name) for name in EXAMPLES}
EXAMPLE_BYTES = {name: data(f"mapping/{file}").read_bytes() for name, file in EXAMPLES.items()}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("mapping", sorted(EXAMPLES))
@FUZZ
@given(junk=st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_raise_only_adapter_errors(mapping: str, junk: bytes) -> None:
    with contextlib.suppress(AdapterError):
        CODECS[mapping].decode(junk)


@pytest.mark.parametrize("mapping", sorted(EXAMPLES))
@FUZZ
@given(cut=st.integers(min_value=0, max_value=4000), flip=st.integers(min_value=0, max_value=255))
def test_fuzz_damaged_examples_raise_only_adapter_errors(mapping: str, cut: int, flip: int) -> None:
    example = EXAMPLE_BYTES[mapping]
    cut %= len(example)
    damaged = example[:cut] + bytes([flip]) + example[cut + 1 :]
    for document in (damaged, example[:cut]):
        with contextlib.suppress(AdapterError):
            CODECS[mapping].decode_report(document)


def test_config_is_frozen() -> None:
    config = MappingConfig(mapping="construction-sites")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mapping = "x"  # type: ignore[misc]


def test_values_out_of_the_fields_range_and_unknown_place_names_are_reported() -> None:
    incident = (
        '{"警情编号": "J1", "警情类别": {"代码": "020101"}, "报警时间": "2024-06-15 08:32:10",'
        ' "行政区划代码": "410105", "伤亡情况": {"死亡人数": -1}}'
    )
    _, errors = codec_for("public-security-incidents").decode_report(
        f'{{"data": {{"records": [{incident}]}}}}'.encode()
    )
    assert [str(e) for e in errors] == [
        "data.records[0].伤亡情况.死亡人数: -1 is out of the range 0..4294967295 of incident.casualties.dead"
    ]
    lines = data("mapping/construction-sites.csv").read_bytes().decode("gb18030").splitlines()
    lines[1] = lines[1].replace(",金水区,", ",金水,")
    envelopes, errors = codec_for("construction-sites").decode_report("\n".join(lines).encode("gb18030"))
    assert len(envelopes) == 3
    assert [str(e) for e in errors] == ["line 2, column 所在区县: '金水' is not the exact name of a region in 河南省"]
