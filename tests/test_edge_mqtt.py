"""edge_agent.mqtt against a real Mosquitto with deploy/mosquitto's configuration: mutual TLS with the
terminals' certificates, and the ACL that confines each terminal to its own topics."""

from __future__ import annotations

import asyncio
import getpass
import signal
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge_agent.mqtt import (
    ConnectionLost,
    Message,
    MqttClient,
    MqttConnectError,
    PublishRefusedError,
    Will,
    connect_forever,
)
from gateway.pki import Authority, Role
from gateway.tls import ClientTls
from tests.broker import MOSQUITTO, Broker, broker_pki
from tests.conftest import eventually, free_port, wait_listening

OWN = "yiwang/edge/410105/water/edge/gauge-17"
OTHER = "yiwang/edge/410105/water/edge/gauge-18"


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
        if running.proc is not None:
            running.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
        running.stop()


def tls_of(ca: Authority, name: str, trusted: Authority | None = None) -> ssl.SSLContext:
    issued = ca.dir / "issued"
    return ClientTls((trusted or ca).dir / "ca.pem", issued / f"{name}.chain.pem", issued / f"{name}.key").ssl_context()


def client_as(pki: Authority, broker: Broker, name: str, **settings: object) -> MqttClient:
    settings.setdefault("client_id", name)
    return MqttClient("127.0.0.1", broker.port, tls=tls_of(pki, name), **settings)  # type: ignore[arg-type]


@pytest.fixture
async def gateway(pki: Authority, broker: Broker) -> AsyncIterator[MqttClient]:
    """The province gateway's connection, subscribed to every terminal's uplink (not to the downlink it sends)."""
    async with client_as(pki, broker, "henan-province") as client:
        await client.subscribe([(f"yiwang/edge/+/+/+/+/{leaf}", 1) for leaf in ("live", "hb", "death")])
        yield client


async def next_message(client: MqttClient) -> Message:
    async with asyncio.timeout(10):
        return await anext(client.messages())


async def test_a_terminal_publishes_and_receives_on_its_own_topics(
    pki: Authority, broker: Broker, gateway: MqttClient
) -> None:
    before = set(threading.enumerate())  # (gRPC's poller, if an earlier test used gRPC in this process)
    async with client_as(pki, broker, "gauge-17") as terminal:
        assert set(threading.enumerate()) == before  # paho runs no thread of its own
        await terminal.subscribe([(f"{OWN}/cmd", 1)])
        await terminal.publish(f"{OWN}/live", b"water level 91.2", qos=1)
        heard = await next_message(gateway)
        assert (heard.topic, heard.payload, heard.qos) == (f"{OWN}/live", b"water level 91.2", 1)

        await gateway.publish(f"{OWN}/cmd", b"sample now", qos=1)
        command = await next_message(terminal)
        assert (command.topic, command.payload) == (f"{OWN}/cmd", b"sample now")

        await terminal.publish(f"{OWN}/hb", b"1", qos=0)
        assert (await next_message(gateway)).payload == b"1"
    assert set(threading.enumerate()) == before


async def test_a_terminal_cannot_publish_or_subscribe_as_another(
    pki: Authority, broker: Broker, gateway: MqttClient
) -> None:
    async with client_as(pki, broker, "gauge-17") as terminal:
        with pytest.raises(PublishRefusedError, match="Not authorized"):
            await terminal.publish(f"{OTHER}/live", b"forged", qos=1)
        await terminal.publish(f"{OTHER}/live", b"forged at QoS 0", qos=0)
        await terminal.publish(f"{OWN}/live", b"marker", qos=1)
        # The gateway hears the terminal's next (own) message first: the forged ones never arrived.
        assert (await next_message(gateway)).payload == b"marker"

        # Mosquitto 2.0 grants a subscription outside the ACL but delivers nothing on it.
        await terminal.subscribe([(f"{OTHER}/cmd", 1), (f"{OWN}/cmd", 1)])
        await gateway.publish(f"{OTHER}/cmd", b"for gauge-18", qos=1)
        await gateway.publish(f"{OWN}/cmd", b"for gauge-17", qos=1)
        assert (await next_message(terminal)).payload == b"for gauge-17"


