"""Admission of a publish request: parse, validate, and prepare each envelope for the log.

This is the node's heaviest per-envelope work and it is pure (bytes in, plain lists out), so large
requests are admitted in a pool of worker processes, where it runs beside the event loop instead of
competing with it for the interpreter lock. Small requests are admitted inline: a process hop costs
more than it saves for a handful of envelopes.
"""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import reduction
from pathlib import Path
from typing import Any, cast

import numpy as np
from cryptography import x509
from google.protobuf.message import DecodeError
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import federation_pb2 as fed
from yiwang.v1 import gateway_pb2 as gw

from gateway.certstore import CertificateStore
from gateway.errors import InvalidEnvelopeError, InvalidRequestError
from gateway.id_index import id_hashes
from gateway.policy import Decision
from gateway.regions import default_table
from gateway.selection import FLAG_RELAYED, FLAG_UNSIGNED, FLAGS_AT, KEY, KEY_BYTES, RECORD, record_of
from gateway.signing import SharedSignatures, SignatureError, Verifier, is_reference
from gateway.validation import KINDS, SEVERITIES, STATUSES, Limits, Validator
from gateway.wire import TAG_BATCH_SIGNATURES, field_spans, length_delimited


@dataclass(slots=True)
class Admitted:
    """What admission made of one request: the envelopes for the log and the refused ones."""

    batch_id: int
    total: int
    ids: list[str] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # gateway.id_index.id_hash of each id
    envelopes: list[bytes] = field(default_factory=list)
    # Instead of ``envelopes`` (from a worker): where each lies in the request's bytes, start and end
    # in turn; the main process cuts them from its own copy rather than receiving them back.
    spans: list[int] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # index in the request of each admitted envelope
    signers: list[str] = field(default_factory=list)  # the verified signer of each, "" if unsigned
    # The shared signatures of the batches admitted envelopes refer to, encoded as
    # DeliveryBatch.batch_signatures fields: the log keeps them beside the envelopes.
    signatures: bytes = b""
    # (index in the request, id, field, reason, google.rpc code)
    rejections: list[tuple[int, str, str, str, int]] = field(default_factory=list)


