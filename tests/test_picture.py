"""The web command picture's data over real HTTPS: what each identity sees, live and replayed."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.client import GatewayClient
from gateway.node import Node
from gateway.picture import PictureState
from gateway.pki import Authority, Role
from gateway.webauth import ScryptCost, User, UserStore, users_db
from tests import factories
from tests.conftest import NodeFactory, client_as, eventually, free_port, henan_network, issued_signer, running_tls_node

DOMAIN = "yjt.henan.gov.cn"
PASSWORD = "correct horse battery"
ACCEPTED = gw.PublishResult.ACCEPTED
USERS = {
    "jinshui-duty": ("410105", "emergency", Role.PLATFORM),
    "zhongyuan-duty": ("410102", "emergency", Role.PLATFORM),
    "province-duty": ("410000", "emergency", Role.PLATFORM),
}


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    return henan_network(tmp_path / "pki")


@pytest.fixture
async def node(pki: Authority, tmp_path: Path) -> AsyncIterator[Node]:
    async with running_tls_node(pki, tmp_path / "data", web={"enabled": True}) as running:
        store = UserStore(users_db(running.config), cost=ScryptCost(n=1 << 12))
        for name, (region, agency, role) in USERS.items():
            store.add(User(name, region, agency, role), PASSWORD)
        store.close()
        yield running


def base_url(node: Node) -> str:
    return f"https://127.0.0.1:{node.http_port}"


def browser_tls(pki: Authority) -> ssl.SSLContext:
    """What a browser without a client certificate has: trust in the network's CA, nothing more."""
    return ssl.create_default_context(cafile=str(pki.dir / "ca.pem"))


async def signed_in(node: Node, pki: Authority, user: str) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(
        base_url(node),
        connector=aiohttp.TCPConnector(ssl=browser_tls(pki)),
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # the node is reached by IP address
    )
    async with session.post("/picture/api/login", json={"user": user, "password": PASSWORD}) as reply:
        assert reply.status == 200, await reply.text()
    return session


async def publish(pki: Authority, node: Node, name: str, *envelopes: pb.Envelope) -> list[int]:
    async with client_as(pki, node, name) as client:
        reply = await client.publish(list(envelopes))
    assert all(r.outcome == ACCEPTED for r in reply.results), reply
    return [r.offset for r in reply.results]


def reading(envelope_id: str, region: str, station: str, value: float, agency: str = "water") -> pb.Envelope:
    env = factories.observation(envelope_id=envelope_id, region=region, agency=agency, value=value)
    env.observation.station_id = station
    env.observation.station_name = f"station {station}"
    return env


async def snapshot(session: aiohttp.ClientSession, **query: Any) -> dict[str, Any]:
    async with session.get("/picture/api/snapshot", params={k: str(v) for k, v in query.items()}) as reply:
        assert reply.status == 200, await reply.text()
        body: dict[str, Any] = await reply.json()
        return body


def ids(items: list[dict[str, Any]]) -> set[str]:
    return {item["id"] for item in items}


async def events(reply: aiohttp.ClientResponse, until: int) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """The batches of an SSE stream, as (event id, items), until ``until`` items of the log arrived."""
    seen = 0
    event_id, data = 0, ""
    while seen < until:
        line = (await reply.content.readline()).decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            items = [i for i in json.loads(data)["items"] if i["offset"] >= 0]
            seen += len(items)
            yield event_id, items
            data = ""


