"""Trust benchmark: what mutual TLS, batch signatures and their verification cost.

Prints, in one run:
  (a) the durable path of the foundation benchmark, plaintext and unsigned, against the same run over
      mutual TLS with one batch signature per request (verified by the node on entry), and their
      ratio (goal: at least 70%). The signature is shared by the batch's envelopes, as publishers of
      telemetry send it and as the subscriber asks for it (``--form full``: each envelope with its
      own proof instead). The two runs are repeated ``--repeat`` times, in alternating order
      (the machine's speed drifts between runs), and each pair's ratio is printed with the median.
      Measured twice:
        - the gateway's cost: the publisher builds and signs its envelopes before the clock starts,
          as origins do on machines of their own, so the node has the 2 cores as in the foundation
          benchmark's pre-encoded run;
        - everything on one machine: the publisher builds (and signs) while it sends, sharing the
          cores with the node and the subscriber.
  (b) single-envelope signature verification per second on one core (yiwang.signing.Verifier, each
      envelope's content digest and Ed25519 check), against `openssl speed ed25519` verify on one
      core in the same run (goal: at least 80%).

    .venv/bin/python bench/trust.py [--seconds 10] [--repeat 3] [--batch 500] [--ahead-rate 130000]
                                    [--form shared|full]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench import throughput
from gateway.pki import Authority, Role
from gateway.signing import Signer, Verifier
from tests import factories


def make_pki(folder: Path) -> Authority:
    ca = Authority.init(folder / "pki", trust_domain="yjt.henan.gov.cn")
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.DEPARTMENT, "410105", "jinshui-water", "water"))
    ca.issue(ca.identity(Role.PLATFORM, "410000", "province-desk", "emergency"))
    return ca


def openssl_verify_rate(seconds: int) -> float:
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ed25519"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"EdDSA \(Ed25519\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", out)
    if not match:
        raise SystemExit(f"cannot read openssl's figures:\n{out}")
    return float(match.group(2))


def our_verify_rate(ca: Authority, seconds: float) -> float:
    issued = ca.dir / "issued"
    signer = Signer.load(
        (issued / "jinshui-water.sign.key").read_bytes(), (issued / "jinshui-water.sign.pem").read_bytes()
    )
    envelopes = []
    for i in range(1000):
        env = factories.observation(envelope_id=f"v-{i}", region="410105", agency="water")
        signer.sign(env)
        envelopes.append(env)
    verifier = Verifier(ca.ca_cert)
    verifier.verify(envelopes[0])  # the certificate check is cached per signer, as on the node
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for env in envelopes:
            verifier.verify(env)
        done += len(envelopes)
    return done / (time.perf_counter() - started)


def measure(args: argparse.Namespace, ca: Authority, signed: bool, prepared: int) -> float:
    """Envelopes/s at the subscriber of one durable run, plaintext and unsigned or mutual TLS and signed;
    every envelope the node accepted must arrive."""
    build = ("shared" if args.form == "shared" else "signed") if signed else "messages"
    tls_dir = ca.dir if signed else None
    published, delivered = throughput.run_durable(
        args, 0.0, args.idle, 10, build=build, tls_dir=tls_dir, ahead=prepared
    )
    if delivered["delivered"] != published["accepted"]:
        raise SystemExit(
            f"the subscriber got {delivered['delivered']:,} of {published['accepted']:,} accepted envelopes"
        )
    return delivered["delivered"] / delivered["seconds"] if delivered["seconds"] else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="pairs of runs per configuration")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument(
        "--form",
        choices=["shared", "full"],
        default="shared",
        help="batch signatures shared by the batch's envelopes (as publishers of telemetry send them) "
        "or each envelope with its own proof",
    )
    parser.add_argument(
        "--ahead-rate", type=float, default=130_000, help="envelopes per second of run to prepare ahead"
    )
    args = parser.parse_args()
    args.idle, args.rate_batch = 3.0, 50
    form = "shared by each batch" if args.form == "shared" else "with each envelope's own proof"
    print(
        f"yiwang trust benchmark: batch {args.batch}, {args.seconds:g} s per run, batch signatures {form}", flush=True
    )
    with tempfile.TemporaryDirectory(prefix="yiwang-trust-") as folder:
        ca = make_pki(Path(folder))
        ahead = int(args.seconds * args.ahead_rate)
        for title, prepared in (("the gateway's cost (envelopes built and signed ahead)", ahead),
                                ("everything on one machine (built and signed while sending)", 0)):  # fmt: skip
            print(f"(a) {title}:", flush=True)
            ratios = []
            for repeat in range(args.repeat):
                rates = {}
                for signed in (False, True) if repeat % 2 == 0 else (True, False):
                    rates[signed] = measure(args, ca, signed, prepared)
                ratios.append(rates[True] / rates[False])
                print(f"    pair {repeat + 1}: plaintext, unsigned {rates[False]:>9,.0f} envelopes/s; "
                      f"mutual TLS + batch signatures verified {rates[True]:>9,.0f}/s; "
                      f"ratio {ratios[-1]:.1%}", flush=True)  # fmt: skip
            print(f"    ratio: median {statistics.median(ratios):.1%} of {len(ratios)} pairs (lowest "
                  f"{min(ratios):.1%}, highest {max(ratios):.1%}) (goal: at least 70%)", flush=True)  # fmt: skip
        ours = our_verify_rate(ca, 5.0)
        theirs = openssl_verify_rate(5)
        print(f"(b) signature verification, one core: yiwang {ours:,.0f}/s, openssl speed ed25519 {theirs:,.0f}/s, "
              f"ratio {ours / theirs:.1%} (goal: at least 80%)")  # fmt: skip


if __name__ == "__main__":
    main()
