"""The CAP adapter against real third-party CAP documents, hostile XML and fuzzed input."""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from adapters import safexml
from adapters.cap import ADAPTER, CapCodec, CapConfig
from adapters.cap.codec import CAP_1_2, XMLDSIG
from adapters.errors import AdapterError
from adapters.plugin import AdapterContext, stable_id
from gateway.regions import default_table
from gateway.validation import Validator
from tests.samples import data

GOOD = [
    "v1dot2_appendix_adot1.xml",
    "v1dot2_appendix_adot2.xml",
    "v1dot2_appendix_adot3.xml",
    "v1dot2_appendix_adot4.xml",
    "validator-examples_43b080713727.cap",
    "validator-examples_thunderstorm.cap",
    "validator-examples_KAR0-0306112239-SW.cap",
    "australia.cap",
    "canada.cap",
    "canada_signed.cap",
    "wcatwc-warning.cap",
    "earthquake-iso8859-1.cap",
    "earthquake.cap",
    "weather.cap",
]
CAP_1_1_SAMPLES = {"validator-examples_KAR0-0306112239-SW.cap", "earthquake.cap", "weather.cap"}
CONTEXT = AdapterContext()
VALIDATOR = Validator(default_table())


def codec(**config: object) -> CapCodec:
    settings_ = {"agency": "meteorology", "region": "410000", **config}
    return CapCodec(CapConfig(**settings_), CONTEXT)  # type: ignore[arg-type]


def sample(name: str) -> bytes:
    return data(f"cap/{name}").read_bytes()


def decode_one(raw: bytes, **config: object) -> pb.Envelope:
    envelopes = codec(**config).decode(raw)
    assert len(envelopes) == 1
    return envelopes[0]


def refusal(raw: bytes, **config: object) -> AdapterError:
    with pytest.raises(AdapterError) as caught:
        codec(**config).decode(raw)
    return caught.value


def cap_children(element: Element) -> list[tuple[str, str]]:
    """(path, text) of every leaf under ``element``, in document order, namespaces dropped."""
    out: list[tuple[str, str]] = []

    def walk(node: Element, path: str) -> None:
        counts: dict[str, int] = {}
        for child in node:
            name = child.tag.rsplit("}", 1)[-1]
            index = counts.get(name, 0)
            counts[name] = index + 1
            child_path = f"{path}.{name}[{index}]"
            if len(child):
                walk(child, child_path)
            else:
                out.append((child_path, child.text or ""))

    walk(element, "alert")
    return out


# -- the adapter and its manifest ------------------------------------------------------------


def test_manifest_is_sound_and_opens_the_codec() -> None:
    assert ADAPTER.manifest.problems() == []
    assert ADAPTER.manifest.formats == ("cap",)
    config = ADAPTER.load_config({"region": "410100", "max_place_distance_km": 30.0})
    assert isinstance(config, CapConfig)
    assert config.agency == "meteorology"
    assert isinstance(ADAPTER.open("cap", config), CapCodec)
    assert "max_document_bytes" in ADAPTER.manifest.schema()["keys"]


# -- every sample -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD)
def test_sample_decodes_to_a_valid_envelope(name: str) -> None:
    env = decode_one(sample(name))
    VALIDATOR.check(env, env.ByteSize())
    assert env.kind == pb.ALERT
    assert env.id == stable_id("cap", env.alert.sender, env.alert.identifier)
    assert env.provenance.original_id == env.alert.identifier
    assert env.provenance.original_format == ("cap-1.1" if name in CAP_1_1_SAMPLES else "cap-1.2")
    assert env.sent_at == env.alert.sent
    assert env.origin.agency == "meteorology"
    assert env.origin.system == "cap"


