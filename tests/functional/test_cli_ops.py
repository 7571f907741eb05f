"""The command line as an ops host runs it, on the real cloud: bad input to `up`
creates nothing, and the old-clusters report finds a backdated cluster."""
import json
import os
import subprocess
import sys
import time

import pytest

from cloudcompute import tags
from tests.functional.conftest import CLOUD, keypairs_with, leftovers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = os.path.join(ROOT, "examples", "ops", "old_clusters.py")


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cloudcompute.cli", "--os-cloud", CLOUD]
                          + list(args), capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env=env)


@pytest.mark.parametrize("args,message", [
    (["--flavor", "no-such-flavor"], "unknown flavor 'no-such-flavor'"),
    (["--group", "a=1", "--group", "b=1:no-such-flavor"],
     "group b: unknown flavor 'no-such-flavor'"),
    (["--group", "a=1::no-such-image"], "group a: unknown image 'no-such-image'"),
])
def test_up_with_an_unknown_name_exits_2_and_creates_nothing(args, message, conn, admin_conn,
                                                             unique, state_dir):
    r = cli("up", unique, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.splitlines() == [r.stderr.strip()] and message in r.stderr, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert leftovers(admin_conn, conn.current_project_id, unique) == []
    assert keypairs_with(conn, unique) == []
    assert os.listdir(state_dir) == []


def test_up_flags_from_the_environment_reach_the_cloud(conn, admin_conn, unique, state_dir):
    env = dict(os.environ, CLOUDCOMPUTE_FLAVOR="no-such-flavor", CLOUDCOMPUTE_NODES="1")
    r = cli("up", unique, env=env)
    assert r.returncode == 2 and "unknown flavor 'no-such-flavor'" in r.stderr, r.stderr
    assert leftovers(admin_conn, conn.current_project_id, unique) == []


def report(listing, hours):
    return subprocess.run([sys.executable, REPORT, "--hours", str(hours)], input=listing,
                          capture_output=True, text=True, timeout=60)


def test_old_clusters_report_finds_a_backdated_cluster(conn, admin_conn, unique, state_dir):
    up = cli("-f", "json", "up", unique, "--nodes", "1", "--ttl-hours", "1")
    assert up.returncode == 0, up.stderr[-3000:]
    doc = json.loads(up.stdout)
    cid = doc["cluster_id"]
    try:
        listing = cli("-f", "json", "list")
        assert listing.returncode == 0, listing.stderr[-2000:]
        fresh = report(listing.stdout, 24)
        assert fresh.returncode in (0, 1) and cid not in fresh.stdout, fresh.stdout
        # Backdate it: the servers' creation metadata, as an old cluster has it.
        backdated = int(time.time() - 48 * 3600)
        for node in doc["nodes"]:
            conn.compute.set_server_metadata(node["server_id"],
                                             **{tags.META_CREATED: str(backdated)})
        listing = cli("-f", "json", "list")
        assert listing.returncode == 0, listing.stderr[-2000:]
        mine = [c for c in json.loads(listing.stdout)["clusters"] if c["cluster_id"] == cid]
        assert len(mine) == 1 and mine[0]["created"] == backdated
        old = report(listing.stdout, 24)
        assert old.returncode == 1, (old.stdout, old.stderr)
        line = [ln for ln in old.stdout.splitlines() if ln.startswith(cid + " ")]
        assert len(line) == 1 and line[0].startswith("%s (%s): 48.0 h old" % (cid, unique))
        older = report(listing.stdout, 72)
        assert cid not in older.stdout
    finally:
        down = cli("down", unique)
    assert down.returncode == 0, down.stderr[-3000:]
    assert leftovers(admin_conn, conn.current_project_id, unique) == []
    assert keypairs_with(conn, unique) == []
