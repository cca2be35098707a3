"""The ``yiwang`` command: run a node, publish, subscribe, query, and a demo of it all.

Command output (results, envelopes) goes to stdout as JSON lines; log lines and errors go to stderr.
An error is one line naming what is wrong, with a non-zero exit: 1 when some input was refused,
2 for usage errors and unreachable nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from google.protobuf import json_format
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters import cli as adapter_commands
from edge_agent import cli as edge_commands
from gateway import __version__, logsetup, reports, webauth
from gateway.audit import verify as verify_audit
from gateway.boundaries import default_boundaries
from gateway.certstore import certificate_sha256
from gateway.client import GatewayClient
from gateway.config import NodeConfig, from_dict, load, parse_address
from gateway.demo import Traffic, county_reports, describe
from gateway.errors import ConfigError, YiwangError
from gateway.ids import uuid7
from gateway.jetstream_log import migrate_node_log
from gateway.node import Node, run_until_signalled
from gateway.pki import Authority, Role
from gateway.pki import describe as describe_certificate
from gateway.regions import Level, RegionTable, default_table
from gateway.routing import Routing
from gateway.signing import SignatureError, Signer, Verifier
from gateway.tls import ClientTls, Revocations

EXIT_REFUSED = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A command cannot go on; the message is the one line the user sees."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _json(message: Any) -> str:
    return json_format.MessageToJson(message, indent=None, ensure_ascii=False)


def _enum_values(enum: Any, skip: str) -> list[str]:
    return [name for name in enum.keys() if name != skip]  # noqa: SIM118 - protobuf enum wrapper, not a dict


# -- filters shared by subscribe and query ----------------------------------------------------------


def _add_filter_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filter (all given conditions must hold)")
    g.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=_enum_values(pb.Kind, "KIND_UNSPECIFIED"),
        help="envelope kind; repeat for several",
    )
    g.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="CODE",
        help="GB/T 2260 code; matches its whole subtree (a city matches its counties); repeatable",
    )
    g.add_argument("--agency", action="append", default=[], metavar="A", help="origin agency code; repeatable")
    g.add_argument(
        "--min-severity",
        choices=_enum_values(pb.Severity, "SEVERITY_UNSPECIFIED"),
        help="lowest warning colour to include",
    )
    g.add_argument(
        "--status",
        action="append",
        default=[],
        choices=_enum_values(pb.Status, "STATUS_UNSPECIFIED"),
        help="ACTUAL, EXERCISE or TEST; repeatable",
    )
    g.add_argument(
        "--bbox",
        metavar="MINLAT,MINLON,MAXLAT,MAXLON",
        help="only envelopes whose geometry intersects this box",
    )


def _filter(args: argparse.Namespace) -> gw.Filter:
    flt = gw.Filter(regions=args.region, agencies=args.agency)
    flt.kinds.extend(cast(pb.Kind, pb.Kind.Value(k)) for k in args.kind)
    flt.statuses.extend(cast(pb.Status, pb.Status.Value(s)) for s in args.status)
    if args.min_severity:
        flt.min_severity = pb.Severity.Value(args.min_severity)  # type: ignore[assignment]
    if args.bbox:
        try:
            min_lat, min_lon, max_lat, max_lon = (float(v) for v in args.bbox.split(","))
        except ValueError:
            raise CommandError(f"--bbox: expected MINLAT,MINLON,MAXLAT,MAXLON, got {args.bbox!r}") from None
        flt.bbox.CopyFrom(gw.BoundingBox(min_lat=min_lat, min_lon=min_lon, max_lat=max_lat, max_lon=max_lon))
    return flt


def parse_time(text: str, option: str) -> dt.datetime:
    """ISO 8601; a time without a zone is taken in this machine's local zone."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option}: {text!r} is not an ISO 8601 time such as 2026-07-20T16:00:00+08:00") from None
    return value if value.tzinfo else value.astimezone()


# -- commands ---------------------------------------------------------------------------------------


def cmd_gateway(args: argparse.Namespace) -> int:
    if args.config:
        if args.region or args.listen or args.http or args.data or args.node_id or args.insecure or args.ca:
            raise CommandError("give either --config FILE or --region/--listen/--http/--data, not both")
        config = load(Path(args.config))
    else:
        if not args.region:
            raise CommandError("give --config FILE, or at least --region CODE for a quick node")
        given = [args.ca, args.cert, args.key]
        if args.insecure == any(given) or (any(given) and not all(given)):
            raise CommandError("a quick node needs --ca, --cert and --key, or --insecure (loopback only)")
        tls: dict[str, Any] = {"insecure": True}
        if not args.insecure:
            tls = {"ca": args.ca, "cert": args.cert, "key": args.key, "crl": args.crl or ""}
        config = quick_config(
            args.region, listen=args.listen, http=args.http, data=args.data, node_id=args.node_id, tls=tls
        )
    logsetup.configure(args.log_level)
    asyncio.run(run_until_signalled(config))
    return 0


