#!/usr/bin/env python3
"""Run the Autobahn testsuite's fuzzingclient against the daemon's /echo route and check the verdicts.

    .venv/bin/python conformance/autobahn.py [--cases 1.* 2.* ...] [--no-compression] [--keep DIR]

Starts `twistd myservices` (from this virtualenv) on a private config with
compression on, runs cases 1-10 plus 12-13 (permessage-deflate), and exits 0
only if every case's behaviour and close behaviour is OK or INFORMATIONAL
(NON-STRICT counts as a failure). The suite needs Python 2.7: it is found as
$PYTHON27, `python2.7` on the PATH, or pyenv's 2.7 (pyenv has it on our
machines), and autobahntestsuite 0.8.2 is installed for it into a cache
directory ($MYSERVICES_AUTOBAHN_DIR, default ~/.cache/myservices/autobahntestsuite)
the first time. The HTML report is kept with --keep.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from common import start_myservices, stop  # noqa: E402

SUITE = "autobahntestsuite==0.8.2"
DEFAULT_CASES = [f"{n}.*" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)]
COMPRESSION_CASES = ["12.*", "13.*"]
PASSING = {"OK", "INFORMATIONAL"}

CONFIG = """
[daemon]
data_dir = "data"
shutdown_timeout = 2
[database]
url = "sqlite:///conformance.sqlite3"
[services.websocket]
endpoint = "tcp:0:interface=127.0.0.1"
# case 9 sends messages of up to 16 MiB
max_message_size = "20 MiB"
max_frame_size = "20 MiB"
compression = {compression}
"""


def find_python27() -> str:
    candidates = [os.environ.get("PYTHON27", ""), "python2.7"]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", "2.7*", "bin", "python2.7")), reverse=True)
    for candidate in candidates:
        if candidate and shutil.which(candidate):
            probe = subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (2, 7)"],
                                   capture_output=True)
            if probe.returncode == 0:
                return candidate
    sys.exit("no Python 2.7 found: set PYTHON27, or install 2.7 with pyenv (the Autobahn testsuite needs it)")


def suite(python27: str) -> tuple[list[str], dict[str, str]]:
    """The wstest command and its environment, installing the suite first if needed."""
    base = Path(os.environ.get("MYSERVICES_AUTOBAHN_DIR", Path.home() / ".cache/myservices/autobahntestsuite"))
    env = dict(os.environ, PYTHONUSERBASE=str(base), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    wstest = base / "bin" / "wstest"
    if not wstest.exists():
        print(f"installing {SUITE} for {python27} into {base} ...", flush=True)
        subprocess.run([python27, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--user", SUITE],
                       env=env, check=True)
    return [python27, str(wstest)], env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", help="case patterns (default: 1-10, and 12-13 with compression)")
    parser.add_argument("--no-compression", action="store_true", help="compression off; cases 12-13 are left out")
    parser.add_argument("--keep", metavar="DIR", help="copy the HTML report here")
    args = parser.parse_args()
    compression = not args.no_compression
    cases = args.cases or DEFAULT_CASES + (COMPRESSION_CASES if compression else [])

    wstest, env = suite(find_python27())
    workdir = tempfile.mkdtemp(prefix="myservices-autobahn-")
    proc, ports = start_myservices(workdir, CONFIG.format(compression=str(compression).lower()))
    started = time.monotonic()
    try:
        spec = {
            "outdir": os.path.join(workdir, "reports"),
            "servers": [{"agent": "myservices", "url": f"ws://127.0.0.1:{ports['websocket']}/echo"}],
            "cases": cases,
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }
        spec_path = os.path.join(workdir, "fuzzingclient.json")
        Path(spec_path).write_text(json.dumps(spec))
        print(f"fuzzingclient: cases {' '.join(cases)} against {spec['servers'][0]['url']}", flush=True)
        run = subprocess.run([*wstest, "-m", "fuzzingclient", "-s", spec_path], cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        alive = proc.poll() is None
    finally:
        stop(proc)
    elapsed = time.monotonic() - started
    index_path = Path(spec["outdir"]) / "index.json"
    if run.returncode != 0 or not index_path.exists():
        print(run.stdout[-4000:])
        print(f"fuzzingclient failed (exit {run.returncode})")
        return 1
    results = json.loads(index_path.read_text())["myservices"]
    verdicts: Counter[str] = Counter()
    failures = []
    for case, result in sorted(results.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
        verdicts[result["behavior"]] += 1
        if result["behavior"] not in PASSING or result["behaviorClose"] not in PASSING:
            failures.append(f"  {case}: {result['behavior']} (close: {result['behaviorClose']})")
    if args.keep:
        shutil.copytree(spec["outdir"], args.keep, dirs_exist_ok=True)
    shutil.rmtree(workdir, ignore_errors=True)
    summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(verdicts.items()))
    print(f"{len(results)} cases in {elapsed:.0f}s: {summary}; compression {'on' if compression else 'off'}")
    if not alive:
        print("the daemon died during the run")
        return 1
    if failures:
        print("cases that are neither OK nor INFORMATIONAL:\n" + "\n".join(failures))
        return 1
    print("every case OK or INFORMATIONAL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
