"""The adapters a node runs: built from its ``[[adapters]]`` config, supervised, shown in /healthz.

Each adapter talks to the node over the node's own gRPC API with its own certificate, exactly as
an adapter on another machine would: the sharing policy, signatures and audit apply to it as to
anyone. Its HTTP push endpoint and the dead-letter store live on the node.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from cryptography import x509
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters.deadletter import DeadLetters
from adapters.plugin import AdapterContext, Direction, discover
from adapters.runner import AdapterMetrics, Health, InboundRunner, OutboundRunner, supervise
from adapters.sources import MAX_INPUT_BYTES, FileSink, FileSource, PollSource, PostSink, PushSource
from gateway.client import GatewayClient
from gateway.config import AdapterSection, NodeConfig
from gateway.errors import ConfigError
from gateway.pki import Identity, PkiError
from gateway.routing import Routing
from gateway.signing import Signer
from gateway.tls import ClientTls

log = structlog.get_logger("yiwang.adapters")

DEFAULT_EXPORT_KINDS = {"cap": ["ALERT"], "gbt35965": ["ALERT"]}
CONTENT_TYPES = {"cap": "application/cap+xml", "gbt35965": "application/xml", "envelope-json": "application/jsonl"}
SUFFIXES = {"envelope-json": ".jsonl"}  # of exported files; otherwise .FORMAT.xml


@dataclass
class Hosted:
    section: AdapterSection
    direction: Direction
    fmt: str
    health: Health
    run: Any  # () -> Awaitable[None]
    client: GatewayClient
    push: PushSource | None = None
    task: asyncio.Task[None] | None = None


class AdapterHost:
    def __init__(self, config: NodeConfig, registry: Any, grpc_target: str, routing: Routing | None = None) -> None:
        self.config = config
        self.routing = routing  # for exports of what it flags for the national level
        self.metrics = AdapterMetrics(registry)
        self.letters = DeadLetters(config.data_dir / "dead-letters.sqlite")
        self.hosted: dict[str, Hosted] = {}
        plugins = discover()
        context = AdapterContext()
        names: set[str] = set()
        for index, section in enumerate(config.adapters):
            key = f"adapters[{index}]"
            if section.name in names:
                raise ConfigError(f"a second adapter named {section.name!r}", key=f"{key}.name", source=config.source)
            names.add(section.name)
            self.hosted[section.name] = self._build(key, section, plugins, context, grpc_target)

    def _build(
        self, key: str, section: AdapterSection, plugins: dict[str, Any], context: AdapterContext, target: str
    ) -> Hosted:
        src = self.config.source
        plugin = plugins.get(section.adapter)
        if plugin is None:
            known = ", ".join(sorted(plugins))
            raise ConfigError(
                f"no adapter {section.adapter!r} is installed ({known})", key=f"{key}.adapter", source=src
            )
        try:
            direction = Direction(section.direction)
        except ValueError:
            raise ConfigError("must be in or out", key=f"{key}.direction", source=src) from None
        formats = plugin.manifest.inbound if direction is Direction.IN else plugin.manifest.outbound
        if not formats:
            raise ConfigError(
                f"adapter {section.adapter} has no {direction.value}bound formats", key=f"{key}.direction", source=src
            )
        fmt = section.format or formats[0]
        if fmt not in formats:
            raise ConfigError(f"{fmt!r} is not one of {', '.join(formats)}", key=f"{key}.format", source=src)
        adapter_config = plugin.load_config(section.config, src, prefix=f"{key}.config")
        codec = plugin.open(fmt, adapter_config, context)
        client = self._client(key, section, target)
        health = Health()
        name = section.name
        if direction is Direction.IN:
            push: PushSource | None = None
            source: Any
            if section.source.type == "file":
                if not section.source.path:
                    raise ConfigError("an inbox folder is required", key=f"{key}.source.path", source=src)
                source = FileSource(self.config.path(section.source.path), section.source.interval_s)
            elif section.source.type == "http-push":
                source = push = PushSource()
            elif section.source.type == "http-poll":
                if not section.source.url.startswith(("http://", "https://")):
                    raise ConfigError("an http(s) URL is required", key=f"{key}.source.url", source=src)
                source = PollSource(section.source.url, section.source.interval_s)
            else:
                raise ConfigError("must be file, http-push or http-poll", key=f"{key}.source.type", source=src)
            signer = self._signer(key, section)
            runner = InboundRunner(
                name,
                fmt,
                codec,
                source=source,
                client=client,
                letters=self.letters,
                metrics=self.metrics,
                signer=signer,
            )
            return Hosted(section, direction, fmt, health, runner.run, client, push)
        sink: Any
        if section.sink.type == "file":
            if not section.sink.path:
                raise ConfigError("an output folder is required", key=f"{key}.sink.path", source=src)
            sink = FileSink(self.config.path(section.sink.path), SUFFIXES.get(fmt, f".{fmt}.xml"))
        elif section.sink.type == "http-post":
            if not section.sink.url.startswith(("http://", "https://")):
                raise ConfigError("an http(s) URL is required", key=f"{key}.sink.url", source=src)
            sink = PostSink(section.sink.url, CONTENT_TYPES.get(fmt, "application/octet-stream"))
        else:
            raise ConfigError("must be file or http-post", key=f"{key}.sink.type", source=src)
        select = None
        if section.national:
            if self.routing is None:
                raise ConfigError("the national export needs the node's routing", key=f"{key}.national", source=src)
            national = self.routing.national
            select = lambda env: national(env).send  # noqa: E731
        kinds = section.kinds or (
            self.routing.national_kinds() if section.national and self.routing else DEFAULT_EXPORT_KINDS.get(fmt, [])
        )
        try:
            kind_values = [pb.Kind.Value(k) for k in kinds]
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"{key}.kinds", source=src) from None
        # A new durable subscription starts at the oldest retained envelope; later, where it stopped.
        request = gw.SubscribeRequest(
            durable_name=f"adapter-{name}",
            position=gw.OLDEST,
            filter=gw.Filter(kinds=kind_values),  # type: ignore[arg-type]
        )
        runner_out = OutboundRunner(
            name,
            fmt,
            codec,
            sink=sink,
            client=client,
            letters=self.letters,
            metrics=self.metrics,
            request=request,
            select=select,
        )
        return Hosted(section, direction, fmt, health, runner_out.run, client)

    def _client(self, key: str, section: AdapterSection, target: str) -> GatewayClient:
        tls = self.config.tls
        if tls.insecure:
            return GatewayClient(target, insecure=True)
        if not section.cert or not section.key:
            raise ConfigError(
                "an adapter needs its own certificate and key (issue one with `yiwang pki issue --role adapter`)",
                key=f"{key}.cert",
                source=self.config.source,
            )
        return GatewayClient(
            target,
            tls=ClientTls(
                self.config.path(tls.ca),
                self.config.path(section.cert),
                self.config.path(section.key),
                _server_name(self.config),
            ),
        )

    def _signer(self, key: str, section: AdapterSection) -> Signer | None:
        if not section.sign_key and not section.sign_cert:
            return None
        if not (section.sign_key and section.sign_cert):
            raise ConfigError("give both sign_key and sign_cert", key=f"{key}.sign_key", source=self.config.source)
        try:
            return Signer.load(
                self.config.path(section.sign_key).read_bytes(), self.config.path(section.sign_cert).read_bytes()
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the signing key: {exc}", key=f"{key}.sign_key", source=self.config.source
            ) from exc

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for name, hosted in self.hosted.items():
            hosted.task = asyncio.create_task(
                supervise(name, hosted.run, hosted.health, self.metrics), name=f"adapter-{name}"
            )

    async def stop(self) -> None:
        tasks = [h.task for h in self.hosted.values() if h.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for hosted in self.hosted.values():
            hosted.task = None
            await hosted.client.close()
        await asyncio.to_thread(self.letters.close)

    def health(self) -> dict[str, Any]:
        return {
            name: {"adapter": h.section.adapter, "format": h.fmt, "direction": h.direction.value, **h.health.report()}
            for name, h in self.hosted.items()
        }

    # -- HTTP push ------------------------------------------------------------------------------

    async def push(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hosted = self.hosted.get(name)
        if hosted is None or hosted.push is None:
            return web.json_response({"error": f"no adapter {name!r} takes pushes here"}, status=404)
        peer = _peer_identity(request)
        allow = hosted.section.source.allow
        if not self.config.tls.insecure and peer is None:
            return web.json_response({"error": "a client certificate of this network is required"}, status=401)
        if allow and (peer is None or peer not in allow):
            return web.json_response({"error": f"{peer} may not push to adapter {name}"}, status=403)
        if request.content_length is not None and request.content_length > MAX_INPUT_BYTES:
            return web.json_response({"error": f"more than {MAX_INPUT_BYTES} bytes"}, status=413)
        data = await request.content.read(MAX_INPUT_BYTES + 1)
        if len(data) > MAX_INPUT_BYTES:
            return web.json_response({"error": f"more than {MAX_INPUT_BYTES} bytes"}, status=413)
        try:
            outcome = await hosted.push.push(data, peer or request.remote or "push")
        except Exception as exc:  # noqa: BLE001 - answered to the pusher: it must retry, nothing was kept
            return web.json_response({"error": f"not taken, retry: {exc}"}, status=503)
        body = {
            "forwarded": outcome.forwarded,
            "duplicates": outcome.duplicates,
            "dead_letter": outcome.dead_letter,
            "reason": outcome.reason,
        }
        return web.json_response(body, status=200 if outcome.dead_letter is None else 422)


def _peer_identity(request: web.Request) -> str | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    try:
        return Identity.of(x509.load_der_x509_certificate(der)).uri
    except (PkiError, ValueError):
        return None


def _server_name(config: NodeConfig) -> str:
    """The name to check the node's certificate against when the adapter dials it on loopback."""
    host = config.listen.grpc.rpartition(":")[0].strip("[]")
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return ""  # a name: the node's certificate carries it
    if not wildcard:
        return ""
    cert = x509.load_pem_x509_certificate(Path(config.path(config.tls.cert)).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else ""


def self_target(config: NodeConfig, port: int) -> str:
    """The address an in-process adapter dials: the node's gRPC listener, on loopback if it listens on all."""
    host = config.listen.grpc.rpartition(":")[0].strip("[]")
    try:
        if ipaddress.ip_address(host).is_unspecified:
            host = "127.0.0.1" if ipaddress.ip_address(host).version == 4 else "::1"
    except ValueError:
        pass
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