class Admission:
    def __init__(
        self,
        validator: Validator,
        max_batch_envelopes: int,
        verifier: Verifier | None = None,
        certificates: CertificateStore | None = None,
    ) -> None:
        self.validator = validator
        self.max_batch_envelopes = max_batch_envelopes
        self.verifier = verifier
        self.certificates = certificates
        if verifier is not None and certificates is not None:
            verifier.certificates = certificates.get

    def _parse(self, raw: bytes) -> gw.PublishRequest:
        """Decodes a request, refusing one that does not decode or holds too many envelopes."""
        try:
            request = gw.PublishRequest.FromString(raw)
        except DecodeError as exc:
            raise InvalidRequestError("request", f"not a valid PublishRequest: {exc}") from None
        if len(request.envelopes) > self.max_batch_envelopes:
            raise InvalidRequestError(
                "envelopes",
                f"{len(request.envelopes)} envelopes in one request, more than {self.max_batch_envelopes}",
            )
        return request

    @staticmethod
    def _shared(signatures: Sequence[pb.Signature]) -> SharedSignatures | None:
        """The request's shared batch signatures (None if it has none); refuses the request if one
        is not a batch's shared signature."""
        if not signatures:
            return None
        if len(signatures) > MAX_BATCH_SIGNATURES:
            raise InvalidRequestError(
                "batch_signatures",
                f"{len(signatures)} batch signatures in one request, more than {MAX_BATCH_SIGNATURES}",
            )
        try:
            return SharedSignatures(signatures)
        except SignatureError as exc:
            raise InvalidRequestError("batch_signatures", str(exc)) from None

    def _learn_certificates(self, certificates: Sequence[bytes]) -> None:
        """Checks and keeps the signing certificates a request carries, before its envelopes are stored."""
        if self.verifier is None:
            return  # a plaintext development node has no CA to check them against
        if len(certificates) > MAX_CERTIFICATES:
            raise InvalidRequestError(
                "certificates", f"{len(certificates)} certificates in one request, more than {MAX_CERTIFICATES}"
            )
        for index, der in enumerate(certificates):
            try:
                self.verifier.learn(der)
            except SignatureError as exc:
                raise InvalidRequestError(f"certificates[{index}]", str(exc)) from None
            if self.certificates is not None:
                self.certificates.put(der)

    def admit(
        self, raw: bytes, now: float | None = None, revoked: frozenset[int] = frozenset(), by_reference: bool = False
    ) -> Admitted:
        """Parses and validates an encoded PublishRequest.

        The envelopes are stored as the publisher encoded them (protobuf parsers read the same
        message from them as the validator did). ``by_reference`` gives their places in ``raw``
        (``spans``) instead of the bytes.
        """
        request = self._parse(raw)
        envelopes = request.envelopes
        now = time.time() if now is None else now
        admit = self.validator.admit
        verifier = self.verifier
        verified: list[str | SignatureError | None] = []
        if verifier is not None:
            verifier.revoked = revoked
        if request.certificates:
            self._learn_certificates(request.certificates)
        shared = self._shared(request.batch_signatures)
        spans = field_spans(raw, 1)
        if spans is not None and len(spans) != len(envelopes):
            spans = None
        # Without spans (bytes that are not the usual encoding) each envelope is stored re-encoded.
        encoded = [env.SerializeToString() for env in envelopes] if spans is None else []
        records: list[bytes | InvalidEnvelopeError] = []
        for index, env in enumerate(envelopes):
            size = len(encoded[index]) if spans is None else spans[index][1] - spans[index][0]
            try:
                records.append(admit(env, size, now))
            except InvalidEnvelopeError as exc:
                records.append(exc)
        if verifier is not None:
            # Once validated, the envelopes are needed only for their ids: their digests may take
            # their provenance out instead of copying each (unless stored from them, without spans).
            used: set[bytes] = set()
            verified = verifier.verify_all(envelopes, consume=spans is not None, shared=shared, used=used)
            if shared is not None:
                shared.by_root = {root: sig for root, sig in shared.by_root.items() if root in used}
        out = Admitted(request.batch_id, len(envelopes))
        if shared:
            out.signatures = b"".join(
                length_delimited(TAG_BATCH_SIGNATURES, sig.SerializeToString()) for sig in shared.by_root.values()
            )
        add_id, add_envelope, add_record, add_position = (
            out.ids.append,
            out.envelopes.append,
            out.records.append,
            out.positions.append,
        )
        for index, (env, record) in enumerate(zip(envelopes, records, strict=True)):
            if isinstance(record, InvalidEnvelopeError):
                out.rejections.append((index, env.id[:256], record.field, record.reason, INVALID_ARGUMENT))
                continue
            signer = ""
            if verifier is not None:
                outcome = verified[index]
                if isinstance(outcome, SignatureError):
                    out.rejections.append((index, env.id[:256], "provenance.signature", str(outcome), UNAUTHENTICATED))
                    continue
                signer = outcome or ""
            elif env.provenance.HasField("signature"):
                # A plaintext development node cannot check it, but keeps what a later verifier needs.
                sig = env.provenance.signature
                if is_reference(sig):
                    by_reference_to = shared.by_root.get(sig.batch_root) if shared is not None else None
                    if by_reference_to is None:
                        reason = "it refers to a batch signature the request does not carry (batch_signatures)"
                        out.rejections.append((index, env.id[:256], "provenance.signature", reason, INVALID_ARGUMENT))
                        continue
                    signer = by_reference_to.signer
                else:
                    signer = sig.signer
            out.signers.append(signer)
            add_id(env.id)
            if spans is None:
                add_envelope(encoded[index])
            elif by_reference:
                out.spans += spans[index]
            else:
                start, end = spans[index]
                add_envelope(raw[start:end])
            add_record(record)
            add_position(index)
        out.hashes = id_hashes(out.ids)
        return out

    def relay(self, raw: bytes, revoked: frozenset[int] = frozenset(), records: bytes = b"") -> Admitted:
        """Admits a batch that another node of the network sends over a federation link.

        That node validated every envelope when it entered the network, with the same rules, and
        checked its signature; the link's peer is a gateway whose identity its certificate proves.
        This node checks again what it relies on itself: that the batch and each envelope decode,
        each envelope's size and id, that its kind and region are known (policy, routing and
        selection decide on them), and the signature of each signed envelope; it does not repeat
        the field-by-field validation, which costs several times as much as everything else a
        node does with an envelope it relays. Records are marked relayed.

        ``records`` are the selection records the sending node keeps for the envelopes: where a
        record's kind, severity, status, region and agency are the envelope's, its place and time
        are taken as they are; otherwise (or without them) the record is made here.
        """
        request = self._parse(raw)
        if request.batch_signatures:
            raise InvalidRequestError(
                "batch_signatures", "a federation link sends each envelope with its full signature, not shared ones"
            )
        if request.certificates:
            self._learn_certificates(request.certificates)
        spans = field_spans(raw, 1)
        if spans is None or len(spans) != len(request.envelopes):
            encoded = [env.SerializeToString() for env in request.envelopes]
        else:
            encoded = [raw[start:end] for start, end in spans]
        return self._relay(request.envelopes, encoded, request.batch_id, revoked, records)

    def relay_entries(
        self, deliveries: bytes, batch_id: int, revoked: frozenset[int] = frozenset(), records: bytes = b""
    ) -> Admitted:
        """``relay`` of a range of another node's log sent as its entries (an encoded DeliveryBatch)."""
        try:
            envelopes = [delivery.envelope for delivery in gw.DeliveryBatch.FromString(deliveries).deliveries]
        except DecodeError as exc:
            raise InvalidRequestError("entries", f"not a valid DeliveryBatch: {exc}") from None
        if len(envelopes) > self.max_batch_envelopes:
            raise InvalidRequestError(
                "entries", f"{len(envelopes)} envelopes in one batch, more than {self.max_batch_envelopes}"
            )
        return self._relay(envelopes, _as_sent(deliveries, envelopes), batch_id, revoked, records)

    def _relay(
        self,
        envelopes: Sequence[pb.Envelope],
        encoded: list[bytes],
        batch_id: int,
        revoked: frozenset[int],
        records: bytes,
    ) -> Admitted:
        verified: dict[int, str | SignatureError | None] = {}
        signed = [i for i, env in enumerate(envelopes) if env.provenance.HasField("signature")]
        is_signed = frozenset(signed)
        references = [i for i in signed if is_reference(envelopes[i].provenance.signature)]
        if references:
            # Its batch's signature is not here to keep beside it: a link sends full signatures.
            unusable = SignatureError(
                "it carries only a reference to its batch's signature, which a link does not send"
            )
            verified = dict.fromkeys(references, unusable)
            signed = [i for i in signed if i not in verified]
        if signed and self.verifier is not None:
            self.verifier.revoked = revoked
            verified.update(zip(signed, self.verifier.verify_all([envelopes[i] for i in signed]), strict=True))
        limits = self.validator.limits
        max_bytes, max_id_chars = limits.max_envelope_bytes, limits.max_id_chars
        known_regions = self.validator.regions.codes
        width = RECORD.size
        hinted = len(records) == len(envelopes) * width
        out = Admitted(batch_id, len(envelopes))
        ids, kept, positions, signers = out.ids, out.records, out.positions, out.signers
        add_id, add_record, add_position = ids.append, kept.append, positions.append
        pack = KEY.pack
        keys: list[bytes] = []  # with the sender's records: each kept envelope's record key, to check them
        signed_kept: list[bool] = []
        add_key, add_signed = keys.append, signed_kept.append
        for index, env in enumerate(envelopes):
            # Each field is read once: this runs for every envelope a node relays.
            envelope_id, kind, region, severity, status = env.id, env.kind, env.region, env.severity, env.status
            size = len(encoded[index])
            # What makes an envelope from another node unusable here, each reason named. Its record
            # holds kind, severity and status in a byte each: an unknown value must not reach it.
            if size > max_bytes:
                problem = ("envelope", f"is {size} bytes, more than the limit of {max_bytes}")
            elif not envelope_id or len(envelope_id) > max_id_chars:
                problem = ("id", f"must be 1 to {max_id_chars} characters")
            elif kind not in KINDS:
                problem = ("kind", f"unknown kind {kind}")
            elif region not in known_regions:
                shape = "six-digit GB/T 2260 code" if not region.isdigit() else "known GB/T 2260 region code"
                problem = ("region", f"{region[:20]!r} is not a {shape}")
            elif severity not in SEVERITIES:
                problem = ("severity", f"unknown value {severity}")
            elif status not in STATUSES:
                problem = ("status", f"unknown value {status}")
            else:
                problem = None
            if problem is not None:
                out.rejections.append((index, envelope_id[:256], *problem, INVALID_ARGUMENT))
                continue
            carries_signature = False
            if is_signed:
                carries_signature = index in is_signed
                outcome = verified.get(index)
                if isinstance(outcome, SignatureError):
                    out.rejections.append(
                        (index, envelope_id[:256], "provenance.signature", str(outcome), UNAUTHENTICATED)
                    )
                    continue
                if outcome is None and carries_signature:
                    outcome = env.provenance.signature.signer  # a plaintext development node cannot check it
                signers.append(outcome or "")
            add_id(envelope_id)
            if hinted:
                add_key(pack(kind, severity, status, int(region), env.origin.agency.encode()))
                add_signed(carries_signature)
            else:
                add_record(record_of(env, FLAG_RELAYED))
            add_position(index)
        if hinted and positions:
            out.records = _records_from_hints(records, positions, keys, signed_kept)
            for n in [n for n, record in enumerate(out.records) if not record]:
                out.records[n] = record_of(envelopes[positions[n]], FLAG_RELAYED)
        if not is_signed:
            out.signers = [""] * len(ids)
        out.hashes = id_hashes(ids)
        out.envelopes = encoded if len(positions) == len(encoded) else [encoded[i] for i in positions]
        return out


