"""The node's store of signing certificates, named by the SHA-256 of their DER.

Batch signatures name their certificate by hash instead of carrying it in every envelope; the
publisher sends it once per request, the node checks it against the network's CA and keeps it
here, and later verifiers fetch it (Gateway.Certificates). One file per certificate,
``<sha256 hex>.der``, written atomically: the admission workers of the node and its main process
share the directory, and a certificate is on disk before any envelope that names it is stored.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


def certificate_sha256(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


class CertificateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._known: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def _path(self, sha256: bytes) -> Path:
        return self.directory / f"{sha256.hex()}.der"

    def get(self, sha256: bytes) -> bytes | None:
        """The DER of the certificate with this hash, or None if the node has never been sent it."""
        der = self._known.get(sha256)
        if der is not None or len(sha256) != 32:
            return der
        try:
            der = self._path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        if certificate_sha256(der) != sha256:  # a damaged file is not that certificate
            return None
        with self._lock:
            self._known[sha256] = der
        return der

    def put(self, der: bytes) -> bytes:
        """Keeps a certificate (the caller has checked it); returns its hash. Durable on return."""
        sha256 = certificate_sha256(der)
        if self.get(sha256) is not None:
            return sha256
        path = self._path(sha256)
        temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with temporary.open("wb") as f:
            f.write(der)
            f.flush()
            os.fsync(f.fileno())
        temporary.replace(path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        with self._lock:
            self._known[sha256] = der
        return sha256
