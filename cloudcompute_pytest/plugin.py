"""pytest plugin: real cloudcompute clusters for a project's integration tests.

Registered through the ``pytest11`` entry point. Loading it registers
options, a marker and fixtures and imports nothing but pytest; cloudcompute
(and openstacksdk) is imported, and the cloud contacted, only when a test
uses a fixture.

Fixtures:

- ``cloudcompute_cluster``: a factory; ``cloudcompute_cluster(nodes=2,
  flavor="m1.small", ...)`` (any ClusterSpec field) returns a Cluster that is
  up. Every cluster it made is deleted after the test, whatever its outcome.
- ``cloudcompute_cluster_module``: the same factory with module scope: its
  clusters live until the module's last test is done, are then deleted, and
  the cloud is listed for anything of theirs left behind.
- ``cloudcompute_leak_check``: after the test, and after its clusters'
  teardown, lists through a connection of its own what the library tagged
  for the clusters this test made with ``cloudcompute_cluster``, and fails
  the test (an error at teardown) if anything remains.

``@pytest.mark.cloudcompute(nodes=2, flavor="m1.small")`` on a test, class
or module gives the factories' defaults (the nearest marker wins, field by
field; for the module factory, only the module's ``pytestmark`` counts).

Ctrl-C and SIGTERM (a CI job's timeout) stop pytest as an interruption and
the clusters are deleted before it exits; the SIGTERM handler is installed
when the first cluster fixture is set up and restored when pytest ends.
What a teardown could not delete is a test error naming each resource.

Options: ``--cc-cloud NAME`` (default: ``OS_CLOUD``); ``--cc-keep`` detaches
the clusters instead of deleting them, with an expiry ``--cc-keep-hours``
away (default 2), and prints how to reach them.
"""
from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import pytest

