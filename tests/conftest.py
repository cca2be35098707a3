"""Shared fixtures: real nodes on port 0 with their own data directories, and real gRPC clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.client import GatewayClient
from gateway.config import NodeConfig, from_dict
from gateway.node import Node
from gateway.pki import Authority, Identity, Role
from gateway.signing import Signer
from gateway.tls import ClientTls

NodeFactory = Callable[..., Awaitable[Node]]
TRUST_DOMAIN = "yjt.henan.gov.cn"


def tls_node_config(pki: Authority, data: Path, **sections: Any) -> NodeConfig:
    """A loopback province node with mutual TLS, its certificate issued as henan-province by ``pki``."""
    issued = pki.dir / "issued"
    table: dict[str, Any] = {
        "node": {"id": "henan-province", "region": "410000"},
        "listen": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "log": {"data_dir": str(data), "fsync": False},
        "limits": {"admission_workers": 0},
        "tls": {
            "ca": str(pki.dir / "ca.pem"),
            "cert": str(issued / "henan-province.chain.pem"),
            "key": str(issued / "henan-province.key"),
            "crl": str(pki.dir / "crl.pem"),
        },
    }
    for name, values in sections.items():
        if isinstance(values, list):  # e.g. adapters=[{...}], an array of tables
            table[name] = values
        else:
            table.setdefault(name, {}).update(values)
    return from_dict(table, source="test")


def lapsed_certificate(
    ca: Authority, identity: Identity, public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
) -> x509.Certificate:
    """A certificate of ``ca`` for ``identity`` whose validity ended yesterday (``yiwang pki`` never issues one)."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, identity.path)]))
        .issuer_name(ca.ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=False)
        .sign(ca.ca_key, hashes.SHA256())
    )


@contextlib.asynccontextmanager
async def running_tls_node(pki: Authority, data: Path, **sections: Any) -> AsyncIterator[Node]:
    """A started mutual-TLS node (see ``tls_node_config``) that re-reads its CRL every 0.1 s."""
    node = Node(tls_node_config(pki, data, **sections), grace_s=0.2)
    node.crl_interval_s = 0.1
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def issued_signer(pki: Authority, name: str) -> Signer:
    """The signer of the signing key and certificate ``pki`` issued to ``name``."""
    issued = pki.dir / "issued"
    return Signer.load((issued / f"{name}.sign.key").read_bytes(), (issued / f"{name}.sign.pem").read_bytes())


def client_as(pki: Authority, node: Node, name: str) -> GatewayClient:
    """A client over mutual TLS with the certificate ``pki`` issued to ``name``."""
    issued = pki.dir / "issued"
    tls = ClientTls(pki.dir / "ca.pem", issued / f"{name}.chain.pem", issued / f"{name}.key")
    return GatewayClient(node.grpc_target, tls=tls)


def node_config(data: Path, *, region: str = "410000", node_id: str = "test-node", **sections: Any) -> NodeConfig:
    """A loopback node on free ports; ``sections`` override TOML tables, e.g. log={"fsync": False}."""
    table: dict[str, Any] = {
        "node": {"id": node_id, "region": region},
        "listen": {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0"},
        "log": {"data_dir": str(data), "fsync": False},
        "limits": {"admission_workers": 0},
        "tls": {"insecure": True},
    }
    for name, values in sections.items():
        if isinstance(values, list):  # e.g. adapters=[{...}], an array of tables
            table[name] = values
        else:
            table.setdefault(name, {}).update(values)
    return from_dict(table, source="test")


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """Starts nodes (stopped at the end of the test); call again with the same data dir to restart."""
    nodes: list[Node] = []

    async def start(data: Path | None = None, **kwargs: Any) -> Node:
        node = Node(node_config(data or tmp_path / "node", **kwargs), grace_s=0.2)
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in reversed(nodes):
        if node.log is not None and not node.log.closed:
            await node.stop()


@pytest.fixture
async def node(start_node: NodeFactory) -> Node:
    return await start_node()


@pytest.fixture
async def client(node: Node) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(node.grpc_target, insecure=True) as c:
        yield c


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Fails a test that leaves one of our threads running."""
    yield
    deadline = 50
    while deadline:
        ours = [t.name for t in threading.enumerate() if t.name.startswith("yiwang-")]
        if not ours:
            return
        deadline -= 1
        threading.Event().wait(0.05)
    pytest.fail(f"threads left running: {ours}")


def henan_network(folder: Path, *more: tuple[Role, str, str, str]) -> Authority:
    """The CA of a test network: the province's gateway (certified for 127.0.0.1), the water
    departments of Jinshui and Zhongyuan, Zhengzhou's meteorological and emergency bureaus, and
    ``more`` identities as (role, region, name, agency)."""
    ca = Authority.init(folder, trust_domain="yjt.henan.gov.cn")
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    for role, region, name, agency in [
        (Role.DEPARTMENT, "410105", "jinshui-water", "water"),
        (Role.DEPARTMENT, "410102", "zhongyuan-water", "water"),
        (Role.DEPARTMENT, "410100", "zz-qxj", "meteorology"),
        (Role.DEPARTMENT, "410100", "zz-yjj", "emergency"),
        *more,
    ]:
        ca.issue(ca.identity(role, region, name, agency))
    return ca


def free_port() -> int:
    """A loopback port that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 20.0) -> None:
    """Waits until a child process listens on a loopback port; fails, saying why, if it exits first.

    Synchronous on purpose: it runs in fixtures before any event loop, polling another process.
    """
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} did not start (listening on 127.0.0.1:{port})")
        time.sleep(0.02)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Waits until ``predicate()`` holds (a condition, not a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def hang_up(writer: asyncio.StreamWriter) -> None:
    """Closes a test's TCP connection and waits until it is closed (the peer may have closed it first)."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def send_in_pieces(writer: asyncio.StreamWriter, data: bytes, rng: random.Random, most: int) -> None:
    """Writes ``data`` in pieces of 1 to ``most`` bytes, letting the other end read between them."""
    at = 0
    while at < len(data):
        step = rng.randint(1, most)
        writer.write(data[at : at + step])
        await writer.drain()
        at += step
        await asyncio.sleep(0)
