"""The EDXL-DE adapter: CAP alerts unwrapped from real distributions, with their routing kept."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from adapters.edxl import ADAPTER, EdxlCodec, EdxlConfig
from adapters.errors import AdapterError
from adapters.plugin import AdapterContext, stable_id
from gateway.regions import default_table
from gateway.validation import Validator
from tests.samples import data, shared

VALIDATOR = Validator(default_table())
FRENCH_HUB = [
    "edxl/ansforge-SAMU-Hub-Sante/sdisZ_to_samuA.xml",
    "edxl/ansforge-SAMU-Hub-Sante/samuB_to_samuA.xml",
    "edxl/ansforge-SAMU-Hub-Sante/valid_EDXL-DE.xml",
    "edxl/ansforge-SAMU-Hub-Sante/failing_invalid-content-valid-envelope.xml",
]


def codec(region: str = "410000") -> EdxlCodec:
    return EdxlCodec(EdxlConfig(agency="emergency", region=region), AdapterContext())


def bushfire() -> bytes:
    return data("edxl/bushfire_valid.edxlde").read_bytes()


def refusal(raw: bytes) -> AdapterError:
    with pytest.raises(AdapterError) as caught:
        codec().decode(raw)
    return caught.value


def test_manifest_is_inbound_only() -> None:
    assert ADAPTER.manifest.problems() == []
    assert ADAPTER.manifest.inbound == ("edxl-de",)
    assert ADAPTER.manifest.outbound == ()
    config = ADAPTER.load_config({})
    assert config.agency == "emergency"
    edxl = ADAPTER.open("edxl-de", config)
    with pytest.raises(AdapterError) as caught:
        edxl.encode([])
    assert caught.value.kind == "unsupported"


def test_bushfire_distribution_yields_each_alert_with_its_routing() -> None:
    envelopes = codec().decode(bushfire())
    assert len(envelopes) == 7
    assert len({env.id for env in envelopes}) == 7
    for env in envelopes:
        VALIDATOR.check(env, env.ByteSize())
        assert env.kind == pb.ALERT
        assert env.id == stable_id("cap", env.alert.sender, env.alert.identifier)
        assert env.origin.agency == "emergency"
        assert env.origin.system == "edxl-de"
        routing = env.distribution
        assert routing.version == "1.0"
        assert routing.distribution_id == "RFSuniqueID12345"
        assert routing.sender_id == "webmaster@rfs.nsw.gov.au"
        assert routing.sent.ToJsonString() == "2011-10-17T11:18:00Z"
        assert (routing.status, routing.kind) == ("Actual", "Report")
        assert routing.combined_confidentiality == "UNCLASSIFIED"
        assert routing.language == "en-AU"
        assert list(routing.target_regions) == ["AU-NSW"]
    assert envelopes[0].alert.identifier == "tag:www.rfs.nsw.gov.au2011-10-18:40500"


def test_bushfire_invalid_names_the_emptied_alert() -> None:
    raw = data("edxl/bushfire_invalid.edxlde").read_bytes()
    error = refusal(raw)
    assert error.field == "EDXLDistribution.contentObject[1].embeddedXMLContent[0].alert.identifier"
    assert error.kind == "missing"
    # with the emptied alert removed, the next fault is the urgency "Foobar"
    start = raw.index(b"<edxlde:contentObject>", raw.index(b"Information on Quinambyie") - 200)
    end = raw.index(b"</edxlde:contentObject>", start) + len(b"</edxlde:contentObject>")
    error = refusal(raw[:start] + raw[end:])
    assert error.field.endswith(".alert.info[0].urgency")
    assert "Foobar" in error.reason


ROUTED = b"""<?xml version="1.0" encoding="UTF-8"?>
<EDXLDistribution xmlns="urn:oasis:names:tc:emergency:EDXL:DE:1.0">
  <distributionID>HA-2024-001</distributionID>
  <senderID>yjt@henan.gov.cn</senderID>
  <dateTimeSent>2024-07-01T08:00:00+08:00</dateTimeSent>
  <dateTimeExpires>2024-07-02T08:00:00+08:00</dateTimeExpires>
  <distributionStatus>Exercise</distributionStatus>
  <distributionType>Report</distributionType>
  <combinedConfidentiality>UNCLASSIFIED</combinedConfidentiality>
  <language>zh-CN</language>
  <keyword><valueListUrn>urn:yiwang:topic</valueListUrn><value>flood</value><value>rain</value></keyword>
  <explicitAddress>
    <explicitAddressScheme>yiwang-node</explicitAddressScheme>
    <explicitAddressValue>zhengzhou</explicitAddressValue>
    <explicitAddressValue>kaifeng</explicitAddressValue>
  </explicitAddress>
  <targetArea>
    <polygon>34.7,113.5 34.7,113.7 34.9,113.7 34.7,113.5</polygon>
    <circle>34.75,113.62 10</circle>
    <country>CN</country>
  </targetArea>
  <contentObject>
    <xmlContent>
      <embeddedXMLContent>
        <alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
          <identifier>HA-RAIN-1</identifier>
          <sender>qxj@henan.gov.cn</sender>
          <sent>2024-07-01T08:00:00+08:00</sent>
          <status>Exercise</status>
          <msgType>Alert</msgType>
          <scope>Public</scope>
          <info>
            <category>Met</category>
            <event>Rainstorm</event>
            <urgency>Expected</urgency>
            <severity>Extreme</severity>
            <certainty>Likely</certainty>
            <area>
              <areaDesc>Zhengzhou</areaDesc>
              <geocode><valueName>GB/T 2260</valueName><value>410100</value></geocode>
            </area>
          </info>
        </alert>
      </embeddedXMLContent>
    </xmlContent>
  </contentObject>
