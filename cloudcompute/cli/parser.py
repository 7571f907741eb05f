"""The command line's parser: options with help, defaults and environment
variables, one-line errors, and the registration point for command modules.

A command module has ``register(subparsers)``; it adds its commands with
:func:`add_command` (which sets the handler) and their options with
:func:`option`. Another module may extend a command registered before it:
``subparsers.choices["logs"]`` is that command's parser, and ``set_defaults(
func=...)`` replaces its handler. :data:`COMMAND_MODULES` lists the modules in
the order they register.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import os
import sys
import textwrap
from typing import (Any, Callable, Dict, Iterator, List, Mapping, NoReturn, Optional,
                    Sequence)

ENV_PREFIX = "CLOUDCOMPUTE_"
COMMAND_MODULES: List[str] = [
    "cloudcompute.cli.clustercmds",
    "cloudcompute.cli.transfercmds",
    "cloudcompute.cli.nodecmds",
    "cloudcompute.cli.opscmds",
    "cloudcompute.cli.jobcmds",
]
"""Modules with ``register(subparsers)``, in the order of ``--help``."""

USAGE = """\
`cloudcompute COMMAND --help` describes a command and its options. An option
marked "env: NAME" may be set by that environment variable instead; a flag on
the command line wins. With -f json every command prints one JSON document.

Exit codes: 0 success, 1 the operation failed, 2 wrong usage or bad input (one
line on stderr, nothing created), 130 interrupted, 141 the reader of the
output went away.
"""


CLOUD_HELP = "The clouds.yaml entry to use"
CLOUD_DEFAULT = "the OS_* variables alone"
FORMAT_HELP = "Print a table for people or one JSON document for scripts"
VERBOSE_HELP = "Log more: -v for INFO, -vv for DEBUG of every library"
VERBOSE_DEFAULT = "warnings and progress only"
"""The global options' help, before the command and after it."""


class UsageError(Exception):
    """Wrong usage or bad input: exit code 2 with a one-line message."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2,
    and whose -h reads as the other options' help does."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw["add_help"] = False
        super().__init__(*args, **kw)
        self.env_sources: Dict[str, EnvSource] = {}
        """The options that may come from the environment, by their dest."""
        self.add_argument("-h", "--help", action="help", help="Show this help and exit.")

    def error(self, message: str) -> NoReturn:
        self.exit(2, "%s: error: %s (see '%s --help')\n" % (self.prog, message, self.prog))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; wider columns for long option names."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


@dataclasses.dataclass(frozen=True)
class EnvSource:
    """An option that may come from the environment variable ``name``."""
    name: str
    convert: Callable[[str], Any]
    fallback: Any = None
    """The value when neither the command line nor the environment gives one."""


def version() -> str:
    try:
        return importlib.metadata.version("cloudcompute")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def flag_value(text: str) -> bool:
    """An on/off environment value: 1/true/yes/on or 0/false/no/off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not 1/true/yes/on or 0/false/no/off")


def option(parser: Parser, *flags: str, help: str,
           default: Any = None, shown: Optional[str] = None, env: bool | str = False,
           env_type: Optional[Callable[[str], Any]] = None, **kw: Any) -> argparse.Action:
    """Add an option whose help ends in its default and, with ``env``, the
    variable ``CLOUDCOMPUTE_<DEST>`` (or the name given) that may set it.

    ``shown`` is the default as the help prints it (``default`` when None);
    ``env_type`` converts the variable's text (default: ``type``).
    With ``env``, the parsed value stays None unless given on the command line,
    so that :func:`apply_env` can tell the two apart; it sets ``default`` last."""
    notes = []
    if shown is None and isinstance(default, bool):
        shown = "on" if default else "off"
    text = shown if shown is not None else (None if default is None else str(default))
    if text is not None:
        notes.append("default: %s" % text)
    action = parser.add_argument(*flags, default=None if env else default, **kw)
    if env:
        name = env if isinstance(env, str) else ENV_PREFIX + action.dest.upper()
        if env_type is not None:
            convert: Callable[[str], Any] = env_type
        elif isinstance(action, argparse._StoreTrueAction):
            convert = flag_value
        else:
            convert = kw.get("type") or str
        parser.env_sources[action.dest] = EnvSource(name, convert, default)
        notes.append("env: %s" % name)
    action.help = "%s (%s)." % (help.rstrip("."), "; ".join(notes)) if notes else help
    return action


