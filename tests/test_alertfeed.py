"""The Atom feed of alerts in effect: which alerts it lists, in what order, and that it is Atom."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest
from yiwang.v1 import envelope_pb2 as pb

from adapters.alertfeed import CAP_MIME_TYPE, EVENT_SCHEME, SEVERITY_SCHEME, atom_feed
from adapters.gbt35965 import ADAPTER
from tests.samples import data

ATOM = "{http://www.w3.org/2005/Atom}"
T0 = 1_720_000_000  # 2024-07-03T09:46:40Z
HOUR = 3600


def alert(
    envelope_id: str,
    *,
    sent: int = T0,
    msg_type: str = "Alert",
    references: tuple[str, ...] = (),
    expires: int | None = None,
    info_expires: tuple[int | None, ...] = (None,),
    status: int = pb.ACTUAL,
    headline: str = "郑州市气象台发布暴雨红色预警",
) -> pb.Envelope:
    env = pb.Envelope(id=envelope_id, kind=pb.ALERT, region="410100", status=status, severity=pb.RED)  # type: ignore[arg-type]
    env.sent_at.FromSeconds(sent)
    env.references.extend(references)
    if expires is not None:
        env.expires_at.FromSeconds(expires)
    env.alert.msg_type = msg_type
    env.alert.sender = "郑州市气象台"
    for when in info_expires:
        info = env.alert.infos.add(
            event="暴雨", severity="Red", headline=headline, description="预计未来3小时降雨量将达100毫米以上。"
        )
        info.sender_name = "值班预报员"
        if when is not None:
            info.expires.FromSeconds(when)
    return env


def feed(envelopes: list[pb.Envelope], now: float = T0 + HOUR, **kwargs: object) -> bytes:
    return atom_feed(
        envelopes,
        feed_id="urn:yiwang:feed:henan-province",
        title="河南省生效预警",
        self_url="https://gw.example.invalid/alerts.atom?region=410000&kind=alert",
        cap_url=lambda env: f"https://gw.example.invalid/cap/{env.id}.xml",
        now=now,
        **kwargs,  # type: ignore[arg-type]
    )


def check_atom(document: bytes) -> ET.Element:
    """The feed's root after checking what RFC 4287 requires of a feed and its entries."""
    root = ET.fromstring(document)
    assert root.tag == f"{ATOM}feed"
    for name in ("id", "title", "updated"):
        assert len(root.findall(f"{ATOM}{name}")) == 1, f"atom:feed needs exactly one atom:{name}"
    feed_has_author = root.find(f"{ATOM}author") is not None
    for when in root.iter(f"{ATOM}updated"):
        assert dt.datetime.fromisoformat((when.text or "").replace("Z", "+00:00")).tzinfo is not None
    self_links = [link for link in root.findall(f"{ATOM}link") if link.get("rel") == "self"]
    assert len(self_links) == 1
    for entry in root.findall(f"{ATOM}entry"):
        for name in ("id", "title", "updated"):
            assert len(entry.findall(f"{ATOM}{name}")) == 1, f"atom:entry needs exactly one atom:{name}"
        assert (entry.findtext(f"{ATOM}id") or "").startswith("urn:")
        assert feed_has_author or entry.find(f"{ATOM}author/{ATOM}name") is not None
        alternates = [link for link in entry.findall(f"{ATOM}link") if link.get("rel", "alternate") == "alternate"]
        assert alternates or entry.find(f"{ATOM}content") is not None
        # at most one alternate link per type (and hreflang)
        assert len({link.get("type") for link in alternates}) == len(alternates)
        for category in entry.findall(f"{ATOM}category"):
            assert category.get("term")
    return root


def entry_ids(document: bytes) -> list[str]:
    return [entry.findtext(f"{ATOM}id") or "" for entry in check_atom(document).findall(f"{ATOM}entry")]


def test_an_active_alert_is_an_entry_with_everything_aggregators_read() -> None:
    root = check_atom(feed([alert("a1", expires=T0 + 6 * HOUR)]))
    assert root.findtext(f"{ATOM}id") == "urn:yiwang:feed:henan-province"
    assert root.findtext(f"{ATOM}title") == "河南省生效预警"
    assert root.findtext(f"{ATOM}updated") == "2024-07-03T09:46:40Z"
    [self_link] = root.findall(f"{ATOM}link")
    assert self_link.get("href") == "https://gw.example.invalid/alerts.atom?region=410000&kind=alert"
    [entry] = root.findall(f"{ATOM}entry")
    assert entry.findtext(f"{ATOM}id") == "urn:yiwang:envelope:a1"
    assert entry.findtext(f"{ATOM}title") == "郑州市气象台发布暴雨红色预警"
    assert entry.findtext(f"{ATOM}updated") == "2024-07-03T09:46:40Z"
    assert entry.findtext(f"{ATOM}author/{ATOM}name") == "值班预报员"
    assert entry.findtext(f"{ATOM}summary") == "预计未来3小时降雨量将达100毫米以上。"
    [link] = entry.findall(f"{ATOM}link")
    assert (link.get("rel"), link.get("type"), link.get("href")) == (
        "alternate",
        CAP_MIME_TYPE,
        "https://gw.example.invalid/cap/a1.xml",
    )
    categories = {c.get("scheme"): (c.get("term"), c.get("label")) for c in entry.findall(f"{ATOM}category")}
    assert categories == {SEVERITY_SCHEME: ("RED", "Red"), EVENT_SCHEME: ("暴雨", None)}


