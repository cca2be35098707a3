"""SL 651-2014 from a file: frames captured or written down, decoded without a station registry.

``yiwang adapt sl651 FILE --region 410100`` reads either hex text, one frame per line (spaces
between fields allowed, empty lines and lines starting with ``#`` skipped), or the raw bytes of a
stream (HEX or ASCII frames, as a station sends them). Each station is taken as registered with
the adapter's region and agency (``water`` unless configured), without limits or place. Downlink
frames (the centre's replies in a capture) are skipped. Multi-packet messages are joined across
lines. Errors name the line (text) or the stream offset (bytes).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.plugin import AdapterConfig, AdapterContext, ReportingCodec, config_as
from adapters.sl651.frame import FrameError, decode_frame
from adapters.sl651.protocol import Sl651Protocol, Sl651Session
from adapters.station_protocol import Message, Station
from gateway.errors import ConfigError, InvalidEnvelopeError
from gateway.validation import AGENCIES, Validator

FORMAT = "sl651"
_HEX_LINE = re.compile(r"[0-9A-Fa-f]+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sl651Config(AdapterConfig):
    """The sl651 adapter's settings (a ``[adapters.sl651]`` table)."""

    agency: str = "water"


class Sl651Codec(ReportingCodec):
    """Decodes a file of SL 651 frames into OBSERVATION envelopes."""

    def __init__(self, config: Sl651Config, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        #: outcomes by name: "frames", "downlink", "envelopes", "error:<kind>"
        self.counts: Counter[str] = Counter()
        self._validator = Validator(context.regions, agencies=AGENCIES | {config.agency})

    def decode_report(self, data: bytes) -> tuple[list[pb.Envelope], list[AdapterError]]:
        """The envelopes of the file's reports, and an error per refused frame."""
        if not self.config.region:
            raise AdapterError("the sl651 adapter needs a region for its stations (config region or --region)",
                               field="region", kind="missing")  # fmt: skip
        now = self.context.time()
        session = Sl651Protocol(clock=lambda: now).session()
        envelopes: list[pb.Envelope] = []
        errors: list[AdapterError] = []
        for where, item in self._messages(data, session):
            if isinstance(item, AdapterError):
                errors.append(_located(item, where))
                continue
            station = Station(id=item.station_id, password="", region=self.config.region, agency=self.config.agency)
            try:
                exchanged = session.exchange(item, station, now)
                for env in exchanged.envelopes:
                    if self.config.system:
                        env.origin.system = self.config.system
                    self._check(env, now)
            except AdapterError as exc:
                errors.append(_located(exc, where))
                continue
            envelopes.extend(exchanged.envelopes)
        self.counts["envelopes"] += len(envelopes)
        for error in errors:
            self.counts[f"error:{error.kind}"] += 1
        return envelopes, errors

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes:  # noqa: ARG002 (the Codec protocol's signature)
        raise AdapterError("the sl651 adapter only decodes station frames", kind="unsupported")

    def _check(self, env: pb.Envelope, now: float) -> None:
        try:
            self._validator.check(env, env.ByteSize(), now)
        except InvalidEnvelopeError as exc:
            raise AdapterError(f"the observation would not be admitted: {exc}", kind="canonical") from None

    def _messages(self, data: bytes, session: Sl651Session) -> list[tuple[str, Message | AdapterError]]:
        lines = _hex_lines(data)
        out: list[tuple[str, Message | AdapterError]] = []
        if lines is None:  # a byte stream
            for item in session.feed(data):
                if isinstance(item, FrameError) and item.kind == "direction":
                    self.counts["downlink"] += 1
                    continue
                self.counts["frames"] += 1
                out.append(("", item))
            return out
        for number, text in lines:
            where = f"line {number}"
            if len(text) % 2:
                out.append((where, AdapterError(f"{len(text)} hex digits are not whole bytes", kind="encoding")))
                continue
            try:
                frame = decode_frame(bytes.fromhex(text))
            except FrameError as exc:
                out.append((where, exc))
                continue
            if not frame.header.up:
                self.counts["downlink"] += 1
                continue
            self.counts["frames"] += 1
            out.append((where, session.accept(frame)))
        return out


def _hex_lines(data: bytes) -> list[tuple[int, str]] | None:
    """(line number, hex digits) of a hex-text file; None when ``data`` is not one."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        digits = "".join(line.split())
        if not digits or digits.startswith("#"):
            continue
        if not _HEX_LINE.fullmatch(digits):
            return None
        lines.append((number, digits))
    return lines or None


def _located(error: AdapterError, where: str) -> AdapterError:
    if not where:
        return error
    field = f"{where} {error.field}".strip()
    return AdapterError(error.reason, field=field, offset=error.offset, kind=error.kind)


def open_codec(fmt: str, config: Any, context: AdapterContext) -> Sl651Codec:
    """The ``Adapter.codec`` factory."""
    if fmt != FORMAT:
        raise ConfigError(f"the sl651 adapter has no format {fmt!r} ({FORMAT})")
    config = config_as(Sl651Config, config)
    return Sl651Codec(config, context)
