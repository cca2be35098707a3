"""The HJ 212 adapter: environmental monitoring stations (HJ 212-2017, HJ/T 212-2005) into observations.

``PROTOCOL`` is what the node's station server uses (``adapters.station_protocol``: a session per
TCP connection, envelopes and the standard's answers); ``ADAPTER`` decodes files and captured
streams of packets (``yiwang adapt hj212 FILE --region 410100``). See ``session`` for the answers,
``observations`` for the mapping and ids, ``frame`` for framing and limits, ``codes`` for the
code tables.
"""

from __future__ import annotations

from adapters.hj212.codec import FORMAT, Hj212Codec, Hj212Config, open_codec
from adapters.hj212.errors import Hj212Error
from adapters.hj212.packet import VERSIONS, Header, Packet
from adapters.hj212.session import Hj212Protocol, Hj212Session
from adapters.plugin import Adapter, Manifest

MANIFEST = Manifest(
    name="hj212",
    title="HJ 212 environmental monitoring station packets (2017, 2005) into observations",
    inbound=(FORMAT,),
    outbound=(),
    agency="ecology_environment",
    config=Hj212Config,
)

ADAPTER = Adapter(manifest=MANIFEST, codec=open_codec)

#: The protocol the station server speaks on its HJ 212 port.
PROTOCOL = Hj212Protocol()

__all__ = [
    "ADAPTER",
    "MANIFEST",
    "PROTOCOL",
    "VERSIONS",
    "Header",
    "Hj212Codec",
    "Hj212Config",
    "Hj212Error",
    "Hj212Protocol",
    "Hj212Session",
    "Packet",
]
