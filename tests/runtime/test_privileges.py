"""A pool that is not root but holds the switch's capabilities (deploy/systemd's broker).

The pool runs as ``daemon`` with exactly ``qhpc.runtime.privileges.POOL_CAPABILITIES``
as ambient capabilities, no_new_privs and the unit's securebits (``setpriv``, as
deploy/systemd/qhpc.service sets them up): its programs must still run as
``nobody``, hold no capability at all (a non-root process keeps its capabilities
across ``setresuid``, so without the explicit drop a program could ``setuid(0)``), be
killed at their timeout and leave no work dir behind.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qhpc.runtime.privileges import POOL_CAPABILITIES

SRC = Path(__file__).resolve().parents[2] / "src"
NAMES = {0: "chown", 1: "dac_override", 3: "fowner", 5: "kill", 6: "setgid", 7: "setuid"}

POOL_SCRIPT = """
import json, os, sys
from qhpc.runtime import RuntimePool, ProgramStatus
from qhpc.runtime.privileges import can_switch_ids, effective_capabilities

PROBE = '''
import os
def main(pool_uid):
    os.mkdir("sticky"); os.chmod("sticky", 0o1777)
    open("sticky/f", "w").close(); os.chmod(".", 0o700)
    status = {l.split(":")[0]: l.split()[1] for l in open("/proc/self/status")
              if l.startswith("Cap")}
    tries = {}
    for uid in (0, pool_uid):
        try:
            os.setuid(uid)
            tries[uid] = "became"
        except PermissionError:
            tries[uid] = "refused"
    return {"uid": os.getuid(), "caps": status, "setuid": tries, "cwd": os.getcwd()}
'''
SLEEPS = "import time\\ndef main():\\n    time.sleep(60)\\n"
report = {"pool_uid": os.geteuid(), "can_switch": can_switch_ids(),
          "pool_caps": effective_capabilities()}
pool = RuntimePool(size=1, preload=(), workdir_parent=sys.argv[1])
with pool:
    report["run_as"] = None if pool.run_as is None else pool.run_as.user
    outcome = pool.run(PROBE, args={"pool_uid": os.geteuid()}, timeout=60)
    report["probe"] = outcome.return_value
    report["probe_status"] = str(outcome.status)
    slept = pool.run(SLEEPS, timeout=1.0)
    report["timeout_status"] = str(slept.status)
report["left"] = os.listdir(sys.argv[1])
print(json.dumps(report))
"""


@pytest.mark.skipif(
    os.geteuid() != 0, reason="setpriv to another user with capabilities needs root"
)
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_a_pool_with_only_the_switch_capabilities_runs_programs_as_nobody() -> None:
    try:
        daemon = pwd.getpwnam("daemon")
    except KeyError:
        pytest.skip("needs the user daemon")
    caps = ",".join(f"+{NAMES[c]}" for c in POOL_CAPABILITIES)
    parent = tempfile.mkdtemp(prefix="qhpc-caps-")
    try:
        os.chown(parent, daemon.pw_uid, daemon.pw_gid)
        os.chmod(parent, 0o711)  # programs must reach their work dirs below it
        env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(SRC),
               "HOME": parent}  # fmt: skip
        command = [
            "setpriv", f"--reuid={daemon.pw_uid}", f"--regid={daemon.pw_gid}",
            "--clear-groups", f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
            f"--bounding-set=-all,{caps}", "--no-new-privs",  # as deploy/systemd/qhpc.service
            "--securebits=+noroot,+noroot_locked", sys.executable, "-c", POOL_SCRIPT, parent,
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=180, env=env, cwd=parent
        )
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["pool_uid"] == daemon.pw_uid and report["can_switch"]
    assert report["pool_caps"] == sum(1 << c for c in POOL_CAPABILITIES)
    assert report["run_as"] in ("qhpc-runtime", "nobody")
    probe = report["probe"]
    assert report["probe_status"].endswith("completed"), report
    assert probe["uid"] == pwd.getpwnam(report["run_as"]).pw_uid
    # The bounding set stays (dropping it needs CAP_SETPCAP), but with no permitted caps
    # and PR_SET_NO_NEW_PRIVS no exec can gain any from it.
    held = {k: v for k, v in probe["caps"].items() if k != "CapBnd"}
    assert held == dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapAmb"), "0" * 16), held
    assert probe["setuid"] == {"0": "refused", str(daemon.pw_uid): "refused"}
    assert report["timeout_status"].endswith("timeout"), report
    assert report["left"] == [], report  # the pool removed its work dirs, sticky ones too


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv to another user needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.parametrize(("caps", "expected"), [("", False), ("+setuid", False),
                                                ("+setuid,+setgid", True)])  # fmt: skip
def test_switching_needs_both_setuid_and_setgid(caps: str, expected: bool) -> None:
    flags = [f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}"] if caps else []
    done = subprocess.run(
        ["setpriv", "--reuid=daemon", "--regid=daemon", "--clear-groups", *flags,
         sys.executable, "-c",
         "from qhpc.runtime.privileges import can_switch_ids; print(can_switch_ids())"],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(SRC)}, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(expected)