async def test_a_county_user_sees_nothing_of_another_county(node: Node, pki: Authority) -> None:
    await publish(pki, node, "zz-qxj", factories.alert(envelope_id="rain-zhongyuan", region="410102"))
    await publish(pki, node, "zz-qxj", factories.alert(envelope_id="rain-zhengzhou", region="410100"))
    await publish(pki, node, "zz-yjj", factories.incident(envelope_id="fire-jinshui", region="410105"))
    await publish(pki, node, "jinshui-water", reading("level-jinshui", "410105", "JS-1", 91.2))
    await publish(pki, node, "zhongyuan-water", reading("level-zhongyuan", "410102", "ZY-1", 88.0))
    async with await signed_in(node, pki, "jinshui-duty") as jinshui:
        await eventually(lambda: node.http is not None and node.http.picture is not None
                         and node.http.picture.picture.position > 5)  # fmt: skip
        mine = await snapshot(jinshui)
        assert mine["region"] == "410105"
        assert mine["region_name"] == "金水区"
        assert ids(mine["warnings"]) == {"rain-zhengzhou"}  # the city's warning concerns the county
        assert ids(mine["incidents"]) == {"fire-jinshui"}
        assert ids(mine["stations"]) == {"JS-1"}
        async with jinshui.get("/picture/api/item/level-zhongyuan") as reply:
            assert reply.status == 404
        async with jinshui.get("/picture/api/station/ZY-1/series") as reply:
            assert reply.status == 404
        async with jinshui.get("/picture/api/snapshot", params={"region": "410102"}) as reply:
            assert reply.status == 403
    async with await signed_in(node, pki, "zhongyuan-duty") as zhongyuan:
        theirs = await snapshot(zhongyuan)
        assert ids(theirs["warnings"]) == {"rain-zhongyuan", "rain-zhengzhou"}
        assert ids(theirs["incidents"]) == set()
        assert ids(theirs["stations"]) == {"ZY-1"}
    async with await signed_in(node, pki, "province-duty") as province:
        everything = await snapshot(province)
        assert ids(everything["stations"]) == {"JS-1", "ZY-1"}
        narrowed = await snapshot(province, region="410105", kind="alert,incident")
        assert ids(narrowed["warnings"]) == {"rain-zhengzhou"}
        assert ids(narrowed["incidents"]) == {"fire-jinshui"}
        assert narrowed["stations"] == []
        red_only = await snapshot(province, severity="red")
        assert red_only["warnings"] == []


async def test_the_stream_resumes_after_what_was_sent_without_gap_or_duplicate(node: Node, pki: Authority) -> None:
    assert node.http is not None
    assert node.http.picture is not None
    node.http.picture.picture.max_changes = 2  # so that a resume from the start is replayed from the log
    async with await signed_in(node, pki, "province-duty") as province:
        start = (await snapshot(province))["offset"]
        first = [factories.alert(envelope_id=f"first-{i}", region="410102") for i in range(3)]
        received: list[str] = []
        async with province.get("/picture/api/stream", params={"from": str(start)}) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/event-stream")
            await publish(pki, node, "zz-qxj", *first)
            last_id = 0
            async for event_id, items in events(reply, until=3):
                received += [i["id"] for i in items]
                last_id = event_id
        assert received == ["first-0", "first-1", "first-2"]
        await publish(pki, node, "zz-qxj", *(factories.alert(envelope_id=f"then-{i}") for i in range(2)))
        again: list[str] = []
        # as EventSource reconnects: its first URL again, and the id of the last event it had
        first_url, last_seen = {"from": str(start)}, {"Last-Event-ID": str(last_id)}
        async with province.get("/picture/api/stream", params=first_url, headers=last_seen) as reply:
            async for _, items in events(reply, until=2):
                again += [i["id"] for i in items]
        assert again == ["then-0", "then-1"]
        everything: list[str] = []
        async with province.get("/picture/api/stream", params={"from": "1"}) as reply:
            async for _, items in events(reply, until=5):
                everything += [i["id"] for i in items if i["type"] == "warning"]
        assert everything == received + again


