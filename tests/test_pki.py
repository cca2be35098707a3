"""The PKI: a province root CA, identity certificates, revocation, and what standard tools make of them."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.audit import verify
from gateway.pki import Authority, Identity, PkiError, Role

ROOT = Path(__file__).resolve().parent.parent
OPENSSL = shutil.which("openssl")
DOMAIN = "yjt.henan.gov.cn"


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "pki", trust_domain=DOMAIN)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.parametrize(
    ("role", "region", "principal", "name"),
    [
        (Role.GATEWAY, "410100", "zhengzhou-city", "zhengzhou-city"),
        (Role.PLATFORM, "410000", "emergency", "province-duty"),
        (Role.DEPARTMENT, "410100", "meteorology", "zz-qxj-warning"),
        (Role.ADAPTER, "410105", "ecology_environment", "hj212-jinshui"),
        (Role.EDGE, "419001", "water", "gauge-17"),
    ],
)
def test_issue_each_role(ca: Authority, role: Role, region: str, principal: str, name: str) -> None:
    identity = ca.identity(role, region, name, principal)
    tls, signing = ca.issue(identity, dns_names=("localhost",) if role is Role.GATEWAY else ())
    cert, sign_cert = load(tls), load(signing)
    assert Identity.of(cert) == identity
    assert Identity.of(sign_cert) == identity
    assert identity.uri == f"spiffe://{DOMAIN}/{region}/{principal}/{role.value}/{name}"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(sign_cert.public_key(), ed25519.Ed25519PublicKey)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == (role is Role.GATEWAY)
    for key in (tls.with_suffix(".key"), signing.with_suffix(".key")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        serialization.load_pem_private_key(key.read_bytes(), password=None)  # no passphrase was invented
    assert stat.S_IMODE((ca.dir / "ca.key").stat().st_mode) == 0o600


def test_identities_are_checked(ca: Authority) -> None:
    with pytest.raises(PkiError, match="not a known GB/T 2260"):
        ca.identity(Role.EDGE, "419999", "gauge-1", "water")
    with pytest.raises(PkiError, match="outside this CA's province"):
        ca.identity(Role.EDGE, "420100", "gauge-1", "water")  # Wuhan, Hubei
    with pytest.raises(PkiError, match="--agency is required"):
        ca.identity(Role.DEPARTMENT, "410100", "zz-qxj", "")
    with pytest.raises(PkiError, match="--name"):
        ca.identity(Role.EDGE, "410105", "Gauge 1", "water")
    identity = ca.identity(Role.EDGE, "410105", "gauge-1", "water")
    ca.issue(identity)
    with pytest.raises(PkiError, match="already has a certificate"):
        ca.issue(identity)
    with pytest.raises(PkiError, match="not a yiwang identity"):
        Identity.parse("spiffe://x/410105/water/gauge-1")


def test_init_refuses_to_overwrite_a_ca(ca: Authority) -> None:
    with pytest.raises(PkiError, match="already has a CA"):
        Authority.init(ca.dir, trust_domain=DOMAIN)
    with pytest.raises(PkiError, match="not a province"):
        Authority.init(ca.dir.parent / "other", trust_domain=DOMAIN, province="410100")


def test_revocation_lands_in_the_crl(ca: Authority) -> None:
    tls, signing = ca.issue(ca.identity(Role.EDGE, "410105", "gauge-2", "water"))
    kept, _ = ca.issue(ca.identity(Role.EDGE, "410105", "gauge-3", "water"))
    revoked = ca.revoke("gauge-2", "key_compromise")
    assert {r.purpose for r in revoked} == {"tls", "signing"}
    crl = x509.load_pem_x509_crl((ca.dir / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.ca_cert.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(load(tls).serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(load(signing).serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(load(kept).serial_number) is None
    with pytest.raises(PkiError, match="no unrevoked certificate"):
        ca.revoke("gauge-2")


def test_openssl_verify_accepts_the_chain_and_honours_the_crl(ca: Authority) -> None:
    assert OPENSSL is not None, "openssl is missing: `make test` installs it"
    tls, signing = ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"))
    edge, _ = ca.issue(ca.identity(Role.EDGE, "410105", "gauge-4", "water"))
    cafile = str(ca.dir / "ca.pem")
    for cert in (tls, signing, edge):
        ok = subprocess.run(
            [OPENSSL, "verify", "-CAfile", cafile, str(cert)], capture_output=True, text=True, check=False
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
    ca.revoke("gauge-4")
    crl = ["-crl_check", "-CRLfile", str(ca.dir / "crl.pem")]
    refused = subprocess.run(
        [OPENSSL, "verify", *crl, "-CAfile", cafile, str(edge)], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr
    still = subprocess.run(
        [OPENSSL, "verify", *crl, "-CAfile", cafile, str(tls)], capture_output=True, text=True, check=False
    )
    assert still.returncode == 0, still.stdout + still.stderr


def test_cli(tmp_path: Path) -> None:
    def yiwang(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "pki", *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )

    assert yiwang("init", "--trust-domain", DOMAIN).returncode == 0
    issued = yiwang("issue", "--role", "adapter", "--region", "410105", "--agency", "water", "--name", "sl651-a")
    assert issued.returncode == 0, issued.stderr
    paths = json.loads(issued.stdout)
    assert paths["identity"] == f"spiffe://{DOMAIN}/410105/water/adapter/sl651-a"
    shown = json.loads(yiwang("show", paths["tls"], "--dir", "pki").stdout)
    assert shown["identity"] == paths["identity"]
    assert shown["revoked"] is False
    assert yiwang("revoke", "sl651-a").returncode == 0
    assert json.loads(yiwang("show", paths["tls"], "--dir", "pki").stdout)["revoked"] is True
    again = yiwang("init", "--trust-domain", DOMAIN)
    assert again.returncode == 2
    assert again.stderr.strip().startswith("yiwang pki: ")
    assert len(again.stderr.strip().splitlines()) == 1
    missing = yiwang("issue", "--role", "edge", "--region", "410105", "--name", "x")
    assert missing.returncode == 2
    assert "--agency is required" in missing.stderr


def test_pki_events_are_audited(ca: Authority) -> None:
    ca.issue(ca.identity(Role.EDGE, "410105", "gauge-9", "water"))
    ca.revoke("gauge-9", "superseded")
    verdict = verify(ca.dir / "audit.log")
    assert verdict.ok, verdict.problem
    events = [json.loads(line)["event"] for line in (ca.dir / "audit.log").read_text(encoding="utf-8").splitlines()]
    assert events[0] == "ca_created"
    assert "certificate_issued" in events
    assert events.count("certificate_revoked") == 2
