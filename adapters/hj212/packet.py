"""The HJ 212 data segment: ``QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;PNUM=…;PNO=…;CP=&&…&&`` read and written.

The header is a list of ``key=value`` fields separated by ``;``; the command parameters (CP) sit
between ``&&`` and ``&&`` as groups separated by ``;`` of fields separated by ``,``. HJ 212-2017
packets carry QN (the request number, a 17-digit time stamp) and Flag; HJ/T 212-2005 uploads
usually carry neither. Unknown header fields are kept (``Header.extra``), so a later edition that
adds one is still read.

Versions. Flag's upper six bits are the protocol version (0 HJ/T 212-2005, 1 HJ 212-2017), bit 1
says the packet is one of several (PNUM/PNO), bit 0 asks for an answer. A packet without Flag is
taken as version 0. ``VERSIONS`` lists the versions this package knows; what happens with the
others (HJ 212-2025 announces a version of its own) is the protocol's ``unknown_versions`` policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.hj212.errors import Hj212Error

#: Known protocol versions (Flag >> 2) and the provenance format of packets in them.
VERSIONS: dict[int, str] = {0: "hj212-2005", 1: "hj212-2017"}
VERSION_2017 = 1

_DIGITS = re.compile(r"[0-9]+")
_HEADER_KEY = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}")
_MAX_EXTRA_HEADER = 8
_CP_OPEN = "CP=&&"
_CP_CLOSE = "&&"


@dataclass(frozen=True, slots=True)
class Header:
    """The header fields of one packet."""

    st: str  # system type (21 surface water, 22 air quality, 31 air pollution source, 91 answers, ...)
    cn: str  # command code (2011 real-time data, 9014 data answer, ...)
    mn: str  # the station's identity
    qn: str | None = None  # request number YYYYMMDDhhmmssSSS; answers echo it
    pw: str | None = None
    flag: int | None = None
    pnum: int | None = None  # packets in all, when the message is split
    pno: int | None = None  # this packet's number, from 1
    extra: tuple[tuple[str, str], ...] = ()  # header fields this package does not know, as sent

    @property
    def version(self) -> int:
        return 0 if self.flag is None else self.flag >> 2

    @property
    def wants_answer(self) -> bool:
        """Flag bit A: the station waits for an answer (9014 for data, 9013 for a notice)."""
        return self.flag is not None and bool(self.flag & 1)


@dataclass(frozen=True, slots=True)
class Packet:
    """One data segment, parsed: the header and the CP fields in order."""

    header: Header
    cp: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        """The first CP field named ``key``."""
        for name, value in self.cp:
            if name == key:
                return value
        return None


def parse_segment(segment: bytes, offset: int | None = None) -> Packet:
    """The packet whose data segment is ``segment``; ``offset`` (of the segment in the stream) goes into errors."""
    text = _text_of(segment, offset)
    start = text.find(_CP_OPEN)
    if start < 0:
        raise Hj212Error("the data segment has no CP=&&…&& part", field="CP", offset=offset, kind="missing")
    if start and text[start - 1] != ";":
        field = text[: start - 1].rsplit(";", 1)[-1].partition("=")[0] or "CP"
        raise Hj212Error("CP=&& does not follow a ';'", field=field, offset=offset)
    header = parse_header(text[: start - 1] if start else "", offset)
    body = text[start + len(_CP_OPEN) :]
    if not body.endswith(_CP_CLOSE):
        raise Hj212Error("the CP part does not end with &&", field="CP", offset=offset, header=header)
    return Packet(header, parse_cp(body[: -len(_CP_CLOSE)], header, offset))


def parse_header(text: str, offset: int | None = None) -> Header:
    """The header fields of ``text`` (everything before ``CP=``)."""
    fields: dict[str, str] = {}
    for item in text.split(";"):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not _HEADER_KEY.fullmatch(key):
            raise Hj212Error(f"header field {item[:40]!r} is not key=value", field="header", offset=offset)
        if key in fields:
            raise Hj212Error("appears twice in the header", field=key, offset=offset)
        fields[key] = value.strip()
    st = _required(fields, "ST", offset)
    cn = _required(fields, "CN", offset)
    mn = _required(fields, "MN", offset)
    if not _DIGITS.fullmatch(st) or len(st) > 4:
        raise Hj212Error(f"{st[:20]!r} is not a system type code (1 to 4 digits)", field="ST", offset=offset)
    if not _DIGITS.fullmatch(cn) or len(cn) != 4:
        raise Hj212Error(f"{cn[:20]!r} is not a command code (4 digits)", field="CN", offset=offset)
    if len(mn) > 32 or not mn.isprintable() or not mn.isascii() or " " in mn:
        raise Hj212Error(
            f"{mn[:40]!r} is not a station identity (up to 32 printable characters)", field="MN", offset=offset
        )
    qn = fields.pop("QN", None)
    if qn is not None and (not _DIGITS.fullmatch(qn) or len(qn) != 17):
        raise Hj212Error(f"{qn[:40]!r} is not a request number (17 digits)", field="QN", offset=offset)
    pw = fields.pop("PW", None)
    if pw is not None and (len(pw) > 32 or not pw.isprintable()):
        raise Hj212Error("is longer than 32 characters or not printable", field="PW", offset=offset)
    flag = _number(fields.pop("Flag", None), "Flag", 255, offset)
    pnum = _number(fields.pop("PNUM", None), "PNUM", 9999, offset)
    pno = _number(fields.pop("PNO", None), "PNO", 9999, offset)
    if (pnum is None) != (pno is None):
        raise Hj212Error("PNUM and PNO come together or not at all", field="PNUM" if pnum is None else "PNO")
    if pnum is not None and pno is not None and not 1 <= pno <= pnum:
        raise Hj212Error(f"packet number {pno} is not within 1..{pnum}", field="PNO", offset=offset)
    for key in ("ST", "CN", "MN"):
        del fields[key]
    if len(fields) > _MAX_EXTRA_HEADER:
        raise Hj212Error(f"more than {_MAX_EXTRA_HEADER} unknown header fields", field="header", offset=offset)
    return Header(st, cn, mn, qn, pw, flag, pnum, pno, tuple(fields.items()))


def parse_cp(text: str, header: Header, offset: int | None = None) -> tuple[tuple[str, str], ...]:
    """The ``key=value`` fields of a CP part, in order (groups and fields flattened)."""
    found: list[tuple[str, str]] = []
    for group in text.split(";"):
        for item in group.split(","):
            stripped = item.strip()
            if not stripped:
                continue  # "CP=&& &&" and a trailing ';' are written by the standard itself
            key, equals, value = stripped.partition("=")
            key = key.strip()
            if not equals or not key:
                raise Hj212Error(
                    f"CP field {stripped[:40]!r} is not key=value", field="CP", offset=offset, header=header
                )
            found.append((key, value.strip()))
    return tuple(found)


def encode_segment(header: Header, cp: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The data segment of a packet (what ``parse_segment`` reads back)."""
    fields = [("QN", header.qn), ("ST", header.st), ("CN", header.cn), ("PW", header.pw), ("MN", header.mn)]
    fields.append(("Flag", None if header.flag is None else str(header.flag)))
    if header.pnum is not None and header.pno is not None:
        fields += [("PNUM", str(header.pnum)), ("PNO", str(header.pno))]
    text = ";".join(f"{key}={value}" for key, value in [*fields, *header.extra] if value is not None)
    parameters = ";".join(f"{key}={value}" for key, value in cp)
    return f"{text};CP=&&{parameters}&&".encode("gb18030")


def _text_of(segment: bytes, offset: int | None) -> str:
    """The segment as text: ASCII as the standard writes it; UTF-8 or GB 18030 where a device sends Chinese."""
    try:
        return segment.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return segment.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise Hj212Error(
            f"byte {exc.start} of the data segment is neither UTF-8 nor GB 18030 text", offset=offset, kind="encoding"
        ) from None


def _required(fields: dict[str, str], key: str, offset: int | None) -> str:
    value = fields.get(key)
    if not value:
        raise Hj212Error("required in the header", field=key, offset=offset, kind="missing")
    return value


def _number(text: str | None, field: str, highest: int, offset: int | None) -> int | None:
    if text is None:
        return None
    if not _DIGITS.fullmatch(text) or len(text) > 4 or int(text) > highest:
        raise Hj212Error(f"{text[:20]!r} is not a number from 0 to {highest}", field=field, offset=offset)
    return int(text)
