"""TAK protocol version 1 (protobuf): the codec, the stream and datagram framing, fuzzed input, and a
real node's TAK listener negotiating it with real TCP clients.

The protobuf side is checked against the XML side: a version 1 message must read to the same event
and the same envelope as the same event in XML, and what the node sends as XML must be sent, to a
client that speaks version 1, as the messages that read back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.tak import takmessage_pb2 as tak
from yiwang.v1 import envelope_pb2 as pb

from adapters import safexml
from adapters.cot import CotConfig, CotEvent, StreamDecoder, encode_ping, parse_event, takproto, to_envelope
from adapters.cot.framing import encode_varint, read_datagram, read_varint
from adapters.errors import AdapterError
from adapters.plugin import AdapterContext
from gateway.client import GatewayClient
from gateway.node import Node
from gateway.pki import Authority, Role
from gateway.regions import default_table
from gateway.tls import ClientTls
from gateway.validation import Validator
from tests.conftest import TRUST_DOMAIN, NodeFactory, eventually, running_tls_node
from tests.samples import DATA
from tests.test_tak import TAK, cot_id, position, sample, stored, unit_event

CONTEXT = AdapterContext()
VALIDATOR = Validator(default_table())
CONFIG = CotConfig(agency="fire_rescue", region="410100")
SAMPLES = sorted((DATA / "cot").glob("*.xml"))


def event_xml(uid: str = "unit-1", detail: str = "", time_: str = "2026-05-01T08:00:00.000Z") -> bytes:
    return (
        f'<event version="2.0" uid="{uid}" type="a-f-G-U-C" how="m-g" time="{time_}" start="{time_}" '
        f'stale="2026-05-01T08:05:00.000Z"><point lat="34.75" lon="113.62" hae="110.5" ce="5.0" le="9999999.0"/>'
        f"<detail>{detail}</detail></event>"
    ).encode()


FULL_DETAIL = (
    '<contact callsign="中原1" endpoint="*:-1:stcp"/><__group name="Cyan" role="Team Member"/>'
    '<precisionlocation geopointsrc="GPS" altsrc="GPS"/><status battery="87"/>'
    '<takv device="PIXEL" platform="ATAK-CIV" os="34" version="5.1"/><track speed="1.5" course="90.0"/>'
    '<remarks>line one&#13;&#10;line &lt;two&gt; &amp; "three"</remarks><link uid="ANDROID-9" relation="p-p" '
    'type="a-f-G-U-C" parent_callsign="父"/><color argb="-65536"/><usericon iconsetpath="a/b.png"/>'
)


def message(**event_fields: object) -> tak.TakMessage:
    """A TakMessage whose event has the given fields over a valid position."""
    fields: dict[str, object] = {
        "type": "a-f-G-U-C",
        "uid": "unit-1",
        "how": "m-g",
        "sendTime": 1_777_622_400_000,
        "startTime": 1_777_622_400_000,
        "staleTime": 1_777_622_700_000,
        "lat": 34.75,
        "lon": 113.62,
        "hae": 110.5,
        "ce": 5.0,
        "le": 9999999.0,
    }
    fields.update(event_fields)
    return tak.TakMessage(cotEvent=tak.CotEvent(**fields))  # type: ignore[arg-type]


def as_mapped(stored_envelope: pb.Envelope) -> pb.Envelope:
    """A stored envelope without the hop the node recorded: what the codec mapped."""
    copy = pb.Envelope()
    copy.CopyFrom(stored_envelope)
    del copy.provenance.hops[:]
    return copy


def envelope_or_reason(event: CotEvent) -> pb.Envelope | str:
    try:
        return to_envelope(event, CONFIG, CONTEXT, VALIDATOR)
    except AdapterError as exc:
        return f"{exc.kind}: {exc}"


# -- the messages ---------------------------------------------------------------------------------


def test_the_field_numbers_are_the_tak_protocols() -> None:
    def numbers(descriptor: object) -> dict[str, int]:
        return {field.name: field.number for field in descriptor.fields}  # type: ignore[attr-defined]

    assert numbers(tak.TakMessage.DESCRIPTOR) == {"takControl": 1, "cotEvent": 2}
    assert numbers(tak.TakControl.DESCRIPTOR) == {"minProtoVersion": 1, "maxProtoVersion": 2, "contactUid": 3}
    event_names = ["type", "access", "qos", "opex", "uid", "sendTime", "startTime", "staleTime", "how", "lat", "lon",
                   "hae", "ce", "le", "detail"]  # fmt: skip
    assert numbers(tak.CotEvent.DESCRIPTOR) == {name: k for k, name in enumerate(event_names, 1)}
    detail_names = ["xmlDetail", "contact", "group", "precisionLocation", "status", "takv", "track"]
    assert numbers(tak.Detail.DESCRIPTOR) == {name: k for k, name in enumerate(detail_names, 1)}
    assert numbers(tak.Contact.DESCRIPTOR) == {"endpoint": 1, "callsign": 2}
    assert numbers(tak.Group.DESCRIPTOR) == {"name": 1, "role": 2}
    assert numbers(tak.PrecisionLocation.DESCRIPTOR) == {"geopointsrc": 1, "altsrc": 2}
    assert numbers(tak.Status.DESCRIPTOR) == {"battery": 1}
    assert numbers(tak.Takv.DESCRIPTOR) == {"device": 1, "platform": 2, "os": 3, "version": 4}
    assert numbers(tak.Track.DESCRIPTOR) == {"speed": 1, "course": 2}
    # and the wire types: times are varints, the point doubles (fixed 64-bit)
    raw = tak.CotEvent(sendTime=1, lat=1.0, type="t").SerializeToString()
    assert raw == b"\x0a\x01t" + b"\x30\x01" + b"\x51" + bytes.fromhex("000000000000f03f")


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: path.name)
def test_every_sample_reads_the_same_in_protobuf_as_in_xml(path: Path) -> None:
    document = path.read_bytes()
    event = parse_event(document)
    payload = takproto.encode_event(document)
    read = takproto.parse_message(payload)
    assert read == event
    assert read is not None
    assert envelope_or_reason(read) == envelope_or_reason(event)


def test_typed_detail_messages_carry_their_elements_and_the_rest_is_xml() -> None:
    document = event_xml(detail=FULL_DETAIL)
    decoded = tak.TakMessage.FromString(takproto.encode_event(document))
    detail = decoded.cotEvent.detail
    assert (detail.contact.callsign, detail.contact.endpoint) == ("中原1", "*:-1:stcp")
    assert (detail.group.name, detail.group.role) == ("Cyan", "Team Member")
    assert (detail.precisionLocation.geopointsrc, detail.precisionLocation.altsrc) == ("GPS", "GPS")
    assert detail.status.battery == 87
    assert (detail.takv.device, detail.takv.platform, detail.takv.os, detail.takv.version) == (
        "PIXEL", "ATAK-CIV", "34", "5.1",
    )  # fmt: skip
    assert (detail.track.speed, detail.track.course) == (1.5, 90.0)
    for typed in ("<contact", "<__group", "<precisionlocation", "<status", "<takv", "<track"):
        assert typed not in detail.xmlDetail
    assert detail.xmlDetail.startswith('<remarks>line one&#13;\nline &lt;two&gt; &amp; "three"</remarks><link ')
    assert (decoded.cotEvent.sendTime, decoded.cotEvent.staleTime) == (1_777_622_400_000, 1_777_622_700_000)
    assert decoded.cotEvent.le == 9999999.0
    event = parse_event(document)
    assert event.detail.remarks == 'line one\r\nline <two> & "three"'
    read = takproto.parse_message(decoded.SerializeToString())
    assert read == event
    assert read is not None
    assert envelope_or_reason(read) == envelope_or_reason(event)


def test_an_element_with_other_attributes_than_its_message_stays_xml() -> None:
    document = event_xml(detail='<contact callsign="A" phone="110"/><track speed="fast" course="1"/><takv os="1"/>')
    detail = tak.TakMessage.FromString(takproto.encode_event(document)).cotEvent.detail
    assert not detail.HasField("contact")
    assert not detail.HasField("track")
    assert not detail.HasField("takv")
    assert detail.xmlDetail == '<contact callsign="A" phone="110"/><track speed="fast" course="1"/><takv os="1"/>'


def test_an_element_in_both_forms_is_read_from_its_xml() -> None:
    sent = message()
    sent.cotEvent.detail.contact.callsign = "typed"
    sent.cotEvent.detail.track.speed = 3.0
    sent.cotEvent.detail.xmlDetail = '<contact callsign="from xml"/>'
    event = takproto.parse_message(sent.SerializeToString())
    assert event is not None
    assert event.detail.callsign == "from xml"
    assert event.detail.speed == 3.0


def test_a_message_is_refused_for_what_its_xml_would_be_refused_for() -> None:
    cases = [
        (message(uid=""), "event.uid", "missing"),
        (message(sendTime=0), "event.time", "missing"),
        (message(sendTime=2**64 - 1), "event.time", "value"),
        (message(lat=float("nan")), "event.point.lat", "value"),
        (message(lat=91.0), "event.point.lat", "value"),
        (message(type="not a type"), "event.type", "value"),
    ]
    for sent, path, kind in cases:
        with pytest.raises(AdapterError) as caught:
            takproto.parse_message(sent.SerializeToString())
        assert (caught.value.field, caught.value.kind) == (path, kind), caught.value


@pytest.mark.parametrize(
    ("xml_detail", "kind"),
    [
        ('<!DOCTYPE d [<!ENTITY e "boom">]><remarks>&e;</remarks>', "xml"),  # a DTD cannot stand inside <detail>
        ("<remarks>&undefined;</remarks>", "xml"),
        ("</detail><detail>", "xml"),
        ('<x:include xmlns:x="http://www.w3.org/2001/XInclude" href="file:///etc/passwd"/>', "hostile"),
        ("<remarks>unclosed", "xml"),
    ],
)
def test_xml_detail_is_read_by_the_hardened_parser(xml_detail: str, kind: str) -> None:
    sent = message()
    sent.cotEvent.detail.xmlDetail = xml_detail
    with pytest.raises(AdapterError) as caught:
        takproto.parse_message(sent.SerializeToString())
    assert (caught.value.field, caught.value.kind) == ("event.detail.xmlDetail", kind), caught.value


def test_bytes_that_are_not_a_takmessage_are_refused_by_name() -> None:
    for garbage in (b"\xff\xff\xff", b"\x12\x05ab", b"\x12\x03\x2a\x01\xff"):  # the last: a uid not UTF-8
        with pytest.raises(AdapterError, match="not a TAK protocol version 1 message") as caught:
            takproto.parse_message(garbage)
        assert caught.value.kind == "protobuf"


def test_a_message_with_only_control_information_carries_no_event() -> None:
    control = tak.TakMessage(takControl=tak.TakControl(minProtoVersion=1, maxProtoVersion=1, contactUid="A"))
    assert takproto.parse_message(control.SerializeToString()) is None
    assert takproto.parse_message(b"") is None


def test_negotiation_events_say_what_they_mean() -> None:
    support = safexml.parse(takproto.protocol_support("srv", 1_777_622_400.0))
    assert support.get("type") == "t-x-takp-v"
    assert takproto.supported_versions(support) == [1]
    request = safexml.parse(takproto.protocol_request("srv", 1_777_622_400.0))
    assert (request.get("type"), request.get("uid"), takproto.requested_version(request)) == ("t-x-takp-q", "srv", 1)
    for accepted in (True, False):
        response = safexml.parse(takproto.protocol_response("srv", 1_777_622_400.0, accepted=accepted))
        assert response.get("type") == "t-x-takp-r"
        assert takproto.response_accepted(response) is accepted
    assert parse_event(takproto.protocol_support("srv", 1_777_622_400.0)).type == "t-x-takp-v"


# -- framing ----------------------------------------------------------------------------------------


def frames(*payloads: bytes) -> bytes:
    return b"".join(takproto.stream_frame(payload) for payload in payloads)


def read_stream(chunks: list[bytes], *, switch_after: bytes | None = None, detect: bool = False) -> list[str]:
    """What a decoder fed ``chunks`` gives (payloads as 'v<version>:<hex>', errors as 'kind@offset'),
    switching to version 1 right after the XML event ``switch_after`` as a server would."""
    decoder = StreamDecoder(4096, detect_protobuf=detect)
    out: list[str] = []
    for chunk in chunks:
        decoder.receive(chunk)
        while (item := decoder.next_item()) is not None:
            if isinstance(item, AdapterError):
                out.append(f"{item.kind}@{item.offset}")
                continue
            out.append(f"v{decoder.version}:{item.hex()}")
            if item == switch_after:
                decoder.use_protobuf()
    out += [f"{error.kind}@{error.offset}" for error in decoder.end()]
    return out


MESSAGES = [takproto.encode_event(event_xml(uid=f"u{k}", detail=FULL_DETAIL * (k + 1))) for k in range(3)]
REQUEST = takproto.protocol_request("srv", 1_777_622_400.0)
SWITCHING = event_xml(uid="before") + REQUEST + b"\n" + frames(*MESSAGES)
SWITCHED = [f"v0:{event_xml(uid='before').hex()}", f"v0:{REQUEST.hex()}"] + [f"v1:{m.hex()}" for m in MESSAGES]


def test_a_stream_switches_to_protobuf_after_the_negotiation_however_it_is_split() -> None:
    assert all(len(m) > 128 for m in MESSAGES)  # lengths of two varint bytes, to be split too
    assert read_stream([SWITCHING], switch_after=REQUEST) == SWITCHED
    assert read_stream([SWITCHING[i : i + 1] for i in range(len(SWITCHING))], switch_after=REQUEST) == SWITCHED
    rng = random.Random(7)
    for _ in range(100):
        cuts = sorted(rng.sample(range(1, len(SWITCHING)), rng.randrange(1, 30)))
        chunks = [SWITCHING[a:b] for a, b in zip([0, *cuts], [*cuts, len(SWITCHING)], strict=True)]
        assert read_stream(chunks, switch_after=REQUEST) == SWITCHED


def test_a_stream_that_starts_with_the_magic_byte_is_protobuf_when_told_to_look() -> None:
    stream = frames(*MESSAGES)
    expected = [f"v1:{m.hex()}" for m in MESSAGES]
    assert read_stream([stream], detect=True) == expected
    assert read_stream([stream[i : i + 1] for i in range(len(stream))], detect=True) == expected
    assert read_stream([stream])[0] == "unsupported@0"  # without looking (a capture read as XML)


def test_an_oversized_message_is_skipped_by_its_length_and_the_next_one_read() -> None:
    big = b"\x0a" + encode_varint(6000) + b"x" * 6000
    stream = frames(MESSAGES[0], big, MESSAGES[1])
    oversized_at = len(frames(MESSAGES[0]))
    expected = [f"v1:{MESSAGES[0].hex()}", f"size@{oversized_at}", f"v1:{MESSAGES[1].hex()}"]
    assert read_stream([stream], detect=True) == expected
    assert read_stream([stream[i : i + 5] for i in range(0, len(stream), 5)], detect=True) == expected
    decoder = StreamDecoder(4096, detect_protobuf=True)
    (_, refusal, _) = decoder.feed(stream)
    assert isinstance(refusal, AdapterError)
    assert "6003 bytes, more than the limit of 4096; skipped" in str(refusal)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (b"<event/>", "byte 0x3c where a TAK protocol version 1 message must start with 0xbf"),
        (b"\xbf" + b"\xff" * 11, "a message length that is not a varint (more than 10 bytes)"),
        (b"\xbf" + encode_varint(1 << 40), "a message length of 1099511627776 bytes, beyond any TAK message"),
    ],
)
def test_a_stream_out_of_step_is_given_up_with_the_reason(bad: bytes, words: str) -> None:
    decoder = StreamDecoder(4096, detect_protobuf=True)
    stream = frames(MESSAGES[0]) + bad + frames(MESSAGES[1])
    items = decoder.feed(stream)
    assert items[0] == MESSAGES[0]
    (lost,) = items[1:]
    assert isinstance(lost, AdapterError)
    assert lost.kind == "framing"
    assert lost.offset == len(frames(MESSAGES[0]))
    assert words in str(lost)
    assert "the connection must be closed" in str(lost)
    assert decoder.lost
    assert decoder.feed(frames(MESSAGES[2])) == []  # nothing more is read
    assert decoder.end() == []
    assert decoder.buffered == 0


def test_a_stream_that_ends_inside_a_message_says_so() -> None:
    stream = frames(MESSAGES[0], MESSAGES[1])[:-10]
    assert read_stream([stream], detect=True)[-1] == f"truncated@{len(frames(MESSAGES[0]))}"
    in_the_length = frames(MESSAGES[0], MESSAGES[1])[: len(frames(MESSAGES[0])) + 2]  # 0xbf, a varint's first byte
    assert read_stream([in_the_length], detect=True)[-1] == f"truncated@{len(frames(MESSAGES[0]))}"


def test_a_datagram_is_xml_or_the_mesh_form_of_version_1() -> None:
    payload = MESSAGES[0]
    assert read_datagram(takproto.mesh_datagram(payload)) == (1, payload)
    assert read_datagram(event_xml()) == (0, event_xml())
    for datagram, kind, words in (
        (b"\xbf\x02\xbf" + payload, "unsupported", "TAK protocol version 2 is not read"),
        (b"\xbf\x01" + payload, "framing", "second 0xbf"),
        (b"\xbf\x81", "truncated", "ends inside its TAK mesh header"),
        (b"\xbf" + b"\xff" * 12, "framing", "not a varint"),
        (b"\xbf\x01\xbf" + b"x" * 5000, "size", "more than the limit of 4096"),
    ):
        with pytest.raises(AdapterError, match=words) as caught:
            read_datagram(datagram, 4096)
        assert caught.value.kind == kind


# -- fuzzing ----------------------------------------------------------------------------------------


def read_everything(stream: bytes, chunk: int) -> list[bytes | str]:
    """Every payload of a stream read as version 1, each decoded, errors as text: only AdapterError
    may come out of framing or decoding."""
    decoder = StreamDecoder(4096, detect_protobuf=True)
    out: list[bytes | str] = []
    items: list[bytes | AdapterError] = []
    for at in range(0, len(stream), chunk):
        items += decoder.feed(stream[at : at + chunk])
    items += decoder.end()
    for item in items:
        if isinstance(item, AdapterError):
            out.append(f"{item.kind}@{item.offset}: {item}")
            continue
        out.append(item)
        with contextlib.suppress(AdapterError):
            event = takproto.parse_message(item)
            if event is not None:
                envelope_or_reason(event)
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(1, 50))
def test_random_bytes_as_a_protobuf_stream(raw: bytes, chunk: int) -> None:
    stream = b"\xbf" + raw
    assert read_everything(stream, chunk) == read_everything(stream, len(stream))


VALID = tak.TakMessage.FromString(takproto.encode_event(event_xml(detail=FULL_DETAIL))).SerializeToString()


@settings(max_examples=400)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_valid_messages(flips: list[tuple[int, int]]) -> None:
    raw = bytearray(VALID)
    for at, value in flips:
        raw[at] = value
    stream = frames(bytes(raw), VALID)
    items = read_everything(stream, 3)
    assert items == read_everything(stream, len(stream))
    assert items[-1] == VALID  # one bad message costs only itself


@settings(max_examples=300)
@given(
    uid=st.text(max_size=30),
    cot_type=st.text(max_size=20),
    times=st.tuples(*[st.integers(0, 2**64 - 1)] * 3),
    point=st.tuples(*[st.floats(allow_nan=True, allow_infinity=True)] * 5),
    xml_detail=st.text(max_size=80),
    callsign=st.text(max_size=20),
    speed=st.floats(allow_nan=True),
    battery=st.integers(0, 2**32 - 1),
)
def test_arbitrary_field_values(
    uid: str,
    cot_type: str,
    times: tuple[int, int, int],
    point: tuple[float, float, float, float, float],
    xml_detail: str,
    callsign: str,
    speed: float,
    battery: int,
) -> None:
    sent = tak.TakMessage()
    event = sent.cotEvent
    event.uid, event.type = uid, cot_type
    event.sendTime, event.startTime, event.staleTime = times
    event.lat, event.lon, event.hae, event.ce, event.le = point
    event.detail.xmlDetail = xml_detail
    event.detail.contact.callsign = callsign
    event.detail.track.speed = speed
    event.detail.status.battery = battery
    try:
        read = takproto.parse_message(sent.SerializeToString())
    except AdapterError:
        return
    assert read is not None
    envelope_or_reason(read)


@given(st.integers(0, 2**64 - 1))
def test_varints_read_back(value: int) -> None:
    encoded = encode_varint(value)
    assert read_varint(encoded, 0) == (value, len(encoded))
    assert read_varint(encoded[:-1], 0) is None


# -- the node's TAK listener ------------------------------------------------------------------------


class ProtoClient:
    """A TAK client's TCP connection that speaks version 1 once agreed (or from its first byte)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = StreamDecoder()
        self.version = 0  # what this client sends
        self.received: list[tuple[int, CotEvent]] = []  # (version it came in, event)
        self.server_uid = ""

    @classmethod
    async def connect(cls, node: Node, tls: ssl.SSLContext | None = None) -> ProtoClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.tak_ports["tcp"], ssl=tls)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send_xml(self, document: bytes) -> None:
        self.writer.write(document)
        await self.writer.drain()

    async def send_event(self, document: bytes, *, split: int = 0) -> None:
        """Sends an XML event as a version 1 message (in writes of ``split`` bytes, if given)."""
        data = takproto.stream_frame(takproto.encode_event(document))
        for at in range(0, len(data), split or len(data)):
            self.writer.write(data[at : at + (split or len(data))])
            await self.writer.drain()

    def use_protobuf(self) -> None:
        """After a negotiation: both directions are version 1."""
        self.version = 1
        self.decoder.use_protobuf()

    async def until(self, predicate: object, timeout: float = 10.0) -> None:
        """Reads until ``predicate(self)`` holds; answers nothing, but follows a negotiation's answer."""
        assert callable(predicate)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"not seen in {timeout} s; received {[e.uid for _, e in self.received][:20]}")
            data = await asyncio.wait_for(self.reader.read(1 << 16), left)
            if not data:
                raise AssertionError("the server closed the connection")
            self.decoder.receive(data)
            while (item := self.decoder.next_item()) is not None:
                assert not isinstance(item, AdapterError), item
                version = self.decoder.version
                event = parse_event(item) if version == 0 else takproto.parse_message(item)
                assert event is not None
                self.received.append((version, event))
                if event.type == takproto.SUPPORT_TYPE:
                    self.server_uid = event.uid
                if event.type == takproto.RESPONSE_TYPE and version == 0:
                    root = safexml.parse(item)
                    if takproto.response_accepted(root):
                        self.use_protobuf()

    def uids(self, version: int) -> set[str]:
        return {event.uid for v, event in self.received if v == version}

    async def negotiate(self) -> None:
        await self.until(lambda c: bool(c.server_uid))
        await self.send_xml(takproto.protocol_request(self.server_uid, time.time()) + b"\n")
        await self.until(lambda c: c.version == 1)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def tak_node(start_node: NodeFactory) -> Node:
    return await start_node(tak=TAK)


