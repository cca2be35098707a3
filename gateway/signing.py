"""Signed envelopes: an origin signs what it says, and anyone can check it later.

What is signed is the envelope's content: the envelope serialised deterministically with the
provenance hops and the signature itself left out, so hop records added on the way do not break
it. Low-rate envelopes are signed one by one (``ed25519``); a batch of telemetry can share one
signature over the Merkle root of its envelopes' content digests (``ed25519-merkle``), each envelope
keeping its index and the sibling hashes it needs to be verified alone.

A single signature carries the signer's Ed25519 signing certificate; a batch signature names it by
its SHA-256 (the publisher sends the certificate once per request and nodes keep it, see
gateway.certstore). A verifier checks that the network's CA issued the certificate, that it is valid
and not revoked, and that it names the identity given as signer.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.certstore import certificate_sha256
from gateway.errors import YiwangError
from gateway.pki import Identity, PkiError
from gateway.wire import varint

ENVELOPE_CONTEXT = b"yiwang/v1 envelope\0"
BATCH_CONTEXT = b"yiwang/v1 batch\0"
SINGLE = "ed25519"
BATCH = "ed25519-merkle"


class SignatureError(YiwangError):
    """A signature does not verify; the message says which check failed."""


def content_digest(env: pb.Envelope) -> bytes:
    """SHA-256 of the envelope's signed content (without hops and signature)."""
    if not env.HasField("provenance"):
        return hashlib.sha256(env.SerializeToString(deterministic=True)).digest()  # nothing to leave out
    content = pb.Envelope()
    content.CopyFrom(env)
    if _holds_no_content(env.provenance):
        content.ClearField("provenance")  # the usual case
    else:
        content.provenance.ClearField("hops")
        content.provenance.ClearField("signature")
    return hashlib.sha256(content.SerializeToString(deterministic=True)).digest()


def _holds_no_content(provenance: pb.Provenance) -> bool:
    """Whether a provenance holds only hops and the signature (nothing that is signed)."""
    return not provenance.original_format and not provenance.original_id


def _digests_consuming(
    envelopes: Sequence[pb.Envelope], provenances: Sequence[pb.Provenance]
) -> tuple[list[bytes], list[int]]:
    """``content_digest`` of each envelope, clearing the provenance out of those that hold only hops
    and the signature instead of copying them (``provenances`` are the envelopes' own, kept to put
    back). Returns the digests and the positions of the envelopes whose provenance was cleared."""
    digests = []
    cleared = []
    for position, (env, provenance) in enumerate(zip(envelopes, provenances, strict=True)):
        if not env.HasField("provenance") or not _holds_no_content(provenance):
            digests.append(content_digest(env))
            continue
        env.ClearField("provenance")
        cleared.append(position)
        digests.append(hashlib.sha256(env.SerializeToString(deterministic=True)).digest())
    return digests, cleared


# Tags of the Signature fields a whole batch's check builds (field number << 3 | wire type).
_ROOT_TAG = b"\x22\x20"  # batch_root = 4, 32 bytes long
_PROOF_TAG = b"\x2a\x20"  # batch_proof = 5, each 32 bytes long
_INDEX_TAG = b"\x30"  # batch_index = 6 (varint)


def _shared_fields(sig: pb.Signature) -> tuple[bytes, bytes]:
    """A batch signature's fields that every envelope of the batch shares, encoded: those before
    its own proof and index, and those after."""
    head = pb.Signature(signer=sig.signer, algorithm=BATCH, value=sig.value, batch_root=sig.batch_root)
    tail = pb.Signature(certificate=sig.certificate, certificate_sha256=sig.certificate_sha256)
    return head.SerializeToString(), tail.SerializeToString()


def _index_field(index: int) -> bytes:
    """``batch_index`` encoded (nothing for 0, proto3's default)."""
    return _INDEX_TAG + varint(index) if index else b""


_INDEX_FIELDS = [_index_field(index) for index in range(4096)]  # those of the usual batch sizes, made once


def _index_fields(count: int) -> list[bytes]:
    """``_index_field`` of 0 .. count - 1."""
    if count <= len(_INDEX_FIELDS):
        return _INDEX_FIELDS[:count]
    return _INDEX_FIELDS + [_index_field(index) for index in range(len(_INDEX_FIELDS), count)]


