"""The network's certificates: a province root CA, identities in URI SANs, revocation with a CRL.

Every participant (gateway node, command platform, department system, adapter, edge terminal) gets
its own key and certificate; its identity is the URI SAN
``spiffe://<trust-domain>/<region>/<agency-or-node>/<role>/<name>``, never something a message
claims. Each identity gets two keys: an ECDSA P-256 key for TLS (what OpenSSL, BoringSSL in gRPC,
and Mosquitto all accept) and an Ed25519 key for signing envelopes, each with a certificate naming
the same identity. Private keys are written with mode 0600 and no passphrase is ever defaulted:
protecting the CA key at rest (an offline machine, an HSM) is the operator's decision.

Layout of a PKI directory::

    ca.pem  ca.key  crl.pem  pki.json          the root CA, its CRL, and the register
    issued/<name>.pem .key .chain.pem           TLS certificate, key, certificate + CA
    issued/<name>.sign.pem .sign.key            envelope-signing certificate and key
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.audit import AuditLog
from gateway.errors import YiwangError
from gateway.regions import default_table
from gateway.validation import AGENCIES, AGENCY_CODE

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
CA_YEARS = 10
CRL_DAYS = 7


class PkiError(YiwangError):
    """A PKI operation cannot be done; the message says why."""


class Role(enum.StrEnum):
    GATEWAY = "gateway"
    PLATFORM = "platform"
    DEPARTMENT = "department"
    ADAPTER = "adapter"
    EDGE = "edge"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate speaks for."""

    trust_domain: str
    region: str
    principal: str  # the agency code, or for a gateway its node id
    role: Role
    name: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.region}/{self.principal}/{self.role.value}/{self.name}"

    @property
    def path(self) -> str:
        """The identity without scheme and trust domain; also the certificate's common name."""
        return f"{self.region}/{self.principal}/{self.role.value}/{self.name}"

    @classmethod
    def parse(cls, uri: str) -> Identity:
        match = re.fullmatch(r"spiffe://([^/]+)/(\d{6})/([^/]+)/([^/]+)/([^/]+)", uri)
        if not match:
            raise PkiError(f"{uri!r} is not a yiwang identity (spiffe://DOMAIN/REGION/AGENCY-OR-NODE/ROLE/NAME)")
        domain, region, principal, role, name = match.groups()
        if role not in {r.value for r in Role}:
            raise PkiError(f"{uri!r}: unknown role {role!r}")
        return cls(domain, region, principal, Role(role), name)

    @classmethod
    def of(cls, certificate: x509.Certificate) -> Identity:
        """The identity in a certificate's URI SAN (exactly one must be there)."""
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise PkiError("the certificate has no subject alternative names") from None
        uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
        if len(uris) != 1:
            raise PkiError(f"the certificate carries {len(uris)} spiffe URIs, not one")
        return cls.parse(uris[0])


@dataclass
class IssuedRecord:
    serial: str  # hex
    identity: str
    purpose: str  # tls or signing
    not_after: str
    file: str
    revoked_at: str | None = None
    reason: str | None = None


