"""Mutual TLS for the node's listeners and its clients, and the revocation list they honour.

There is no fallback to plaintext anywhere: a server or a client is either given its certificate,
key and CA, or explicitly told ``insecure`` (loopback only for a node), and a TLS failure is an
error, never a reason to try without.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError

log = structlog.get_logger("yiwang.tls")


def _read(path: Path, key: str, source: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key, source=source) from exc


@dataclass(frozen=True)
class ServerTls:
    ca: Path
    cert: Path
    key: Path

    def ca_pem(self, source: str = "") -> bytes:
        return _read(self.ca, "tls.ca", source)

    def grpc_credentials(self, source: str = "") -> grpc.ServerCredentials:
        """Server credentials that require a client certificate issued by the CA."""
        return grpc.ssl_server_credentials(
            [(_read(self.key, "tls.key", source), _read(self.cert, "tls.cert", source))],
            root_certificates=self.ca_pem(source),
            require_client_auth=True,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """An ssl context for the HTTP side: client certificates required, TLS 1.2 at least."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        context.load_verify_locations(cafile=self.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(frozen=True)
class ClientTls:
    """A client's certificate, key and the CA it trusts the node by."""

    ca: Path
    cert: Path
    key: Path
    server_name: str = ""  # when the address is not a name or IP the node's certificate carries

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "--ca", ""),
            private_key=_read(self.key, "--key", ""),
            certificate_chain=_read(self.cert, "--cert", ""),
        )

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.cert, self.key)
        return context


class Revocations:
    """The serial numbers the CA has revoked, from a CRL file re-read whenever it changes."""

    def __init__(self, crl: Path | None, ca: Path | None) -> None:
        self.crl = crl
        self.ca = ca
        self.serials: frozenset[int] = frozenset()
        self._stamp: tuple[float, int] | None = None

    def reload(self) -> frozenset[int] | None:
        """Re-reads the CRL if it changed; returns the newly revoked serials, or None if unchanged.

        A CRL that cannot be read, is not signed by our CA, or has expired is refused with an error
        in the log, and the serials known so far stay revoked.
        """
        if self.crl is None or self.ca is None:
            return None
        try:
            stat = self.crl.stat()
        except FileNotFoundError:
            return None
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            crl = x509.load_pem_x509_crl(self.crl.read_bytes())
            ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
        except (OSError, ValueError) as exc:
            log.error("crl_unreadable", crl=str(self.crl), error=str(exc))
            return None
        public_key = ca.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public_key):
            log.error("crl_not_signed_by_ca", crl=str(self.crl))
            return None
        serials = frozenset(r.serial_number for r in crl)
        added = serials - self.serials
        self.serials = serials | self.serials  # a CRL never un-revokes a certificate here
        log.info("crl_loaded", crl=str(self.crl), revoked=len(self.serials), new=len(added))
        return added


def peer_certificate(context: grpc.aio.ServicerContext[object, object]) -> x509.Certificate | None:
    """The client certificate of a call's peer (None on a plaintext listener)."""
    auth = context.auth_context()
    pems = list(auth.get("x509_pem_cert") or ())
    if not pems:
        return None
    return x509.load_pem_x509_certificate(pems[0])