def _encoded_proofs(levels: list[list[bytes]]) -> list[bytes]:
    """The encoded ``batch_proof`` fields of every leaf of a tree (``merkle_proof`` of each, encoded
    as the Signature message encodes them), built from the root down so that leaves share the work."""
    suffixes = [b""]
    for level in reversed(levels[:-1]):
        tagged = [_PROOF_TAG + node for node in level]
        suffixes = [tagged[j ^ 1] + suffixes[j >> 1] for j in range(len(level))]
    return suffixes


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\1" + left + right).digest()


def _leaf(digest: bytes) -> bytes:
    return hashlib.sha256(b"\0" + digest).digest()


def merkle_tree(digests: Sequence[bytes]) -> list[list[bytes]]:
    """The levels of a Merkle tree over content digests, leaves first; an odd level repeats its last node.

    (``_leaf`` and ``_node`` written out: a node verifies every envelope of a signed batch through here.)
    """
    sha256 = hashlib.sha256
    return merkle_levels([sha256(b"\0" + d).digest() for d in digests])


def merkle_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """``merkle_tree`` from the leaf hashes themselves."""
    if not leaves:
        raise SignatureError("a batch to sign or verify has no envelopes")
    sha256 = hashlib.sha256
    level = list(leaves)
    levels = []
    while True:
        if len(level) > 1 and len(level) % 2:
            level = [*level, level[-1]]
        levels.append(level)
        if len(level) == 1:
            return levels
        level = [sha256(b"\1" + left + right).digest() for left, right in zip(level[::2], level[1::2], strict=True)]


def merkle_proof(levels: list[list[bytes]], index: int) -> list[bytes]:
    """The sibling of the leaf's path at each level below the root."""
    proof = []
    for level in levels[:-1]:
        proof.append(level[index ^ 1])
        index //= 2
    return proof


def merkle_root_from(digest: bytes, index: int, proof: Sequence[bytes]) -> bytes:
    """The root that a leaf's proof leads to."""
    node = _leaf(digest)
    for sibling in proof:
        node = _node(sibling, node) if index % 2 else _node(node, sibling)
        index //= 2
    return node


class Signer:
    """Signs envelopes with an identity's Ed25519 signing key and certificate."""

    def __init__(self, key: ed25519.Ed25519PrivateKey, certificate: x509.Certificate) -> None:
        self.key = key
        self.certificate_der = certificate.public_bytes(serialization.Encoding.DER)
        self.certificate_sha256 = certificate_sha256(self.certificate_der)
        self.identity = Identity.of(certificate).uri

    @classmethod
    def load(cls, key_pem: bytes, cert_pem: bytes) -> Signer:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise SignatureError("the signing key is not an Ed25519 key (use the .sign.key that `yiwang pki` issues)")
        return cls(key, x509.load_pem_x509_certificate(cert_pem))

    def sign(self, env: pb.Envelope) -> None:
        """Signs one envelope in place; the signature carries the certificate, so it verifies anywhere."""
        if env.HasField("provenance"):
            env.provenance.ClearField("signature")
        value = self.key.sign(ENVELOPE_CONTEXT + content_digest(env))
        env.provenance.signature.CopyFrom(
            pb.Signature(signer=self.identity, algorithm=SINGLE, value=value, certificate=self.certificate_der)
        )

    def sign_batch(self, envelopes: Sequence[pb.Envelope], shared: bool = False) -> pb.Signature:
        """Signs a batch with one signature and returns it; each envelope gets what it needs to be
        verified alone.

        The envelopes name the certificate by hash: send ``certificate_der`` along with them
        (PublishRequest.certificates, or ``certificates=`` of the client's publish).

        With ``shared``, each envelope gets only a reference to the batch's signature (its root and
        index), and the returned signature, which holds the batch's leaves, goes once with them
        (PublishRequest.batch_signatures): some 500 bytes less per envelope, in transit and in
        every log that keeps it.
        """
        for env in envelopes:
            if env.HasField("provenance"):
                env.provenance.ClearField("signature")
        levels = merkle_tree([content_digest(env) for env in envelopes])
        root = levels[-1][0]
        signature = pb.Signature(
            signer=self.identity,
            algorithm=BATCH,
            value=self.key.sign(BATCH_CONTEXT + root),
            batch_root=root,
            certificate_sha256=self.certificate_sha256,
        )
        if shared:
            reference = _ROOT_TAG + root
            for index, env in enumerate(envelopes):
                env.provenance.signature.MergeFromString(reference + _index_field(index))
            signature.batch_leaves.extend(levels[0][: len(envelopes)])
            return signature
        head, tail = _shared_fields(signature)
        for index, (env, proof) in enumerate(zip(envelopes, _encoded_proofs(levels), strict=False)):
            env.provenance.signature.MergeFromString(head + proof + _index_field(index) + tail)
        return signature