@pytest.mark.parametrize("name", GOOD)
def test_round_trip_keeps_every_field(name: str) -> None:
    cap = codec()
    first = cap.decode(sample(name))[0]
    exported = cap.encode([first])
    second = cap.decode(exported)[0]
    if name in CAP_1_1_SAMPLES:  # export writes CAP 1.2; all else is the same
        assert second.provenance.original_format == "cap-1.2"
        second.provenance.original_format = first.provenance.original_format
    assert second == first
    # element by element: every leaf of the source (empty ones aside) is in the export, same text
    source = dict(cap_children(safexml.parse(sample(name))))
    written = dict(cap_children(safexml.parse(exported)))
    for path, text in source.items():
        if ".Signature[" in path or not text.strip():
            continue
        assert path in written, path
        if any(f".{time}[" in path for time in ("sent", "effective", "onset", "expires")):
            continue  # same instant, asserted through the envelopes above
        if re.search(r"\.(polygon|circle|altitude|ceiling)\[", path):
            assert written[path].split() == text.split() or _same_numbers(written[path], text), path
        else:
            assert written[path] == text or written[path] == text.strip(), path


def _same_numbers(a: str, b: str) -> bool:
    numbers = [float(n) for n in re.split(r"[ ,]+", a.strip())]
    return numbers == [float(n) for n in re.split(r"[ ,]+", b.strip())]


def test_export_is_cap_1_2_in_utf8_in_schema_order() -> None:
    exported = codec().encode([decode_one(sample("v1dot2_appendix_adot2.xml"))])
    assert exported.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = safexml.parse(exported)
    assert root.tag == f"{{{CAP_1_2}}}alert"
    top = [child.tag.rsplit("}", 1)[-1] for child in root]
    assert top == ["identifier", "sender", "sent", "status", "msgType", "scope", "info"]
    info = [child.tag.rsplit("}", 1)[-1] for child in root.find(f"{{{CAP_1_2}}}info") or []]
    assert info[:6] == ["category", "event", "responseType", "urgency", "severity", "certainty"]
    assert b"<sent>2003-06-17T14:57:00-07:00</sent>" in exported


def test_cap_1_1_is_read_and_recorded() -> None:
    env = decode_one(sample("weather.cap"))
    assert env.provenance.original_format == "cap-1.1"
    assert env.alert.infos[0].parameters[2].name == "VTEC"
    assert env.alert.infos[0].parameters[0].value == ""  # <value></value> is an empty value, not an error


# -- mapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "colour"),
    [
        ("Extreme", pb.RED),
        ("Severe", pb.ORANGE),
        ("Moderate", pb.YELLOW),
        ("Minor", pb.BLUE),
        ("Unknown", pb.SEVERITY_UNSPECIFIED),
    ],
)
def test_severity_maps_to_the_four_colours(severity: str, colour: pb.Severity) -> None:
    raw = sample("v1dot2_appendix_adot1.xml").replace(b"<severity>Severe<", f"<severity>{severity}<".encode())
    env = decode_one(raw)
    assert env.severity == colour
    assert env.alert.infos[0].severity == severity
    VALIDATOR.check(env, env.ByteSize())


@pytest.mark.parametrize(
    ("status", "canonical"),
    [("Actual", pb.ACTUAL), ("Exercise", pb.EXERCISE), ("System", pb.TEST), ("Test", pb.TEST), ("Draft", pb.TEST)],
)
def test_status_is_never_taken_for_actual_unless_it_is(status: str, canonical: pb.Status) -> None:
    raw = sample("v1dot2_appendix_adot1.xml").replace(b"<status>Actual<", f"<status>{status}<".encode())
    env = decode_one(raw)
    assert (env.status, env.alert.status) == (canonical, status)
    assert codec().decode(codec().encode([env]))[0] == env


def test_multiple_languages_are_kept_as_info_blocks() -> None:
    env = decode_one(sample("v1dot2_appendix_adot4.xml"))
    assert [info.language for info in env.alert.infos] == ["en-US", "es-US"]
    assert env.alert.infos[1].event == "Abducción de Niño"
    canada = decode_one(sample("canada.cap"))
    assert [info.language for info in canada.alert.infos] == ["en-CA", "fr-CA"]
    english = [polygon for area in canada.alert.infos[0].areas for polygon in area.polygons]
    assert list(canada.geometry.polygons) == english  # the French block repeats the same shapes: kept once