def quick_config(
    region: str,
    *,
    listen: str | None,
    http: str | None,
    data: str | None,
    node_id: str | None,
    tls: dict[str, Any] | None = None,
) -> NodeConfig:
    """A node from command-line flags; plaintext on loopback unless TLS material is given."""
    return from_dict(
        {
            "node": {"id": node_id or f"node-{region}", "region": region},
            "listen": {"grpc": listen or "127.0.0.1:7400", "http": http or "127.0.0.1:7480"},
            "log": {"data_dir": data or "yiwang-data"},
            "tls": tls or {"insecure": True},
        },
        source="command line",
    )


def _client(args: argparse.Namespace) -> GatewayClient:
    """A client as the command line asks: mutual TLS with --ca/--cert/--key, or plaintext with --insecure."""
    given = [args.ca, args.cert, args.key]
    if args.insecure:
        if any(given):
            raise CommandError("give either --ca/--cert/--key or --insecure, not both")
        return GatewayClient(args.to, insecure=True)
    if not all(given):
        raise CommandError(
            "the node requires mutual TLS: give --ca, --cert and --key (or --insecure for a development node)"
        )
    return GatewayClient(args.to, tls=ClientTls(Path(args.ca), Path(args.cert), Path(args.key), args.server_name or ""))


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--to",
        required=True,
        metavar="HOST:PORT",
        help="the node's gRPC address; replicas of one node as a comma-separated list of IP:PORT, used in turn",
    )
    g = p.add_argument_group("identity (mutual TLS)")
    g.add_argument("--ca", metavar="FILE", help="the network's root CA (PEM)")
    g.add_argument("--cert", metavar="FILE", help="this client's certificate (PEM)")
    g.add_argument("--key", metavar="FILE", help="this client's private key (PEM)")
    g.add_argument("--server-name", metavar="NAME", help="the name to expect in the node's certificate")
    g.add_argument("--insecure", action="store_true", help="plaintext, to a development node on loopback only")


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


def _signer(args: argparse.Namespace) -> Signer | None:
    if args.sign_key or args.sign_cert:
        if not (args.sign_key and args.sign_cert):
            raise CommandError("give both --sign-key and --sign-cert to sign")
        return Signer.load(Path(args.sign_key).read_bytes(), Path(args.sign_cert).read_bytes())
    if args.batch_signature:
        raise CommandError("--batch-signature needs --sign-key and --sign-cert")
    return None


async def _publish(args: argparse.Namespace) -> int:
    signer = _signer(args)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(loop, lines), daemon=True, name="stdin").start()
    refused = 0
    number = 0
    async with _client(args) as client:
        done = False
        while not done:
            batch: list[tuple[int, pb.Envelope]] = []
            rows: dict[int, dict[str, Any]] = {}  # results by input line, printed in input order
            first = await lines.get()
            pending = [first]
            while len(pending) < args.batch and not lines.empty():
                pending.append(lines.get_nowait())
            for line in pending:
                if line is None:
                    done = True
                    break
                number += 1
                if not line.strip():
                    continue
                env = pb.Envelope()
                try:
                    json_format.Parse(line, env)
                except json_format.ParseError as exc:
                    rows[number] = {"line": number, "outcome": "REJECTED", "field": "json", "reason": str(exc)}
                    continue
                if not env.id:
                    env.id = uuid7()
                if not env.HasField("sent_at"):
                    env.sent_at.GetCurrentTime()
                batch.append((number, env))
            if batch and signer is not None:
                if args.batch_signature:
                    signer.sign_batch([env for _, env in batch])
                else:
                    for _, env in batch:
                        signer.sign(env)
            if batch:
                certificates = [signer.certificate_der] if signer is not None and args.batch_signature else []
                reply = await client.publish([env for _, env in batch], certificates=certificates)
                for (line_number, _), result in zip(batch, reply.results, strict=True):
                    rows[line_number] = {"line": line_number, **json_format.MessageToDict(result)}
            for line_number in sorted(rows):
                row = rows[line_number]
                if row.get("outcome") == "REJECTED":
                    refused += 1
                print(json.dumps(row, ensure_ascii=False), flush=True)
    return EXIT_REFUSED if refused else 0


def _start(args: argparse.Namespace, request: gw.SubscribeRequest) -> None:
    start = args.start
    if start == "oldest":
        request.position = gw.OLDEST
    elif start == "latest":
        request.position = gw.LATEST
    elif start.isdigit():
        request.offset = int(start)
    else:
        request.time.FromDatetime(parse_time(start, "--from"))


