"""HJ 212 for the node's station server: a ``Session`` per TCP connection, sans-IO.

``feed`` frames and parses (``frame``, ``packet``); ``exchange`` turns a packet of a registered
station into envelopes and the answers HJ 212 requires:

====================  ==============================  ===============================================
station sends         envelopes                       answer
====================  ==============================  ===============================================
2011 2051 2061 2031   OBSERVATION (``observations``)  9014 when Flag asks, only once durable
2021 2041
2081 logger restart   HEARTBEAT                       9014 when Flag asks, only once durable
3019 3020 device info
1013 time request     none                            9013 when Flag asks, and a 1012 setting the
                                                      station's clock to the gateway's (Beijing time)
9011 9012 9013 9014   none                            none (they answer the gateway's commands)
anything else         none                            9011 QnRtn=2 (refused) when Flag asks
====================  ==============================  ===============================================

``refusal`` answers a refused packet with 9011 and a QnRtn naming the reason (3 password, 4
station identity, 9 CRC, 2 anything else) when the packet asked for an answer and its header could
be read; otherwise the station's own time-out and resend take over.

Versions: a packet whose Flag announces a version ``packet.VERSIONS`` does not know (HJ 212-2025
announces its own) is decoded with the 2017 rules and marked ``hj212-v<N>`` when the protocol's
``unknown_versions`` is ``"accept"`` (the default: the data segment's grammar is unchanged), and
refused (kind ``unsupported``) when it is ``"refuse"``.

A session keeps only its ``Framer`` (a buffer of at most one frame) and a reference to its
protocol: a server can hold thousands.
"""

from __future__ import annotations

import datetime as dt

from adapters.errors import AdapterError
from adapters.hj212 import codes
from adapters.hj212.errors import Hj212Error
from adapters.hj212.frame import MAX_SEGMENT_BYTES, Framer, frame
from adapters.hj212.observations import BEIJING, NAMESPACE, STATUS_STATES, observation_envelopes, status_envelope
from adapters.hj212.packet import VERSIONS, Header, Packet, encode_segment, parse_segment
from adapters.station_protocol import Exchange, Message, Station

UNKNOWN_VERSION_POLICIES = ("accept", "refuse")
ANSWER_SYSTEM = "91"  # ST of answers: system interaction

#: Error kinds (ours and the station server's) and the 9011 QnRtn that tells the station.
REFUSAL_CODES: dict[str, int] = {
    "password": codes.QN_BAD_PASSWORD,
    "station": codes.QN_BAD_MN,
    "unknown-station": codes.QN_BAD_MN,
    "crc": codes.QN_BAD_CRC,
}


def format_of(version: int) -> str:
    """The provenance format of packets of ``version``."""
    return VERSIONS.get(version, f"hj212-v{version}")


class Hj212Protocol:
    """HJ 212 (2017, and 2005 uploads) as a ``StationProtocol``; one is shared by all sessions."""

    __slots__ = ("max_message_bytes", "name", "system", "unknown_versions")

    def __init__(
        self, *, max_message_bytes: int = MAX_SEGMENT_BYTES, unknown_versions: str = "accept", system: str = NAMESPACE
    ) -> None:
        if unknown_versions not in UNKNOWN_VERSION_POLICIES:
            raise ValueError(f"unknown_versions must be one of {UNKNOWN_VERSION_POLICIES}, got {unknown_versions!r}")
        Framer(max_message_bytes)  # checks the limit (1..9999) now rather than at the first connection
        self.name = "hj212"
        #: the longest data segment accepted (HJ 212 frames announce the segment's length)
        self.max_message_bytes = max_message_bytes
        self.unknown_versions = unknown_versions
        self.system = system  # origin.system of the envelopes

    def session(self) -> Hj212Session:
        return Hj212Session(self)


