"""Command picture benchmark: how many updates a second the web page renders while staying responsive.

A node runs as deployed (``python -m gateway.cli gateway``, plaintext on loopback, ``[web] enabled``);
headless chromium (Debian's, through Playwright) opens its command picture; a generator publishes
over gRPC a stream of updates at increasing rates: units moving (positions), station readings,
now and then a warning or an incident. At each rate the page's frames are timed with
requestAnimationFrame while the stream runs, and the page's own count of applied updates is read.

Printed per rate: updates/s published, updates/s the page applied to its picture (lists and map layers),
how often a second the map was drawn anew (at most four: the page gathers updates between draws),
frame time p50/p99/max (ms), frames of 100 ms or more. The closing line names the highest rate the
page kept up with (applied within 5 % of published) while no frame took 100 ms or more. Usage:

    .venv/bin/python bench/picture.py [--rates 250,500,1000,2000,4000] [--seconds 5]
                                      [--units 200] [--stations 300] [--screenshot picture.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.async_api import Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from bench import throughput
from gateway.client import GatewayClient
from gateway.ids import uuid7

CHROMIUM = Path("/usr/bin/chromium")
TICK_S = 0.05  # the generator publishes one batch every 50 ms
FRAME_LIMIT_MS = 100.0
KEPT_UP = 0.95
ZHENGZHOU = (34.75, 113.65)

FRAME_MONITOR = """() => {
  const monitor = { gaps: [], last: performance.now(), on: true };
  const step = (now) => {
    monitor.gaps.push(now - monitor.last);
    monitor.last = now;
    if (monitor.on) requestAnimationFrame(step);
  };
  window.__frameMonitor = monitor;
  requestAnimationFrame(step);
}"""


def start_node(data: Path) -> tuple[Any, int, int]:
    """The node in its own process; returns it with its gRPC and HTTP ports."""
    grpc_port, http_port = throughput.free_port(), throughput.free_port()
    config = data / "node.toml"
    config.write_text(
        f'[node]\nid = "bench-picture"\nregion = "410000"\n'
        f'[listen]\ngrpc = "127.0.0.1:{grpc_port}"\nhttp = "127.0.0.1:{http_port}"\n'
        f'[log]\ndata_dir = "{data}"\nfsync = false\n[limits]\nadmission_workers = 0\n'
        "[tls]\ninsecure = true\n[web]\nenabled = true\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config), "--log-level", "warning"]
    )
    throughput.wait_port(grpc_port, proc=proc, what="node")
    throughput.wait_port(http_port, proc=proc, what="node")
    return proc, grpc_port, http_port


class Stream:
    """The generated traffic: moving units, station readings, the odd warning and incident."""

    def __init__(self, units: int, stations: int, seed: int = 8) -> None:
        self.rng = random.Random(seed)
        self.units = [
            [
                ZHENGZHOU[0] + self.rng.uniform(-0.6, 0.6),
                ZHENGZHOU[1] + self.rng.uniform(-0.8, 0.8),
                self.rng.uniform(0, 360),
            ]
            for _ in range(units)
        ]
        self.stations = [
            (ZHENGZHOU[0] + self.rng.uniform(-0.7, 0.7), ZHENGZHOU[1] + self.rng.uniform(-0.9, 0.9))
            for _ in range(stations)
        ]
        self.count = 0

    def next(self) -> pb.Envelope:
        self.count += 1
        roll = self.rng.random()
        if roll < 0.005:
            return self.warning()
        if roll < 0.01:
            return self.incident()
        if roll < 0.55:
            return self.position(self.rng.randrange(len(self.units)))
        return self.reading(self.rng.randrange(len(self.stations)))

    def _base(self, kind: pb.Kind, region: str, agency: str) -> pb.Envelope:
        env = pb.Envelope(id=uuid7(), kind=kind, region=region, status=pb.ACTUAL)
        env.origin.agency = agency
        env.origin.region = region
        env.sent_at.GetCurrentTime()
        return env

    def position(self, n: int) -> pb.Envelope:
        lat, lon, course = self.units[n]
        course = (course + self.rng.uniform(-20, 20)) % 360
        lat += 0.002 * math.cos(math.radians(course))
        lon += 0.002 * math.sin(math.radians(course))
        self.units[n] = [lat, lon, course]
        env = self._base(pb.POSITION, "410100", "fire_rescue")
        env.geometry.point.lat, env.geometry.point.lon = lat, lon
        env.position.unit_id = f"unit-{n:04d}"
        env.position.callsign = f"豫消{n:04d}"
        env.position.unit_type = "a-f-G-U-C"
        env.position.speed_mps = 12.0
        env.position.course_deg = course
        return env

    def reading(self, n: int) -> pb.Envelope:
        lat, lon = self.stations[n]
        env = self._base(pb.OBSERVATION, "410105", "water")
        env.priority = 2
        env.geometry.point.lat, env.geometry.point.lon = lat, lon
        env.observation.station_id = f"4110{n:04d}"
        env.observation.measurements.add(metric="39", value=90 + self.rng.random() * 3, unit="m", quality=pb.GOOD)
        return env

    def warning(self) -> pb.Envelope:
        env = self._base(pb.ALERT, "410102", "meteorology")
        env.origin.region = "410100"
        env.severity = self.rng.choice([pb.BLUE, pb.YELLOW, pb.ORANGE, pb.RED])
        lat, lon = ZHENGZHOU[0] + self.rng.uniform(-0.3, 0.3), ZHENGZHOU[1] + self.rng.uniform(-0.3, 0.3)
        shape = env.geometry.polygons.add()
        for dlat, dlon in ((0, 0), (0, 0.1), (0.1, 0.1), (0.1, 0), (0, 0)):
            shape.points.add(lat=lat + dlat, lon=lon + dlon)
        info = env.alert.infos.add(language="zh-CN", event="暴雨", severity="橙色", headline=f"暴雨预警 {self.count}")
        info.areas.add(description="郑州").polygons.add().CopyFrom(shape)
        return env

    def incident(self) -> pb.Envelope:
        env = self._base(pb.INCIDENT, "410105", "emergency")
        env.severity = pb.YELLOW
        env.geometry.point.lat = ZHENGZHOU[0] + self.rng.uniform(-0.3, 0.3)
        env.geometry.point.lon = ZHENGZHOU[1] + self.rng.uniform(-0.3, 0.3)
        env.incident.incident_id = f"BENCH-{self.count}"
        env.incident.event_type = "11B33"
        env.incident.grade = pb.GRADE_GENERAL
        env.incident.stage = pb.STAGE_INITIAL
        env.incident.report_number = 1
        env.incident.title = f"事件 {self.count}"
        return env


async def publish_at(client: GatewayClient, stream: Stream, rate: float, seconds: float) -> int:
    """Publishes ``rate`` envelopes a second for ``seconds`` in 50 ms batches; returns how many."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while (elapsed := loop.time() - start) < seconds:
        due = int(rate * min(elapsed + TICK_S, seconds)) - sent
        if due > 0:
            batch = [stream.next() for _ in range(due)]
            reply = await client.publish(batch)
            rejected = [r for r in reply.results if r.outcome != gw.PublishResult.ACCEPTED]
            if rejected:
                raise SystemExit(f"the node rejected generated envelopes: {rejected[0]}")
            sent += due
        await asyncio.sleep(max(0.0, start + elapsed + TICK_S - loop.time()))
    return sent