async def _subscribe(args: argparse.Namespace) -> int:
    request = gw.SubscribeRequest(filter=_filter(args), durable_name=args.durable or "")
    if args.start:
        _start(args, request)
    elif not args.durable:
        request.position = gw.LATEST
    if args.limit is not None and args.limit <= 0:
        raise CommandError("--limit must be at least 1")
    printed = 0
    async with _client(args) as client:
        call = client.subscribe(request)
        try:
            async for batch in call:
                next_offset = batch.next_offset
                for delivery in batch.deliveries:
                    print(_json(delivery), flush=False)
                    printed += 1
                    if args.limit is not None and printed >= args.limit:
                        next_offset = delivery.offset + 1
                        break
                sys.stdout.flush()
                if args.durable and next_offset:
                    await client.ack(args.durable, next_offset)
                if args.limit is not None and printed >= args.limit:
                    return 0
        finally:
            call.cancel()
    return 0


async def _query(args: argparse.Namespace) -> int:
    request = gw.QueryRequest(
        filter=_filter(args),
        from_offset=args.from_offset or 0,
        to_offset=args.to_offset or 0,
        page_size=args.page_size,
        newest_first=args.newest_first,
    )
    if args.since:
        request.from_time.FromDatetime(parse_time(args.since, "--since"))
    if args.until:
        request.to_time.FromDatetime(parse_time(args.until, "--until"))
    printed = 0
    async with _client(args) as client:
        async for delivery in client.query_all(request):
            print(_json(delivery))
            printed += 1
            if args.limit is not None and printed >= args.limit:
                break
    return 0


