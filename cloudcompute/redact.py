"""Keep secrets out of keystoneauth's and openstacksdk's debug logs.

At DEBUG, keystoneauth logs every request as a curl command line with its
body (``Session._http_log_request``: ``-d '<json>'``) and every response
body. Tokens in headers are hashed there, but a server create carries its
``user_data``, and ours holds each node's private host key; other calls
carry passwords or application credential secrets. :func:`install` puts a
:class:`RedactingFilter` on the loggers those libraries log through; it
rewrites a record's message before any handler sees it:

- the string value of any key naming ``user_data``, a password, a secret or
  a token, in JSON or a Python dict (``"user_data": "<redacted>"``), or as
  ``key=value``, and the id of keystone's ``"token": {"id": ...}``;
- the ``X-Auth-Token``, ``X-Subject-Token``, ``X-Service-Token`` and
  ``Authorization`` header values;
- any PEM private key block.

A logging filter only sees records logged on the logger it is attached to
(not those of its children), so the filter goes on each logger by name.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable

REDACTED = "<redacted>"

# Keys are matched whole (a run of key characters that starts where no key
# character precedes it) and then looked at for a secret's name: the patterns
# stay linear in the length of the message, however long a body is.
_SECRET_NAME = re.compile(r"user_data|password|passwd|secret|token|adminpass", re.IGNORECASE)
_K = r"A-Za-z0-9_:.-"
_QUOTED_VALUE = re.compile(
    r"""(?P<q>["'])(?P<key>[%s]+)(?P=q)(?P<sep>\s*:\s*)(?P<v>["'])(?:\\.|(?!(?P=v)).)*(?P=v)"""
    % _K, re.DOTALL)
_KEYWORD_VALUE = re.compile(
    r"""(?<![%s])(?P<key>[%s]+)=(?:(?P<v>["'])(?:\\.|(?!(?P=v)).)*(?P=v)|[^\s&,;)'"]+)"""
    % (_K, _K), re.DOTALL)
_HEADER = re.compile(
    r"""(?P<h>X-Auth-Token|X-Subject-Token|X-Service-Token|Authorization)(?P<q>["']?)"""
    r"""(?P<sep>\s*[:=]\s*)(?P<q2>["']?)(?:(?:Bearer|Basic|Token)\s+)?[^"'\s,]+""",
    re.IGNORECASE)
_TOKEN_ID = re.compile(  # keystone's token auth method: "token": {"id": "..."}
    r"""(?P<head>(?P<q>["'])token(?P=q)\s*:\s*\{\s*(?P<q2>["'])id(?P=q2)\s*:\s*)"""
    r"""(?P<v>["'])(?:\\.|(?!(?P=v)).)*(?P=v)""", re.IGNORECASE)
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?"
                  r"(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)", re.DOTALL)

LOGGERS = (
    # keystoneauth1.session: requests, responses and bodies (one logger, or
    # four with split_loggers), and the plugins and discovery.
    "keystoneauth", "keystoneauth.session", "keystoneauth.session.request",
    "keystoneauth.session.response", "keystoneauth.session.body",
    "keystoneauth.session.request-id", "keystoneauth.discovery",
    "keystoneauth.identity.base", "keystoneauth.identity.generic.base",
    "keystoneauth.identity.v3.base", "keystoneauth.identity.v2",
    # openstacksdk: the root, its helpers, and one logger per service proxy.
    "openstack", "openstack.config", "openstack.resource", "openstack.iterate_timeout",
    "openstack.fnmatch", "openstack.project_cleanup",
    "openstack.compute", "openstack.network", "openstack.image", "openstack.identity",
    "openstack.block-storage", "openstack.volume", "openstack.placement",
    "openstack.object-store", "openstack.orchestration", "openstack.dns",
    "openstack.load-balancer", "openstack.key-manager", "openstack.shared-file-system",
)


def redact(text: str) -> str:
    """``text`` with every secret this module knows of replaced by ``<redacted>``."""
    text = _PEM.sub(REDACTED, text)
    text = _QUOTED_VALUE.sub(lambda m: "%s%s%s%s%s%s%s" % (
        m["q"], m["key"], m["q"], m["sep"], m["v"], REDACTED, m["v"])
        if _SECRET_NAME.search(m["key"]) else m[0], text)
    text = _TOKEN_ID.sub(lambda m: "%s%s%s%s" % (m["head"], m["v"], REDACTED, m["v"]), text)
    text = _HEADER.sub(lambda m: "%s%s%s%s%s" % (m["h"], m["q"], m["sep"], m["q2"], REDACTED),
                       text)
    return _KEYWORD_VALUE.sub(lambda m: "%s=%s%s%s" % (
        m["key"], m["v"] or "", REDACTED, m["v"] or "")
        if _SECRET_NAME.search(m["key"]) and m[0] != m["key"] + "=" + REDACTED else m[0], text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with :func:`redact`; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's business
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactingFilter()


def install(names: Iterable[str] = LOGGERS) -> None:
    """Put the filter on ``names`` and on every logger already made under
    ``keystoneauth`` and ``openstack``; calling it again is harmless."""
    known = [n for n in list(logging.root.manager.loggerDict)
             if n.split(".")[0] in ("keystoneauth", "openstack")]
    for name in set(names) | set(known):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
