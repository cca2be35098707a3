"""Federation benchmark: envelopes from a county node through its city to the province.

Prints, in one run (each node its own process, as deployed, on loopback, log fsync on):
  (a) the single-node durable figure of the foundation benchmark (publisher -> node -> subscriber);
  (b) two hops: the same publisher into a county node (410105), linked under its city (410100),
      linked under the province (410000), with a subscriber at the province: envelopes/s there, and
      the ratio to (a) (goal: at least 50%). (a) and (b) are repeated ``--repeat`` times, in
      alternating order (the machine's speed drifts between runs), and each pair's ratio is printed
      with the median;
  (c) the publish-to-delivery latency across the two hops at 1,000 envelopes/s: p50 and p99 at the
      province's subscriber (goal: p99 under 100 ms);
  (d) catch-up: the city is stopped while the county takes envelopes at --outage-rate for --outage
      seconds (the issue's case is 10 minutes), then started again; the rate at which the backlog
      reaches the province, against the rate it accumulated (goal: at least 5x).

The benchmark's envelopes are water-level observations; a routing file of the run sends every
observation up (the shipped rules send only threshold crossings), so the links carry them all.

    .venv/bin/python bench/federation.py [--seconds 10] [--repeat 3] [--outage 600] [--outage-rate 1000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench import throughput
from bench.edge import children_of, cpu_seconds

CHAIN = (
    ("henan-province", "410000", ""),
    ("zhengzhou-city", "410100", "henan-province"),
    ("jinshui-county", "410105", "zhengzhou-city"),
)
ALL_OBSERVATIONS_UP = """\
[[up]]
name = "bench-observations-up"
kinds = ["OBSERVATION"]
reach = "province"
reason = "the benchmark moves every observation up both hops"
"""


class Chain:
    """The three node processes of one run, with their configuration files and ports."""

    def __init__(self, folder: Path, fsync: bool) -> None:
        self.folder = folder
        self.fsync = fsync
        self.ports = {name: throughput.free_port() for name, _, _ in CHAIN}
        self.http = {name: throughput.free_port() for name, _, _ in CHAIN}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "routing.toml").write_text(ALL_OBSERVATIONS_UP, encoding="utf-8")

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def config(self, name: str, region: str, parent: str) -> Path:
        path = self.folder / f"{name}.toml"
        text = (
            f'[node]\nid = "{name}"\nregion = "{region}"\n'
            f'[listen]\ngrpc = "{self.target(name)}"\nhttp = "127.0.0.1:{self.http[name]}"\n'
            f'[log]\ndata_dir = "{self.folder / name}"\nfsync = {"true" if self.fsync else "false"}\n'
            f"retention_hours = 2\n[tls]\ninsecure = true\n"
            f'[routing]\nfile = "{self.folder / "routing.toml"}"\n'
        )
        if parent:
            text += f'[parent]\naddress = "{self.target(parent)}"\n'
        path.write_text(text, encoding="utf-8")
        return path

    def start(self, name: str) -> None:
        _, region, parent = next(c for c in CHAIN if c[0] == name)
        config = self.config(name, region, parent)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config), "--log-level", "warning"],
        )
        throughput.wait_port(self.ports[name], 60, self.procs[name], name)
        if parent:  # its link up is open
            throughput.wait_metric(self.http[name], "yiwang_federation_link_up", 1, labels='link="up"')

    def stop(self, name: str) -> None:
        throughput.stop(self.procs.pop(name))

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each node process with its admission workers."""
        return {
            name: cpu_seconds(proc.pid) + sum(cpu_seconds(child) for child in children_of(proc.pid))
            for name, proc in self.procs.items()
        }

    def __enter__(self) -> Chain:
        for name, _, _ in CHAIN:
            self.start(name)
        return self

    def __exit__(self, *_exc: object) -> None:
        for name in list(self.procs):
            self.stop(name)


