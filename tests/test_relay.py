"""What a node takes from another node over a federation link (``Admission.relay``): the envelopes
as they came, checked for what the node relies on, each fault refused alone with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.admission import Admission
from gateway.errors import InvalidRequestError
from gateway.pki import Authority, Role
from gateway.regions import default_table
from gateway.selection import FLAG_RELAYED, FLAG_UNSIGNED, FLAGS_AT, RECORD, record_of, with_flags
from gateway.signing import Verifier
from gateway.validation import Validator
from gateway.wire import encode_deliveries, hop_suffix
from tests import factories
from tests.conftest import issued_signer

VALIDATOR = Validator(default_table())
INVALID_ARGUMENT, UNAUTHENTICATED = 3, 16


def request(envelopes: list[pb.Envelope], certificates: tuple[bytes, ...] = ()) -> bytes:
    return gw.PublishRequest(envelopes=envelopes, batch_id=9, certificates=certificates).SerializeToString()


def test_a_relayed_batch_is_stored_as_it_came_with_the_records_validation_makes() -> None:
    envelopes = [factories.observation(envelope_id=f"o-{n}", value=n) for n in range(3)]
    envelopes += [factories.alert(envelope_id="a-1"), factories.incident(envelope_id="i-1")]
    raw = request(envelopes)
    relayed = Admission(VALIDATOR, 1_000).relay(raw)
    full = Admission(VALIDATOR, 1_000).admit(raw)
    assert relayed.ids == full.ids == [env.id for env in envelopes]
    assert relayed.envelopes == full.envelopes  # the bytes as the sender encoded them
    assert relayed.hashes == full.hashes
    assert relayed.records == [with_flags(record, FLAG_RELAYED) for record in full.records]
    assert all(record[FLAGS_AT] & FLAG_RELAYED for record in relayed.records)
    assert relayed.batch_id == 9
    assert not relayed.rejections


@given(st.lists(st.sampled_from(["observation", "alert", "incident"]), min_size=1, max_size=6))
def test_relayed_records_agree_with_full_validation(kinds: list[str]) -> None:
    envelopes = [getattr(factories, kind)(envelope_id=f"e-{n}") for n, kind in enumerate(kinds)]
    raw = request(envelopes)
    full = Admission(VALIDATOR, 1_000).admit(raw)
    assert Admission(VALIDATOR, 1_000).relay(raw).records == [with_flags(r, FLAG_RELAYED) for r in full.records]


def test_each_unusable_envelope_is_refused_alone_with_its_reason() -> None:
    good = [factories.observation(envelope_id=f"good-{n}") for n in range(4)]
    no_id = factories.observation(envelope_id="x")
    no_id.id = ""
    no_kind = factories.observation(envelope_id="no-kind")
    no_kind.kind = pb.KIND_UNSPECIFIED
    nowhere = factories.observation(envelope_id="nowhere", region="419999")
    letters = factories.observation(envelope_id="letters", region="41O105")
    huge = factories.observation(envelope_id="huge")
    huge.attributes["padding"] = "x" * (VALIDATOR.limits.max_envelope_bytes + 1)
    # Enum values no version knows: a record holds each in a byte, which 1000 does not fit.
    grave = factories.observation(envelope_id="grave")
    grave.severity = 1000  # type: ignore[assignment]
    unreal = factories.observation(envelope_id="unreal")
    unreal.status = pb.STATUS_UNSPECIFIED
    batch = [good[0], no_id, good[1], no_kind, nowhere, good[2], letters, huge, grave, unreal, good[3]]
    hinted = b"".join(record_of(env) if env in good else b"\0" * RECORD.size for env in batch)
    for hints in (b"", hinted):  # with and without the sender's records
        admitted = Admission(VALIDATOR, 1_000).relay(request(batch), records=hints)
        assert admitted.ids == [env.id for env in good]
        assert admitted.positions == [0, 2, 5, 10]
        reasons = {index: (field, reason, code) for index, _, field, reason, code in admitted.rejections}
        assert reasons.keys() == {1, 3, 4, 6, 7, 8, 9}
        assert [reasons[i][0] for i in (1, 3, 7)] == ["id", "kind", "envelope"]
        assert reasons[4][:2] == ("region", "'419999' is not a known GB/T 2260 region code")
        assert reasons[6][:2] == ("region", "'41O105' is not a six-digit GB/T 2260 code")
        assert reasons[8][:2] == ("severity", "unknown value 1000")
        assert reasons[9][:2] == ("status", "unknown value 0")
        assert {code for _, _, code in reasons.values()} == {INVALID_ARGUMENT}


def test_a_batch_that_does_not_decode_is_refused_whole() -> None:
    with pytest.raises(InvalidRequestError, match="not a valid PublishRequest"):
        Admission(VALIDATOR, 1_000).relay(b"\x0a\xff\xff\xff")
    with pytest.raises(InvalidRequestError, match="more than 3"):
        Admission(VALIDATOR, 3).relay(request([factories.observation(envelope_id=f"e{n}") for n in range(4)]))


def test_signatures_are_checked_again_and_a_forged_one_is_refused(tmp_path: Path) -> None:
    ca = Authority.init(tmp_path / "pki", trust_domain="yjt.henan.gov.cn")
    ca.issue(ca.identity(Role.DEPARTMENT, "410105", "jinshui-water", "water"))
    water = issued_signer(ca, "jinshui-water")
    envelopes = [factories.observation(envelope_id=f"s-{n}", region="410105", agency="water") for n in range(5)]
    water.sign_batch(envelopes)
    envelopes[3].observation.measurements[0].value = 1e6  # altered on the way
    unsigned = factories.observation(envelope_id="plain")
    admission = Admission(VALIDATOR, 1_000, verifier=Verifier(ca.ca_cert))
    admitted = admission.relay(request([*envelopes, unsigned], (water.certificate_der,)))
    hints = b"".join(record_of(env) for env in [*envelopes, unsigned])
    with_hints = admission.relay(request([*envelopes, unsigned], (water.certificate_der,)), records=hints)
    assert with_hints.records == admitted.records  # signed or not, flagged alike from the sender's records
    assert [record[FLAGS_AT] & FLAG_UNSIGNED for record in admitted.records] == [0, 0, 0, 0, FLAG_UNSIGNED]
    assert admitted.ids == ["s-0", "s-1", "s-2", "s-4", "plain"]
    assert admitted.signers == [water.identity] * 4 + [""]
    [(index, envelope_id, field, reason, code)] = admitted.rejections
    assert (index, envelope_id, field, code) == (3, "s-3", "provenance.signature", UNAUTHENTICATED)
    assert "altered" in reason


def test_the_sending_nodes_records_are_taken_where_they_agree_with_their_envelopes() -> None:
    """The records a link carries are hints: a record whose kind, severity, status, region or agency
    is not its envelope's is made anew here; one that agrees is taken with its place and time."""
    envelopes = [factories.observation(envelope_id=f"h-{n}", region="410105") for n in range(4)]
    hints = [record_of(env) for env in envelopes]
    elsewhere = factories.observation(envelope_id="x", region="410102")
    hints[1] = record_of(elsewhere)  # claims another region
    place = RECORD.unpack(hints[2])
    hints[2] = RECORD.pack(*place[:5], 1.0, 2.0, 1.0, 2.0, place[9])  # another place: taken as it is
    admitted = Admission(VALIDATOR, 1_000).relay(request(envelopes), records=b"".join(hints))
    own = [record_of(env, FLAG_RELAYED) for env in envelopes]
    assert admitted.records[0] == own[0]
    assert admitted.records[1] == own[1]  # made here: the claimed region is not the envelope's
    assert RECORD.unpack(admitted.records[2])[5:9] == (1.0, 2.0, 1.0, 2.0)
    assert admitted.records[2][FLAGS_AT] == own[2][FLAGS_AT]  # relayed and unsigned, as it is
    assert admitted.records[3] == own[3]
    short = Admission(VALIDATOR, 1_000).relay(request(envelopes), records=b"".join(hints)[:-1])
    assert short.records == own  # records that do not fit the batch are not used at all


