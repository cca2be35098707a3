"""Shared batch signatures: a batch's signature sent and kept once, each envelope referring to it,
and every reader that does not ask for that form given each envelope with its full signature."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.admission import Admission
from gateway.errors import InvalidRequestError
from gateway.jetstream_log import JetStreamLog, JetStreamSettings
from gateway.log import AppendBatch
from gateway.node import Node
from gateway.pki import Authority, Role
from gateway.regions import default_table
from gateway.selection import record_of
from gateway.signing import SharedSignatures, SignatureError, Verifier, merkle_levels
from gateway.sqlite_log import SqliteLog
from gateway.validation import Validator
from tests import factories
from tests.conftest import client_as, issued_signer, running_tls_node
from tests.nats_cluster import NatsCluster

DOMAIN = "yjt.henan.gov.cn"
WATER = f"spiffe://{DOMAIN}/410105/water/department/jinshui-water"
ACCEPTED = gw.PublishResult.ACCEPTED
REJECTED = gw.PublishResult.REJECTED


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    ca = Authority.init(tmp_path_factory.mktemp("shared") / "pki", trust_domain=DOMAIN)
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.DEPARTMENT, "410105", "jinshui-water", "water"))
    ca.issue(ca.identity(Role.PLATFORM, "410000", "province-desk", "emergency"))
    return ca


def observations(count: int, prefix: str = "obs") -> list[pb.Envelope]:
    return [
        factories.observation(envelope_id=f"{prefix}-{i}", region="410105", agency="water", value=i)
        for i in range(count)
    ]


def verifier_of(ca: Authority) -> Verifier:
    verifier = Verifier(ca.ca_cert)
    verifier.learn(issued_signer(ca, "jinshui-water").certificate_der)
    return verifier


def copies(envelopes: list[pb.Envelope]) -> list[pb.Envelope]:
    return [pb.Envelope.FromString(env.SerializeToString()) for env in envelopes]


# -- signing and verifying --------------------------------------------------------------------------


def test_a_shared_signature_expands_to_the_very_signature_each_envelope_would_carry(pki: Authority) -> None:
    signer = issued_signer(pki, "jinshui-water")
    for count in (1, 2, 7, 130):  # odd levels, and indexes past one varint byte
        full = observations(count)
        shared_form = copies(full)
        signer.sign_batch(full)
        shared = signer.sign_batch(shared_form, shared=True)
        sent = shared_form[0].provenance.signature
        assert {field.name for field, _ in sent.ListFields()} <= {"batch_root", "batch_index"}
        assert len(shared.batch_leaves) == count
        signatures = SharedSignatures([shared])
        assert all(signatures.expand(env) for env in shared_form)
        # Ed25519 signs deterministically: the same bytes as the envelope signed with its own proof.
        assert [env.SerializeToString() for env in shared_form] == [env.SerializeToString() for env in full]
        verifier = verifier_of(pki)
        assert {verifier.verify(env) for env in shared_form} == {WATER}


def test_each_envelope_that_refers_to_a_shared_signature_is_judged_alone(pki: Authority) -> None:
    signer = issued_signer(pki, "jinshui-water")
    faults: dict[str, Callable[[list[pb.Envelope]], None]] = {
        "content": lambda b: setattr(b[129].observation.measurements[0], "value", 99.0),
        "index": lambda b: setattr(b[129].provenance.signature, "batch_index", 128),
        "index past the batch": lambda b: setattr(b[129].provenance.signature, "batch_index", 4000),
        "extra field": lambda b: setattr(b[129].provenance.signature, "signer", WATER),
    }
    for consume in (False, True):
        envelopes = observations(130)
        shared = SharedSignatures([signer.sign_batch(envelopes, shared=True)])
        used: set[bytes] = set()
        assert verifier_of(pki).verify_all(envelopes, consume=consume, shared=shared, used=used) == [WATER] * 130
        assert used == set(shared.by_root)
        for name, spoil in faults.items():
            envelopes = observations(130)
            shared = SharedSignatures([signer.sign_batch(envelopes, shared=True)])
            spoil(envelopes)
            results = verifier_of(pki).verify_all(envelopes, consume=consume, shared=shared)
            assert {i for i, outcome in enumerate(results) if outcome != WATER} == {129}, name
            assert isinstance(results[129], SignatureError), name


def test_a_request_may_mix_shared_full_and_unsigned_envelopes(pki: Authority) -> None:
    signer = issued_signer(pki, "jinshui-water")
    first, second, full = observations(5, "a"), observations(4, "b"), observations(3, "c")
    shared = [signer.sign_batch(first, shared=True), signer.sign_batch(second, shared=True)]
    signer.sign_batch(full)
    unsigned = factories.observation(envelope_id="unsigned", region="410105", agency="water")
    orphans = observations(2, "d")
    signer.sign_batch(orphans, shared=True)  # its batch's signature is not sent
    envelopes = [*first[:2], *full, unsigned, *second, *orphans, *first[2:]]
    results = verifier_of(pki).verify_all(envelopes, shared=SharedSignatures(shared))
    assert results[:5] == [WATER] * 5
    assert results[5] is None
    assert results[6:10] == [WATER] * 4
    assert all(isinstance(outcome, SignatureError) for outcome in results[10:12])
    assert "which the message does not carry" in str(results[10])
    assert results[12:] == [WATER] * 3


def test_a_shared_signature_whose_leaves_or_value_are_wrong_fails_its_envelopes(pki: Authority) -> None:
    signer = issued_signer(pki, "jinshui-water")
    envelopes = observations(6)
    shared = signer.sign_batch(envelopes, shared=True)
    shared.batch_leaves[2] = b"\x07" * 32
    for sent in (envelopes, envelopes[1:]):  # the whole batch, and part of it
        results = verifier_of(pki).verify_all(copies(sent), shared=SharedSignatures([shared]))
        assert all("batch_leaves do not lead to its batch_root" in str(outcome) for outcome in results)
    shared = signer.sign_batch(envelopes, shared=True)
    shared.value = bytes(64)
    for sent in (envelopes, envelopes[1:]):
        results = verifier_of(pki).verify_all(copies(sent), shared=SharedSignatures([shared]))
        assert all("does not verify" in str(outcome) for outcome in results)


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda s: s.ClearField("batch_leaves"), "needs the batch's leaves"),
        (lambda s: s.batch_leaves.append(b"short"), "needs the batch's leaves"),
        (lambda s: setattr(s, "algorithm", "ed25519"), "not ed25519-merkle"),
        (lambda s: setattr(s, "batch_root", b"\1"), "32-byte batch_root"),
        (lambda s: s.batch_proof.append(b"\0" * 32), "no batch_proof or batch_index"),
    ],
)
def test_a_malformed_shared_signature_refuses_the_request_and_says_why(
    pki: Authority, spoil: Callable[[pb.Signature], None], reason: str
) -> None:
    signer = issued_signer(pki, "jinshui-water")
    envelopes = observations(3)
    shared = signer.sign_batch(envelopes, shared=True)
    spoil(shared)
    request = gw.PublishRequest(envelopes=envelopes, batch_signatures=[shared], certificates=[signer.certificate_der])
    admission = Admission(Validator(default_table()), 1000, verifier_of(pki))
    with pytest.raises(InvalidRequestError, match=reason) as caught:
        admission.admit(request.SerializeToString())
    assert caught.value.field == "batch_signatures"


def test_an_empty_batch_is_refused_not_looped_over(pki: Authority) -> None:
    with pytest.raises(SignatureError, match="no envelopes"):
        merkle_levels([])
    with pytest.raises(SignatureError, match="no envelopes"):
        issued_signer(pki, "jinshui-water").sign_batch([], shared=True)


def test_a_plaintext_node_keeps_shared_signatures_and_refuses_a_reference_without_one(pki: Authority) -> None:
    signer = issued_signer(pki, "jinshui-water")
    carried, orphans = observations(3, "carried"), observations(2, "orphan")
    shared = signer.sign_batch(carried, shared=True)
    signer.sign_batch(orphans, shared=True)
    request = gw.PublishRequest(envelopes=[*carried, *orphans], batch_signatures=[shared])
    admitted = Admission(Validator(default_table()), 1000).admit(request.SerializeToString())  # no CA to check
    assert admitted.ids == [env.id for env in carried]
    assert admitted.signers == [WATER] * 3
    assert [(position, field) for position, _, field, _, _ in admitted.rejections] == [
        (3, "provenance.signature"),
        (4, "provenance.signature"),
    ]
    assert list(gw.DeliveryBatch.FromString(admitted.signatures).batch_signatures) == [shared]


def test_a_bare_reference_cannot_be_verified_alone_and_says_so(pki: Authority) -> None:
    envelopes = observations(2)
    issued_signer(pki, "jinshui-water").sign_batch(envelopes, shared=True)
    with pytest.raises(SignatureError, match="only a reference to its batch's signature"):
        verifier_of(pki).verify(envelopes[0])


def test_admission_keeps_only_the_shared_signatures_an_admitted_envelope_uses(pki: Authority) -> None:
    signer = issued_signer(pki, "jinshui-water")
    kept, spoiled = observations(4, "kept"), observations(3, "spoiled")
    shared = [signer.sign_batch(kept, shared=True), signer.sign_batch(spoiled, shared=True)]
    shared[1].value = bytes(64)
    request = gw.PublishRequest(envelopes=[*kept, *spoiled], batch_signatures=shared)
    admitted = Admission(Validator(default_table()), 1000, verifier_of(pki)).admit(request.SerializeToString())
    assert admitted.ids == [env.id for env in kept]
    assert [code for *_, code in admitted.rejections] == [16] * 3
    assert list(gw.DeliveryBatch.FromString(admitted.signatures).batch_signatures) == [shared[0]]


# -- a node ---------------------------------------------------------------------------------------


@pytest.fixture
async def node(pki: Authority, tmp_path: Path) -> AsyncIterator[Node]:
    async with running_tls_node(pki, tmp_path / "data", limits={"admission_workers": 1}) as running:
        yield running


async def publish_shared(
    pki: Authority, node: Node, envelopes: list[pb.Envelope], spoil: Callable[[list[pb.Envelope]], None] | None = None
) -> gw.PublishReply:
    signer = issued_signer(pki, "jinshui-water")
    shared = signer.sign_batch(envelopes, shared=True)
    if spoil is not None:
        spoil(envelopes)
    async with client_as(pki, node, "jinshui-water") as water:
        return await water.publish(envelopes, certificates=[signer.certificate_der], batch_signatures=[shared])


async def subscribed(pki: Authority, node: Node, request: gw.SubscribeRequest, count: int) -> list[gw.DeliveryBatch]:
    """The delivery batches of a subscription from the oldest entry until ``count`` envelopes came."""
    request.position = gw.OLDEST
    batches = []
    async with client_as(pki, node, "province-desk") as desk:
        call = desk.subscribe(request)
        got = 0
        async for batch in call:
            batches.append(batch)
            got += len(batch.deliveries)
            if got >= count:
                break
        call.cancel()
    return batches


async def test_the_node_keeps_a_shared_signature_once_and_gives_every_reader_what_it_asked_for(
    node: Node, pki: Authority, tmp_path: Path
) -> None:
    envelopes = observations(300)

    def spoil(sent: list[pb.Envelope]) -> None:
        sent[100].observation.measurements[0].value = -1.0  # altered after signing

    reply = await publish_shared(pki, node, envelopes, spoil)  # large enough for the admission pool
    assert [r.outcome for r in reply.results].count(ACCEPTED) == 299
    assert (reply.results[100].outcome, reply.results[100].code) == (REJECTED, 16)
    assert "batch_index 100 (altered)" in reply.results[100].reason
    verifier = verifier_of(pki)
    ids = [env.id for i, env in enumerate(envelopes) if i != 100]

    # Get and Query give each envelope its full signature, which verifies alone.
    async with client_as(pki, node, "province-desk") as desk:
        got = await desk.get([ids[0], ids[250]])
        found = [d.envelope async for d in desk.query_all(gw.QueryRequest(page_size=120))]
    assert [verifier.verify(d.envelope) for d in got.deliveries] == [WATER] * 2
    assert [env.id for env in found] == ids
    assert {verifier.verify(env) for env in found} == {WATER}

    # A subscriber gets full signatures unless it asks for the shared form.
    full = await subscribed(pki, node, gw.SubscribeRequest(max_batch=100), 299)
    assert all(not batch.batch_signatures for batch in full)
    assert {verifier.verify(d.envelope) for batch in full for d in batch.deliveries} == {WATER}
    shared = await subscribed(pki, node, gw.SubscribeRequest(shared_signatures=True), 299)
    delivered = [d.envelope for batch in shared for d in batch.deliveries]
    assert [env.id for env in delivered] == ids
    assert all(not env.provenance.signature.value for env in delivered)  # references only
    signatures = SharedSignatures([s for batch in shared for s in batch.batch_signatures])
    assert len(signatures.by_root) == 1
    assert set(verifier.verify_all(delivered, shared=signatures)) == {WATER}

    # A subscriber that sees part of a batch can still check each envelope it got, by the leaves.
    some = gw.SubscribeRequest(shared_signatures=True)
    some.filter.kinds.append(pb.OBSERVATION)
    part = await subscribed(pki, node, some, 1)
    assert part[0].batch_signatures
    first = [d.envelope for d in part[0].deliveries][:5]
    assert set(verifier.verify_all(first, shared=SharedSignatures(part[0].batch_signatures))) == {WATER}


async def test_a_shared_signature_outlives_a_restart(pki: Authority, tmp_path: Path) -> None:
    envelopes = observations(20)
    async with running_tls_node(pki, tmp_path / "data") as node:
        reply = await publish_shared(pki, node, envelopes)
        assert {r.outcome for r in reply.results} == {ACCEPTED}
    async with running_tls_node(pki, tmp_path / "data") as node, client_as(pki, node, "province-desk") as desk:
        got = await desk.get([env.id for env in envelopes])
    assert {verifier_of(pki).verify(d.envelope) for d in got.deliveries} == {WATER}


async def test_a_reference_to_a_signature_the_request_lacks_is_refused_alone(node: Node, pki: Authority) -> None:
    signer = issued_signer(pki, "jinshui-water")
    carried, orphans = observations(3, "carried"), observations(2, "orphan")
    shared = signer.sign_batch(carried, shared=True)
    signer.sign_batch(orphans, shared=True)
    async with client_as(pki, node, "jinshui-water") as water:
        reply = await water.publish(
            [*carried, *orphans], certificates=[signer.certificate_der], batch_signatures=[shared]
        )
        assert [r.outcome for r in reply.results] == [ACCEPTED] * 3 + [REJECTED] * 2
        assert "which the message does not carry (batch_signatures)" in reply.results[3].reason
        bad = signer.sign_batch(observations(2, "bad"), shared=True)
        bad.ClearField("batch_leaves")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await water.publish(observations(1, "x"), batch_signatures=[bad])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch_signatures" in (caught.value.details() or "")


# -- logs -----------------------------------------------------------------------------------------


async def test_an_embedded_log_of_the_first_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    log = await SqliteLog.open(path, node_id="n", fsync=False)
    env = factories.observation()
    batch = AppendBatch()
    batch.add(env.id, env.SerializeToString(), record_of(env))
    await log.append(batch)
    await log.close()
    with sqlite3.connect(path) as con:  # as the first schema left it
        con.execute("ALTER TABLE batches DROP COLUMN signatures")
        con.execute("UPDATE meta SET value = 1 WHERE key = 'schema'")
    con.close()
    log = await SqliteLog.open(path, node_id="n", fsync=False)
    try:
        (stored,) = await log.read(1, 10)
        assert stored.ids == (env.id,)
        assert stored.signatures == b""
    finally:
        await log.close()
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (2,)
    con.close()


async def test_a_jetstream_log_keeps_each_envelope_with_its_full_signature(pki: Authority, tmp_path: Path) -> None:
    signer = issued_signer(pki, "jinshui-water")
    envelopes = observations(9)
    shared = signer.sign_batch(envelopes, shared=True)
    request = gw.PublishRequest(envelopes=envelopes, batch_signatures=[shared])
    admitted = Admission(Validator(default_table()), 1000, verifier_of(pki)).admit(request.SerializeToString())
    assert admitted.signatures
    cluster = NatsCluster(tmp_path / "nats", size=1)
    cluster.start()
    try:
        settings = JetStreamSettings(
            servers=tuple(cluster.urls), stream="SHARED", replicas=1, index_dir=tmp_path / "ix"
        )
        log = await JetStreamLog.open(settings, node_id="henan-province")
        try:
            await log.append(AppendBatch(admitted.ids, admitted.envelopes, admitted.records, None, admitted.signatures))
            stored = await log.read(1, 100)
        finally:
            await log.close()
    finally:
        cluster.stop()
    kept = [d.envelope for batch in stored for d in batch.deliveries(list(range(batch.count)))]
    assert [env.id for env in kept] == [env.id for env in envelopes]
    assert {verifier_of(pki).verify(env) for env in kept} == {WATER}
