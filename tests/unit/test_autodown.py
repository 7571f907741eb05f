"""The watchdog's rules (deadline, idle, busy), its deletion order and its REST
client, against a stand-in cloud that answers by path as the APIs do."""
import io
import json
import os
import types
import urllib.error

import pytest

from cloudcompute import listing
from cloudcompute.autodown import credential, rest, watchdog

NOW = 1_800_000_000.0


# -- the decision --------------------------------------------------------------
def test_deadline_passed_ends_the_cluster_even_when_busy():
    assert watchdog.decide(NOW, NOW - 1, None, NOW, busy=True) == "deadline"
    assert watchdog.decide(NOW, NOW, 60, NOW, busy=True) == "deadline"
    assert watchdog.decide(NOW, NOW + 1, None, NOW - 10 ** 6, busy=False) is None


def test_idle_counts_only_without_work():
    assert watchdog.decide(NOW, NOW + 999, 60, NOW - 60, busy=False) == "idle"
    assert watchdog.decide(NOW, NOW + 999, 60, NOW - 59, busy=False) is None
    assert watchdog.decide(NOW, NOW + 999, 60, NOW - 3600, busy=True) is None
    assert watchdog.decide(NOW, None, None, NOW - 3600, busy=False) is None


# -- activity, read from a stand-in /proc ---------------------------------------
TCP_HEADER = "  sl  local_address rem_address   st ...\n"


def fake_proc(tmp_path, tcp_rows=(), procs=()):
    """/proc with net/tcp rows and processes (pid, cmdline, netns)."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(TCP_HEADER + "".join(
        "   %d: %s %s %s 0:0 0:0 0 0 0 1\n" % (i, local, remote, state)
        for i, (local, remote, state) in enumerate(tcp_rows)))
    for pid, cmdline, netns in procs:
        d = proc / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "cmdline").write_bytes(cmdline)
        os.symlink("net:[%s]" % netns, d / "ns" / "net")
    return str(proc)


def test_ssh_activity_is_an_established_connection_to_port_22(tmp_path):
    proc = fake_proc(tmp_path, [("E5002A0A:0016", "00000000:0000", "0A"),  # listening
                                ("E5002A0A:9D70", "01002A0A:1388", "01"),  # to the API
                                ("E5002A0A:0016", "01002A0A:C350", "01")])  # a session
    assert watchdog.Activity(proc, str(tmp_path / "none"), own_pid=1).ssh_connections() == 1
    proc2 = fake_proc(tmp_path / "b", [("E5002A0A:0016", "00000000:0000", "0A")])
    assert watchdog.Activity(proc2, str(tmp_path / "none"), own_pid=1).ssh_connections() == 0


def test_busy_is_a_job_process_in_this_node_only(tmp_path):
    watch = (1, b"python3\0-c\0from ccwatch.watchdog import main", "111")
    here = (2, b"python3\0-u\0-c\0from ccnode.worker import main", "111")
    elsewhere = (3, b"python3\0-c\0from ccnode.jobd import main", "222")
    other = (4, b"sleep\0100", "111")
    proc = fake_proc(tmp_path, procs=[watch, elsewhere, other])
    assert not watchdog.Activity(proc, str(tmp_path / "x"), own_pid=1).busy()
    proc = fake_proc(tmp_path / "b", procs=[watch, here, other])
    assert watchdog.Activity(proc, str(tmp_path / "x"), own_pid=1).busy()


def test_the_activity_file_is_activity(tmp_path):
    f = tmp_path / "activity"
    act = watchdog.Activity(fake_proc(tmp_path), str(f), own_pid=1)
    assert act.touched() == 0.0
    f.write_text("")
    os.utime(f, (NOW - 5, NOW - 5))
    watch = watchdog.Watch({"server_id": "s0", "deadline": NOW + 999, "idle_minutes": 1},
                           FakeSession(Cloud()), act, now=NOW - 600)
    assert watch.step(NOW) is None and watch.last_active == NOW - 5
    os.utime(f, (NOW - 61, NOW - 61))
    watch.last_active = NOW - 600
    assert watch.step(NOW) == "idle"


# -- a stand-in cloud answering by method and path --------------------------------
class Cloud:
    """Resources by (service, path); DELETE takes ``lag`` GETs to finish, as
    Nova's does; ``fail`` maps (method, path) to statuses answered first."""

    def __init__(self, paths=(), lag=1, meta=None):
        self.present = {p: lag for p in paths}
        self.calls = []
        self.fail = {}
        self.meta = dict(meta or {})
        self.in_use = set()

    def answer(self, method, service, path, body=None):
        self.calls.append((method, service, path))
        queued = self.fail.get((method, path))
        if queued:
            return queued.pop(0), None
        key = (service, path)
        if method == "GET" and path == "/servers/s0":
            return 200, {"server": {"id": "s0", "metadata": self.meta}}
        if method == "GET":
            if key not in self.present:
                return 404, None
            if self.present[key] == "deleting":
                del self.present[key]
                return 404, None
            return 200, {}
        if method == "DELETE":
            if path in self.in_use:
                return 409, {"NeutronError": "in use"}
            if key not in self.present:
                return 404, None
            self.present[key] = "deleting"
            return 204, None
        if method == "PUT" and path.startswith("/ports/"):
            self.in_use.clear()
            return 200, {"port": body["port"]}
        return 201, None