def test_polygon_and_geocodes() -> None:
    env = decode_one(sample("v1dot2_appendix_adot2.xml"))
    area = env.alert.infos[0].areas[0]
    assert [(p.lat, p.lon) for p in area.polygons[0].points] == [
        (38.47, -120.14),
        (38.34, -119.95),
        (38.52, -119.74),
        (38.62, -119.89),
        (38.47, -120.14),
    ]
    assert [g.value for g in area.geocodes] == ["006109", "006009", "006003"]  # SAME codes, not GB/T 2260
    assert env.geometry.polygons[0] == area.polygons[0]
    assert env.region == "410000"  # California is no Chinese place: the config's region
    assert env.expires_at == env.alert.infos[0].expires


def test_circle_radius_is_in_metres() -> None:
    env = decode_one(sample("australia.cap"))
    circle = env.alert.infos[0].areas[0].circles[0]
    assert (circle.center.lat, circle.center.lon, circle.radius_m) == (-35.3888, 147.0598, 25_000.0)
    assert b"<circle>-35.3888,147.0598 25.0</circle>" in codec().encode([env])
    assert len(env.geometry.circles) == 1  # both info blocks name the same circle


def test_references_are_kept_as_written_and_linked_to_ids() -> None:
    update = decode_one(sample("v1dot2_appendix_adot3.xml"))
    assert update.alert.msg_type == "Update"
    assert update.alert.references == "trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00"
    assert list(update.references) == [stable_id("cap", "trinet@caltech.edu", "TRI13970876.1")]
    signed = decode_one(sample("canada_signed.cap"))
    assert len(signed.references) == 9
    # the earlier alert, decoded on its own, gets exactly the id the update points to
    earlier = sample("v1dot2_appendix_adot1.xml").replace(b"43b080713727", b"TRI13970876.1")
    earlier = earlier.replace(b"hsas@dhs.gov", b"trinet@caltech.edu")
    assert decode_one(earlier).id == update.references[0]


def test_cancel_is_kept() -> None:
    raw = sample("v1dot2_appendix_adot3.xml").replace(b"<msgType>Update<", b"<msgType>Cancel<")
    assert decode_one(raw).alert.msg_type == "Cancel"


def test_iso_8859_1_document() -> None:
    env = decode_one(sample("earthquake-iso8859-1.cap"))
    assert "Usulután" in env.alert.infos[0].headline
    assert env.alert.time_zone == "+00:00"
    assert env.alert.infos[0].HasField("onset")


def test_prefixed_namespace() -> None:
    env = decode_one(sample("australia.cap"))
    assert env.alert.identifier == "tag:www.rfs.nsw.gov.au2011-10-06:40184"
    assert list(env.alert.infos[0].categories) == ["Fire", "Met"]
    assert env.alert.time_zone == "+10:00"


def test_xml_dsig_signature_is_kept_as_received_and_written_back() -> None:
    raw = sample("canada_signed.cap")
    env = decode_one(raw)
    signature = env.alert.xml_signature
    assert signature.count("<Signature ") == 2  # the document carries two signatures
    assert signature in raw.decode("utf-8")  # byte for byte as received
    exported = codec().encode([env])
    assert signature.encode() in exported
    signatures = safexml.parse(exported).findall(f"{{{XMLDSIG}}}Signature")
    assert len(signatures) == 2
    latin = decode_one(sample("earthquake-iso8859-1.cap"))
    assert latin.alert.xml_signature.startswith('<Signature xmlns="http://www.w3.org/2000/09/xmldsig#">')
    assert latin.alert.xml_signature.endswith("</Signature>")