async def test_a_client_negotiates_version_1_and_its_events_land_as_the_same_envelopes(tak_node: Node) -> None:
    client = await ProtoClient.connect(tak_node)
    await client.until(lambda c: bool(c.server_uid))
    (announce_version, announce) = client.received[0]
    assert (announce_version, announce.type) == (0, "t-x-takp-v")  # the first thing a client is sent
    await client.send_xml(takproto.protocol_request(client.server_uid, time.time()))
    await client.until(lambda c: c.version == 1)
    response = next(event for _, event in client.received if event.type == "t-x-takp-r")
    assert response.uid == client.server_uid
    documents = [unit_event(f"ANDROID-P{k}", callsign=f"豫{k}") for k in range(3)]
    for k, document in enumerate(documents):
        await client.send_event(document, split=k * 7)  # whole, then in pieces of 7 and 14 bytes
    envelopes = await stored(tak_node, [cot_id(d) for d in documents])
    await client.send_event(encode_ping("ANDROID-P0", time.time()))
    await client.until(lambda c: "takPong" in c.uids(1))  # answered in version 1
    await client.close()
    for document in documents:
        expected = to_envelope(parse_event(document), CotConfig(region="410000"), CONTEXT, VALIDATOR)
        assert as_mapped(envelopes[cot_id(document)]) == expected
    await eventually(
        lambda: sample(tak_node, "yiwang_tak_events_in_total", {"transport": "tcp", "outcome": "stored"}) == 3
    )
    assert sample(tak_node, "yiwang_tak_events_in_total", {"transport": "tcp", "outcome": "control"}) == 1


