"""Fault campaign: the safety holes of gc, the state record, ssh users and debug logs.

- gc run from another state directory (or another cloud name) leaves a
  detached cluster whose owner has exited alone;
- a server with forged metadata makes gc skip its cluster, not stop;
- two ``up`` of one name at once: exactly one cluster, a StateError for the other;
- a hostile ``ssh_user`` is refused before anything is created;
- a ``-vv`` run of the command line logs no private key, token or password.
"""
import base64
import binascii
import glob
import json
import os
import re
import subprocess
import sys
import textwrap
import threading

import yaml

from cloudcompute import Cluster, ClusterSpec, connect, gc, tags
from cloudcompute.exceptions import ConfigError, StateError
from cloudcompute.state import ClusterState
from tests.functional import jobfuncs as jf
from tests.functional.conftest import CLOUD, keypairs_with, leftovers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DETACHED_CHILD = textwrap.dedent("""
    import sys
    from cloudcompute import Cluster, ClusterSpec
    c = Cluster(ClusterSpec(name=sys.argv[1], nodes=1, ttl_hours=48), cloud=sys.argv[2]).up()
    c.detach()
    print("DETACHED", c.state.cluster_id, flush=True)
""")


def _servers(conn, marker):
    return sorted(s.id for s in conn.compute.servers() if marker in s.name)


def _envvars_connection(conn, tmp_path, monkeypatch):
    """The same cloud and project through OS_* variables: its cloud name is 'envvars'."""
    auth = conn.config.config["auth"]
    empty = tmp_path / "no-clouds.yaml"
    empty.write_text("clouds: {}\n")
    with monkeypatch.context() as m:
        m.delenv("OS_CLOUD", raising=False)
        m.setenv("OS_CLIENT_CONFIG_FILE", str(empty))
        for key in ("auth_url", "username", "password", "project_name", "user_domain_id",
                    "project_domain_id"):
            m.setenv("OS_" + key.upper(), auth[key])
        m.setenv("OS_REGION_NAME", conn.config.get_region_name())
        m.setenv("OS_IDENTITY_API_VERSION", "3")
        return connect()


