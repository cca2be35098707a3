"""The declarative mapping adapter: JSON and CSV exports of departments without a standard format.

A mapping file (TOML, see ``spec.py`` and the shipped ones in ``mappings/``) says where the records
are and which source field fills which canonical field; the codec (``codec.py``) applies it.
"""

from __future__ import annotations

from adapters.mapping.codec import MappingCodec, MappingConfig, open_codec
from adapters.plugin import Adapter, Manifest

MANIFEST = Manifest(
    name="mapping",
    title="Department JSON/CSV exports through a declarative mapping file",
    inbound=("mapping-json", "mapping-csv"),
    outbound=(),
    agency="emergency",
    config=MappingConfig,
)

ADAPTER = Adapter(manifest=MANIFEST, codec=open_codec)

__all__ = ["ADAPTER", "MANIFEST", "MappingCodec", "MappingConfig"]