@dataclass
class Register:
    """pki.json: the trust domain and every certificate the CA issued."""

    trust_domain: str
    province: str
    issued: list[IssuedRecord] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Register:
        try:
            raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PkiError(f"{path.parent} is not a PKI directory (no pki.json); run `yiwang pki init` first") from None
        return cls(raw["trust_domain"], raw["province"], [IssuedRecord(**r) for r in raw["issued"]])

    def save(self, path: Path) -> None:
        _write(path, json.dumps(asdict(self), ensure_ascii=False, indent=2).encode(), mode=0o644)


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Writes a file atomically with its final permissions from the first byte (keys are never world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.chmod(mode)  # os.open's mode is filtered by the umask; make it exact
    tmp.replace(path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Authority:
    """A PKI directory with its root CA."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.register = Register.load(directory / "pki.json")
        self.ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{directory / 'ca.key'} is not the CA's EC key")
        self.ca_key = key

    @classmethod
    def init(cls, directory: Path, *, trust_domain: str, province: str = "410000") -> Authority:
        """Creates the root CA of a province; refuses to overwrite an existing one."""
        if not _TRUST_DOMAIN.fullmatch(trust_domain):
            raise PkiError(f"{trust_domain!r} is not a trust domain (lower-case DNS-like name, e.g. yjt.henan.gov.cn)")
        region = default_table().get(province)
        if region is None or region.level.value != "province":
            raise PkiError(f"{province!r} is not a province code of GB/T 2260")
        if (directory / "ca.key").exists():
            raise PkiError(f"{directory} already has a CA (ca.key); refusing to overwrite it")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "issued").mkdir(exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"yiwang root CA {region.name} {province}"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(directory / "ca.key", _key_pem(key), mode=0o600)
        _write(directory / "ca.pem", _cert_pem(cert), mode=0o644)
        Register(trust_domain, province).save(directory / "pki.json")
        authority = cls(directory)
        authority.audit("ca_created", trust_domain=trust_domain, province=province, serial=f"{cert.serial_number:x}")
        authority.write_crl()
        return authority

    def audit(self, event: str, **fields: Any) -> None:
        """Records a PKI event in the PKI directory's audit log (``audit.log``)."""
        trail = AuditLog(self.dir / "audit.log").open()
        try:
            trail.record(event, **fields)
        finally:
            trail.close()

    def identity(self, role: Role, region: str, name: str, principal: str) -> Identity:
        """Checks and builds an identity of this trust domain."""
        if region not in default_table():
            raise PkiError(f"--region {region!r} is not a known GB/T 2260 code")
        if not default_table().is_within(region, self.register.province):
            raise PkiError(f"--region {region} is outside this CA's province {self.register.province}")
        if not _NAME.fullmatch(name):
            raise PkiError(f"--name {name!r}: use lower-case letters, digits, '.', '_' or '-' (up to 63)")
        if role is Role.GATEWAY:
            if not _NAME.fullmatch(principal):
                raise PkiError(f"node id {principal!r}: use lower-case letters, digits, '.', '_' or '-'")
        elif not principal:
            raise PkiError(f"--agency is required for the role {role.value}")
        elif principal not in AGENCIES and not AGENCY_CODE.fullmatch(principal):
            raise PkiError(f"--agency {principal!r} is not an agency code")
        return Identity(self.register.trust_domain, region, principal, role, name)

    def issue(
        self,
        identity: Identity,
        *,
        days: int = 397,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> tuple[Path, Path]:
        """Issues the TLS and the signing certificate of an identity; returns their paths."""
        if days < 1 or days > 365 * CA_YEARS:
            raise PkiError(f"--days {days}: must be between 1 and {365 * CA_YEARS}")
        if (self.dir / "issued" / f"{identity.name}.pem").exists():
            raise PkiError(f"{identity.name} already has a certificate here; revoke it or choose another --name")
        alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        alt += [x509.DNSName(d) for d in dns_names]
        try:
            alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
        except ValueError as exc:
            raise PkiError(f"--ip: {exc}") from None
        server = identity.role is Role.GATEWAY
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH, *([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])]
        tls_key = ec.generate_private_key(ec.SECP256R1())
        tls_cert = self._sign(identity, tls_key.public_key(), alt, days, x509.ExtendedKeyUsage(usages), tls=True)
        sign_key = ed25519.Ed25519PrivateKey.generate()
        sign_cert = self._sign(identity, sign_key.public_key(), alt[:1], days, None, tls=False)
        issued = self.dir / "issued"
        tls_path = issued / f"{identity.name}.pem"
        sign_path = issued / f"{identity.name}.sign.pem"
        _write(issued / f"{identity.name}.key", _key_pem(tls_key), mode=0o600)
        _write(tls_path, _cert_pem(tls_cert), mode=0o644)
        _write(issued / f"{identity.name}.chain.pem", _cert_pem(tls_cert) + _cert_pem(self.ca_cert), mode=0o644)
        _write(issued / f"{identity.name}.sign.key", _key_pem(sign_key), mode=0o600)
        _write(sign_path, _cert_pem(sign_cert), mode=0o644)
        for cert, purpose, path in ((tls_cert, "tls", tls_path), (sign_cert, "signing", sign_path)):
            self.register.issued.append(
                IssuedRecord(
                    serial=f"{cert.serial_number:x}",
                    identity=identity.uri,
                    purpose=purpose,
                    not_after=cert.not_valid_after_utc.isoformat(),
                    file=str(path.relative_to(self.dir)),
                )
            )
        self.register.save(self.dir / "pki.json")
        self.audit(
            "certificate_issued",
            identity=identity.uri,
            serials={"tls": f"{tls_cert.serial_number:x}", "signing": f"{sign_cert.serial_number:x}"},
            not_after=tls_cert.not_valid_after_utc.isoformat(),
        )
        return tls_path, sign_path

    def _sign(
        self,
        identity: Identity,
        public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        alt: list[x509.GeneralName],
        days: int,
        usage: x509.ExtendedKeyUsage | None,
        *,
        tls: bool,
    ) -> x509.Certificate:
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.trust_domain),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role.value),
                        x509.NameAttribute(NameOID.COMMON_NAME, identity.path),
                    ]
                )
            )
            .issuer_name(self.ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), self.ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(tls=tls), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
        )
        if usage is not None:
            builder = builder.add_extension(usage, critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())

    def revoke(self, which: str, reason: str = "unspecified") -> list[IssuedRecord]:
        """Revokes every certificate of a name (or one serial, in hex) and rewrites the CRL."""
        if reason not in _REASONS:
            raise PkiError(f"--reason {reason!r}: one of {', '.join(sorted(_REASONS))}")
        target = which.lower()
        hits = [
            r
            for r in self.register.issued
            if r.revoked_at is None and (r.serial == target or Identity.parse(r.identity).name == which)
        ]
        if not hits:
            raise PkiError(f"no unrevoked certificate with name or serial {which!r} in {self.dir}")
        when = _now().isoformat()
        for record in hits:
            record.revoked_at = when
            record.reason = reason
        self.register.save(self.dir / "pki.json")
        for record in hits:
            self.audit("certificate_revoked", identity=record.identity, serial=record.serial, reason=reason)
        self.write_crl()
        return hits

    def write_crl(self) -> Path:
        """Signs a fresh CRL of everything revoked (valid for a week: re-run to refresh it)."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=CRL_DAYS))
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        )
        for record in self.register.issued:
            if record.revoked_at is None:
                continue
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(record.serial, 16))
                .revocation_date(dt.datetime.fromisoformat(record.revoked_at))
                .add_extension(x509.CRLReason(_REASONS[record.reason or "unspecified"]), critical=False)
                .build()
            )
            builder = builder.add_revoked_certificate(revoked)
        crl = builder.sign(self.ca_key, hashes.SHA256())
        path = self.dir / "crl.pem"
        _write(path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
        self.audit(
            "crl_written",
            revoked=sum(1 for r in self.register.issued if r.revoked_at),
            next_update=str(crl.next_update_utc),
        )
        return path


_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
}


def _key_usage(*, cert_sign: bool = False, tls: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=tls,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def describe(path: Path, authority_dir: Path | None = None) -> dict[str, Any]:
    """What a certificate file says, for `yiwang pki show`."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a PEM certificate ({exc})") from None
    info: dict[str, Any] = {
        "file": str(path),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": type(cert.public_key()).__name__.removeprefix("_").replace("PublicKey", ""),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }
    try:
        info["identity"] = Identity.of(cert).uri
    except PkiError as exc:
        info["identity"] = None
        info["identity_problem"] = str(exc)
    if authority_dir is not None:
        register = Register.load(authority_dir / "pki.json")
        record = next((r for r in register.issued if r.serial == info["serial"]), None)
        info["revoked"] = bool(record and record.revoked_at)
        if record and record.revoked_at:
            info["revoked_at"] = record.revoked_at
            info["revocation_reason"] = record.reason
    return info