def test_newest_first() -> None:
    envelopes = [alert("old", sent=T0), alert("new", sent=T0 + 60), alert("mid", sent=T0 + 30)]
    document = feed(envelopes)
    assert entry_ids(document) == ["urn:yiwang:envelope:new", "urn:yiwang:envelope:mid", "urn:yiwang:envelope:old"]
    assert check_atom(document).findtext(f"{ATOM}updated") == "2024-07-03T09:47:40Z"


def test_a_cancel_removes_what_it_references_and_is_not_listed_itself() -> None:
    envelopes = [
        alert("a1"),
        alert("a2"),
        alert("c1", sent=T0 + 60, msg_type="Cancel", references=("a1",)),
    ]
    assert entry_ids(feed(envelopes)) == ["urn:yiwang:envelope:a2"]


def test_an_update_supersedes_what_it_references() -> None:
    envelopes = [alert("a1"), alert("u1", sent=T0 + 60, msg_type="Update", references=("a1",))]
    assert entry_ids(feed(envelopes)) == ["urn:yiwang:envelope:u1"]
    cancelled_update = [*envelopes, alert("c1", sent=T0 + 120, msg_type="Cancel", references=("u1",))]
    assert entry_ids(feed(cancelled_update)) == []


def test_acks_and_errors_are_not_alerts_in_effect() -> None:
    envelopes = [alert("ack", msg_type="Ack"), alert("err", msg_type="Error"), alert("ok", msg_type="alert")]
    assert entry_ids(feed(envelopes)) == ["urn:yiwang:envelope:ok"]


@pytest.mark.parametrize(
    ("expires", "info_expires", "listed"),
    [
        (None, (None,), True),
        (T0 + 2 * HOUR, (None,), True),
        (T0 + HOUR, (None,), False),  # expiring exactly now counts as expired
        (T0 + 30 * 60, (None,), False),
        (None, (T0 + 30 * 60,), False),
        (None, (T0 + 30 * 60, T0 + 3 * HOUR), True),  # one info block is still in effect
        (None, (T0 + 30 * 60, None), True),
        (None, (T0 + 30 * 60, T0 + 40 * 60), False),
    ],
)
def test_expiry(expires: int | None, info_expires: tuple[int | None, ...], listed: bool) -> None:
    document = feed([alert("a1", expires=expires, info_expires=info_expires)])
    assert entry_ids(document) == (["urn:yiwang:envelope:a1"] if listed else [])


def test_only_actual_alerts_unless_asked() -> None:
    envelopes = [alert("real"), alert("drill", status=pb.EXERCISE), alert("test", status=pb.TEST)]
    assert entry_ids(feed(envelopes)) == ["urn:yiwang:envelope:real"]
    everything = feed(envelopes, statuses={pb.ACTUAL, pb.EXERCISE, pb.TEST})
    assert sorted(entry_ids(everything)) == [f"urn:yiwang:envelope:{name}" for name in ("drill", "real", "test")]


def test_other_kinds_are_ignored() -> None:
    heartbeat = pb.Envelope(id="hb", kind=pb.HEARTBEAT, region="410000", status=pb.ACTUAL)
    heartbeat.sent_at.FromSeconds(T0)
    assert entry_ids(feed([heartbeat, alert("a1")])) == ["urn:yiwang:envelope:a1"]


def test_an_empty_feed_is_still_a_valid_feed() -> None:
    root = check_atom(feed([], now=T0))
    assert root.findall(f"{ATOM}entry") == []
    assert root.findtext(f"{ATOM}updated") == "2024-07-03T09:46:40Z"


def test_text_is_escaped_and_unwritable_characters_dropped() -> None:
    hostile = 'a <b> & "c" ]]> \x07bell'
    env = alert("id with spaces/&", headline=hostile)
    root = check_atom(feed([env]))
    [entry] = root.findall(f"{ATOM}entry")
    assert entry.findtext(f"{ATOM}title") == hostile.replace("\x07", "")
    assert entry.findtext(f"{ATOM}id") == "urn:yiwang:envelope:id%20with%20spaces%2F%26"
    assert entry.find(f"{ATOM}link") is not None


def test_titles_and_authors_fall_back_when_the_source_has_none() -> None:
    env = pb.Envelope(id="bare", kind=pb.ALERT, region="410000", status=pb.ACTUAL)
    env.sent_at.FromSeconds(T0)
    env.origin.agency = "meteorology"
    env.alert.identifier = "41000041600000_20240703094640"
    root = check_atom(feed([env]))
    [entry] = root.findall(f"{ATOM}entry")
    assert entry.findtext(f"{ATOM}title") == "41000041600000_20240703094640"
    assert entry.findtext(f"{ATOM}author/{ATOM}name") == "meteorology"
    assert entry.find(f"{ATOM}summary") is None


def test_national_warnings_decoded_from_gbt35965() -> None:
    codec = ADAPTER.open("gbt35965")
    [red] = codec.decode(data("gbt35965/zhengzhou-rainstorm-red.xml").read_bytes())
    [cancel] = codec.decode(data("gbt35965/zhengzhou-rainstorm-cancel.xml").read_bytes())
    during = red.sent_at.seconds + HOUR
    assert entry_ids(feed([red], now=during)) == [f"urn:yiwang:envelope:{red.id}"]
    assert entry_ids(feed([red, cancel], now=during)) == []
    assert entry_ids(feed([red], now=red.expires_at.seconds)) == []
