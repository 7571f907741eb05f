"""The pytest plugin's options, marker, factory and teardown, without a cloud.

Inner pytest runs (pytester) use a stand-in Cluster where a cluster is made;
the real ones run in tests/functional/test_pytest_plugin.py.
"""
import signal
import sys
import time

import pytest

from cloudcompute import config, testing
from cloudcompute.exceptions import ConfigError, TeardownError
from cloudcompute_pytest import plugin

pytest_plugins = ["pytester"]


@pytest.fixture
def no_cloud(monkeypatch, tmp_path):
    """A clouds.yaml without the cloud named: any attempt to connect fails."""
    path = tmp_path / "clouds.yaml"
    path.write_text("clouds: {}\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    monkeypatch.setenv("OS_CLOUD", "nowhere")
    monkeypatch.setenv("CLOUDCOMPUTE_STATE_DIR", str(tmp_path / "state"))


class FakeConn:
    class config:
        name = "fake"


class FakeCluster:
    """Stands in for cloudcompute.Cluster: records what the pool asks of it."""
    made = []
    down_leaves = []

    def __init__(self, spec, cloud=None, state_dir=None):
        self.spec = config.validate(spec)
        self.cloud = cloud
        self.conn = FakeConn()
        self.state = None
        self.nodes = []
        self.detached = False
        FakeCluster.made.append(self)

    @property
    def name(self):
        return self.spec.name

    def up(self):
        self.state = type("St", (), {"cluster_id": self.name + "-0badc0de"})()
        self.nodes = ["node-1"]
        return self

    def down(self):
        if FakeCluster.down_leaves:
            raise TeardownError(FakeCluster.down_leaves, ["HTTP 409"])
        self.state = None

    def detach(self):
        self.detached = True


@pytest.fixture
def fake_clusters(monkeypatch, no_cloud):
    monkeypatch.setattr(testing, "Cluster", FakeCluster)
    monkeypatch.setattr(FakeCluster, "made", [])
    monkeypatch.setattr(FakeCluster, "down_leaves", [])
    return FakeCluster


# -- names and specs ---------------------------------------------------------
@pytest.mark.parametrize("hint", ["test_square[1-2]", "Test Big", "123", "", "x" * 80])
def test_cluster_names_are_valid_and_fresh(hint):
    a, b = testing.cluster_name(hint), testing.cluster_name(hint)
    assert config.NAME_RE.match(a) and a != b
    assert len(a) <= 40


def test_cluster_name_shows_the_test():
    assert testing.cluster_name("test_square[1-2]").startswith("test-square-1-2-")


def test_make_spec_takes_dicts_and_dataclasses():
    spec = testing.make_spec("x", {"groups": [config.NodeGroup("a", 2, "f", "i"),
                                             {"name": "b", "flavor": "f", "image": "i"}],
                                  "timeouts": {"ssh": 5}})
    assert [g.name for g in spec.groups] == ["a", "b"] and spec.timeouts.ssh == 5
    spec = testing.make_spec("x", {"timeouts": config.Timeouts(active=7), "name": "ignored"})
    assert spec.timeouts.active == 7 and spec.name == "x"


@pytest.mark.parametrize("kwargs, message", [
    ({"groups": "a"}, "groups must be a list"),
    ({"timeouts": 5}, "timeouts must be a dict or Timeouts"),
    ({"groups": [{"name": "a", "colour": "red"}]}, "group: unknown field colour"),
    ({"groups": ["a"]}, "a group must be a dict or NodeGroup"),
    ({"timeouts": {"sh": 1}}, "timeouts: unknown field sh"),
])
def test_make_spec_refuses_bad_shapes(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        testing.make_spec("x", kwargs)


def test_spec_problems_names_unknown_fields():
    assert testing.spec_problems({"nodes": 1, "name": "n"}, "here") == []
    (problem,) = testing.spec_problems({"nodez": 1, "flavour": "x"}, "here")
    assert problem.startswith("here: unknown ClusterSpec fields flavour, nodez (known: nodes,")


# -- the marker --------------------------------------------------------------
class Mark:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def test_marker_nearest_wins_field_by_field():
    spec = plugin.marker_spec([Mark(nodes=3), Mark(nodes=1, flavor="m1.small")])
    assert spec == {"nodes": 3, "flavor": "m1.small"}


@pytest.mark.parametrize("mark, message", [
    (Mark(2), "takes keyword arguments .* not \\(2,\\)"),
    (Mark(nodez=2), "unknown ClusterSpec field nodez"),
    (Mark(name="fixed"), "name is not allowed"),
])
def test_bad_marker_arguments(mark, message):
    with pytest.raises(plugin.MarkerError, match=message):
        plugin.marker_spec([mark])


def test_bad_marker_is_a_setup_error_before_any_cloud_call(pytester, no_cloud):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.cloudcompute(nodez=2)
        def test_one(cloudcompute_cluster):
            pass

        @pytest.mark.cloudcompute(1)
        def test_two(cloudcompute_cluster):
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*@pytest.mark.cloudcompute: unknown ClusterSpec field nodez (known: nodes, *",
        "*@pytest.mark.cloudcompute takes keyword arguments*not (1,)*"])
    result.stdout.no_fnmatch_line("*nowhere*")  # the cloud was never asked


def test_bad_factory_arguments_fail_before_any_cloud_call(pytester, no_cloud):
    pytester.makepyfile("""
        import pytest
        from cloudcompute.exceptions import ConfigError

        def test_one(cloudcompute_cluster):
            with pytest.raises(ConfigError, match="cloudcompute_cluster..: unknown "
                               "ClusterSpec field nodez"):
                cloudcompute_cluster(nodez=2)
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


# -- options -------------------------------------------------------------------
def test_options_are_listed_in_help(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--cc-cloud=NAME*clouds.yaml entry*", "*(default: OS_CLOUD)*",
                                 "*--cc-keep *do not delete*", "*--cc-keep-hours=HOURS*"])


def test_keep_hours_must_be_positive(pytester):
    result = pytester.runpytest("--cc-keep-hours", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--cc-keep-hours must be a number of hours > 0, got 0.0"])


def test_cloud_option_and_default(pytester, monkeypatch):
    monkeypatch.setenv("OS_CLOUD", "from-env")
    config = pytester.parseconfig()
    assert plugin.Session(config).cloud == "from-env"
    config = pytester.parseconfig("--cc-cloud", "other", "--cc-keep", "--cc-keep-hours", "0.5")
    session = plugin.Session(config)
    assert (session.cloud, session.keep_hours) == ("other", 0.5)
    assert plugin.Session(pytester.parseconfig()).keep_hours is None


def test_plugin_is_inert_unless_used(pytester):
    """Loaded (entry point) but unused: no cloudcompute import, SIGTERM untouched."""
    pytester.makepyfile("""
        import signal, sys

        def test_nothing(request):
            assert request.config.pluginmanager.has_plugin("cloudcompute")
            assert "cloudcompute" not in sys.modules, "imported at load"
            assert "openstack" not in sys.modules
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    """)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


# -- factory and teardown, with the stand-in cluster ---------------------------
def test_factory_uses_marker_and_call_and_deletes_after_the_test(pytester, fake_clusters):
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.cloudcompute(nodes=2, flavor="f", image="i")

        @pytest.mark.cloudcompute(nodes=3)
        def test_one(cloudcompute_cluster, cloudcompute_leak_check):
            c = cloudcompute_cluster(image="j")
            assert (c.spec.nodes, c.spec.flavor, c.spec.image) == (3, "f", "j")
            assert c.cloud == "nowhere"
            assert c.name.startswith("test-one-")
            assert cloudcompute_leak_check == [c.name]
            assert cloudcompute_cluster.clusters == [c]
    """)
    checked = []
    pytester.runpytest("-p", "no:cacheprovider", plugins=[_LeakRecorder(checked)]
                       ).assert_outcomes(passed=1)
    (c,) = fake_clusters.made
    assert c.state is None  # down() ran
    assert checked == [[c.name]]


class _LeakRecorder:
    """Replaces the leak listing (a cloud call) with a record of its names."""

    def __init__(self, checked, left=()):
        self.checked, self.left = checked, list(left)

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config):
        session = config.stash[plugin._SESSION]

        def check(names, what):
            self.checked.append(names)
            if self.left:
                session.fail("cloudcompute_leak_check: after %s: %s" % (what, self.left))
        session.check_leaks = check