def test_signature_whose_namespace_is_declared_above_it_is_serialised_whole() -> None:
    raw = sample("v1dot2_appendix_adot1.xml").replace(
        b'<alert xmlns = "urn:oasis:names:tc:emergency:cap:1.2">',
        b'<alert xmlns = "urn:oasis:names:tc:emergency:cap:1.2" xmlns:ds="http://www.w3.org/2000/09/xmldsig#">',
    )
    raw = raw.replace(b"</alert>", b"<ds:Signature><ds:SignatureValue>AAAA</ds:SignatureValue></ds:Signature></alert>")
    env = decode_one(raw)
    assert env.alert.xml_signature == (
        '<Signature xmlns="http://www.w3.org/2000/09/xmldsig#"><SignatureValue>AAAA</SignatureValue></Signature>'
    )
    assert codec().decode(codec().encode([env]))[0] == env


def test_time_zone_is_written_back_as_the_source_wrote_it() -> None:
    env = decode_one(sample("canada.cap"))
    assert env.alert.time_zone == "-00:00"
    assert b"<sent>2012-05-02T23:21:04-00:00</sent>" in codec().encode([env])


# -- region -------------------------------------------------------------------------------------

CHINESE_AREA = b"""<area><areaDesc>\xe4\xb8\xad\xe5\x8e\x9f\xe5\x8c\xba</areaDesc>%s</area>"""


def henan_alert(area: bytes) -> bytes:
    raw = sample("v1dot2_appendix_adot1.xml")
    start, end = raw.index(b"<area>"), raw.index(b"</area>") + len(b"</area>")
    return raw[:start] + CHINESE_AREA % area + raw[end:]


@pytest.mark.parametrize(
    ("geocodes", "region"),
    [
        (["410102"], "410102"),
        (["410102000000"], "410102"),  # the 12-digit statistical form
        (["410102", "410103"], "410100"),  # two districts of Zhengzhou: the city holds both
        (["410102", "411502"], "410000"),
    ],
)
def test_region_from_geocodes(geocodes: list[str], region: str) -> None:
    area = b"".join(
        f"<geocode><valueName>GB/T 2260</valueName><value>{code}</value></geocode>".encode() for code in geocodes
    )
    env = decode_one(henan_alert(area), region="")
    assert env.region == region
    assert env.origin.region == region
    VALIDATOR.check(env, env.ByteSize())


def test_region_from_geometry() -> None:
    polygon = b"<polygon>34.74,113.60 34.74,113.66 34.78,113.66 34.78,113.60 34.74,113.60</polygon>"
    env = decode_one(henan_alert(polygon), region="")
    assert env.region.startswith("4101")  # a district of Zhengzhou
    circle = decode_one(henan_alert(b"<circle>34.75,113.62 5</circle>"), region="")
    assert circle.region.startswith("4101")


def test_no_region_is_an_error_naming_the_field() -> None:
    error = refusal(sample("v1dot2_appendix_adot2.xml"), region="")
    assert error.field == "alert.info.area.geocode"
    assert error.kind == "missing"
    assert "region" in error.reason


# -- negative samples ---------------------------------------------------------------------------


def test_invalid_cap_misses_its_scope() -> None:
    error = refusal(sample("invalid.cap"))
    assert (error.field, error.kind) == ("alert.scope", "missing")


def test_canada_errors_is_an_update_that_references_nothing() -> None:
    # <restriction/> and <addresses/> are empty strings CAP's schema allows (read as absent);
    # an Update that names no message to update is what is actually wrong.
    error = refusal(sample("canada_errors.cap"))
    assert (error.field, error.kind) == ("alert.references", "missing")
    fixed = sample("canada_errors.cap").replace(b"<msgType>Update<", b"<msgType>Alert<")
    assert decode_one(fixed).alert.restriction == ""