class FakeSession:
    def __init__(self, cloud):
        self.cloud = cloud

    def request(self, method, service, path, body=None, headers=None):
        return self.cloud.answer(method, service, path, body)


CONFIG = {"cluster_id": "c-1", "server_id": "s0", "servers": ["s0", "s1", "s2"],
          "floating_ips": ["f1"], "keypair": "cc-c-1", "security_group": "g1",
          "default_security_group": "gd", "own_port": "p0",
          "leftovers": {"networks": ["n1"], "subnets": ["sn1"], "routers": ["r1"]},
          "user_id": "u1", "credential_id": "a1"}


def test_deletion_order_each_kind_verified_own_server_last():
    cloud = Cloud([("compute", "/servers/s1"), ("compute", "/servers/s2"),
                   ("network", "/floatingips/f1"), ("compute", "/os-keypairs/cc-c-1"),
                   ("network", "/security-groups/g1")])
    cloud.in_use.add("/security-groups/g1")  # until its last port leaves it
    watchdog.Ender(CONFIG, FakeSession(cloud), sleep=lambda s: None).run()
    calls = [(m, p) for m, _, p in cloud.calls]
    idx = calls.index
    # every other server is gone (read back as 404) before any floating IP is touched
    assert idx(("GET", "/servers/s2")) < idx(("DELETE", "/floatingips/f1"))
    assert max(i for i, c in enumerate(calls) if c[1].startswith("/servers/s")
               and c[1] != "/servers/s0") < idx(("DELETE", "/floatingips/f1"))
    assert idx(("DELETE", "/floatingips/f1")) < idx(("DELETE", "/os-keypairs/cc-c-1"))
    assert idx(("PUT", "/ports/p0")) < idx(("DELETE", "/security-groups/g1"))
    for tagged in ("/routers/r1/tags/cc-ended", "/subnets/sn1/tags/cc-ended",
                   "/networks/n1/tags/cc-ended"):
        assert ("PUT", tagged) in calls
    assert calls[-1] == ("DELETE", "/servers/s0")
    assert not any(s == "identity" for _, s, _ in cloud.calls)  # it cannot delete itself
    assert not any(m == "DELETE" and p.startswith(("/networks", "/subnets", "/routers"))
                   for m, p in calls)
    assert cloud.present == {}


