import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    ALERT: _ClassVar[Kind]
    INCIDENT: _ClassVar[Kind]
    OBSERVATION: _ClassVar[Kind]
    POSITION: _ClassVar[Kind]
    RESOURCE: _ClassVar[Kind]
    COMMAND: _ClassVar[Kind]
    COMMAND_ACK: _ClassVar[Kind]
    HEARTBEAT: _ClassVar[Kind]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    BLUE: _ClassVar[Severity]
    YELLOW: _ClassVar[Severity]
    ORANGE: _ClassVar[Severity]
    RED: _ClassVar[Severity]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    ACTUAL: _ClassVar[Status]
    EXERCISE: _ClassVar[Status]
    TEST: _ClassVar[Status]

class IncidentGrade(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INCIDENT_GRADE_UNSPECIFIED: _ClassVar[IncidentGrade]
    GRADE_GENERAL: _ClassVar[IncidentGrade]
    GRADE_LARGER: _ClassVar[IncidentGrade]
    GRADE_MAJOR: _ClassVar[IncidentGrade]
    GRADE_EXTRAORDINARY: _ClassVar[IncidentGrade]

class ReportStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_STAGE_UNSPECIFIED: _ClassVar[ReportStage]
    STAGE_INITIAL: _ClassVar[ReportStage]
    STAGE_FOLLOW_UP: _ClassVar[ReportStage]
    STAGE_FINAL: _ClassVar[ReportStage]

class Quality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUALITY_UNSPECIFIED: _ClassVar[Quality]
    GOOD: _ClassVar[Quality]
    SUSPECT: _ClassVar[Quality]
    BAD: _ClassVar[Quality]
    MISSING: _ClassVar[Quality]
    MAINTENANCE: _ClassVar[Quality]
    CALIBRATION: _ClassVar[Quality]

class AckState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_STATE_UNSPECIFIED: _ClassVar[AckState]
    RECEIVED: _ClassVar[AckState]
    EXECUTED: _ClassVar[AckState]
    FAILED: _ClassVar[AckState]
    REFUSED: _ClassVar[AckState]
    EXPIRED: _ClassVar[AckState]
KIND_UNSPECIFIED: Kind
ALERT: Kind
INCIDENT: Kind
OBSERVATION: Kind
POSITION: Kind
RESOURCE: Kind
COMMAND: Kind
COMMAND_ACK: Kind
HEARTBEAT: Kind
SEVERITY_UNSPECIFIED: Severity
BLUE: Severity
YELLOW: Severity
ORANGE: Severity
RED: Severity
STATUS_UNSPECIFIED: Status
ACTUAL: Status
EXERCISE: Status
TEST: Status
INCIDENT_GRADE_UNSPECIFIED: IncidentGrade
GRADE_GENERAL: IncidentGrade
GRADE_LARGER: IncidentGrade
GRADE_MAJOR: IncidentGrade
GRADE_EXTRAORDINARY: IncidentGrade
REPORT_STAGE_UNSPECIFIED: ReportStage
STAGE_INITIAL: ReportStage
STAGE_FOLLOW_UP: ReportStage
STAGE_FINAL: ReportStage
QUALITY_UNSPECIFIED: Quality
GOOD: Quality
SUSPECT: Quality
BAD: Quality
MISSING: Quality
MAINTENANCE: Quality
CALIBRATION: Quality
ACK_STATE_UNSPECIFIED: AckState
RECEIVED: AckState
EXECUTED: AckState
FAILED: AckState
REFUSED: AckState
EXPIRED: AckState

class Origin(_message.Message):
    __slots__ = ("agency", "node", "system", "region")
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    agency: str
    node: str
    system: str
    region: str
    def __init__(self, agency: _Optional[str] = ..., node: _Optional[str] = ..., system: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("lat", "lon", "altitude_m")
    LAT_FIELD_NUMBER: _ClassVar[int]
    LON_FIELD_NUMBER: _ClassVar[int]
    ALTITUDE_M_FIELD_NUMBER: _ClassVar[int]
    lat: float
    lon: float
    altitude_m: float
    def __init__(self, lat: _Optional[float] = ..., lon: _Optional[float] = ..., altitude_m: _Optional[float] = ...) -> None: ...

class Polygon(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class Circle(_message.Message):
    __slots__ = ("center", "radius_m")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    RADIUS_M_FIELD_NUMBER: _ClassVar[int]
    center: Point
    radius_m: float
    def __init__(self, center: _Optional[_Union[Point, _Mapping]] = ..., radius_m: _Optional[float] = ...) -> None: ...

class Geometry(_message.Message):
    __slots__ = ("point", "polygons", "circles")
    POINT_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    CIRCLES_FIELD_NUMBER: _ClassVar[int]
    point: Point
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    circles: _containers.RepeatedCompositeFieldContainer[Circle]
    def __init__(self, point: _Optional[_Union[Point, _Mapping]] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ..., circles: _Optional[_Iterable[_Union[Circle, _Mapping]]] = ...) -> None: ...

class NamedValue(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class AlertArea(_message.Message):
    __slots__ = ("description", "polygons", "circles", "geocodes", "altitude_m", "ceiling_m")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    CIRCLES_FIELD_NUMBER: _ClassVar[int]
    GEOCODES_FIELD_NUMBER: _ClassVar[int]
    ALTITUDE_M_FIELD_NUMBER: _ClassVar[int]
    CEILING_M_FIELD_NUMBER: _ClassVar[int]
    description: str
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    circles: _containers.RepeatedCompositeFieldContainer[Circle]
    geocodes: _containers.RepeatedCompositeFieldContainer[NamedValue]
    altitude_m: float
    ceiling_m: float
    def __init__(self, description: _Optional[str] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ..., circles: _Optional[_Iterable[_Union[Circle, _Mapping]]] = ..., geocodes: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ..., altitude_m: _Optional[float] = ..., ceiling_m: _Optional[float] = ...) -> None: ...

class AlertResource(_message.Message):
    __slots__ = ("description", "mime_type", "size", "uri", "deref_uri", "digest")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    DEREF_URI_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    description: str
    mime_type: str
    size: int
    uri: str
    deref_uri: bytes
    digest: str
    def __init__(self, description: _Optional[str] = ..., mime_type: _Optional[str] = ..., size: _Optional[int] = ..., uri: _Optional[str] = ..., deref_uri: _Optional[bytes] = ..., digest: _Optional[str] = ...) -> None: ...

class AlertInfo(_message.Message):
    __slots__ = ("language", "categories", "event", "response_types", "urgency", "severity", "certainty", "audience", "event_codes", "effective", "onset", "expires", "sender_name", "headline", "description", "instruction", "web", "contact", "parameters", "resources", "areas")
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TYPES_FIELD_NUMBER: _ClassVar[int]
    URGENCY_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    CERTAINTY_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_CODES_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FIELD_NUMBER: _ClassVar[int]
    ONSET_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    SENDER_NAME_FIELD_NUMBER: _ClassVar[int]
    HEADLINE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    WEB_FIELD_NUMBER: _ClassVar[int]
    CONTACT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    AREAS_FIELD_NUMBER: _ClassVar[int]
    language: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    event: str
    response_types: _containers.RepeatedScalarFieldContainer[str]
    urgency: str
    severity: str
    certainty: str
    audience: str
    event_codes: _containers.RepeatedCompositeFieldContainer[NamedValue]
    effective: _timestamp_pb2.Timestamp
    onset: _timestamp_pb2.Timestamp
    expires: _timestamp_pb2.Timestamp
    sender_name: str
    headline: str
    description: str
    instruction: str
    web: str
    contact: str
    parameters: _containers.RepeatedCompositeFieldContainer[NamedValue]
    resources: _containers.RepeatedCompositeFieldContainer[AlertResource]
    areas: _containers.RepeatedCompositeFieldContainer[AlertArea]
    def __init__(self, language: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., event: _Optional[str] = ..., response_types: _Optional[_Iterable[str]] = ..., urgency: _Optional[str] = ..., severity: _Optional[str] = ..., certainty: _Optional[str] = ..., audience: _Optional[str] = ..., event_codes: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ..., effective: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., onset: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sender_name: _Optional[str] = ..., headline: _Optional[str] = ..., description: _Optional[str] = ..., instruction: _Optional[str] = ..., web: _Optional[str] = ..., contact: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ..., resources: _Optional[_Iterable[_Union[AlertResource, _Mapping]]] = ..., areas: _Optional[_Iterable[_Union[AlertArea, _Mapping]]] = ...) -> None: ...

class DisseminationMethod(_message.Message):
    __slots__ = ("name", "message", "audience_groups", "audience_parts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_GROUPS_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_PARTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    message: str
    audience_groups: str
    audience_parts: str
    def __init__(self, name: _Optional[str] = ..., message: _Optional[str] = ..., audience_groups: _Optional[str] = ..., audience_parts: _Optional[str] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("sender", "msg_type", "scope", "source", "restriction", "addresses", "codes", "note", "incidents", "infos", "dissemination", "event_type_code", "identifier", "sent", "status", "references", "time_zone", "xml_signature", "sender_code", "sec_classification", "methods")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    MSG_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RESTRICTION_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    INFOS_FIELD_NUMBER: _ClassVar[int]
    DISSEMINATION_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_CODE_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    XML_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SENDER_CODE_FIELD_NUMBER: _ClassVar[int]
    SEC_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    sender: str
    msg_type: str
    scope: str
    source: str
    restriction: str
    addresses: str
    codes: _containers.RepeatedScalarFieldContainer[str]
    note: str
    incidents: str
    infos: _containers.RepeatedCompositeFieldContainer[AlertInfo]
    dissemination: str
    event_type_code: str
    identifier: str
    sent: _timestamp_pb2.Timestamp
    status: str
    references: str
    time_zone: str
    xml_signature: str
    sender_code: str
    sec_classification: str
    methods: _containers.RepeatedCompositeFieldContainer[DisseminationMethod]
    def __init__(self, sender: _Optional[str] = ..., msg_type: _Optional[str] = ..., scope: _Optional[str] = ..., source: _Optional[str] = ..., restriction: _Optional[str] = ..., addresses: _Optional[str] = ..., codes: _Optional[_Iterable[str]] = ..., note: _Optional[str] = ..., incidents: _Optional[str] = ..., infos: _Optional[_Iterable[_Union[AlertInfo, _Mapping]]] = ..., dissemination: _Optional[str] = ..., event_type_code: _Optional[str] = ..., identifier: _Optional[str] = ..., sent: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[str] = ..., references: _Optional[str] = ..., time_zone: _Optional[str] = ..., xml_signature: _Optional[str] = ..., sender_code: _Optional[str] = ..., sec_classification: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[DisseminationMethod, _Mapping]]] = ...) -> None: ...

class Distribution(_message.Message):
    __slots__ = ("distribution_id", "sender_id", "sent", "expires", "status", "kind", "recipients", "keywords", "target_area", "target_regions", "language", "combined_confidentiality", "version")
    DISTRIBUTION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_AREA_FIELD_NUMBER: _ClassVar[int]
    TARGET_REGIONS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    COMBINED_CONFIDENTIALITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    distribution_id: str
    sender_id: str
    sent: _timestamp_pb2.Timestamp
    expires: _timestamp_pb2.Timestamp
    status: str
    kind: str
    recipients: _containers.RepeatedCompositeFieldContainer[NamedValue]
    keywords: _containers.RepeatedCompositeFieldContainer[NamedValue]
    target_area: Geometry
    target_regions: _containers.RepeatedScalarFieldContainer[str]
    language: str
    combined_confidentiality: str
    version: str
    def __init__(self, distribution_id: _Optional[str] = ..., sender_id: _Optional[str] = ..., sent: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[str] = ..., kind: _Optional[str] = ..., recipients: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ..., keywords: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ..., target_area: _Optional[_Union[Geometry, _Mapping]] = ..., target_regions: _Optional[_Iterable[str]] = ..., language: _Optional[str] = ..., combined_confidentiality: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Casualties(_message.Message):
    __slots__ = ("dead", "missing", "injured", "trapped", "evacuated", "affected")
    DEAD_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    INJURED_FIELD_NUMBER: _ClassVar[int]
    TRAPPED_FIELD_NUMBER: _ClassVar[int]
    EVACUATED_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_FIELD_NUMBER: _ClassVar[int]
    dead: int
    missing: int
    injured: int
    trapped: int
    evacuated: int
    affected: int
    def __init__(self, dead: _Optional[int] = ..., missing: _Optional[int] = ..., injured: _Optional[int] = ..., trapped: _Optional[int] = ..., evacuated: _Optional[int] = ..., affected: _Optional[int] = ...) -> None: ...

class Earthquake(_message.Message):
    __slots__ = ("magnitude", "magnitude_type", "depth_km", "catalog_id")
    MAGNITUDE_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_KM_FIELD_NUMBER: _ClassVar[int]
    CATALOG_ID_FIELD_NUMBER: _ClassVar[int]
    magnitude: float
    magnitude_type: str
    depth_km: float
    catalog_id: str
    def __init__(self, magnitude: _Optional[float] = ..., magnitude_type: _Optional[str] = ..., depth_km: _Optional[float] = ..., catalog_id: _Optional[str] = ...) -> None: ...

class Incident(_message.Message):
    __slots__ = ("incident_id", "event_type", "event_name", "grade", "stage", "report_number", "title", "description", "address", "casualties", "occurred_at", "reporter", "earthquake")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_NAME_FIELD_NUMBER: _ClassVar[int]
    GRADE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REPORT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CASUALTIES_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    EARTHQUAKE_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    event_type: str
    event_name: str
    grade: IncidentGrade
    stage: ReportStage
    report_number: int
    title: str
    description: str
    address: str
    casualties: Casualties
    occurred_at: _timestamp_pb2.Timestamp
    reporter: str
    earthquake: Earthquake
    def __init__(self, incident_id: _Optional[str] = ..., event_type: _Optional[str] = ..., event_name: _Optional[str] = ..., grade: _Optional[_Union[IncidentGrade, str]] = ..., stage: _Optional[_Union[ReportStage, str]] = ..., report_number: _Optional[int] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., address: _Optional[str] = ..., casualties: _Optional[_Union[Casualties, _Mapping]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reporter: _Optional[str] = ..., earthquake: _Optional[_Union[Earthquake, _Mapping]] = ...) -> None: ...

class Measurement(_message.Message):
    __slots__ = ("metric", "value", "unit", "quality", "flag", "at")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    metric: str
    value: float
    unit: str
    quality: Quality
    flag: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., unit: _Optional[str] = ..., quality: _Optional[_Union[Quality, str]] = ..., flag: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("station_id", "station_name", "station_type", "device_id", "interval", "measurements", "series")
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATION_NAME_FIELD_NUMBER: _ClassVar[int]
    STATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    station_id: str
    station_name: str
    station_type: str
    device_id: str
    interval: str
    measurements: _containers.RepeatedCompositeFieldContainer[Measurement]
    series: _containers.RepeatedCompositeFieldContainer[Series]
    def __init__(self, station_id: _Optional[str] = ..., station_name: _Optional[str] = ..., station_type: _Optional[str] = ..., device_id: _Optional[str] = ..., interval: _Optional[str] = ..., measurements: _Optional[_Iterable[_Union[Measurement, _Mapping]]] = ..., series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("metric", "unit", "start_ms", "at_delta_ms", "values", "quality")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    AT_DELTA_MS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    metric: str
    unit: str
    start_ms: int
    at_delta_ms: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    quality: _containers.RepeatedScalarFieldContainer[Quality]
    def __init__(self, metric: _Optional[str] = ..., unit: _Optional[str] = ..., start_ms: _Optional[int] = ..., at_delta_ms: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., quality: _Optional[_Iterable[_Union[Quality, str]]] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("unit_id", "callsign", "unit_type", "speed_mps", "course_deg", "status")
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    CALLSIGN_FIELD_NUMBER: _ClassVar[int]
    UNIT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SPEED_MPS_FIELD_NUMBER: _ClassVar[int]
    COURSE_DEG_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    unit_id: str
    callsign: str
    unit_type: str
    speed_mps: float
    course_deg: float
    status: str
    def __init__(self, unit_id: _Optional[str] = ..., callsign: _Optional[str] = ..., unit_type: _Optional[str] = ..., speed_mps: _Optional[float] = ..., course_deg: _Optional[float] = ..., status: _Optional[str] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("resource_id", "name", "resource_type", "quantity", "unit", "status", "owner")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    name: str
    resource_type: str
    quantity: float
    unit: str
    status: str
    owner: str
    def __init__(self, resource_id: _Optional[str] = ..., name: _Optional[str] = ..., resource_type: _Optional[str] = ..., quantity: _Optional[float] = ..., unit: _Optional[str] = ..., status: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("targets", "action", "parameters", "issued_by")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BY_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedScalarFieldContainer[str]
    action: str
    parameters: _containers.ScalarMap[str, str]
    issued_by: str
    def __init__(self, targets: _Optional[_Iterable[str]] = ..., action: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., issued_by: _Optional[str] = ...) -> None: ...

class CommandAck(_message.Message):
    __slots__ = ("command_id", "state", "detail")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    state: AckState
    detail: str
    def __init__(self, command_id: _Optional[str] = ..., state: _Optional[_Union[AckState, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("subject", "interval_s", "state")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    subject: str
    interval_s: int
    state: str
    def __init__(self, subject: _Optional[str] = ..., interval_s: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class Hop(_message.Message):
    __slots__ = ("node", "received_at")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    node: str
    received_at: _timestamp_pb2.Timestamp
    def __init__(self, node: _Optional[str] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("signer", "algorithm", "value", "batch_root", "batch_proof", "batch_index", "certificate", "certificate_sha256", "batch_leaves")
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROOT_FIELD_NUMBER: _ClassVar[int]
    BATCH_PROOF_FIELD_NUMBER: _ClassVar[int]
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    BATCH_LEAVES_FIELD_NUMBER: _ClassVar[int]
    signer: str
    algorithm: str
    value: bytes
    batch_root: bytes
    batch_proof: _containers.RepeatedScalarFieldContainer[bytes]
    batch_index: int
    certificate: bytes
    certificate_sha256: bytes
    batch_leaves: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, signer: _Optional[str] = ..., algorithm: _Optional[str] = ..., value: _Optional[bytes] = ..., batch_root: _Optional[bytes] = ..., batch_proof: _Optional[_Iterable[bytes]] = ..., batch_index: _Optional[int] = ..., certificate: _Optional[bytes] = ..., certificate_sha256: _Optional[bytes] = ..., batch_leaves: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("hops", "original_format", "original_id", "signature")
    HOPS_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    hops: _containers.RepeatedCompositeFieldContainer[Hop]
    original_format: str
    original_id: str
    signature: Signature
    def __init__(self, hops: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ..., original_format: _Optional[str] = ..., original_id: _Optional[str] = ..., signature: _Optional[_Union[Signature, _Mapping]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("id", "kind", "region", "origin", "observed_at", "sent_at", "expires_at", "severity", "status", "priority", "geometry", "references", "attributes", "provenance", "distribution", "alert", "incident", "observation", "position", "resource", "command", "command_ack", "heartbeat")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: Kind
    region: str
    origin: Origin
    observed_at: _timestamp_pb2.Timestamp
    sent_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    severity: Severity
    status: Status
    priority: int
    geometry: Geometry
    references: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.ScalarMap[str, str]
    provenance: Provenance
    distribution: Distribution
    alert: Alert
    incident: Incident
    observation: Observation
    position: Position
    resource: Resource
    command: Command
    command_ack: CommandAck
    heartbeat: Heartbeat
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[Kind, str]] = ..., region: _Optional[str] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., severity: _Optional[_Union[Severity, str]] = ..., status: _Optional[_Union[Status, str]] = ..., priority: _Optional[int] = ..., geometry: _Optional[_Union[Geometry, _Mapping]] = ..., references: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., distribution: _Optional[_Union[Distribution, _Mapping]] = ..., alert: _Optional[_Union[Alert, _Mapping]] = ..., incident: _Optional[_Union[Incident, _Mapping]] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ..., position: _Optional[_Union[Position, _Mapping]] = ..., resource: _Optional[_Union[Resource, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., command_ack: _Optional[_Union[CommandAck, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...