def test_noaa_errors_each_reason_in_turn() -> None:
    raw = sample("noaa_errors.cap")
    # its empty <references> is read as absent (msgType Alert needs none); its empty urgency is not
    assert refusal(raw).field == "alert.info[0].urgency"
    raw = raw.replace(b"<urgency></urgency>", b"<urgency>Expected</urgency>")
    assert refusal(raw).field == "alert.info[0].severity"
    raw = raw.replace(b"<severity></severity>", b"<severity>Minor</severity>")
    assert refusal(raw).field == "alert.info[0].certainty"
    raw = raw.replace(b"<certainty></certainty>", b"<certainty>Likely</certainty>")
    error = refusal(raw)
    assert error.field == "alert.info[0].area[0].polygon[0]"  # "+40.85,-118.09," has a stray comma
    raw = raw.replace(b"-118.09, ", b"-118.09 ")
    assert refusal(raw).field == "alert.info[0].area[0].polygon[1]"  # the empty polygon
    raw = raw.replace(b"<polygon></polygon>", b"")
    env = decode_one(raw)
    assert env.alert.infos[0].event_codes[0].value == ""


def test_alert_without_info_is_refused_as_unsupported() -> None:
    error = refusal(sample("no_optional_fields.cap"))
    assert (error.field, error.kind) == ("alert.info", "unsupported")


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (b"<identifier>43b080713727</identifier>", b"", "alert.identifier"),
        (b"<sender>hsas@dhs.gov</sender>", b"", "alert.sender"),
        (b"<sent>2003-04-02T14:39:01-05:00</sent>", b"", "alert.sent"),
        (b"<status>Actual</status>", b"", "alert.status"),
        (b"<msgType>Alert</msgType>", b"", "alert.msgType"),
        (b"<category>Security</category>", b"", "alert.info[0].category"),
        (b"<event>Homeland Security Advisory System Update</event>", b"", "alert.info[0].event"),
        (b"<urgency>Immediate</urgency>", b"", "alert.info[0].urgency"),
        (b"<severity>Severe</severity>", b"", "alert.info[0].severity"),
        (b"<certainty>Likely</certainty>", b"", "alert.info[0].certainty"),
        (b"<areaDesc>U.S. nationwide and interests worldwide</areaDesc>", b"", "alert.info[0].area[0].areaDesc"),
    ],
)
def test_missing_required_element_names_it(old: bytes, new: bytes, field: str) -> None:
    raw = sample("v1dot2_appendix_adot1.xml")
    assert old in raw
    error = refusal(raw.replace(old, new))
    assert (error.field, error.kind) == (field, "missing")


@pytest.mark.parametrize(
    "sent",
    [
        b"2003-04-02 14:39:01-05:00",
        b"2003-04-02T14:39:01Z",
        b"2003-02-30T14:39:01-05:00",
        b"2003-04-02T25:39:01-05:00",
        b"2003-04-02T14:39:01+15:00",
        b"yesterday",
    ],
)
def test_bad_timestamps_are_refused(sent: bytes) -> None:
    raw = sample("v1dot2_appendix_adot1.xml").replace(b"2003-04-02T14:39:01-05:00", sent)
    assert refusal(raw).field == "alert.sent"


@pytest.mark.parametrize(
    ("polygon", "reason"),
    [
        (b"38.47,-120.14 38.34,-119.95 38.47,-120.14", "at least 4 points"),
        (b"38.47,-120.14 38.34,-119.95 38.52,-119.74 38.62,-119.89", "not closed"),
        (b"98.47,-120.14 38.34,-119.95 38.52,-119.74 98.47,-120.14", "latitude"),
        (b"38.47,-190.14 38.34,-119.95 38.52,-119.74 38.47,-190.14", "longitude"),
        (b"38.47;-120.14 38.34,-119.95 38.52,-119.74 38.47;-120.14", "lat,lon"),
        (b"nan,1 38.34,-119.95 38.52,-119.74 nan,1", "decimal"),
    ],
)
def test_bad_polygons_are_refused_naming_the_polygon(polygon: bytes, reason: str) -> None:
    raw = sample("v1dot2_appendix_adot2.xml")
    raw = raw.replace(b"38.47,-120.14 38.34,-119.95 38.52,-119.74 38.62,-119.89 38.47,-120.14", polygon)
    error = refusal(raw)
    assert error.field == "alert.info[0].area[0].polygon[0]"
    assert reason in error.reason


