"""The examples in the README run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.test_cli import ROOT, json_lines, running_gateway, yiwang

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_publish_example_is_accepted(tmp_path: Path) -> None:
    match = re.search(r"echo '(\{.*?\})' \| tr -d '\\n'", README, re.DOTALL)
    assert match, "the README's publish example is gone"
    line = match.group(1).replace("\n", "")
    with running_gateway(tmp_path) as gateway:
        published = yiwang("publish", "--to", gateway.target, stdin=line + "\n")
        assert published.returncode == 0, published.stderr
        (result,) = json_lines(published.stdout)
        assert result["outcome"] == "ACCEPTED"
        assert result["offset"] == "1"
        # and the README's subscribe/query/get/info commands run against it
        for command in re.findall(r"^yiwang (?:subscribe|query|info) .*$", README, re.MULTILINE):
            if "--ca" in command:
                continue  # the mutual-TLS examples need certificates; tests/test_tls.py runs that path
            args = shlex.split(command.split("#")[0])[1:]
            args[args.index("--to") + 1] = gateway.target
            if args[0] == "subscribe":
                args += ["--limit", "1", "--from", "oldest"] if "--from" not in args else ["--limit", "1"]
                if "--region" in args:  # the README's filtered example matches no observation: skip it
                    continue
            ran = yiwang(*args)
            assert ran.returncode == 0, (command, ran.stderr)


def test_the_readme_names_only_make_targets_that_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in set(re.findall(r"`make (\w+)`", README)):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"make {target} is in the README, not in the Makefile"