def test_gc_elsewhere_leaves_a_detached_cluster_alone(fault, conn, unique, tmp_path,
                                                      monkeypatch):
    fault("gc from another state directory and under another cloud name, while a detached "
          "cluster's owner has exited", "concurrency",
          "the cluster is not collectable and keeps its server")
    owner_dir, other_dir = tmp_path / "owner", tmp_path / "other"
    owner_dir.mkdir()
    other_dir.mkdir()
    r = subprocess.run([sys.executable, "-c", DETACHED_CHILD, unique, CLOUD],
                       env=dict(os.environ, CLOUDCOMPUTE_STATE_DIR=str(owner_dir)),
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and "DETACHED" in r.stdout, r.stderr[-2000:]
    cid = r.stdout.split()[-1]
    try:
        before = _servers(conn, unique)
        assert len(before) == 1
        other_name = _envvars_connection(conn, tmp_path, monkeypatch)
        assert other_name.config.name == "envvars"
        assert other_name.current_project_id == conn.current_project_id
        seen = []
        for c, where in ((conn, other_dir), (other_name, owner_dir), (other_name, other_dir)):
            dry = gc.collect(c, dry_run=True, state_dir=str(where))
            assert [x for x in dry if x.found.cluster_id == cid] == []
            listed = [x for x in gc.assess(c, str(where)) if x.cluster_id == cid]
            assert [(x.reason, x.detached) for x in listed] == [(None, True)], listed
            report = gc.collect(c, dry_run=False, state_dir=str(where))
            assert [x for x in report if x.found.cluster_id == cid] == []
            seen.append(len(report))
        assert _servers(conn, unique) == before
    finally:
        Cluster.attach(unique, cloud=CLOUD, state_dir=str(owner_dir)).down()
    fault.observed = ("listed as detached, not collectable, from 3 places (gc reports of %s "
                      "entries); server kept until down()" % seen)


def test_gc_survives_forged_server_metadata(fault, conn, unique, state_dir):
    fault("a server of a live cluster with forged metadata (cc_expires 'soon'; then an "
          "expired cc_expires with cc_name '../../x')", "input",
          "gc and list finish; that cluster is skipped and reported; it keeps working")
    with Cluster(ClusterSpec(name=unique, nodes=1), cloud=CLOUD) as c:
        sid, cid = c.nodes[0].server_id, c.state.cluster_id
        observed = []
        for forged in ({tags.META_EXPIRES: "soon"},
                       {tags.META_EXPIRES: "1000", tags.META_NAME: "../../x"}):
            conn.compute.set_server_metadata(sid, **forged)
            for dry in (True, False):
                report = [x for x in gc.collect(conn, dry_run=dry)
                          if x.found.cluster_id == cid]
                assert len(report) == 1 and not report[0].deleted, report
                assert "server %s" % c.nodes[0].name in (report[0].skipped or "")
            observed.append(report[0].skipped)
            listing = subprocess.run([sys.executable, "-m", "cloudcompute.cli", "-f", "json",
                                      "list"], capture_output=True, text=True, timeout=120,
                                     cwd=ROOT)
            assert listing.returncode == 0, listing.stderr[-2000:]
            mine = [x for x in json.loads(listing.stdout)["clusters"] if x["cluster_id"] == cid]
            assert mine[0]["problems"] and mine[0]["orphan_reason"] is None
        assert c.run(jf.echo, 4) == 4
    fault.observed = "skipped: " + " | ".join(observed)


def test_two_ups_of_one_name_at_once(fault, conn, admin_conn, unique, state_dir,
                                    monkeypatch):
    fault("two up() of one cluster name at the same moment", "concurrency",
          "exactly one cluster comes up; the other gets StateError; nothing leaks")
    barrier = threading.Barrier(2)
    # Pre-flight takes each thread its own time; meet again just before the record
    # is created, so that the two creates really race.
    real_create = ClusterState.create.__func__
    meet = threading.Barrier(2, timeout=120)

    def create_together(cls, *args, **kwargs):
        meet.wait()
        return real_create(cls, *args, **kwargs)
    monkeypatch.setattr(ClusterState, "create", classmethod(create_together))
    outcome = [None, None]
    clusters = [Cluster(ClusterSpec(name=unique, nodes=1), cloud=CLOUD) for _ in range(2)]

    def up(i):
        barrier.wait()
        try:
            clusters[i].up()
            outcome[i] = "up"
        except Exception as exc:  # noqa: BLE001 - the outcome is what is asserted
            outcome[i] = exc
    threads = [threading.Thread(target=up, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    try:
        assert sorted(map(str, outcome)).count("up") == 1, outcome
        loser = next(o for o in outcome if o != "up")
        assert isinstance(loser, StateError) and "already recorded" in str(loser), loser
        winner = clusters[outcome.index("up")]
        assert len(_servers(conn, unique)) == 1
        assert winner.run(jf.echo, 1) == 1
    finally:
        for c in clusters:
            if c.state is not None:
                c.down()
    assert leftovers(admin_conn, conn.current_project_id, unique) == []
    assert keypairs_with(conn, unique) == [] and os.listdir(state_dir) == []
    fault.observed = "one up; the other: StateError: %s" % str(loser)[:120]


HOSTILE = "-oProxyCommand=touch /tmp/cc-pwned-%s"


def test_hostile_ssh_user_is_refused_before_anything_is_created(fault, conn, unique,
                                                                state_dir, tmp_path,
                                                                monkeypatch):
    fault("ssh_user '-oProxyCommand=touch /tmp/...' in the spec, in clouds.yaml and "
          "on the command line", "security",
          "ConfigError / exit 2 naming ssh_user before any API call; nothing created")
    user = HOSTILE % unique
    with fault.raises(ConfigError, match="ssh_user"):
        Cluster(ClusterSpec(name=unique, nodes=1, ssh_user=user), cloud=CLOUD)
    observed = fault.observed
    # the same value in the clouds.yaml cloudcompute section
    cfg = yaml.safe_load(open(os.environ["OS_CLIENT_CONFIG_FILE"]))
    cfg["clouds"][CLOUD].setdefault("cloudcompute", {})["ssh_user"] = user
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    try:
        Cluster(ClusterSpec(name=unique, nodes=1), cloud=CLOUD)
        raise AssertionError("a hostile ssh_user from clouds.yaml was accepted")
    except ConfigError as exc:
        assert "ssh_user" in str(exc)
    r = subprocess.run([sys.executable, "-m", "cloudcompute.cli", "up", unique, "--nodes", "1",
                        "--ssh-user", user], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env=dict(os.environ, OS_CLOUD=CLOUD))
    assert r.returncode == 2 and "ssh_user" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists("/tmp/cc-pwned-%s" % unique)
    assert os.listdir(state_dir) == [] and _servers(conn, unique) == []
    fault.observed = observed + "; clouds.yaml: ConfigError; CLI: exit 2"


VV_RUN = textwrap.dedent("""
    import json, sys
    from cloudcompute import cli, config
    from cloudcompute.ssh import hostkeys
    keys, tokens = sys.argv[1], sys.argv[2]
    real_generate, real_connect = hostkeys.generate_ed25519, config.connect

    def generate():
        private, public = real_generate()
        with open(keys, "a") as f:
            f.write(json.dumps(private) + "\\n")
        return private, public

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        with open(tokens, "a") as f:
            f.write(conn.auth_token + "\\n")
        return conn

    hostkeys.generate_ed25519, config.connect = generate, connect
    sys.exit(cli.main(sys.argv[3:]))
""")


def _decoded_blobs(text):
    """Every long base64 run in the log, decoded (user_data travels base64-encoded)."""
    out = []
    for blob in re.findall(r"[A-Za-z0-9+/]{60,}={0,2}", text):
        try:
            out.append(base64.b64decode(blob + "=" * (-len(blob) % 4)).decode("utf-8", "replace"))
        except (binascii.Error, ValueError):
            pass
    return "\n".join(out)


def test_debug_log_of_up_and_down_holds_no_secret(fault, conn, unique, state_dir, tmp_path):
    fault("cloudcompute -vv up / down (DEBUG logs of keystoneauth and openstacksdk, request "
          "bodies included)", "security",
          "no private key (host or client), token or password in the log, plain or base64")
    keys, tokens = tmp_path / "keys", tmp_path / "tokens"
    log = ""
    for argv in (["-vv", "up", unique, "--nodes", "1"], ["-vv", "down", unique]):
        r = subprocess.run([sys.executable, "-c", VV_RUN, str(keys), str(tokens)] + argv,
                           capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env=dict(os.environ, OS_CLOUD=CLOUD))
        assert r.returncode == 0, r.stderr[-3000:]
        log += r.stdout + r.stderr
    assert "REQ: curl" in log and "-d '{\"server\"" in log  # request bodies were logged
    private_keys = [json.loads(ln) for ln in keys.read_text().splitlines()]
    assert len(private_keys) >= 3  # the client key, the internal key, a host key
    key_lines = [ln for k in private_keys for ln in k.splitlines() if "PRIVATE KEY" not in ln]
    secrets = {"password": [conn.config.config["auth"]["password"]],
               "token": tokens.read_text().split(), "private key": key_lines}
    decoded = _decoded_blobs(log)
    for what, values in secrets.items():
        assert values
        for v in values:
            assert v not in log, "%s in the log" % what
            assert v not in decoded, "%s base64-encoded in the log" % what
    assert '"user_data": "<redacted>"' in log
    assert glob.glob(os.path.join(state_dir, "*")) == []
    fault.observed = "%d log lines; %d key lines, %d tokens and the password absent" % (
        len(log.splitlines()), len(key_lines), len(secrets["token"]))