def test_bad_circle_is_refused() -> None:
    raw = sample("v1dot2_appendix_adot3.xml").replace(b"32.9525,-115.5527 0", b"32.9525,-115.5527 -4")
    assert refusal(raw).field == "alert.info[0].area[0].circle[0]"


def test_wrong_root_and_unknown_namespace() -> None:
    error = refusal(b"<feed xmlns='http://www.w3.org/2005/Atom'/>")
    assert (error.field, error.kind) == ("alert", "unsupported")
    error = refusal(
        sample("v1dot2_appendix_adot1.xml").replace(CAP_1_2.encode(), b"urn:oasis:names:tc:emergency:cap:9")
    )
    assert error.kind == "unsupported"
    assert "urn:oasis:names:tc:emergency:cap:9" in error.reason


def test_unknown_elements_are_refused_not_dropped() -> None:
    raw = sample("v1dot2_appendix_adot1.xml").replace(b"<scope>", b"<scop>x</scop><scope>")
    assert refusal(raw).field == "alert.scop"
    raw = sample("v1dot2_appendix_adot1.xml").replace(b"<scope>", b"<x:y xmlns:x='urn:x'/><scope>")
    error = refusal(raw)
    assert (error.kind, error.field) == ("unsupported", "alert.y")
    assert "urn:x" in error.reason


def test_encode_refuses_what_is_not_one_alert() -> None:
    observation = pb.Envelope(id="x", kind=pb.OBSERVATION)
    observation.observation.station_id = "s"
    with pytest.raises(AdapterError) as caught:
        codec().encode([observation])
    assert caught.value.kind == "unsupported"
    env = decode_one(sample("v1dot2_appendix_adot1.xml"))
    with pytest.raises(AdapterError) as caught:
        codec().encode([env, env])
    assert caught.value.kind == "unsupported"


def test_encode_names_text_xml_cannot_carry() -> None:
    env = decode_one(sample("v1dot2_appendix_adot1.xml"))
    env.alert.infos[0].headline = "bad \x01 char"
    with pytest.raises(AdapterError) as caught:
        codec().encode([env])
    assert (caught.value.field, caught.value.kind) == ("alert.infos[0].headline", "canonical")


def test_export_of_a_canonical_alert_from_elsewhere() -> None:
    from tests.factories import alert  # noqa: PLC0415 -- only this test needs it

    env = alert()
    exported = codec().encode([env])
    again = decode_one(exported, region="")
    assert again.severity == pb.ORANGE  # 橙色 is no CAP severity: the colour is written as Severe
    assert again.alert.infos[0].severity == "Severe"
    assert again.region.startswith("4101")
    assert again.alert.infos[0].areas[0].polygons[0] == env.alert.infos[0].areas[0].polygons[0]


def test_altitude_and_ceiling_in_feet_read_back_exactly() -> None:
    raw = sample("v1dot2_appendix_adot3.xml").replace(
        b"<circle>32.9525,-115.5527 0</circle>",
        b"<circle>32.9525,-115.5527 0.7</circle><altitude>1000.3</altitude><ceiling>12345.6</ceiling>",
    )
    env = decode_one(raw)
    area = env.alert.infos[0].areas[0]
    assert area.altitude_m == pytest.approx(304.89144)
    exported = codec().encode([env])
    assert b"<altitude>1000.3</altitude>" in exported
    assert b"<ceiling>12345.6</ceiling>" in exported
    assert b"32.9525,-115.5527 0.7</circle>" in exported
    assert codec().decode(exported)[0] == env


