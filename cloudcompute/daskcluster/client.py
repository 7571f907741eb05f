"""The ``distributed.Client`` that :meth:`Cluster.dask` returns: its ``with``
block also stops the cluster's Dask processes, and losing the scheduler's
node is a :class:`NodeLost` naming it. Defined on first use, so that
importing cloudcompute never needs Dask."""
from __future__ import annotations

import asyncio
from typing import Any

from cloudcompute.exceptions import NodeLost


_CLIENT_CLASS: Any = None


def client_class() -> Any:
    """``ClusterClient``: a distributed.Client made for a cloudcompute cluster (defined on
    first use, so that importing cloudcompute never needs Dask)."""
    global _CLIENT_CLASS
    if _CLIENT_CLASS is not None:
        return _CLIENT_CLASS
    import distributed
    from distributed.client import CancelledError

    class ClusterClient(distributed.Client):
        """A distributed.Client whose ``with`` block also stops the cluster's Dask
        processes; ``cloudcompute`` is its :class:`DaskHandle`."""

        cloudcompute: Any  # the DaskHandle

        @property
        def dashboard_link(self) -> str:
            handle = getattr(self, "cloudcompute", None)
            return handle.dashboard_url if handle is not None else super().dashboard_link

        def __exit__(self, *exc: Any) -> None:
            try:
                super().__exit__(*exc)
            finally:
                handle = getattr(self, "cloudcompute", None)
                if handle is not None:
                    handle.close(stop=True)

        def gather(self, futures: Any, *args: Any, **kwargs: Any) -> Any:
            """As distributed's; losing the scheduler's node raises NodeLost naming it."""
            try:
                return super().gather(futures, *args, **kwargs)
            except (CancelledError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
                handle = getattr(self, "cloudcompute", None)
                if handle is None:
                    raise
                reason = handle.scheduler_lost()
                if reason is None:
                    raise
                raise NodeLost(handle.scheduler_node.name,
                               "%s; this Dask client cannot go on (cluster.down() still "
                               "deletes everything)" % reason) from exc

    _CLIENT_CLASS = ClusterClient
    return ClusterClient
