"""Signed envelopes: signing, verification anywhere later, and the node's check on entry."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.node import Node
from gateway.pki import Authority, Role
from gateway.signing import (
    SignatureError,
    Signer,
    Verifier,
    content_digest,
    merkle_proof,
    merkle_root_from,
    merkle_tree,
)
from tests import factories
from tests.conftest import client_as, issued_signer, lapsed_certificate, running_tls_node

DOMAIN = "yjt.henan.gov.cn"
ACCEPTED = gw.PublishResult.ACCEPTED
REJECTED = gw.PublishResult.REJECTED


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    ca = Authority.init(tmp_path_factory.mktemp("signing") / "pki", trust_domain=DOMAIN)
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.GATEWAY, "410100", "zhengzhou-city", "zhengzhou-city"))
    ca.issue(ca.identity(Role.DEPARTMENT, "410100", "zz-qxj", "meteorology"))
    ca.issue(ca.identity(Role.DEPARTMENT, "410105", "jinshui-water", "water"))
    return ca


def met_alert(envelope_id: str = "warning-1") -> pb.Envelope:
    return factories.alert(envelope_id=envelope_id, region="410102")


def test_a_signature_survives_hops_and_catches_any_change(pki: Authority) -> None:
    env = met_alert()
    issued_signer(pki, "zz-qxj").sign(env)
    verifier = Verifier(pki.ca_cert)
    assert verifier.verify(env) == f"spiffe://{DOMAIN}/410100/meteorology/department/zz-qxj"
    env.provenance.hops.add(node="zhengzhou-city").received_at.GetCurrentTime()
    env.provenance.hops.add(node="henan-province")
    assert verifier.verify(pb.Envelope.FromString(env.SerializeToString()))  # and after a trip on the wire
    for change in (
        lambda e: setattr(e.alert.infos[0], "headline", "解除预警"),
        lambda e: setattr(e, "severity", pb.RED),
        lambda e: setattr(e, "id", "warning-2"),  # a replay under a new id
        lambda e: e.attributes.__setitem__("x", "y"),
        lambda e: setattr(e.provenance, "original_format", "cap-1.2"),
    ):
        altered = pb.Envelope()
        altered.CopyFrom(env)
        change(altered)
        with pytest.raises(SignatureError, match="does not match the content"):
            verifier.verify(altered)


def test_the_content_digest_leaves_out_hops_and_signature_and_nothing_else() -> None:
    base = met_alert()
    variants = []
    for change in (
        lambda e: e.provenance.SetInParent(),  # an empty provenance, as a trip on the wire may leave it
        lambda e: e.provenance.hops.add(node="henan-province"),
        lambda e: e.provenance.signature.SetInParent(),
        lambda e: setattr(e.provenance.signature, "signer", "someone"),
    ):
        env = pb.Envelope()
        env.CopyFrom(base)
        change(env)
        variants.append(content_digest(pb.Envelope.FromString(env.SerializeToString())))
        variants.append(content_digest(env))
    assert set(variants) == {content_digest(base)}
    formatted = pb.Envelope()
    formatted.CopyFrom(base)
    formatted.provenance.original_format = "cap-1.2"
    with_hop = pb.Envelope()
    with_hop.CopyFrom(formatted)
    with_hop.provenance.hops.add(node="henan-province")
    assert content_digest(formatted) == content_digest(with_hop) != content_digest(base)


def test_signer_must_be_the_certificate_identity_of_this_ca(pki: Authority, tmp_path: Path) -> None:
    env = met_alert()
    issued_signer(pki, "zz-qxj").sign(env)
    forged = pb.Envelope()
    forged.CopyFrom(env)
    forged.provenance.signature.signer = f"spiffe://{DOMAIN}/410100/emergency/department/zz-yjj"
    with pytest.raises(SignatureError, match="is not the identity of its certificate"):
        Verifier(pki.ca_cert).verify(forged)
    other = Authority.init(tmp_path / "other", trust_domain=DOMAIN)
    other.issue(other.identity(Role.DEPARTMENT, "410100", "zz-qxj", "meteorology"))
    impostor = met_alert()
    issued_signer(other, "zz-qxj").sign(impostor)
    with pytest.raises(SignatureError, match="not issued by this network's CA"):
        Verifier(pki.ca_cert).verify(impostor)
    with pytest.raises(SignatureError, match="not signed"):
        Verifier(pki.ca_cert).verify(met_alert())


def test_revoked_and_expired_signers_fail(pki: Authority) -> None:
    env = met_alert()
    issued_signer(pki, "zz-qxj").sign(env)
    serial = x509.load_der_x509_certificate(env.provenance.signature.certificate).serial_number
    with pytest.raises(SignatureError, match="revoked"):
        Verifier(pki.ca_cert, revoked=frozenset({serial})).verify(env)
    key = ed25519.Ed25519PrivateKey.generate()
    identity = pki.identity(Role.DEPARTMENT, "410100", "lapsed", "meteorology")
    lapsed = met_alert()
    Signer(key, lapsed_certificate(pki, identity, key.public_key())).sign(lapsed)
    with pytest.raises(SignatureError, match="expired"):
        Verifier(pki.ca_cert).verify(lapsed)


@given(st.integers(1, 40))
def test_merkle_proofs_lead_to_the_root(count: int) -> None:
    digests = [bytes([i]) * 32 for i in range(count)]
    levels = merkle_tree(digests)
    for index, digest in enumerate(digests):
        assert merkle_root_from(digest, index, merkle_proof(levels, index)) == levels[-1][0]


def test_a_batch_signature_verifies_each_envelope_alone(pki: Authority) -> None:
    envelopes = [factories.observation(region="410105", agency="water", value=90 + i) for i in range(13)]
    water = issued_signer(pki, "jinshui-water")
    water.sign_batch(envelopes)
    assert not envelopes[0].provenance.signature.certificate  # named by hash, sent once per request
    with pytest.raises(SignatureError, match="unknown here"):
        Verifier(pki.ca_cert).verify(envelopes[0])
    verifier = Verifier(pki.ca_cert, certificates={water.certificate_sha256: water.certificate_der}.get)
    for env in envelopes:
        alone = pb.Envelope.FromString(env.SerializeToString())
        assert verifier.verify(alone).endswith("/jinshui-water")
    envelopes[5].observation.measurements[0].value = 1.0
    with pytest.raises(SignatureError, match="not the one the batch signature covers"):
        verifier.verify(envelopes[5])


def water_batches(pki: Authority) -> tuple[Verifier, Callable[[int], list[pb.Envelope]]]:
    """A verifier that knows the water department's signing certificate, and a maker of batches of
    water-level observations that department signs with one signature each."""
    water = issued_signer(pki, "jinshui-water")
    verifier = Verifier(pki.ca_cert)
    verifier.learn(water.certificate_der)

    def batch(count: int) -> list[pb.Envelope]:
        envelopes = [factories.observation(region="410105", agency="water", value=i) for i in range(count)]
        water.sign_batch(envelopes)
        return envelopes

    return verifier, batch


def test_a_request_is_verified_whole_and_each_fault_is_named(pki: Authority) -> None:
    verifier, batch = water_batches(pki)
    identity = f"spiffe://{DOMAIN}/410105/water/department/jinshui-water"

    whole = batch(9)
    assert verifier.verify_all(whole) == [identity] * 9
    assert verifier.verify_all(whole[2:5]) == [identity] * 3  # part of a batch: each proves itself

    single = met_alert("single")
    issued_signer(pki, "zz-qxj").sign(single)
    unsigned = factories.observation(envelope_id="unsigned", region="410105", agency="water")
    altered, bad_path, twice = batch(9), batch(9), batch(9)
    altered[4].observation.measurements[0].value = 99.0
    bad_path[6].provenance.signature.batch_proof[1] = b"\x07" * 32  # content intact, path wrong
    twice[3].provenance.signature.batch_index = 5  # two envelopes claim place 5
    results = verifier.verify_all([single, unsigned, *altered, *bad_path, *twice])
    assert results[:2] == [f"spiffe://{DOMAIN}/410100/meteorology/department/zz-qxj", None]

    def faults(outcomes: list[str | SignatureError | None]) -> dict[int, str]:
        return {i: str(o) for i, o in enumerate(outcomes) if isinstance(o, SignatureError)}

    assert faults(results[2:11]).keys() == {4}
    assert "not the one the batch signature covers" in faults(results[2:11])[4]
    assert faults(results[11:20]).keys() == {6}  # stored, it could not be verified alone later
    assert "batch_proof is not the path of batch_index 6" in faults(results[11:20])[6]
    assert faults(results[20:29]).keys() == {3}  # the impostor in place 5 fails its own proof
    assert all(o == identity for i, o in enumerate(results[11:29]) if i not in (6, 12))


def test_a_whole_batch_with_one_fault_is_judged_envelope_by_envelope(pki: Authority) -> None:
    """A request that is one whole signed batch is checked at once; one fault anywhere in it sends
    it to the envelope-by-envelope check, which names the faulty envelope and passes the others."""
    verifier, batch = water_batches(pki)
    identity = f"spiffe://{DOMAIN}/410105/water/department/jinshui-water"

    for count in (1, 2, 7, 8, 130, 300):  # odd levels, and indexes past one varint byte
        assert verifier.verify_all(batch(count)) == [identity] * count
    faults: dict[str, Callable[[list[pb.Envelope]], None]] = {
        "content": lambda b: setattr(b[129].observation.measurements[0], "value", 99.0),
        "proof": lambda b: b[129].provenance.signature.batch_proof.__setitem__(0, b"\x07" * 32),
        "index": lambda b: setattr(b[129].provenance.signature, "batch_index", 128),
        "extra field": lambda b: setattr(b[129].provenance.signature, "certificate", b"x"),
        "hop": lambda b: b[129].provenance.hops.append(pb.Hop(node="somewhere")),
    }
    for (name, spoil), consume in itertools.product(faults.items(), (False, True)):
        envelopes = batch(130)
        spoil(envelopes)
        sent = [env.SerializeToString() for env in envelopes]
        results = verifier.verify_all(envelopes, consume=consume)
        wrong = {i for i, outcome in enumerate(results) if outcome != identity}
        assert wrong == (set() if name == "hop" else {129}), name  # hops are not signed content
        if name != "hop":
            assert isinstance(results[129], SignatureError), name
            # the general path judged the envelopes as they came, whatever the whole check consumed
            assert [env.SerializeToString() for env in envelopes] == sent, name


def test_consuming_a_whole_batch_takes_only_the_provenance_out(pki: Authority) -> None:
    """An admission worker lets the check of a whole batch clear the provenance of its copies:
    the verdicts are the same, and everything but the provenance is left as it was."""
    verifier, batch = water_batches(pki)
    envelopes = batch(40)
    envelopes[7].provenance.original_format = "SL 651"  # signed content: kept, and its digest copies
    issued_signer(pki, "jinshui-water").sign_batch(envelopes)
    expected = verifier.verify_all([pb.Envelope.FromString(env.SerializeToString()) for env in envelopes])
    assert verifier.verify_all(envelopes, consume=True) == expected
    assert all(isinstance(outcome, str) for outcome in expected)
    assert [env.HasField("provenance") for env in envelopes] == [i == 7 for i in range(40)]
    assert envelopes[7].provenance.original_format == "SL 651"
    assert [env.observation.measurements[0].value for env in envelopes] == list(range(40))


# -- the node checks on entry ---------------------------------------------------------------------


def signed_warnings_policy(folder: Path) -> Path:
    """The shipped policy, with signatures required on warnings."""
    shipped = (Path(__file__).resolve().parent.parent / "gateway" / "data" / "default-policy.toml").read_text()
    required = 'kinds = ["ALERT"]\norigin = "$own"\nsignatures = "required"'
    policy = folder / "policy.toml"
    policy.write_text(shipped.replace('kinds = ["ALERT"]\norigin = "$own"', required), encoding="utf-8")
    return policy


@pytest.fixture
async def node(pki: Authority, tmp_path: Path) -> AsyncIterator[Node]:
    policy = {"file": str(signed_warnings_policy(tmp_path))}
    async with running_tls_node(pki, tmp_path / "data", limits={"admission_workers": 1}, policy=policy) as running:
        yield running


async def test_the_node_verifies_on_entry(node: Node, pki: Authority) -> None:
    good = met_alert("signed")
    issued_signer(pki, "zz-qxj").sign(good)
    tampered = met_alert("tampered")
    issued_signer(pki, "zz-qxj").sign(tampered)
    tampered.alert.infos[0].headline = "altered on the way"
    unsigned = met_alert("unsigned")
    async with client_as(pki, node, "zz-qxj") as met:
        reply = await met.publish([good, tampered, unsigned])
    assert [(r.id, r.outcome, r.code, r.field) for r in reply.results] == [
        ("signed", ACCEPTED, 0, ""),
        ("tampered", REJECTED, 16, "provenance.signature"),
        ("unsigned", REJECTED, 7, "provenance.signature"),
    ]
    assert "requires a signature" in reply.results[2].reason


async def test_only_gateways_forward_what_others_signed(node: Node, pki: Authority) -> None:
    theirs = factories.observation(envelope_id="theirs", region="410105", agency="water")
    issued_signer(pki, "zz-qxj").sign(theirs)  # signed by the weather bureau, sent by the water bureau
    async with client_as(pki, node, "jinshui-water") as water:
        reply = await water.publish([theirs])
    assert reply.results[0].outcome == REJECTED
    assert "only a gateway may forward" in reply.results[0].reason
    forwarded = met_alert("forwarded")
    issued_signer(pki, "zz-qxj").sign(forwarded)
    async with client_as(pki, node, "zhengzhou-city") as city:
        reply = await city.publish([forwarded])
    assert reply.results[0].outcome == ACCEPTED


async def test_batch_signed_telemetry_goes_through_the_worker_pool(node: Node, pki: Authority) -> None:
    envelopes = [factories.observation(region="410105", agency="water", value=i) for i in range(300)]
    water_signer = issued_signer(pki, "jinshui-water")
    water_signer.sign_batch(envelopes)
    envelopes[100].observation.measurements[0].value = -1.0  # altered after signing
    async with client_as(pki, node, "jinshui-water") as water:
        # large enough for the admission pool
        reply = await water.publish(envelopes, certificates=[water_signer.certificate_der])
        outcomes = [r.outcome for r in reply.results]
        assert outcomes.count(ACCEPTED) == 299
        assert reply.results[100].outcome == REJECTED
        assert reply.results[100].code == 16
        stored = await water.get([envelopes[0].id])
        fetched = await water.certificates([water_signer.certificate_sha256, b"\0" * 32])
    assert fetched == [water_signer.certificate_der]  # what the node keeps for later verifiers
    verifier = Verifier(pki.ca_cert, certificates=dict.fromkeys([water_signer.certificate_sha256], fetched[0]).get)
    assert verifier.verify(stored.deliveries[0].envelope).endswith("/jinshui-water")


async def test_batch_signatures_name_a_certificate_the_node_must_have(node: Node, pki: Authority) -> None:
    water_signer = issued_signer(pki, "jinshui-water")
    first = [factories.observation(region="410105", agency="water", value=i) for i in range(3)]
    water_signer.sign_batch(first)
    async with client_as(pki, node, "jinshui-water") as water:
        reply = await water.publish(first)  # the certificate was never sent
        assert {r.outcome for r in reply.results} == {REJECTED}
        assert reply.results[0].field == "provenance.signature"
        assert "unknown here" in reply.results[0].reason
        reply = await water.publish(first, certificates=[water_signer.certificate_der])
        assert {r.outcome for r in reply.results} == {ACCEPTED}
        later = [factories.observation(region="410105", agency="water", value=i) for i in range(3)]
        water_signer.sign_batch(later)
        reply = await water.publish(later)  # the node kept it
        assert {r.outcome for r in reply.results} == {ACCEPTED}
        assert (node.config.data_dir / "certificates" / f"{water_signer.certificate_sha256.hex()}.der").exists()


async def test_a_certificate_from_elsewhere_refuses_the_request(node: Node, pki: Authority, tmp_path: Path) -> None:
    other = Authority.init(tmp_path / "other", trust_domain=DOMAIN)
    other.issue(other.identity(Role.DEPARTMENT, "410105", "jinshui-water", "water"))
    impostor = issued_signer(other, "jinshui-water")
    envelopes = [factories.observation(region="410105", agency="water")]
    impostor.sign_batch(envelopes)
    async with client_as(pki, node, "jinshui-water") as water:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await water.publish(envelopes, certificates=[impostor.certificate_der])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "certificates[0]" in str(refused.value.details())
        assert "not issued by this network's CA" in str(refused.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as garbage:
            await water.publish(envelopes, certificates=[b"not a certificate"])
        assert "cannot be read" in str(garbage.value.details())


def test_cli_verify(pki: Authority, tmp_path: Path) -> None:
    good = met_alert("good")
    issued_signer(pki, "zz-qxj").sign(good)
    bad = met_alert("bad")
    issued_signer(pki, "zz-qxj").sign(bad)
    bad.severity = pb.RED
    lines = [json_format.MessageToJson(e, indent=None) for e in (good, bad)]
    delivery = json.dumps({"offset": "7", "envelope": json.loads(lines[0])})
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "verify", "--ca", str(pki.dir / "ca.pem")],
        input="\n".join([*lines, delivery]) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["ok"] for r in results] == [True, False, True]
    assert results[0]["signer"].endswith("/meteorology/department/zz-qxj")
    assert run.returncode == 1


async def test_cli_verify_fetches_the_certificates_batch_signatures_name(node: Node, pki: Authority) -> None:
    water_signer = issued_signer(pki, "jinshui-water")
    envelopes = [factories.observation(region="410105", agency="water", value=i) for i in range(4)]
    water_signer.sign_batch(envelopes)
    async with client_as(pki, node, "jinshui-water") as water:
        await water.publish(envelopes, certificates=[water_signer.certificate_der])
        stored = await water.get([e.id for e in envelopes])
    lines = "".join(json_format.MessageToJson(d, indent=None) + "\n" for d in stored.deliveries)
    issued = pki.dir / "issued"
    ca = ["--ca", str(pki.dir / "ca.pem")]
    fetch = ["--to", node.grpc_target, "--cert", str(issued / "jinshui-water.chain.pem")]
    fetch += ["--key", str(issued / "jinshui-water.key")]
    outcomes = []
    for extra in ([], fetch):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "verify", *ca, *extra,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate(lines.encode())
        outcomes.append((proc.returncode, [json.loads(line) for line in out.decode().splitlines()]))
    (without_code, without), (with_code, fetched) = outcomes
    assert without_code == 1
    assert "give --to" in without[0]["reason"]
    assert with_code == 0
    assert [r["ok"] for r in fetched] == [True] * 4
    assert fetched[0]["signer"].endswith("/water/department/jinshui-water")