async def page_applied(page: Page) -> int:
    return int(await page.evaluate("window.yiwangPicture.stats.applied"))


async def measure(page: Page, client: GatewayClient, stream: Stream, rate: float, seconds: float) -> dict[str, Any]:
    await page.evaluate(FRAME_MONITOR)
    before = await page_applied(page)
    draws_before = int(await page.evaluate("window.yiwangPicture.stats.mapRenders"))
    sent = await publish_at(client, stream, rate, seconds)
    # Give the page the time the node's stream batching takes (about 200 ms) and a little more to
    # drain; what it has not applied by then, it did not keep up with.
    with contextlib.suppress(PlaywrightTimeout):
        await page.wait_for_function(f"() => window.yiwangPicture.stats.applied - {before} >= {sent}", timeout=1000)
    applied = await page_applied(page) - before
    draws = int(await page.evaluate("window.yiwangPicture.stats.mapRenders")) - draws_before
    gaps: list[float] = await page.evaluate(
        "(() => { window.__frameMonitor.on = false; return window.__frameMonitor.gaps; })()"
    )
    gaps = gaps[1:] or [0.0]
    ordered = sorted(gaps)
    return {
        "rate": rate,
        "published_per_s": round(sent / seconds),
        "applied_per_s": round(applied / seconds),  # the drain belongs to the same updates
        "applied_share": round(applied / sent, 3) if sent else 1.0,
        "map_draws_per_s": round(draws / seconds, 1),
        "frames": len(gaps),
        "frame_p50_ms": round(statistics.median(gaps), 1),
        "frame_p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "frame_max_ms": round(ordered[-1], 1),
        "frames_over_100ms": sum(1 for g in gaps if g >= FRAME_LIMIT_MS),
    }