async def test_the_time_slider_replays_the_picture_as_it_stood(node: Node, pki: Authority) -> None:
    await publish(pki, node, "zz-qxj", factories.alert(envelope_id="storm", region="410102"))
    moment = int(time.time() * 1000) + 1
    await eventually(lambda: time.time() * 1000 > moment + 2)
    cancel = factories.alert(envelope_id="storm-over", region="410102")
    cancel.alert.msg_type = "Cancel"
    cancel.references.append("storm")
    await publish(pki, node, "zz-qxj", cancel)
    async with await signed_in(node, pki, "province-duty") as province:
        await eventually(lambda: node.http is not None and node.http.picture is not None
                         and node.http.picture.picture.position > 2)  # fmt: skip
        assert ids((await snapshot(province))["warnings"]) == set()
        then = await snapshot(province, at=moment)
        assert ids(then["warnings"]) == {"storm"}
        assert then["offset"] == 2  # the stream of the replay goes on with the cancel
        assert then["links"] == []


async def test_the_detail_shows_provenance_signature_and_the_report_chain(node: Node, pki: Authority) -> None:
    signer = issued_signer(pki, "zz-yjj")
    first = factories.incident(envelope_id="flood-1", region="410105")
    second = factories.incident(envelope_id="flood-2", region="410105")
    second.incident.stage = pb.STAGE_FOLLOW_UP
    second.incident.report_number = 2
    second.incident.casualties.trapped = 4
    second.references.append("flood-1")
    signer.sign(second)
    await publish(pki, node, "zz-yjj", first)
    await publish(pki, node, "zz-yjj", second)
    async with await signed_in(node, pki, "jinshui-duty") as jinshui:
        await eventually(lambda: node.http is not None and node.http.picture is not None
                         and node.http.picture.picture.position > 2)  # fmt: skip
        incidents = (await snapshot(jinshui))["incidents"]
        assert [(i["id"], i["stage_label"], i["casualties"]["trapped"]) for i in incidents] == [("flood-2", "续报", 4)]
        async with jinshui.get("/picture/api/item/flood-2") as reply:
            detail = await reply.json()
    assert detail["item"]["chain"] == "ZZ-JS-1"
    assert detail["envelope"]["incident"]["stage"] == "STAGE_FOLLOW_UP"
    provenance = detail["provenance"]
    assert provenance["origin"]["agency"] == "emergency"
    assert [hop["node"] for hop in provenance["hops"]] == ["henan-province"]
    assert provenance["signature"] == {
        "signer": f"spiffe://{DOMAIN}/410100/emergency/department/zz-yjj",
        "verified_by": "henan-province",
        "verified": True,
    }
    assert [(h["id"], h["stage"]) for h in detail["history"]] == [("flood-1", "initial"), ("flood-2", "follow_up")]


async def test_a_station_panel_has_its_readings_over_time(node: Node, pki: Authority) -> None:
    values = [90.5, 91.0, 92.25]
    await publish(pki, node, "jinshui-water", *(reading(f"r{i}", "410105", "JS-1", v) for i, v in enumerate(values)))
    async with await signed_in(node, pki, "jinshui-duty") as jinshui:
        await eventually(lambda: node.http is not None and node.http.picture is not None
                         and node.http.picture.picture.position > 3)  # fmt: skip
        async with jinshui.get("/picture/api/station/JS-1/series", params={"hours": "2"}) as reply:
            body = await reply.json()
    assert body["station"]["value"] == 92.25
    assert body["station"]["level"] == "normal"
    [series] = body["series"]
    assert series["metric"] == "39"
    assert [p[1] for p in series["points"]] == values
    assert body["thresholds"] == []  # this node has no station registry, so no limits are known


