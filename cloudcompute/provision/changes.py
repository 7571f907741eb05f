"""Listings of servers that return only what changed.

Nova's ``changes-since`` filter returns the servers updated at or after a
time, deleted ones included (with status ``DELETED``), whatever other
filters say. A wait that lists the whole cluster once and from then on only
what changed costs the client and Nova the servers that moved, not all of
them, each cycle.
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

from cloudcompute import listing

CHANGES_MARGIN = 10.0
"""Seconds a ``changes-since`` listing reaches back before the newest change
seen: updates committed late, or stamped by a host whose clock lags."""


class Changes:
    """When a wait lists only what changed: from the second cycle on, back
    to ``CHANGES_MARGIN`` before the newest ``updated`` seen, and every
    ``full_every`` seconds a whole listing again."""

    def __init__(self, full_every: float) -> None:
        self.full_every = full_every
        self.newest: Optional[float] = None  # epoch seconds, Nova's clock
        self.full_at = 0.0

    def since(self) -> Optional[str]:
        """The next listing's ``changes-since``; None for a whole listing."""
        if self.newest is None or time.monotonic() - self.full_at >= self.full_every:
            return None
        return time.strftime("%Y-%m-%dT%H:%M:%SZ",
                             time.gmtime(self.newest - CHANGES_MARGIN))

    def seen(self, servers: Sequence[Any], full: bool) -> None:
        """Take note of a listing's servers (``full``: it was a whole one)."""
        if full:
            self.full_at = time.monotonic()
        stamps = [listing.parse_time(getattr(s, "updated_at", None)) for s in servers]
        self.newest = max(filter(None, stamps + [self.newest]), default=None)