</EDXLDistribution>
"""


def test_routing_fields_are_kept_on_the_envelope() -> None:
    (env,) = codec(region="").decode(ROUTED)
    VALIDATOR.check(env, env.ByteSize())
    routing = env.distribution
    assert [(r.name, r.value) for r in routing.recipients] == [
        ("yiwang-node", "zhengzhou"),
        ("yiwang-node", "kaifeng"),
    ]
    assert [(k.name, k.value) for k in routing.keywords] == [
        ("urn:yiwang:topic", "flood"),
        ("urn:yiwang:topic", "rain"),
    ]
    assert len(routing.target_area.polygons) == 1
    assert routing.target_area.circles[0].radius_m == 10_000.0
    assert list(routing.target_regions) == ["CN"]
    assert routing.expires.ToJsonString() == "2024-07-02T00:00:00Z"
    assert routing.status == "Exercise"
    assert env.status == pb.EXERCISE
    assert env.severity == pb.RED
    assert env.region == "410100"


def test_edxl_de_2_0_routing_and_cap_content() -> None:
    raw = (
        ROUTED.replace(b"EDXL:DE:1.0", b"EDXL:DE:2.0")
        .replace(b"EDXLDistribution", b"edxlDistribution")
        .replace(b"distributionType", b"distributionKind")
        .replace(b"<xmlContent>", b"<contentXML>")
        .replace(b"</xmlContent>", b"</contentXML>")
    )
    (env,) = codec().decode(raw)
    assert env.distribution.version == "2.0"
    assert env.distribution.kind == "Report"


@pytest.mark.parametrize("relative", FRENCH_HUB)
def test_french_health_hub_content_is_refused_naming_its_namespace(relative: str) -> None:
    error = refusal(shared(relative).read_bytes())
    assert error.kind == "unsupported"
    assert "urn:emergency:eda:1.9" in error.reason
    assert error.field == "edxlDistribution.contentObject[0].embeddedXMLContent[0]"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (ROUTED.replace(b"<distributionID>HA-2024-001</distributionID>", b""), "EDXLDistribution.distributionID"),
        (ROUTED.replace(b"2024-07-01T08:00:00+08:00</dateTimeSent>", b"soon</dateTimeSent>"), "dateTimeSent"),
        (ROUTED.replace(b"EDXL:DE:1.0", b"EDXL:DE:3.0"), "EDXL:DE:3.0"),
        (ROUTED.replace(b"<embeddedXMLContent>", b"<embeddedXMLContent><x/>"), "embeddedXMLContent[0]"),
    ],
)
def test_broken_envelopes_are_refused(raw: bytes, field: str) -> None:
    assert field in refusal(raw).field


def test_hostile_edxl_is_refused() -> None:
    error = refusal(b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + ROUTED.split(b"?>", 1)[1])
    assert error.kind == "hostile"


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(
    st.sampled_from([ROUTED, b""]),
    st.lists(st.tuples(st.integers(min_value=0, max_value=30_000), st.binary(max_size=6)), max_size=5),
    st.integers(min_value=0, max_value=30_000),
)
def test_fuzz_only_adapter_errors_escape(seed: bytes, edits: list[tuple[int, bytes]], cut: int) -> None:
    raw = bytearray(seed or bushfire())
    for position, replacement in edits:
        at = position % (len(raw) + 1)
        raw[at : at + len(replacement)] = replacement
    try:
        envelopes = codec().decode(bytes(raw[: cut % (len(raw) + 1) or len(raw)]))
    except AdapterError:
        return
    for env in envelopes:
        VALIDATOR.check(env, env.ByteSize())
