"""SL 651-2014 for the node's station server: sessions, observations and the centre's replies.

One ``Sl651Session`` per TCP connection (``adapters.station_protocol``). ``feed`` turns bytes into
messages: frames are found and checked (``frame.FrameReader``), multi-packet (M3) messages are
joined, and bodies are decoded (``report``). ``exchange`` turns a registered station's message
into envelopes and the replies the centre owes it:

- **Reports** (30H test, 31H even-interval, 32H timed, 33H added, 34H hourly) become one
  OBSERVATION envelope each (more when a report holds over ``MAX_MEASUREMENTS`` readings); the
  station's answers that carry readings (37H, 38H, 3AH, 44H) too. A test report is marked
  ``status = TEST``. Reports with no reading left (all missing) become no envelope.
- **Acknowledgement.** Reports 30H..36H are confirmed with a downlink frame of the same function
  code and serial number, the centre's time, and end code ``ack_end``: ESC (transmission over,
  stay online: the default, as our stations keep their TCP link) or EOT (transmission over, leave).
  It is sent only once the envelopes are in the log (``reply_when_durable``); at once when there
  are none. A frame ending in ENQ asks for an answer and gets one whatever its function.
- **Link maintenance** (2FH) is not answered: SL 651-2014 has the centre stay silent to it (unless
  it ends in ENQ). It makes no envelope.
- **Multi-packet** (M3, SYN frames): each packet but the last is answered at once with ACK (go on)
  and the packet's count/number; the last, once the joined message is stored, with ``ack_end``. A
  packet sent again is answered again and not joined twice. A packet out of order is refused with
  NAK naming the packet expected. Picture packets (36H) are counted, not kept.
- **Refusals** (``refusal``) are NAK frames (send again) for frames whose header could be read:
  bad CRC, bad length, bad body, a log that did not store the envelopes. Messages of unknown
  stations or with a wrong password, downlink frames and noise get no answer.
- A frame ending in EOT ends the session: ``Exchange.close``.

Envelope ids are ``stable_id("sl651", station, function, serial, observation time)`` (with ``/k``
for the k-th envelope of a long report), so a report sent twice is stored once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.plugin import stable_id
from adapters.sl651 import elements as el
from adapters.sl651.frame import (
    ACK,
    ENQ,
    EOT,
    ESC,
    MAX_FRAME_BYTES,
    NAK,
    Frame,
    FrameError,
    FrameReader,
    Header,
    encode_frame,
)
from adapters.sl651.report import (
    BEIJING,
    HOURLY,
    LINK,
    PICTURE_REPORT,
    READINGS,
    TEST,
    Report,
    parse_report,
    time_bcd,
)
from adapters.station_protocol import Exchange, Message, Station
from gateway.routing import ALARM_ATTRIBUTE

NAME: Final = "sl651"
ORIGINAL_FORMAT: Final = "sl651-2014"

#: Reports the centre confirms.
ACKNOWLEDGED: Final = frozenset(range(0x30, 0x37))
#: Messages whose readings become OBSERVATION envelopes.
OBSERVATIONS: Final = READINGS
#: Most measurements per envelope (the validator allows 1024).
MAX_MEASUREMENTS: Final = 1000
#: Most bytes of a multi-packet message kept while its packets arrive (pictures are not kept).
MAX_JOINED_BYTES: Final = 32 * 1024
#: Bytes of a picture message kept: its serial, times and station, before the picture data.
PICTURE_HEAD_BYTES: Final = 64
#: How far in the future a station's clock may be before its report is refused.
MAX_CLOCK_SKEW_S: Final = 600.0
#: Kinds of refusal that get no NAK: the station is not ours, or there is nothing to answer.
SILENT: Final = frozenset({"unknown-station", "password", "garbage", "direction"})


@dataclass(frozen=True, slots=True)
class Received:
    """``Message.content`` of this protocol: the (last) frame and what the message carries."""

    frame: Frame
    serial: int  # the message's serial number
    report: Report | None  # None for a packet that is not the last, or one sent again
    last: bool = True  # the message is complete (a single frame, or the last packet)
    packets: int = 1


class _Joining:
    """The packets of one multi-packet message received so far (at most one per session)."""

    __slots__ = ("data", "expected", "function", "picture_bytes", "serial", "station", "total")

    def __init__(self, station: str, function: int, total: int, serial: int) -> None:
        self.station = station
        self.function = function
        self.total = total
        self.serial = serial
        self.expected = 1  # the next packet number; total + 1 once complete
        self.data = bytearray()
        self.picture_bytes = 0


@dataclass(frozen=True)
class Sl651Protocol:
    """SL 651-2014 as the station server speaks it (``StationProtocol``)."""

    ack_end: int = ESC  # how a report is confirmed: ESC (stay online) or EOT (leave)
    clock: Callable[[], float] = field(default=time.time)  # for the time in refusals
    name: str = NAME
    max_message_bytes: int = MAX_FRAME_BYTES

    def __post_init__(self) -> None:
        if self.ack_end not in (ESC, EOT):
            raise ValueError(f"ack_end must be ESC (1BH) or EOT (04H), got {self.ack_end:02X}H")

    def session(self) -> Sl651Session:
        return Sl651Session(self)


class Sl651Session:
    """The protocol state of one connection: a bounded frame buffer and one message being joined."""

    __slots__ = ("_joining", "_protocol", "_reader")

    def __init__(self, protocol: Sl651Protocol) -> None:
        self._protocol = protocol
        self._reader = FrameReader()
        self._joining: _Joining | None = None

    def feed(self, data: bytes) -> list[Message | AdapterError]:
        return [item if isinstance(item, FrameError) else self.accept(item) for item in self._reader.feed(data)]

    def accept(self, frame: Frame) -> Message | FrameError:
        """The message of one checked frame (joining packets), or why it is refused."""
        header = frame.header
        if not header.up:
            return FrameError("a downlink frame (direction 8) came from a station", kind="direction")
        if header.packet is not None:
            return self._packet(frame)
        serial = int.from_bytes(frame.body[:2], "big")
        try:
            report = parse_report(header.function, frame.body, ascii_mode=header.mode == "ascii")
        except AdapterError as exc:
            return _refused(exc, header, serial if len(frame.body) >= 2 else None)
        return Message(header.station, header.password, Received(frame, report.serial, report), frame.size)

    def _packet(self, frame: Frame) -> Message | FrameError:
        header = frame.header
        assert header.packet is not None
        total, number = header.packet
        joining = self._joining
        if number == 1:
            if len(frame.body) < 2:
                return FrameError("packet 1 has no serial number", kind="truncated", header=header)
            joining = _Joining(header.station, header.function, total, int.from_bytes(frame.body[:2], "big"))
            self._joining = joining
        elif joining is None or (joining.station, joining.function, joining.total) != (
            header.station,
            header.function,
            total,
        ):
            first = dataclasses.replace(header, packet=(total, 1))  # the NAK asks for the message from its start
            return FrameError(f"packet {number} of {total} came without packet 1 of its message", kind="sequence",
                              header=first)  # fmt: skip
        if number != 1 and number == joining.expected - 1:
            # sent again: our answer was lost; answer again, keep nothing twice
            received = Received(frame, joining.serial, None, last=number == total, packets=total)
            return Message(header.station, header.password, received, frame.size)
        if number != joining.expected:
            expected = dataclasses.replace(header, packet=(total, joining.expected))
            return FrameError(f"packet {number} of {total} came, packet {joining.expected} was expected",
                              kind="sequence", header=expected, serial=joining.serial)  # fmt: skip
        error = self._join(joining, frame.body)
        if error is not None:
            self._joining = None
            return _refused(error, header, joining.serial)
        joining.expected += 1
        if number < total:
            received = Received(frame, joining.serial, None, last=False, packets=total)
            return Message(header.station, header.password, received, frame.size)
        body, joining.data = bytes(joining.data), bytearray()  # complete: only the numbers stay
        try:
            report = parse_report(header.function, body, ascii_mode=header.mode == "ascii")
        except AdapterError as exc:
            return _refused(exc, header, joining.serial)
        if joining.function == PICTURE_REPORT:
            report = _with_picture(report, joining.picture_bytes)
        return Message(header.station, header.password, Received(frame, joining.serial, report, packets=total),
                       frame.size)  # fmt: skip

    @staticmethod
    def _join(joining: _Joining, body: bytes) -> AdapterError | None:
        if joining.function == PICTURE_REPORT:
            room = max(0, PICTURE_HEAD_BYTES - len(joining.data))
            joining.data += body[:room]
            joining.picture_bytes += len(body) - min(room, len(body))
            return None
        if len(joining.data) + len(body) > MAX_JOINED_BYTES:
            return AdapterError(f"the packets of this message exceed {MAX_JOINED_BYTES} bytes", kind="size")
        joining.data += body
        return None

    # -- exchange ---------------------------------------------------------------------------------

    def exchange(self, message: Message, station: Station, now: float) -> Exchange:
        received = message.content
        if not isinstance(received, Received):
            raise AdapterError(f"not a message of this protocol: {type(received).__name__}", kind="value")
        frame = received.frame
        header = frame.header
        close = frame.end == EOT
        if received.report is None:  # a packet: go on, or (the last, sent again) done
            packet_ack = reply_frame(header, received.serial, now, self._protocol.ack_end if received.last else ACK)
            return Exchange(reply_now=packet_ack, close=close)
        report = received.report
        envelopes: list[pb.Envelope] = []
        if header.function in OBSERVATIONS:
            _check_clock(report, now)
            envelopes = observation_envelopes(report, header, station)
        reply = b""
        if header.function in ACKNOWLEDGED or frame.end == ENQ:
            end = self._protocol.ack_end
            if header.function == LINK:
                end = ESC  # an enquiring keep-alive: the link stays
            reply = reply_frame(header, received.serial, now, end)
        if envelopes:
            return Exchange(envelopes=envelopes, reply_when_durable=reply, close=close)
        return Exchange(reply_now=reply, close=close)

    def refusal(self, message: Message | None, error: AdapterError) -> bytes:
        if error.kind in SILENT:
            return b""
        header: Header | None = None
        serial: int | None = None
        if message is not None and isinstance(message.content, Received):
            header, serial = message.content.frame.header, message.content.serial
        elif isinstance(error, FrameError):
            header, serial = error.header, error.serial
        if header is None or not header.up:
            return b""
        return reply_frame(header, serial or 0, self._protocol.clock(), NAK)

    # for tests and the memory budget
    @property
    def buffered(self) -> int:
        return self._reader.buffered + (len(self._joining.data) if self._joining else 0)


def _refused(error: AdapterError, header: Header, serial: int | None) -> FrameError:
    return FrameError(error.reason, kind=error.kind, offset=error.offset, field=error.field, header=header,
                      serial=serial)  # fmt: skip


def _with_picture(report: Report, picture_bytes: int) -> Report:
    return Report(report.function, report.serial, report.sent, report.station, report.station_type, report.observed,
                  report.readings, report.missing, report.manual, report.picture_bytes + picture_bytes)  # fmt: skip


def _check_clock(report: Report, now: float) -> None:
    latest = now + MAX_CLOCK_SKEW_S
    for what, moment in (("send time", report.sent), ("observation time", report.observed)):
        if moment is not None and moment.timestamp() > latest:
            raise AdapterError(f"{moment.isoformat()} is in the future: the station's clock is wrong",
                               field=what, kind="time")  # fmt: skip


# -- replies --------------------------------------------------------------------------------------


def reply_frame(header: Header, serial: int, now: float, end: int) -> bytes:
    """The centre's downlink frame answering ``header``'s message: same function code, station,
    centre, password and (for a packet) packet count and number; the serial number and the
    centre's time as body; ``end`` says what it means (ESC/EOT done, ACK go on, NAK send again)."""
    down = Header(
        header.mode,
        up=False,
        centre=header.centre,
        station=header.station,
        password=header.password,
        function=header.function,
        packet=header.packet,
    )
    moment = dt.datetime.fromtimestamp(now, BEIJING)
    if header.mode == "hex":
        body = (serial & 0xFFFF).to_bytes(2, "big") + time_bcd(moment)
    else:
        body = f"{serial & 0xFFFF:04X}{moment.strftime('%y%m%d%H%M%S')}".encode("ascii")
    return encode_frame(down, body, end)