def _records_from_hints(records: bytes, positions: list[int], keys: list[bytes], signed: list[bool]) -> list[bytes]:
    """The records of the kept envelopes, taken from the sender's where its key (kind, severity,
    status, region, agency) is the envelope's own, with the node's flags; b"" where it is not (the
    caller makes that record itself). Checked and copied for the whole batch at once."""
    width = RECORD.size
    rows = np.frombuffer(records, dtype=np.uint8).reshape(-1, width)[positions]  # a copy, to set flags in
    own = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES)
    agree = (rows[:, :FLAGS_AT] == own[:, :FLAGS_AT]).all(axis=1)
    agree &= (rows[:, FLAGS_AT + 1 : KEY_BYTES] == own[:, FLAGS_AT + 1 :]).all(axis=1)
    rows[:, FLAGS_AT] = np.where(np.array(signed, dtype=np.bool_), FLAG_RELAYED, FLAG_RELAYED | FLAG_UNSIGNED)
    data = rows.tobytes()
    return [
        data[at : at + width] if ok else b"" for at, ok in zip(range(0, len(data), width), agree.tolist(), strict=True)
    ]


def _as_sent(deliveries: bytes, envelopes: list[pb.Envelope]) -> list[bytes]:
    """Each envelope's bytes as the other node sent them (half the cost of encoding them again).

    Only where the entries encode again to exactly the bytes that came: then every entry held its
    envelope once, and the bytes are those the full parse checked. An entry with the envelope field
    twice (which a parse merges) encodes shorter; so does any other encoding but the shortest. Then
    the envelopes are encoded again from the full parse, as they would be without this.
    """
    sent = fed.EntriesAsSent.FromString(deliveries)
    if sent.ByteSize() == len(deliveries) and len(sent.deliveries) == len(envelopes):
        return [entry.envelope for entry in sent.deliveries]
    return [env.SerializeToString() for env in envelopes]


