"""Functional tests run against a real cloud: OS_CLOUD (default devstack).

A missing or unreachable cloud fails the tests; it never skips them.
Every test that creates resources checks afterwards, through an admin
connection of its own, that none of them is left.
"""
import contextlib
import copy
import json
import os
import signal
import subprocess
import urllib.parse
import uuid

import openstack
import openstack.config
import pytest
import yaml

from tests.functional.faultproxy import FaultProxy

CLOUD = os.environ.get("OS_CLOUD", "devstack")


def _connect(cloud):
    try:
        conn = openstack.connect(cloud=cloud)
        conn.authorize()
    except Exception as exc:  # a missing cloud must fail loudly, not skip
        pytest.fail("cloud %r is not usable (%s); start the local cloud with "
                    "devstack/aio/cloud up and set OS_CLIENT_CONFIG_FILE" % (cloud, exc))
    return conn


def sigint_default() -> None:
    """Popen ``preexec_fn``: give the child SIGINT's default disposition back.

    A shell that starts a job in the background makes it ignore SIGINT, and
    children inherit that (a CI runner can be such a job); with the default
    back, the child's Python turns SIGINT into KeyboardInterrupt (Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def conn():
    return _connect(CLOUD)


@pytest.fixture(scope="session")
def admin_conn():
    return _connect(CLOUD + "-admin")


@pytest.fixture
def unique():
    return "t" + uuid.uuid4().hex[:8]


@contextlib.contextmanager
def shared_cluster(tmp_path_factory, prefix, nodes, **spec):
    """A cluster for a whole test module, with a state directory of its own.

    Made by the pytest plugin's ClusterPool; its ``with`` block turns SIGTERM
    into teardown. Afterwards, as the plugin's leak check does, a connection
    of its own lists what is still tagged for it, and fails if anything is."""
    from cloudcompute.testing import ClusterPool, tagged_leftovers
    old = os.environ.get("CLOUDCOMPUTE_STATE_DIR")
    state = str(tmp_path_factory.mktemp(prefix + "-state"))
    os.environ["CLOUDCOMPUTE_STATE_DIR"] = state
    pool = ClusterPool(cloud=CLOUD, state_dir=state)
    try:
        with pool.up(name="%s%d" % (prefix, os.getpid()), nodes=nodes, **spec) as c:
            yield c
    finally:
        report = pool.close()  # what a failed up() could not roll back
        if old is None:
            os.environ.pop("CLOUDCOMPUTE_STATE_DIR", None)
        else:
            os.environ["CLOUDCOMPUTE_STATE_DIR"] = old
    left = (report.leftovers + report.errors
            + tagged_leftovers(_connect(CLOUD), pool.names, state))
    assert not left, "the %s cluster left %s" % (prefix, left)


def node_processes(server_id):
    """A local-cloud node's processes (those of its network namespace): the
    host's pid of each, with its pid in every PID namespace it is in (NSpid:
    the host's first, the node's own last; one entry for the launcher that
    holds the node's PID namespace from the host's)."""
    out = subprocess.run(["ip", "netns", "pids", "cc-" + server_id], capture_output=True,
                         text=True, check=True).stdout
    found = {}
    for pid in map(int, out.split()):
        try:
            with open("/proc/%d/status" % pid) as f:
                found[pid] = next(
                    [int(p) for p in line.split()[1:]] for line in f if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile
    return found


def host_pid(server_id, node_pid):
    """The host's pid of the process a node knows by ``node_pid``."""
    for pid, nspids in node_processes(server_id).items():
        if len(nspids) > 1 and nspids[-1] == node_pid:
            return pid
    raise AssertionError("no process %d in the namespace of %s" % (node_pid, server_id))


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    d.mkdir()
    monkeypatch.setenv("CLOUDCOMPUTE_STATE_DIR", str(d))
    return str(d)


def leftovers(admin, project_id, marker):
    """Names of servers, ports, FIPs, SGs, keypairs, networks, routers holding marker."""
    found = []
    for s in admin.compute.servers(all_projects=True, project_id=project_id):
        if marker in s.name:
            found.append("server " + s.name)
    for kind, lister in (("port", admin.network.ports), ("floating ip", admin.network.ips),
                         ("security group", admin.network.security_groups),
                         ("network", admin.network.networks),
                         ("subnet", admin.network.subnets),
                         ("router", admin.network.routers)):
        for r in lister(project_id=project_id):
            text = " ".join(str(x) for x in (r.name, getattr(r, "description", ""),
                                             getattr(r, "tags", [])) if x)
            if marker in text:
                found.append("%s %s" % (kind, r.name or r.id))
    return found


