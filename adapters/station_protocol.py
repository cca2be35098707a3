"""What a monitoring-station protocol (HJ 212, SL 651) gives the node's station server.

Stations connect over TCP straight to the node, as to a data centre. The station server owns the
sockets, the station registry and the durable append; a protocol owns only bytes and their
meaning, sans-IO: a ``Session`` per connection turns received bytes into messages (framing across
TCP segments, checksums, multi-packet reassembly), and turns a message from a registered station
into the envelopes to append and the replies to send, some at once and some only once the
envelopes are durably in the log (the standards' data acknowledgements).

A protocol raises ``adapters.errors.AdapterError`` for anything it refuses, naming what is wrong
(its ``kind`` groups reasons for metrics: ``crc``, ``length``, ``truncated``, ``value``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError


@dataclass(frozen=True, slots=True)
class Limits:
    """Alarm limits of one metric at one station: a reading outside [low, high] is a threshold
    crossing (the envelope gets the routing's alarm attribute, ``gateway.routing.ALARM_ATTRIBUTE``)."""

    low: float | None = None
    high: float | None = None


@dataclass(frozen=True, slots=True)
class Station:
    """One entry of the station registry."""

    id: str  # the station's address as the protocol carries it (HJ 212 MN, SL 651 station address)
    password: str  # what the station must send (HJ 212 PW, SL 651 password), compared exactly
    region: str  # GB/T 2260 code of the county the station lies in
    agency: str  # the agency it reports for (ecology, water, ...)
    name: str = ""
    lat: float | None = None
    lon: float | None = None
    limits: Mapping[str, Limits] = field(default_factory=dict)  # by the protocol's metric code


@dataclass(slots=True)
class Message:
    """One complete message from a station, before the registry is consulted."""

    station_id: str
    password: str | None  # as the message carries it; None when the protocol's message has none
    content: Any  # the protocol's own parsed form, handed back to ``Session.exchange``
    size: int  # bytes on the wire


@dataclass(slots=True)
class Exchange:
    """What the server does with one message of a registered station."""

    envelopes: list[pb.Envelope] = field(default_factory=list)  # appended durably, in this order
    reply_now: bytes = b""  # sent at once (e.g. a keep-alive's answer, a request's acceptance)
    reply_when_durable: bytes = b""  # sent only once ``envelopes`` are in the log (data acknowledgement)
    close: bool = False  # the station ends the session (e.g. SL 651 EOT): close after the replies


class Session(Protocol):
    """The protocol state of one TCP connection. Small: a server holds thousands of them."""

    def feed(self, data: bytes) -> list[Message | AdapterError]:
        """Bytes as they came off the socket (any split); complete messages and refused frames in
        order. After a refused frame the session finds the next frame start by itself."""
        ...

    def exchange(self, message: Message, station: Station, now: float) -> Exchange:
        """The envelopes and replies for a message of a registered station whose password matched.
        ``now`` is POSIX seconds (for received-at stamps and reply times)."""
        ...

    def refusal(self, message: Message | None, error: AdapterError) -> bytes:
        """A reply that tells the station its message was refused, if the protocol has one; else b""."""
        ...


class StationProtocol(Protocol):
    name: str  # hj212, sl651
    max_message_bytes: int  # a frame announcing more is refused

    def session(self) -> Session: ...