def test_a_pass_that_fails_is_raised_and_the_next_one_finishes():
    cloud = Cloud([("compute", "/servers/s1"), ("network", "/floatingips/f1")])
    cloud.fail[("DELETE", "/floatingips/f1")] = [500]
    cfg = dict(CONFIG, servers=["s0", "s1"], keypair=None, security_group=None)
    with pytest.raises(rest.ApiError):
        watchdog.Ender(cfg, FakeSession(cloud), sleep=lambda s: None).run()
    assert ("DELETE", "compute", "/servers/s0") not in cloud.calls  # its own server stays
    watchdog.Ender(cfg, FakeSession(cloud), sleep=lambda s: None).run()
    assert cloud.calls[-1] == ("DELETE", "compute", "/servers/s0")


def test_a_server_that_never_goes_is_a_timeout_not_a_hang():
    cloud = Cloud([("compute", "/servers/s1")], lag=10 ** 9)
    cloud.answer = types.MethodType(lambda self, m, s, p, b=None: (
        self.calls.append((m, s, p)) or (200, {})), cloud)
    clock = iter(range(0, 10 ** 6, 100))
    with pytest.raises(rest.ApiError, match="still present"):
        watchdog.Ender(dict(CONFIG, servers=["s0", "s1"]), FakeSession(cloud), timeout=300,
                       clock=lambda: next(clock), sleep=lambda s: None).run()


def test_the_deadline_comes_from_the_servers_metadata():
    cloud = Cloud(meta={"cc_expires": "%d" % (NOW + 60)})
    act = types.SimpleNamespace(busy=lambda: False, ssh_connections=lambda: 0,
                                touched=lambda: 0.0)
    watch = watchdog.Watch({"server_id": "s0", "deadline": NOW - 1}, FakeSession(cloud), act,
                           now=NOW)
    assert watch.step(NOW) is None and watch.deadline == NOW + 60  # extended
    cloud.meta["cc_expires"] = "soon"  # unparsable: the last good value is kept
    assert watch.step(NOW + 61) == "deadline" and watch.deadline == NOW + 60
    cloud.fail[("GET", "/servers/s0")] = [503]
    cloud.meta["cc_expires"] = "%d" % (NOW + 999)
    assert watch.step(NOW + 61) == "deadline"


