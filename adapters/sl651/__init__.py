"""The SL 651-2014 adapter: hydrological (water-resources) telemetry stations into observations.

``PROTOCOL`` is what the node's station server speaks with the stations (``protocol``);
``ADAPTER`` decodes files of captured frames (``codec``). Frames: ``frame``; bodies: ``report``;
the element table: ``elements``.
"""

from __future__ import annotations

from adapters.plugin import Adapter, Manifest
from adapters.sl651.codec import FORMAT, Sl651Codec, Sl651Config, open_codec
from adapters.sl651.protocol import PROTOCOL, Sl651Protocol, Sl651Session

MANIFEST = Manifest(
    name="sl651",
    title="SL 651-2014 hydrological telemetry frames (HEX/BCD and ASCII) into observations",
    inbound=(FORMAT,),
    outbound=(),
    agency="water",
    config=Sl651Config,
)

ADAPTER = Adapter(manifest=MANIFEST, codec=open_codec)

__all__ = ["ADAPTER", "MANIFEST", "PROTOCOL", "Sl651Codec", "Sl651Config", "Sl651Protocol", "Sl651Session"]