def test_teardown_leftovers_are_a_test_error_naming_them(pytester, fake_clusters):
    fake_clusters.down_leaves = ["server cc-x-1 (id-1)", "security group cc-x (id-2)"]
    pytester.makepyfile("""
        def test_one(cloudcompute_cluster):
            cloudcompute_cluster(nodes=1, flavor="f", image="i")
            assert False, "the test fails too"
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_one*",
        "*the teardown after *test_one could not delete everything*",
        "*left: test-one-*: server cc-x-1 (id-1)",
        "*left: test-one-*: security group cc-x (id-2)",
        "*error: test-one-*: HTTP 409"])


def test_module_factory_lives_for_the_module(pytester, fake_clusters):
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.cloudcompute(nodes=1, flavor="f", image="i")

        @pytest.fixture(scope="module")
        def cluster(cloudcompute_cluster_module):
            return cloudcompute_cluster_module()

        def test_one(cluster):
            assert cluster.state is not None

        def test_two(cluster):
            assert cluster.state is not None
    """)
    checked = []
    pytester.runpytest("-p", "no:cacheprovider", plugins=[_LeakRecorder(checked)]
                       ).assert_outcomes(passed=2)
    (c,) = fake_clusters.made
    assert c.state is None and c.name.startswith("test-module-factory-lives")
    assert checked == [[c.name]]  # the module's clusters are listed at its end