# -- the REST client ------------------------------------------------------------------
class Opener:
    """Answers from a list of (status, headers, body); records the requests."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []

    def open(self, req, timeout=None):
        self.requests.append((req.get_method(), req.full_url, req.data))
        status, headers, body = self.answers.pop(0)
        if isinstance(status, Exception):
            raise status
        if status >= 400:
            raise urllib.error.HTTPError(req.full_url, status, "x", headers,
                                         io.BytesIO(body.encode()))
        resp = types.SimpleNamespace(status=status, headers=headers,
                                     read=lambda n=-1: body.encode())
        resp.__enter__ = lambda *a: resp
        return _Ctx(resp)


class _Ctx:
    def __init__(self, resp):
        self.resp = resp
        self.status, self.headers, self.read = resp.status, resp.headers, resp.read

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


TOKEN = json.dumps({"token": {"user": {"id": "u1"}, "catalog": [
    {"type": "compute", "endpoints": [
        {"interface": "public", "region_id": "RegionOne",
         "url": "http://127.0.0.1:8774/v2.1"}]},
    {"type": "network", "endpoints": [
        {"interface": "public", "region_id": "RegionOne", "url": "http://127.0.0.1:9696"}]}]}})


def test_transient_faults_are_retried_and_endpoints_use_the_api_host(monkeypatch):
    monkeypatch.setattr(rest, "SLEEP", lambda s: None)
    opener = Opener([(503, {}, "{}"), (201, {"X-Subject-Token": "tok"}, TOKEN),
                     (urllib.error.URLError("refused"), None, None),
                     (503, {"Retry-After": "1"}, "{}"), (204, {}, "")])
    s = rest.Session("http://127.0.0.1:5000/v3", "a1", "s3cret", api_host="10.0.0.1",
                     opener=opener)
    assert s.request("DELETE", "network", "/floatingips/f1") == (204, None)
    urls = [u for _, u, _ in opener.requests]
    assert urls[0] == "http://10.0.0.1:5000/v3/auth/tokens"
    assert urls[-1] == "http://10.0.0.1:9696/v2.0/floatingips/f1"
    assert len(opener.requests) == 5


def test_retries_end_and_a_permanent_error_is_answered_not_retried(monkeypatch):
    monkeypatch.setattr(rest, "SLEEP", lambda s: None)
    opener = Opener([(503, {}, "{}")] * 3)
    s = rest.Session("http://h:5000/v3", "a1", "x", attempts=3, opener=opener)
    with pytest.raises(rest.ApiError) as err:
        s.authenticate()
    assert err.value.status == 503 and len(opener.requests) == 3
    opener = Opener([(403, {}, "{}")])
    s = rest.Session("http://h:5000/v3", "a1", "x", attempts=3, opener=opener)
    with pytest.raises(rest.ApiError):
        s.authenticate()
    assert len(opener.requests) == 1


def test_gateway_is_read_from_the_route_table(tmp_path):
    routes = tmp_path / "route"
    routes.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                      "eth0\t00002A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                      "eth0\t00000000\t01002A0A\t0003\t0\t0\t0\t00000000\n")
    assert rest.default_gateway(str(routes)) == "10.42.0.1"
    assert rest.rewrite_host("http://127.0.0.1:8774/v2.1", "192.0.2.9") == \
        "http://192.0.2.9:8774/v2.1"
    assert rest.rewrite_host("https://api.example/v3", None) == "https://api.example/v3"


def test_access_rules_name_this_clusters_resources_and_no_listing(tmp_path):
    conn = types.SimpleNamespace(endpoint_for=lambda s: {
        "compute": "http://h:8774/v2.1", "network": "http://h:9696",
        "identity": "http://h:5000/v3/"}[s])
    t = credential.Targets(servers=["s0", "s1"], floating_ips=["f1"], keypair="cc-c-1",
                           security_group="g1", own_port="p0",
                           leftovers={"networks": ["n1"]})
    rules = credential.access_rules(conn, t)
    paths = {(r["service"], r["method"], r["path"]) for r in rules}
    assert ("compute", "DELETE", "/v2.1/servers/s1") in paths
    assert ("network", "DELETE", "/v2.0/floatingips/f1") in paths
    assert ("network", "PUT", "/v2.0/networks/n1/tags/cc-ended") in paths
    # every rule names one resource by id: no collection (listing), no wildcard,
    # nothing of Keystone's (it does not enforce rules on its own API)
    assert all(r["path"].count("/") >= 3 and "*" not in r["path"] for r in rules)
    assert {r["service"] for r in rules} == {"compute", "network"}
    assert not any(r["method"] in ("POST", "PATCH") for r in rules)
    assert len(rules) == 4 + 2 + 2 + 3 + 1 + 1


# -- the client side: start and extend ------------------------------------------------
class FakeNode:
    def __init__(self):
        self.runs = []

    def run(self, argv, warn=False, stdin=None, timeout=None):
        self.runs.append((list(argv), stdin))
        return types.SimpleNamespace(ok=True, stdout="", stderr="")


def fake_state(directory, expires_at):
    """A real state file: servers n0 and n1, the keypair."""
    from cloudcompute.record import ClusterRecord
    from cloudcompute.state import ClusterState
    st = ClusterState.create(ClusterRecord(name="c", cluster_id="c-1", expires_at=expires_at),
                             str(directory))
    st.created("servers", "n0", "s0")
    st.created("servers", "n1", "s1")
    st.created("keypairs", "cc-c-1", "cc-c-1")
    return st


def fake_cluster(tmp_path, expires_at=NOW + 3600, refuse=None):
    from openstack import exceptions as os_exc
    meta, made, deleted = {}, [], []

    def create_cred(user, name, **attrs):
        if refuse:
            raise os_exc.ForbiddenException(refuse)
        made.append(dict(attrs, name=name))
        return types.SimpleNamespace(id="a1", secret="TOP-SECRET-VALUE")
    groups = [types.SimpleNamespace(id=i, name=n, project_id=p) for i, n, p in (
        ("gx", "default", "p2"), ("gc", "cc-c", "p1"), ("gd", "default", "p1"))]
    conn = types.SimpleNamespace(
        current_user_id="u1", current_project_id="p1",
        endpoint_for=lambda s: {"compute": "http://h:8774/v2.1", "network": "http://h:9696",
                                "identity": "http://h:5000/v3"}[s],
        config=types.SimpleNamespace(get_region_name=lambda: "RegionOne",
                                     get_interface=lambda: "public"),
        network=types.SimpleNamespace(
            ports=lambda device_id: [types.SimpleNamespace(id="p0")],
            security_groups=lambda **kw: [g for g in groups if all(
                getattr(g, k) == v for k, v in kw.items())]),
        identity=types.SimpleNamespace(
            create_application_credential=create_cred, deleted=deleted,
            delete_application_credential=lambda user, cid, ignore_missing: deleted.append(
                cid)),
        compute=types.SimpleNamespace(set_server_metadata=lambda sid, **m: meta.setdefault(
            sid, {}).update(m)))
    node = FakeNode()
    cluster = types.SimpleNamespace(
        name="c", state=fake_state(tmp_path, expires_at), conn=conn,
        spec=types.SimpleNamespace(node_api_host="gateway", idle_minutes=5,
                                   timeouts=types.SimpleNamespace(teardown=300)),
        nodes=[types.SimpleNamespace(name="n0", server_id="s0")],
        connection=lambda name: node, _server_ids=lambda: ["s0", "s1"])
    return cluster, node, meta, made


def test_start_sends_the_secret_on_stdin_only_and_records_the_id(tmp_path):
    from cloudcompute.autodown import launch
    cluster, node, _, made = fake_cluster(tmp_path)
    assert launch.start(cluster)
    assert made[0]["unrestricted"] is False and made[0]["access_rules"]
    assert made[0]["expires_at"].startswith("2027-01-15")  # deadline plus the margin
    ((argv, stdin),) = node.runs  # one command writes the files and starts it
    assert "TOP-SECRET-VALUE" not in " ".join(argv)
    assert argv[2].startswith("umask 077 && ") and "setsid nohup python3" in argv[2]
    assert argv[-1] == launch.REMOTE_DIR
    files = json.loads(stdin)
    assert sorted(files) == ["ccwatch/__init__.py", "ccwatch/rest.py", "ccwatch/watchdog.py",
                             "config.json", "credential.json"]
    assert json.loads(files["credential.json"]) == {"id": "a1", "secret": "TOP-SECRET-VALUE"}
    config = json.loads(files["config.json"])
    assert "TOP-SECRET-VALUE" not in json.dumps(config)
    assert config["servers"] == ["s0", "s1"] and config["own_port"] == "p0"
    assert config["default_security_group"] == "gd"
    assert cluster.state.ids("application_credentials") == ["a1"]


def test_the_node_side_writer_puts_every_file_under_its_directory(tmp_path):
    import subprocess
    import sys
    from cloudcompute.autodown import launch
    files = {"ccwatch/watchdog.py": "x = 1\n", "credential.json": "{}"}
    subprocess.run([sys.executable, "-c", launch.WRITE, str(tmp_path)], check=True,
                   input=json.dumps(files).encode())
    assert (tmp_path / "ccwatch" / "watchdog.py").read_text() == "x = 1\n"
    assert (tmp_path / "credential.json").read_text() == "{}"


def test_the_start_command_writes_the_files_then_starts_the_watchdog(tmp_path, monkeypatch):
    """The exact command start() sends, run by a local shell in place of the node's."""
    import subprocess
    import time
    from cloudcompute.autodown import launch
    monkeypatch.setattr(launch, "SOURCES", {"__init__.py": b"", "watchdog.py": (
        b"import json, os, sys\n"
        b"def main(argv):\n"
        b"    d = argv[0]\n"
        b"    cred = json.load(open(os.path.join(d, 'credential.json')))\n"
        b"    open(os.path.join(d, 'started'), 'w').write(cred['id'])\n"
        b"    return 0\n")})
    cluster, _, _, _ = fake_cluster(tmp_path)

    class ShellNode:
        def run(self, argv, warn=False, stdin=None, timeout=None):
            out = subprocess.run(argv, input=stdin, cwd=str(tmp_path), capture_output=True,
                                 timeout=30)
            return types.SimpleNamespace(ok=out.returncode == 0, stdout=out.stdout.decode(),
                                         stderr=out.stderr.decode())
    cluster.connection = lambda name: ShellNode()
    assert launch.start(cluster)
    started = tmp_path / launch.REMOTE_DIR / "started"
    for _ in range(200):
        if started.exists():
            break
        time.sleep(0.01)
    assert started.read_text() == "a1"
    assert (tmp_path / launch.REMOTE_DIR / "credential.json").stat().st_mode & 0o077 == 0


