"""HJ 212 packets from a file or a captured stream into envelopes: ``yiwang adapt hj212 FILE``.

The same session and mapping the station server uses, without a registry: every station is taken
as registered in the adapter's ``region`` for its ``agency``, without limits or location. Answers
are not sent (there is no one to send them to). Each packet stands alone: ``decode_report``
returns the envelopes of the good packets and one error per refused packet (bad CRC, wrong
length, truncated, bad field); ``decode`` raises the first error only when nothing decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.hj212.frame import MAX_SEGMENT_BYTES
from adapters.hj212.session import UNKNOWN_VERSION_POLICIES, Hj212Protocol
from adapters.plugin import AdapterConfig, AdapterContext, ReportingCodec, config_as
from adapters.station_protocol import Message, Station
from gateway.errors import ConfigError, InvalidEnvelopeError
from gateway.validation import AGENCIES, Validator

FORMAT = "hj212"


@dataclass(frozen=True, kw_only=True)
class Hj212Config(AdapterConfig):
    """The hj212 adapter's settings (a ``[adapters.hj212]`` table)."""

    agency: str = "ecology_environment"
    max_segment_bytes: int = field(
        default=MAX_SEGMENT_BYTES,
        metadata={"doc": "a packet announcing a longer data segment is refused (the standard says 1024; 1..9999)"},
    )
    unknown_versions: str = field(
        default="accept",
        metadata={"doc": "packets of a protocol version not known here: accept (read with the 2017 rules) or refuse"},
    )

    def __post_init__(self) -> None:
        if not 0 < self.max_segment_bytes <= 9999:
            raise ConfigError("must be 1..9999 (the length has four digits)", key="max_segment_bytes")
        if self.unknown_versions not in UNKNOWN_VERSION_POLICIES:
            raise ConfigError(f"must be one of {', '.join(UNKNOWN_VERSION_POLICIES)}", key="unknown_versions")


class Hj212Codec(ReportingCodec):
    """Decodes a stream of HJ 212 packets into envelopes the gateway admits."""

    def __init__(self, config: Hj212Config, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self.protocol = Hj212Protocol(
            max_message_bytes=config.max_segment_bytes,
            unknown_versions=config.unknown_versions,
            system=config.system or FORMAT,
        )
        self._validator = Validator(context.regions, agencies=AGENCIES | {config.agency})

    def decode_report(self, data: bytes) -> tuple[list[pb.Envelope], list[AdapterError]]:
        if not self.config.region:
            raise AdapterError(
                "the hj212 adapter needs a region for its stations (config region, or --region)", kind="config"
            )
        now = self.context.time()
        session = self.protocol.session()
        envelopes: list[pb.Envelope] = []
        errors: list[AdapterError] = []
        for item in [*session.feed(data), *session.end()]:
            if isinstance(item, AdapterError):
                errors.append(item)
                continue
            try:
                exchanged = session.exchange(item, self._station(item), now)
                for env in exchanged.envelopes:
                    self._admit(env, now)
            except AdapterError as exc:
                errors.append(exc)
                continue
            envelopes += exchanged.envelopes
        return envelopes, errors

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes:  # noqa: ARG002 (the Codec protocol's signature)
        raise AdapterError("the hj212 adapter only decodes station packets", kind="unsupported")

    def _station(self, message: Message) -> Station:
        return Station(id=message.station_id, password="", region=self.config.region, agency=self.config.agency)

    def _admit(self, env: pb.Envelope, now: float) -> None:
        try:
            self._validator.check(env, env.ByteSize(), now)
        except InvalidEnvelopeError as exc:  # a value no check of ours foresaw
            raise AdapterError(f"the envelope would not be admitted: {exc}", kind="canonical") from None


def open_codec(fmt: str, config: Any, context: AdapterContext) -> Hj212Codec:
    """The ``Adapter.codec`` factory."""
    if fmt != FORMAT:
        raise ConfigError(f"the hj212 adapter has no format {fmt!r} ({FORMAT})")
    config = config_as(Hj212Config, config)
    return Hj212Codec(config, context)
