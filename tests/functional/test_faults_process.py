"""Fault campaign, process faults: SIGINT, SIGTERM and SIGKILL at each phase of
provisioning. The cluster is built by a child process talking through the
fault proxy, which holds the chosen call's answer back so that the signal
lands while that call is in flight."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from cloudcompute import Cluster, connect, gc
from tests.functional.conftest import sigint_default

CHILD = textwrap.dedent("""
    import logging, sys, time
    logging.basicConfig(level=logging.INFO)
    from cloudcompute import Cluster, ClusterSpec
    def progress(phase, node):
        print("PHASE", phase, node, flush=True)
    c = Cluster(ClusterSpec(name=sys.argv[1], nodes=2), cloud=sys.argv[2],
                progress=progress)
    c.up()
    print("UP", flush=True)
    time.sleep(600)
""")


def _recorded(state_dir, name, kind, with_id):
    try:
        with open(os.path.join(state_dir, name + ".json")) as f:
            entries = json.load(f)["resources"][kind].values()
    except (OSError, ValueError, KeyError):
        return False
    return any(bool(e.get("id")) == with_id for e in entries)


# phase -> (proxy rule that keeps the phase open, trigger)
PHASES = {
    "security group create in flight": (
        dict(method="POST", port=9696, path=r"/security-groups$", action="delay",
             delay=4, forward=True, nth=1),
        lambda out, sd, n: _recorded(sd, n, "keypairs", True)),
    "server create in flight": (
        dict(method="POST", port=8774, path=r"/servers$", action="delay", delay=4,
             forward=True, nth=1),
        lambda out, sd, n: _recorded(sd, n, "servers", False)),
    "waiting for ACTIVE": (None, lambda out, sd, n: any("PHASE created" in x for x in out)),
    "waiting for SSH": (None, lambda out, sd, n: any("PHASE active" in x for x in out)),
}


def _interrupt(proxy, cloud, unique, state_dir, phase, sig):
    rule, trigger = PHASES[phase]
    if rule:
        proxy.add(**rule)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, unique, cloud],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=sigint_default)
    out = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    end = time.monotonic() + 90
    while not trigger(out, state_dir, unique):
        assert proc.poll() is None, "".join(out)
        assert time.monotonic() < end, "phase %r never reached" % phase
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=180)
    reader.join(timeout=10)
    return proc.returncode, "".join(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_interrupt_at_each_phase_rolls_back(phase, sig, proxied, fault, unique, state_dir):
    name = signal.Signals(sig).name
    fault("%s while %s" % (name, phase), "process",
          "rollback deletes everything, process exits non-zero, state file removed")
    cloud, proxy = proxied
    code, out = _interrupt(proxy, cloud, unique, state_dir, phase, sig)
    assert code != 0 and "UP" not in out, out
    assert "rolling back" in out, out
    assert os.listdir(state_dir) == [], out
    fault.observed = "exit %d after rollback; state directory empty" % code


@pytest.mark.parametrize("phase,recover", [
    ("security group create in flight", "gc"), ("server create in flight", "attach+down"),
    ("waiting for ACTIVE", "gc"), ("waiting for SSH", "attach+down")])
def test_sigkill_at_a_phase_then_recovery(phase, recover, proxied, fault, unique, state_dir):
    fault("SIGKILL while %s, then %s" % (phase, recover), "process",
          "the state file holds what was made; %s deletes all of it" % recover)
    cloud, proxy = proxied
    code, out = _interrupt(proxy, cloud, unique, state_dir, phase, signal.SIGKILL)
    assert code == -signal.SIGKILL
    time.sleep(4.5)  # let an answer that was held back reach the dead process
    proxy.reset()
    assert unique + ".json" in os.listdir(state_dir)
    if recover == "gc":
        report = [o for o in gc.collect(connect(cloud), dry_run=False)
                  if o.found.name == unique]
        assert report and report[0].deleted, report
        how = "gc deleted %d recorded resource(s) (%s)" % (len(report[0].found.resources),
                                                           report[0].found.reason)
    else:
        c = Cluster.attach(unique, cloud=cloud)
        c.down()
        how = "attach + down deleted it"
    assert [f for f in os.listdir(state_dir) if f.endswith(".json")] == []
    fault.observed = "killed; " + how
