"""The shipped sharing policy, decided over roles, kinds and regions, for publishing and for reading."""

from __future__ import annotations

from pathlib import Path

import pytest
from yiwang.v1 import envelope_pb2 as pb

from gateway.errors import ConfigError
from gateway.pki import Identity, Role
from gateway.policy import Policy
from gateway.selection import RECORD, Record, record_of
from tests import factories

POLICY = Policy.load()
DOMAIN = "yjt.henan.gov.cn"


def who(region: str, principal: str, role: Role, name: str = "x") -> Identity:
    return Identity(DOMAIN, region, principal, role, name)


WATER_COUNTY = who("410105", "water", Role.DEPARTMENT)
WATER_EDGE = who("410105", "water", Role.EDGE)
MET_COUNTY = who("410102", "meteorology", Role.DEPARTMENT)
NATRES_COUNTY = who("410105", "natural_resources", Role.DEPARTMENT)
POLICE_CITY = who("410100", "public_security", Role.DEPARTMENT)
PROVINCE_PLATFORM = who("410000", "emergency", Role.PLATFORM)
CITY_PLATFORM = who("410100", "emergency", Role.PLATFORM)
CITY_GATEWAY = who("410100", "zhengzhou-city", Role.GATEWAY)


def envelope(kind: int, region: str, agency: str) -> pb.Envelope:
    env = factories.observation(region=region, agency=agency)
    if kind == pb.ALERT:
        env = factories.alert(region=region)
        env.origin.agency = agency
    elif kind == pb.INCIDENT:
        env = factories.incident(region=region)
        env.origin.agency = agency
    elif kind == pb.COMMAND:
        env.kind = pb.COMMAND
        env.command.targets.append("gauge-17")
        env.command.action = "set_interval"
    elif kind != pb.OBSERVATION:
        env.kind = kind  # type: ignore[assignment]
    return env


def record(kind: int, region: str, agency: str) -> Record:
    return RECORD.unpack(record_of(envelope(kind, region, agency)))


@pytest.mark.parametrize(
    ("identity", "kind", "region", "agency", "allowed", "because"),
    [
        (WATER_COUNTY, pb.OBSERVATION, "410105", "water", True, "own readings"),
        (WATER_EDGE, pb.OBSERVATION, "410105", "water", True, "own readings"),
        (WATER_COUNTY, pb.OBSERVATION, "410105", "meteorology", False, "is not yours"),
        (WATER_COUNTY, pb.OBSERVATION, "410202", "water", False, "outside your region"),
        (WATER_COUNTY, pb.OBSERVATION, "410100", "water", False, "outside your region"),
        (WATER_COUNTY, pb.ALERT, "410105", "water", True, "warnings come from"),
        (POLICE_CITY, pb.ALERT, "410100", "public_security", False, "may not publish ALERT"),
        (WATER_EDGE, pb.ALERT, "410105", "water", False, "may not publish ALERT"),
        (WATER_COUNTY, pb.COMMAND, "410105", "water", False, "may not publish COMMAND"),
        (CITY_PLATFORM, pb.COMMAND, "410105", "emergency", True, "directs its own jurisdiction"),
        (CITY_PLATFORM, pb.COMMAND, "410202", "emergency", False, "outside your region"),
        (PROVINCE_PLATFORM, pb.ALERT, "410202", "emergency", True, "directs its own jurisdiction"),
        (CITY_GATEWAY, pb.ALERT, "410102", "meteorology", True, "on behalf"),
        (CITY_GATEWAY, pb.ALERT, "410202", "meteorology", False, "outside your region"),
        (MET_COUNTY, pb.INCIDENT, "410102", "meteorology", True, "own area"),
    ],
)
def test_publish(identity: Identity, kind: int, region: str, agency: str, allowed: bool, because: str) -> None:
    decision = POLICY.may_publish(identity, envelope(kind, region, agency))
    assert decision.allowed is allowed, decision.reason
    assert because in decision.reason


