"""An Atom 1.0 feed (RFC 4287) of the alerts in effect, the index that CAP aggregators (IPAWS,
Google Public Alerts) poll to find the CAP documents themselves.

A pure function of the envelopes and the time: the node decides where the feed is served and how
each alert's CAP document is addressed (``cap_url``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Collection, Iterable
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from google.protobuf.timestamp_pb2 import Timestamp
from yiwang.v1 import envelope_pb2 as pb

ATOM_NS = "http://www.w3.org/2005/Atom"
CAP_MIME_TYPE = "application/cap+xml"
#: Schemes of the two atom:category elements each entry carries.
SEVERITY_SCHEME = "urn:yiwang:severity"
EVENT_SCHEME = "urn:yiwang:event"

# Characters XML 1.0 cannot carry; they are dropped from feed text rather than failing the feed.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def atom_feed(
    envelopes: Iterable[pb.Envelope],
    *,
    feed_id: str,
    title: str,
    self_url: str,
    cap_url: Callable[[pb.Envelope], str],
    now: float,
    statuses: Collection[int] = (pb.ACTUAL,),
) -> bytes:
    """The Atom feed of the alerts among ``envelopes`` that are in effect at ``now`` (POSIX seconds).

    An alert is listed when it is an ALERT envelope whose status is one of ``statuses`` (only
    Actual by default: public aggregators must not show exercises or tests), whose msgType is not
    Cancel, Ack or Error, that no Cancel or Update among ``envelopes`` references, and that has not
    expired: neither its ``expires_at`` nor the expiry of every one of its info blocks has passed.
    Entries are newest first (by sent time, then id, so the output is deterministic).
    """
    alerts = [env for env in envelopes if env.kind == pb.ALERT and env.WhichOneof("payload") == "alert"]
    replaced = {
        ref for env in alerts if env.alert.msg_type.casefold() in {"cancel", "update"} for ref in env.references
    }
    active = [
        env
        for env in alerts
        if env.status in statuses
        and env.alert.msg_type.casefold() not in {"cancel", "ack", "error"}
        and env.id not in replaced
        and not _expired(env, now)
    ]
    active.sort(key=lambda env: (_seconds(env.sent_at), env.id), reverse=True)
    updated = _rfc3339(max((_seconds(env.sent_at) for env in active), default=now))
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<feed xmlns="{ATOM_NS}">',
        f"  <id>{_text(feed_id)}</id>",
        f"  <title>{_text(title)}</title>",
        f"  <updated>{updated}</updated>",
        f'  <link rel="self" type="application/atom+xml" href={_attr(self_url)}/>',
    ]
    for env in active:
        lines.extend(_entry(env, cap_url(env)))
    lines.append("</feed>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _entry(env: pb.Envelope, href: str) -> list[str]:
    """The lines of one alert's atom:entry, pointing at its CAP document ``href``."""
    alert = env.alert
    info = alert.infos[0] if alert.infos else pb.AlertInfo()
    title = info.headline or info.event or alert.identifier or env.id
    author = info.sender_name or alert.sender or env.origin.agency or "unknown"
    severity = pb.Severity.Name(env.severity)
    lines = [
        "  <entry>",
        f"    <id>urn:yiwang:envelope:{quote(env.id, safe='-._~')}</id>",
        f"    <title>{_text(title)}</title>",
        f"    <updated>{_rfc3339(_seconds(env.sent_at))}</updated>",
        f"    <author><name>{_text(author)}</name></author>",
        f'    <link rel="alternate" type="{CAP_MIME_TYPE}" href={_attr(href)}/>',
        (
            f"    <category scheme={_attr(SEVERITY_SCHEME)} term={_attr(severity)}"
            f" label={_attr(info.severity or severity)}/>"
        ),
    ]
    if info.event:
        lines.append(f"    <category scheme={_attr(EVENT_SCHEME)} term={_attr(info.event)}/>")
    if info.description:
        lines.append(f"    <summary>{_text(info.description)}</summary>")
    lines.append("  </entry>")
    return lines


def _expired(env: pb.Envelope, now: float) -> bool:
    """Whether the alert is no longer in effect at ``now``."""
    if env.HasField("expires_at") and _seconds(env.expires_at) <= now:
        return True
    infos = env.alert.infos
    # A message stays in effect while any of its info blocks does (they are often one per language).
    return bool(infos) and all(info.HasField("expires") and _seconds(info.expires) <= now for info in infos)


def _seconds(timestamp: Timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


def _rfc3339(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(int(seconds), dt.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}Z"


def _text(value: str) -> str:
    return escape(_NOT_XML_CHAR.sub("", value))


def _attr(value: str) -> str:
    return quoteattr(_NOT_XML_CHAR.sub("", value))