async def _get(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        reply = await client.get(args.ids)
    for delivery in reply.deliveries:
        print(_json(delivery))
    for missing in reply.missing:
        print(f"yiwang get: no envelope with id {missing!r} in the log", file=sys.stderr)
    return EXIT_REFUSED if reply.missing else 0


async def _route_explain(args: argparse.Namespace) -> int:
    """Prints, for each id, where the node of --config sends the envelope and by which rule."""
    config = load(Path(args.config))
    routing = Routing.load(config.path(config.routing.file) if config.routing.file else None)
    routing.touching = default_boundaries().touching
    from adapters.host import self_target  # noqa: PLC0415 - the adapter host is loaded only where it is used

    target = self_target(config, parse_address(config.listen.grpc, "listen.grpc", config.source)[1])
    if config.tls.insecure:
        client = GatewayClient(target, insecure=True)
    else:
        tls = config.tls
        client = GatewayClient(target, tls=ClientTls(config.path(tls.ca), config.path(tls.cert), config.path(tls.key)))
    async with client:
        reply = await client.get(args.ids)
    for delivery in reply.deliveries:
        env = delivery.envelope
        came_from = [hop.node for hop in env.provenance.hops if hop.node != config.node.id]
        lines = routing.explain(
            env,
            node=config.node.id,
            level=Level(config.level),
            region=config.node.region,
            parent=bool(config.parent.address),
            came_from=came_from,
        )
        print("\n".join(lines), flush=True)
    for missing in reply.missing:
        print(f"yiwang route explain: {missing!r} is not in the log of {config.node.id}", file=sys.stderr)
    return EXIT_REFUSED if reply.missing else 0


def _reports_overdue(args: argparse.Namespace) -> int:
    """Prints the node's overdue reports and links as JSON lines (from its data directory)."""
    config = load(Path(args.config))
    path = config.data_dir / "reports.sqlite"
    if not path.exists():
        raise CommandError(f"{path} does not exist: has the node of {args.config} run yet?")
    db = reports.open_db(path, read_only=True)
    try:
        late = reports.overdue(db, time.time_ns())
    finally:
        db.close()
    for item in late:
        print(json.dumps(item.as_dict(), ensure_ascii=False), flush=True)
    return 0


async def _info(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        print(_json(await client.info()))
    return 0


def demo_pki(folder: Path) -> Authority:
    """The demo's own CA and identities: the node, a feeder gateway for the departments, a duty desk."""
    ca = Authority(folder) if (folder / "ca.key").exists() else Authority.init(folder, trust_domain="demo.yiwang.local")
    wanted = [
        (Role.GATEWAY, "410000", "henan-province", "henan-province"),
        (Role.GATEWAY, "410100", "zhengzhou-city", "zhengzhou-city"),
        (Role.GATEWAY, "410102", "zhongyuan-county", "zhongyuan-county"),
        (Role.GATEWAY, "410000", "department-feeder", "department-feeder"),
        (Role.DEPARTMENT, "410102", "zhongyuan-emergency", "emergency"),
        (Role.PLATFORM, "410000", "duty-desk", "emergency"),
    ]
    for role, region, name, principal in wanted:
        if not (folder / "issued" / f"{name}.pem").exists():
            ca.issue(ca.identity(role, region, name, principal), dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    return ca


def demo_node(
    ca: Authority, data: Path, name: str, region: str, *, listen: str, http: str, parent: Node | None
) -> Node:
    """One node of the demo's province, city and county, each with its own identity and data, and
    each serving the web command picture of its region."""
    node_tls = demo_tls(ca, name)
    table: dict[str, Any] = {
        "node": {"id": name, "region": region},
        "listen": {"grpc": listen, "http": http},
        "log": {"data_dir": str(data / name)},
        "web": {"enabled": True},
        "tls": {
            "ca": str(node_tls.ca),
            "cert": str(node_tls.cert),
            "key": str(node_tls.key),
            "crl": str(ca.dir / "crl.pem"),
        },
    }
    if parent is not None:
        parent_id = parent.config.node.id
        parent_uri = ca.identity(Role.GATEWAY, parent.config.node.region, parent_id, parent_id).uri
        table["parent"] = {"address": parent.grpc_target, "identity": parent_uri}
    return Node(from_dict(table, source=f"demo {name}"))


LOOPBACK_ANY = "127.0.0.1:0"


def demo_duty_officer(node: Node, name: str) -> str:
    """Adds a duty officer of the node's region who may sign in to its picture; returns a password
    made for this run (a demo has no default password either)."""
    password = secrets.token_urlsafe(12)
    store = webauth.UserStore(webauth.users_db(node.config))
    try:
        if name not in {user.name for user in store.users()}:
            store.add(webauth.User(name, node.config.node.region, "emergency", Role.PLATFORM), password)
        else:
            store.set_password(name, password)
    finally:
        store.close()
    return password


def demo_tls(ca: Authority, name: str) -> ClientTls:
    issued = ca.dir / "issued"
    return ClientTls(ca.dir / "ca.pem", issued / f"{name}.chain.pem", issued / f"{name}.key")


async def _log_migrate(args: argparse.Namespace) -> int:
    config = load(Path(args.config))
    if not config.log.jetstream.servers:
        raise CommandError(f"{args.config}: [log.jetstream] servers is required: where to migrate the log to")
    try:
        report = await migrate_node_log(config)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps(dataclasses.asdict(report)))
    return 0


async def _demo(args: argparse.Namespace) -> int:
    data = Path(args.data or tempfile.mkdtemp(prefix="yiwang-demo-"))
    ca = await asyncio.to_thread(demo_pki, data / "pki")
    regions = default_table()
    issued = ca.dir / "issued"
    signer = Signer.load(
        await asyncio.to_thread((issued / "department-feeder.sign.key").read_bytes),
        await asyncio.to_thread((issued / "department-feeder.sign.pem").read_bytes),
    )
    province = demo_node(ca, data, "henan-province", "410000", listen=args.listen, http=args.http, parent=None)
    password = await asyncio.to_thread(demo_duty_officer, province, "duty-province")
    async with province:
        city = demo_node(ca, data, "zhengzhou-city", "410100", listen=LOOPBACK_ANY, http=LOOPBACK_ANY, parent=province)
        async with city:
            county = demo_node(
                ca, data, "zhongyuan-county", "410102", listen=LOOPBACK_ANY, http=LOOPBACK_ANY, parent=city
            )
            async with (
                county,
                GatewayClient(province.grpc_target, tls=demo_tls(ca, "department-feeder")) as client,
                GatewayClient(county.grpc_target, tls=demo_tls(ca, "zhongyuan-emergency")) as reporter,
                GatewayClient(province.grpc_target, tls=demo_tls(ca, "duty-desk")) as desk,
            ):
                await _demo_run(
                    args,
                    data=data,
                    ca=ca,
                    nodes=(province, city, county),
                    clients=(client, reporter, desk),
                    signer=signer,
                    regions=regions,
                    password=password,
                )
    print("yiwang demo: stopped", flush=True)
    return 0


async def _demo_run(
    args: argparse.Namespace,
    *,
    data: Path,
    ca: Authority,
    nodes: tuple[Node, Node, Node],
    clients: tuple[GatewayClient, GatewayClient, GatewayClient],
    signer: Signer,
    regions: RegionTable,
    password: str,
) -> None:
    """Prints the three nodes, publishes the day's traffic (and the county's reports) and shows deliveries."""
    province, city, county = nodes
    client, reporter, desk = clients
    print(
        f"yiwang demo: node henan-province (410000 河南省) on grpc {province.grpc_target}, "
        f"https://127.0.0.1:{province.http_port}/metrics, logs in {data}",
        flush=True,
    )
    print(
        f"yiwang demo: mutual TLS with a demo CA in {ca.dir}; the feeder signs each batch, "
        "the duty desk reads what the sharing policy shows a province platform",
        flush=True,
    )
    print(
        "yiwang demo: publishing a rainstorm day's traffic for Zhengzhou, Luoyang and Xinxiang at the province, "
        "and incident reports at the Zhongyuan county node; Ctrl-C stops",
        flush=True,
    )
    print(
        f"yiwang demo: nodes zhengzhou-city (410100 郑州市) on grpc {city.grpc_target} under the province, "
        f"zhongyuan-county (410102 中原区) on grpc {county.grpc_target} under the city; "
        "lines marked 'via' came up the links, 'county <' lines are warnings the county received",
        flush=True,
    )
    print(
        f"yiwang demo: the command picture: https://127.0.0.1:{province.http_port}/picture/ "
        f"(sign in as duty-province, password {password}; the browser will ask about the demo CA, "
        f"{ca.dir / 'ca.pem'})",
        flush=True,
    )

    async def publisher() -> None:
        traffic = Traffic()
        while True:
            tick = traffic.next_tick()
            shared = signer.sign_batch(tick, shared=True)  # telemetry: the batch's signature once
            reply = await client.publish(tick, certificates=[signer.certificate_der], batch_signatures=[shared])
            refused(reply)
            reports = county_reports(traffic.tick)
            if reports:
                refused(await reporter.publish(reports))
            await asyncio.sleep(args.interval)

    def refused(reply: gw.PublishReply) -> None:
        for result in reply.results:
            if result.outcome == gw.PublishResult.REJECTED:
                print(f"yiwang demo: refused {result.id}: {result.field}: {result.reason}", file=sys.stderr)

    def clock(env: pb.Envelope) -> str:
        return dt.datetime.fromtimestamp(env.sent_at.seconds, tz=dt.UTC).astimezone().strftime("%H:%M:%S")

    async def subscriber() -> None:
        call = desk.subscribe(gw.SubscribeRequest(position=gw.OLDEST))
        async for batch in call:
            for d in batch.deliveries:
                env = d.envelope
                hops = [h.node for h in env.provenance.hops]
                via = f"  (via {' > '.join(hops[:-1])})" if len(hops) > 1 else ""
                print(f"#{d.offset:<6} {clock(env)} {describe(env, regions.name(env.region))}{via}", flush=True)

    async def county_watch() -> None:
        assert county.log is not None
        position = 1
        while True:
            await county.log.wait_beyond(position, timeout=5.0)
            for stored in await county.log.read(position, 500):
                for d in gw.DeliveryBatch.FromString(stored.data).deliveries:
                    env = d.envelope
                    if d.offset >= position and env.kind == pb.ALERT and len(env.provenance.hops) > 1:
                        route = " > ".join(h.node for h in env.provenance.hops)
                        print(f"county < {clock(env)} {describe(env, regions.name(env.region))}  ({route})", flush=True)
                position = stored.next_offset

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(publisher(), name="demo-publisher"),
            group.create_task(county_watch(), name="demo-county"),
        ]
        sub = group.create_task(subscriber(), name="demo-subscriber")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration or None)
        for task in tasks:
            task.cancel()
        await asyncio.sleep(0.5)  # let the subscriber print what was published last
        sub.cancel()


