"""gc on a real cloud: collects what was abandoned, never a live cluster."""
import signal
import subprocess
import sys
import time

from cloudcompute import Cluster, ClusterSpec, gc
from tests.functional.conftest import CLOUD, keypairs_with, leftovers
from tests.functional.test_provision import CHILD


def test_sigkilled_owner_is_collected_and_live_cluster_untouched(conn, admin_conn, unique,
                                                                state_dir):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, unique + "dead", CLOUD, "wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.strip() == "UP":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Cluster(ClusterSpec(name=unique + "live", nodes=1), cloud=CLOUD) as live:
        dry = gc.collect(conn, dry_run=True)
        mine = [o for o in dry if unique in (o.found.name or "")]
        assert [o.found.name for o in mine] == [unique + "dead"]
        assert "owner process" in (mine[0].found.reason or "") and not mine[0].deleted
        assert any(unique + "dead" in s.name for s in conn.compute.servers())
        done = gc.collect(conn, dry_run=False)
        assert [o.deleted for o in done if unique in (o.found.name or "")] == [True]
        assert leftovers(admin_conn, conn.current_project_id, unique + "dead") == []
        assert keypairs_with(conn, unique + "dead") == []
        assert live.run(__import__("tests.functional.jobfuncs",
                                   fromlist=["echo"]).echo, 5) == 5
    assert leftovers(admin_conn, conn.current_project_id, unique) == []


def test_expired_detached_cluster_is_collected(conn, admin_conn, unique, state_dir):
    # autodown=False: its watchdog would delete it first (test_autodown covers that)
    c = Cluster(ClusterSpec(name=unique, nodes=1, ttl_hours=1 / 3600.0, autodown=False),
                cloud=CLOUD).up()
    c.detach()
    time.sleep(1.5)
    report = gc.collect(conn, dry_run=False)
    mine = [o for o in report if o.found.name == unique]
    assert mine and mine[0].deleted and (mine[0].found.reason or "").startswith("expired")
    assert leftovers(admin_conn, conn.current_project_id, unique) == []
    assert keypairs_with(conn, unique) == []
