"""The CAP adapter: OASIS CAP 1.2 alerts in and out (CAP 1.1 in), as canonical ALERT envelopes."""

from __future__ import annotations

from adapters.cap.codec import CapCodec, CapConfig, decode_alert, encode_alert
from adapters.plugin import Adapter, AdapterConfig, AdapterContext, Manifest

__all__ = ["ADAPTER", "CapCodec", "CapConfig", "decode_alert", "encode_alert"]


def _open(fmt: str, config: AdapterConfig, context: AdapterContext) -> CapCodec:
    """The codec for ``fmt`` (only "cap"), with the adapter's loaded config."""
    del fmt  # one format, in and out
    if not isinstance(config, CapConfig):
        config = CapConfig(agency=config.agency, region=config.region, system=config.system)
    return CapCodec(config, context)


ADAPTER = Adapter(
    manifest=Manifest(
        name="cap",
        title="OASIS CAP 1.2 alerts in and out (CAP 1.1 in), with XML-DSig signatures kept",
        inbound=("cap",),
        outbound=("cap",),
        agency="meteorology",
        config=CapConfig,
    ),
    codec=_open,
)