def keypairs_with(conn, marker):
    return [k.name for k in conn.compute.keypairs() if marker in k.name]


# -- the fault campaign ------------------------------------------------------
# A test that takes the ``fault`` fixture is one case of the campaign: it names
# the case and what is expected, states what it observed, and afterwards an
# admin listing counts what the case left behind. The session writes every
# case to fault-results.json and fault-results.md ($CC_FAULT_RESULTS_DIR or
# the current directory).
RESULTS = []


class FaultCase:
    def __init__(self, marker):
        self.marker = marker
        self.name = self.category = self.expected = None
        self.observed = ""

    def __call__(self, name, category, expected):
        self.name, self.category, self.expected = name, category, expected
        return self

    @contextlib.contextmanager
    def raises(self, exc_type, match=None):
        """pytest.raises that also records the exception as the observation."""
        with pytest.raises(exc_type, match=match) as info:
            yield info
        first = str(info.value).strip().splitlines()[0] if str(info.value).strip() else ""
        self.observed = "%s: %s" % (type(info.value).__name__, first[:300])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def fault(request, conn, admin_conn, unique):
    case = FaultCase(unique)
    yield case
    left = (leftovers(admin_conn, conn.current_project_id, unique)
            + ["keypair " + k for k in keypairs_with(conn, unique)])
    rep = getattr(request.node, "rep_call", None)
    passed = bool(rep and rep.passed) and not left
    observed = case.observed
    if rep is not None and rep.failed:
        crash = getattr(rep.longrepr, "reprcrash", None)
        observed = "FAILED: %s" % (crash.message.splitlines()[0] if crash else rep.longrepr)
    RESULTS.append({"case": case.name or request.node.name, "category": case.category,
                    "expected": case.expected, "observed": observed,
                    "leaked": len(left), "passed": passed})
    assert not left, "fault case %s left %s" % (case.name, left)


def pytest_sessionfinish(session, exitstatus):
    if not RESULTS:
        return
    out = os.environ.get("CC_FAULT_RESULTS_DIR", os.getcwd())
    with open(os.path.join(out, "fault-results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)
    cats = sorted({r["category"] or "?" for r in RESULTS})
    lines = ["# Fault campaign results", "",
             "%d cases, %d passed, %d resources leaked, %d failed." % (
                 len(RESULTS), sum(r["passed"] for r in RESULTS),
                 sum(r["leaked"] for r in RESULTS), sum(not r["passed"] for r in RESULTS)),
             "", "| category | cases | passed | leaked |", "|---|---|---|---|"]
    for c in cats:
        rs = [r for r in RESULTS if (r["category"] or "?") == c]
        lines.append("| %s | %d | %d | %d |" % (c, len(rs), sum(r["passed"] for r in rs),
                                                sum(r["leaked"] for r in rs)))
    lines += ["", "| case | category | expected | observed | leaked | passed |",
              "|---|---|---|---|---|---|"]
    for r in RESULTS:
        cells = [str(r[k]).replace("|", "\\|").replace("\n", " ") for k in
                 ("case", "category", "expected", "observed", "leaked")]
        lines.append("| %s | %s |" % (" | ".join(cells), "yes" if r["passed"] else "**NO**"))
    with open(os.path.join(out, "fault-results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def fault_proxy():
    """The proxy in front of every endpoint of the cloud."""
    admin = _connect(CLOUD + "-admin")
    ports = sorted({urllib.parse.urlsplit(e.url).port for e in admin.identity.endpoints()})
    proxy = FaultProxy(seed=20261126).start(ports)
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied(fault_proxy, tmp_path, monkeypatch):
    """A clouds.yaml whose cloud ``<OS_CLOUD>-faults`` talks through the proxy.

    Returns (cloud name, proxy); the proxy starts each test without rules.
    """
    cfg = openstack.config.OpenStackConfig()
    clouds = {}
    for name in (CLOUD, CLOUD + "-admin"):
        clouds[name] = copy.deepcopy(cfg.cloud_config["clouds"][name])
    faulty = copy.deepcopy(clouds[CLOUD])
    url = urllib.parse.urlsplit(faulty["auth"]["auth_url"])
    faulty["auth"]["auth_url"] = url._replace(
        netloc="%s:%d" % (url.hostname, fault_proxy.ports[url.port])).geturl()
    clouds[CLOUD + "-faults"] = faulty
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": clouds}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    fault_proxy.reset(seed=20261126)
    yield CLOUD + "-faults", fault_proxy
    fault_proxy.reset()