async def test_a_sampled_series_shows_as_its_latest_point(node: Node, pki: Authority) -> None:
    block = reading("block", "410105", "JS-2", 0.0)
    metric = block.observation.measurements[0].metric
    del block.observation.measurements[:]
    start_ms = int(time.time() * 1000) - 100_000  # the last sample 100 ms ago
    series = block.observation.series.add(metric=metric, unit="m", start_ms=start_ms)
    series.at_delta_ms.extend([0] + [100] * 999)
    series.values.extend(90.0 + i / 1000 for i in range(1000))
    await publish(pki, node, "jinshui-water", block)
    async with await signed_in(node, pki, "jinshui-duty") as jinshui:
        await eventually(lambda: node.http is not None and node.http.picture is not None
                         and node.http.picture.picture.position > 1)  # fmt: skip
        async with jinshui.get("/picture/api/station/JS-2/series", params={"hours": "2"}) as reply:
            body = await reply.json()
    assert body["station"]["value"] == 90.999
    assert body["station"]["at"] == start_ms + 99_900  # the last sample's own time
    [line] = body["series"]
    assert [p[1] for p in line["points"]] == [90.999]  # one point of the chart per block


async def test_the_map_comes_per_level_and_regions_per_jurisdiction(node: Node, pki: Authority) -> None:
    async with await signed_in(node, pki, "province-duty") as province:
        async with province.get("/picture/api/map/410000") as reply:
            assert reply.content_type == "application/geo+json"
            henan = await reply.json(content_type=None)
        async with province.get("/picture/api/map/410100") as reply:
            zhengzhou = await reply.json(content_type=None)
        async with province.get("/picture/api/map/410105") as reply:
            jinshui = await reply.json(content_type=None)
        async with province.get("/picture/api/map/999999") as reply:
            assert reply.status == 404
    cities = {f["properties"]["code"] for f in henan["features"]}
    assert len(cities) == 18
    assert {"410100", "419001"} <= cities  # 济源 is a city-level division directly under the province
    assert all(f["geometry"]["type"] in ("Polygon", "MultiPolygon") for f in henan["features"])
    assert {f["properties"]["code"][:4] for f in zhengzhou["features"]} == {"4101"}
    assert len(zhengzhou["features"]) == 12
    assert [(f["properties"]["code"], f["properties"]["name"]) for f in jinshui["features"]] == [("410105", "金水区")]
    async with await signed_in(node, pki, "jinshui-duty") as county, county.get("/picture/api/regions") as reply:
        regions = (await reply.json())["regions"]
    assert regions == [{"code": "410105", "name": "金水区", "parent": "410100"}]


async def test_nothing_is_served_without_a_session(node: Node, pki: Authority) -> None:
    async with aiohttp.ClientSession(base_url(node), connector=aiohttp.TCPConnector(ssl=browser_tls(pki))) as anonymous:
        for path in (
            "/picture/api/me",
            "/picture/api/snapshot",
            "/picture/api/stream",
            "/picture/api/item/x",
            "/picture/api/station/x/series",
            "/picture/api/map/410000",
            "/picture/api/regions",
        ):
            async with anonymous.get(path) as reply:
                assert reply.status == 401, path
                assert "error" in await reply.json()
        async with anonymous.get("/picture/", allow_redirects=False) as reply:
            assert reply.status == 302
            assert reply.headers["Location"] == "/picture/login"
        async with anonymous.get("/healthz") as reply:
            assert reply.status == 401  # the node's own routes still need a client certificate


async def test_open_streams_end_when_the_node_stops(node: Node, pki: Authority) -> None:
    province = await signed_in(node, pki, "province-duty")
    async with province, province.get("/picture/api/stream") as reply:
        assert (await reply.content.readline()) == b"retry: 2000\n"
        await node.stop()
        await reply.content.read()  # returns only because the node ends the stream
        assert reply.content.at_eof()


async def test_a_warning_that_expires_leaves_the_stream_and_the_snapshot(node: Node, pki: Authority) -> None:
    brief = factories.alert(envelope_id="brief", region="410102")
    brief.expires_at.FromMilliseconds(int(time.time() * 1000) + 1000)
    province = await signed_in(node, pki, "province-duty")
    async with province, province.get("/picture/api/stream", params={"from": "1"}) as reply:
        await publish(pki, node, "zz-qxj", brief)
        seen: list[tuple[str, str]] = []
        data = ""
        while ("remove", "brief") not in seen:
            line = (await reply.content.readline()).decode().rstrip("\n")
            if line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                seen += [(i["type"], i["id"]) for i in json.loads(data)["items"] if i["type"] != "link"]
                data = ""
        assert seen == [("warning", "brief"), ("remove", "brief")]
        assert (await snapshot(province))["warnings"] == []


