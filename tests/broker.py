"""A real Mosquitto for tests: started with deploy/mosquitto's configuration (mutual TLS, the ACL),
pointed at the test's PKI, on a free loopback port; it can be stopped, killed and started again on
the same port."""

from __future__ import annotations

import getpass
import shutil
import signal
import subprocess
from pathlib import Path

from gateway.pki import Authority, Role
from tests.conftest import free_port, wait_listening

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PUB = shutil.which("mosquitto_pub") or "mosquitto_pub"
SUB = shutil.which("mosquitto_sub") or "mosquitto_sub"


class Broker:
    """Mosquitto started with deploy/mosquitto/yiwang.conf, pointed at the test's PKI and a free port."""

    def __init__(self, pki: Authority, folder: Path) -> None:
        self.port = free_port()
        acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text(encoding="utf-8")
        (folder / "acl").write_text(acl, encoding="utf-8")
        conf = (ROOT / "deploy" / "mosquitto" / "yiwang.conf").read_text(encoding="utf-8")
        conf = conf.replace("/etc/yiwang/pki", str(pki.dir)).replace("/etc/yiwang/mosquitto/acl", str(folder / "acl"))
        conf = conf.replace("listener 8883", f"listener {self.port} 127.0.0.1")
        # Run as the test's own user: the default drops root to user mosquitto, who cannot read the test's files.
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"user {getpass.getuser()}\n{conf}", encoding="utf-8")
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(self.port, self.proc, "mosquitto")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.log.read_text(errors='replace')}") from None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)  # the port is free again once it has exited
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean disconnects, nothing saved."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


def broker_pki(folder: Path) -> Authority:
    """A CA with the broker's certificate, the province gateway's, and two water-level terminals'."""
    ca = Authority.init(folder, trust_domain="yjt.henan.gov.cn")
    ca.issue(ca.identity(Role.GATEWAY, "410000", "mqtt-broker", "mqtt-broker"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"))
    for name in ("gauge-17", "gauge-18"):
        ca.issue(ca.identity(Role.EDGE, "410105", name, "water"))
    return ca
