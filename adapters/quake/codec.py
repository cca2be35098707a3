"""Earthquake catalogue feeds into canonical INCIDENT envelopes: one report per event version.

Sans-IO, like h11's ``Connection``: a ``QuakeCodec`` is given bytes and returns envelopes, and
keeps between calls only what it must to report each event once (``EventMemory``). A runner keeps
one codec per feed across polls; codecs made with ``sibling()`` share the memory, so an event read
from USGS GeoJSON and then, in the same version, from QuakeML goes out once.

Report chain. The first version of an event seen goes out as STAGE_INITIAL (report_number 1); a
later version (a newer update stamp) as STAGE_FOLLOW_UP with the next number and a reference to
the previous envelope; a version that is not newer is skipped. An event its source withdraws
(USGS status "deleted", QuakeML type "not existing", CENC IS_DEL) closes the chain with a
STAGE_FINAL report carrying ``attributes["retracted"] = "true"``, when the event was reported
before; a withdrawn event never reported is skipped, since there is nothing to take back.

Envelope id: ``stable_id("quake", event id, update stamp in ms)``, so one version of one event
has one id whichever feed or format carried it, and the gateway's log stores it once even when
two codecs without shared memory both report it.

Region: the county-level division nearest the epicentre (``AdapterContext.places``) when it lies
within ``max_distance_km``, else the adapter's configured ``region``, else the event is refused.
``attributes["region_basis"]`` says which ("nearest" or "configured") and ``distance_km`` how far
the nearest place is. Grades come from ``grading.MAGNITUDE_GRADES``, and only for an epicentre
placed by the nearest rule: the national plan's thresholds are about Chinese populated areas, and
a distant earthquake filed under the home region is not a disaster of that grade there.

Errors. A document that cannot be read at all (not JSON, not well-formed or hostile XML, not the
expected format) raises ``AdapterError``. Within a readable document each event stands alone:
``decode_report`` returns the envelopes of the good events together with one ``AdapterError``
per bad event, naming its field (``features[3].geometry.coordinates[1]``, ``shuju[0].EPI_LAT``),
because one broken entry must not hold back an earthquake report. ``decode`` (the ``Codec``
protocol) returns the envelopes and raises the first error only when nothing at all could be
reported. Every outcome is counted in ``QuakeCodec.counts``.

The memory is updated as events are decoded. A runner that then fails to deliver the envelopes
calls ``undo(envelopes)``, so that decoding the same input again reports them again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.plugin import AdapterConfig, AdapterContext, ReportingCodec, config_as, stable_id
from adapters.quake import cenc, quakeml, usgs
from adapters.quake.event import Item, QuakeEvent, Skipped, millis
from adapters.quake.grading import UNGRADED, grade_of
from adapters.quake.memory import EventMemory, Reported
from gateway.errors import ConfigError, InvalidEnvelopeError
from gateway.validation import AGENCIES, Validator

#: Each inbound format and the parser that reads it.
PARSERS: dict[str, Callable[[bytes, float], list[Item]]] = {
    usgs.FORMAT: usgs.parse,
    quakeml.FORMAT: quakeml.parse,
    cenc.FORMAT: cenc.parse,
}


@dataclass(frozen=True, kw_only=True)
class QuakeConfig(AdapterConfig):
    """The quake adapter's settings (a ``[adapters.quake]`` table)."""

    agency: str = "earthquake"
    max_distance_km: float = field(
        default=100.0,
        metadata={"doc": "an epicentre within this distance of a county-level place is filed under that place"},
    )
    min_magnitude: float = field(
        default=0.0, metadata={"doc": "events below this magnitude are not reported (updates of reported ones are)"}
    )
    remember_events: int = field(
        default=10_000, metadata={"doc": "how many events the codec remembers to report each version once"}
    )
    event_type: str = field(
        default="earthquake", metadata={"doc": "incident.event_type of the reports (a national event-type code)"}
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_distance_km) and self.max_distance_km >= 0):
            raise ConfigError("must be a distance in km, 0 or more", key="max_distance_km")
        if not math.isfinite(self.min_magnitude):
            raise ConfigError("must be a finite magnitude", key="min_magnitude")
        if self.remember_events < 1:
            raise ConfigError("must be at least 1", key="remember_events")
        if not self.event_type or any(c.isspace() for c in self.event_type):
            raise ConfigError("must be a code without white space", key="event_type")


