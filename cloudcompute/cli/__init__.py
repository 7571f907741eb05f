# PYTHON_ARGCOMPLETE_OK
"""The ``cloudcompute`` command: a thin layer over the Python API.

    cloudcompute [--os-cloud NAME] [-f table|json] COMMAND ...

The commands live in modules that register them (:mod:`.parser` lists them):
``up``, ``status``, ``down`` (:mod:`.clustercmds`); ``run``, ``put``, ``get``
(:mod:`.transfercmds`); ``ssh``, ``logs``, ``dask`` (:mod:`.nodecmds`);
``list``, ``gc`` (:mod:`.opscmds`); ``submit``, ``jobs``, ``results``,
``cancel`` and ``logs NAME JOB`` (:mod:`.jobcmds`). ``cloudcompute COMMAND
--help`` describes each. Exit codes: 0 success, 1 the operation failed, 2 wrong usage or bad
input, 130 interrupted, 141 the reader of the output went away. JSON output
(-f json) is one document on stdout; its keys are documented in README.md
and stay stable.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import List, Optional

from cloudcompute.cli import parser as cliparser
from cloudcompute.cli.common import emit
from cloudcompute.cli.parser import UsageError
from cloudcompute.cli.progress import PROGRESS_LOGGER
from cloudcompute.cli.spec import SPEC_FIELDS, build_spec, load_spec_file, parse_group
from cloudcompute.cli.transfercmds import load_function, load_input, save_output
from cloudcompute.exceptions import (CloudComputeError, ConfigError, PreflightError,
                                     StateError)

__all__ = ["main", "UsageError", "SPEC_FIELDS", "build_spec", "load_spec_file",
           "parse_group", "load_function", "load_input", "save_output", "emit"]
LOG = logging.getLogger("cloudcompute.cli")


def _error(message: str) -> None:
    """The one line of a failed command on stderr."""
    sys.stderr.write("cloudcompute: error: %s\n" % " ".join(str(message).split()))


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default: sys.argv); return the exit code."""
    parser = cliparser.build()
    cliparser.autocomplete(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    remote: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, remote = argv[:cut], argv[cut + 1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    if remote:
        if args.command != "ssh":
            _error("only ssh takes a command after --")
            return 2
        args.cmd = remote
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Progress lines (no terminal) are INFO, and shown without -v.
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
    try:
        cliparser.apply_env(parser, args)
        code = args.func(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return int(code)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, with the status a tool
        # that SIGPIPE ended has; later flushes of stdout go nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except (UsageError, ConfigError, StateError, PreflightError) as exc:
        _error(str(exc))
        return 2
    except CloudComputeError as exc:
        _error(str(exc).splitlines()[0])
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("cloudcompute: interrupted\n")
        return 130