async def test_a_request_for_a_version_the_server_does_not_speak_is_declined(tak_node: Node) -> None:
    client = await ProtoClient.connect(tak_node)
    await client.until(lambda c: bool(c.server_uid))
    await client.send_xml(takproto.protocol_request(client.server_uid, time.time(), version=2))
    await client.until(lambda c: any(e.type == "t-x-takp-r" for _, e in c.received))
    assert client.version == 0
    document = unit_event("ANDROID-STILL-XML")
    await client.send_xml(document)  # the connection goes on in XML
    await stored(tak_node, [cot_id(document)])
    await client.close()


async def test_protobuf_in_goes_out_as_xml_to_xml_clients_and_as_protobuf_to_protobuf_clients(tak_node: Node) -> None:
    sender = await ProtoClient.connect(tak_node)  # configured for protobuf: its first byte is 0xbf
    xml_listener = await ProtoClient.connect(tak_node)
    proto_listener = await ProtoClient.connect(tak_node)
    await proto_listener.negotiate()
    await xml_listener.until(lambda c: bool(c.server_uid))
    assert tak_node.tak is not None
    await eventually(lambda: tak_node.tak is not None and len(tak_node.tak.connections) == 3)
    document = unit_event("ANDROID-PROTO-IN", callsign="中原消防")
    await sender.send_event(document, split=5)
    unit = position("豫A-GRPC-1")
    async with GatewayClient(tak_node.grpc_target, insecure=True) as grpc_client:
        await grpc_client.publish([unit])
    wanted = {"ANDROID-PROTO-IN", "豫A-GRPC-1"}
    await xml_listener.until(lambda c: wanted <= c.uids(0))
    await proto_listener.until(lambda c: wanted <= c.uids(1))
    await sender.until(lambda c: wanted <= c.uids(0))  # it did not negotiate: it is sent XML
    for client in (sender, xml_listener, proto_listener):
        await client.close()
    assert not wanted & (xml_listener.uids(1) | proto_listener.uids(0))
    sent = parse_event(document)
    for client in (xml_listener, proto_listener, sender):
        (echo,) = [event for _, event in client.received if event.uid == "ANDROID-PROTO-IN"]
        assert (echo.type, echo.how, echo.time, echo.stale) == (sent.type, sent.how, sent.time, sent.stale)
        assert (echo.point, echo.detail.callsign, echo.detail.speed) == (sent.point, "中原消防", 1.5)
    xml_seen = next(e for _, e in xml_listener.received if e.uid == "豫A-GRPC-1")
    proto_seen = next(e for _, e in proto_listener.received if e.uid == "豫A-GRPC-1")
    # the same event, its times to the millisecond (version 1 carries no finer time)
    assert (proto_seen.uid, proto_seen.type, proto_seen.how) == (xml_seen.uid, xml_seen.type, xml_seen.how)
    assert (proto_seen.point, proto_seen.detail) == (xml_seen.point, xml_seen.detail)
    for proto_time, xml_time in ((proto_seen.time, xml_seen.time), (proto_seen.stale, xml_seen.stale)):
        assert proto_time is not None
        assert xml_time is not None
        assert proto_time.ToNanoseconds() == xml_time.ToNanoseconds() // 1_000_000 * 1_000_000