def test_a_range_of_another_nodes_log_is_taken_as_its_requests_are() -> None:
    """What a link sends whole as its log's entries (each envelope with the sender's hop record)
    is admitted as the same envelopes sent in a request would be."""
    envelopes = [factories.observation(envelope_id=f"r-{n}", value=n) for n in range(5)]
    envelopes.append(factories.alert(envelope_id="w-1"))
    hop = hop_suffix("jinshui-county", 1_700_000_000_000_000_000)
    stored = [env.SerializeToString() + hop for env in envelopes]
    deliveries, _ = encode_deliveries(41, stored, b"", 1_700_000_000_000_000_000)
    records = b"".join(record_of(env) for env in envelopes)
    admission = Admission(VALIDATOR, 1_000)
    from_entries = admission.relay_entries(deliveries, 46, records=records)
    from_request = admission.relay(request([pb.Envelope.FromString(raw) for raw in stored]), records=records)
    assert from_entries.batch_id == 46
    assert from_entries.ids == from_request.ids == [env.id for env in envelopes]
    assert from_entries.records == from_request.records
    assert from_entries.envelopes == stored  # the bytes as they came, the sender's hop record in them
    with pytest.raises(InvalidRequestError, match="not a valid DeliveryBatch"):
        admission.relay_entries(b"\x0a\xff\xff", 47)
    with pytest.raises(InvalidRequestError, match="more than 3"):
        Admission(VALIDATOR, 3).relay_entries(deliveries, 48)


def _entry(*envelope_fields: bytes, offset: int = 7) -> bytes:
    """One Delivery entry of a DeliveryBatch, with the given envelope field occurrences."""
    body = b"\x08" + bytes([offset]) + b"".join(b"\x12" + bytes([len(f)]) + f for f in envelope_fields)
    return b"\x0a" + bytes([len(body)]) + body


def test_an_entry_holding_its_envelope_twice_is_stored_as_it_was_checked() -> None:
    """A parse merges the two; what is stored is the merged envelope that was checked, not the
    second part alone (which here has neither kind nor region)."""
    whole = factories.observation(envelope_id="twice")
    first = pb.Envelope(
        kind=whole.kind, region=whole.region, status=whole.status, origin=whole.origin, observation=whole.observation
    )
    second = pb.Envelope(id=whole.id, sent_at=whole.sent_at)
    fine = factories.observation(envelope_id="once").SerializeToString()
    deliveries = _entry(fine) + _entry(first.SerializeToString(), second.SerializeToString())
    admitted = Admission(VALIDATOR, 1_000).relay_entries(deliveries, 3)
    assert not admitted.rejections
    assert admitted.ids == ["once", "twice"]
    merged = pb.Envelope.FromString(admitted.envelopes[1])
    assert (merged.id, merged.kind, merged.region) == (whole.id, whole.kind, whole.region)
    assert admitted.envelopes[0] == fine
