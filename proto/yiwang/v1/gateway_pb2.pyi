import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from yiwang.v1 import envelope_pb2 as _envelope_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartPosition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_POSITION_UNSPECIFIED: _ClassVar[StartPosition]
    OLDEST: _ClassVar[StartPosition]
    LATEST: _ClassVar[StartPosition]
START_POSITION_UNSPECIFIED: StartPosition
OLDEST: StartPosition
LATEST: StartPosition

class PublishRequest(_message.Message):
    __slots__ = ("envelopes", "batch_id", "certificates", "batch_signatures")
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[_envelope_pb2.Envelope]
    batch_id: int
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    batch_signatures: _containers.RepeatedCompositeFieldContainer[_envelope_pb2.Signature]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[_envelope_pb2.Envelope, _Mapping]]] = ..., batch_id: _Optional[int] = ..., certificates: _Optional[_Iterable[bytes]] = ..., batch_signatures: _Optional[_Iterable[_Union[_envelope_pb2.Signature, _Mapping]]] = ...) -> None: ...

class PublishResult(_message.Message):
    __slots__ = ("id", "outcome", "offset", "code", "field", "reason")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[PublishResult.Outcome]
        ACCEPTED: _ClassVar[PublishResult.Outcome]
        DUPLICATE: _ClassVar[PublishResult.Outcome]
        REJECTED: _ClassVar[PublishResult.Outcome]
    OUTCOME_UNSPECIFIED: PublishResult.Outcome
    ACCEPTED: PublishResult.Outcome
    DUPLICATE: PublishResult.Outcome
    REJECTED: PublishResult.Outcome
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    outcome: PublishResult.Outcome
    offset: int
    code: int
    field: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., outcome: _Optional[_Union[PublishResult.Outcome, str]] = ..., offset: _Optional[int] = ..., code: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ("results", "batch_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PublishResult]
    batch_id: int
    def __init__(self, results: _Optional[_Iterable[_Union[PublishResult, _Mapping]]] = ..., batch_id: _Optional[int] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("min_lat", "min_lon", "max_lat", "max_lon")
    MIN_LAT_FIELD_NUMBER: _ClassVar[int]
    MIN_LON_FIELD_NUMBER: _ClassVar[int]
    MAX_LAT_FIELD_NUMBER: _ClassVar[int]
    MAX_LON_FIELD_NUMBER: _ClassVar[int]
    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float
    def __init__(self, min_lat: _Optional[float] = ..., min_lon: _Optional[float] = ..., max_lat: _Optional[float] = ..., max_lon: _Optional[float] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("kinds", "regions", "agencies", "min_severity", "bbox", "statuses")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    AGENCIES_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[_envelope_pb2.Kind]
    regions: _containers.RepeatedScalarFieldContainer[str]
    agencies: _containers.RepeatedScalarFieldContainer[str]
    min_severity: _envelope_pb2.Severity
    bbox: BoundingBox
    statuses: _containers.RepeatedScalarFieldContainer[_envelope_pb2.Status]
    def __init__(self, kinds: _Optional[_Iterable[_Union[_envelope_pb2.Kind, str]]] = ..., regions: _Optional[_Iterable[str]] = ..., agencies: _Optional[_Iterable[str]] = ..., min_severity: _Optional[_Union[_envelope_pb2.Severity, str]] = ..., bbox: _Optional[_Union[BoundingBox, _Mapping]] = ..., statuses: _Optional[_Iterable[_Union[_envelope_pb2.Status, str]]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("filter", "offset", "time", "position", "durable_name", "max_batch", "shared_signatures")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DURABLE_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    SHARED_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    offset: int
    time: _timestamp_pb2.Timestamp
    position: StartPosition
    durable_name: str
    max_batch: int
    shared_signatures: bool
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., offset: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., position: _Optional[_Union[StartPosition, str]] = ..., durable_name: _Optional[str] = ..., max_batch: _Optional[int] = ..., shared_signatures: _Optional[bool] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("offset", "envelope", "appended_at")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    APPENDED_AT_FIELD_NUMBER: _ClassVar[int]
    offset: int
    envelope: _envelope_pb2.Envelope
    appended_at: _timestamp_pb2.Timestamp
    def __init__(self, offset: _Optional[int] = ..., envelope: _Optional[_Union[_envelope_pb2.Envelope, _Mapping]] = ..., appended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeliveryBatch(_message.Message):
    __slots__ = ("deliveries", "next_offset", "batch_signatures")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    next_offset: int
    batch_signatures: _containers.RepeatedCompositeFieldContainer[_envelope_pb2.Signature]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., next_offset: _Optional[int] = ..., batch_signatures: _Optional[_Iterable[_Union[_envelope_pb2.Signature, _Mapping]]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("durable_name", "next_offset")
    DURABLE_NAME_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    durable_name: str
    next_offset: int
    def __init__(self, durable_name: _Optional[str] = ..., next_offset: _Optional[int] = ...) -> None: ...

class AckReply(_message.Message):
    __slots__ = ("next_offset",)
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    next_offset: int
    def __init__(self, next_offset: _Optional[int] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("filter", "from_offset", "to_offset", "from_time", "to_time", "page_size", "page_token", "newest_first")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    FROM_TIME_FIELD_NUMBER: _ClassVar[int]
    TO_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    from_offset: int
    to_offset: int
    from_time: _timestamp_pb2.Timestamp
    to_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    newest_first: bool
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., from_offset: _Optional[int] = ..., to_offset: _Optional[int] = ..., from_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., to_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class QueryReply(_message.Message):
    __slots__ = ("deliveries", "next_page_token")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    next_page_token: str
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetReply(_message.Message):
    __slots__ = ("deliveries", "missing")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CertificatesRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, sha256: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CertificatesReply(_message.Message):
    __slots__ = ("certificates",)
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, certificates: _Optional[_Iterable[bytes]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node", "level", "region", "oldest_offset", "next_offset", "version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    OLDEST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    level: str
    region: str
    oldest_offset: int
    next_offset: int
    version: str
    def __init__(self, node: _Optional[str] = ..., level: _Optional[str] = ..., region: _Optional[str] = ..., oldest_offset: _Optional[int] = ..., next_offset: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...