async def run(args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="yiwang-bench-picture-") as folder:
        proc, grpc_port, http_port = start_node(Path(folder))
        try:
            async with (
                async_playwright() as playwright,
                GatewayClient(f"127.0.0.1:{grpc_port}", insecure=True) as client,
            ):
                browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
                page = await browser.new_page(viewport={"width": 1920, "height": 1080})
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                await page.goto(f"http://127.0.0.1:{http_port}/picture/")
                await page.wait_for_function(
                    "() => window.yiwangPicture && window.yiwangPicture.stats.snapshots > 0"
                    " && document.getElementById('conn').dataset.state === 'open'",
                    timeout=30000,
                )
                stream = Stream(args.units, args.stations)
                print(
                    f"command picture: {args.units} units, {args.stations} stations, ~1% warnings and incidents; "
                    f"{args.seconds:g} s per rate; chromium headless {browser.version}"
                )
                header = "rate/s  published/s  applied/s  applied  map draws/s  frames  p50 ms  p99 ms  max ms  >=100ms"
                print(header)
                # Warm up unmeasured: every unit and station appears once, the page's code is compiled.
                await publish_at(client, stream, rates[0], 2.0)
                results = []
                for rate in rates:
                    figures = await measure(page, client, stream, rate, args.seconds)
                    results.append(figures)
                    print(
                        f"{rate:6.0f}  {figures['published_per_s']:11d}  {figures['applied_per_s']:9d}  "
                        f"{figures['applied_share']:7.1%}  {figures['map_draws_per_s']:11.1f}  {figures['frames']:6d}  "
                        f"{figures['frame_p50_ms']:6.1f}  "
                        f"{figures['frame_p99_ms']:6.1f}  {figures['frame_max_ms']:6.1f}  "
                        f"{figures['frames_over_100ms']:7d}"
                    )
                good = [r for r in results if r["applied_share"] >= KEPT_UP and r["frames_over_100ms"] == 0]
                best = max((r["applied_per_s"] for r in good), default=0)
                print(f"highest rate rendered with every frame under {FRAME_LIMIT_MS:g} ms: {best} updates/s")
                if args.screenshot:
                    await page.screenshot(path=args.screenshot)
                    print(f"screenshot of the busy picture: {args.screenshot}")
                if errors:
                    print(f"console errors on the page: {errors[:5]}")
                print(json.dumps({"picture_updates_per_s": best, "results": results}))
                await browser.close()
        finally:
            throughput.stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="250,500,1000,2000,4000", help="updates/s to publish, in order")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each rate runs")
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--stations", type=int, default=300)
    parser.add_argument("--screenshot", default="", metavar="PNG", help="save the page as it looks after the run")
    if not CHROMIUM.exists():
        raise SystemExit(f"no chromium at {CHROMIUM}: install Debian's package (apt-get install chromium)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
