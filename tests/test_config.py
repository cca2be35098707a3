"""Node configuration is filled strictly from TOML: every mistake is an error naming the key and the file."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    AgenciesSection,
    LimitsSection,
    ListenSection,
    LogSection,
    NodeConfig,
    NodeSection,
    TlsSection,
    from_dict,
    load,
    parse_address,
    parse_size,
)
from gateway.errors import ConfigError
from gateway.validation import AGENCIES

FULL = """\
# The Zhengzhou city node.
[node]
id = "zhengzhou-city-1"
region = "410100"
level = "city"

[listen]
grpc = "0.0.0.0:7400"
http = "[::1]:7480"

[log]
data_dir = "state/log"
fsync = false
retention_hours = 72.5
retention_bytes = "20GiB"
cache_bytes = 1048576

[limits]
max_envelope_bytes = 2097152
max_batch_envelopes = 5000
max_clock_skew_s = 120
max_message_bytes = "128 MiB"
admission_workers = 0

[agencies]
extra = ["red_cross", "civil_air_defence"]

[tls]
ca = "pki/ca.pem"
cert = "pki/issued/zhengzhou-city-1.chain.pem"
key = "pki/issued/zhengzhou-city-1.key"
crl = "pki/crl.pem"
"""

MINIMAL: dict[str, Any] = {
    "node": {"id": "henan-province", "region": "410000"},
    "tls": {"ca": "ca.pem", "cert": "node.pem", "key": "node.key"},
}
SOURCE = "/etc/yiwang/node.toml"
TLS = '[tls]\nca = "ca.pem"\ncert = "node.pem"\nkey = "node.key"\n'


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def table(**sections: dict[str, Any]) -> dict[str, Any]:
    """The minimal table with ``sections`` merged in, e.g. table(log={"fsync": 1})."""
    out = copy.deepcopy(MINIMAL)
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


def config_error(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(raw, source=SOURCE)
    return info.value


def test_a_full_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load(path)
    assert config == NodeConfig(
        node=NodeSection(id="zhengzhou-city-1", region="410100", level="city"),
        listen=ListenSection(grpc="0.0.0.0:7400", http="[::1]:7480"),
        log=LogSection(
            data_dir="state/log", fsync=False, retention_hours=72.5, retention_bytes="20GiB", cache_bytes=1048576
        ),
        limits=LimitsSection(
            max_envelope_bytes=2097152,
            max_batch_envelopes=5000,
            max_clock_skew_s=120,
            max_message_bytes="128 MiB",
            admission_workers=0,
        ),
        agencies=AgenciesSection(extra=["red_cross", "civil_air_defence"]),
        tls=TlsSection(
            ca="pki/ca.pem",
            cert="pki/issued/zhengzhou-city-1.chain.pem",
            key="pki/issued/zhengzhou-city-1.key",
            crl="pki/crl.pem",
        ),
        source=str(path),
    )
    assert config.path(config.tls.ca) == tmp_path / "pki" / "ca.pem"
    assert config.level == "city"
    assert config.data_dir == tmp_path / "state" / "log"
    assert config.all_agencies == AGENCIES | {"red_cross", "civil_air_defence"}


def test_a_minimal_table_takes_the_defaults() -> None:
    config = from_dict(copy.deepcopy(MINIMAL))
    assert config.listen == ListenSection()
    assert config.log == LogSection()
    assert config.limits == LimitsSection()
    assert config.agencies.extra == []
    assert config.all_agencies == AGENCIES
    assert config.level == "province"  # derived from the region code
    assert config.source == ""


@pytest.mark.parametrize(("region", "level"), [("410000", "province"), ("410100", "city"), ("419001", "county")])
def test_level_is_derived_from_the_region(region: str, level: str) -> None:
    assert from_dict(table(node={"region": region})).level == level


def test_unknown_top_level_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bogus = 1\n" + FULL)
    with pytest.raises(ConfigError) as info:
        load(path)
    error = info.value
    assert (error.key, error.source) == ("bogus", str(path))
    assert str(error).startswith(f"file {path}, key 'bogus': unknown key")
    known = (
        "adapters, agencies, limits, listen, log, mqtt, node, parent, policy, reports, routing, stations, "
        "summaries, tak"
    )
    assert known in str(error)


def test_unknown_key_in_a_section_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL.replace("fsync = false", "fsync = false\nretention_days = 7"))
    with pytest.raises(ConfigError) as info:
        load(path)
    error = info.value
    assert (error.key, error.source) == ("log.retention_days", str(path))
    assert str(path) in str(error)
    assert "'log.retention_days'" in str(error)
    assert "unknown key" in str(error)


def test_an_unknown_section_is_an_unknown_key() -> None:
    error = config_error(table(kafka={"brokers": "127.0.0.1:9092"}))
    assert error.key == "kafka"
    assert "unknown key" in str(error)


def test_source_is_not_a_key() -> None:
    assert config_error({**MINIMAL, "source": "elsewhere"}).key == "source"


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        (table(node={"id": 5}), "node.id", "expected str, got int"),
        (table(log={"fsync": "yes"}), "log.fsync", "expected bool, got str"),
        (table(log={"fsync": 1}), "log.fsync", "expected bool, got int"),
        (table(log={"retention_hours": "a week"}), "log.retention_hours", "got str"),
        (table(log={"retention_hours": True}), "log.retention_hours", "got bool"),
        (table(log={"retention_bytes": 1.5}), "log.retention_bytes", "got float"),
        (table(log={"retention_bytes": False}), "log.retention_bytes", "got bool"),
        (table(limits={"max_batch_envelopes": 10.0}), "limits.max_batch_envelopes", "expected int, got float"),
        (table(agencies={"extra": "red_cross"}), "agencies.extra", "got str"),
        (table(agencies={"extra": ["red_cross", 7]}), "agencies.extra", "got list"),
        ({"node": "henan-province"}, "node", "must be a table"),
        (table(listen={"grpc": 7400}), "listen.grpc", "expected str, got int"),
    ],
)
def test_wrong_type(raw: dict[str, Any], key: str, message: str) -> None:
    error = config_error(raw)
    assert (error.key, error.source) == (key, SOURCE)
    assert message in str(error)


def test_wrong_type_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL.replace("fsync = false", 'fsync = "no"'))
    with pytest.raises(ConfigError, match=r"key 'log\.fsync': expected bool, got str") as info:
        load(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"node": {"region": "410000"}}, "node.id"),
        ({"node": {"id": "henan-province"}}, "node.region"),
        ({}, "node"),
        ({"listen": {"grpc": "127.0.0.1:7400"}}, "node"),
    ],
)
def test_missing_required_keys(raw: dict[str, Any], key: str) -> None:
    error = config_error(raw)
    assert error.key == key
    assert str(error) == f"file {SOURCE}, key {key!r}: required"


@pytest.mark.parametrize("node_id", ["", "Henan", "-node", "node one", "n" * 64, "节点"])
def test_bad_node_id(node_id: str) -> None:
    assert config_error(table(node={"id": node_id})).key == "node.id"


@pytest.mark.parametrize("region", ["419999", "990000", "41000", "4100000", "abcdef", ""])
def test_unknown_region(region: str) -> None:
    error = config_error(table(node={"region": region}))
    assert error.key == "node.region"
    assert "is not a known GB/T 2260 region code" in str(error)


@pytest.mark.parametrize(
    ("region", "level", "message"),
    [
        ("410100", "county", "county does not match region 410100, which is a city"),
        ("410102", "city", "which is a county"),
        ("410000", "city", "which is a province"),
        ("419001", "province", "which is a county"),
        ("410000", "village", "must be province, city or county"),
    ],
)
def test_level_not_matching_the_region(region: str, level: str, message: str) -> None:
    error = config_error(table(node={"region": region, "level": level}))
    assert error.key == "node.level"
    assert message in str(error)


@pytest.mark.parametrize("key", ["grpc", "http"])
@pytest.mark.parametrize("address", ["7400", "localhost", ":7400", "127.0.0.1:", "127.0.0.1:65536", "host:http", ""])
def test_bad_listen_address(key: str, address: str) -> None:
    error = config_error(table(listen={key: address}))
    assert error.key == f"listen.{key}"
    assert "is not HOST:PORT" in str(error)


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("[::1]:7480", ("::1", 7480)),
        ("node.example:7400", ("node.example", 7400)),
    ],
)
def test_good_listen_addresses(address: str, parsed: tuple[str, int]) -> None:
    assert parse_address(address, "listen.grpc", SOURCE) == parsed
    from_dict(table(listen={"grpc": address}))


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("20GiB", 20 << 30),
        ("20 GiB", 20 << 30),
        ("512MiB", 512 << 20),
        ("64KiB", 64 << 10),
        ("2TiB", 2 << 40),
        ("100B", 100),
        ("1024", 1024),
        (" 7 ", 7),
        (0, 0),
        (4096, 4096),
    ],
)
def test_good_sizes(value: int | str, size: int) -> None:
    assert parse_size(value, "log.cache_bytes", SOURCE) == size
    from_dict(table(log={"cache_bytes": value}))


@pytest.mark.parametrize("value", ["20 gigs", "20GB", "20gib", "-5", "1.5GiB", "", "GiB", "20 GiB free"])
@pytest.mark.parametrize("key", ["log.retention_bytes", "log.cache_bytes", "limits.max_message_bytes"])
def test_bad_sizes(key: str, value: str) -> None:
    section, name = key.split(".")
    error = config_error(table(**{section: {name: value}}))
    assert error.key == key
    assert f"{value!r} is not a size" in str(error)


def test_negative_size() -> None:
    error = config_error(table(log={"retention_bytes": -1}))
    assert error.key == "log.retention_bytes"
    assert "must not be negative" in str(error)


@pytest.mark.parametrize("hours", [-1, -0.5])
def test_negative_retention(hours: float) -> None:
    error = config_error(table(log={"retention_hours": hours}))
    assert error.key == "log.retention_hours"
    assert "must not be negative" in str(error)


def test_zero_retention_keeps_everything() -> None:
    assert from_dict(table(log={"retention_hours": 0, "retention_bytes": 0})).log.retention_hours == 0


@pytest.mark.parametrize(
    ("limits", "key"),
    [
        ({"max_envelope_bytes": 1023}, "limits.max_envelope_bytes"),
        ({"admission_workers": -2}, "limits.admission_workers"),
        ({"max_batch_envelopes": 0}, "limits.max_batch_envelopes"),
    ],
)
def test_impossible_limits(limits: dict[str, Any], key: str) -> None:
    assert config_error(table(limits=limits)).key == key


@pytest.mark.parametrize(
    ("extra", "index"),
    [
        (["Red_Cross"], 0),
        (["red_cross", "red-cross"], 1),
        (["1st_aid"], 0),
        ([""], 0),
        (["a" * 25], 0),
        (["red cross"], 0),
        (["_private"], 0),
    ],
)
def test_bad_agency_code(extra: list[str], index: int) -> None:
    error = config_error(table(agencies={"extra": extra}))
    assert error.key == f"agencies.extra[{index}]"
    assert f"{extra[index]!r} is not an agency code" in str(error)


def test_good_agency_codes() -> None:
    extra = ["red_cross", "a" * 24, "civil_air_defence2"]
    assert from_dict(table(agencies={"extra": extra})).all_agencies == AGENCIES | set(extra)


def test_relative_data_dir_is_resolved_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "yiwang"
    folder.mkdir(parents=True)
    path = write(folder, '[node]\nid = "n1"\nregion = "410000"\n[log]\ndata_dir = "../../var/yiwang"\n' + TLS)
    assert load(path).data_dir == folder / "../../var/yiwang"
    assert load(path).data_dir.resolve() == (tmp_path / "var" / "yiwang").resolve()


def test_default_data_dir_is_beside_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nid = "n1"\nregion = "410000"\n' + TLS)
    assert load(path).data_dir == tmp_path / "data"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere"
    path = write(tmp_path, f'[node]\nid = "n1"\nregion = "410000"\n[log]\ndata_dir = "{absolute}"\n' + TLS)
    assert load(path).data_dir == absolute


def test_without_a_file_a_relative_data_dir_stays_relative() -> None:
    assert from_dict(table(log={"data_dir": "state"})).data_dir == Path("state")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[node\nid = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load(path)
    assert info.value.source == str(path)


def test_config_is_frozen() -> None:
    config = from_dict(copy.deepcopy(MINIMAL))
    with pytest.raises(AttributeError):
        config.node.id = "other"  # type: ignore[misc]


def test_tls_is_required_unless_insecure_is_asked_for() -> None:
    error = config_error({"node": {"id": "n", "region": "410000"}})
    assert "tls.ca" in str(error)
    assert "require mutual TLS" in str(error)


@pytest.mark.parametrize("address", ["0.0.0.0:7400", "10.1.2.3:7400", "node.example:7400"])
def test_insecure_only_on_loopback(address: str) -> None:
    error = config_error(
        {"node": {"id": "n", "region": "410000"}, "listen": {"grpc": address}, "tls": {"insecure": True}}
    )
    assert "listen.grpc" in str(error)
    assert "loopback" in str(error)


@pytest.mark.parametrize("address", ["127.0.0.1:7400", "[::1]:7400", "localhost:7400", "127.0.0.2:0"])
def test_insecure_on_loopback_loads(address: str) -> None:
    config = from_dict(
        {"node": {"id": "n", "region": "410000"}, "listen": {"grpc": address}, "tls": {"insecure": True}}
    )
    assert config.tls.insecure


def test_insecure_and_certificates_together_are_refused() -> None:
    error = config_error(
        {"node": {"id": "n", "region": "410000"}, "tls": {"insecure": True, "ca": "ca.pem", "cert": "c", "key": "k"}}
    )
    assert "tls.insecure" in str(error)


@pytest.mark.parametrize(
    ("parent", "insecure", "key", "message"),
    [
        ({"address": "10.1.2.3:7400"}, True, "parent.address", "a plaintext link is only for development on loopback"),
        ({"address": "no port"}, True, "parent.address", ""),
        ({"address": "10.1.2.3:7400"}, False, "parent.identity", "spiffe URI the parent's certificate must carry"),
        ({"address": "127.0.0.1:7400", "batch": 0}, True, "parent.batch", "must be 1 to limits.max_batch_envelopes"),
    ],
)
def test_a_parent_link_is_checked_at_load(parent: dict[str, Any], insecure: bool, key: str, message: str) -> None:
    tls: dict[str, Any] = {"insecure": True} if insecure else {"ca": "ca.pem", "cert": "c.pem", "key": "c.key"}
    error = config_error({"node": {"id": "n", "region": "410100"}, "tls": tls, "parent": parent})
    assert error.key == key
    assert message in str(error)


@pytest.mark.parametrize(
    ("reports", "key"),
    [
        ({"onward_minutes": [120, 120, 30]}, "reports.onward_minutes"),
        ({"follow_up_minutes": [60, 60, 60, 0]}, "reports.follow_up_minutes"),
        ({"link_tolerance_minutes": 0}, "reports.link_tolerance_minutes"),
    ],
)
def test_report_deadlines_are_checked_at_load(reports: dict[str, Any], key: str) -> None:
    error = config_error({"node": {"id": "n", "region": "410100"}, "tls": {"insecure": True}, "reports": reports})
    assert error.key == key