MAX_CERTIFICATES = 16  # per request: the signers of its envelopes, usually one
MAX_BATCH_SIGNATURES = 64  # per request: the signed batches of its envelopes, usually one
INVALID_ARGUMENT = 3  # google.rpc.Code
PERMISSION_DENIED = 7
UNAUTHENTICATED = 16
_PR_SET_PDEATHSIG = 1  # prctl(2)

_worker: Admission | None = None
_shared: mmap.mmap | None = None  # the worker's view of the pool's shared memory
_slot_bytes = 0


@dataclass(frozen=True, slots=True)
class _WorkerSetup:
    agencies: frozenset[str]
    limits: Limits
    max_batch_envelopes: int
    parent: int
    ca_pem: bytes | None
    certificates_dir: Path | None
    shared: _SharedFd | None
    slots: int
    slot_bytes: int


class _SharedFd:
    """A file descriptor handed to a spawned worker at its start (multiprocessing duplicates it for the
    child while it pickles the worker's arguments)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable[[Any], int], tuple[Any]]:
        return _detach, (reduction.DupFd(self.fd),)


def _detach(duplicate: Any) -> int:
    return int(duplicate.detach())


def _start_worker(setup: _WorkerSetup) -> None:
    global _worker, _shared, _slot_bytes  # noqa: PLW0603 - the state of a worker process, set once at its start
    die_with_parent(setup.parent)
    verifier = Verifier(x509.load_pem_x509_certificate(setup.ca_pem)) if setup.ca_pem else None
    store = CertificateStore(setup.certificates_dir) if setup.certificates_dir is not None else None
    validator = Validator(default_table(), agencies=setup.agencies, limits=setup.limits)
    _worker = Admission(validator, setup.max_batch_envelopes, verifier, store)
    if setup.shared is not None:
        fd = cast(int, setup.shared)  # unpickled by _detach
        _shared, _slot_bytes = mmap.mmap(fd, setup.slots * setup.slot_bytes), setup.slot_bytes
        os.close(fd)


def admit_in_worker(raw: bytes, now: float, revoked: frozenset[int]) -> Admitted:
    assert _worker is not None, "admission worker not initialised"
    return _worker.admit(raw, now, revoked, by_reference=True)


def admit_shared(start: int, size: int, now: float, revoked: frozenset[int]) -> Admitted | int:
    """Admits the request the main process put in shared memory at ``start``; the result goes back
    the same way (its pickled size is returned) unless it does not fit in the request's slot."""
    assert _worker is not None, "admission worker not initialised"
    assert _shared is not None, "admission worker has no shared memory"
    admitted = _worker.admit(_shared[start : start + size], now, revoked, by_reference=True)
    result = pickle.dumps(admitted, pickle.HIGHEST_PROTOCOL)
    if len(result) > _slot_bytes:
        return admitted
    _shared[start : start + len(result)] = result
    return len(result)