async def test_a_stream_out_of_step_is_closed_and_the_node_serves_the_others(tak_node: Node) -> None:
    broken = await ProtoClient.connect(tak_node)
    await broken.negotiate()
    await broken.send_xml(b"\xbf\x05abc" + b"<event")  # a length, then not the message's next frame
    await broken.send_xml(b"\x00" * 5)
    assert await asyncio.wait_for(broken.reader.read(), 10) == b""
    await broken.close()
    await eventually(lambda: sample(tak_node, "yiwang_tak_clients_dropped_total", {"reason": "framing"}) == 1)
    good = await ProtoClient.connect(tak_node)
    await good.negotiate()
    document = unit_event("ANDROID-AFTER-LOST")
    await good.send_event(document)
    await stored(tak_node, [cot_id(document)])
    await good.close()


async def test_a_mesh_datagram_of_version_1_lands_in_the_log(tak_node: Node) -> None:
    document = unit_event("ATAK-MESH-1")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", tak_node.tak_ports["udp"])
    )
    control = tak.TakMessage(takControl=tak.TakControl(minProtoVersion=1, maxProtoVersion=1, contactUid="ATAK-MESH-1"))
    try:
        transport.sendto(takproto.mesh_datagram(control.SerializeToString()))
        transport.sendto(b"\xbf\x01\xbf\xff\xff")  # not a TakMessage
        transport.sendto(takproto.mesh_datagram(takproto.encode_event(document)))
        env = (await stored(tak_node, [cot_id(document)]))[cot_id(document)]
    finally:
        transport.close()
    assert env.position.unit_id == "ATAK-MESH-1"
    assert as_mapped(env) == to_envelope(parse_event(document), CotConfig(region="410000"), CONTEXT, VALIDATOR)
    udp = {"transport": "udp"}
    await eventually(lambda: sample(tak_node, "yiwang_tak_events_in_total", {**udp, "outcome": "control"}) == 1)
    await eventually(lambda: sample(tak_node, "yiwang_tak_refused_total", {**udp, "reason": "protobuf"}) == 1)