@pytest.mark.parametrize(
    ("identity", "kind", "region", "agency", "allowed"),
    [
        (WATER_COUNTY, pb.ALERT, "410000", "meteorology", True),  # a provincial warning covers the county
        (WATER_COUNTY, pb.ALERT, "410100", "meteorology", True),  # so does its city's
        (WATER_COUNTY, pb.ALERT, "410105", "meteorology", True),
        (WATER_COUNTY, pb.ALERT, "410202", "meteorology", False),  # Kaifeng's is not its business
        (WATER_COUNTY, pb.ALERT, "410102", "meteorology", False),  # nor the neighbouring district's
        (WATER_COUNTY, pb.OBSERVATION, "410105", "water", True),
        (WATER_COUNTY, pb.OBSERVATION, "410105", "meteorology", True),  # rainfall for flood forecasting
        (WATER_COUNTY, pb.OBSERVATION, "410105", "ecology_environment", False),
        (WATER_COUNTY, pb.INCIDENT, "410105", "emergency", False),
        (NATRES_COUNTY, pb.OBSERVATION, "410105", "water", True),  # water levels for landslide warnings
        (NATRES_COUNTY, pb.OBSERVATION, "410105", "ecology_environment", False),
        (NATRES_COUNTY, pb.OBSERVATION, "410102", "water", False),
        (POLICE_CITY, pb.OBSERVATION, "410105", "transport", True),
        (POLICE_CITY, pb.OBSERVATION, "410105", "water", False),
        (POLICE_CITY, pb.INCIDENT, "410122", "fire_rescue", True),
        (PROVINCE_PLATFORM, pb.INCIDENT, "410202", "emergency", True),
        (PROVINCE_PLATFORM, pb.OBSERVATION, "419001", "water", True),
        (CITY_PLATFORM, pb.INCIDENT, "410105", "emergency", True),
        (CITY_PLATFORM, pb.INCIDENT, "410202", "emergency", False),
        (CITY_PLATFORM, pb.INCIDENT, "410000", "emergency", False),  # above it: the province's own business
        (WATER_EDGE, pb.COMMAND, "410105", "emergency", True),
        (WATER_EDGE, pb.COMMAND, "410102", "emergency", False),
        (WATER_EDGE, pb.OBSERVATION, "410105", "water", True),
        (CITY_GATEWAY, pb.OBSERVATION, "410105", "water", True),
        (CITY_GATEWAY, pb.OBSERVATION, "410305", "water", False),
    ],
)
def test_read(identity: Identity, kind: int, region: str, agency: str, allowed: bool) -> None:
    may_read = POLICY.reader(identity)
    assert may_read is not None
    assert may_read(record(kind, region, agency)) is allowed


def test_every_rule_has_a_reason() -> None:
    for rule in [*POLICY.publish, *POLICY.read]:
        assert len(rule.reason) > 20, rule


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            '[[publish]]\nroles=["edge"]\nkinds=["OBSERVATION"]\nscope="subtree"\nreason="r"\ncolour="red"\n',
            "publish[0].colour",
        ),
        ('[[read]]\nroles=["edge"]\nkinds=["WEATHER"]\nscope="subtree"\nreason="r"\n', "read[0].kinds"),
        ('[[read]]\nroles=["edge"]\nkinds=["ALERT"]\nscope="everywhere"\nreason="r"\n', "read[0].scope"),
        ('[[read]]\nroles=["boss"]\nkinds=["ALERT"]\nscope="all"\nreason="r"\n', "read[0].roles"),
        ('[[read]]\nroles=["edge"]\nkinds=["ALERT"]\nscope="all"\n', "read[0].reason"),
        ('[[write]]\nroles=["edge"]\n', "write"),
    ],
)
def test_policy_file_errors_name_the_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        Policy.load(path)
    assert key in str(error.value)
    assert str(path) in str(error.value)
