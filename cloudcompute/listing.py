"""Server listings read as plain data, and the APIs' timestamps.

A wait lists a cluster's servers every poll cycle, and at hundreds of
servers what that costs the client is the listing's objects: openstacksdk
builds a full resource per server (a millisecond or more of CPU each),
where a wait reads five fields. :func:`servers` asks the compute API for the
same ``GET /servers/detail`` pages and keeps those fields in a
:class:`ServerView`; everything else about a server still goes through
openstacksdk.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Dict, List, Mapping, Optional

from openstack import exceptions as os_exc

MICROVERSION = "2.26"
"""The first one that filters servers by tag."""
MAX_PAGES = 10000
"""A listing that keeps announcing a next page past this many is refused."""


@dataclasses.dataclass(frozen=True)
class ServerView:
    """What a wait reads of one listed server."""
    id: str
    name: str
    status: str
    updated_at: Optional[str] = None
    addresses: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fault: Optional[Mapping[str, Any]] = None

    @classmethod
    def from_api(cls, body: Any) -> "ServerView":
        """One entry of a ``servers`` list; a field of the wrong type is left
        empty, an entry without an id is a ValueError."""
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise ValueError("a listed server without an id: %.200r" % (body,))

        def text(key: str) -> str:
            value = body.get(key)
            return value if isinstance(value, str) else ""
        addresses = body.get("addresses")
        fault = body.get("fault")
        return cls(id=body["id"], name=text("name"), status=text("status").upper(),
                   updated_at=text("updated") or None,
                   addresses=addresses if isinstance(addresses, dict) else {},
                   fault=fault if isinstance(fault, dict) else None)


def servers(conn: Any, **query: str) -> List[ServerView]:
    """``GET /servers/detail`` with ``query`` (``tags``, ``changes-since``,
    ``name``, ...), every page; HTTP errors raise as openstacksdk's."""
    params: Dict[str, str] = dict(query)
    out: List[ServerView] = []
    for _ in range(MAX_PAGES):
        response = conn.compute.get("/servers/detail", params=params,
                                    microversion=MICROVERSION, raise_exc=False)
        os_exc.raise_from_response(response)
        try:
            body = response.json()
            page = body.get("servers") if isinstance(body, dict) else None
            if not isinstance(page, list):
                raise ValueError("no list of servers")
            out.extend(ServerView.from_api(s) for s in page)
        except ValueError as exc:  # JSONDecodeError included
            raise os_exc.SDKException("the server listing is not Nova's: %s" % exc) from exc
        links = body.get("servers_links")
        if not page or not isinstance(links, list) or not any(
                isinstance(link, dict) and link.get("rel") == "next" for link in links):
            return out
        params["marker"] = out[-1].id
    raise os_exc.SDKException("the server listing did not end after %d pages" % MAX_PAGES)


def parse_time(value: Any) -> Optional[float]:
    """An API timestamp (ISO 8601; UTC where no zone is given, as Keystone's
    ``expires_at`` and Nova's keypair ``created_at``) as epoch seconds, or None."""
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()
