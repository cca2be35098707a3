"""Routing by rule: the shipped rules, a node's overrides, and the decisions they explain."""

from __future__ import annotations

from pathlib import Path

import pytest
from yiwang.v1 import envelope_pb2 as pb

from gateway.errors import ConfigError
from gateway.regions import Level
from gateway.routing import Routing
from tests import factories


@pytest.fixture(scope="module")
def routing() -> Routing:
    return Routing.load()


def incident(grade: pb.IncidentGrade, region: str = "410102") -> pb.Envelope:
    return factories.incident(envelope_id=f"incident-{grade}", region=region, grade=grade)


@pytest.mark.parametrize(
    ("grade", "to_city", "to_province"),
    [
        (pb.GRADE_GENERAL, True, False),
        (pb.GRADE_LARGER, True, True),
        (pb.GRADE_MAJOR, True, True),
        (pb.GRADE_EXTRAORDINARY, True, True),
    ],
)
def test_incidents_climb_as_far_as_their_grade(
    routing: Routing, grade: pb.IncidentGrade, to_city: bool, to_province: bool
) -> None:
    env = incident(grade)
    assert routing.to_parent(env, Level.CITY).send is to_city
    assert routing.to_parent(env, Level.PROVINCE).send is to_province
    assert routing.national(env).send is (grade >= pb.GRADE_MAJOR)


def test_a_decision_names_its_rule_and_a_refusal_says_why(routing: Routing) -> None:
    up = routing.to_parent(incident(pb.GRADE_LARGER), Level.PROVINCE)
    assert up.rule == "larger-incidents-to-province"
    assert "较大" in up.why
    general = routing.to_parent(incident(pb.GRADE_GENERAL), Level.PROVINCE)
    assert "rule incidents-to-city: reaches only the city" in general.why
    assert "rule larger-incidents-to-province: grade GRADE_GENERAL is below GRADE_LARGER" in general.why
    position = factories.observation(region="410102")
    position.kind = pb.POSITION
    assert routing.to_parent(position, Level.CITY).why == "no up rule for POSITION"


def test_telemetry_goes_up_only_as_threshold_crossings_and_summaries(routing: Routing) -> None:
    reading = factories.observation(region="410102")
    assert not routing.to_parent(reading, Level.CITY).send
    reading.attributes["edge.alarm"] = "water_level"
    assert routing.to_parent(reading, Level.PROVINCE).rule == "threshold-crossings-up"
    summary = factories.observation(region="410102")
    assert "not a station summary" in routing.to_parent(summary, Level.CITY).why
    summary.attributes["yiwang.summary"] = "PT15M"
    assert routing.to_parent(summary, Level.PROVINCE).rule == "station-summaries-up"


@pytest.mark.parametrize(
    ("region", "child", "sent", "how"),
    [
        ("410100", "410102", True, "region 410100 covers 410102"),
        ("410000", "410102", True, "region 410000 covers 410102"),
        ("410102", "410102", True, "region 410102 is 410102"),
        ("410102", "410100", True, "region 410102 is within 410100"),
        ("410103", "410102", False, "region 410103 does not concern 410102"),
        ("410300", "410100", False, "region 410300 does not concern 410100"),
    ],
)
def test_commands_go_down_by_region(routing: Routing, region: str, child: str, sent: bool, how: str) -> None:
    command = pb.Envelope(id="c", kind=pb.COMMAND, region=region)
    decision = routing.to_child(command, child)
    assert decision.send is sent
    assert how in decision.why
    assert decision.rule == ("commands-down" if sent else "")


def test_warnings_go_down_by_area_when_the_node_knows_the_counties(routing: Routing) -> None:
    warning = factories.alert(region="410100")
    by_area = Routing(routing.up, routing.down, touching=lambda _geometry: {"410102", "410103"})
    assert by_area.to_child(warning, "410102").send
    assert "its area touches 410102" in by_area.to_child(warning, "410102").why
    assert by_area.to_child(warning, "410100").send  # the city, for two of its counties
    refused = by_area.to_child(warning, "410105")
    assert not refused.send
    assert refused.why == "rule warnings-down: its area touches nothing in 410105"
    # Without counties to test against, the warning's region decides.
    assert routing.to_child(warning, "410105").send


