"""The adapter commands of the `yiwang` CLI: adapt, export and dead-letters."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from yiwang.v1 import envelope_pb2 as pb

from adapters.deadletter import DeadLetters
from adapters.errors import AdapterError
from adapters.plugin import Adapter, AdapterConfig, Direction, by_format, discover
from adapters.runner import decode_report
from gateway.config import read_toml
from gateway.errors import ConfigError

EXIT_REFUSED = 1


def _adapter_for(fmt: str, direction: Direction) -> Adapter:
    formats = by_format()
    adapter = formats.get(fmt)
    if adapter is None:
        raise ConfigError(f"unknown format {fmt!r}; `yiwang adapt --list` lists them")
    if fmt not in (adapter.manifest.inbound if direction is Direction.IN else adapter.manifest.outbound):
        raise ConfigError(f"format {fmt!r} cannot be {'read' if direction is Direction.IN else 'written'}")
    return adapter


def _config(adapter: Adapter, args: argparse.Namespace) -> AdapterConfig:
    table: dict[str, Any] = {}
    source = ""
    if args.config:
        source = args.config
        table = read_toml(None, source, Path(source))
    for key in ("agency", "region", "system"):
        value = getattr(args, key, None)
        if value:
            table[key] = value
    return adapter.load_config(table, source)


def _list(_args: argparse.Namespace) -> int:
    for name, adapter in sorted(discover().items()):
        m = adapter.manifest
        print(
            json.dumps(
                {
                    "adapter": name,
                    "title": m.title,
                    "in": list(m.inbound),
                    "out": list(m.outbound),
                    "agency": m.agency,
                    "config": m.schema()["keys"],
                },
                ensure_ascii=False,
            )
        )
    return 0


def adapt(args: argparse.Namespace) -> int:
    """Decodes a file and prints its envelopes as JSON lines; one line per refusal on stderr."""
    if args.list:
        return _list(args)
    if not args.format or not args.file:
        raise ConfigError("give FORMAT and FILE (or --list)")
    adapter = _adapter_for(args.format, Direction.IN)
    codec = adapter.open(args.format, _config(adapter, args))
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    try:
        envelopes, errors = decode_report(codec, data)
    except AdapterError as exc:
        print(f"yiwang adapt: {args.file}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for env in envelopes:
        print(json_format.MessageToJson(env, indent=None, ensure_ascii=False), flush=True)
    for error in errors:
        print(f"yiwang adapt: {args.file}: {error}", file=sys.stderr)
    return EXIT_REFUSED if errors else 0


def export(args: argparse.Namespace) -> int:
    """Reads canonical envelopes (or deliveries) as JSON lines and writes them in a format."""
    adapter = _adapter_for(args.format, Direction.OUT)
    codec = adapter.open(args.format, _config(adapter, args))
    lines = Path(args.file).read_text(encoding="utf-8") if args.file and args.file != "-" else sys.stdin.read()
    refused = 0
    for number, line in enumerate(lines.splitlines(), start=1):
        if not line.strip():
            continue
        env = pb.Envelope()
        try:
            raw = json.loads(line)
            json_format.ParseDict(raw.get("envelope", raw), env)
        except (json.JSONDecodeError, json_format.ParseError, AttributeError) as exc:
            print(f"yiwang export: line {number}: not an envelope: {exc}", file=sys.stderr)
            refused += 1
            continue
        try:
            data = codec.encode([env])
        except AdapterError as exc:
            print(f"yiwang export: line {number} ({env.id}): {exc}", file=sys.stderr)
            refused += 1
            continue
        sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
        sys.stdout.buffer.flush()
    return EXIT_REFUSED if refused else 0


def dead_letters(args: argparse.Namespace) -> int:
    store_path = Path(args.data) / "dead-letters.sqlite"
    if not store_path.exists():
        raise ConfigError(f"no dead-letter store at {store_path}")
    store = DeadLetters(store_path)
    try:
        if args.letters_command == "list":
            for letter in store.list(args.adapter or "", args.state or ""):
                print(json.dumps(letter.summary(), ensure_ascii=False))
            return 0
        if args.letters_command == "show":
            found = store.get(args.id)
            if found is None:
                raise ConfigError(f"no dead letter {args.id}")
            sys.stdout.buffer.write(found.data)
            return 0
        missing = [i for i in args.ids if not store.ask_replay(i)]
        for i in args.ids:
            if i not in missing:
                print(json.dumps({"id": i, "state": "replay"}))
        for i in missing:
            print(f"yiwang dead-letters: no dead letter {i}", file=sys.stderr)
        return EXIT_REFUSED if missing else 0
    finally:
        store.close()


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "adapt",
        parents=[common],
        help="decode a department format into canonical envelopes (JSON lines)",
        description="Decodes FILE (- for stdin) in FORMAT and prints the canonical envelopes as JSON lines "
        "(protobuf JSON mapping). Each refused message gets one line on stderr and the exit code is 1.",
    )
    p.add_argument("format", nargs="?", metavar="FORMAT")
    p.add_argument("file", nargs="?", metavar="FILE")
    p.add_argument("--list", action="store_true", help="list the installed adapters and their formats")
    _add_config_args(p)
    p.set_defaults(run=adapt)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write canonical envelopes (JSON lines) in an outbound format",
        description="Reads envelopes or deliveries as JSON lines (as subscribe, query and get print them) "
        "from FILE or stdin and writes each in FORMAT to stdout.",
    )
    p.add_argument("format", metavar="FORMAT")
    p.add_argument("file", nargs="?", metavar="FILE")
    _add_config_args(p)
    p.set_defaults(run=export)

    p = sub.add_parser(
        "dead-letters",
        parents=[common],
        help="inputs the node's adapters could not deliver: list, show, replay",
        description="Lists the dead-letter store of a node's data folder, prints one letter's bytes, or asks "
        "the adapter that stored them to take letters up again (it does within seconds, or at its next start).",
    )
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--data", required=True, metavar="DIR", help="the node's data folder (log.data_dir)")
    letters = p.add_subparsers(dest="letters_command", required=True, metavar="ACTION")
    q = letters.add_parser("list", parents=[store], help="one JSON line per letter")
    q.add_argument("--adapter", metavar="NAME")
    q.add_argument("--state", choices=["stored", "replay", "replayed"])
    q = letters.add_parser("show", parents=[store], help="the bytes of one letter, as received")
    q.add_argument("id", type=int)
    q = letters.add_parser("replay", parents=[store], help="ask for letters to be taken up again")
    q.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.set_defaults(run=dead_letters)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="the adapter's config (TOML); unknown keys are an error")
    p.add_argument("--agency", help="the agency the input speaks for (default: the adapter's)")
    p.add_argument("--region", help="the GB/T 2260 region of the sender, used where the input names none")
    p.add_argument("--system", help="origin.system of the envelopes")
