"""The command line's parser: help on every option, defaults, environment
variables, --version, --group, and one-line errors with exit code 2."""
import argparse
import dataclasses
import importlib.metadata
import os
import re
import subprocess
import sys
import types

import pytest

from cloudcompute import cli, config
from cloudcompute.cli import parser as cliparser
from cloudcompute.cli.spec import parse_group
from cloudcompute.exceptions import PreflightError


def parsers():
    """(command line, parser) for the top level and every subcommand."""
    top = cliparser.build()
    out = [("cloudcompute", top)]
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            out += [("cloudcompute " + name, p) for name, p in action.choices.items()]
    return out


COMMANDS = [c.split(" ", 1)[1] for c, _ in parsers()[1:]]
"""Every command the parser registers, so that one added later is checked too."""
KNOWN_COMMANDS = {"up", "status", "extend", "down", "run", "put", "get", "ssh", "logs",
                  "dask", "list", "gc", "submit", "jobs", "results", "cancel"}


def missing_help(parser):
    """The options and positionals of ``parser`` whose help is not a sentence
    with its default, and the subcommands without a summary."""
    bad = []
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.metavar or action.dest
        text = action.help or ""
        if isinstance(action, argparse._SubParsersAction):
            summaries = {c.dest: c.help for c in action._choices_actions}
            bad += ["command %s" % name for name in action.choices
                    if not (summaries.get(name) or "").strip()]
        if not text.strip() or text == argparse.SUPPRESS:
            bad.append("%s: no help" % name)
            continue
        if not (text[0].isupper() and text.rstrip().endswith(".")):
            bad.append("%s: help is not a sentence: %r" % (name, text))
        takes_default = action.option_strings and action.nargs != 0 \
            or action.nargs in ("?", "*")
        if takes_default and "(default: " not in text:
            bad.append("%s: help does not show the default: %r" % (name, text))
        if ") (" in text:
            bad.append("%s: help has two asides in a row: %r" % (name, text))
    long_lines = [ln for ln in (parser.description or "").splitlines() if len(ln) > 79]
    if long_lines:
        bad.append("description: lines over 79 columns: %r" % long_lines)
    return bad


def test_every_command_and_option_has_help_with_its_default():
    found = parsers()
    names = [c for c, _ in found]
    assert names[0] == "cloudcompute" and len(set(names)) == len(names)
    assert KNOWN_COMMANDS <= set(COMMANDS)  # none lost its registration
    problems = {command: missing_help(p) for command, p in found}
    assert {c: b for c, b in problems.items() if b} == {}