async def test_crossings_units_and_terminals_enter_the_picture(pki: Authority, tmp_path: Path) -> None:
    registry = tmp_path / "stations.toml"
    registry.write_text(
        '[[station]]\nprotocol = "sl651"\nid = "0041101050"\npassword = "1234"\nregion = "410105"\n'
        'agency = "water"\nname = "贾鲁河金水站"\nlimits = { "39" = { high = 86.5 } }\n',
        encoding="utf-8",
    )
    sections: dict[str, Any] = {"web": {"enabled": True}, "stations": {"registry": str(registry)}}
    async with running_tls_node(pki, tmp_path / "data", **sections) as node:
        store = UserStore(users_db(node.config), cost=ScryptCost(n=1 << 12))
        store.add(User("jinshui-duty", "410105", "emergency", Role.PLATFORM), PASSWORD)
        store.close()
        high = reading("high-water", "410105", "0041101050", 91.2)
        high.provenance.original_format = "sl651-2014"
        high.severity = pb.YELLOW
        high.attributes["edge.alarm"] = "39"
        high.attributes["sl651.crossing.39"] = "91.2 above 86.5"
        boat = pb.Envelope(id="boat-7-at-1", kind=pb.POSITION, region="410105", status=pb.ACTUAL)
        boat.origin.agency = "water"
        boat.origin.region = "410105"
        boat.sent_at.GetCurrentTime()
        boat.geometry.point.lat, boat.geometry.point.lon = 34.80, 113.70
        boat.position.unit_id, boat.position.callsign, boat.position.speed_mps = "boat-7", "冲锋舟7号", 3.5
        beat = pb.Envelope(id="gauge-alive", kind=pb.HEARTBEAT, region="410105", status=pb.ACTUAL)
        beat.origin.agency = "water"
        beat.origin.region = "410105"
        beat.sent_at.GetCurrentTime()
        beat.heartbeat.subject, beat.heartbeat.state = "410105/water/edge/gauge-3", "online"
        beat.attributes["edge.link"], beat.attributes["edge.session"] = "satellite", "4"
        await publish(pki, node, "jinshui-water", high, boat, beat)
        async with await signed_in(node, pki, "jinshui-duty") as jinshui:
            await eventually(lambda: node.http is not None and node.http.picture is not None
                             and node.http.picture.picture.position > 3)  # fmt: skip
            picture = await snapshot(jinshui)
            async with jinshui.get("/picture/api/station/0041101050/series") as reply:
                series = await reply.json()
    [alarm] = picture["alarms"]
    assert (alarm["source"], alarm["level"], alarm["text"]) == (
        "station",
        "warn",
        "station 0041101050: 91.2 above 86.5",
    )
    [station] = picture["stations"]
    assert (station["level"], station["metric"], station["envelope"]) == ("warn", "39", "high-water")
    assert station["metric_name"] != "39"  # named as SL 651 names it
    [unit] = picture["units"]
    assert (unit["id"], unit["callsign"], unit["lat"], unit["speed_mps"]) == ("boat-7", "冲锋舟7号", 34.80, 3.5)
    [terminal] = picture["terminals"]
    assert terminal["id"] == "410105/water/edge/gauge-3"
    assert (terminal["state"], terminal["link"], terminal["session"]) == ("alive", "satellite", 4)
    assert series["thresholds"] == [{"metric": "39", "level": "alarm", "value": 86.5, "label": "上限"}]


# -- checkpoints of the picture ---------------------------------------------------------------------

WINDOW_S = 1.2  # a window of about a second, so that the test's own rounds move it


