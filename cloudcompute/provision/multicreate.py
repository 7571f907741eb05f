"""Nova's multi-create: many servers of one group from one ``POST /servers``.

A request for ``k > 1`` servers carries ``min_count = max_count = k`` and
``return_reservation_id``; Nova makes all ``k`` or none, and names them
``<name>-1`` ... ``<name>-k`` (this is the node names' source). The request's
name is unique in the cluster, so what an earlier attempt made (its answer
lost) is found again by the cluster's tag and that name.

Every server of a batch shares one user-data, so no per-node host key can be
injected: the nodes' keys come from their console logs instead.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Dict, List, Optional

from openstack import exceptions as os_exc

from cloudcompute import retry, tags

LOG = logging.getLogger(__name__)

MICROVERSION = "2.52"
"""The first one that takes ``tags`` in a create request."""
REFUSED = (400, 403, 413)
"""Statuses with which a cloud refuses a multi-create (policy, limits, quota),
so its servers are created one by one instead."""


@dataclasses.dataclass
class Batch:
    """One multi-create request: ``count`` servers named from ``base``."""
    group: str
    base: str
    count: int
    reservation_id: Optional[str] = None

    @property
    def names(self) -> List[str]:
        """The names Nova gives the servers, in launch order."""
        if self.count == 1:
            return [self.base]
        return ["%s-%d" % (self.base, i) for i in range(1, self.count + 1)]


def chunks(count: int, size: int) -> List[int]:
    """``count`` split into requests of at most ``size`` servers, as evenly as
    possible (17 by 16 -> 9 + 8, not 16 + 1)."""
    size = max(1, size)
    n = -(-count // size)
    return [count // n + (1 if i < count % n else 0) for i in range(n)]


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a cloud refusing multi-create as such (policy,
    ``max_count`` over a limit), rather than a fault worth a retry."""
    status = getattr(exc, "status_code", None) or getattr(exc, "http_status", None)
    if status not in REFUSED:
        return False
    if status == 400:  # a bad request refuses the batch only if it names the count
        return "count" in ("%s %s" % (exc, getattr(exc, "details", ""))).lower()
    return True


def post(conn: Any, body: Dict[str, Any]) -> Optional[str]:
    """Send one multi-create request; its reservation id (None if the cloud
    answered with a server instead). HTTP errors raise as openstacksdk's."""
    response = conn.compute.post("/servers", json={"server": body},
                                 microversion=MICROVERSION, raise_exc=False)
    os_exc.raise_from_response(response)
    try:
        data = response.json()
    except ValueError:
        data = {}
    rid = data.get("reservation_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) else None


def find(conn: Any, cluster_id: str, batch: Batch) -> List[Any]:
    """The servers an earlier request for ``batch`` made (tag, then name)."""
    pattern = re.compile(r"^%s(-[0-9]+)?$" % re.escape(batch.base))
    return [s for s in retry.call(lambda: list(conn.compute.servers(
        details=True, tags=tags.CLUSTER_TAG + cluster_id)))
        if pattern.match(s.name or "")]


def create(conn: Any, cluster_id: str, batch: Batch, body: Dict[str, Any]) -> None:
    """Create ``batch``; a retry first looks for what an earlier attempt made
    and never creates twice. Raises as the API does (see :func:`refused`)."""
    body = dict(body, name=batch.base, min_count=batch.count, max_count=batch.count,
                return_reservation_id=True)

    def made() -> Optional[List[Any]]:
        found = find(conn, cluster_id, batch)
        return found or None

    result = retry.create_checked(lambda: post(conn, body), made)
    if isinstance(result, list):
        rids = {getattr(s, "reservation_id", None) for s in result} - {None}
        batch.reservation_id = rids.pop() if len(rids) == 1 else None
        LOG.info("batch %s: an earlier request had made %d of %d servers",
                 batch.base, len(result), batch.count)
    else:
        batch.reservation_id = result