def test_the_help_check_catches_an_option_without_help():
    p = cliparser.Parser(prog="x")
    p.add_argument("--quiet", action="store_true")
    cliparser.option(p, "--nodes", type=int, help="How many.")
    p.add_argument("name", help="lowercase, no period")
    assert missing_help(p) == ["--quiet: no help",
                               "--nodes: help does not show the default: 'How many.'",
                               "name: help is not a sentence: 'lowercase, no period'"]


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help_of_each_command_prints_and_exits_0(command, capsys):
    assert cli.main(command + ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cloudcompute") and "Show this help and exit." in out
    description = dict(parsers())[" ".join(["cloudcompute"] + command)].description
    assert (description or "").strip() and " ".join(description.split()) in " ".join(out.split())


def test_the_help_check_catches_a_command_without_a_summary():
    p = cliparser.Parser(prog="x")
    sub = p.add_subparsers(dest="command", help="The command.")
    cliparser.add_command(sub, "ok", print, "Do it.")
    sub.add_parser("bare")
    sub.add_parser("blank", help=" ")
    assert missing_help(p) == ["command bare", "command blank"]


def test_version_comes_from_the_installed_metadata(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == "cloudcompute %s\n" % importlib.metadata.version(
        "cloudcompute")


def test_spec_fields_follow_the_dataclass():
    assert cli.SPEC_FIELDS == {f.name for f in dataclasses.fields(config.ClusterSpec)} - {"name"}
    assert {"slots", "max_result_bytes", "groups", "timeouts"} <= cli.SPEC_FIELDS


@pytest.mark.parametrize("text,group", [
    ("a=2", config.NodeGroup("a", 2)),
    ("gpu=1:m1.large", config.NodeGroup("gpu", 1, "m1.large")),
    ("b=3:m1.small:debian-12", config.NodeGroup("b", 3, "m1.small", "debian-12")),
    ("c=1::img:with:colons", config.NodeGroup("c", 1, None, "img:with:colons")),
])
def test_group_syntax(text, group):
    assert parse_group(text) == group


@pytest.mark.parametrize("text,message", [
    ("a", "'a' is not NAME=COUNT[:FLAVOR[:IMAGE]]"),
    ("=2", "'=2' is not NAME=COUNT"),
    ("a=", "group 'a': COUNT must be a whole number >= 1, got ''"),
    ("a=0", "COUNT must be a whole number >= 1, got '0'"),
    ("a=-1", "got '-1'"),
    ("a=x:m1.small", "got 'x'"),
])
def test_bad_group_syntax(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace("[", r"\[")):
        parse_group(text)


@pytest.fixture
def no_cloud(monkeypatch, tmp_path):
    """No OS_*/CLOUDCOMPUTE_* variables; a cloud that must not be asked to create
    anything: connecting gives a stand-in, and Cluster.up fails the test."""
    import os
    for k in list(os.environ):
        if k.startswith(("CLOUDCOMPUTE_", "OS_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("CLOUDCOMPUTE_STATE_DIR", str(tmp_path))
    fake = types.SimpleNamespace(config=types.SimpleNamespace(name="fake", config={}))
    monkeypatch.setattr(config, "connect", lambda *a, **k: fake)
    from cloudcompute.cluster import Cluster

    def up(self):
        raise AssertionError("up() was called for bad input")
    monkeypatch.setattr(Cluster, "up", up)
    return fake


def one_error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize("argv,message", [
    (["up", "c1", "--group", "a"], "argument --group: 'a' is not NAME=COUNT"),
    (["up", "c1", "--group", "a=two"], "COUNT must be a whole number >= 1, got 'two'"),
    (["up", "c1", "--nodes", "x"], "argument --nodes: invalid int value: 'x'"),
    (["up", "c1", "--floating-ips", "sometimes"], "invalid choice: 'sometimes'"),
    (["up", "c1", "--flavor", "f", "--image", "i", "--nodes", "2", "--min-nodes", "3"],
     "min_nodes 3 must be between 1 and the node count 2"),
    (["up", "c1", "--flavor", "f", "--image", "i", "--min-nodes", "-1"],
     "min_nodes -1 must be between 1"),
    (["up", "c1", "--flavor", "f", "--image", "i", "--max-replacements", "-1"],
     "max_replacements must be >= 0"),
    (["up", "c1", "--flavor", "f", "--image", "i", "--timeout-ssh", "0"],
     "timeouts.ssh must be a positive number of seconds"),
    (["up", "c1", "--flavor", "f", "--image", "i", "--nodes", "2", "--group", "a=1"],
     "give either nodes or groups, not both"),
    (["up", "c1", "--group", "a=1"], "group a: flavor is required"),
    (["list", "--", "x"], "only ssh takes a command after --"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_created(argv, message, no_cloud, capsys,
                                                         tmp_path):
    assert cli.main(argv) == 2
    line = one_error_line(capsys)
    assert message in line and line.startswith("cloudcompute")
    assert list(tmp_path.iterdir()) == []  # no state file either


def test_unknown_flavor_stops_before_up_with_exit_2(no_cloud, capsys, monkeypatch):
    from cloudcompute.provision import preflight
    seen = []

    def resolve(conn, spec):
        seen.append((conn, [(g.flavor, g.image) for g in spec.groups]))
        raise PreflightError(["group node: unknown flavor 'nope' (available: m1.small)"])
    monkeypatch.setattr(preflight, "resolve", resolve)
    assert cli.main(["up", "c1", "--flavor", "nope", "--image", "img"]) == 2
    assert seen == [(no_cloud, [("nope", "img")])]
    assert "unknown flavor 'nope' (available: m1.small)" in one_error_line(capsys)


def spec_of(argv, environ=None):
    p = cliparser.build()
    args = p.parse_args(argv)
    cliparser.apply_env(p, args, environ or {})
    return cli.build_spec(args), args


def test_environment_fills_options_and_flags_win():
    env = {"CLOUDCOMPUTE_NODES": "3", "CLOUDCOMPUTE_FLAVOR": "m1.small",
           "CLOUDCOMPUTE_CREATE_NETWORK": "yes", "CLOUDCOMPUTE_TIMEOUT_SSH": "45",
           "CLOUDCOMPUTE_MIN_NODES": "2", "CLOUDCOMPUTE_FORMAT": "json"}
    spec, args = spec_of(["up", "c1"], env)
    assert (spec.nodes, spec.flavor, spec.create_network, spec.timeouts.ssh,
            spec.min_nodes) == (3, "m1.small", True, 45.0, 2)
    assert spec.timeouts.active == config.Timeouts().active and args.format == "json"
    spec, args = spec_of(["-f", "table", "up", "c1", "--nodes", "1", "--flavor", "m1.tiny",
                          "--timeout-ssh", "9"], env)
    assert (spec.nodes, spec.flavor, spec.timeouts.ssh) == (1, "m1.tiny", 9.0)
    assert args.format == "table" and "nodes" not in args.from_env
    p = cliparser.build()
    args = p.parse_args(["list"])
    cliparser.apply_env(p, args, {})
    assert args.format == "table"  # the default, when neither gives one


def test_layers_flags_over_spec_file_over_environment(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("flavor: m1.medium\ngroups: [{name: a, count: 2}]\ntimeouts: {active: 60}\n")
    env = {"CLOUDCOMPUTE_NODES": "5", "CLOUDCOMPUTE_FLAVOR": "m1.small",
           "CLOUDCOMPUTE_IMAGE": "img", "CLOUDCOMPUTE_TIMEOUT_SSH": "30"}
    spec, _ = spec_of(["up", "c1", "--spec", str(f)], env)
    # The file's groups replace the environment's nodes; the rest is merged.
    assert spec.nodes is None and [(g.name, g.count) for g in spec.groups] == [("a", 2)]
    assert (spec.flavor, spec.image) == ("m1.medium", "img")
    assert (spec.timeouts.active, spec.timeouts.ssh) == (60, 30.0)
    spec, _ = spec_of(["up", "c1", "--spec", str(f), "--nodes", "2"], env)
    assert spec.nodes == 2 and spec.groups == []


def test_groups_from_flags_and_from_the_environment():
    spec, _ = spec_of(["up", "c1", "--group", "a=2:m1.small", "--group", "b=1::img"])
    assert spec.groups == [config.NodeGroup("a", 2, "m1.small"),
                           config.NodeGroup("b", 1, None, "img")]
    spec, _ = spec_of(["up", "c1"], {"CLOUDCOMPUTE_GROUPS": "a=1  b=3:m1.tiny",
                                     "CLOUDCOMPUTE_NODES": "4"})
    # Both set in the same layer: validate reports it.
    assert [(g.name, g.count) for g in spec.groups] == [("a", 1), ("b", 3)] and spec.nodes == 4
    spec, _ = spec_of(["up", "c1", "--nodes", "2"], {"CLOUDCOMPUTE_GROUPS": "a=1"})
    assert spec.nodes == 2 and spec.groups == []


@pytest.mark.parametrize("env,message", [
    ({"CLOUDCOMPUTE_NODES": "x"}, "CLOUDCOMPUTE_NODES='x' is not a valid int for --nodes"),
    ({"CLOUDCOMPUTE_CREATE_NETWORK": "maybe"}, "is not a valid on/off value"),
    ({"CLOUDCOMPUTE_GROUPS": "a=1 b"}, "CLOUDCOMPUTE_GROUPS='a=1 b': 'b' is not NAME=COUNT"),
    ({"CLOUDCOMPUTE_FORMAT": "xml"}, "CLOUDCOMPUTE_FORMAT='xml': choose from table, json"),
])
def test_bad_environment_value_is_one_line_and_exit_2(env, message, no_cloud, monkeypatch,
                                                      capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli.main(["up", "c1"]) == 2
    assert message in one_error_line(capsys)


def test_ssh_usage_shows_the_remote_command(capsys):
    assert cli.main(["ssh", "--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert usage.endswith(" NAME [NODE] [-- COMMAND ...]"), usage


def test_global_options_after_the_command_read_as_before_it(capsys):
    assert cli.main(["gc", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "The clouds.yaml entry to use (default: the one given before the command, " \
        "else OS_CLOUD, else the OS_* variables alone)." in out
    assert "-vv for DEBUG of every library (default: as given before the command, " \
        "else warnings and progress only)." in out


def test_help_names_each_variable_and_shows_its_default(capsys):
    assert cli.main(["up", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for var in ("CLOUDCOMPUTE_NODES", "CLOUDCOMPUTE_FLAVOR", "CLOUDCOMPUTE_GROUPS",
                "CLOUDCOMPUTE_MIN_NODES", "CLOUDCOMPUTE_TIMEOUT_ACTIVE",
                "CLOUDCOMPUTE_CREATE_NETWORK"):
        assert "env: %s" % var in out
    assert "(default: %s; env: CLOUDCOMPUTE_TTL_HOURS)" % config.ClusterSpec.ttl_hours in out
    assert "(default: %s; env: CLOUDCOMPUTE_TIMEOUT_SSH)" % config.Timeouts.ssh in out


def test_readme_lists_every_variable_the_command_line_reads():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    start = readme.index("**Option variables**")
    listed = set(re.findall(r"CLOUDCOMPUTE_[A-Z_]+", readme[start:readme.index("\n\n", start)]))
    read = {s.name for p in cliparser.walk(cliparser.build())
            for s in getattr(p, "env_sources", {}).values()}
    assert "CLOUDCOMPUTE_IDLE_MINUTES" in read
    assert listed == {name for name in read if name.startswith("CLOUDCOMPUTE_")}


def parsed(argv, environ=None):
    p = cliparser.build()
    args = p.parse_args(argv)
    cliparser.apply_env(p, args, environ or {})
    return args


def test_global_options_are_accepted_after_the_command_too():
    args = parsed(["gc", "--yes", "-f", "json"])
    assert (args.format, args.yes, args.os_cloud) == ("json", True, None)
    assert parsed(["-f", "json", "gc"]).format == "json"
    assert parsed(["--os-cloud", "a", "list", "--os-cloud", "b"]).os_cloud == "b"
    assert parsed(["--os-cloud", "a", "list"]).os_cloud == "a"
    assert parsed(["list"], {"CLOUDCOMPUTE_FORMAT": "json"}).format == "json"
    assert parsed(["list", "-f", "table"], {"CLOUDCOMPUTE_FORMAT": "json"}).format == "table"
    assert parsed(["-v", "up", "c1", "-vv"]).verbose == 2


def test_a_module_registers_commands_and_extends_another(capsys):
    calls = []
    mod = types.ModuleType("cc_test_extra_cmds")

    def register(sub):
        p = cliparser.add_command(sub, "hello", lambda a: calls.append(a.who), "Say hello.")
        p.add_argument("who", help="Whom to greet.")
        logs = sub.choices["logs"]
        logs.add_argument("job", nargs="?", help="A job's log (default: none).")
        logs.add_argument("-f", "--follow", action="store_true", help="Follow it.")
        logs.set_defaults(func=lambda a: calls.append(("logs", a.job)))
    mod.register = register
    import sys
    sys.modules[mod.__name__] = mod
    try:
        p = cliparser.build(cliparser.COMMAND_MODULES + [mod.__name__])
        args = p.parse_args(["hello", "you"])
        args.func(args)
        args = p.parse_args(["logs", "c1", "n0", "j1", "-f", "--format", "json"])
        args.func(args)
        assert calls == ["you", ("logs", "j1")] and args.follow and args.format == "json"
        assert missing_help(p.__dict__["_subparsers"]._group_actions[0].choices["hello"]) == []
    finally:
        del sys.modules[mod.__name__]


def test_completion_is_inert_without_the_shell_hook(monkeypatch):
    monkeypatch.delenv("_ARGCOMPLETE", raising=False)
    cliparser.autocomplete(cliparser.build())  # returns; never imports argcomplete
    monkeypatch.setenv("_ARGCOMPLETE", "1")
    monkeypatch.setitem(__import__("sys").modules, "argcomplete", None)  # not installed
    with pytest.raises(SystemExit) as exc:
        cliparser.autocomplete(cliparser.build())
    assert exc.value.code == 1


def completions(line, tmp_path):
    """What the shell hook (``register-python-argcomplete cloudcompute``) gets back
    for ``line`` with the cursor at its end: the command run with the hook's
    variables, its candidates written to a file, separated by vertical tabs."""
    out = tmp_path / "candidates"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_ARC", "COMP_"))}
    env.update(_ARGCOMPLETE="1", _ARGCOMPLETE_SHELL="bash", COMP_LINE=line,
               COMP_POINT=str(len(line)), _ARGCOMPLETE_STDOUT_FILENAME=str(out))
    r = subprocess.run([sys.executable, "-c", "import sys; from cloudcompute.cli import main; "
                        "sys.exit(main())"], env=env, capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    return sorted(word.strip() for word in out.read_text().split("\v"))


def test_completion_offers_options_commands_and_choices(tmp_path):
    assert completions("cloudcompute up --gr", tmp_path) == ["--group"]
    assert completions("cloudcompute gc --y", tmp_path) == ["--yes"]
    assert completions("cloudcompute s", tmp_path) == sorted(
        c for c in COMMANDS if c.startswith("s")) == ["ssh", "status", "submit"]
    assert completions("cloudcompute -f ", tmp_path) == ["json", "table"]
