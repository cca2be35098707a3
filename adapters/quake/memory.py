"""What a quake codec remembers between polls: the latest version it reported of each event.

Feeds are polled again and again and list the same events each time; several feeds (USGS GeoJSON
and QuakeML, say) list the same event. The memory is how the codec reports each event once and
then only its newer versions. It is bounded: the least recently seen events are forgotten first,
and an event forgotten and seen again is reported anew as an initial report.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reported:
    """The last version of an event that went out, and the report chain so far."""

    updated_ms: int  # version stamp of that version
    report_number: int  # 1 for the initial report
    envelope_id: str  # its envelope, referenced by the next report
    aliases: tuple[str, ...] = ()
    retracted: bool = False
    before: Reported | None = None  # the version reported before this one, to restore on undo (one level)


class EventMemory:
    """Bounded memory (least recently seen dropped first) of reported events by event id and alias."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._events: OrderedDict[str, Reported] = OrderedDict()
        self._alias_of: dict[str, str] = {}  # another id of an event -> the id it is remembered by

    def __len__(self) -> int:
        return len(self._events)

    def known_id(self, ids: Iterable[str]) -> str | None:
        """The id under which any of ``ids`` is remembered, so a re-identified event keeps its id."""
        for candidate in ids:
            if candidate in self._events:
                return candidate
            known = self._alias_of.get(candidate)
            if known is not None:
                return known
        return None

    def get(self, event_id: str) -> Reported | None:
        reported = self._events.get(event_id)
        if reported is not None:
            self._events.move_to_end(event_id)
        return reported

    def remember(self, event_id: str, reported: Reported) -> None:
        previous = self._events.pop(event_id, None)
        if previous is not None:
            self._forget_aliases(event_id, previous)
        self._events[event_id] = reported
        for alias in reported.aliases:
            if alias != event_id and alias not in self._events:
                self._alias_of[alias] = event_id
        while len(self._events) > self.capacity:
            oldest, dropped = self._events.popitem(last=False)
            self._forget_aliases(oldest, dropped)

    def undo(self, event_id: str, envelope_id: str) -> bool:
        """Takes back the report ``envelope_id`` of ``event_id`` if it is the latest (it was not
        delivered): the event's previous version, if any, becomes the latest again."""
        reported = self._events.get(event_id)
        if reported is None or reported.envelope_id != envelope_id:
            return False
        if reported.before is None:
            del self._events[event_id]
            self._forget_aliases(event_id, reported)
        else:
            self.remember(event_id, reported.before)
        return True

    def _forget_aliases(self, event_id: str, reported: Reported) -> None:
        for alias in reported.aliases:
            if self._alias_of.get(alias) == event_id:
                del self._alias_of[alias]
