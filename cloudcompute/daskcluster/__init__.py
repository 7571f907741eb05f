"""Dask on a cloudcompute cluster: ``Cluster.dask()`` (optional extra ``dask``).

``map`` and ``map_partitions`` cover work that splits into independent
tasks; Dask adds a scheduler (task graphs, shuffles, joins, data that stays
on the workers). cloudcompute starts Dask's own processes on the nodes it
provisioned and keeps its guarantees around them:

- **No open ports.** The scheduler runs on the first node, one worker per
  node; all of them bind to the nodes' fixed IPs and talk over the private
  network, which the cluster's security group opens only to its members.
  The client reaches the scheduler and the dashboard through SSH
  ``direct-tcpip`` channels of a verified connection, served on 127.0.0.1
  ephemeral ports (:mod:`cloudcompute.daskcluster.forward`).
- **Same versions.** dask, distributed, cloudpickle and msgpack (and the
  Python minor version) must be the client's on every node; ``prepare``
  ships them as wheels over SSH (no internet needed on the nodes). What
  cannot be matched is an ``EnvironmentMismatch`` naming both sides, before
  any Dask process starts (:mod:`cloudcompute.daskcluster.versions`).
- **Nothing left behind.** Processes run detached with pid files
  (:mod:`cloudcompute.daskcluster.remote`); the ``with`` block of the
  client, ``down()``, a failed or interrupted start-up all stop them.

Importing this package needs no Dask; ``client()`` does.
"""
from __future__ import annotations

import logging
from typing import Any

from cloudcompute.daskcluster.handle import (DaskHandle, DaskOptions, DaskStartError,
                                             stop_processes)
from cloudcompute.daskcluster.versions import DaskNotInstalled

LOG = logging.getLogger("cloudcompute.dask")

__all__ = ["client", "stop", "detach", "DaskHandle", "DaskOptions", "DaskStartError",
           "DaskNotInstalled"]


def client(cluster: Any, **options: Any) -> Any:
    """The cluster's connected ``distributed.Client``, starting Dask if needed.

    Calling it again returns the same Client while it is open. Its ``with``
    block closes it and stops the Dask processes. Options: see
    :class:`DaskOptions`."""
    handle = getattr(cluster, "_dask_handle", None)
    if handle is not None:
        if handle.usable():
            return handle.client
        handle.close(stop=False)  # closed by the caller: reconnect to what runs
    handle = DaskHandle(cluster, DaskOptions(**options))
    client = handle.start()
    cluster._dask_handle = handle
    return client


def detach(cluster: Any) -> None:
    """Close this process's Client and forwards; leave the Dask processes running
    (``cloudcompute dask NAME`` finds them, ``down()`` stops them)."""
    handle = getattr(cluster, "_dask_handle", None)
    if handle is not None:
        handle.close(stop=False)


def stop(cluster: Any) -> None:
    """Stop the cluster's Dask processes, if any were started (``down()`` calls
    this before deleting servers). Bounded; never raises for a node it cannot
    reach, so that teardown always goes on."""
    handle = getattr(cluster, "_dask_handle", None)
    try:
        if handle is not None:
            handle.close(stop=True)
            return
        state = getattr(cluster, "state", None)
        if state is None:
            return
        record = state.record.dask
        if record is None:
            return
        stop_processes(cluster, record.nodes or cluster.node_names())
        with state.locked():
            state.record.dask = None
            state.save()
    except Exception as exc:  # teardown must go on; the servers' deletion ends them
        LOG.warning("stopping Dask on %s: %s", getattr(cluster, "name", "?"), exc)