def _canon(value: Any) -> str:
    """JSON as the page gets it (a checkpoint's tuples come back as lists)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _round(r: int, started_ms: int) -> list[pb.Envelope]:
    """Round ``r`` of a mixed stream: warnings updated, cancelled and expiring; an incident's reports
    (one final report that leaves the picture during the test); overdue notes; station readings with
    and without names and positions; crossings; units; terminals."""
    now_ms = int(time.time() * 1000)
    out: list[pb.Envelope] = []
    warning = factories.alert(envelope_id=f"warn-{r}", region="410100")
    if r % 2 == 0:
        warning.expires_at.FromMilliseconds(now_ms + 400)  # leaves by the clock between two rounds
    if r % 3 == 1:
        warning.alert.msg_type = "Update"
        warning.references.append(f"warn-{r - 1}")
    if r == 5:
        warning.alert.msg_type = "Cancel"
        warning.references.append("warn-3")
    if r % 4 == 0 and r >= 8:
        warning.alert.msg_type = "Update"
        warning.references.append(f"warn-{r - 7}")  # a chain whose start has left (or is leaving) the window
    out.append(warning)
    report = factories.incident(envelope_id=f"inc-{r}", region="410105")
    report.incident.incident_id = f"INC-{r // 4}"
    report.incident.stage = (pb.STAGE_INITIAL, pb.STAGE_FOLLOW_UP, pb.STAGE_FOLLOW_UP, pb.STAGE_FINAL)[r % 4]
    if r % 4 == 3:  # its 2 h after the final report end a little after this round
        report.sent_at.FromMilliseconds(now_ms - 2 * 3_600_000 + 300)
    out.append(report)
    if r % 4 == 1:
        late = factories.alert(envelope_id=f"late-{r}", region="410105")
        late.attributes["yiwang.overdue"] = "report"
        late.attributes["yiwang.overdue.subject"] = f"INC-{r // 4}"
        out.append(late)
    level = factories.observation(envelope_id=f"obs-{r}", region="410105", value=80.0 + r, lat=None)
    level.observation.station_id = f"S{r % 3}"
    if r < 3:  # later readings carry no name: a window after these has none either
        level.observation.station_name = f"station {r % 3} as of round {r}"
    if r % 4 == 0:
        level.geometry.point.lat, level.geometry.point.lon = 34.8 + r / 100, 113.6
    if r % 5 == 2:
        level.severity = pb.ORANGE
        level.attributes["edge.alarm"] = "39"
        level.attributes["sl651.crossing.39"] = f"{80 + r} above 81"
    out.append(level)
    boat = pb.Envelope(id=f"pos-{r}", kind=pb.POSITION, region="410105", status=pb.ACTUAL)
    boat.origin.agency, boat.origin.region = "water", "410105"
    boat.sent_at.FromMilliseconds(started_ms + r)
    boat.geometry.point.lat, boat.geometry.point.lon = 34.8, 113.7 + r / 100
    boat.position.unit_id = f"boat-{r % 2}"
    out.append(boat)
    beat = pb.Envelope(id=f"beat-{r}", kind=pb.HEARTBEAT, region="410105", status=pb.ACTUAL)
    beat.origin.agency, beat.origin.region = "water", "410105"
    beat.sent_at.GetCurrentTime()
    beat.heartbeat.subject, beat.heartbeat.state = f"410105/water/edge/gauge-{r % 2}", "online"
    beat.attributes["edge.link"] = "lan"
    out.append(beat)
    return out


def _everything(_: bytes) -> bool:
    return True


async def _read_all(state: PictureState, at_ms: int, names: list[str]) -> str:
    """All a viewer can read of a built picture, as one comparable text."""
    return _canon(
        {
            "lists": state.snapshot(_everything, at_ms, at_ms - int(WINDOW_S * 1000)),
            "items": {n: state.find(n) for n in names},
            "history": {n: state.steps(n, _everything) for n in names},
            "stations": {s: state.station(s) and state.station(s)[1] for s in ("S0", "S1", "S2")},  # type: ignore[index]
            "series": {s: [(p.at, p.offset, p.values) for p in state.points(s)] for s in ("S0", "S1", "S2")},
        }
    )


async def test_a_replay_from_checkpoints_is_the_replay_of_the_log(start_node: NodeFactory) -> None:
    web = {"enabled": True, "window_h": WINDOW_S / 3600, "checkpoint_every_envelopes": 25}
    node = await start_node(web=web)
    assert node.http is not None
    assert node.http.picture is not None
    picture = node.http.picture.picture
    started_ms = int(time.time() * 1000)
    marks: list[int] = []
    names: list[str] = []
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        for r in range(18):
            envelopes = _round(r, started_ms)
            reply = await client.publish(envelopes)
            assert all(x.outcome == ACCEPTED for x in reply.results), reply
            names += [e.id for e in envelopes]
            await eventually(lambda: picture.position == node.log.next_offset)  # type: ignore[union-attr]
            marks.append(int(time.time() * 1000))
            gap = time.time() + 0.15  # the window and the clock-based removals move between rounds
            await eventually(lambda: time.time() > gap)  # noqa: B023
    await eventually(lambda: picture.checkpoints is not None and len(picture.checkpoints.known) >= 3)
    assert picture.checkpoints is not None
    moments = sorted({started_ms - 50, *marks, *(m + 75 for m in marks), *(m + 420 for m in marks[::3])})
    from_checkpoint = 0
    for at in moments:
        replayed, stop = await picture.build_at(at, from_checkpoints=False)
        if picture.checkpoints.best(replayed.floor, stop):
            from_checkpoint += 1
        built, same_stop = await picture.build_at(at, from_checkpoints=True)
        assert same_stop == stop
        got, expected = await _read_all(built, at, names), await _read_all(replayed, at, names)
        assert got == expected, f"at {at - started_ms} ms"
    assert from_checkpoint >= len(moments) // 2
    # the window and the clock did move: early items left, expiring warnings and the final report too
    early, _ = await picture.build_at(marks[1])
    assert "warn-1" in ids(early.snapshot(_everything, marks[1], 0)["warnings"])
    end = marks[-1] + 420
    late, _ = await picture.build_at(end)
    shown = late.snapshot(_everything, end, 0)
    left = ids(shown["warnings"])
    assert "warn-17" in left  # odd rounds do not expire
    assert all(int(w.split("-")[1]) % 2 for w in left)  # even ones did, by the clock
    assert "warn-1" not in left  # it left the window
    assert "INC-3" not in {i["chain"] for i in shown["incidents"]}  # 2 h after its final report (round 15)
    assert late.floor > 1


async def test_a_restart_reads_the_log_from_its_last_checkpoint(start_node: NodeFactory, tmp_path: Path) -> None:
    data = tmp_path / "restarts"
    node = await start_node(data, web={"enabled": True})
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        for r in range(4):
            await client.publish(_round(r, int(time.time() * 1000)))
    assert node.http is not None
    assert node.http.picture is not None
    picture = node.http.picture.picture
    log_ = node.log
    assert log_ is not None
    await eventually(lambda: picture.position == log_.next_offset)
    end = log_.next_offset
    await node.stop()  # saves a checkpoint at the log's end
    folder = data / "picture-checkpoints"
    [saved] = sorted(folder.glob("picture-*.ckpt"))

    with capture_logs() as logs:
        node = await start_node(data, web={"enabled": True})
    [following] = [e for e in logs if e["event"] == "picture_following"]
    assert (following["from_offset"], following["from_checkpoint"]) == (end, True)
    assert node.http is not None
    assert node.http.picture is not None
    picture = node.http.picture.picture
    now = int(time.time() * 1000)
    replayed, _ = await picture.build_at(now, from_checkpoints=False)
    live = picture.state
    assert _canon(live.snapshot(_everything, now, 0)) == _canon(replayed.snapshot(_everything, now, 0))
    await node.stop()

    # a damaged checkpoint is not trusted: it is ignored, saying why, and the log is read instead
    for damage in (saved.read_bytes()[:-7], b"not a checkpoint\n"):
        for older in folder.glob("picture-*.ckpt"):
            older.unlink()
        saved.write_bytes(damage)
        with capture_logs() as logs:
            node = await start_node(data, web={"enabled": True})
        [ignored] = [e for e in logs if e["event"] == "picture_checkpoint_ignored"]
        assert ignored["reason"], ignored
        [following] = [e for e in logs if e["event"] == "picture_following"]
        assert following["from_checkpoint"] is False
        await node.stop()


# -- link health ------------------------------------------------------------------------------------


async def _links(node: Node) -> dict[str, dict[str, Any]]:
    """The links of a plaintext loopback node's picture, by name (its development identity sees them)."""
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{node.http_port}") as session,
        session.get("/picture/api/snapshot") as reply,
    ):
        assert reply.status == 200, await reply.text()
        body = await reply.json()
    return {link["name"]: link for link in body["links"]}