def is_reference(sig: pb.Signature) -> bool:
    """Whether a signature is only a reference to its batch's shared signature (see SharedSignatures)."""
    return not sig.value and not sig.algorithm and bool(sig.batch_root)


MAX_BATCH_LEAVES = 1 << 16


class SharedSignatures:
    """The shared signatures of the batches a message's envelopes refer to, by batch root.

    A batch signed with ``Signer.sign_batch(shared=True)`` travels as envelopes that carry only a
    reference (batch_root and batch_index) and one signature for the batch, which holds the
    batch's leaf hashes. ``Verifier.verify_all(..., shared=)`` checks such envelopes; ``expand``
    gives an envelope its full signature, which verifies alone, as a node does for every reader
    that does not ask for the shared form.

    Raises SignatureError naming the signature that is not a batch's shared signature.
    """

    def __init__(self, signatures: Sequence[pb.Signature], field: str = "batch_signatures") -> None:
        self.by_root: dict[bytes, pb.Signature] = {}
        for position, sig in enumerate(signatures):
            problem = _shared_problem(sig)
            if problem:
                raise SignatureError(f"{field}[{position}] {problem}")
            self.by_root[sig.batch_root] = sig
        self._checked: dict[bytes, str] = {}  # root -> "" if its leaves lead to it, else what is wrong
        self._expanded: dict[bytes, tuple[bytes, bytes, list[bytes]]] = {}

    def __bool__(self) -> bool:
        return bool(self.by_root)

    def leaves_problem(self, root: bytes) -> str:
        """What is wrong with the leaves of the shared signature of ``root`` ("" if they lead to it)."""
        problem = self._checked.get(root)
        if problem is None:
            leaves = self.by_root[root].batch_leaves
            problem = self._checked[root] = (
                "" if merkle_levels(leaves)[-1][0] == root else "its batch_leaves do not lead to its batch_root"
            )
        return problem

    def full(self, sig: pb.Signature) -> bytes | None:
        """The encoded full signature for a reference (None if its batch's signature is not here)."""
        root = sig.batch_root
        expanded = self._expanded.get(root)
        if expanded is None:
            shared = self.by_root.get(root)
            if shared is None or self.leaves_problem(root):
                return None
            head, tail = _shared_fields(shared)
            expanded = self._expanded[root] = (head, tail, _encoded_proofs(merkle_levels(shared.batch_leaves)))
        head, tail, proofs = expanded
        index = sig.batch_index
        if index >= len(self.by_root[root].batch_leaves):
            return None
        return head + proofs[index] + _index_field(index) + tail

    def expand(self, env: pb.Envelope) -> bool:
        """Gives an envelope that refers to one of these signatures its full signature; returns
        whether it did (False for any other envelope)."""
        if not env.HasField("provenance") or not is_reference(env.provenance.signature):
            return False
        full = self.full(env.provenance.signature)
        if full is None:
            return False
        env.provenance.signature.MergeFromString(full)
        return True