def add_command(subparsers: Any, name: str, func: Callable[[argparse.Namespace], Any],
                help: str, description: Optional[str] = None) -> Parser:
    """A subcommand ``name`` run by ``func(args)``; ``help`` is its one-line summary.

    The global options are accepted after the command too (``cloudcompute gc
    --yes -f json``); an option the command defines later with the same
    string (``logs -f``) takes that string over."""
    p: Parser = subparsers.add_parser(
        name, help=help, description=description or textwrap.fill(help, 79),
        formatter_class=HelpFormatter, conflict_handler="resolve")
    again = p.add_argument_group("global options, also accepted after the command")
    # SUPPRESS: given here, they replace the value before the command; else it stays.
    again.add_argument("--os-cloud", metavar="NAME", default=argparse.SUPPRESS,
                       help="%s (default: the one given before the command, else OS_CLOUD, "
                            "else %s)." % (CLOUD_HELP, CLOUD_DEFAULT))
    again.add_argument("-f", "--format", choices=("table", "json"), default=argparse.SUPPRESS,
                       help="%s (default: as given before the command, else "
                            "CLOUDCOMPUTE_FORMAT, else table)." % FORMAT_HELP)
    again.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="%s (default: as given before the command, else %s)."
                            % (VERBOSE_HELP, VERBOSE_DEFAULT))
    p.set_defaults(func=func)
    return p


def build(modules: Sequence[str] = ()) -> Parser:
    """The whole parser: global options, then each module's commands."""
    p = Parser(prog="cloudcompute", formatter_class=HelpFormatter,
               description="Batch compute on an OpenStack cloud: create a cluster, run "
                           "functions on it,\ncopy files to and from it, tear it down.",
               epilog=USAGE)
    p.add_argument("--version", action="version", version="%(prog)s " + version(),
                   help="Print the version of cloudcompute and exit.")
    option(p, "--os-cloud", metavar="NAME", env="OS_CLOUD", shown=CLOUD_DEFAULT,
           help=CLOUD_HELP)
    option(p, "-f", "--format", choices=("table", "json"), env=True, default="table",
           help=FORMAT_HELP)
    option(p, "-v", "--verbose", action="count", default=0, shown=VERBOSE_DEFAULT,
           help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           title="commands", parser_class=Parser,
                           help="The command to run, one of those below.")
    for name in modules or COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and, depth first, every subcommand's parser."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from walk(sub)


def chosen(parser: argparse.ArgumentParser,
           args: argparse.Namespace) -> List[argparse.ArgumentParser]:
    """The parser and the subcommand parser that ``args`` came from."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                out += chosen(action.choices[name], args)
    return out


def apply_env(parser: argparse.ArgumentParser, args: argparse.Namespace,
              environ: Optional[Mapping[str, str]] = None) -> None:
    """Fill options not given on the command line from their environment
    variables, then from their defaults; ``args.from_env`` names the options
    filled from the environment. A value that does not convert is a
    UsageError naming the variable."""
    environ = os.environ if environ is None else environ
    args.from_env = set()
    for p in chosen(parser, args):
        sources: Dict[str, EnvSource] = getattr(p, "env_sources", {})
        for action in p._actions:
            source = sources.get(action.dest)
            if source is None or getattr(args, action.dest, None) is not None:
                continue
            raw = environ.get(source.name)
            if raw is None or (raw == "" and source.convert is not flag_value):
                setattr(args, action.dest, source.fallback)
                continue
            try:
                value = source.convert(raw)
            except argparse.ArgumentTypeError as exc:
                raise UsageError("%s=%r: %s" % (source.name, raw, exc)) from None
            except ValueError:
                kind = getattr(source.convert, "__name__", "value")
                raise UsageError("%s=%r is not a valid %s for %s" % (
                    source.name, raw, "on/off value" if kind == "flag_value" else kind,
                    action.option_strings[-1])) from None
            if action.choices is not None and value not in action.choices:
                raise UsageError("%s=%r: choose from %s" % (
                    source.name, raw, ", ".join(map(str, action.choices))))
            setattr(args, action.dest, value)
            args.from_env.add(action.dest)


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Shell completion when argcomplete is installed (it is optional):
    ``eval "$(register-python-argcomplete cloudcompute)"``."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        argcomplete = importlib.import_module("argcomplete")
    except ImportError:
        sys.exit(1)  # completion asked for, but argcomplete is gone: no candidates
    argcomplete.autocomplete(parser)
