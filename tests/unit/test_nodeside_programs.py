"""The node-side programs ``probe`` and ``write_files`` run here, and what every
node-side program must be to be shipped as source.

No cloud: each program runs under this machine's python, as the nodes run it
(``python -c SOURCE ARGS``), in a temporary working directory.
"""
import ast
import json
import os
import stat
import subprocess
import sys
import sysconfig
import types
from importlib import metadata

import pytest

from cloudcompute import nodeside
from cloudcompute.autodown import launch
from cloudcompute.jobs import environment
from cloudcompute.nodeside import get, put, receive
from cloudcompute.ssh import bulk

HERE = os.path.dirname(os.path.abspath(nodeside.__file__))


def run(program, *args, cwd, stdin=b"", umask=None):
    """``program`` as a node runs it, under ``umask`` when one is given."""
    argv = nodeside.command(program, *args, python=sys.executable)
    if umask is not None:
        argv = ["sh", "-c", 'umask %s && exec "$@"' % umask, "sh", *argv]
    return subprocess.run(argv, input=stdin, cwd=cwd, capture_output=True, timeout=30)


# -- shipping -------------------------------------------------------------------
def test_every_module_of_the_package_is_a_program_that_can_be_sent():
    modules = sorted(n[:-3] for n in os.listdir(HERE)
                     if n.endswith(".py") and n != "__init__.py")
    assert sorted(nodeside.PROGRAMS) == modules
    for name in ("probe", "write_files"):
        assert nodeside.command(name)[:2] == ["python3", "-c"]


@pytest.mark.parametrize("program", nodeside.PROGRAMS)
def test_a_program_imports_the_standard_library_only_and_parses_as_python_3_9(program):
    tree = ast.parse(nodeside.source(program), feature_version=(3, 9))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in %s" % program
            imported.add(node.module.split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names), imported


def test_the_pipe_size_constant_is_linuxs_and_bulk_takes_the_node_programs_one():
    assert put.F_SETPIPE_SZ == get.F_SETPIPE_SZ == receive.F_SETPIPE_SZ == 1031
    assert bulk.F_SETPIPE_SZ == put.F_SETPIPE_SZ
    with open(bulk.__file__) as f:
        assert "1031" not in f.read()  # no copy of its own


# -- probe ------------------------------------------------------------------------
def test_probe_reports_its_python_platform_and_package_versions(tmp_path):
    names = ["pytest", "packaging", "surely-not-installed-cc"]
    r = run("probe", json.dumps(names), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not r.stdout.endswith(b"\n")
    assert json.loads(r.stdout) == {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "platform": sysconfig.get_platform(),
        "packages": {"pytest": metadata.version("pytest"),
                     "packaging": metadata.version("packaging"),
                     "surely-not-installed-cc": None}}


@pytest.mark.parametrize("args, error", [((), b"IndexError"), (("numpy",), b"JSONDecodeError")])
def test_probe_without_a_json_list_of_names_fails_with_the_reason(tmp_path, args, error):
    r = run("probe", *args, cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == b""
    assert error in r.stderr


def test_environment_probe_runs_the_program_with_the_python_it_is_given(tmp_path):
    sent = []

    class LocalNode:
        def run(self, argv, warn=False, timeout=None, stdin=None):
            sent.append(argv)
            r = subprocess.run(argv, capture_output=True, check=True, timeout=30)
            return types.SimpleNamespace(stdout=r.stdout.decode(), ok=True)

    info = environment.probe(LocalNode(), ["pytest", "nope-cc"], python=sys.executable)
    assert sent == [nodeside.command("probe", '["pytest", "nope-cc"]', python=sys.executable)]
    assert info["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert info["packages"] == {"pytest": metadata.version("pytest"), "nope-cc": None}
    assert environment.missing(["pytest>=1", "nope-cc"], info["packages"]) == [
        "nope-cc: not installed"]


# -- write_files ------------------------------------------------------------------
FILES = {"ccwatch/__init__.py": "", "ccwatch/watchdog.py": "x = 1\n",
         "config.json": '{"deadline": 1}', "credential.json": '{"secret": "s3"}'}


def modes(root):
    """path under root -> permission bits, of everything below it."""
    found = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            found[os.path.relpath(p, root)] = stat.S_IMODE(os.lstat(p).st_mode)
    return found


def test_write_files_puts_each_file_under_the_directory_and_prints_nothing(tmp_path):
    (tmp_path / "w" / "ccwatch").mkdir(parents=True)
    (tmp_path / "w" / "ccwatch" / "watchdog.py").write_text("old\n")
    r = run("write_files", "w", cwd=tmp_path, stdin=json.dumps(FILES).encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b""
    for name, text in FILES.items():
        assert (tmp_path / "w" / name).read_text() == text
    assert sorted(modes(tmp_path / "w")) == sorted(["ccwatch", *FILES])  # no .tmp left


def test_write_files_makes_everything_the_users_only_under_any_umask(tmp_path):
    r = run("write_files", "a/w", cwd=tmp_path, stdin=json.dumps(FILES).encode(), umask="022")
    assert r.returncode == 0, r.stderr
    found = modes(tmp_path / "a")
    assert found == {"w": 0o700, "w/ccwatch": 0o700,
                     **{"w/" + n: 0o600 for n in FILES}}


def test_the_start_command_writes_user_only_files_with_the_secret_on_stdin(tmp_path):
    """launch's exact shell line (umask 077, then the program) with a local shell."""
    sent = []

    class ShellNode:
        def run(self, argv, warn=False, stdin=None, timeout=None):
            sent.append(argv)
            r = subprocess.run(argv, input=stdin, cwd=tmp_path, capture_output=True,
                               timeout=30)
            assert r.returncode == 0, r.stderr
            return r

    launch._send(ShellNode(), FILES)
    assert "s3" not in " ".join(sent[0]) and launch.WRITE == nodeside.source("write_files")
    assert modes(tmp_path / launch.REMOTE_DIR) == {"ccwatch": 0o700,
                                                   **{n: 0o600 for n in FILES}}
    assert (tmp_path / launch.REMOTE_DIR / "credential.json").read_text() == '{"secret": "s3"}'


@pytest.mark.parametrize("stdin, error", [
    (b"{not json", b"JSONDecodeError"),
    (b'["a", "b"]', b"AttributeError"),
    (b'{"x": 1}', b"TypeError"),
])
def test_write_files_refuses_input_that_is_not_an_object_of_texts(tmp_path, stdin, error):
    r = run("write_files", "w", cwd=tmp_path, stdin=stdin)
    assert r.returncode == 1 and error in r.stderr
    assert not (tmp_path / "w" / "x").exists()


def test_write_files_fails_where_a_file_cannot_be_written(tmp_path):
    (tmp_path / "w").write_text("a file, not a directory")
    r = run("write_files", "w", cwd=tmp_path, stdin=json.dumps(FILES).encode())
    assert r.returncode == 1 and b"Error" in r.stderr
    assert (tmp_path / "w").read_text() == "a file, not a directory"