def _shared_problem(sig: pb.Signature) -> str:
    """What keeps a signature from being a batch's shared signature ("" if nothing)."""
    if sig.algorithm != BATCH:
        return f"has algorithm {sig.algorithm!r}, not {BATCH}"
    if len(sig.batch_root) != 32 or not sig.value or not sig.signer:
        return "needs signer, value and a 32-byte batch_root"
    if sig.batch_proof or sig.batch_index:
        return "is a batch's shared signature: it has no batch_proof or batch_index"
    if not 0 < len(sig.batch_leaves) <= MAX_BATCH_LEAVES or any(len(leaf) != 32 for leaf in sig.batch_leaves):
        return f"needs the batch's leaves, 1 to {MAX_BATCH_LEAVES} hashes of 32 bytes (batch_leaves)"
    return ""


@functools.lru_cache(maxsize=64)
def _shared_of(signatures: bytes) -> SharedSignatures:
    """The shared signatures a stored batch keeps (encoded DeliveryBatch.batch_signatures fields),
    kept for the batch's other entries: readers of single entries expand one after another, and
    the proofs of a batch are made once (the bytes are the stored batch's own, their hash cached)."""
    return SharedSignatures(gw.DeliveryBatch.FromString(signatures).batch_signatures)


def standalone_entries(entries: bytes, signatures: bytes) -> bytes:
    """Encoded Delivery entries (DeliveryBatch field 1) with each reference to a batch signature
    made a full signature, from ``signatures`` (encoded DeliveryBatch.batch_signatures fields)."""
    if not signatures or not entries:
        return entries
    batch = gw.DeliveryBatch.FromString(entries)
    shared = _shared_of(signatures)
    expanded = [shared.expand(delivery.envelope) for delivery in batch.deliveries]  # every one, not the first
    if not any(expanded):
        return entries
    return batch.SerializeToString()


def standalone_envelopes(envelopes: Sequence[bytes], signatures: bytes) -> list[bytes]:
    """Encoded envelopes with each reference to a batch signature made a full signature."""
    if not signatures:
        return list(envelopes)
    shared = _shared_of(signatures)
    out = []
    for raw in envelopes:
        env = pb.Envelope.FromString(raw)
        out.append(env.SerializeToString() if shared.expand(env) else raw)
    return out


@dataclass(frozen=True, slots=True)
class _Trusted:
    identity: str
    key: ed25519.Ed25519PublicKey
    serial: int
    not_after: float  # POSIX seconds


