"""Canonical envelopes as JSON Lines: the export for a receiver that takes yiwang's own model.

One line per envelope, each the envelope in protobuf's JSON mapping with the field names of
``proto/yiwang/v1/envelope.proto`` (so any protobuf library reads it back). This is the format of
the national export (an outbound adapter with ``national = true``): the national system's own
interfaces are not public, and the canonical model loses nothing on the way.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import json_format
from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.plugin import Adapter, AdapterConfig, AdapterContext, Manifest

FORMAT = "envelope-json"


class CanonicalCodec:
    """Encodes envelopes as JSON Lines; reading them is left to the gRPC API, which validates."""

    def decode(self, data: bytes) -> list[pb.Envelope]:
        del data
        raise AdapterError(
            "canonical JSON is an export format here: publish envelopes through the gRPC API", kind="unsupported"
        )

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes:
        lines = [
            json_format.MessageToJson(env, preserving_proto_field_name=True, indent=None, sort_keys=True)
            for env in envelopes
        ]
        return "".join(f"{line}\n" for line in lines).encode()


def _open(fmt: str, config: AdapterConfig, context: AdapterContext) -> CanonicalCodec:
    del fmt, config, context  # one format, nothing to configure
    return CanonicalCodec()


ADAPTER = Adapter(
    manifest=Manifest(
        name="canonical",
        title="yiwang's canonical envelopes as JSON Lines out (the national export's format)",
        inbound=(),
        outbound=(FORMAT,),
        agency="emergency",
        config=AdapterConfig,
    ),
    codec=_open,
)
