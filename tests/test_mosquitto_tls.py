"""Our certificates in Mosquitto's own TLS listener, with the broker configuration in deploy/mosquitto."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.pki import Authority, Role
from tests.broker import PUB, SUB, Broker, broker_pki

GATEWAY = "410000/henan-province/gateway/henan-province"


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    return broker_pki(tmp_path / "pki")


@pytest.fixture
def broker(pki: Authority, tmp_path: Path) -> Iterator[Broker]:
    running = Broker(pki, tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def tls_args(ca: Authority, name: str, cafile: Path | None = None) -> list[str]:
    issued = ca.dir / "issued"
    return [
        "--cafile", str(cafile or ca.dir / "ca.pem"),
        "--cert", str(issued / f"{name}.chain.pem"),
        "--key", str(issued / f"{name}.key"),
    ]  # fmt: skip


def publish(port: int, tls: list[str], topic: str, message: str) -> subprocess.CompletedProcess[str]:
    """Publishes retained, so a subscriber that starts a little later still receives it."""
    return subprocess.run(
        [PUB, "-h", "127.0.0.1", "-p", str(port), *tls, "-t", topic, "-m", message, "-q", "1", "-r"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def gateway_hears(port: int, pki: Authority, topic: str, send: list[str]) -> str:
    """Starts the gateway's subscriber, publishes (retained), returns what the subscriber got within 5 s."""
    sub = subprocess.Popen(
        [SUB, "-h", "127.0.0.1", "-p", str(port), *tls_args(pki, "henan-province"), "-t", topic, "-C", "1", "-W", "5",
         "-q", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        done = publish(port, tls_args(pki, send[0]), send[1], send[2])
        assert done.returncode == 0, done.stderr
        out, _ = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    return out.strip()


def test_a_terminal_publishes_on_its_own_topic(broker: Broker, pki: Authority) -> None:
    own = "yiwang/edge/410105/water/edge/gauge-17/up"
    heard = gateway_hears(broker.port, pki, "yiwang/edge/#", ["gauge-17", own, "water level 91.2"])
    assert heard == "water level 91.2"


def test_a_terminal_cannot_publish_as_another(broker: Broker, pki: Authority) -> None:
    other = "yiwang/edge/410105/water/edge/gauge-18/up"
    assert gateway_hears(broker.port, pki, "yiwang/edge/#", ["gauge-17", other, "forged"]) == ""


def test_a_revoked_terminal_is_refused(broker: Broker, pki: Authority) -> None:
    pki.revoke("gauge-18")
    broker.stop()  # Mosquitto reads its CRL when it starts; restart it so the new CRL is certainly in force
    broker.start()
    refused = publish(broker.port, tls_args(pki, "gauge-18"), "yiwang/edge/410105/water/edge/gauge-18/up", "x")
    assert refused.returncode != 0
    allowed = publish(broker.port, tls_args(pki, "gauge-17"), "yiwang/edge/410105/water/edge/gauge-17/up", "x")
    assert allowed.returncode == 0, allowed.stderr


def test_a_certificate_of_another_ca_is_refused(broker: Broker, pki: Authority, tmp_path: Path) -> None:
    other = Authority.init(tmp_path / "other", trust_domain="yjt.henan.gov.cn")
    other.issue(other.identity(Role.EDGE, "410105", "gauge-17", "water"))
    refused = publish(broker.port, tls_args(other, "gauge-17", cafile=pki.dir / "ca.pem"), "yiwang/edge/x", "x")
    assert refused.returncode != 0


def test_no_client_certificate_is_refused(broker: Broker, pki: Authority) -> None:
    refused = publish(broker.port, ["--cafile", str(pki.dir / "ca.pem")], "yiwang/edge/x", "x")
    assert refused.returncode != 0