def _pki(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.pki_command == "init":
        authority = Authority.init(directory, trust_domain=args.trust_domain, province=args.province)
        print(json.dumps({"ca": str(directory / "ca.pem"), "crl": str(directory / "crl.pem"),
                          "trust_domain": authority.register.trust_domain}, ensure_ascii=False))  # fmt: skip
        return 0
    if args.pki_command == "show":
        print(
            json.dumps(describe_certificate(Path(args.file), directory if args.dir_given else None), ensure_ascii=False)
        )
        return 0
    authority = Authority(directory)
    if args.pki_command == "issue":
        role = Role(args.role)
        principal = (args.node or args.name) if role is Role.GATEWAY else (args.agency or "")
        identity = authority.identity(role, args.region, args.name, principal)
        tls, signing = authority.issue(identity, days=args.days, dns_names=tuple(args.dns), ip_addresses=tuple(args.ip))
        print(json.dumps({"identity": identity.uri, "tls": str(tls), "signing": str(signing)}, ensure_ascii=False))
        return 0
    if args.pki_command == "revoke":
        for record in authority.revoke(args.which, args.reason):
            print(json.dumps({"revoked": record.serial, "identity": record.identity, "purpose": record.purpose}))
        return 0
    if args.pki_command == "crl":
        print(json.dumps({"crl": str(authority.write_crl())}))
        return 0
    raise CommandError(f"unknown pki command {args.pki_command!r}")


def _verify(args: argparse.Namespace) -> int:
    """Checks the signatures of envelopes (or deliveries) read as JSON lines on stdin."""
    ca = x509.load_pem_x509_certificate(Path(args.ca).read_bytes())
    revoked = Revocations(Path(args.crl), Path(args.ca)) if args.crl else None
    if revoked is not None:
        revoked.reload()
    results: list[dict[str, Any]] = []
    envelopes: list[tuple[int, pb.Envelope]] = []
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            env = pb.Envelope()
            json_format.ParseDict(raw.get("envelope", raw), env)
        except (json.JSONDecodeError, json_format.ParseError, AttributeError) as exc:
            results.append({"line": number, "ok": False, "reason": f"not an envelope: {exc}"})
            continue
        envelopes.append((number, env))
    named = {
        env.provenance.signature.certificate_sha256
        for _, env in envelopes
        if env.provenance.signature.certificate_sha256 and not env.provenance.signature.certificate
    }
    known: dict[bytes, bytes] = {}
    if named and args.to:
        known = {certificate_sha256(der): der for der in asyncio.run(_fetch_certificates(args, sorted(named)))}
    verifier = Verifier(ca, revoked.serials if revoked else frozenset(), known.get)
    for number, env in envelopes:
        try:
            signer = verifier.verify(env)
        except SignatureError as exc:
            reason = str(exc)
            if "unknown here" in reason and not args.to:
                reason += "; or give --to (with --cert/--key) to fetch it from a node"
            results.append({"line": number, "id": env.id, "ok": False, "reason": reason})
        else:
            results.append({"line": number, "id": env.id, "ok": True, "signer": signer})
    for row in sorted(results, key=lambda r: int(r["line"])):
        print(json.dumps(row, ensure_ascii=False), flush=True)
    return EXIT_REFUSED if any(not row["ok"] for row in results) else 0


async def _fetch_certificates(args: argparse.Namespace, sha256: list[bytes]) -> list[bytes]:
    async with _client(args) as client:
        return await client.certificates(sha256)


def _audit(args: argparse.Namespace) -> int:
    verdict = verify_audit(Path(args.file), args.head)
    print(json.dumps({"ok": verdict.ok, "records": verdict.records, "head": verdict.head, "problem": verdict.problem}))
    if not verdict.ok:
        print(f"yiwang audit: {args.file}: {verdict.problem}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def _add_pki_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "pki",
        parents=[common],
        help="the network's certificates: CA, identities, revocation",
        description="Creates the province root CA, issues identity certificates (URI SAN "
        "spiffe://DOMAIN/REGION/AGENCY-OR-NODE/ROLE/NAME), revokes them and writes the CRL.",
    )
    p.set_defaults(run=_pki)
    pki = p.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")

    def with_dir(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("--dir", default="pki", help="the PKI directory (default ./pki)")
        return q

    q = with_dir(pki.add_parser("init", help="create the province root CA and an empty CRL"))
    q.add_argument("--trust-domain", required=True, help="the network's trust domain, e.g. yjt.henan.gov.cn")
    q.add_argument("--province", default="410000", help="GB/T 2260 code of the province (default 410000)")

    q = with_dir(pki.add_parser("issue", help="issue the TLS and signing certificates of an identity"))
    q.add_argument("--role", required=True, choices=[r.value for r in Role])
    q.add_argument("--region", required=True, metavar="CODE", help="GB/T 2260 code the identity is bound to")
    q.add_argument("--agency", metavar="CODE", help="agency code (required except for --role gateway)")
    q.add_argument("--node", metavar="ID", help="for --role gateway: the node id (default: --name)")
    q.add_argument("--name", required=True, help="a name unique in this PKI, e.g. zhengzhou-city or gauge-17")
    q.add_argument("--days", type=int, default=397, help="validity in days (default 397)")
    q.add_argument("--dns", action="append", default=[], help="DNS name for a server certificate; repeatable")
    q.add_argument("--ip", action="append", default=[], help="IP address for a server certificate; repeatable")

    q = with_dir(pki.add_parser("revoke", help="revoke a name's certificates (or a serial) and rewrite the CRL"))
    q.add_argument("which", metavar="NAME|SERIAL")
    q.add_argument(
        "--reason",
        default="unspecified",
        help="unspecified, key_compromise, affiliation_changed, superseded or cessation_of_operation",
    )

    with_dir(pki.add_parser("crl", help="sign a fresh CRL (it is valid for a week)"))

    q = pki.add_parser("show", help="print what a certificate says (and whether it is revoked, with --dir)")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--dir", help="a PKI directory to look the certificate up in")


# -- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yiwang", description="yiwang (一网): the emergency information gateway")
    parser.add_argument("--version", action="version", version=f"yiwang {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log lines (on stderr) at this level and above (default info; warning for demo)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "gateway",
        parents=[common],
        help="run a gateway node",
        description="Run a gateway node until SIGINT/SIGTERM.",
    )
    p.add_argument("--config", metavar="FILE", help="the node's TOML configuration")
    p.add_argument("--region", metavar="CODE", help="quick node: its GB/T 2260 region code (level follows)")
    p.add_argument("--listen", metavar="HOST:PORT", help="quick node: gRPC address (default 127.0.0.1:7400)")
    p.add_argument("--http", metavar="HOST:PORT", help="quick node: /healthz and /metrics (default 127.0.0.1:7480)")
    p.add_argument("--data", metavar="DIR", help="quick node: data directory (default ./yiwang-data)")
    p.add_argument("--node-id", metavar="ID", help="quick node: its id (default node-REGION)")
    p.add_argument("--ca", metavar="FILE", help="quick node: the network's root CA")
    p.add_argument("--cert", metavar="FILE", help="quick node: its certificate (chain)")
    p.add_argument("--key", metavar="FILE", help="quick node: its private key")
    p.add_argument("--crl", metavar="FILE", help="quick node: the CA's CRL, re-read when it changes")
    p.add_argument("--insecure", action="store_true", help="quick node: plaintext on loopback, for development")
    p.set_defaults(run=cmd_gateway)

    p = sub.add_parser(
        "publish",
        parents=[common],
        help="publish JSON-line envelopes from stdin",
        description="Reads envelopes as JSON lines (the protobuf JSON mapping of Envelope) on stdin "
        "and prints one result line per envelope. A missing id gets a UUIDv7, a missing sent_at the "
        "current time. Exits 1 if any envelope was refused.",
    )
    _add_client_args(p)
    p.add_argument("--sign-key", metavar="FILE", help="sign each envelope with this Ed25519 key (NAME.sign.key)")
    p.add_argument("--sign-cert", metavar="FILE", help="... and its signing certificate (NAME.sign.pem)")
    p.add_argument("--batch-signature", action="store_true", help="one signature per request (for telemetry)")
    p.add_argument("--batch", type=int, default=500, help="most envelopes per request (default 500)")
    p.set_defaults(run=lambda a: asyncio.run(_publish(a)))

    p = sub.add_parser(
        "subscribe",
        parents=[common],
        help="print envelopes as they arrive",
        description="Prints deliveries (offset, envelope, appendedAt) as JSON lines, replaying from "
        "--from and then following the live log.",
    )
    _add_client_args(p)
    _add_filter_args(p)
    p.add_argument(
        "--from",
        dest="start",
        metavar="oldest|latest|OFFSET|TIME",
        help="where to start (default latest; a durable subscription resumes where it was)",
    )
    p.add_argument("--durable", metavar="NAME", help="a named subscription whose position the node remembers")
    p.add_argument("--limit", type=int, metavar="N", help="exit after N envelopes")
    p.set_defaults(run=lambda a: asyncio.run(_subscribe(a)))

    p = sub.add_parser(
        "query",
        parents=[common],
        help="print history by filter",
        description="Prints the log's history that matches the filter, as JSON lines, page by page.",
    )
    _add_client_args(p)
    _add_filter_args(p)
    p.add_argument("--from-offset", type=int, metavar="OFFSET", help="first offset (inclusive)")
    p.add_argument("--to-offset", type=int, metavar="OFFSET", help="last offset (exclusive)")
    p.add_argument("--since", metavar="TIME", help="appended at or after this ISO 8601 time")
    p.add_argument("--until", metavar="TIME", help="appended before this ISO 8601 time")
    p.add_argument("--newest-first", action="store_true", help="newest first")
    p.add_argument("--page-size", type=int, default=500, help="envelopes per request (default 500)")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N envelopes")
    p.set_defaults(run=lambda a: asyncio.run(_query(a)))

    p = sub.add_parser(
        "get",
        parents=[common],
        help="print envelopes by id",
        description="Prints the deliveries of the given ids.",
    )
    _add_client_args(p)
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(run=lambda a: asyncio.run(_get(a)))

    p = sub.add_parser("info", parents=[common], help="print what a node is and how far its log reaches")
    _add_client_args(p)
    p.set_defaults(run=lambda a: asyncio.run(_info(a)))

    _add_pki_parser(sub, common)
    adapter_commands.add_parsers(sub, common)
    edge_commands.add_parsers(sub, common)
    webauth.add_parsers(sub, common)

    p = sub.add_parser(
        "verify",
        parents=[common],
        help="check envelope signatures (JSON lines on stdin)",
        description="Reads envelopes or deliveries as JSON lines (as subscribe, query and get print them) and "
        "checks each signature against the network's CA: who signed it, and that nothing was altered. "
        "Exits 1 if any does not verify.",
    )
    p.add_argument("--ca", required=True, metavar="FILE", help="the network's root CA")
    p.add_argument("--crl", metavar="FILE", help="the CA's CRL: signatures of revoked certificates fail")
    g = p.add_argument_group(
        "fetching certificates",
        "batch signatures name their certificate by hash; with --to, the ones needed are fetched from that node",
    )
    g.add_argument("--to", metavar="HOST:PORT", help="a node that stored the envelopes")
    g.add_argument("--cert", metavar="FILE", help="this client's certificate (PEM)")
    g.add_argument("--key", metavar="FILE", help="this client's private key (PEM)")
    g.add_argument("--server-name", metavar="NAME", help="the name to expect in the node's certificate")
    g.add_argument("--insecure", action="store_true", help="plaintext, to a development node on loopback only")
    p.set_defaults(run=_verify)

    p = sub.add_parser(
        "reports",
        parents=[common],
        help="incident reports that must not go missing",
        description="Incident report chains and their deadlines.",
    )
    reports_sub = p.add_subparsers(dest="reports_command", required=True, metavar="REPORTS_COMMAND")
    q = reports_sub.add_parser(
        "overdue",
        help="list overdue reports and links",
        description="Prints, as JSON lines, each report or link of the node of --config that is past its "
        "deadline: not yet with the parent node, a follow-up not received, a child's link down too long.",
    )
    q.add_argument("--config", required=True, metavar="FILE", help="the node's TOML configuration")
    p.set_defaults(run=_reports_overdue)

    p = sub.add_parser(
        "route", parents=[common], help="routing between nodes", description="Routing between the nodes."
    )
    route = p.add_subparsers(dest="route_command", required=True, metavar="ROUTE_COMMAND")
    q = route.add_parser(
        "explain",
        help="print where a node sends envelopes and by which rule",
        description="Fetches the envelopes from the node of --config (as the node's own identity) and "
        "prints, for its parent and each of its subregions, whether routing sends each one there, by "
        "which rule, and why. Exits 1 if an id is not in the node's log.",
    )
    q.add_argument("--config", required=True, metavar="FILE", help="the node's TOML configuration")
    q.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(run=lambda a: asyncio.run(_route_explain(a)))

    p = sub.add_parser(
        "audit", parents=[common], help="check an audit log", description="Checks the hash chain of an audit log."
    )
    audit = p.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")
    q = audit.add_parser("verify", help="exit 1 and name the record if any was edited, removed or reordered")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--head", metavar="HASH", help="the head hash kept elsewhere (default: FILE.head)")
    p.set_defaults(run=_audit)

    p = sub.add_parser(
        "log",
        parents=[common],
        help="manage a node's log",
        description="Moves a node's log between backends.",
    )
    log_sub = p.add_subparsers(dest="log_command", required=True, metavar="LOG_COMMAND")
    q = log_sub.add_parser(
        "migrate",
        help="copy the embedded log into the [log.jetstream] stream (ids, order, offsets, positions)",
        description="Copies the node's embedded log (log.data_dir) into the JetStream stream named by "
        "[log.jetstream], keeping ids, order, offsets and durable subscription positions. Stop the node "
        "first. Running it again copies only what is missing. Prints one JSON line.",
    )
    q.add_argument("--config", required=True, metavar="FILE", help="the node's TOML configuration")
    q.set_defaults(run=lambda a: asyncio.run(_log_migrate(a)))

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run a node with realistic Henan traffic and show it",
        description="Starts a province node, publishes a rainstorm day's traffic and prints what a "
        "subscriber receives. Runs until Ctrl-C or --duration.",
    )
    p.add_argument("--duration", type=float, default=0, metavar="S", help="stop after S seconds (default: run on)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between traffic ticks")
    p.add_argument("--data", metavar="DIR", help="data directory (default: a new temporary one)")
    p.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:7400")
    p.add_argument("--http", metavar="HOST:PORT", default="127.0.0.1:7480")
    p.set_defaults(run=lambda a: asyncio.run(_demo(a)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"yiwang {args.command}"
    if args.command == "pki":
        args.dir_given = args.dir is not None
        args.dir = args.dir or "pki"
    if args.log_level is None:  # the demo's own lines are the show; elsewhere info
        args.log_level = "warning" if args.command == "demo" else "info"
    if args.command != "gateway":
        logsetup.configure(args.log_level)
    try:
        code: int = args.run(args)
    except CommandError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    except (ConfigError, YiwangError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.aio.AioRpcError as exc:
        target = getattr(args, "to", "")
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            print(f"{prog}: cannot reach the node at {target} ({exc.details()})", file=sys.stderr)
        else:
            print(f"{prog}: the node refused the request: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
