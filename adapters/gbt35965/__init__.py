"""The GB/T 35965 adapter: the Chinese national early-warning XML (预警信息发布) in and out."""

from __future__ import annotations

from typing import Any

from adapters.gbt35965.codec import FORMAT, Gbt35965Codec, Gbt35965Config
from adapters.plugin import Adapter, AdapterContext, Manifest


def _open(fmt: str, config: Any, context: AdapterContext) -> Gbt35965Codec:
    """The codec for ``fmt`` (the manifest's only format)."""
    del fmt  # one format, one codec
    return Gbt35965Codec(config, context)


MANIFEST = Manifest(
    name="gbt35965",
    title="GB/T 35965 national early-warning XML (国家预警信息发布, provincial meteorological bureaus)",
    inbound=(FORMAT,),
    outbound=(FORMAT,),
    agency="meteorology",
    config=Gbt35965Config,
)

ADAPTER = Adapter(manifest=MANIFEST, codec=_open)

__all__ = ["ADAPTER", "MANIFEST", "Gbt35965Codec", "Gbt35965Config"]