MARKER = "cloudcompute"
KEEP_HOURS = 2.0


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: pytest stops as for Ctrl-C, and the clusters are deleted."""


class MarkerError(Exception):
    """A ``cloudcompute`` marker with arguments that are not ClusterSpec fields."""


def marker_spec(marks: Iterable[Any]) -> Dict[str, Any]:
    """The ClusterSpec fields of ``cloudcompute`` marks, nearest first (as
    ``Node.iter_markers`` yields them); a nearer mark wins field by field."""
    from cloudcompute.testing import spec_problems
    spec: Dict[str, Any] = {}
    for mark in reversed(list(marks)):
        where = "@pytest.mark.%s" % MARKER
        if mark.args:
            raise MarkerError("%s takes keyword arguments (ClusterSpec fields such as "
                              "nodes=2, flavor='m1.small'), not %r" % (where, mark.args))
        problems = spec_problems(mark.kwargs, where)
        if "name" in mark.kwargs:
            problems.append("%s: name is not allowed: every cluster gets a fresh name "
                            "(pass name= to the factory call to choose one)" % where)
        if problems:
            raise MarkerError("; ".join(problems))
        spec.update(mark.kwargs)
    return spec


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cloudcompute", "cloudcompute clusters (cloudcompute_* fixtures)")
    group.addoption("--cc-cloud", metavar="NAME", default=None,
                    help="clouds.yaml entry the test clusters are created in "
                         "(default: OS_CLOUD)")
    group.addoption("--cc-keep", action="store_true", default=False,
                    help="do not delete the test clusters: detach them with an expiry "
                         "--cc-keep-hours away and print how to reach them")
    group.addoption("--cc-keep-hours", metavar="HOURS", type=float, default=KEEP_HOURS,
                    help="expiry of the clusters kept by --cc-keep, after which "
                         "'cloudcompute gc' deletes them (default: %(default)s)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "%s(**spec): ClusterSpec fields (nodes=, flavor=, image=, ...) that the "
        "cloudcompute_cluster factories use unless a call gives them" % MARKER)
    hours = config.getoption("cc_keep_hours")
    if not hours > 0:
        raise pytest.UsageError("--cc-keep-hours must be a number of hours > 0, got %s"
                                % hours)
    session = Session(config)
    config.stash[_SESSION] = session
    config.pluginmanager.register(session, "cloudcompute-session")


class Session:
    """The plugin's state for one pytest run (open pools, kept clusters, notes),
    registered as a plugin of its own for the run's hooks."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.pools: List[Any] = []
        self._checked: Dict[int, bool] = {}
        self.kept: List[Any] = []
        self.notes: List[str] = []
        self.interrupted = False
        self.stopping = False
        self._old_term: Any = None
        self._term_installed = False

    @property
    def cloud(self) -> Optional[str]:
        return self.config.getoption("cc_cloud") or os.environ.get("OS_CLOUD")

    @property
    def keep_hours(self) -> Optional[float]:
        return self.config.getoption("cc_keep_hours") if self.config.getoption(
            "cc_keep") else None

    # -- SIGTERM ---------------------------------------------------------
    def install_sigterm(self) -> None:
        if self._term_installed or threading.current_thread() is not threading.main_thread():
            return
        self._old_term = signal.signal(signal.SIGTERM, self.on_sigterm)
        self._term_installed = True

    def restore_sigterm(self) -> None:
        if self._term_installed:
            signal.signal(signal.SIGTERM, self._old_term)
            self._term_installed = False

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return  # already stopping: let the teardown finish
        self.stopping = True
        raise Terminated("SIGTERM: pytest stops; the cloudcompute test clusters are deleted")

    # -- pools -----------------------------------------------------------
    def open_pool(self, check: bool = False) -> Any:
        """A ClusterPool; with ``check``, its teardown is followed by a leak check."""
        from cloudcompute.testing import ClusterPool
        pool = ClusterPool(cloud=self.cloud, keep_hours=self.keep_hours)
        self.install_sigterm()
        self.pools.append(pool)
        self._checked[id(pool)] = check
        return pool

    def finish_pool(self, pool: Any, what: str) -> Any:
        """Tear the pool down (once: a pool closed at an interruption is done),
        then list what is left of its clusters if it was opened with ``check``.
        Returns the pool's report, None if it was done already."""
        if pool not in self.pools:
            return None
        report = pool.close()
        self.pools.remove(pool)
        check = self._checked.pop(id(pool))
        self.kept.extend((what, k) for k in report.kept)
        problems = ["left: %s" % r for r in report.leftovers] + [
            "error: %s" % e for e in report.errors]
        if problems:
            self.fail("cloudcompute: the teardown after %s could not delete everything; "
                      "what is left stays recorded for 'cloudcompute gc':\n  %s"
                      % (what, "\n  ".join(problems)))
        if check and report.deleted:
            self.check_leaks(report.deleted, what)
        return report

    def check_leaks(self, names: List[str], what: str) -> None:
        kept = {k.name for _, k in self.kept}
        names = [n for n in names if n not in kept]
        if not names:
            return
        from cloudcompute import config
        from cloudcompute.testing import tagged_leftovers
        try:
            conn = config.connect(self.cloud)
            try:
                left = tagged_leftovers(conn, names)
            finally:
                conn.close()
        except Exception as exc:
            if not self.interrupted:
                raise
            # pytest is stopping: an exception here would end it with an
            # internal error, so the failed check is reported in the summary
            left = ["the leak check failed: %s: %s" % (type(exc).__name__, exc)]
        if left:
            self.fail("cloudcompute_leak_check: after %s the cloud still holds %d "
                      "resource(s) tagged for its clusters (%s):\n  %s"
                      % (what, len(left), ", ".join(names), "\n  ".join(left)))

    def fail(self, message: str) -> None:
        """A test error; while pytest stops after an interruption, a summary note."""
        if self.interrupted:
            self.notes.append(message)
        else:
            pytest.fail(message, pytrace=False)

    # -- hooks -----------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        write: Callable[[str], None] = (reporter.write_line if reporter is not None
                                        else (lambda line: None))
        if isinstance(excinfo.value, Terminated):
            write(str(excinfo.value))
        self.interrupt(write)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not (self.notes or self.kept):
            return
        terminalreporter.write_sep("=", "cloudcompute")
        for note in self.notes:
            terminalreporter.write_line(note)
        state = os.environ.get("CLOUDCOMPUTE_STATE_DIR")
        for what, kept in self.kept:
            cli = "cloudcompute --os-cloud %s" % shlex.quote(kept.cloud) if kept.cloud \
                else "cloudcompute"
            if state:  # the commands are pasted into a shell as printed
                cli = "CLOUDCOMPUTE_STATE_DIR=%s %s" % (shlex.quote(state), cli)
            terminalreporter.write_line(
                "kept %s (from %s) until %s: reach it with '%s ssh %s' or "
                "Cluster.attach(%r); delete it with '%s down %s'" % (
                    kept.name, what, time.strftime("%Y-%m-%d %H:%M UTC",
                                                   time.gmtime(kept.expires_at)),
                    cli, kept.name, kept.name, cli, kept.name))

    def pytest_unconfigure(self) -> None:
        self.restore_sigterm()

    def interrupt(self, write: Callable[[str], None]) -> None:
        """Pytest is stopping (Ctrl-C, SIGTERM): delete every cluster now."""
        self.interrupted = self.stopping = True
        if not self.pools:
            return
        count = sum(len(p.clusters) for p in self.pools)
        write("cloudcompute: interrupted; %s %d test cluster(s)" % (
            "detaching" if self.keep_hours else "deleting", count))
        for pool in reversed(list(self.pools)):
            report = self.finish_pool(pool, "the interruption")
            if report is not None and report.deleted:
                self.notes.append("cloudcompute: interrupted; deleted %s"
                                  % ", ".join(report.deleted))


