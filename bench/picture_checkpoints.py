"""Picture checkpoint benchmark: node start and the time slider, with and without checkpoints.

Writes a log of --envelopes envelopes (station readings of --stations stations, with warnings, incident
reports and unit positions mixed in) straight into an embedded log, then measures:
  (a) start without checkpoints: the picture reads the whole window of the log before it is complete;
  (b) start from the newest checkpoint (written by a picture that followed the same log), reading only
      what comes after it;
  (c) the time slider: ``build_at`` at several moments of the log, replayed from the log alone and from
      the newest checkpoint at or before each moment; the two pictures are compared and must be equal.

    .venv/bin/python bench/picture_checkpoints.py [--envelopes 200000] [--every 20000] [--stations 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from yiwang.v1 import envelope_pb2 as pb

from gateway.log import AppendBatch
from gateway.picture import CheckpointPolicy, Picture, PictureState
from gateway.regions import default_table
from gateway.selection import record_of
from gateway.sqlite_log import SqliteLog

BATCH = 1000


def envelope(n: int, stations: int) -> pb.Envelope:
    """The n-th envelope of the generated stream: mostly readings, every 50th a warning, incident or unit."""
    region = ("410102", "410105", "410122")[n % 3]
    if n % 50 == 7:
        env = pb.Envelope(id=f"w-{n}", kind=pb.ALERT, region=region, status=pb.ACTUAL, severity=pb.ORANGE)
        info = env.alert.infos.add(event="暴雨", headline=f"暴雨橙色预警 {n}")
        info.sender_name = "郑州市气象台"
        if n % 150 == 7 and n > 200:
            env.alert.msg_type = "Update"
            env.references.append(f"w-{n - 150}")
    elif n % 50 == 17:
        env = pb.Envelope(id=f"i-{n}", kind=pb.INCIDENT, region=region, status=pb.ACTUAL, severity=pb.YELLOW)
        env.incident.incident_id = f"INC-{n // 1000}"
        env.incident.stage = pb.STAGE_FOLLOW_UP if n % 1000 > 17 else pb.STAGE_INITIAL
        env.incident.title = f"事件 {n // 1000}"
    elif n % 50 == 27:
        env = pb.Envelope(id=f"p-{n}", kind=pb.POSITION, region=region, status=pb.ACTUAL)
        env.position.unit_id = f"unit-{n % 300}"
        env.geometry.point.lat, env.geometry.point.lon = 34.7 + (n % 97) / 1000, 113.6
    else:
        env = pb.Envelope(id=f"o-{n}", kind=pb.OBSERVATION, region=region, status=pb.ACTUAL, priority=2)
        env.observation.station_id = f"S{n % stations}"
        env.observation.station_name = f"站 {n % stations}"
        env.observation.measurements.add(metric="39", value=80.0 + (n % 100) / 10, unit="m", quality=pb.GOOD)
        env.geometry.point.lat, env.geometry.point.lon = 34.7 + (n % stations) / 10000, 113.6
    env.origin.agency = "water" if env.kind == pb.OBSERVATION else "emergency"
    env.origin.region = region
    env.sent_at.GetCurrentTime()
    return env


async def write_log(path: Path, count: int, stations: int) -> tuple[SqliteLog, list[int]]:
    """The log, and the append time (ms) after each tenth of it."""
    log = await SqliteLog.open(path, node_id="bench", fsync=False)
    tenths: list[int] = []
    for start in range(0, count, BATCH):
        batch = AppendBatch()
        for n in range(start, min(start + BATCH, count)):
            env = envelope(n, stations)
            batch.add(env.id, env.SerializeToString(), record_of(env))
        await log.append(batch)
        if (start + BATCH) % (count // 10) == 0:
            tenths.append(int(time.time() * 1000))
    return log, tenths


async def started(picture: Picture, end: int) -> float:
    began = time.perf_counter()
    await picture.start()
    while picture.position < end:
        await picture.wait(picture.position, 1.0)
    return time.perf_counter() - began


def shown(state: PictureState, at: int) -> str:
    return json.dumps(state.snapshot(lambda _: True, at, 0), sort_keys=True, ensure_ascii=False)


async def main(envelopes: int, every: int, stations: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "picture-checkpoints"
        log, tenths = await write_log(Path(tmp) / "log.sqlite", envelopes, stations)
        end = log.next_offset
        regions = default_table()
        print(f"log: {end - 1:,} envelopes, readings of {stations:,} stations")

        plain = Picture(log, regions, window_s=24 * 3600)
        before = await started(plain, end)
        await plain.stop()
        print(f"(a) start, reading the whole window:     {before:6.2f} s  ({(end - 1) / before:,.0f} envelopes/s)")

        policy = CheckpointPolicy(folder, every_envelopes=every, every_s=3600)
        writer = Picture(log, regions, window_s=24 * 3600, checkpoints=policy)
        began = time.perf_counter()
        await started(writer, end)
        await writer.stop()  # and its last checkpoint, at the log's end
        assert writer.checkpoints is not None
        written = writer.checkpoints.known
        size = sum(c.size for c in written)
        print(
            f"    following with checkpoints every {every:,}: {time.perf_counter() - began:6.2f} s, "
            f"{len(written)} checkpoints, {size / len(written) / 1e6:.1f} MB each"
        )

        again = Picture(log, regions, window_s=24 * 3600, checkpoints=policy)
        after = await started(again, end)
        await again.stop()
        print(f"(b) start from the newest checkpoint:    {after:6.2f} s  ({before / after:.0f}x faster)")

        slider = Picture(log, regions, window_s=24 * 3600, checkpoints=policy)
        await started(slider, end)
        replays, restores = [], []
        for at in tenths[1::2]:
            began = time.perf_counter()
            replayed, _ = await slider.build_at(at, from_checkpoints=False)
            replays.append(time.perf_counter() - began)
            began = time.perf_counter()
            restored, _ = await slider.build_at(at)
            restores.append(time.perf_counter() - began)
            assert shown(restored, at) == shown(replayed, at), f"the pictures at {at} differ"
        await slider.stop()
        print(
            f"(c) time slider at {len(replays)} moments: from the log {sum(replays) / len(replays):5.2f} s on average "
            f"(at most {max(replays):.2f} s); with checkpoints (when quicker) {sum(restores) / len(restores):5.2f} s "
            f"(at most {max(restores):.2f} s); pictures equal"
        )
        await log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envelopes", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=20_000, help="envelopes between checkpoints")
    parser.add_argument(
        "--stations",
        type=int,
        default=2000,
        help="stations the readings come from (each keeps its last 4,096 readings for its chart)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.envelopes, args.every, args.stations))