def test_a_node_file_replaces_switches_off_and_adds_rules(tmp_path: Path) -> None:
    own = tmp_path / "routing.toml"
    own.write_text(
        """
[[up]]
name = "incidents-to-city"
kinds = ["INCIDENT"]
reach = "province"
reason = "this city sends every incident on to the province"

[[up]]
name = "liveness-up"
kinds = ["HEARTBEAT"]
reason = "off here"
enabled = false

[[down]]
name = "observations-down"
kinds = ["OBSERVATION"]
reason = "the province shares river gauges with the counties downstream"
""",
        encoding="utf-8",
    )
    routing = Routing.load(own)
    assert routing.to_parent(incident(pb.GRADE_GENERAL), Level.PROVINCE).rule == "incidents-to-city"
    heartbeat = pb.Envelope(id="h", kind=pb.HEARTBEAT, region="410102")
    assert not routing.to_parent(heartbeat, Level.CITY).send
    reading = factories.observation(region="410100")
    assert routing.to_child(reading, "410102").rule == "observations-down"
    assert [r.name for r in routing.up].count("incidents-to-city") == 1


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('[[up]]\nname = "x"\nkinds = ["RUMOUR"]\nreason = "r"', "up[0].kinds", "unknown kind 'RUMOUR'"),
        ('[[up]]\nname = "x"\nkinds = []\nreason = "r"', "up[0].kinds", "at least one kind"),
        ('[[up]]\nname = "x"\nkinds = ["ALERT"]\nreach = "moon"\nreason = "r"', "up[0].reach", "city, province"),
        ('[[up]]\nname = "x"\nkinds = ["ALERT"]\nreason = ""', "up[0].reason", "says why"),
        ('[[up]]\nname = "x"\nkinds = ["INCIDENT"]\nmin_grade = "BIG"\nreason = "r"', "up[0].min_grade", "BIG"),
        ('[[down]]\nname = "x"\nkinds = ["ALERT"]\nmatch = "mood"\nreason = "r"', "down[0].match", "region, area"),
        ('[[down]]\nname = "x"\nkinds = ["ALERT"]\nreason = "r"\nhops = 2', "down[0].hops", "unknown key"),
        ('[[sideways]]\nname = "x"', "sideways", "unknown key"),
    ],
)
def test_a_bad_rule_is_refused_with_the_key_and_the_file(tmp_path: Path, text: str, key: str, message: str) -> None:
    own = tmp_path / "routing.toml"
    own.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Routing.load(own)
    assert (caught.value.key, caught.value.source) == (key, str(own))
    assert message in str(caught.value)


def test_explain_says_where_an_envelope_goes_and_why(routing: Routing) -> None:
    env = incident(pb.GRADE_LARGER, region="410102")
    lines = routing.explain(
        env, node="zhengzhou-city", level=Level.CITY, region="410100", parent=True, came_from=["zhongyuan-county"]
    )
    assert lines[0].startswith(f"{env.id}: INCIDENT for 410102 (中原区) at zhengzhou-city, city 410100")
    assert lines[1] == "came through zhongyuan-county: never sent back to those"
    assert lines[2].startswith("up: sent by rule larger-incidents-to-province: ")
    assert "down to 410102 (中原区): not sent: no down rule for INCIDENT" in lines
    grave = incident(pb.GRADE_MAJOR)
    at_province = routing.explain(grave, node="henan-province", level=Level.PROVINCE, region="410000", parent=False)
    assert at_province[1].startswith("national: flagged by rule major-incidents-national")


@pytest.mark.parametrize("level", [Level.CITY, Level.PROVINCE])
def test_the_quick_answer_agrees_with_the_explained_one(routing: Routing, level: Level) -> None:
    alarm = factories.observation(region="410102")
    alarm.attributes["edge.alarm"] = "water_level"
    summary = factories.observation(region="410102")
    summary.attributes["yiwang.summary"] = "PT15M"
    heartbeat = pb.Envelope(id="h", kind=pb.HEARTBEAT, region="410102")
    grades = (pb.GRADE_GENERAL, pb.GRADE_LARGER, pb.GRADE_MAJOR, pb.GRADE_EXTRAORDINARY)
    samples = [incident(grade) for grade in grades] + [
        factories.alert(region="410102"),
        factories.observation(region="410102"),
        alarm,
        summary,
        heartbeat,
    ]
    for env in samples:
        assert routing.sends_up(env, level) is routing.to_parent(env, level).send, env.id


@pytest.mark.parametrize("level", [Level.CITY, Level.PROVINCE])
def test_the_answer_from_the_record_agrees_wherever_it_answers(routing: Routing, level: Level) -> None:
    by_record = routing.up_by_record(level)
    alarm = factories.observation(region="410102")
    alarm.attributes["edge.alarm"] = "water_level"
    grades = (pb.GRADE_GENERAL, pb.GRADE_LARGER, pb.GRADE_MAJOR, pb.GRADE_EXTRAORDINARY)
    samples = [incident(grade) for grade in grades] + [
        factories.observation(region="410102"),
        alarm,
        pb.Envelope(id="h", kind=pb.HEARTBEAT, region="410102"),
    ]
    for severity in (pb.SEVERITY_UNSPECIFIED, pb.BLUE, pb.RED):
        warning = factories.alert(region="410102")
        warning.severity = severity
        samples.append(warning)
    answered = 0
    for env in samples:
        verdict = by_record(env.kind, env.severity)
        if verdict is not None:
            answered += 1
            assert verdict is routing.sends_up(env, level), env.id
    assert answered  # warnings go up by kind alone: the record settles them
    # a rule that only looks at kind and severity settles everything it takes
    everything = Routing.load(None)
    everything.up = [r for r in everything.up if r.name == "warnings-up"]
    assert everything.up, "the shipped rules send warnings up"
    assert everything.up_by_record(level)(pb.ALERT, pb.BLUE) is True
    assert everything.up_by_record(level)(pb.INCIDENT, pb.BLUE) is False