async def test_a_certificate_of_another_ca_is_refused(pki: Authority, broker: Broker, tmp_path: Path) -> None:
    other = Authority.init(tmp_path / "other", trust_domain="yjt.henan.gov.cn")
    other.issue(other.identity(Role.EDGE, "410105", "gauge-17", "water"))
    client = MqttClient("127.0.0.1", broker.port, client_id="gauge-17", tls=tls_of(other, "gauge-17", trusted=pki))
    with pytest.raises(MqttConnectError, match=rf"127\.0\.0\.1:{broker.port}: .*TLS failed: TLSV1_ALERT_UNKNOWN_CA"):
        async with client:
            pass


async def test_a_revoked_terminal_is_refused(pki: Authority, broker: Broker) -> None:
    pki.revoke("gauge-18")
    broker.stop()  # Mosquitto reads its CRL when it starts
    broker.start()
    with pytest.raises(
        MqttConnectError, match=rf"127\.0\.0\.1:{broker.port}: .*TLS failed: SSLV3_ALERT_CERTIFICATE_REVOKED"
    ):
        async with client_as(pki, broker, "gauge-18"):
            pass
    async with client_as(pki, broker, "gauge-17") as allowed:
        await allowed.publish(f"{OWN}/live", b"x")


@pytest.fixture
def closed_broker(tmp_path: Path) -> Iterator[int]:
    """A plain-TCP Mosquitto that lets nobody in (no anonymous clients, no passwords): CONNACK says no."""
    port = free_port()
    conf = tmp_path / "closed.conf"
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous false\n", encoding="utf-8")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, "mosquitto")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_refused_connack_names_the_broker_and_the_reason(closed_broker: int) -> None:
    with pytest.raises(MqttConnectError, match=rf"127\.0\.0\.1:{closed_broker}: the broker refused: Not authorized"):
        async with MqttClient("127.0.0.1", closed_broker, client_id="gauge-17", tls=None):
            pass


async def test_nothing_listening_is_a_connect_error(pki: Authority, broker: Broker) -> None:
    broker.stop()
    with pytest.raises(MqttConnectError, match=rf"127\.0\.0\.1:{broker.port}: .*refused"):
        async with client_as(pki, broker, "gauge-17"):
            pass


async def test_a_qos1_publish_returns_only_once_the_broker_has_acknowledged(pki: Authority, broker: Broker) -> None:
    assert broker.proc is not None
    async with client_as(pki, broker, "gauge-17") as terminal:
        broker.proc.send_signal(signal.SIGSTOP)
        publishing = asyncio.create_task(terminal.publish(f"{OWN}/live", b"x", qos=1))
        await eventually(lambda: terminal.in_flight == 1)
        assert not publishing.done()
        broker.proc.send_signal(signal.SIGCONT)
        async with asyncio.timeout(10):
            await publishing
        assert terminal.in_flight == 0


async def test_a_lost_broker_fails_pending_publishes_and_connect_forever_reconnects(
    pki: Authority, broker: Broker
) -> None:
    assert broker.proc is not None
    async with client_as(pki, broker, "gauge-17") as terminal:
        await terminal.subscribe([(f"{OWN}/cmd", 1)])
        broker.proc.send_signal(signal.SIGSTOP)  # nothing is acknowledged from here on
        pending = [asyncio.create_task(terminal.publish(f"{OWN}/live", b"%d" % i, qos=1)) for i in range(5)]
        await eventually(lambda: terminal.in_flight == 5)
        broker.kill()
        for publishing in pending:
            with pytest.raises(ConnectionLost):
                await publishing
        with pytest.raises(ConnectionLost):
            await next_message(terminal)
        with pytest.raises(ConnectionLost):
            await terminal.publish(f"{OWN}/live", b"late", qos=1)

    attempts: list[MqttClient] = []
    served: list[MqttClient] = []

    def factory() -> MqttClient:
        attempts.append(client_as(pki, broker, "gauge-17"))
        return attempts[-1]

    async def session(client: MqttClient) -> None:
        await client.publish(f"{OWN}/birth", b"back", qos=1)
        served.append(client)

    with capture_logs() as logs:
        reconnecting = asyncio.create_task(connect_forever(factory, session, first_delay=0.02, max_delay=0.1))
        await eventually(lambda: len(attempts) >= 3)  # the broker is still down: it keeps trying
        broker.start()  # the same port
        async with asyncio.timeout(10):
            await reconnecting
    assert served == [attempts[-1]]
    assert any(entry["event"] == "mqtt_reconnecting" for entry in logs)


