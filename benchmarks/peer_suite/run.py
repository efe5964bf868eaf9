"""laplace-torch's own test suite, run on laplace-torch and on ``laplacetorch.compat``.

Issue 34: a user switches by one import. The tests of aleximmer/Laplace (a checkout given as
``LAPLACE_TESTS``, the directory holding ``tests/``; their code is not copied here) run twice
with the same pytest: once on the installed laplace-torch, once with ``laplace`` resolving to
``laplacetorch.compat`` (``laplace_alias.py``: names only, strict imports). Printed: how many
of the tests that pass on laplace-torch pass on compat, and the compat failures among them
grouped by cause (exception type and the first line of its message).

Usage::

    python benchmarks/peer_suite/run.py LAPLACE_TESTS [--only tests/test_lllaplace.py] [-k EXPR]
        [--reuse]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(root: Path, targets: list[str], alias: bool, out: Path, extra: list[str]) -> float:
    """pytest on ``targets`` under ``root`` (junit XML to ``out``); its wall time."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))

    # torchvision_stub: a stand-in where torchvision is missing, for both runs alike
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-p", "torchvision_stub", "--continue-on-collection-errors",
            f"--junitxml={out}", "-o", "addopts=", *extra,
            *targets]  # fmt: skip
    if alias:
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(root), env.get("PYTHONPATH", "")])
        args[3:3] = ["-p", "laplace_alias"]
    else:
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(root), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    subprocess.run(args, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def outcomes(xml: Path) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, cause) from a junit XML file."""
    result = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure")
        bad = bad if bad is not None else case.find("error")
        if case.find("skipped") is not None:
            result[test] = ("skipped", "")
        elif bad is not None:
            result[test] = ("failed", cause(bad.get("message") or bad.text or ""))
        else:
            result[test] = ("passed", "")
    return result


def cause(message: str) -> str:
    """A failure's cause: its first line with numbers and quoted values blanked."""
    line = message.strip().splitlines()[0] if message.strip() else "(no message)"
    line = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", line)
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", line)[:150]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="a checkout of aleximmer/Laplace (holds tests/)")
    parser.add_argument("--only", nargs="*", default=["tests"])
    parser.add_argument("-k", default=None)
    parser.add_argument("--out", type=Path, default=Path("/tmp/peer_suite"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--reuse", action="store_true", help="keep laplace-torch's last run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extra = ["-k", args.k] if args.k else []
    root = args.root.resolve()
    theirs_xml = args.out / "laplace_torch.xml"
    if args.reuse and theirs_xml.exists():  # laplace-torch's outcomes do not change
        t_lt = 0.0
    else:
        t_lt = run(root, args.only, False, theirs_xml, extra)
    t_compat = run(root, args.only, True, args.out / "compat.xml", extra)
    theirs, ours = outcomes(args.out / "laplace_torch.xml"), outcomes(args.out / "compat.xml")
    passing = [t for t, (o, _) in theirs.items() if o == "passed"]
    kept = [t for t in passing if ours.get(t, ("missing", ""))[0] == "passed"]
    share = 100 * len(kept) / max(len(passing), 1)
    print(
        f"laplace-torch: {len(passing)} of {len(theirs)} pass ({t_lt:.0f} s); compat: "
        f"{len(kept)} of those {len(passing)} pass ({share:.1f} %, {t_compat:.0f} s)"
    )
    lost = Counter(ours.get(t, ("missing", "not collected (an import failed)"))[1]
                   for t in passing if t not in kept)  # fmt: skip
    by_file = Counter(t.split("::")[0] for t in passing if t not in kept)
    print("\ncompat failures among laplace-torch's passing tests, by cause:")
    for why, n in lost.most_common(args.top):
        print(f"{n:>5}  {why}")
    print("\nby file:")
    for f, n in by_file.most_common():
        print(f"{n:>5}  {f}")


if __name__ == "__main__":
    main()
