"""The cluster's watchdog: it deletes the cluster when its time is up (shipped;
stdlib only).

It runs detached on the cluster's first node (its own session, started by
:mod:`cloudcompute.autodown.launch`) and every ``poll`` seconds

- reads the deadline from its own server's metadata (``cc_expires``, which
  ``extend`` moves), keeping the last good value when the API cannot be read;
- records activity: an established TCP connection to the node's port 22
  (the client, ``cloudcompute ssh``, another node, a Dask client's forward),
  a process whose command line names the ``ccnode`` package (the job worker,
  its tasks, detached jobs), or a newer mtime of ``~/.cloudcompute/activity``;
- decides (:func:`decide`): the deadline has passed, or ``idle_minutes``
  have gone by since the last activity and nothing is busy.

Then it deletes the cluster (:class:`Ender`), in ``down()``'s order, each
kind verified gone by reading it back (404) before the next, transient faults
retried. Its own server goes last, and with it whatever needs that server:

1. the other servers, waited for until gone;
2. the floating IPs (its own too: a node reaches the API through its network);
3. the keypair;
4. the security group, after moving its own port to the project's
   ``default`` group (egress allowed), which a port needs to stay reachable
   (without such a group the security group is tagged as in 5.);
5. a network, subnet and router the cluster created cannot go while its own
   port is on them: they get the tag ``cc-ended`` and ``gc`` deletes them;
6. its own server.

Its application credential is left: Keystone does not let a restricted
credential delete credentials, itself included (see
:mod:`cloudcompute.autodown.credential`). It expires, it can reach nothing
once the resources its rules name are gone, and ``gc`` deletes it at once
(a cluster of which only the credential is left). A failed pass is started
again after ``poll`` seconds: every step treats 404 as done.
"""
import fcntl
import json
import logging
import os
import sys
import time

from . import rest

LOG = logging.getLogger("ccwatch")
ENDED_TAG = "cc-ended"
META_EXPIRES = "cc_expires"
SSH_PORT = 22


def decide(now, deadline, idle_seconds, last_active, busy):
    """Why the cluster must end now ("deadline" or "idle"), or None."""
    if deadline is not None and now >= deadline:
        return "deadline"
    if idle_seconds is not None and not busy and now - last_active >= idle_seconds:
        return "idle"
    return None


class Activity:
    """What the node is doing, read from /proc and the activity file."""

    def __init__(self, proc="/proc", activity_file=None, own_pid=None):
        self.proc = proc
        self.activity_file = activity_file or os.path.expanduser(
            "~/.cloudcompute/activity")
        self.own_pid = own_pid or os.getpid()

    def ssh_connections(self):
        count = 0
        for name in ("tcp", "tcp6"):
            try:
                with open(os.path.join(self.proc, "net", name)) as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                # local address "ADDR:PORT" in hex; state 01 = ESTABLISHED
                if len(cols) > 3 and cols[3] == "01" and \
                        int(cols[1].rsplit(":", 1)[1], 16) == SSH_PORT:
                    count += 1
        return count

    def _netns(self, pid):
        try:
            return os.readlink(os.path.join(self.proc, str(pid), "ns", "net"))
        except OSError:
            return None

    def busy(self):
        """A process of the job package (worker, task, detached job) runs on this
        node: in this network namespace (the local cloud's nodes share one
        process table, a VM's processes are all its own)."""
        mine = self._netns(self.own_pid)
        for entry in os.listdir(self.proc):
            if not entry.isdigit() or int(entry) == self.own_pid:
                continue
            try:
                with open(os.path.join(self.proc, entry, "cmdline"), "rb") as f:
                    cmdline = f.read(4096)
            except OSError:
                continue
            if b"ccnode" in cmdline and self._netns(entry) == mine:
                return True
        return False

    def touched(self):
        try:
            return os.stat(self.activity_file).st_mtime
        except OSError:
            return 0.0


class Watch:
    """The watchdog's view of one cluster between polls."""

    def __init__(self, config, session, activity, now):
        self.config = config
        self.session = session
        self.activity = activity
        self.deadline = config.get("deadline")
        idle = config.get("idle_minutes")
        self.idle_seconds = None if idle is None else float(idle) * 60
        self.last_active = now
        self.busy = False

    def refresh_deadline(self):
        try:
            status, data = self.session.request(
                "GET", "compute", "/servers/%s" % self.config["server_id"])
        except rest.ApiError as exc:
            LOG.warning("cannot read the deadline (keeping %s): %s", self.deadline, exc)
            return
        if status != 200 or not isinstance(data, dict):
            LOG.warning("reading the deadline: %s", status)
            return
        raw = ((data.get("server") or {}).get("metadata") or {}).get(META_EXPIRES)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            LOG.warning("%s %r is not a time; keeping %s", META_EXPIRES, raw, self.deadline)
            return
        if value == value and value > 0:
            self.deadline = value

    def step(self, now):
        """Observe once; the reason to end the cluster now, or None."""
        self.refresh_deadline()
        self.busy = self.activity.busy()
        if self.busy or self.activity.ssh_connections():
            self.last_active = now
        self.last_active = max(self.last_active, self.activity.touched())
        return decide(now, self.deadline, self.idle_seconds, self.last_active, self.busy)