class Hj212Session:
    """The HJ 212 state of one connection: a bounded receive buffer."""

    __slots__ = ("_framer", "_protocol")

    def __init__(self, protocol: Hj212Protocol) -> None:
        self._protocol = protocol
        self._framer = Framer(protocol.max_message_bytes)

    @property
    def skipped(self) -> int:
        """Bytes received outside any frame and dropped."""
        return self._framer.skipped

    @property
    def buffered(self) -> int:
        return self._framer.buffered

    def feed(self, data: bytes) -> list[Message | AdapterError]:
        out: list[Message | AdapterError] = []
        for item in self._framer.feed(data):
            if isinstance(item, AdapterError):
                out.append(item)
                continue
            try:
                packet = parse_segment(item.segment, item.offset)
                self._check_version(packet.header, item.offset)
            except Hj212Error as exc:
                out.append(exc)
                continue
            header = packet.header
            out.append(Message(station_id=header.mn, password=header.pw, content=packet, size=item.size))
        return out

    def end(self) -> list[AdapterError]:
        """The input has ended (a file, a closed connection): a frame left incomplete, refused."""
        left = self._framer.end()
        return [] if left is None else [left]

    def exchange(self, message: Message, station: Station, now: float) -> Exchange:
        packet = _packet_of(message)
        header = packet.header
        cn = header.cn
        fmt = format_of(header.version)
        system = self._protocol.system
        if cn in codes.DATA_INTERVALS:
            envelopes = observation_envelopes(packet, station, now, fmt, system)
            return Exchange(envelopes=envelopes, reply_when_durable=_data_answer(header))
        if cn in STATUS_STATES:
            envelope = status_envelope(packet, station, now, fmt, system)
            return Exchange(envelopes=[envelope], reply_when_durable=_data_answer(header))
        if cn == codes.CN_TIME_REQUEST:
            notice = answer(header, codes.CN_NOTICE_ANSWER) if header.wants_answer else b""
            return Exchange(reply_now=notice + set_time(header, now, packet.get("PolId")))
        if cn in codes.ANSWERS:
            return Exchange()
        refused = answer(header, codes.CN_REQUEST_ANSWER, ("QnRtn", str(codes.QN_REFUSED)))
        return Exchange(reply_now=refused if header.wants_answer else b"")

    def refusal(self, message: Message | None, error: AdapterError) -> bytes:
        header = None
        if message is not None and isinstance(message.content, Packet):
            header = message.content.header
        elif isinstance(error, Hj212Error):
            header = error.header
        if header is None or not header.wants_answer or header.cn in codes.ANSWERS:
            return b""
        code = REFUSAL_CODES.get(error.kind, codes.QN_REFUSED)
        return answer(header, codes.CN_REQUEST_ANSWER, ("QnRtn", str(code)))

    def _check_version(self, header: Header, offset: int) -> None:
        if header.version not in VERSIONS and self._protocol.unknown_versions == "refuse":
            known = ", ".join(f"{v} ({name})" for v, name in VERSIONS.items())
            raise Hj212Error(
                f"protocol version {header.version} (Flag={header.flag}) is not one this gateway accepts: {known}",
                field="Flag",
                offset=offset,
                kind="unsupported",
                header=header,
            )


# -- what the gateway sends ----------------------------------------------------------------------------


def answer(request: Header, cn: str, *cp: tuple[str, str]) -> bytes:
    """The answer packet ``cn`` (9011, 9012, 9013, 9014) to ``request``: its QN, PW and MN echoed."""
    flag = None if request.flag is None else request.version << 2  # the request's version, no answer asked
    header = Header(st=ANSWER_SYSTEM, cn=cn, mn=request.mn, qn=request.qn, pw=request.pw, flag=flag)
    return frame(encode_segment(header, cp))


def set_time(request: Header, now: float, pollutant: str | None = None) -> bytes:
    """The 1012 command setting the station's clock to ``now`` (Beijing time); the station answers 9011/9012."""
    moment = dt.datetime.fromtimestamp(now, BEIJING)
    qn = moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"
    flag = None if request.flag is None else request.version << 2 | 1
    header = Header(st=request.st, cn=codes.CN_SET_TIME, mn=request.mn, qn=qn, pw=request.pw, flag=flag)
    cp = ([("PolId", pollutant)] if pollutant else []) + [("SystemTime", moment.strftime("%Y%m%d%H%M%S"))]
    return frame(encode_segment(header, tuple(cp)))


def _data_answer(request: Header) -> bytes:
    return answer(request, codes.CN_DATA_ANSWER) if request.wants_answer else b""


def _packet_of(message: Message) -> Packet:
    if not isinstance(message.content, Packet):
        raise Hj212Error(f"the message holds a {type(message.content).__name__}, not an HJ 212 packet", kind="value")
    return message.content