def test_a_credential_made_while_the_nodes_booted_is_used_once_they_answer(tmp_path):
    from cloudcompute.autodown import launch
    cluster, node, _, made = fake_cluster(tmp_path)
    listed, ports = [], cluster.conn.network.ports
    cluster.conn.network.ports = lambda **kw: listed.append(kw) or ports(**kw)
    prepared = launch.prepare(cluster.conn, cluster.state, cluster.spec, cluster.nodes)
    assert launch.start(cluster, prepared)
    assert len(made) == 1 and len(node.runs) == 1
    assert listed == [{"device_id": "s0"}]  # its port was listed once, at prepare


def test_a_credential_made_for_nodes_that_changed_since_is_replaced(tmp_path):
    from cloudcompute.autodown import launch
    cluster, node, _, made = fake_cluster(tmp_path)
    prepared = launch.prepare(cluster.conn, cluster.state, cluster.spec, cluster.nodes)
    cluster.state.forget("servers", "n1")  # dropped: its SSH never answered
    assert launch.start(cluster, prepared)
    assert len(made) == 2 and cluster.conn.identity.deleted == ["a1"]
    assert json.loads(json.loads(node.runs[0][1])["config.json"])["servers"] == ["s0"]


def test_a_refused_credential_is_one_warning_and_no_watchdog(tmp_path, caplog):
    from cloudcompute.autodown import launch
    cluster, node, _, _ = fake_cluster(tmp_path, refuse="app creds not allowed")
    assert launch.start(cluster) is False
    assert node.runs == [] and cluster.state.entries("application_credentials") == []
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1


