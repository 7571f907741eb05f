"""``up``'s cluster spec from the command line, a spec file and the environment.

Precedence, highest first: flags on the command line, the ``--spec`` file,
``CLOUDCOMPUTE_*`` variables, the cloud's ``cloudcompute:`` section of
clouds.yaml, the library's defaults. A layer that gives ``nodes`` replaces
the ``groups`` of the layers below it, and the other way round.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Dict, List, Set

from cloudcompute import config
from cloudcompute.cli.parser import UsageError

SPEC_FIELDS = frozenset(f.name for f in dataclasses.fields(config.ClusterSpec)) - {"name"}
"""The fields a spec file may hold (``name`` comes from the command line)."""
GROUP_SYNTAX = "NAME=COUNT[:FLAVOR[:IMAGE]]"
FLAG_FIELDS = ("nodes", "flavor", "image", "network", "create_network", "ssh_user",
               "ssh_cidr", "floating_ips", "key_file", "ttl_hours", "idle_minutes",
               "min_nodes", "max_replacements")
"""``up``'s options named as the ClusterSpec fields they set."""
TIMEOUT_FLAGS = {"timeout_active": "active", "timeout_ssh": "ssh"}


def parse_group(text: str) -> config.NodeGroup:
    """``NAME=COUNT[:FLAVOR[:IMAGE]]`` as a NodeGroup; an empty FLAVOR or IMAGE
    (``a=2::img``) leaves the cluster's. ArgumentTypeError says what is wrong."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("%r is not %s" % (text, GROUP_SYNTAX))
    count, _, tail = rest.partition(":")
    flavor, _, image = tail.partition(":")
    if not re.fullmatch(r"[0-9]{1,9}", count) or int(count) < 1:
        raise argparse.ArgumentTypeError("group %r: COUNT must be a whole number >= 1, got %r"
                                         " (%s)" % (name, count, GROUP_SYNTAX))
    return config.NodeGroup(name=name, count=int(count), flavor=flavor or None,
                            image=image or None)


def parse_groups(text: str) -> List[config.NodeGroup]:
    """Groups separated by whitespace, as ``CLOUDCOMPUTE_GROUPS`` holds them."""
    return [parse_group(word) for word in text.split()]


def field_default(name: str, cls: type = config.ClusterSpec) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def load_spec_file(path: str) -> Dict[str, Any]:
    """The mapping of ClusterSpec fields in a YAML or TOML file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UsageError("cannot read spec file %s: %s" % (path, exc.strerror)) from exc
    import tomllib

    import yaml
    try:
        data = tomllib.loads(raw.decode()) if path.endswith(".toml") else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as exc:  # TOMLDecodeError, UnicodeDecodeError
        raise UsageError("spec file %s is not valid %s: %s" % (
            path, "TOML" if path.endswith(".toml") else "YAML",
            str(exc).splitlines()[0])) from exc
    if not isinstance(data, dict):
        raise UsageError("spec file %s must hold a mapping of ClusterSpec fields" % path)
    unknown = set(data) - SPEC_FIELDS - {"name"}
    if unknown:
        raise UsageError("spec file %s: unknown field(s) %s (known: %s)" % (
            path, ", ".join(sorted(unknown)), ", ".join(sorted(SPEC_FIELDS))))
    return data


def _layers(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """(environment, spec file, command line), each the fields it sets."""
    from_env: Set[str] = getattr(args, "from_env", set())
    env: Dict[str, Any] = {}
    flags: Dict[str, Any] = {}
    named = [(f, f) for f in FLAG_FIELDS] + [("groups", "group")] + [
        (field, dest) for dest, field in TIMEOUT_FLAGS.items()]
    for field, dest in named:
        value = getattr(args, dest, None)
        if value is None:
            continue
        layer = env if dest in from_env else flags
        if dest in TIMEOUT_FLAGS:
            layer.setdefault("timeouts", {})[field] = value
        else:
            layer[field] = value
    spec_file = load_spec_file(args.spec) if getattr(args, "spec", None) else {}
    return [env, spec_file, flags]


def build_spec(args: argparse.Namespace) -> config.ClusterSpec:
    """The ClusterSpec ``up`` asks for; UsageError when a field is malformed."""
    data: Dict[str, Any] = {}
    timeouts: Dict[str, Any] = {}
    for layer in _layers(args):
        layer = dict(layer)
        for one, other in (("nodes", "groups"), ("groups", "nodes")):
            if one in layer:
                data.pop(other, None)
        more = layer.pop("timeouts", None) or {}
        if not isinstance(more, dict):
            raise UsageError("timeouts must be a mapping of phase to seconds (%s)" % ", ".join(
                f.name for f in dataclasses.fields(config.Timeouts)))
        timeouts.update(more)
        data.update(layer)
    data["name"] = args.name
    groups = data.pop("groups", None)
    try:
        spec = config.ClusterSpec(**data)
        if groups:
            if not isinstance(groups, list) or not all(
                    isinstance(g, (dict, config.NodeGroup)) for g in groups):
                raise UsageError("groups must be a list of mappings "
                                 "(name, count, flavor, image, metadata)")
            spec.groups = [g if isinstance(g, config.NodeGroup) else config.NodeGroup(**g)
                           for g in groups]
        spec.timeouts = config.Timeouts(**timeouts)
    except TypeError as exc:
        raise UsageError("spec: %s" % exc) from exc
    return spec