async def test_each_live_event_is_encoded_once_for_all_protobuf_clients(
    tak_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    clients = [await ProtoClient.connect(tak_node) for _ in range(3)]
    for client in clients:
        await client.negotiate()
    encoded: list[bytes] = []
    encode = takproto.encode_event

    def counting(document: bytes) -> bytes:
        encoded.append(document)
        return encode(document)

    monkeypatch.setattr(takproto, "encode_event", counting)
    units = [position(f"豫A-ONCE-{k}") for k in range(3)]
    async with GatewayClient(tak_node.grpc_target, insecure=True) as grpc_client:
        await grpc_client.publish(units)
    for client in clients:
        await client.until(lambda c: {u.position.unit_id for u in units} <= c.uids(1))
        await client.close()
    assert len(encoded) == len(units)


async def test_a_certified_client_negotiates_version_1_over_mutual_tls(tmp_path: Path) -> None:
    """As ATAK does on a TAK server's TLS port (8089): XML first, then protobuf once agreed."""
    ca = Authority.init(tmp_path / "pki", trust_domain=TRUST_DOMAIN)
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.EDGE, "410102", "engine-9", "fire_rescue"))
    issued = ca.dir / "issued"
    certified = ClientTls(ca.dir / "ca.pem", issued / "engine-9.chain.pem", issued / "engine-9.key").ssl_context()
    async with running_tls_node(ca, tmp_path / "data", tak={"listen": "127.0.0.1:0", "tls": True}) as node:
        client = await ProtoClient.connect(node, certified)
        await client.negotiate()
        document = unit_event("ANDROID-TLS-1")
        await client.send_event(document, split=11)
        await stored(node, [cot_id(document)])
        await client.until(lambda c: "ANDROID-TLS-1" in c.uids(1))  # its own event back, in version 1
        await client.close()