async def test_links_show_whether_they_are_up_and_how_far_behind_they_are(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    city_port = free_port()
    city = await start_node(
        tmp_path / "city", region="410100", node_id="zhengzhou-city",
        listen={"grpc": f"127.0.0.1:{city_port}"}, web={"enabled": True},
    )  # fmt: skip
    county = await start_node(
        tmp_path / "county", region="410105", node_id="jinshui-county",
        parent={"address": f"127.0.0.1:{city_port}"}, web={"enabled": True},
    )  # fmt: skip
    caught_up = {"up": True, "lag": 0, "backlog": 0}

    async def state(node: Node, name: str) -> dict[str, Any]:
        link = (await _links(node)).get(name)
        return {key: link[key] for key in caught_up} if link else {}

    async def becomes(node: Node, name: str, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Polls the picture's link until it is as wanted (the links are measured when asked)."""
        deadline = time.monotonic() + 10.0
        while not wanted(got := await state(node, name)):
            if time.monotonic() > deadline:
                raise AssertionError(f"link {name} of {node.config.node.id} stayed {got}")
            await asyncio.sleep(0.05)
        return got

    # both ends list the link, up and caught up; the city lists its child while it is linked, too
    await becomes(county, "parent", lambda s: s == caught_up)
    await becomes(city, "jinshui-county", lambda s: s == caught_up)
    assert (await _links(county))["parent"]["kind"] == "parent"
    assert (await _links(city))["jinshui-county"]["kind"] == "child"

    # the city goes away: the county's link is down, and what arrives meanwhile is its backlog, aging
    await city.stop()
    await becomes(county, "parent", lambda s: s.get("up") is False)
    async with GatewayClient(county.grpc_target, insecure=True) as client:
        sent = [factories.alert(envelope_id=f"county-warning-{i}", region="410105") for i in range(3)]
        reply = await client.publish(sent)
    assert all(r.outcome == ACCEPTED for r in reply.results), reply
    down = await becomes(county, "parent", lambda s: s.get("lag", 0) >= 1)
    assert (down["up"], down["backlog"]) == (False, 3)

    # back: the backlog goes up to the city and the link is caught up again
    city = await start_node(
        tmp_path / "city", region="410100", node_id="zhengzhou-city",
        listen={"grpc": f"127.0.0.1:{city_port}"}, web={"enabled": True},
    )  # fmt: skip
    await becomes(county, "parent", lambda s: s == caught_up)
    await eventually(lambda: city.log is not None and city.log.next_offset > 3)

    # the child goes away: the city still lists it, down, with what it has not taken yet
    await county.stop()
    await becomes(city, "jinshui-county", lambda s: s.get("up") is False)
    child = (await _links(city))["jinshui-county"]
    assert child["detail"].startswith("down for")
    assert child["backlog"] == 0  # nothing arrived at the city since
