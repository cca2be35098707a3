"""The web command picture in a real browser (Debian's chromium, headless) against real nodes fed over gRPC.

Most tests use a plaintext node on loopback (``tls.insecure``, where the page needs no sign-in); the
county test signs in as a user against a node with mutual TLS. Waits are on conditions in the page
(``wait_for_function``); the two-second bound of the issue is the limit of the wait for a warning to
show, not a sleep. Screenshots of the main views go to test-artifacts/ (see tests/browser.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.client import GatewayClient
from gateway.ids import uuid7
from gateway.node import Node
from gateway.pki import Authority, Role
from gateway.webauth import User, UserStore, users_db
from tests import browser as browser_fixtures
from tests import factories
from tests.browser import Pages
from tests.conftest import client_as, eventually, free_port, node_config, running_tls_node, tls_node_config

pytestmark = pytest.mark.asyncio(loop_scope="module")
chromium, browser, pages = browser_fixtures.chromium, browser_fixtures.browser, browser_fixtures.pages  # fixtures

SHOW_WITHIN_MS = 2000  # the issue's bound for a published warning to show on the map and in the list
WAIT_MS = 15000  # for everything else; only a failing test waits this long
WEB = {"enabled": True}
ZHONGYUAN, JINSHUI, JIANXI = "410102", "410105", "410305"  # two districts of Zhengzhou, one of Luoyang
LUOYANG_SQUARE = [(34.62, 112.33), (34.62, 112.40), (34.67, 112.40), (34.67, 112.33), (34.62, 112.33)]


@contextlib.asynccontextmanager
async def picture_node(data: Path, **sections: Any) -> AsyncIterator[Node]:
    """A plaintext loopback node serving the picture; stopped when the block ends."""
    node = Node(node_config(data, web=WEB, **sections), grace_s=0.2)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def base_url(node: Node, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{node.http_port}"


async def publish(node: Node, *envelopes: pb.Envelope, client: GatewayClient | None = None) -> None:
    """Publishes over real gRPC (plaintext unless a TLS client is given); every envelope must be accepted."""
    async with client or GatewayClient(node.grpc_target, insecure=True) as c:
        reply = await c.publish(list(envelopes))
    assert [r.outcome for r in reply.results] == [gw.PublishResult.ACCEPTED] * len(envelopes), reply


async def open_picture(pages: Pages, url: str, **context: Any) -> Page:
    """Opens the picture and waits until it has its snapshot and a live stream."""
    page = await pages.new(**context)
    await page.goto(url)
    await until_live(page)
    return page


async def until_live(page: Page) -> None:
    await page.wait_for_function(
        "() => window.yiwangPicture && window.yiwangPicture.stats.snapshots > 0"
        " && document.getElementById('conn').dataset.state === 'open'",
        timeout=WAIT_MS,
    )


def in_list(list_id: str, envelope_id: str) -> str:
    return f"document.querySelector('#{list_id} li[data-id=\"{envelope_id}\"]') !== null"


def map_area(code: str, colour: str) -> str:
    return f"window.yiwangPicture.mapView().areas['{code}'] === '{colour}'"


def luoyang_alert() -> pb.Envelope:
    env = factories.alert(region=JIANXI, severity=pb.YELLOW, polygon=LUOYANG_SQUARE)
    env.origin.region = "410300"
    env.alert.infos[0].headline = "暴雨黄色预警（洛阳）"
    env.alert.infos[0].severity = "黄色"
    return env


def located_incident(region: str, lat: float, lon: float, incident_id: str) -> pb.Envelope:
    env = factories.incident(region=region, grade=pb.GRADE_LARGER)
    env.incident.incident_id = incident_id
    env.incident.title = f"道路塌陷 {incident_id}"
    env.incident.casualties.injured = 2
    env.geometry.point.lat = lat
    env.geometry.point.lon = lon
    return env


# -- the page itself ----------------------------------------------------------------------------------


async def test_the_page_loads_with_no_console_errors_and_no_external_requests(pages: Pages, tmp_path: Path) -> None:
    async with picture_node(tmp_path / "node") as node:
        page = await open_picture(pages, f"{base_url(node)}/")
        view = await page.evaluate("window.yiwangPicture.mapView()")
        assert view["map"] == "yiwang-410000"
        features = await page.evaluate("window.yiwangPicture.state.mapFeatures.size")
        assert features == 18, "Henan's 17 cities and Jiyuan"
        assert await page.locator("#region-crumbs a").all_inner_texts() == ["河南省"]
        assert await page.locator("h1").inner_text() == "一网 · 应急指挥图"
        await page.click("#lang")
        assert await page.locator("h1").inner_text() == "yiwang · Command picture"
        await page.reload()
        await until_live(page)
        assert await page.locator("h1").inner_text() == "yiwang · Command picture", "the choice is remembered"
        await publish(node, factories.alert(region=ZHONGYUAN), located_incident(JINSHUI, 34.78, 113.68, "ZZ-JS-3"))
        await page.wait_for_function("() => window.yiwangPicture.mapView().points.incidents === 1", timeout=WAIT_MS)
        assert "Orange" in await page.locator("#warnings-list").inner_text()
        await pages.screenshot(page, "picture-english")


async def test_a_warning_published_over_grpc_shows_on_the_map_and_in_the_list(pages: Pages, tmp_path: Path) -> None:
    async with picture_node(tmp_path / "node") as node:
        page = await open_picture(pages, f"{base_url(node)}/picture/")
        warning = factories.alert(region=ZHONGYUAN, severity=pb.ORANGE)
        await publish(node, warning)
        await page.wait_for_function(
            f"() => {in_list('warnings-list', warning.id)} && {map_area('410100', '#ff8c00')}",
            timeout=SHOW_WITHIN_MS,
        )
        row = page.locator(f"#warnings-list li[data-id='{warning.id}']")
        assert "暴雨橙色预警" in await row.inner_text()
        assert await page.evaluate("window.yiwangPicture.mapView().points['warning-areas']") == 1
        # More of the picture for the screenshot: an incident, a station reading, a moving unit.
        await publish(
            node,
            located_incident(JINSHUI, 34.78, 113.68, "ZZ-JS-7"),
            factories.observation(value=91.2),
            luoyang_alert(),
        )
        await page.wait_for_function(
            "() => window.yiwangPicture.state.incidents.size === 1 && window.yiwangPicture.state.stations.size === 1"
            " && window.yiwangPicture.state.warnings.size === 2",
            timeout=WAIT_MS,
        )
        await page.wait_for_function(
            f"() => {map_area('410300', '#ffd700')} && window.yiwangPicture.mapView().points.incidents === 1"
            " && window.yiwangPicture.mapView().points.stations === 1",
            timeout=WAIT_MS,
        )
        await pages.screenshot(page, "picture-province")


async def test_a_region_filter_hides_what_is_outside_it(pages: Pages, tmp_path: Path) -> None:
    async with picture_node(tmp_path / "node") as node:
        zhengzhou, luoyang = factories.alert(region=ZHONGYUAN), luoyang_alert()
        await publish(node, zhengzhou, luoyang)
        page = await open_picture(pages, f"{base_url(node)}/picture/")
        await page.wait_for_function(
            f"() => {in_list('warnings-list', zhengzhou.id)} && {in_list('warnings-list', luoyang.id)}",
            timeout=WAIT_MS,
        )
        await page.select_option("#region-child", "410100")
        await page.wait_for_function(
            f"() => window.yiwangPicture.mapView().map === 'yiwang-410100' && !({in_list('warnings-list', luoyang.id)})"
            f" && {in_list('warnings-list', zhengzhou.id)}",
            timeout=WAIT_MS,
        )
        assert await page.locator("#region-crumbs a").all_inner_texts() == ["河南省", "郑州市"]
        # A warning published later in Luoyang stays out of the filtered picture; one in Zhengzhou shows.
        later_luoyang, later_zhengzhou = luoyang_alert(), factories.alert(region=ZHONGYUAN, severity=pb.RED)
        await publish(node, later_luoyang, later_zhengzhou)
        await page.wait_for_function(f"() => {in_list('warnings-list', later_zhengzhou.id)}", timeout=WAIT_MS)
        assert not await page.evaluate(f"() => {in_list('warnings-list', later_luoyang.id)}")
        await pages.screenshot(page, "picture-city")
        # The severity filter keeps the red warning only.
        await page.select_option("#filter-severity", "red")
        await page.wait_for_function(
            f"() => !({in_list('warnings-list', zhengzhou.id)}) && {in_list('warnings-list', later_zhengzhou.id)}",
            timeout=WAIT_MS,
        )
        await page.select_option("#filter-severity", "")
        # Back up to the province: Luoyang's warnings are there again.
        await page.click("#region-crumbs a[data-code='410000']")
        await page.wait_for_function(f"() => {in_list('warnings-list', later_luoyang.id)}", timeout=WAIT_MS)
        # Clicking an area of the map drills into it, as the picker does.
        x, y = await page.evaluate("window.yiwangPicture.chart.convertToPixel({geoIndex: 0}, [112.2, 34.3])")
        box = await page.locator("#map").bounding_box()
        assert box is not None
        await page.mouse.click(box["x"] + x, box["y"] + y)
        await page.wait_for_function(
            f"() => window.yiwangPicture.mapView().map === 'yiwang-410300' && {in_list('warnings-list', luoyang.id)}"
            f" && !({in_list('warnings-list', zhengzhou.id)})",
            timeout=WAIT_MS,
        )


async def test_the_detail_view_shows_content_provenance_and_history(pages: Pages, tmp_path: Path) -> None:
    async with picture_node(tmp_path / "node") as node:
        first = located_incident(JINSHUI, 34.78, 113.68, "ZZ-JS-9")
        await publish(node, first)
        follow_up = located_incident(JINSHUI, 34.78, 113.68, "ZZ-JS-9")
        follow_up.incident.stage = pb.STAGE_FOLLOW_UP
        follow_up.incident.report_number = 2
        follow_up.incident.casualties.injured = 5
        follow_up.references.append(first.id)
        await publish(node, follow_up)
        page = await open_picture(pages, f"{base_url(node)}/picture/")
        row = page.locator(f"#incidents-list li[data-id='{follow_up.id}']")
        await row.wait_for(timeout=WAIT_MS)
        assert "续报" in await row.inner_text()
        await row.click()
        provenance = page.locator("#detail-provenance")
        await page.locator("#detail-provenance .hops li").first.wait_for(timeout=WAIT_MS)
        text = await provenance.inner_text()
        assert "emergency" in text, text
        assert node.config.node.id in await page.locator("#detail-provenance .hops").inner_text()
        history = await page.locator("#detail-history li").all_inner_texts()
        assert ["首报" in history[0], "续报" in history[1]] == [True, True], history
        content = json.loads(await page.locator("#detail-content").inner_text())
        assert content["id"] == follow_up.id
        await pages.screenshot(page, "picture-detail")
        await page.click("#detail-close")
        assert await page.locator("#detail").is_hidden()


async def test_the_time_slider_replays_the_picture_as_it_stood(pages: Pages, tmp_path: Path) -> None:
    async with picture_node(tmp_path / "node") as node:
        earlier = factories.alert(region=ZHONGYUAN)
        await publish(node, earlier)
        between = time.time() * 1000
        await eventually(lambda: time.time() * 1000 > between + 2)  # the next append is strictly later
        later = luoyang_alert()
        await publish(node, later)
        page = await open_picture(pages, f"{base_url(node)}/picture/")
        await page.wait_for_function("() => window.yiwangPicture.state.warnings.size === 2", timeout=WAIT_MS)
        await page.evaluate(f"window.yiwangPicture.replay({between})")
        await page.wait_for_function(
            f"() => {in_list('warnings-list', earlier.id)} && !({in_list('warnings-list', later.id)})", timeout=WAIT_MS
        )
        assert await page.locator("#mode").inner_text() == "回放"
        assert await page.locator("#live").is_enabled()
        await page.click("#live")
        await until_live(page)
        await page.wait_for_function(f"() => {in_list('warnings-list', later.id)}", timeout=WAIT_MS)
        assert await page.locator("#mode").inner_text() == "实时"


async def test_the_station_panel_charts_the_readings(pages: Pages, tmp_path: Path) -> None:
    async with picture_node(tmp_path / "node") as node:
        base = time.time() - 600
        await publish(node, *(factories.observation(value=90.0 + i, sent_at=base + 60 * i) for i in range(3)))
        page = await open_picture(pages, f"{base_url(node)}/picture/")
        row = page.locator("#stations-list li[data-id='41100050']")
        await row.wait_for(timeout=WAIT_MS)
        assert "92" in await row.inner_text()
        await row.click()
        await page.wait_for_function(
            "() => { const box = document.getElementById('detail-chart');"
            " const chart = box && window.echarts.getInstanceByDom(box);"
            " return chart && chart.getOption().series[0].data.length === 3; }",
            timeout=WAIT_MS,
        )
        await pages.screenshot(page, "picture-station")


def terminal_liveness(terminal: str, state: str, link: str) -> pb.Envelope:
    """A terminal's liveness as the node's MQTT ingest records it (gateway.edge_ingest), sent here over gRPC."""
    env = pb.Envelope(id=uuid7(), kind=pb.HEARTBEAT, region=JINSHUI, status=pb.ACTUAL)
    env.origin.agency = "water"
    env.origin.region = JINSHUI
    env.sent_at.GetCurrentTime()
    env.heartbeat.subject = terminal
    env.heartbeat.state = state
    env.heartbeat.interval_s = 60
    env.attributes["edge.link"] = link
    env.attributes["edge.session"] = "3"
    return env


async def test_the_terminal_panel_shows_liveness_and_link(pages: Pages, tmp_path: Path) -> None:
    async with picture_node(tmp_path / "node") as node:
        await publish(node, terminal_liveness("rtu-0007", "online", "satellite"))
        page = await open_picture(pages, f"{base_url(node)}/picture/")
        row = page.locator("#terminals-list li[data-id='rtu-0007']")
        await page.locator("#terminals-list li[data-id='rtu-0007'][data-state='alive']").wait_for(timeout=WAIT_MS)
        await publish(node, terminal_liveness("rtu-0007", "offline", "satellite"))
        await page.locator("#terminals-list li[data-id='rtu-0007'][data-state='dead']").wait_for(timeout=WAIT_MS)
        assert "失联" in await row.inner_text()
        await row.click()
        summary = await page.locator("#detail-summary").inner_text()
        assert "satellite" in summary
        assert "3" in summary  # the session


async def test_after_the_node_restarts_the_page_resumes_without_gaps_or_duplicates(
    pages: Pages, tmp_path: Path
) -> None:
    listen = {"grpc": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"}
    before = [factories.alert(region=ZHONGYUAN) for _ in range(3)]
    meanwhile = [factories.alert(region=ZHONGYUAN) for _ in range(4)]
    async with picture_node(tmp_path / "node", listen=listen) as node:
        page = await open_picture(pages, f"{base_url(node)}/picture/")
        pages.watch.allow(r"ERR_CONNECTION_REFUSED|/picture/api/stream")  # the refused reconnects while it is down
        await publish(node, *before)
        await page.wait_for_function("() => window.yiwangPicture.state.warnings.size === 3", timeout=WAIT_MS)
    await page.wait_for_function("() => document.getElementById('conn').dataset.state === 'down'", timeout=WAIT_MS)
    async with picture_node(tmp_path / "node", listen=listen) as node:
        await publish(node, *meanwhile)
        assert node.log is not None
        head = node.log.next_offset
        await page.wait_for_function(
            f"() => window.yiwangPicture.state.offset >= {head} && window.yiwangPicture.state.warnings.size === 7",
            timeout=WAIT_MS,
        )
        await until_live(page)
        ids = await page.eval_on_selector_all("#warnings-list li[data-id]", "rows => rows.map(r => r.dataset.id)")
        assert sorted(ids) == sorted(e.id for e in before + meanwhile)
        stats = await page.evaluate("window.yiwangPicture.stats")
        assert stats["snapshots"] == 1, "resumed from the stream, not by loading the picture again"
        assert stats["duplicates"] == 0, stats
        assert stats["reconnects"] >= 1


async def test_the_network_panel_shows_the_parent_link_going_up(pages: Pages, tmp_path: Path) -> None:
    parent_port = free_port()
    parent = {"address": f"127.0.0.1:{parent_port}"}
    async with picture_node(tmp_path / "city", region="410100", node_id="zhengzhou-city", parent=parent) as city:
        page = await open_picture(pages, f"{base_url(city)}/picture/")
        assert await page.evaluate("window.yiwangPicture.mapView().map") == "yiwang-410100"
        await page.locator("#links-list li[data-name='parent'][data-up='false']").wait_for(timeout=WAIT_MS)
        province_listen = {"grpc": f"127.0.0.1:{parent_port}", "http": "127.0.0.1:0"}
        async with picture_node(tmp_path / "province", node_id="henan-province", listen=province_listen):
            await page.locator("#links-list li[data-name='parent'][data-up='true']").wait_for(timeout=WAIT_MS)
            await pages.screenshot(page, "picture-city-node")


# -- signed in, over TLS ------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    ca = Authority.init(tmp_path / "pki", trust_domain="yjt.henan.gov.cn")
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.PLATFORM, "410000", "province-desk", "emergency"))
    return ca


async def test_a_county_user_sees_nothing_of_another_county(pages: Pages, pki: Authority, tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = UserStore(users_db(tls_node_config(pki, data, web=WEB)))
    try:
        store.add(User("zhongyuan-duty", ZHONGYUAN, "emergency", Role.PLATFORM), "zhongyuan-passw0rd")
    finally:
        store.close()
    async with running_tls_node(pki, data, web=WEB) as node:
        ours = located_incident(ZHONGYUAN, 34.75, 113.60, "ZY-1")
        theirs = located_incident(JINSHUI, 34.78, 113.68, "JS-1")
        await publish(node, ours, theirs, client=client_as(pki, node, "province-desk"))
        page = await pages.new(ignore_https_errors=True)
        await page.goto(f"{base_url(node, 'https')}/picture/")
        await page.wait_for_url("**/picture/login", timeout=WAIT_MS)
        await pages.screenshot(page, "picture-login")
        await page.fill("#login-user", "zhongyuan-duty")
        await page.fill("#login-password", "zhongyuan-passw0rd")
        await page.click("#login-submit")
        await page.wait_for_url("**/picture/", timeout=WAIT_MS)
        await until_live(page)
        await page.locator(f"#incidents-list li[data-id='{ours.id}']").wait_for(timeout=WAIT_MS)
        assert await page.locator("#incidents-list li[data-id]").count() == 1
        assert await page.evaluate("window.yiwangPicture.mapView().map") == f"yiwang-{ZHONGYUAN}"
        assert await page.locator("#region-crumbs a").all_inner_texts() == ["中原区"]
        assert not await page.locator("#logout").is_hidden()
        # Nor can the page's API be asked for the other county's incident or picture (its outline is
        # public geography, not shared information, so the map of it is not asked here).
        for path in (f"item/{theirs.id}", f"snapshot?region={JINSHUI}"):
            response = await page.request.get(f"{base_url(node, 'https')}/picture/api/{path}")
            assert response.status in (403, 404), (path, response.status)
        # A brand-new incident in the other county does not reach the open page either.
        later = located_incident(JINSHUI, 34.78, 113.68, "JS-2")
        mine_later = located_incident(ZHONGYUAN, 34.75, 113.60, "ZY-2")
        await publish(node, later, mine_later, client=client_as(pki, node, "province-desk"))
        await page.locator(f"#incidents-list li[data-id='{mine_later.id}']").wait_for(timeout=WAIT_MS)
        assert await page.locator(f"#incidents-list li[data-id='{later.id}']").count() == 0
        await pages.screenshot(page, "picture-county")
        await page.click("#logout")
        await page.wait_for_url("**/picture/login", timeout=WAIT_MS)
        signed_out = await page.request.get(f"{base_url(node, 'https')}/picture/api/me")
        assert signed_out.status == 401, "the logout (a POST with the CSRF token) ended the session"