async def test_the_will_is_published_when_the_connection_is_cut_not_on_a_clean_close(
    pki: Authority, broker: Broker, gateway: MqttClient
) -> None:
    will = Will(f"{OWN}/death", b"gone", qos=1)
    async with client_as(pki, broker, "gauge-17", will=will):
        pass  # a clean close: DISCONNECT, so the broker discards the will
    async with client_as(pki, broker, "gauge-17", client_id="gauge-17-marker") as marker:
        await marker.publish(f"{OWN}/live", b"after the clean close", qos=1)
    assert (await next_message(gateway)).payload == b"after the clean close"

    async with client_as(pki, broker, "gauge-17", will=will) as terminal:
        await terminal.subscribe([(f"{OWN}/cmd", 1)])
        terminal.abort()  # as a cut link: the socket closes without DISCONNECT
        with pytest.raises(ConnectionLost, match="aborted"):
            await next_message(terminal)
    heard = await next_message(gateway)
    assert (heard.topic, heard.payload) == (f"{OWN}/death", b"gone")


async def test_a_slow_consumer_pauses_reading_and_loses_nothing(
    pki: Authority, broker: Broker, gateway: MqttClient
) -> None:
    async with client_as(pki, broker, "gauge-17", max_queued_messages=4) as terminal:
        await terminal.subscribe([(f"{OWN}/cmd", 1)])
        for i in range(30):
            await gateway.publish(f"{OWN}/cmd", b"%d" % i, qos=1)
        await eventually(lambda: not terminal.reading)
        assert terminal.queued == 4
        received = [await next_message(terminal) for _ in range(30)]
        assert [m.payload for m in received] == [b"%d" % i for i in range(30)]
        assert terminal.reading


async def failing_consumer(client: MqttClient) -> None:
    async for _ in client.messages():
        raise ValueError("the consumer failed")


async def test_a_failing_callback_or_consumer_does_not_stop_the_connection(
    pki: Authority, broker: Broker, gateway: MqttClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver = MqttClient._on_message
    failures = iter([True])

    def flaky(self: MqttClient, client: object, userdata: object, message: object) -> None:
        if next(failures, False):
            raise RuntimeError("injected fault")
        deliver(self, client, userdata, message)  # type: ignore[arg-type]

    monkeypatch.setattr(MqttClient, "_on_message", flaky)
    async with client_as(pki, broker, "gauge-17") as terminal:
        await terminal.subscribe([(f"{OWN}/cmd", 0)])
        with capture_logs() as logs:
            await gateway.publish(f"{OWN}/cmd", b"lost to the fault", qos=0)
            await eventually(lambda: terminal.callback_failures == 1)
        assert [e["callback"] for e in logs if e["event"] == "mqtt_callback_failed"] == ["on_message"]

        await gateway.publish(f"{OWN}/cmd", b"one", qos=0)
        with pytest.raises(ValueError, match="consumer"):
            await failing_consumer(terminal)
        await gateway.publish(f"{OWN}/cmd", b"two", qos=0)
        assert (await next_message(terminal)).payload == b"two"
        await terminal.publish(f"{OWN}/live", b"still connected", qos=1)
        assert terminal.connected


async def test_cancelling_a_failing_connection_is_not_swallowed() -> None:
    """The owner's cancellation wins even when it lands while the connection is failing."""
    port = free_port()  # nothing listens there: every attempt fails at once

    async def session(_client: MqttClient) -> None:
        raise AssertionError("never connected")

    task = asyncio.create_task(
        connect_forever(lambda: MqttClient("127.0.0.1", port, client_id="x", tls=None), session, first_delay=0.01)
    )
    await asyncio.sleep(0.1)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done
    assert task.cancelled()
