"""The one error a codec may raise: what is wrong, and where (a field path or a byte offset)."""

from __future__ import annotations

from gateway.errors import YiwangError


class AdapterError(YiwangError):
    """Input that a codec cannot turn into canonical envelopes (or envelopes it cannot export).

    ``field`` is a path into the source message (``alert.info[1].area[0].polygon``) and ``offset``
    a byte position, when known; ``kind`` groups reasons for metrics (``xml``, ``hostile``,
    ``missing``, ``value``, ``size``, ``unsupported``, ``encoding``, ``canonical``).
    """

    def __init__(self, reason: str, *, field: str = "", offset: int | None = None, kind: str = "value") -> None:
        where = field or (f"offset {offset}" if offset is not None else "")
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.field = field
        self.offset = offset
        self.kind = kind

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (self.reason, self.field, self.offset, self.kind)


def _rebuild(reason: str, field: str, offset: int | None, kind: str) -> AdapterError:
    return AdapterError(reason, field=field, offset=offset, kind=kind)