class QuakeCodec(ReportingCodec):
    """Decodes one earthquake feed format into INCIDENT envelopes; remembers what it reported."""

    def __init__(
        self, fmt: str, config: QuakeConfig, context: AdapterContext, memory: EventMemory | None = None
    ) -> None:
        if fmt not in PARSERS:
            raise ConfigError(f"the quake adapter has no format {fmt!r} ({', '.join(PARSERS)})")
        self.format = fmt
        self.config = config
        self.context = context
        self.memory = memory if memory is not None else EventMemory(config.remember_events)
        #: outcomes by name: "reported", "skipped:<reason>", "error:<kind>"
        self.counts: Counter[str] = Counter()
        self._parse = PARSERS[fmt]
        self._validator = Validator(context.regions, agencies=AGENCIES | {config.agency})

    def sibling(self, fmt: str) -> QuakeCodec:
        """A codec of another format that shares this one's memory (one event, one report chain)."""
        return QuakeCodec(fmt, self.config, self.context, self.memory)

    def decode_report(self, data: bytes) -> tuple[list[pb.Envelope], list[AdapterError]]:
        """The envelopes of the new events and versions in ``data``, and an error per bad event.

        Raises AdapterError only when the document as a whole cannot be read.
        """
        now = self._now()
        try:
            items = self._parse(data, now)
        except AdapterError as exc:
            self.counts[f"error:{exc.kind}"] += 1
            raise
        envelopes: list[pb.Envelope] = []
        errors: list[AdapterError] = []
        for item in items:
            if isinstance(item, Skipped):
                self.counts[f"skipped:{item.reason}"] += 1
                continue
            try:
                envelope = item if isinstance(item, AdapterError) else self._report(item, now)
            except AdapterError as exc:
                envelope = exc
            if isinstance(envelope, AdapterError):
                self.counts[f"error:{envelope.kind}"] += 1
                errors.append(envelope)
            elif envelope is not None:
                self.counts["reported"] += 1
                envelopes.append(envelope)
        return envelopes, errors

    def undo(self, envelopes: Sequence[pb.Envelope]) -> int:
        """Forgets that ``envelopes`` (of this codec's last decode) were reported, because they could
        not be delivered: decoding the same input again reports them again. Returns how many."""
        undone = 0
        for env in reversed(envelopes):
            undone += self.memory.undo(env.incident.incident_id, env.id)
        return undone

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes:  # noqa: ARG002 (the Codec protocol's signature)
        raise AdapterError("the quake adapter only decodes earthquake feeds", kind="unsupported")

    # -- one event --------------------------------------------------------------------------------

    def _report(self, event: QuakeEvent, now: float) -> pb.Envelope | None:
        """The envelope reporting ``event``, or None when it is not news (counted as skipped)."""
        ids = (event.event_id, *event.aliases)
        event_id = self.memory.known_id(ids) or event.event_id
        previous = self.memory.get(event_id)
        updated_ms = millis(event.updated)
        if previous is None:
            if event.retracted:
                self._skip("retracted-unreported")
                return None
            if event.magnitude < self.config.min_magnitude:
                self._skip("below-min-magnitude")
                return None
            stage, number = pb.STAGE_INITIAL, 1
        elif updated_ms < previous.updated_ms:
            self._skip("older-version")
            return None
        elif updated_ms == previous.updated_ms:
            self._skip("duplicate")
            return None
        else:
            stage = pb.STAGE_FINAL if event.retracted else pb.STAGE_FOLLOW_UP
            number = previous.report_number + 1

        envelope = self._envelope(event, event_id, updated_ms, stage, number)
        if previous is not None:
            envelope.references.append(previous.envelope_id)
        try:
            self._validator.check(envelope, envelope.ByteSize(), now)
        except InvalidEnvelopeError as exc:  # a bug of ours or a value no check above foresaw
            raise AdapterError(f"the report would not be admitted: {exc}", field=event.path, kind="canonical") from None
        aliases = tuple(i for i in dict.fromkeys(ids) if i != event_id)
        before = dataclasses.replace(previous, before=None) if previous is not None else None
        self.memory.remember(event_id, Reported(updated_ms, number, envelope.id, aliases, event.retracted, before))
        return envelope

    def _skip(self, reason: str) -> None:
        self.counts[f"skipped:{reason}"] += 1

    def _envelope(
        self, event: QuakeEvent, event_id: str, updated_ms: int, stage: pb.ReportStage, number: int
    ) -> pb.Envelope:
        region, basis, distance = self._region(event)
        graded = grade_of(event.magnitude) if basis == "nearest" else UNGRADED
        env = pb.Envelope(
            id=stable_id("quake", event_id, str(updated_ms)),
            kind=pb.INCIDENT,
            region=region,
            status=pb.ACTUAL,
            severity=graded.severity,
            priority=graded.priority,
        )
        env.origin.agency = self.config.agency
        env.origin.region = self.config.region
        env.origin.system = self.config.system or f"quake/{self.format}"
        _set_time(env.observed_at, event.origin_time)
        _set_time(env.sent_at, event.updated)
        env.geometry.point.lat = event.lat
        env.geometry.point.lon = event.lon
        env.provenance.original_format = self.format
        env.provenance.original_id = event.event_id

        incident = env.incident
        incident.incident_id = event_id
        incident.event_type = self.config.event_type
        incident.event_name = "地震"
        incident.grade = graded.grade
        incident.stage = stage
        incident.report_number = number
        incident.title = event.title
        incident.description = event.description
        if event.retracted:
            incident.description += " 来源已撤销该地震 (withdrawn by the source)."
        incident.address = event.place
        incident.reporter = event.reporter
        _set_time(incident.occurred_at, event.origin_time)
        quake = incident.earthquake
        quake.magnitude = event.magnitude
        quake.magnitude_type = event.magnitude_type
        quake.depth_km = event.depth_km if event.depth_km is not None else 0.0
        quake.catalog_id = event.event_id

        attributes: dict[str, str] = dict(event.attributes)
        attributes["region_basis"] = basis
        attributes["distance_km"] = f"{distance:.1f}"
        if event.depth_km is None:
            attributes["depth"] = "unknown"  # depth_km 0 would otherwise read as a surface event
        if graded.name:
            attributes["grade_basis"] = f"magnitude ({graded.name})"
        if event.retracted:
            attributes["retracted"] = "true"
        env.attributes.update(attributes)
        return env

    def _region(self, event: QuakeEvent) -> tuple[str, str, float]:
        """(region code, "nearest" or "configured", distance in km to the nearest place)."""
        try:
            nearest = self.context.places.nearest(event.lat, event.lon)
        except ValueError as exc:  # no places loaded
            raise AdapterError(f"no place to file the epicentre under: {exc}", field=event.path) from None
        if nearest.distance_km <= self.config.max_distance_km and nearest.code in self.context.regions:
            return nearest.code, "nearest", nearest.distance_km
        if self.config.region:
            return self.config.region, "configured", nearest.distance_km
        raise AdapterError(
            f"the epicentre is {nearest.distance_km:.0f} km from the nearest place, more than max_distance_km "
            f"({self.config.max_distance_km:g}), and the adapter has no region configured",
            field=event.path,
            kind="value",
        )

    def _now(self) -> float:
        return self.context.time()


def open_codec(fmt: str, config: Any, context: AdapterContext) -> QuakeCodec:
    """The ``Adapter.codec`` factory: a fresh codec (with its own memory) for ``fmt``."""
    config = config_as(QuakeConfig, config)
    return QuakeCodec(fmt, config, context)


def _set_time(timestamp: Timestamp, moment: dt.datetime) -> None:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    timestamp.FromMicroseconds((moment - epoch) // dt.timedelta(microseconds=1))
