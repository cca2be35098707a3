"""The ``yiwang`` command end to end: every subcommand run as its own process against a real node.

A node is started the quick way (``yiwang gateway --region ... --listen ... --data ...``) in a child
process, driven only through the command line, and stopped with SIGTERM, on which it must exit 0.
Command output is JSON lines on stdout; errors are one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from yiwang.v1 import envelope_pb2 as pb

from tests import factories
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
YIWANG = [sys.executable, "-m", "gateway.cli"]
SCRIPT = Path(sys.executable).with_name("yiwang")  # the installed console script
COMMAND_TIMEOUT_S = 60.0
CLIENT_COMMANDS = {"publish", "subscribe", "query", "get", "info"}
START_TIMEOUT_S = 60.0

# The seeded log of the shared node: offset = position + 1. The last one, a red warning over all of
# Zhengzhou's north, matches every filter below, so a subscriber told to stop after the expected
# number of deliveries would print it only if the filter let nothing else through.
ZHENGZHOU_NORTH = [(34.70, 113.50), (34.70, 113.70), (35.00, 113.70), (35.00, 113.50), (34.70, 113.50)]
HONGQI = [(35.25, 113.85), (35.25, 113.95), (35.35, 113.95), (35.35, 113.85), (35.25, 113.85)]
SEED_IDS = [
    "zz-obs-jinshui",
    "ly-obs-jianxi",
    "zz-alert-zhongyuan-orange",
    "xx-alert-hongqi-red",
    "zz-alert-jinshui-blue",
    "zz-incident-jinshui",
    "zz-obs-zhongmou",
    "zz-alert-marker-red",
]


def seed_envelopes() -> list[pb.Envelope]:
    i = iter(SEED_IDS)
    return [
        factories.observation(envelope_id=next(i), region="410105", lat=34.91, lon=113.66),
        factories.observation(envelope_id=next(i), region="410305", lat=34.66, lon=112.40),
        factories.alert(envelope_id=next(i), region="410102", severity=pb.ORANGE),
        factories.alert(envelope_id=next(i), region="410702", severity=pb.RED, polygon=HONGQI),
        factories.alert(envelope_id=next(i), region="410105", severity=pb.BLUE),
        factories.incident(envelope_id=next(i), region="410105"),
        factories.observation(envelope_id=next(i), region="410122", lat=34.72, lon=114.02, severity=pb.YELLOW),
        factories.alert(envelope_id=next(i), region="410102", severity=pb.RED, polygon=ZHENGZHOU_NORTH),
    ]


FILTERS: dict[str, tuple[list[str], list[int]]] = {
    # name: (filter options, positions in SEED_IDS that match, in log order)
    "city-subtree": (["--region", "410100"], [0, 2, 4, 5, 6, 7]),
    "kind": (["--kind", "ALERT"], [2, 3, 4, 7]),
    "two-kinds": (["--kind", "ALERT", "--kind", "INCIDENT"], [2, 3, 4, 5, 7]),
    "min-severity": (["--min-severity", "ORANGE"], [2, 3, 7]),
    "bbox-point": (["--bbox", "34.85,113.60,35.00,113.70"], [0, 7]),
    "bbox-polygons": (["--bbox", "34.74,113.55,34.76,113.56"], [2, 4, 7]),
    "all-at-once": (["--region", "410100", "--kind", "ALERT", "--min-severity", "ORANGE"], [2, 7]),
}


def yiwang(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Runs ``yiwang ARGS`` to completion (killed if it overruns ``timeout``)."""
    if args and args[0] in CLIENT_COMMANDS and "--to" in args:
        args = (args[0], "--insecure", *args[1:])  # the test node is a plaintext loopback node
    return subprocess.run(
        [*YIWANG, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env=env,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def one_error_line(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The single stderr line of a failed command, checked to start with ``prefix``."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def as_json_line(env: pb.Envelope) -> str:
    return json_format.MessageToJson(env, indent=None)


def offsets(deliveries: list[dict[str, Any]]) -> list[int]:
    return [int(d["offset"]) for d in deliveries]


def ids(deliveries: list[dict[str, Any]]) -> list[str]:
    return [d["envelope"]["id"] for d in deliveries]


@dataclass
class Gateway:
    target: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path


@contextlib.contextmanager
def running_gateway(workdir: Path) -> Iterator[Gateway]:
    """``yiwang gateway`` in quick mode on free loopback ports; stopped with SIGTERM, exit 0 asserted."""
    grpc_port, http_port = free_port(), free_port()
    target = f"127.0.0.1:{grpc_port}"
    stderr_path = workdir / "gateway.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                *YIWANG,
                "gateway",
                "--region",
                "410000",
                "--listen",
                target,
                "--http",
                f"127.0.0.1:{http_port}",
                "--data",
                str(workdir / "data"),
                "--insecure",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
            start_new_session=True,  # its admission workers join its group, so cleanup can find them
        )
    try:
        wait_ready(proc, target, stderr_path)
        yield Gateway(target, proc, stderr_path)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=START_TIMEOUT_S)
        assert code == 0, stderr_path.read_text(encoding="utf-8", errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=START_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of this node's group that is still there


def wait_ready(proc: subprocess.Popen[bytes], target: str, stderr_path: Path) -> None:
    """Waits until the node answers ``yiwang info`` (its port opens only once the log is ready)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    host, port = target.rsplit(":", 1)
    while True:
        if proc.poll() is not None:
            raise AssertionError(
                f"gateway exited with {proc.returncode}:\n{stderr_path.read_text(encoding='utf-8', errors='replace')}"
            )
        if time.monotonic() > deadline:
            raise AssertionError("gateway did not answer in time")
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
        except OSError:
            time.sleep(0.1)
            continue
        if yiwang("info", "--to", target).returncode == 0:
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A node whose log holds the seed envelopes at offsets 1..8; yields its gRPC address."""
    with running_gateway(tmp_path_factory.mktemp("seeded")) as node:
        stdin = "".join(as_json_line(env) + "\n" for env in seed_envelopes())
        result = yiwang("publish", "--to", node.target, stdin=stdin)
        assert result.returncode == 0, result.stderr
        rows = sorted(json_lines(result.stdout), key=lambda row: row["line"])
        assert [(row["id"], row["outcome"], int(row["offset"])) for row in rows] == [
            (envelope_id, "ACCEPTED", n) for n, envelope_id in enumerate(SEED_IDS, start=1)
        ]
        yield node.target


# -- publish ----------------------------------------------------------------------------------------


def test_publish_prints_one_result_per_line_and_exits_1_when_some_are_refused(tmp_path: Path) -> None:
    good_1 = factories.observation(envelope_id="zz-obs-1")
    good_2 = factories.alert(envelope_id="zz-alert-1")
    unknown_region = factories.observation(envelope_id="zz-obs-nowhere", region="419999")
    without_id = factories.incident()
    without_id.ClearField("id")
    stdin = "\n".join(
        [
            as_json_line(good_1),
            "this is not json {",
            as_json_line(good_2),
            as_json_line(unknown_region),
            as_json_line(without_id),
        ]
    )

    with running_gateway(tmp_path) as node:
        result = yiwang("publish", "--to", node.target, stdin=stdin + "\n")
        assert result.returncode == 1, result.stderr
        rows = {row["line"]: row for row in json_lines(result.stdout)}
        assert len(rows) == len(result.stdout.splitlines()) == 5
        assert sorted(rows) == [1, 2, 3, 4, 5]

        assert (rows[1]["id"], rows[1]["outcome"], rows[1]["offset"]) == ("zz-obs-1", "ACCEPTED", "1")
        assert (rows[2]["outcome"], rows[2]["field"]) == ("REJECTED", "json")
        assert rows[2]["reason"]
        assert (rows[3]["id"], rows[3]["outcome"], rows[3]["offset"]) == ("zz-alert-1", "ACCEPTED", "2")
        assert (rows[4]["id"], rows[4]["outcome"], rows[4]["field"]) == ("zz-obs-nowhere", "REJECTED", "region")
        assert "419999" in rows[4]["reason"]
        assert "offset" not in rows[4]
        assert (rows[5]["outcome"], rows[5]["offset"]) == ("ACCEPTED", "3")
        filled_id = rows[5]["id"]
        assert uuid.UUID(filled_id).version == 7

        got = yiwang("get", "--to", node.target, filled_id)
        assert got.returncode == 0, got.stderr
        [delivery] = json_lines(got.stdout)
        assert (delivery["offset"], delivery["envelope"]["id"], delivery["envelope"]["kind"]) == (
            "3",
            filled_id,
            "INCIDENT",
        )

        info = json.loads(yiwang("info", "--to", node.target).stdout)
        assert info["nextOffset"] == "4", "refused lines must not take an offset"


# -- subscribe --------------------------------------------------------------------------------------


def test_subscribe_from_oldest_prints_limit_deliveries_and_exits_0(seeded: str) -> None:
    result = yiwang("subscribe", "--to", seeded, "--from", "oldest", "--limit", "5")
    assert result.returncode == 0, result.stderr
    deliveries = json_lines(result.stdout)
    assert offsets(deliveries) == [1, 2, 3, 4, 5]
    assert ids(deliveries) == SEED_IDS[:5]
    assert all(d["appendedAt"] for d in deliveries)


def test_subscribe_from_an_offset(seeded: str) -> None:
    result = yiwang("subscribe", "--to", seeded, "--from", "6", "--limit", "3")
    assert result.returncode == 0, result.stderr
    assert offsets(json_lines(result.stdout)) == [6, 7, 8]


@pytest.mark.parametrize("name", list(FILTERS))
def test_subscribe_filters_select_the_matching_envelopes(seeded: str, name: str) -> None:
    options, expected = FILTERS[name]
    result = yiwang("subscribe", "--to", seeded, "--from", "oldest", *options, "--limit", str(len(expected)))
    assert result.returncode == 0, result.stderr
    assert ids(json_lines(result.stdout)) == [SEED_IDS[i] for i in expected]


def test_durable_subscription_continues_where_the_last_run_stopped(seeded: str) -> None:
    runs = []
    for _ in range(3):
        # --from applies only to a new subscription: the later runs must not start over.
        result = yiwang("subscribe", "--to", seeded, "--durable", "cli-desk", "--from", "oldest", "--limit", "2")
        assert result.returncode == 0, result.stderr
        runs.append(offsets(json_lines(result.stdout)))
    assert runs == [[1, 2], [3, 4], [5, 6]]


def test_a_following_subscriber_is_told_when_the_node_stops(tmp_path: Path) -> None:
    out_path = tmp_path / "subscriber.stdout"
    with running_gateway(tmp_path) as node:
        published = yiwang("publish", "--to", node.target, stdin=as_json_line(factories.observation()) + "\n")
        assert published.returncode == 0, published.stderr
        with out_path.open("wb") as out:
            subscriber = subprocess.Popen(
                [*YIWANG, "subscribe", "--insecure", "--to", node.target, "--from", "oldest"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        try:
            deadline = time.monotonic() + COMMAND_TIMEOUT_S
            while not out_path.read_text(encoding="utf-8").endswith("\n"):
                assert subscriber.poll() is None, subscriber.communicate()
                assert time.monotonic() < deadline, "the subscriber printed nothing"
                time.sleep(0.05)

            node.proc.send_signal(signal.SIGTERM)
            assert node.proc.wait(timeout=START_TIMEOUT_S) == 0
            _, stderr = subscriber.communicate(timeout=COMMAND_TIMEOUT_S)
        finally:
            if subscriber.poll() is None:
                subscriber.send_signal(signal.SIGTERM)
                subscriber.communicate(timeout=COMMAND_TIMEOUT_S)
    assert subscriber.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("yiwang subscribe: ")
    # A node going away is UNAVAILABLE (try again later), not a conflict with another subscriber.
    assert "opened again elsewhere" not in lines[0]
    assert "ABORTED" not in lines[0]


# -- query, get, info -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], [1, 2, 3, 4, 5, 6, 7, 8]),
        (["--page-size", "3"], [1, 2, 3, 4, 5, 6, 7, 8]),
        (["--newest-first"], [8, 7, 6, 5, 4, 3, 2, 1]),
        (["--newest-first", "--page-size", "3"], [8, 7, 6, 5, 4, 3, 2, 1]),
        (["--limit", "3"], [1, 2, 3]),
        (["--newest-first", "--limit", "2"], [8, 7]),
        (["--from-offset", "3", "--to-offset", "6"], [3, 4, 5]),
        (["--kind", "ALERT", "--newest-first"], [8, 5, 4, 3]),
        (["--region", "410300"], [2]),
        (["--region", "410100", "--min-severity", "ORANGE", "--page-size", "1"], [3, 8]),
    ],
    ids=[
        "all",
        "paged",
        "newest-first",
        "newest-first-paged",
        "limit",
        "newest-first-limit",
        "offset-range",
        "kind-newest-first",
        "other-city",
        "filters-paged",
    ],
)
def test_query(seeded: str, options: list[str], expected: list[int]) -> None:
    result = yiwang("query", "--to", seeded, *options)
    assert result.returncode == 0, result.stderr
    deliveries = json_lines(result.stdout)
    assert offsets(deliveries) == expected
    assert ids(deliveries) == [SEED_IDS[o - 1] for o in expected]


@pytest.mark.parametrize("name", list(FILTERS))
def test_query_filters_select_exactly_the_matching_envelopes(seeded: str, name: str) -> None:
    options, expected = FILTERS[name]
    result = yiwang("query", "--to", seeded, *options)
    assert result.returncode == 0, result.stderr
    assert ids(json_lines(result.stdout)) == [SEED_IDS[i] for i in expected]


def test_get_present_id(seeded: str) -> None:
    result = yiwang("get", "--to", seeded, "zz-alert-zhongyuan-orange")
    assert result.returncode == 0, result.stderr
    [delivery] = json_lines(result.stdout)
    assert delivery["offset"] == "3"
    assert delivery["envelope"]["id"] == "zz-alert-zhongyuan-orange"
    assert delivery["envelope"]["severity"] == "ORANGE"
    assert result.stderr == ""


def test_get_missing_id_exits_1_naming_it(seeded: str) -> None:
    result = yiwang("get", "--to", seeded, "no-such-envelope")
    assert result.returncode == 1
    assert result.stdout == ""
    line = one_error_line(result, "yiwang get: ")
    assert "no-such-envelope" in line


def test_get_present_and_missing_prints_the_present_and_exits_1(seeded: str) -> None:
    result = yiwang("get", "--to", seeded, "zz-obs-jinshui", "no-such-envelope")
    assert result.returncode == 1
    assert ids(json_lines(result.stdout)) == ["zz-obs-jinshui"]
    assert "no-such-envelope" in one_error_line(result, "yiwang get: ")


def test_info(seeded: str) -> None:
    result = yiwang("info", "--to", seeded)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["node"] == "node-410000"
    assert (info["level"], info["region"]) == ("province", "410000")
    assert (info["oldestOffset"], info["nextOffset"]) == ("1", "9")
    assert info["version"]


# -- help and errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", "gateway", "publish", "subscribe", "query", "get", "info", "demo"])
def test_help_exits_0(command: str) -> None:
    args = [command, "--help"] if command else ["--help"]
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: yiwang {command}".rstrip())


@pytest.mark.parametrize(
    ("command", "stdin"),
    [
        (["info"], None),
        (["query"], None),
        (["get", "zz-obs-jinshui"], None),
        (["subscribe", "--from", "oldest"], None),
        (["publish"], as_json_line(factories.observation(envelope_id="never-sent")) + "\n"),
    ],
    ids=["info", "query", "get", "subscribe", "publish"],
)
def test_unreachable_node_is_one_line_and_exit_2(command: list[str], stdin: str | None) -> None:
    target = f"127.0.0.1:{free_port()}"
    result = yiwang(command[0], "--to", target, *command[1:], stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    line = one_error_line(result, f"yiwang {command[0]}: ")
    assert f"cannot reach the node at {target}" in line


def test_gateway_config_with_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f"""\
[node]
id = "zz-city"
region = "410100"

[log]
data_dir = "{tmp_path / "data"}"
retention_days = 7
""",
        encoding="utf-8",
    )
    result = yiwang("gateway", "--config", str(config))
    assert result.returncode == 2
    line = one_error_line(result, "yiwang gateway: ")
    assert "log.retention_days" in line
    assert str(config) in line
    assert not (tmp_path / "data").exists(), "a refused config must not create the data directory"


def test_gateway_needs_config_or_region() -> None:
    result = yiwang("gateway")
    assert result.returncode == 2
    line = one_error_line(result, "yiwang gateway: ")
    assert "--config" in line
    assert "--region" in line


def test_gateway_refuses_config_and_quick_options_together(tmp_path: Path) -> None:
    result = yiwang("gateway", "--config", str(tmp_path / "node.toml"), "--region", "410000")
    assert result.returncode == 2
    one_error_line(result, "yiwang gateway: ")


@pytest.mark.parametrize("command", ["query", "subscribe"])
@pytest.mark.parametrize("bbox", ["34.7,113.5,34.8", "north,113.5,34.8,113.7"])
def test_malformed_bbox_is_one_line_and_exit_2(command: str, bbox: str) -> None:
    result = yiwang(command, "--to", f"127.0.0.1:{free_port()}", "--bbox", bbox)
    assert result.returncode == 2
    line = one_error_line(result, f"yiwang {command}: --bbox")
    assert bbox in line


def test_inverted_bbox_is_refused_by_the_node_in_one_line(seeded: str) -> None:
    result = yiwang("query", "--to", seeded, "--bbox", "35.0,113.7,34.7,113.5")
    assert result.returncode == 2
    assert result.stdout == ""
    line = one_error_line(result, "yiwang query: ")
    assert "INVALID_ARGUMENT" in line
    assert "bbox" in line


# -- demo -------------------------------------------------------------------------------------------


def test_demo_runs_a_node_and_shows_deliveries(tmp_path: Path) -> None:
    # The demo's log goes into a new temporary directory: keep it inside this test's tmp_path.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = yiwang(
        "demo", "--duration", "4", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", env=env, timeout=90.0
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("yiwang demo: node henan-province (410000")
    assert "grpc 127.0.0.1:" in lines[0]
    assert "127.0.0.1:0" not in lines[0], "the demo reports the port it actually got"
    assert lines[1].startswith("yiwang demo: mutual TLS with a demo CA")
    assert lines[2].startswith("yiwang demo: publishing")
    assert lines[3].startswith("yiwang demo: nodes zhengzhou-city (410100")
    assert "zhongyuan-county (410102" in lines[3]
    picture = re.fullmatch(
        r"yiwang demo: the command picture: https://127\.0\.0\.1:(\d+)/picture/ \(sign in as duty-province, "
        r"password (\S+); the browser will ask about the demo CA, .*ca\.pem\)",
        lines[4],
    )
    assert picture, lines[4]
    assert int(picture[1]) > 0
    assert not result.stderr.strip() or "refused" not in result.stderr, result.stderr
    deliveries = [line for line in lines if line.startswith("#")]
    assert len(deliveries) >= 20
    assert [int(line[1:].split()[0]) for line in deliveries] == list(range(1, len(deliveries) + 1))
    assert any(path.name.startswith("yiwang-demo-") for path in tmp_path.iterdir())