def test_keep_detaches_and_prints_how_to_attach(pytester, fake_clusters):
    pytester.makepyfile("""
        def test_one(cloudcompute_cluster, cloudcompute_leak_check):
            cloudcompute_cluster(nodes=1, flavor="f", image="i", ttl_hours=48)
    """)
    checked = []
    t0 = time.time()
    result = pytester.runpytest("-p", "no:cacheprovider", "--cc-keep", "--cc-keep-hours", "1",
                                plugins=[_LeakRecorder(checked)])
    result.assert_outcomes(passed=1)
    (c,) = fake_clusters.made
    assert c.detached and c.state is not None and c.spec.ttl_hours == 1
    assert checked == [[c.name]]
    result.stdout.fnmatch_lines([
        "*= cloudcompute =*",
        "kept %s (from *test_one) until *: reach it with 'CLOUDCOMPUTE_STATE_DIR=* "
        "cloudcompute --os-cloud fake ssh %s' or Cluster.attach('%s'); delete it with "
        "'*cloudcompute --os-cloud fake down %s'" % ((c.name,) * 4)])
    expiry = time.strptime(result.stdout.str().split(" until ")[1][:20], "%Y-%m-%d %H:%M UTC")
    assert abs(time.mktime(expiry) - time.timezone - (t0 + 3600)) < 120


# -- SIGTERM and interruption ----------------------------------------------------
def test_sigterm_handler_raises_once_and_is_restored(pytester, no_cloud):
    session = plugin.Session(pytester.parseconfig())
    before = signal.getsignal(signal.SIGTERM)
    session.open_pool()
    try:
        assert signal.getsignal(signal.SIGTERM) == session.on_sigterm
        with pytest.raises(plugin.Terminated, match="SIGTERM"):
            session.on_sigterm(signal.SIGTERM, None)
        assert isinstance(plugin.Terminated(), KeyboardInterrupt)
        session.on_sigterm(signal.SIGTERM, None)  # a second one lets teardown finish
    finally:
        session.restore_sigterm()
    assert signal.getsignal(signal.SIGTERM) == before


def test_interruption_deletes_and_notes_instead_of_raising(pytester, fake_clusters):
    session = plugin.Session(pytester.parseconfig())
    pool = session.open_pool()
    try:
        a = pool.up(hint="test_a", nodes=1, flavor="f", image="i")
        b = pool.up(hint="test_b", nodes=1, flavor="f", image="i")

        def down_leaves():
            raise TeardownError(["server cc-x-1 (id-1)"])
        b.down = down_leaves
        lines = []
        session.interrupt(lines.append)
    finally:
        session.restore_sigterm()
    assert lines == ["cloudcompute: interrupted; deleting 2 test cluster(s)"]
    assert session.pools == [] and session.interrupted and a.state is None
    assert len(session.notes) == 2
    assert "left: %s: server cc-x-1 (id-1)" % b.name in session.notes[0]
    assert session.notes[1] == "cloudcompute: interrupted; deleted %s" % a.name
    assert session.finish_pool(pool, "later") is None  # the fixture's teardown: done


def test_pool_close_can_resume_after_an_interruption(fake_clusters, monkeypatch):
    pool = testing.ClusterPool()
    a = pool.up(hint="a", nodes=1, flavor="f", image="i")
    b = pool.up(hint="b", nodes=1, flavor="f", image="i")
    calls = []

    def interrupted_down():
        calls.append("b")
        raise KeyboardInterrupt
    monkeypatch.setattr(b, "down", interrupted_down)
    with pytest.raises(KeyboardInterrupt):
        pool.close()
    assert pool.clusters == [a, b]  # nothing forgotten
    monkeypatch.undo()
    monkeypatch.setattr(testing, "Cluster", FakeCluster)
    b.down = lambda: setattr(b, "state", None)
    report = pool.close()
    assert report.deleted == [b.name, a.name] and pool.clusters == []