def across(
    chain: Chain, seconds: float, rate: float, batch: int, idle: float, sample: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Publishes into the county, counts at the province (taking the latency of every ``sample``-th
    envelope); also returns each node's CPU seconds meanwhile."""
    before = chain.cpu()
    sub = throughput.spawn(
        "--role", "subscriber", "--target", chain.target("henan-province"), "--idle", str(idle), "--sample", str(sample)
    )
    assert sub.stdout is not None
    sub.stdout.readline()  # ready
    throughput.wait_metric(chain.http["henan-province"], "yiwang_subscribers", 1)  # it is registered
    pub = throughput.spawn(
        "--role", "publisher", "--target", chain.target("jinshui-county"), "--seconds", str(seconds),
        "--batch", str(batch), "--rate", str(rate), "--window", "8", "--build", "messages",
    )  # fmt: skip
    published = throughput.result(pub, seconds + 120)
    delivered = throughput.result(sub, seconds + 600)
    after = chain.cpu()
    return published, delivered, {name: after[name] - before[name] for name in after}


def single_node(args: argparse.Namespace, sample: int) -> float:
    """(a): envelopes/s at the subscriber of one node."""
    _, delivered = throughput.run_durable(args, 0.0, args.idle, sample, build="messages")
    rate: float = delivered["delivered"] / delivered["seconds"]
    print(f"(a) one node:  {rate:>10,.0f} envelopes/s at the subscriber", flush=True)
    return rate


def two_hops(args: argparse.Namespace, folder: Path, sample: int) -> float:
    """(b): envelopes/s at the province's subscriber, published into the county; the chain's logs
    (hundreds of megabytes) are removed after."""
    with Chain(folder, not args.no_fsync) as chain:
        published, delivered, cpu = across(chain, args.seconds, 0.0, args.batch, args.idle, sample)
    shutil.rmtree(folder)
    rate: float = delivered["delivered"] / delivered["seconds"]
    print(
        f"(b) two hops:  {rate:>10,.0f} envelopes/s at the province's subscriber "
        f"({delivered['delivered']:,} of {published['accepted']:,} accepted at the county)",
        flush=True,
    )
    split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu.items())
    per = sum(cpu.values()) / delivered["delivered"] * 1e6 if delivered["delivered"] else 0.0
    print(f"    CPU of the nodes meanwhile (with their workers): {split}; {per:.0f} us per envelope", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--outage", type=float, default=600.0, help="seconds the city is down in (d)")
    parser.add_argument("--outage-rate", type=float, default=1000.0, help="envelopes/s into the county during it")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--only", default="a,b,c,d", help="which parts to run, e.g. a,b")
    parser.add_argument("--repeat", type=int, default=3, help="pairs of (a) and (b)")
    args = parser.parse_args()
    args.window, args.idle, args.rate_batch = 8, 5.0, 50
    parts = set(args.only.split(","))
    print(f"yiwang federation benchmark: {args.seconds:g} s runs, batch {args.batch}", flush=True)
    sample = 10  # (a) and (b) alike: the subscriber takes the latency of every 10th envelope
    with tempfile.TemporaryDirectory(prefix="yiwang-federation-") as folder:
        ratios: list[float] = []
        for repeat in range(args.repeat if {"a", "b"} <= parts else 1):
            order = ("a", "b") if repeat % 2 == 0 else ("b", "a")
            rates = {
                part: single_node(args, sample) if part == "a" else two_hops(args, Path(folder) / f"b{repeat}", sample)
                for part in order
                if part in parts
            }
            if len(rates) == 2:
                ratios.append(rates["b"] / rates["a"])
                print(f"    pair {repeat + 1}: two hops at {ratios[-1]:.1%} of one node", flush=True)
        if ratios:
            print(
                f"(b) two hops against one node: median {statistics.median(ratios):.1%} of {len(ratios)} pairs "
                f"(lowest {min(ratios):.1%}, highest {max(ratios):.1%}) (goal: at least 50%)",
                flush=True,
            )
        if "c" in parts:
            with Chain(Path(folder) / "c", not args.no_fsync) as chain:
                published, delivered, _ = across(chain, args.seconds, 1000.0, args.rate_batch, args.idle, 1)
            print(
                f"(c) latency at 1,000 envelopes/s across two hops: p50 {delivered['p50_ms']:.1f} ms, "
                f"p99 {delivered['p99_ms']:.1f} ms, max {delivered['max_ms']:.1f} ms "
                f"({delivered['delivered']:,} of {published['accepted']:,}) (goal: p99 under 100 ms)",
                flush=True,
            )
        if "d" in parts:
            with Chain(Path(folder) / "d", not args.no_fsync) as chain:
                chain.stop("zhengzhou-city")
                pub = throughput.spawn(
                    "--role", "publisher", "--target", chain.target("jinshui-county"), "--seconds",
                    str(args.outage), "--batch", str(args.rate_batch), "--rate", str(args.outage_rate),
                    "--window", "8", "--build", "messages",
                )  # fmt: skip
                published = throughput.result(pub, args.outage + 120)
                accumulated = published["accepted"] / published["seconds"]
                sub = throughput.spawn(
                    "--role", "subscriber", "--target", chain.target("henan-province"), "--idle", str(args.idle),
                    "--sample", "100",
                )  # fmt: skip
                assert sub.stdout is not None
                sub.stdout.readline()
                restarted = time.perf_counter()
                chain.start("zhengzhou-city")
                delivered = throughput.result(sub, args.outage + 600)
                drain = delivered["delivered"] / delivered["seconds"] if delivered["seconds"] else 0.0
                wall = time.perf_counter() - restarted - args.idle
            print(
                f"(d) catch-up after {args.outage:g} s with the city down: {published['accepted']:,} envelopes "
                f"accumulated at {accumulated:,.0f}/s, reached the province at {drain:,.0f}/s "
                f"(all {delivered['delivered']:,} within {wall:.1f} s of the city's restart): "
                f"{drain / accumulated:.1f}x (goal: at least 5x)",
                flush=True,
            )


if __name__ == "__main__":
    main()
