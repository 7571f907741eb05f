"""The local cloud's opt-in fake compute host (``devstack/aio/cloud fake-compute``).

Servers of the flavor cc.fake go ACTIVE on it, an ordinary flavor's server
never lands there, and ``fake-compute down`` leaves no server, port,
service, provider, aggregate or flavor of it behind.
"""
import os
import subprocess
import time

from tests.functional.conftest import leftovers

AIO = os.path.join(os.path.dirname(__file__), "..", "..", "devstack", "aio", "cloud")
HOST = "aio-fake"
FAKE_FLAVOR = "cc.fake"


def aio(*args, check=True):
    done = subprocess.run([AIO, "fake-compute", *args], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def wait_active(conn, ids, timeout=60):
    end = time.monotonic() + timeout
    while True:
        servers = {s.id: s for s in conn.compute.servers() if s.id in ids}
        assert not [s.fault for s in servers.values() if s.status == "ERROR"]
        if len(servers) == len(ids) and all(s.status == "ACTIVE" for s in servers.values()):
            return
        assert time.monotonic() < end, {s.name: s.status for s in servers.values()}
        time.sleep(0.5)


def test_fake_host_takes_only_its_flavor_and_goes_away_clean(conn, admin_conn, unique):
    image = conn.image.find_image("debian-12-cc", ignore_missing=False)
    net = conn.network.find_network("private", ignore_missing=False)
    ids = []

    def boot(flavor, suffix, count=1):
        fid = conn.compute.find_flavor(flavor, ignore_missing=False).id
        conn.compute.create_server(name="%s-%s" % (unique, suffix), image_id=image.id,
                                   flavor_id=fid, networks=[{"uuid": net.id}],
                                   min_count=count, max_count=count)
        new = [s.id for s in conn.compute.servers(name="^%s-%s" % (unique, suffix))]
        assert len(new) == count
        ids.extend(new)
        return new

    aio("up")
    try:
        fake = boot(FAKE_FLAVOR, "fake", count=3)
        ordinary = boot("m1.tiny", "ordinary", count=2)
        wait_active(conn, set(ids))
        hosts = {sid: admin_conn.compute.get_server(sid).compute_host for sid in ids}
        assert {hosts[sid] for sid in fake} == {HOST}
        assert HOST not in {hosts[sid] for sid in ordinary}
        status = aio("status")
        assert "servers on %s: 3" % HOST in status.stdout
    finally:
        for sid in ids:
            conn.compute.delete_server(sid, ignore_missing=True)
        end = time.monotonic() + 60
        while any(s.id in ids for s in conn.compute.servers()):
            assert time.monotonic() < end, "servers not deleted within 60s"
            time.sleep(0.3)
        aio("down")
    # the cloud, listed: nothing of the servers, nothing of the host
    assert leftovers(admin_conn, conn.current_project_id, unique) == []
    assert [p.id for sid in ids for p in admin_conn.network.ports(device_id=sid)] == []
    assert list(admin_conn.compute.servers(all_projects=True, host=HOST)) == []
    assert list(admin_conn.compute.services(binary="nova-compute", host=HOST)) == []
    assert HOST not in {h.name for h in admin_conn.compute.hypervisors()}
    assert "cc-fake" not in {a.name for a in admin_conn.compute.aggregates()}
    assert admin_conn.compute.find_flavor(FAKE_FLAVOR, ignore_missing=True) is None
    assert aio("status", check=False).returncode != 0