class Ender:
    """Deletes the cluster through the API, verifying each kind is gone."""

    def __init__(self, config, session, timeout=300.0, poll=1.0, clock=time.monotonic,
                 sleep=None):
        self.c = config
        self.s = session
        self.timeout = timeout
        self.poll = poll
        self.clock = clock
        self.sleep = sleep or rest.SLEEP

    def _delete(self, service, path):
        status, data = self.s.request("DELETE", service, path)
        if status not in (200, 202, 204, 404):
            raise rest.ApiError("DELETE", path, status, json.dumps(data)[:200])

    def _wait_gone(self, service, paths):
        end = self.clock() + self.timeout
        left = list(paths)
        while left:
            left = [p for p in left if self.s.request("GET", service, p)[0] != 404]
            if not left:
                return
            if self.clock() > end:
                raise rest.ApiError("GET", ", ".join(left), None,
                                    "still present after %.0fs" % self.timeout)
            self.sleep(self.poll)

    def _delete_verified(self, service, paths, in_use_retry=False):
        end = self.clock() + self.timeout
        for path in paths:
            while True:
                try:
                    self._delete(service, path)
                    break
                except rest.ApiError as exc:
                    # a group still used by ports that are going away
                    if not (in_use_retry and exc.status == 409 and self.clock() < end):
                        raise
                    self.sleep(self.poll)
        self._wait_gone(service, paths)

    def run(self):
        c = self.c
        others = ["/servers/%s" % s for s in c.get("servers", []) if s != c["server_id"]]
        for path in others:
            self._delete("compute", path)
        self._wait_gone("compute", others)
        LOG.info("servers deleted: %d", len(others))
        self._delete_verified("network", ["/floatingips/%s" % f
                                          for f in c.get("floating_ips", [])])
        if c.get("keypair"):
            self._delete_verified("compute", ["/os-keypairs/%s" % c["keypair"]])
        sg = c.get("security_group")
        if sg and c.get("default_security_group") and c.get("own_port"):
            status, data = self.s.request(
                "PUT", "network", "/ports/%s" % c["own_port"],
                {"port": {"security_groups": [c["default_security_group"]]}})
            if status not in (200, 404):
                raise rest.ApiError("PUT", "/ports/%s" % c["own_port"], status,
                                    json.dumps(data)[:200])
            self._delete_verified("network", ["/security-groups/%s" % sg], in_use_retry=True)
        leftovers = {k: list(v) for k, v in c.get("leftovers", {}).items()}
        if sg and not (c.get("default_security_group") and c.get("own_port")):
            leftovers["security-groups"] = [sg]  # no group to move its port to
        for kind in ("security-groups", "routers", "subnets", "networks"):
            for rid in leftovers.get(kind, []):
                status, _ = self.s.request("PUT", "network", "/%s/%s/tags/%s"
                                           % (kind, rid, ENDED_TAG))
                if status not in (200, 201, 204, 404):
                    raise rest.ApiError("PUT", "/%s/%s/tags" % (kind, rid), status, "")
        LOG.info("cluster %s: deleting this node's server, the last of it", c.get("cluster_id"))
        self._delete("compute", "/servers/%s" % c["server_id"])


def _write_status(path, **fields):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(fields, time=time.time()), f)
    os.replace(tmp, path)


def main(argv):
    """``watchdog.py DIR``: DIR holds config.json and credential.json (0600)."""
    home = argv[0]
    os.umask(0o077)
    logging.basicConfig(filename=os.path.join(home, "watchdog.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    lock = open(os.path.join(home, "lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        LOG.info("another watchdog runs for this cluster")
        return 0
    with open(os.path.join(home, "config.json")) as f:
        config = json.load(f)
    status_file = os.path.join(home, "status.json")
    poll = float(config.get("poll", 15))
    watch = session = None
    while True:
        try:
            with open(os.path.join(home, "credential.json")) as f:
                cred = json.load(f)  # read each pass: extend may replace it
            if session is None or session.credential_id != cred["id"]:
                session = rest.Session(config["auth_url"], cred["id"], cred["secret"],
                                       config.get("api_host"), config.get("region"),
                                       config.get("interface", "public"))
            config["credential_id"] = cred["id"]
            if watch is None:
                watch = Watch(config, session, Activity(), time.time())
            watch.session = session
            reason = watch.step(time.time())
            _write_status(status_file, state="watching", deadline=watch.deadline,
                          last_active=watch.last_active, busy=watch.busy)
            if reason:
                LOG.info("ending cluster %s: %s", config.get("cluster_id"), reason)
                _write_status(status_file, state="ending", reason=reason)
                Ender(config, session, float(config.get("timeout", 300))).run()
                _write_status(status_file, state="ended", reason=reason)
                return 0
        except (rest.ApiError, OSError, ValueError, KeyError) as exc:
            LOG.warning("pass failed (will try again): %s", exc)
            _write_status(status_file, state="retrying", error=str(exc)[:300])
        time.sleep(poll)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