# -- hostile XML --------------------------------------------------------------------------------


def test_xee_sample_is_refused_as_hostile() -> None:
    error = refusal(sample("xee.cap"))
    assert error.kind == "hostile"
    assert "DTD" in error.reason


@pytest.mark.parametrize(
    ("document", "why"),
    [
        (b'<?xml version="1.0"?><!DOCTYPE alert SYSTEM "http://localhost/x.dtd"><alert/>', "DTD"),
        (
            (
                b'<!DOCTYPE a [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;">]>'
                b"<alert>&c;</alert>"
            ),
            "DTD",
        ),
        (b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><alert>&x;</alert>', "DTD"),
        (
            (
                b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2" xmlns:xi="http://www.w3.org/2001/XInclude">'
                b'<xi:include href="file:///etc/passwd"/></alert>'
            ),
            "XInclude",
        ),
    ],
)
def test_hostile_xml_is_refused_naming_why(document: bytes, why: str) -> None:
    error = refusal(document)
    assert error.kind == "hostile"
    assert why in error.reason


def test_oversize_document_is_refused() -> None:
    error = refusal(sample("canada_signed.cap"), max_document_bytes=1000)
    assert error.kind == "size"


# -- fuzzing: only AdapterError may escape ------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
SEEDS = [sample(name) for name in ("v1dot2_appendix_adot2.xml", "australia.cap", "canada_signed.cap")]


def decodes_or_refuses(raw: bytes) -> None:
    try:
        envelopes = codec().decode(raw)
    except AdapterError:
        return
    for env in envelopes:
        VALIDATOR.check(env, env.ByteSize())
        assert codec().decode(codec().encode([env]))[0] == env


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    decodes_or_refuses(raw)


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(min_value=0, max_value=30_000))
def test_fuzz_truncated_samples(seed: bytes, cut: int) -> None:
    decodes_or_refuses(seed[: cut % (len(seed) + 1)])


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(min_value=0, max_value=30_000), st.binary(max_size=8)), min_size=1, max_size=6),
)
def test_fuzz_mutated_samples(seed: bytes, edits: list[tuple[int, bytes]]) -> None:
    raw = bytearray(seed)
    for position, replacement in edits:
        at = position % (len(raw) + 1)
        raw[at : at + len(replacement)] = replacement
    decodes_or_refuses(bytes(raw))


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_fuzz_text_values_round_trip(text: str) -> None:
    raw = sample("v1dot2_appendix_adot1.xml")
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").encode("utf-8")
    decodes_or_refuses(raw.replace(b"Homeland Security Sets Code ORANGE", escaped))


def test_a_cancel_without_info_is_carried_and_links_what_it_cancels() -> None:
    cancel = (
        f'<alert xmlns="{CAP_1_2}"><identifier>ZZ-2026-009</identifier><sender>zzqxj@henan.gov.cn</sender>'
        "<sent>2026-07-21T08:00:00+08:00</sent><status>Actual</status><msgType>Cancel</msgType>"
        "<scope>Public</scope><references>zzqxj@henan.gov.cn,ZZ-2026-001,2026-07-20T08:00:00+08:00</references>"
        "</alert>"
    ).encode()
    env = decode_one(cancel, region="410100")
    assert not env.alert.infos
    assert list(env.references) == [stable_id("cap", "zzqxj@henan.gov.cn", "ZZ-2026-001")]
    assert env.severity == pb.SEVERITY_UNSPECIFIED
    again = decode_one(ADAPTER.open("cap", ADAPTER.load_config({"region": "410100"})).encode([env]), region="410100")
    assert again == env
    plain_alert = (
        cancel.replace(b"Cancel", b"Alert").replace(b"<references>", b"<note>").replace(b"</references>", b"</note>")
    )
    assert refusal(plain_alert, region="410100").field == "alert.info"
