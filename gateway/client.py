"""A typed asyncio client of the gateway service, used by the CLI, the tests and the benchmarks."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import grpc
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.errors import ConfigError
from gateway.tls import ClientTls

_PREFIX = "/yiwang.v1.Gateway/"
MAX_MESSAGE_BYTES = 64 << 20


def channel_target(addresses: str | Sequence[str]) -> str:
    """The gRPC target for one address or for several replicas of a node.

    One address (``HOST:PORT``, or any gRPC target such as ``dns:///name:port``) is used as it is.
    Several, given as a list or as one comma-separated string, must be IP literals with their port
    (``10.0.0.1:7400`` or ``[fd00::1]:7400``): they become one ``ipv4:``/``ipv6:`` target whose
    addresses the channel spreads its calls over (round robin). A DNS name that resolves to several
    addresses is the other way to reach replicas.
    """
    items = [a.strip() for a in addresses.split(",")] if isinstance(addresses, str) else [a.strip() for a in addresses]
    items = [a for a in items if a]
    if not items:
        raise ConfigError("no address given")
    if len(items) == 1:
        return items[0]
    families = set()
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{item!r} is not HOST:PORT")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            raise ConfigError(
                f"{item!r}: several addresses must be IP addresses (a DNS name with several addresses "
                "is given alone, as dns:///NAME:PORT)"
            ) from None
    if len(families) > 1:
        raise ConfigError("several addresses must all be IPv4 or all IPv6")
    return f"ipv{families.pop()}:{','.join(items)}"


class GatewayClient:
    """``async with GatewayClient("127.0.0.1:7400") as client: ...``

    Several addresses (replicas of one node) are used in turn, call by call (gRPC's round robin); a
    stream stays on the replica it was opened on, and a caller whose stream breaks opens it again,
    on whichever replica answers, from its durable position.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        tls: ClientTls | None = None,
        insecure: bool = False,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """Connects with mutual TLS (``tls``) or, only when asked for by name, in plaintext (``insecure``).

        There is no default and no fallback: a client given neither is an error.
        """
        self.target = channel_target(target) if channel is None else ""
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.lb_policy_name", "round_robin"),  # one address: the same as pick-first
        ]
        several = self.target.startswith(("ipv4:", "ipv6:")) and "," in self.target
        if channel is not None:
            self.channel = channel
        elif tls is not None:
            if insecure:
                raise ConfigError("give either TLS material or insecure, not both")
            if several and not tls.server_name:
                raise ConfigError(
                    "several addresses need the name the node's certificate carries (server name), "
                    "to check each replica against"
                )
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.aio.secure_channel(self.target, tls.credentials(), options=options)
        elif insecure:
            self.channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            raise ConfigError("no TLS material (ca, cert, key) given and plaintext not asked for (insecure)")
        c = self.channel
        self._publish = c.unary_unary(
            _PREFIX + "Publish", gw.PublishRequest.SerializeToString, gw.PublishReply.FromString
        )
        self._publish_stream = c.stream_stream(
            _PREFIX + "PublishStream", gw.PublishRequest.SerializeToString, gw.PublishReply.FromString
        )
        self._subscribe = c.unary_stream(
            _PREFIX + "Subscribe", gw.SubscribeRequest.SerializeToString, gw.DeliveryBatch.FromString
        )
        self._ack = c.unary_unary(_PREFIX + "Ack", gw.AckRequest.SerializeToString, gw.AckReply.FromString)
        self._query = c.unary_unary(_PREFIX + "Query", gw.QueryRequest.SerializeToString, gw.QueryReply.FromString)
        self._get = c.unary_unary(_PREFIX + "Get", gw.GetRequest.SerializeToString, gw.GetReply.FromString)
        self._info = c.unary_unary(_PREFIX + "Info", gw.InfoRequest.SerializeToString, gw.NodeInfo.FromString)
        self._certificates = c.unary_unary(
            _PREFIX + "Certificates", gw.CertificatesRequest.SerializeToString, gw.CertificatesReply.FromString
        )

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits until the channel is connected (raises TimeoutError otherwise)."""
        await asyncio.wait_for(self.channel.channel_ready(), timeout)

    async def publish(
        self,
        envelopes: Sequence[pb.Envelope],
        *,
        certificates: Sequence[bytes] = (),
        batch_signatures: Sequence[pb.Signature] = (),
        timeout: float | None = 30.0,
    ) -> gw.PublishReply:
        """Publishes a batch; ``certificates`` are the signing certificates (DER) that batch signatures
        name by hash (``Signer.certificate_der``), ``batch_signatures`` the shared signatures that
        the envelopes refer to (what ``Signer.sign_batch(..., shared=True)`` returns)."""
        request = gw.PublishRequest(envelopes=envelopes, certificates=certificates, batch_signatures=batch_signatures)
        reply: gw.PublishReply = await self._publish(request, timeout=timeout)
        return reply

    def publish_stream(self, requests: AsyncIterator[gw.PublishRequest]) -> AsyncIterator[gw.PublishReply]:
        """Sends batches as they come; yields one reply per batch, in order, once it is durable."""
        call: Any = self._publish_stream(requests)
        return call.__aiter__()  # type: ignore[no-any-return]

    def subscribe(
        self, request: gw.SubscribeRequest
    ) -> grpc.aio.UnaryStreamCall[gw.SubscribeRequest, gw.DeliveryBatch]:
        """A stream of delivery batches; cancel the call (or leave its ``async for``) to stop.

        With ``shared_signatures`` set in the request, batch-signed envelopes come with a reference
        to their batch's signature, which each DeliveryBatch carries once: verify them with
        ``Verifier.verify_all(envelopes, shared=SharedSignatures(batch.batch_signatures))``, or give
        each its full signature with ``SharedSignatures.expand``."""
        call: grpc.aio.UnaryStreamCall[gw.SubscribeRequest, gw.DeliveryBatch] = self._subscribe(request)  # type: ignore[assignment]
        return call

    async def ack(self, durable_name: str, next_offset: int) -> int:
        reply: gw.AckReply = await self._ack(gw.AckRequest(durable_name=durable_name, next_offset=next_offset))
        return reply.next_offset

    async def query(self, request: gw.QueryRequest) -> gw.QueryReply:
        reply: gw.QueryReply = await self._query(request)
        return reply

    async def query_all(self, request: gw.QueryRequest) -> AsyncIterator[gw.Delivery]:
        """Every delivery of a query, following page tokens."""
        page = gw.QueryRequest()
        page.CopyFrom(request)
        while True:
            reply = await self.query(page)
            for delivery in reply.deliveries:
                yield delivery
            if not reply.next_page_token:
                return
            page.page_token = reply.next_page_token

    async def get(self, ids: Sequence[str]) -> gw.GetReply:
        reply: gw.GetReply = await self._get(gw.GetRequest(ids=ids))
        return reply

    async def info(self) -> gw.NodeInfo:
        reply: gw.NodeInfo = await self._info(gw.InfoRequest())
        return reply

    async def certificates(self, sha256: Sequence[bytes]) -> list[bytes]:
        """The signing certificates (DER) the node knows among those asked for by SHA-256."""
        reply: gw.CertificatesReply = await self._certificates(gw.CertificatesRequest(sha256=sha256))
        return list(reply.certificates)