class Verifier:
    """Checks signatures against the network's CA (and a set of revoked serials).

    ``certificates`` looks up a signing certificate's DER by its SHA-256 (a node's certificate
    store, or a client asking a node), for batch signatures that name their certificate by hash.
    """

    def __init__(
        self,
        ca: x509.Certificate,
        revoked: frozenset[int] = frozenset(),
        certificates: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.ca = ca
        self.revoked = revoked
        self.certificates = certificates
        self._by_der: dict[bytes, _Trusted] = {}
        self._by_sha256: dict[bytes, _Trusted] = {}
        self._roots: dict[tuple[bytes, bytes], bool] = {}

    def learn(self, der: bytes) -> bytes:
        """Checks a signing certificate (issued by the CA, Ed25519, naming an identity) and keeps it
        for signatures that name it by hash; returns its SHA-256. Raises SignatureError."""
        sha256 = certificate_sha256(der)
        if sha256 not in self._by_sha256:
            self._by_sha256[sha256] = self._check_certificate(der)
        return sha256

    def _check_certificate(self, der: bytes) -> _Trusted:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise SignatureError("the signer's certificate cannot be read") from None
        ca_key = self.ca.public_key()
        if cert.issuer != self.ca.subject or not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise SignatureError("the signer's certificate was not issued by this network's CA")
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            raise SignatureError("the signer's certificate was not issued by this network's CA") from None
        key = cert.public_key()
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SignatureError("the signer's certificate is not an Ed25519 signing certificate")
        try:
            identity = Identity.of(cert).uri
        except PkiError as exc:
            raise SignatureError(f"the signer's certificate names no identity: {exc}") from None
        return _Trusted(identity, key, cert.serial_number, cert.not_valid_after_utc.timestamp())

    def verify_all(
        self,
        envelopes: Sequence[pb.Envelope],
        consume: bool = False,
        shared: SharedSignatures | None = None,
        used: set[bytes] | None = None,
    ) -> list[str | SignatureError | None]:
        """Verifies every envelope of a request: each gets its signer's identity, the SignatureError
        that refuses it, or None if it is unsigned.

        A request usually carries every envelope of a signed batch: then the tree is rebuilt once,
        which proves all their places in it; each envelope's own proof is compared with the tree's
        (so that it can still be verified alone later) and the batch signature is checked once.
        Anything else is verified envelope by envelope.

        ``consume`` lets the check of a whole batch clear the envelopes' provenance (the copies of
        a caller that drops them afterwards), which spares copying each one for its digest.

        ``shared`` holds the batch signatures that envelopes carrying only a reference to theirs
        refer to (the message's batch_signatures); ``used`` gets the roots of those that an
        envelope verified by.
        """
        if shared is not None:
            return self._verify_with_shared(envelopes, consume, shared, set() if used is None else used)
        whole = self._whole_batch(envelopes, consume)
        if whole is not None:
            return whole
        results: list[str | SignatureError | None] = [None] * len(envelopes)
        digests: list[bytes] = [b""] * len(envelopes)
        signatures: list[pb.Signature | None] = [None] * len(envelopes)
        groups: dict[tuple[bytes, bytes, str, bytes, bytes], dict[int, int]] = {}
        alone: list[int] = []
        for position, env in enumerate(envelopes):
            provenance = env.provenance
            if not provenance.HasField("signature"):
                continue
            sig = signatures[position] = provenance.signature
            digests[position] = content_digest(env)
            if sig.algorithm != BATCH:
                alone.append(position)
                continue
            key = (sig.batch_root, sig.value, sig.signer, sig.certificate_sha256, sig.certificate)
            members = groups.setdefault(key, {})
            index = sig.batch_index
            if index in members:
                alone.append(position)  # a second envelope in the same place: it must prove itself
            else:
                members[index] = position
        for (root, *_), members in groups.items():
            count = len(members)
            levels = merkle_tree([digests[members[i]] for i in range(count)]) if max(members) == count - 1 else None
            if levels is None or levels[-1][0] != root:
                alone.extend(members.values())
                continue
            first = signatures[members[0]]
            assert first is not None
            try:
                identity = self._batch_signer(first, root)
            except SignatureError as exc:
                for position in members.values():
                    results[position] = exc
                continue
            for index, position in members.items():
                if signatures[position].batch_proof != merkle_proof(levels, index):  # type: ignore[union-attr]
                    results[position] = SignatureError(
                        f"batch_proof is not the path of batch_index {index} in its batch's tree "
                        "(the envelope could not be verified alone)"
                    )
                else:
                    results[position] = identity
        for position in alone:
            try:
                results[position] = self.verify(envelopes[position], digests[position])
            except SignatureError as exc:
                results[position] = exc
        return results

    def _verify_with_shared(
        self, envelopes: Sequence[pb.Envelope], consume: bool, shared: SharedSignatures, used: set[bytes]
    ) -> list[str | SignatureError | None]:
        """``verify_all`` of envelopes some of which refer to a batch signature in ``shared``: each
        such envelope's leaf must be the one its batch's leaves hold at its index, the leaves must
        lead to the batch's root, and the signature over the root must verify (once per batch)."""
        whole = self._whole_shared_batch(envelopes, consume, shared, used)
        if whole is not None:
            return whole
        results: list[str | SignatureError | None] = [None] * len(envelopes)
        references: dict[bytes, list[int]] = {}
        others: list[int] = []
        for position, env in enumerate(envelopes):
            sig = env.provenance.signature
            if not is_reference(sig):
                others.append(position)
            elif sig.signer or sig.batch_proof or sig.certificate or sig.certificate_sha256 or sig.batch_leaves:
                results[position] = SignatureError(
                    "a reference to a batch signature carries only batch_root and batch_index"
                )
            else:
                references.setdefault(sig.batch_root, []).append(position)
        sha256 = hashlib.sha256
        for root, positions in references.items():
            group = [envelopes[position] for position in positions]
            identity = self._shared_signer(shared, root)
            if isinstance(identity, SignatureError):
                for position in positions:
                    results[position] = identity
                continue
            leaves = list(shared.by_root[root].batch_leaves)
            indexes = [env.provenance.signature.batch_index for env in group]
            if consume:
                digests, _ = _digests_consuming(group, [env.provenance for env in group])
            else:
                digests = [content_digest(env) for env in group]
            count = len(leaves)
            for position, index, digest in zip(positions, indexes, digests, strict=True):
                if index < count and sha256(b"\0" + digest).digest() == leaves[index]:
                    results[position] = identity
                    used.add(root)
                else:
                    results[position] = SignatureError(
                        f"the content is not the one its batch signature covers at batch_index {index} (altered)"
                    )
        if others:
            rest = self.verify_all([envelopes[position] for position in others], consume)
            for position, outcome in zip(others, rest, strict=True):
                results[position] = outcome
        return results

    def _shared_signer(self, shared: SharedSignatures, root: bytes) -> str | SignatureError:
        """The identity that signed the shared signature of ``root`` (once per batch), or what is wrong."""
        record = shared.by_root.get(root)
        if record is None:
            return SignatureError(
                f"it refers to batch signature {root.hex()}, which the message does not carry (batch_signatures)"
            )
        if problem := shared.leaves_problem(root):
            return SignatureError(f"its batch's signature {problem}")
        try:
            return self._batch_signer(record, root)
        except SignatureError as exc:
            return exc

    def _whole_shared_batch(
        self, envelopes: Sequence[pb.Envelope], consume: bool, shared: SharedSignatures, used: set[bytes]
    ) -> list[str | SignatureError | None] | None:
        """``_verify_with_shared`` of the usual request: every envelope of one batch, in its order,
        each referring to the batch's signature in ``shared``. None for anything else (then the
        general path decides; the envelopes are as they were).

        Each envelope's signature must be, byte for byte, the reference to its own place; then
        each envelope's leaf is compared with the batch's leaves, and only the ones that differ are
        refused, as the general path would.
        """
        if not envelopes:
            return None
        first = envelopes[0].provenance.signature
        root = first.batch_root
        record = shared.by_root.get(root)
        count = len(envelopes)
        if record is None or len(record.batch_leaves) != count or not is_reference(first):
            return None
        reference = _ROOT_TAG + root
        provenances = [env.provenance for env in envelopes]
        if [provenance.signature.SerializeToString() for provenance in provenances] != [
            reference + index for index in _index_fields(count)
        ]:
            return None
        identity = self._shared_signer(shared, root)
        if isinstance(identity, SignatureError):
            return [identity] * count
        if consume:
            digests, _ = _digests_consuming(envelopes, provenances)
        else:
            digests = [content_digest(env) for env in envelopes]
        sha256 = hashlib.sha256
        mine = [sha256(b"\0" + digest).digest() for digest in digests]
        leaves = list(record.batch_leaves)
        if mine == leaves:
            used.add(root)
            return [identity] * count
        results: list[str | SignatureError | None] = [
            identity
            if leaf == expected
            else SignatureError(
                f"the content is not the one its batch signature covers at batch_index {index} (altered)"
            )
            for index, (leaf, expected) in enumerate(zip(mine, leaves, strict=True))
        ]
        if identity in results:
            used.add(root)
        return results

    def _whole_batch(self, envelopes: Sequence[pb.Envelope], consume: bool) -> list[str | SignatureError | None] | None:
        """``verify_all`` of the usual request: every envelope of one signed batch, in its order.
        None for anything else (then the general path decides, so this only ever saves work; the
        envelopes are as they were).

        Each envelope's signature must be, byte for byte, the batch's shared fields with its own
        index and the proof the rebuilt tree gives it: the same check as the general path's, with
        one comparison of bytes per envelope instead of reading each field.
        """
        if not envelopes:
            return None
        first = envelopes[0].provenance.signature  # keeps its fields if its envelope's provenance is cleared
        if first.algorithm != BATCH or first.batch_index != 0:
            return None
        head, tail = _shared_fields(first)
        if consume:
            provenances = [env.provenance for env in envelopes]
            signatures = [provenance.signature.SerializeToString() for provenance in provenances]
            digests, cleared = _digests_consuming(envelopes, provenances)
        else:
            signatures = [env.provenance.signature.SerializeToString() for env in envelopes]
            digests, cleared = [content_digest(env) for env in envelopes], []
        levels = merkle_tree(digests)
        root = levels[-1][0]
        matches = root == first.batch_root and signatures == [
            head + proof + index + tail
            for proof, index in zip(_encoded_proofs(levels), _index_fields(len(signatures)), strict=False)
        ]
        if not matches:
            for position in cleared:
                envelopes[position].provenance.CopyFrom(provenances[position])
            return None
        try:
            identity: str | SignatureError = self._batch_signer(first, root)
        except SignatureError as exc:
            identity = exc
        return [identity] * len(envelopes)

    def _trusted(self, sig: pb.Signature) -> _Trusted:
        if sig.certificate:
            der = sig.certificate
            trusted = self._by_der.get(der)
            if trusted is None:
                if sig.certificate_sha256 and sig.certificate_sha256 != certificate_sha256(der):
                    raise SignatureError("the signature's certificate_sha256 is not the hash of its certificate")
                trusted = self._by_der[der] = self._check_certificate(der)
        elif sig.certificate_sha256:
            trusted = self._by_sha256.get(sig.certificate_sha256)
            if trusted is None:
                found = self.certificates(sig.certificate_sha256) if self.certificates is not None else None
                if found is None:
                    raise SignatureError(
                        f"the signer's certificate (sha256 {sig.certificate_sha256.hex()}) is unknown here: "
                        "send it with the request (PublishRequest.certificates)"
                    )
                if certificate_sha256(found) != sig.certificate_sha256:
                    raise SignatureError("the certificate found for certificate_sha256 has another hash")
                self.learn(found)
                trusted = self._by_sha256[sig.certificate_sha256]
        else:
            raise SignatureError("the signature names no certificate (certificate or certificate_sha256)")
        if trusted.identity != sig.signer:
            raise SignatureError(f"signer {sig.signer!r} is not the identity of its certificate ({trusted.identity})")
        if trusted.serial in self.revoked:
            raise SignatureError(f"the signer's certificate {trusted.serial:x} is revoked")
        if trusted.not_after < time.time():
            raise SignatureError("the signer's certificate has expired")
        return trusted

    def _batch_signer(self, sig: pb.Signature, root: bytes, trusted: _Trusted | None = None) -> str:
        """Checks a batch signature over ``root`` (once per batch); returns the signer's identity."""
        trusted = trusted or self._trusted(sig)
        cache_key = (root, sig.value)
        if cache_key not in self._roots:
            if len(self._roots) > 10_000:
                self._roots.clear()
            try:
                trusted.key.verify(sig.value, BATCH_CONTEXT + root)
            except InvalidSignature:
                raise SignatureError("the batch signature does not verify") from None
            self._roots[cache_key] = True
        return trusted.identity

    def verify(self, env: pb.Envelope, digest: bytes | None = None) -> str:
        """Verifies an envelope's signature; returns the signer's identity or raises SignatureError.

        ``digest`` is the envelope's content digest when the caller has it.
        """
        if not env.HasField("provenance") or not env.provenance.HasField("signature"):
            raise SignatureError("the envelope is not signed")
        sig = env.provenance.signature
        if is_reference(sig):
            raise SignatureError(
                "the envelope carries only a reference to its batch's signature: verify it with the "
                "message's batch_signatures, or fetch it from a node (Get gives it in full)"
            )
        trusted = self._trusted(sig)
        digest = digest or content_digest(env)
        if sig.algorithm == SINGLE:
            try:
                trusted.key.verify(sig.value, ENVELOPE_CONTEXT + digest)
            except InvalidSignature:
                raise SignatureError("the signature does not match the content (altered, or another key)") from None
            return trusted.identity
        if sig.algorithm == BATCH:
            if merkle_root_from(digest, sig.batch_index, sig.batch_proof) != sig.batch_root:
                raise SignatureError("the content is not the one the batch signature covers (altered)")
            return self._batch_signer(sig, sig.batch_root, trusted)
        raise SignatureError(f"unknown signature algorithm {sig.algorithm!r}")
