from yiwang.v1 import gateway_pb2 as _gateway_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LinkHello(_message.Message):
    __slots__ = ("node_id", "region", "max_batch_envelopes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    region: str
    max_batch_envelopes: int
    def __init__(self, node_id: _Optional[str] = ..., region: _Optional[str] = ..., max_batch_envelopes: _Optional[int] = ...) -> None: ...

class LinkAck(_message.Message):
    __slots__ = ("cursor", "accepted", "duplicates", "refused")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    accepted: int
    duplicates: int
    refused: _containers.RepeatedCompositeFieldContainer[_gateway_pb2.PublishResult]
    def __init__(self, cursor: _Optional[int] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., refused: _Optional[_Iterable[_Union[_gateway_pb2.PublishResult, _Mapping]]] = ...) -> None: ...

class LinkEntries(_message.Message):
    __slots__ = ("batch_id", "deliveries")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    deliveries: bytes
    def __init__(self, batch_id: _Optional[int] = ..., deliveries: _Optional[bytes] = ...) -> None: ...

class LinkMessage(_message.Message):
    __slots__ = ("hello", "batch", "ack", "entries", "records")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    hello: LinkHello
    batch: _gateway_pb2.PublishRequest
    ack: LinkAck
    entries: LinkEntries
    records: bytes
    def __init__(self, hello: _Optional[_Union[LinkHello, _Mapping]] = ..., batch: _Optional[_Union[_gateway_pb2.PublishRequest, _Mapping]] = ..., ack: _Optional[_Union[LinkAck, _Mapping]] = ..., entries: _Optional[_Union[LinkEntries, _Mapping]] = ..., records: _Optional[bytes] = ...) -> None: ...

class EntriesAsSent(_message.Message):
    __slots__ = ("deliveries",)
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[EntryAsSent]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[EntryAsSent, _Mapping]]] = ...) -> None: ...

class EntryAsSent(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    def __init__(self, envelope: _Optional[bytes] = ...) -> None: ...