# -- envelopes ------------------------------------------------------------------------------------


def observation_envelopes(report: Report, header: Header, station: Station, system: str = NAME) -> list[pb.Envelope]:
    """The OBSERVATION envelopes of a report's readings (none when it has none).

    A reading outside the station's limits for its element code is a threshold crossing: the
    envelope gets ``ALARM_ATTRIBUTE`` (the codes that crossed, comma-separated), severity YELLOW,
    priority 1, and ``sl651.crossing.<code>`` saying which limit.
    """
    if not report.readings:
        return []
    observed = report.observed or report.sent
    function = f"{header.function:02X}"
    base = stable_id("sl651", header.station, function, str(report.serial), observed.isoformat())
    # POSIX seconds of the report's times, once: most readings are taken at the observation time
    observed_s, sent_s = int(observed.timestamp()), int(report.sent.timestamp())
    chunks = [report.readings[i : i + MAX_MEASUREMENTS] for i in range(0, len(report.readings), MAX_MEASUREMENTS)]
    out = []
    for index, chunk in enumerate(chunks):
        env = pb.Envelope(
            id=base if len(chunks) == 1 else f"{base}/{index + 1}",
            kind=pb.OBSERVATION,
            region=station.region,
            status=pb.TEST if header.function == TEST else pb.ACTUAL,
            priority=2,
        )
        env.origin.agency = station.agency
        env.origin.region = station.region
        env.origin.system = system
        env.observed_at.seconds = observed_s
        env.sent_at.seconds = sent_s
        if station.lat is not None and station.lon is not None:
            env.geometry.point.lat, env.geometry.point.lon = station.lat, station.lon
        env.provenance.original_format = ORIGINAL_FORMAT
        env.provenance.original_id = f"{header.station}/{function}/{report.serial}"
        obs = env.observation
        obs.station_id = header.station
        obs.station_name = station.name
        obs.station_type = report.station_type
        if header.function == HOURLY:
            obs.interval = "PT1H"
        crossed: dict[str, None] = {}
        for reading in chunk:
            element = el.element(reading.code)
            m = obs.measurements.add(metric=reading.code, value=reading.value, unit=element.unit, quality=pb.GOOD)
            m.flag = reading.flag
            m.at.seconds = observed_s if reading.at == observed else int(reading.at.timestamp())
            limits = station.limits.get(reading.code)
            if limits is None:
                continue
            if limits.high is not None and reading.value > limits.high:
                crossed[reading.code] = None
                env.attributes[f"sl651.crossing.{reading.code}"] = f"{reading.value:g} above {limits.high:g}"
            elif limits.low is not None and reading.value < limits.low:
                crossed[reading.code] = None
                env.attributes[f"sl651.crossing.{reading.code}"] = f"{reading.value:g} below {limits.low:g}"
        env.attributes["sl651.function"] = function
        env.attributes["sl651.serial"] = str(report.serial)
        env.attributes["sl651.centre"] = f"{header.centre:02X}"
        if report.missing:
            env.attributes["sl651.missing"] = ",".join(report.missing)
        if crossed:
            env.attributes[ALARM_ATTRIBUTE] = ",".join(crossed)
            env.severity = pb.YELLOW
            env.priority = 1
        out.append(env)
    return out


PROTOCOL: Final = Sl651Protocol()