def take_envelopes(admitted: Admitted, raw: bytes) -> None:
    """Cuts the envelopes a worker admitted by reference from the request's bytes."""
    spans = admitted.spans
    if spans:
        admitted.envelopes = [raw[spans[i] : spans[i + 1]] for i in range(0, len(spans), 2)]
        admitted.spans = []


def enforce(
    admitted: Admitted, decide: Callable[[int, str, str], Decision], peer: str, forwarder: bool
) -> list[tuple[str, str, str]]:
    """Moves the envelopes ``decide`` denies (by kind, region, origin agency) from admitted to refused;
    also those whose policy wants a signature they lack, and those signed by another identity than
    the peer ``peer`` unless it is a ``forwarder`` (a gateway acting for others).

    Returns (id, field, reason) of each denial. A decision depends only on a record's leading
    fields (``KEY_BYTES``) and the signer, and a batch usually repeats one or a few of those: each
    distinct pair is decided once, and a batch allowed as a whole is not walked again.
    """
    keys = [record[:KEY_BYTES] for record in admitted.records]
    decisions: dict[tuple[bytes, str], Decision] = {}
    for key, signer in set(zip(keys, admitted.signers, strict=True)):
        kind, _, _, region, agency = KEY.unpack(key)
        decision = decide(kind, f"{region:06d}", agency.rstrip(b"\0").decode())
        if decision.allowed and decision.signature_required and not signer:
            decision = Decision(
                allowed=False, reason="the policy requires a signature here", field="provenance.signature"
            )
        elif decision.allowed and signer and signer != peer and not forwarder:
            decision = Decision(
                allowed=False,
                reason=f"signed by {signer}, sent by {peer}: only a gateway may forward what others signed",
                field="provenance.signature",
            )
        decisions[key, signer] = decision
    if all(decision.allowed for decision in decisions.values()):
        return []
    keep: list[int] = []
    denied: list[tuple[str, str, str]] = []
    for i, pair in enumerate(zip(keys, admitted.signers, strict=True)):
        decision = decisions[pair]
        if decision.allowed:
            keep.append(i)
            continue
        envelope_id = admitted.ids[i]
        admitted.rejections.append(
            (admitted.positions[i], envelope_id, decision.field, decision.reason, PERMISSION_DENIED)
        )
        denied.append((envelope_id, decision.field, decision.reason))
    if denied:
        admitted.rejections.sort()
        admitted.ids = [admitted.ids[i] for i in keep]
        admitted.hashes = [admitted.hashes[i] for i in keep]
        admitted.envelopes = [admitted.envelopes[i] for i in keep]
        admitted.records = [admitted.records[i] for i in keep]
        admitted.positions = [admitted.positions[i] for i in keep]
        admitted.signers = [admitted.signers[i] for i in keep]
    return denied


