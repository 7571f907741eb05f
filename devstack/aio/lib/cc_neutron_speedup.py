"""Faster eager loading for the all-in-one cloud's neutron-server.

Neutron Zed declares most of its model relationships ``lazy="subquery"``.
With SQLAlchemy 1.4, every subquery eager load builds a fresh query around
the parent query, and a network carries nested ones (its subnets with their
pools, routes, DNS servers and service types, its segments, the standard
attributes of each). On the two cores of a test machine a single
``GET /v2.0/networks/<id>`` cost about 90 ms, and Nova reads the network
five times per server build.

Importing this module before Neutron's models makes the relationships that
those reads load ``lazy="selectin"``: the same rows, loaded eagerly by one
cached ``SELECT ... WHERE <parent key> IN (...)`` per relationship, the
strategy SQLAlchemy recommends for collections. Only relationships declared
in the classes of ``SELECTIN_OWNERS`` change. Ports, tags and the other
models keep ``subquery``: Neutron reads some of their collections on freshly
created rows after the session has closed, which only the subquery loads
have filled by then (with ``selectin`` a router's gateway port fails with a
DetachedInstanceError).

neutron-server is started by ``neutron_server.py`` in this directory, which
imports this module before Neutron's; nothing else imports it.
"""
import sys

import sqlalchemy.orm as orm

# Class bodies (and, for ``relation``, the standard-attribute mixin's
# declared_attr) whose subquery relationships become selectin.
SELECTIN_OWNERS = frozenset(
    ["Network", "Subnet", "NetworkSegment", "SubnetServiceType", "relation"])

_relationship = orm.relationship
_backref = orm.backref


def _selectin(kwargs, owner):
    if kwargs.get("lazy") == "subquery" and owner in SELECTIN_OWNERS:
        kwargs["lazy"] = "selectin"
    return kwargs


def relationship(*args, **kwargs):
    """``sqlalchemy.orm.relationship``, selectin for the chosen owners."""
    return _relationship(*args, **_selectin(kwargs, sys._getframe(1).f_code.co_name))


def backref(name, **kwargs):
    """``sqlalchemy.orm.backref``, selectin for the chosen owners."""
    return _backref(name, **_selectin(kwargs, sys._getframe(1).f_code.co_name))


def install():
    """Patch ``sqlalchemy.orm``; must run before Neutron imports its models."""
    orm.relationship = relationship
    orm.backref = backref


install()