def test_extend_moves_the_deadline_on_every_server(tmp_path, monkeypatch):
    from cloudcompute.autodown import launch
    from cloudcompute.exceptions import ConfigError
    monkeypatch.setattr(launch.time, "time", lambda: NOW)
    cluster, _, meta, _ = fake_cluster(tmp_path, expires_at=NOW + 600)
    assert launch.extend(cluster, 2) == NOW + 600 + 7200
    assert meta == {"s0": {"cc_expires": "%d" % (NOW + 7800)},
                    "s1": {"cc_expires": "%d" % (NOW + 7800)}}
    assert cluster.state.record.expires_at == NOW + 7800
    with cluster.state.locked():
        cluster.state.record.expires_at = NOW - 999  # already past: counted from now
        cluster.state.save()
    assert launch.extend(cluster, 0.5) == NOW + 1800
    for bad in (0, -1, "2", True):
        with pytest.raises(ConfigError):
            launch.extend(cluster, bad)


def test_extend_past_the_credentials_expiry_renews_it_on_the_node(tmp_path, monkeypatch):
    from cloudcompute.autodown import credential as cred_mod
    from cloudcompute.autodown import launch
    monkeypatch.setattr(launch.time, "time", lambda: NOW)
    cluster, node, _, made = fake_cluster(tmp_path, expires_at=NOW + 600)
    deleted = []
    cluster.conn.identity.get_application_credential = lambda user, cid: types.SimpleNamespace(
        id=cid, expires_at=cred_mod._iso(NOW + 600 + cred_mod.MARGIN))
    cluster.conn.identity.delete_application_credential = (
        lambda user, cid, ignore_missing=True: deleted.append(cid))
    cluster.state.created("application_credentials", "cc-c-1", "a0")
    launch.extend(cluster, 0.1)  # still within the old credential's life: kept
    assert deleted == [] and made == []
    launch.extend(cluster, 5)
    assert deleted == ["a0"] and len(made) == 1
    assert listing.parse_time(made[0]["expires_at"]) == NOW + 600 + 360 + 5 * 3600 + \
        cred_mod.MARGIN
    writes = [(argv, json.loads(stdin)) for argv, stdin in node.runs
              if stdin and b"TOP-SECRET" in stdin]
    assert [(argv[-1], list(files)) for argv, files in writes] == [
        (launch.REMOTE_DIR, ["credential.json"])]
    assert "setsid" not in writes[0][0][2]  # the running watchdog reads it: none started
    assert cluster.state.ids("application_credentials") == ["a1"]