_SESSION = pytest.StashKey[Session]()


def _session(config: pytest.Config) -> Session:
    return config.stash[_SESSION]


class ClusterFactory:
    """``factory(**spec)`` -> a Cluster that is up; the marker's fields are defaults."""

    def __init__(self, session: Session, pool: Any, defaults: Dict[str, Any], hint: str,
                 names: Optional[List[str]] = None):
        self.session = session
        self.pool = pool
        self.defaults = dict(defaults)
        self.hint = hint
        self.names = names if names is not None else []

    def __call__(self, **spec: Any) -> Any:
        from cloudcompute.cluster import Terminated as UpTerminated
        from cloudcompute.exceptions import ConfigError
        from cloudcompute.testing import spec_problems
        problems = spec_problems(spec, "cloudcompute_cluster()")
        if problems:
            raise ConfigError(problems)
        before = len(self.pool.names)
        try:
            return self.pool.up(hint=self.hint, **dict(self.defaults, **spec))
        except UpTerminated as exc:  # SIGTERM during up(): rolled back; stop pytest
            self.session.stopping = True
            raise Terminated("SIGTERM while a cluster came up (rolled back); pytest "
                             "stops") from exc
        finally:
            self.names.extend(self.pool.names[before:])

    @property
    def clusters(self) -> List[Any]:
        """The clusters made by this factory and not deleted yet."""
        return list(self.pool.clusters)


def _defaults(node: Any) -> Dict[str, Any]:
    try:
        return marker_spec(node.iter_markers(MARKER))
    except MarkerError as exc:
        pytest.fail(str(exc), pytrace=False)


class _Checks:
    """The cluster names a test made, and whether its leak check is on."""

    def __init__(self) -> None:
        self.names: List[str] = []
        self.enabled = False


@pytest.fixture
def _cloudcompute_checks(request: pytest.FixtureRequest) -> Any:
    # Set up before the factory, so torn down after it: the leak check sees
    # the cloud after the clusters' teardown.
    checks = _Checks()
    yield checks
    if checks.enabled and checks.names:
        _session(request.config).check_leaks(list(checks.names), request.node.nodeid)


@pytest.fixture
def cloudcompute_cluster(request: pytest.FixtureRequest, _cloudcompute_checks: _Checks) -> Any:
    """Factory of clusters deleted after the test: ``cloudcompute_cluster(nodes=2)``."""
    defaults = _defaults(request.node)
    session = _session(request.config)
    pool = session.open_pool()
    yield ClusterFactory(session, pool, defaults, request.node.name, _cloudcompute_checks.names)
    session.finish_pool(pool, request.node.nodeid)


@pytest.fixture(scope="module")
def cloudcompute_cluster_module(request: pytest.FixtureRequest) -> Any:
    """Factory of clusters deleted after the module's last test, then checked by listing."""
    defaults = _defaults(request.node)
    session = _session(request.config)
    pool = session.open_pool(check=True)
    yield ClusterFactory(session, pool, defaults, request.module.__name__.rsplit(".", 1)[-1])
    session.finish_pool(pool, request.node.nodeid)


@pytest.fixture
def cloudcompute_leak_check(_cloudcompute_checks: _Checks) -> List[str]:
    """Fail the test if the clusters it made left tagged resources; the value is
    the list of their names."""
    _cloudcompute_checks.enabled = True
    return _cloudcompute_checks.names
