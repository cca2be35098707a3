"""One gateway node: its log, its gRPC services, its HTTP side port, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
import structlog
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from yiwang.v1 import gateway_pb2 as gw

from gateway.admission import AdmissionPool
from gateway.audit import AuditLog
from gateway.boundaries import default_boundaries
from gateway.certstore import CertificateStore
from gateway.config import NodeConfig, parse_address, parse_size
from gateway.errors import ConfigError
from gateway.federation import SERVICE as FEDERATION_SERVICE
from gateway.federation import FederationMetrics, FederationService, ParentLink
from gateway.http import HttpSide

if TYPE_CHECKING:
    from adapters.deadletter import DeadLetters
    from adapters.host import AdapterHost
    from adapters.station_protocol import Station
    from gateway.edge_ingest import EdgeIngest
    from gateway.edge_ledger import EdgeLedger
    from gateway.station_workers import StationWorkers
    from gateway.tak import TakServer
from gateway.jetstream_log import JetStreamLog, settings_from_config
from gateway.metrics import NodeMetrics
from gateway.pki import Identity, PkiError
from gateway.policy import Policy
from gateway.regions import default_table, level_of
from gateway.reports import ReportMetrics, ReportTracker, rules_of
from gateway.routing import Routing
from gateway.service import SERVICE, GatewayService, Peer, ServiceLimits
from gateway.signing import Verifier
from gateway.sqlite_log import Retention, SqliteLog
from gateway.stations import Batcher, Publish, StationMetrics, StationServer, load_registry, protocol_named
from gateway.summaries import StationSummaries
from gateway.tls import ClientTls, Revocations, ServerTls
from gateway.validation import Limits, Validator

log = structlog.get_logger("yiwang.node")


class Node:
    """``async with Node(config) as node:`` runs a node until the block ends."""

    def __init__(self, config: NodeConfig, *, grace_s: float = 2.0) -> None:
        self.config = config
        self.grace_s = grace_s
        self.metrics = NodeMetrics()
        self.log: SqliteLog | JetStreamLog | None = None  # by [log] backend; both implement gateway.log.Log
        self.service: GatewayService | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.http: HttpSide | None = None
        self.adapters: AdapterHost | None = None
        self.ingest: EdgeIngest | None = None
        self.edge_ledger: EdgeLedger | None = None
        self.edge_letters: DeadLetters | None = None
        self._ingest_task: asyncio.Task[None] | None = None
        self._commands_task: asyncio.Task[None] | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.pool: AdmissionPool | None = None
        self.audit: AuditLog | None = None
        self.revocations = Revocations(None, None)
        self.crl_interval_s = 2.0
        self._crl_watch: asyncio.Task[None] | None = None
        self.parent_link: ParentLink | None = None
        self.federation: FederationService | None = None
        self.reports: ReportTracker | None = None
        self._reports_task: asyncio.Task[None] | None = None
        self._summaries_task: asyncio.Task[None] | None = None
        self.station_servers: list[StationServer] = []
        self.station_batcher: Batcher | None = None
        self.station_workers: StationWorkers | None = None  # [stations] processes > 0
        self.station_ports: dict[str, int] = {}
        self.tak: TakServer | None = None
        self.tak_ports: dict[str, int] = {}  # "tcp" and "udp": the bound ports of [tak] (useful with port 0)
        self._parent_task: asyncio.Task[None] | None = None

    @property
    def grpc_target(self) -> str:
        host, _ = parse_address(self.config.listen.grpc, "listen.grpc", self.config.source)
        return f"{host}:{self.grpc_port}"

    async def start(self) -> None:
        cfg = self.config
        src = cfg.source
        self.audit = AuditLog(cfg.data_dir / "audit.log").open()
        retention = Retention(
            max_age_s=cfg.log.retention_hours * 3600.0,
            max_bytes=parse_size(cfg.log.retention_bytes, "log.retention_bytes", src),
        )
        if cfg.log.backend == "jetstream":
            self.log = await JetStreamLog.open(
                settings_from_config(cfg),
                node_id=cfg.node.id,
                cache_bytes=parse_size(cfg.log.cache_bytes, "log.cache_bytes", src),
            )
        else:
            self.log = await SqliteLog.open(
                cfg.data_dir / "log.sqlite",
                node_id=cfg.node.id,
                fsync=cfg.log.fsync,
                retention=retention,
                cache_bytes=parse_size(cfg.log.cache_bytes, "log.cache_bytes", src),
            )
        self.log.on_commit = lambda _entries, batches: self.metrics.commits.inc(batches)
        await self.log.start_helpers()
        validator = Validator(
            default_table(),
            agencies=cfg.all_agencies,
            limits=Limits(
                max_envelope_bytes=cfg.limits.max_envelope_bytes, max_clock_skew_s=cfg.limits.max_clock_skew_s
            ),
        )
        workers = cfg.limits.admission_workers
        if workers < 0:
            # One per core, up to 4: admission takes most of a node's CPU, while the event loop and
            # the log writer together use about half a core (measured at full load on 2 cores,
            # where a second worker raised signed throughput by 15%). None on one core, where the
            # hop to another process would only cost.
            cores = os.cpu_count() or 1
            workers = min(4, cores) if cores > 1 else 0
        tls = cfg.tls
        server_tls: ServerTls | None = None
        trust_domain = ""
        ca_pem: bytes | None = None
        if not tls.insecure:
            server_tls = ServerTls(cfg.path(tls.ca), cfg.path(tls.cert), cfg.path(tls.key))
            trust_domain = self._own_identity(server_tls).trust_domain
            ca_pem = server_tls.ca_pem(src)
        certificates = CertificateStore(cfg.data_dir / "certificates")
        if workers:
            self.pool = AdmissionPool(
                workers, validator, cfg.limits.max_batch_envelopes, ca_pem, certificates.directory
            )
            await self.pool.start()
        self.revocations = Revocations(cfg.path(tls.crl) if tls.crl else None, server_tls.ca if server_tls else None)
        self.revocations.reload()
        self.service = GatewayService(
            self.log,
            validator,
            self.metrics,
            node_id=cfg.node.id,
            level=cfg.level,
            region=cfg.node.region,
            limits=ServiceLimits(max_batch_envelopes=cfg.limits.max_batch_envelopes),
            pool=self.pool,
            tls=server_tls is not None,
            trust_domain=trust_domain,
            revocations=self.revocations,
            audit=self.audit,
            policy=Policy.load(cfg.path(cfg.policy.file) if cfg.policy.file else None),
            verifier=Verifier(x509.load_pem_x509_certificate(ca_pem)) if ca_pem else None,
            certificates=certificates,
        )
        self.metrics.watch(self.log.stats, self.service.lags)
        max_message = parse_size(cfg.limits.max_message_bytes, "limits.max_message_bytes", src)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
                ("grpc.so_reuseport", 0),
            ]
        )
        federation_metrics = FederationMetrics(self.metrics.registry)
        routing = Routing.load(cfg.path(cfg.routing.file) if cfg.routing.file else None)
        routing.touching = (await asyncio.to_thread(default_boundaries)).touching
        federation = self.federation = FederationService(
            self.service, routing, federation_metrics, batch=cfg.parent.batch
        )
        self.server.add_generic_rpc_handlers((self.service.handler(), federation.handler()))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, FEDERATION_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        host, port = parse_address(cfg.listen.grpc, "listen.grpc", src)
        if server_tls is None:
            log.warning(
                "plaintext_listeners",
                message="tls.insecure: gRPC and HTTP listen WITHOUT TLS and WITHOUT client identities; "
                "for development on loopback only",
                grpc=cfg.listen.grpc,
                http=cfg.listen.http,
            )
            self.grpc_port = self.server.add_insecure_port(f"{host}:{port}")
        else:
            self.grpc_port = self.server.add_secure_port(f"{host}:{port}", server_tls.grpc_credentials(src))
        if self.grpc_port == 0:
            raise OSError(f"cannot listen on {cfg.listen.grpc} (listen.grpc)")
        await self.server.start()
        if cfg.adapters:
            from adapters.host import AdapterHost, self_target  # noqa: PLC0415 - only nodes that run adapters load them

            self.adapters = AdapterHost(cfg, self.metrics.registry, self_target(cfg, self.grpc_port), routing)
        http_host, http_port = parse_address(cfg.listen.http, "listen.http", src)
        self.http = HttpSide(self)
        http_context = server_tls.ssl_context() if server_tls is not None else None
        if http_context is not None and cfg.web.enabled:
            # browsers of people who sign in have no certificate; gateway.web still asks one of every
            # route but the picture's, and checks any certificate presented against the CA as before
            http_context.verify_mode = ssl.CERT_OPTIONAL
        self.http_port = await self.http.start(http_host, http_port, http_context)
        self._crl_watch = asyncio.create_task(self._watch_crl(), name="crl-watch")
        if self.adapters is not None:
            self.adapters.start()
        # The node itself, as the origin of what it publishes in its own log (edge readings, overdue alerts).
        own = x509.load_pem_x509_certificate(server_tls.cert.read_bytes()) if server_tls else None
        own_peer = self.service.peer_of(own)
        if cfg.mqtt.broker:
            await self._start_ingest(own_peer)
        if cfg.stations.listen:
            await self._start_stations(own_peer)
        if cfg.tak.listen or cfg.tak.udp:
            await self._start_tak(own_peer)
        parent_region = self.service.regions.parent(cfg.node.region) if cfg.parent.address else None
        self.reports = ReportTracker(
            self.service,
            own_peer,
            routing=routing,
            rules=rules_of(cfg.reports),
            path=cfg.data_dir / "reports.sqlite",
            metrics=ReportMetrics(self.metrics.registry),
            parent_level=level_of(parent_region) if parent_region else None,
            children_down=federation.children_down,
        )
        self._reports_task = asyncio.create_task(self.reports.run(), name="reports")
        if cfg.parent.address and cfg.summaries.period_minutes > 0:
            summaries = StationSummaries(
                self.service, own_peer, period_s=cfg.summaries.period_minutes * 60, registry=self.metrics.registry
            )
            self._summaries_task = asyncio.create_task(summaries.run(), name="summaries")
        if cfg.parent.address:
            self._start_parent_link(routing, federation_metrics)
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.audit.record(
            "node_started",
            node=cfg.node.id,
            region=cfg.node.region,
            grpc=f"{host}:{self.grpc_port}",
            tls=server_tls is not None,
        )
        log.info(
            "node_started",
            node=cfg.node.id,
            node_level=cfg.level,
            region=cfg.node.region,
            grpc=f"{host}:{self.grpc_port}",
            http=f"{http_host}:{self.http_port}",
            data_dir=str(cfg.data_dir),
        )

    async def _start_ingest(self, peer: Peer) -> None:
        """Connects to the terminals' broker and ingests their readings (see gateway.edge_ingest)."""
        from adapters.deadletter import DeadLetters  # noqa: PLC0415
        from edge_agent.mqtt import MqttClient, connect_forever  # noqa: PLC0415 - only nodes with terminals
        from gateway.edge_ingest import EdgeIngest, IngestMetrics, IngestSettings, replay_into_ledger  # noqa: PLC0415
        from gateway.edge_ledger import EdgeLedger  # noqa: PLC0415

        cfg, mqtt = self.config, self.config.mqtt
        assert self.service is not None
        self.edge_ledger = EdgeLedger(cfg.data_dir / "edge-ledger.sqlite")
        self.edge_letters = DeadLetters(cfg.data_dir / "dead-letters.sqlite")
        recovered = await replay_into_ledger(self.service, self.edge_ledger)
        if recovered:
            log.info("edge_ledger_recovered", envelopes=recovered)
        settings = IngestSettings(stale_after=mqtt.stale_after, resend_after_s=mqtt.resend_after_s)
        self.ingest = EdgeIngest(
            self.service,
            peer,
            self.edge_ledger,
            IngestMetrics(self.metrics.registry),
            self.edge_letters,
            node_id=cfg.node.id,
            settings=settings,
        )
        host, port = parse_address(mqtt.broker, "mqtt.broker", cfg.source)
        context = None
        if not mqtt.insecure:
            tls = cfg.tls
            context = ClientTls(
                cfg.path(mqtt.ca or tls.ca), cfg.path(mqtt.cert or tls.cert), cfg.path(mqtt.key or tls.key)
            ).ssl_context()
        client_id = mqtt.client_id or f"yiwang-{cfg.node.id}"
        ingest = self.ingest

        def connect() -> MqttClient:
            return MqttClient(host, port, client_id=client_id, tls=context, max_queued_messages=256)

        self._ingest_task = asyncio.create_task(connect_forever(connect, ingest.serve), name="edge-ingest")
        self._commands_task = asyncio.create_task(ingest.commands(), name="edge-commands")

    async def _start_stations(self, peer: Peer) -> None:
        """Listens for monitoring stations (HJ 212, SL 651) as their data centre."""
        cfg = self.config
        assert self.service is not None
        service = self.service
        registry = await asyncio.to_thread(
            load_registry, cfg.path(cfg.stations.registry), service.regions, cfg.all_agencies
        )
        metrics = StationMetrics(self.metrics.registry)
        if cfg.stations.processes > 0:
            await self._start_station_workers(registry, metrics, lambda raw: service.publish_batch(raw, peer))
            return
        self.station_batcher = Batcher(lambda raw: service.publish_batch(raw, peer))
        self.station_batcher.start()
        for name, address in cfg.stations.listen.items():
            host, port = parse_address(address, f"stations.listen.{name}", cfg.source)
            server = StationServer(
                protocol_named(name),
                registry.get(name, {}),
                self.station_batcher,
                metrics,
                idle_timeout_s=cfg.stations.idle_timeout_s,
                max_connections=cfg.stations.max_connections,
            )
            self.station_ports[name] = await server.start(host, port)
            self.station_servers.append(server)
            log.info("stations_listening", protocol=name, port=self.station_ports[name],
                     stations=len(registry.get(name, {})))  # fmt: skip

    async def _start_station_workers(
        self, registry: dict[str, dict[str, Station]], metrics: StationMetrics, publish: Publish
    ) -> None:
        """Station servers in worker processes; the node binds their sockets and appends (gateway.station_workers)."""
        from gateway.station_workers import StationWorkers, listening_socket  # noqa: PLC0415 - only with processes

        cfg = self.config
        listening = {}
        try:
            for name, address in cfg.stations.listen.items():
                host, port = parse_address(address, f"stations.listen.{name}", cfg.source)
                listening[name] = listening_socket(host, port)
        except OSError:
            for sock in listening.values():
                sock.close()
            raise
        self.station_workers = StationWorkers(
            cfg.stations.processes,
            listening,
            registry,
            publish,
            metrics,
            idle_timeout_s=cfg.stations.idle_timeout_s,
            max_connections=cfg.stations.max_connections,
        )
        self.station_workers.start()
        self.station_ports = self.station_workers.ports
        log.info("stations_listening", processes=cfg.stations.processes, **self.station_ports,
                 stations=sum(len(registry.get(name, {})) for name in listening))  # fmt: skip

    async def _start_tak(self, peer: Peer) -> None:
        """Serves TAK clients: CoT in over TCP and UDP, the jurisdiction's picture out (see gateway.tak)."""
        from adapters.cot import CotConfig  # noqa: PLC0415 - only nodes that serve TAK clients load the codec
        from adapters.plugin import AdapterContext  # noqa: PLC0415
        from gateway.places import default_places  # noqa: PLC0415
        from gateway.tak import TakMetrics, TakServer, TakSettings  # noqa: PLC0415

        cfg, tak = self.config, self.config.tak
        assert self.service is not None
        service = self.service
        cot = CotConfig(
            agency=tak.agency,
            region=tak.region or cfg.node.region,
            status=tak.status,
            max_event_bytes=tak.max_event_bytes,
        )
        settings = TakSettings(
            cot=cot,
            jurisdiction=cfg.node.region,
            idle_timeout_s=tak.idle_timeout_s,
            max_connections=tak.max_connections,
            max_queue_bytes=parse_size(tak.max_queue_bytes, "tak.max_queue_bytes", cfg.source),
            picture_hours=tak.picture_hours,
            max_picture=tak.max_picture,
        )
        places = await asyncio.to_thread(default_places)
        tls = None
        if tak.tls:
            tls = ServerTls(cfg.path(cfg.tls.ca), cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key)).ssl_context()
        self.tak = TakServer(
            settings,
            service.log,
            lambda raw: service.publish_batch(raw, peer),
            TakMetrics(self.metrics.registry),
            validator=service.validator,
            context=AdapterContext(regions=service.regions, places=places),
            tls=tls,
            authenticate=service.peer_of if tls is not None else None,
        )
        tcp = parse_address(tak.listen, "tak.listen", cfg.source) if tak.listen else None
        udp = parse_address(tak.udp, "tak.udp", cfg.source) if tak.udp else None
        self.tak_ports = await self.tak.start(tcp, udp)
        taken = f"what they send is taken as region {cot.region}, agency {cot.agency}"
        shown = f"they are sent the picture of region {cfg.node.region}"
        plain = [name.upper() for name in self.tak_ports if name == "udp" or tls is None]
        if plain:
            log.warning(
                "tak_listening",
                message=f"TAK clients over {' and '.join(plain)} send in plaintext, without identities: "
                f"{taken}; {shown}",
                **self.tak_ports,
            )
        else:
            log.info("tak_listening", message=f"TAK clients over mutual TLS: {taken}; {shown}", **self.tak_ports)

    def _start_parent_link(self, routing: Routing, metrics: FederationMetrics) -> None:
        """Opens and keeps the link to the parent node (see gateway.federation)."""
        cfg = self.config
        assert self.service is not None
        tls = None
        if not cfg.tls.insecure:
            tls = ClientTls(cfg.path(cfg.tls.ca), cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key), cfg.parent.server_name)
        assert self.reports is not None
        self.parent_link = ParentLink(
            cfg.parent, self.service, routing, tls=tls, metrics=metrics, source=cfg.source, chain=self.reports.earlier
        )
        self._parent_task = asyncio.create_task(self.parent_link.run(), name="parent-link")

    def _own_identity(self, server_tls: ServerTls) -> Identity:
        """The node's identity, from its own certificate (which must name one)."""
        try:
            cert = x509.load_pem_x509_certificate(server_tls.cert.read_bytes())
            return Identity.of(cert)
        except (OSError, ValueError, PkiError) as exc:
            raise ConfigError(
                f"the node's certificate names no identity: {exc}", key="tls.cert", source=self.config.source
            ) from exc

    async def _watch_crl(self) -> None:
        """Re-reads the CRL every few seconds; cuts the streams of newly revoked certificates."""
        while True:
            await asyncio.sleep(self.crl_interval_s)
            added = await asyncio.to_thread(self.revocations.reload)
            if added and self.service is not None:
                cut = self.service.cut_revoked(added)
                if self.tak is not None:
                    cut += self.tak.cut_revoked(added)
                if self.audit is not None:
                    self.audit.record("crl_reloaded", newly_revoked=sorted(f"{s:x}" for s in added), streams_cut=cut)
                log.info("crl_reloaded", newly_revoked=len(added), streams_cut=cut)

    async def stop(self) -> None:
        if self.tak is not None:
            await self.tak.stop()
            self.tak = None
        for server in self.station_servers:
            await server.stop()
        self.station_servers = []
        if self.station_workers is not None:
            await self.station_workers.stop()
            self.station_workers = None
        if self.station_batcher is not None:
            await self.station_batcher.stop()
            self.station_batcher = None
        if self._summaries_task is not None:
            self._summaries_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summaries_task
            self._summaries_task = None
        if self._reports_task is not None:
            self._reports_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reports_task
            self._reports_task = None
        if self.reports is not None:
            await asyncio.to_thread(self.reports.close)
            self.reports = None
        if self._parent_task is not None:
            self._parent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._parent_task
            self._parent_task = None
        if self._crl_watch is not None:
            self._crl_watch.cancel()
            self._crl_watch = None
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.adapters is not None:
            await self.adapters.stop()
            self.adapters = None
        for task in (self._ingest_task, self._commands_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ingest_task = self._commands_task = None
        if self.edge_ledger is not None:
            await asyncio.to_thread(self.edge_ledger.close)
            self.edge_ledger = None
        if self.edge_letters is not None:
            await asyncio.to_thread(self.edge_letters.close)
            self.edge_letters = None
        if self.service is not None:
            self.service.close_subscriptions()
        if self.server is not None:
            await self.server.stop(self.grace_s)
        if self.http is not None:
            await self.http.stop()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown)
            self.pool = None
        if self.log is not None:
            await self.log.close()
        if self.audit is not None:
            self.audit.record("node_stopped", node=self.config.node.id)
            await asyncio.to_thread(self.audit.close)
            self.audit = None
        log.info("node_stopped", node=self.config.node.id)

    async def __aenter__(self) -> Node:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def info(self) -> gw.NodeInfo:
        assert self.log is not None
        return gw.NodeInfo(
            node=self.config.node.id,
            level=self.config.level,
            region=self.config.node.region,
            oldest_offset=self.log.oldest_offset,
            next_offset=self.log.next_offset,
        )


async def run_until_signalled(config: NodeConfig) -> None:
    """Runs a node until SIGINT or SIGTERM, then stops it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Node(config):
        await stop.wait()
        log.info("node_stopping", reason="signal")