def test_without_a_default_group_the_security_group_is_tagged_for_gc():
    cloud = Cloud([("network", "/security-groups/g1")])
    cfg = dict(CONFIG, servers=["s0"], floating_ips=[], keypair=None, leftovers={},
               default_security_group=None)
    watchdog.Ender(cfg, FakeSession(cloud), sleep=lambda s: None).run()
    calls = [(m, p) for m, _, p in cloud.calls]
    assert ("PUT", "/security-groups/g1/tags/cc-ended") in calls
    assert ("DELETE", "/security-groups/g1") not in calls


def test_spec_checks_idle_minutes_and_node_api_host():
    from cloudcompute import config
    from cloudcompute.exceptions import ConfigError
    ok = config.validate(config.ClusterSpec(name="a", flavor="f", image="i", idle_minutes=1.5,
                                            node_api_host="gateway"))
    assert ok.idle_minutes == 1.5 and ok.autodown is True
    with pytest.raises(ConfigError) as err:
        config.validate(config.ClusterSpec(name="a", flavor="f", image="i", idle_minutes=0,
                                           node_api_host="-h; rm"))
    text = str(err.value)
    assert "idle_minutes" in text and "node_api_host" in text
    spec = config.ClusterSpec(name="a").with_settings({"node_api_host": "10.0.0.1"})
    assert spec.node_api_host == "10.0.0.1"


def test_the_watchdogs_poll_comes_from_the_environment_within_bounds(tmp_path, monkeypatch):
    from cloudcompute.autodown import launch
    for value, want in (("3", 3.0), ("0", 1.0), ("9999", 300.0), ("nan", launch.POLL),
                        ("x", launch.POLL)):
        monkeypatch.setenv("CLOUDCOMPUTE_WATCHDOG_POLL", value)
        assert launch.poll_seconds() == want
    monkeypatch.delenv("CLOUDCOMPUTE_WATCHDOG_POLL")
    assert launch.poll_seconds() == launch.POLL == 15.0
    monkeypatch.setenv("CLOUDCOMPUTE_WATCHDOG_POLL", "4")
    cluster, _, _, _ = fake_cluster(tmp_path)
    prepared = launch.prepare(cluster.conn, cluster.state, cluster.spec, cluster.nodes)
    assert prepared.config["poll"] == 4.0