def worker_ready() -> bool:
    """Whether the worker has started (the pool waits for each at its start)."""
    return _worker is not None


SLOT_BYTES = 4 << 20  # shared memory per request in flight; larger requests go through the pipe


class AdmissionPool:
    """Admission workers, and shared memory that carries requests to them and results back.

    A request of half a megabyte sent through the pool's pipe crosses it in 64 KiB pieces, each
    written by a feeder thread that needs the interpreter lock while the event loop holds it, so
    the worker waited more than it worked. Copying the request into a slot of shared memory takes
    one memcpy; the pipe then carries only the slot's place. When every slot is taken, a request
    waits for one (more in flight would only queue for the workers); a request larger than a slot,
    or every request where the system has no memfd_create, goes through the pipe.
    """

    def __init__(
        self,
        workers: int,
        validator: Validator,
        max_batch_envelopes: int,
        ca_pem: bytes | None = None,
        certificates_dir: Path | None = None,
        *,
        slots: int = 0,
        slot_bytes: int = SLOT_BYTES,
    ) -> None:
        self.workers = workers
        self.slots = slots or 4 * workers
        self.slot_bytes = slot_bytes
        self._memory: mmap.mmap | None = None
        self._free: asyncio.Queue[int] = asyncio.Queue()
        shared: _SharedFd | None = None
        fd = -1
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("yiwang-admission")
            os.ftruncate(fd, self.slots * slot_bytes)  # pages are taken only when written
            self._memory = mmap.mmap(fd, self.slots * slot_bytes)
            for i in range(self.slots):
                self._free.put_nowait(i * slot_bytes)
            shared = _SharedFd(fd)
        setup = _WorkerSetup(
            validator.agencies,
            validator.limits,
            max_batch_envelopes,
            os.getpid(),
            ca_pem,
            certificates_dir,
            shared,
            self.slots,
            slot_bytes,
        )
        self.executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),  # not forked: the parent runs gRPC threads
            initializer=_start_worker,
            initargs=(setup,),
        )
        self._fd = fd

    async def start(self) -> None:
        """Starts every worker (each gets its copy of the shared memory's descriptor as it starts)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.executor, worker_ready) for _ in range(self.workers)))
        if self._fd >= 0:
            os.close(self._fd)  # the mapping stays; the workers hold their own
            self._fd = -1

    async def admit(self, raw: bytes, now: float, revoked: frozenset[int]) -> Admitted:
        loop = asyncio.get_running_loop()
        memory = self._memory
        if memory is None or len(raw) > self.slot_bytes:
            admitted: Admitted = await loop.run_in_executor(self.executor, admit_in_worker, raw, now, revoked)
        else:
            start = await self._free.get()
            memory[start : start + len(raw)] = raw
            future = self.executor.submit(admit_shared, start, len(raw), now, revoked)
            try:
                result = await asyncio.wrap_future(future)
            except BaseException:
                # A worker may still read the slot, or write to it: it is free again only when done.
                future.add_done_callback(lambda _: self._release(loop, start))
                raise
            if isinstance(result, int):
                result = pickle.loads(memory[start : start + result])  # noqa: S301 - written by our own worker
            admitted = result
            self._free.put_nowait(start)
        take_envelopes(admitted, raw)
        return admitted

    def _release(self, loop: asyncio.AbstractEventLoop, start: int) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(self._free.put_nowait, start)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._memory is not None:
            self._memory.close()
            self._memory = None


def die_with_parent(parent: int) -> None:
    """Ties a helper process's life to the node's.

    Linux ends it when the node dies, even by SIGKILL, so no orphan is left behind; and it ignores
    Ctrl-C, which the terminal sends to the whole process group: the node decides when it stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the node died before the request above took effect
        os._exit(1)