def test_pool_close_reports_an_unexpected_error_and_goes_on(fake_clusters, caplog):
    pool = testing.ClusterPool()
    a, b, c = (pool.up(hint=h, nodes=1, flavor="f", image="i") for h in "abc")

    def broken_down():
        raise RuntimeError("state file vanished")
    b.down = broken_down
    report = pool.close()
    assert report.deleted == [c.name, a.name] and a.state is None and c.state is None
    assert report.errors == ["%s: teardown failed with RuntimeError: state file vanished"
                             % b.name]
    (logged,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert b.name in logged.getMessage() and logged.exc_info[0] is RuntimeError


def test_leak_check_skips_kept_clusters(pytester, no_cloud):
    session = plugin.Session(pytester.parseconfig())
    session.kept.append(("t", testing.KeptCluster("kept-1", "kept-1-0badc0de", None, 0.0)))
    session.check_leaks(["kept-1"], "t")  # no connection made: the cloud is nowhere
    with pytest.raises(ConfigError, match="nowhere"):
        session.check_leaks(["kept-1", "other"], "t")


def test_keep_hours_must_be_positive_in_the_pool():
    with pytest.raises(ConfigError, match="keep_hours must be > 0"):
        testing.ClusterPool(keep_hours=0)


def test_plugin_module_imports_only_pytest():
    assert "cloudcompute_pytest.plugin" in sys.modules
    src = open(plugin.__file__).read().split('"""', 2)[2]
    top = [line for line in src.splitlines() if line.startswith(("import ", "from "))]
    assert all("cloudcompute" not in line for line in top), top


def test_sigterm_during_up_stops_pytest(pytester, fake_clusters, monkeypatch):
    """Cluster.up() rolls back on SIGTERM and raises its own Terminated, which
    pytest would take for a test failure; the factory makes it an interruption."""
    from cloudcompute.cluster import Terminated as UpTerminated

    def up(self):
        raise UpTerminated("SIGTERM")
    monkeypatch.setattr(FakeCluster, "up", up)
    session = plugin.Session(pytester.parseconfig())
    factory = plugin.ClusterFactory(session, session.open_pool(), {"flavor": "f", "image": "i"},
                                    "test_x")
    try:
        with pytest.raises(plugin.Terminated, match="SIGTERM while a cluster came up") as info:
            factory(nodes=1)
    finally:
        session.restore_sigterm()
    assert isinstance(info.value, KeyboardInterrupt) and session.stopping
    assert factory.names == [fake_clusters.made[0].name]


def test_leftovers_include_a_keypair_nothing_else_names(monkeypatch):
    """gc's survey ties a keypair to a cluster only through the cluster's other
    resources or state file; the leak check finds one left on its own."""
    import types
    found = {"w-1-0badc0de": types.SimpleNamespace(cluster_id="w-1-0badc0de",
                                                   resources=["security group cc-w-1-0badc0de"],
                                                   state_file=None),
             "other-0badc0de": types.SimpleNamespace(cluster_id="other-0badc0de",
                                                     resources=["server x"], state_file=None)}
    monkeypatch.setattr(testing.gc, "survey", lambda conn, state_dir=None: found)
    kps = [types.SimpleNamespace(name=n) for n in (
        "cc-w-2-1234abcd", "cc-w-1-0badc0de", "cc-other-0badc0de", "mykey", "cc-w-2")]
    conn = types.SimpleNamespace(compute=types.SimpleNamespace(keypairs=lambda: kps))
    assert testing.tagged_leftovers(conn, ["w-1", "w-2"]) == [
        "w-1-0badc0de: keypair cc-w-1-0badc0de", "w-1-0badc0de: security group cc-w-1-0badc0de",
        "w-2-1234abcd: keypair cc-w-2-1234abcd"]


def test_kept_cluster_commands_survive_a_state_dir_with_spaces(pytester, monkeypatch):
    """The summary's commands are pasted into a shell as printed."""
    import shlex
    monkeypatch.setenv("CLOUDCOMPUTE_STATE_DIR", "/tmp/my state")
    session = plugin.Session(pytester.parseconfig())
    session.kept.append(("t", testing.KeptCluster("k-1", "k-1-0badc0de", "my cloud", 0.0)))
    lines = []
    reporter = type("R", (), {"write_sep": lambda self, *a: None,
                              "write_line": lambda self, line: lines.append(line)})()
    session.pytest_terminal_summary(reporter)
    down = lines[0].rsplit("delete it with '", 1)[1].rstrip("'")
    assert shlex.split(down) == ["CLOUDCOMPUTE_STATE_DIR=/tmp/my state", "cloudcompute",
                                 "--os-cloud", "my cloud", "down", "k-1"]


def test_ctrl_c_in_a_test_deletes_its_cluster_before_pytest_ends(pytester, fake_clusters):
    pytester.makepyfile("""
        def test_one(cloudcompute_cluster):
            cloudcompute_cluster(nodes=1, flavor="f", image="i")
            raise KeyboardInterrupt
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    (c,) = fake_clusters.made
    assert c.state is None  # down() ran
    result.stdout.fnmatch_lines(["*cloudcompute: interrupted; deleting 1 test cluster(s)*",
                                 "*cloudcompute: interrupted; deleted %s*" % c.name])
