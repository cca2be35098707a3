"""The HJ 212 package's one error: an ``AdapterError`` that also carries what of the packet was read.

``kind`` groups the reasons (for metrics and for the 9011 answer a refusal gets): ``crc`` (the
checksum does not match), ``length`` (the announced length is not a number, is over the limit,
or does not end where the CRC and CRLF are), ``truncated`` (the packet ends before its announced
length), ``missing`` and ``value`` (a field is absent or wrong), ``encoding``, ``clock`` (a time
the gateway would refuse: the station's clock is wrong), ``unsupported`` (a protocol version the
gateway is configured to refuse).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.errors import AdapterError

if TYPE_CHECKING:
    from adapters.hj212.packet import Header


class Hj212Error(AdapterError):
    """A refused HJ 212 packet; ``header`` is its header when that much could be read (for the answer)."""

    def __init__(
        self,
        reason: str,
        *,
        field: str = "",
        offset: int | None = None,
        kind: str = "value",
        header: Header | None = None,
    ) -> None:
        super().__init__(reason, field=field, offset=offset, kind=kind)
        self.header = header

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (self.reason, self.field, self.offset, self.kind, self.header)


def _rebuild(reason: str, field: str, offset: int | None, kind: str, header: Header | None) -> Hj212Error:
    return Hj212Error(reason, field=field, offset=offset, kind=kind, header=header)
