"""The EDXL-DE adapter: OASIS EDXL-DE 1.0 and 2.0 distributions in, each CAP alert they carry out."""

from __future__ import annotations

from adapters.edxl.codec import EdxlCodec, EdxlConfig
from adapters.plugin import Adapter, AdapterConfig, AdapterContext, Manifest

__all__ = ["ADAPTER", "EdxlCodec", "EdxlConfig"]


def _open(fmt: str, config: AdapterConfig, context: AdapterContext) -> EdxlCodec:
    """The codec for ``fmt`` (only "edxl-de"), with the adapter's loaded config."""
    del fmt  # one format, inbound only
    if not isinstance(config, EdxlConfig):
        config = EdxlConfig(agency=config.agency, region=config.region, system=config.system)
    return EdxlCodec(config, context)


ADAPTER = Adapter(
    manifest=Manifest(
        name="edxl",
        title="OASIS EDXL-DE 1.0/2.0 distributions in: the CAP alerts they carry, with their routing",
        inbound=("edxl-de",),
        outbound=(),
        agency="emergency",
        config=EdxlConfig,
    ),
    codec=_open,
)
