"""Mutual TLS on the node's listeners: identities from certificates, revocation mid-stream, no plaintext."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from yiwang.v1 import gateway_pb2 as gw

from gateway.audit import verify
from gateway.client import GatewayClient
from gateway.errors import ConfigError
from gateway.node import Node
from gateway.pki import Authority, Role
from gateway.tls import ClientTls
from tests import factories
from tests.conftest import lapsed_certificate, running_tls_node

DOMAIN = "yjt.henan.gov.cn"


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    ca = Authority.init(tmp_path / "pki", trust_domain=DOMAIN)
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.PLATFORM, "410000", "duty-desk", "emergency"))
    ca.issue(ca.identity(Role.DEPARTMENT, "410105", "jinshui-water", "water"))
    return ca


def client_tls(ca: Authority, name: str) -> ClientTls:
    issued = ca.dir / "issued"
    return ClientTls(ca.dir / "ca.pem", issued / f"{name}.chain.pem", issued / f"{name}.key")


@pytest.fixture
async def node(pki: Authority, tmp_path: Path) -> AsyncIterator[Node]:
    async with running_tls_node(pki, tmp_path / "data") as running:
        yield running


async def test_a_certified_client_publishes_and_reads(node: Node, pki: Authority) -> None:
    async with GatewayClient(node.grpc_target, tls=client_tls(pki, "jinshui-water")) as client:
        reply = await client.publish([factories.observation(region="410105", agency="water")])
        assert reply.results[0].outcome == gw.PublishResult.ACCEPTED
        assert (await client.info()).next_offset == 2


@pytest.mark.parametrize("how", ["plaintext", "no client certificate", "another CA", "expired"])
async def test_clients_without_a_valid_certificate_are_refused(
    node: Node, pki: Authority, tmp_path: Path, how: str
) -> None:
    if how == "plaintext":
        client = GatewayClient(node.grpc_target, insecure=True)
    elif how == "no client certificate":
        creds = grpc.ssl_channel_credentials(root_certificates=(pki.dir / "ca.pem").read_bytes())
        client = GatewayClient(node.grpc_target, channel=grpc.aio.secure_channel(node.grpc_target, creds))
    elif how == "another CA":
        other = Authority.init(tmp_path / "other", trust_domain=DOMAIN)
        other.issue(other.identity(Role.PLATFORM, "410000", "impostor", "emergency"))
        impostor = client_tls(other, "impostor")
        client = GatewayClient(node.grpc_target, tls=ClientTls(pki.dir / "ca.pem", impostor.cert, impostor.key))
    else:
        client = GatewayClient(node.grpc_target, tls=expired_client(pki, tmp_path))
    async with client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.info()
    assert refused.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED}


def expired_client(ca: Authority, tmp_path: Path) -> ClientTls:
    """A certificate of our CA whose validity ended yesterday (the PKI itself never issues one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    identity = ca.identity(Role.PLATFORM, "410000", "lapsed", "emergency")
    cert = lapsed_certificate(ca, identity, key.public_key())
    (tmp_path / "expired.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "expired.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ClientTls(ca.dir / "ca.pem", tmp_path / "expired.pem", tmp_path / "expired.key")


async def read_until_cut(call: grpc.aio.UnaryStreamCall[gw.SubscribeRequest, gw.DeliveryBatch]) -> None:
    """Reads a stream until the node ends it (which raises); a clean end fails the test."""
    while True:
        batch = await call.read()
        if batch is grpc.aio.EOF:
            raise AssertionError("the stream ended without an error")


async def test_revocation_cuts_open_streams_and_refuses_new_calls(node: Node, pki: Authority) -> None:
    async with GatewayClient(node.grpc_target, tls=client_tls(pki, "jinshui-water")) as client:
        call = client.subscribe(gw.SubscribeRequest(position=gw.OLDEST))
        try:
            await client.publish([factories.observation(region="410105", agency="water")])
            first = await asyncio.wait_for(call.read(), 30)
            assert isinstance(first, gw.DeliveryBatch)
            pki.revoke("jinshui-water", "key_compromise")
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await asyncio.wait_for(read_until_cut(call), 30)
            assert cut.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "revoked" in (cut.value.details() or "")
        finally:
            call.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.info()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with GatewayClient(node.grpc_target, tls=client_tls(pki, "duty-desk")) as other:
        assert (await other.info()).node == "henan-province"  # everyone else is unaffected
    assert node.audit is not None
    node.audit.close()
    trail = node.config.data_dir / "audit.log"
    events = [json.loads(line)["event"] for line in trail.read_text(encoding="utf-8").splitlines()]
    assert "crl_reloaded" in events
    assert "authentication_failed" in events
    assert verify(trail).ok


async def test_the_http_side_requires_a_client_certificate(node: Node, pki: Authority) -> None:
    url = f"https://127.0.0.1:{node.http_port}/healthz"
    good = client_tls(pki, "duty-desk").ssl_context()
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=good) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        anonymous = ssl.create_default_context(cafile=str(pki.dir / "ca.pem"))
        with pytest.raises(aiohttp.ClientError):
            async with session.get(url, ssl=anonymous) as response:
                await response.read()


def test_a_client_must_choose_tls_or_plaintext() -> None:
    with pytest.raises(ConfigError, match="no TLS material"):
        GatewayClient("127.0.0.1:1")
