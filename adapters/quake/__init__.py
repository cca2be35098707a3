"""The earthquake adapter: USGS GeoJSON, QuakeML 1.2 and CENC lists into INCIDENT envelopes.

See ``codec`` for the mapping, the report chain and how errors are reported.
"""

from __future__ import annotations

from adapters.plugin import Adapter, Manifest
from adapters.quake import cenc, quakeml, usgs
from adapters.quake.codec import QuakeCodec, QuakeConfig, open_codec

MANIFEST = Manifest(
    name="quake",
    title="Earthquake catalogues (USGS GeoJSON, QuakeML 1.2, CENC) into incident reports",
    inbound=(usgs.FORMAT, quakeml.FORMAT, cenc.FORMAT),
    outbound=(),
    agency="earthquake",
    config=QuakeConfig,
)

ADAPTER = Adapter(manifest=MANIFEST, codec=open_codec)

__all__ = ["ADAPTER", "MANIFEST", "QuakeCodec", "QuakeConfig"]
