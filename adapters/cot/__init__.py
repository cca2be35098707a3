"""The Cursor-on-Target adapter: TAK clients' CoT XML events in and out, as canonical envelopes.

``codec`` maps events to POSITION and INCIDENT envelopes and positions, incidents and warnings back
to events; ``framing`` finds the events in a TCP stream or a UDP datagram; ``types`` is our table of
the CoT type tree. All three are sans-IO, for the TCP/UDP and TAK servers that own the sockets.
"""

from __future__ import annotations

from adapters.cot.codec import (
    FORMAT,
    CotCodec,
    CotConfig,
    CotEvent,
    encode_envelope,
    encode_ping,
    parse_event,
    to_envelope,
)
from adapters.cot.framing import StreamDecoder, check_datagram
from adapters.plugin import Adapter, AdapterConfig, AdapterContext, Manifest

__all__ = [
    "ADAPTER",
    "FORMAT",
    "MANIFEST",
    "CotCodec",
    "CotConfig",
    "CotEvent",
    "StreamDecoder",
    "check_datagram",
    "encode_envelope",
    "encode_ping",
    "parse_event",
    "to_envelope",
]


def _open(fmt: str, config: AdapterConfig, context: AdapterContext) -> CotCodec:
    """The codec for ``fmt`` (only "cot"), with the adapter's loaded config."""
    del fmt  # one format, in and out
    if not isinstance(config, CotConfig):
        config = CotConfig(agency=config.agency, region=config.region, system=config.system)
    return CotCodec(config, context)


MANIFEST = Manifest(
    name="cot",
    title="Cursor-on-Target XML events of TAK clients (ATAK, WinTAK, iTAK): units and alerts in; units, "
    "incidents and warnings out",
    inbound=(FORMAT,),
    outbound=(FORMAT,),
    agency="fire_rescue",
    config=CotConfig,
)

ADAPTER = Adapter(manifest=MANIFEST, codec=_open)
