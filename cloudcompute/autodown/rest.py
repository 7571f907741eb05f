"""A small OpenStack REST client for the node's watchdog (shipped; stdlib only).

The node cannot be assumed to have openstacksdk, so the watchdog talks to
Keystone, Nova and Neutron with urllib. It authenticates with the cluster's
application credential, takes the endpoints from the token's catalog, and,
where the cloud's catalog names an address the node cannot use (the local
cloud's 127.0.0.1), replaces the endpoint's host by ``api_host``: an address
or the word ``gateway`` (the node's default gateway).

Transient faults (connection errors, timeouts, 408, 429, 5xx) are retried
with exponential backoff up to ``attempts`` times; a 401 re-authenticates
once. Answers larger than ``MAX_BODY`` are refused before they are read.
"""
import json
import logging
import socket
import struct
import time
import urllib.error
import urllib.parse
import urllib.request

LOG = logging.getLogger("ccwatch")
MAX_BODY = 4 << 20
TRANSIENT = {408, 429, 500, 502, 503, 504}
SLEEP = time.sleep


class ApiError(Exception):
    """An API call failed for good (or its retries ran out)."""

    def __init__(self, method, url, status, text):
        super().__init__("%s %s: %s %s" % (method, url, status, text[:200]))
        self.status = status


def default_gateway(route_file="/proc/net/route"):
    """The IPv4 default gateway of this node, or None."""
    try:
        with open(route_file) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        if len(cols) > 7 and cols[1] == "00000000" and int(cols[3], 16) & 0x2:
            return socket.inet_ntoa(struct.pack("<L", int(cols[2], 16)))
    return None


def rewrite_host(url, api_host):
    """``url`` with its host replaced by ``api_host`` (port and path kept)."""
    if not api_host:
        return url
    if api_host == "gateway":
        api_host = default_gateway() or api_host
    parts = urllib.parse.urlsplit(url)
    netloc = api_host if parts.port is None else "%s:%d" % (api_host, parts.port)
    return parts._replace(netloc=netloc).geturl()


def _retry_after(headers, wait):
    try:
        return min(30.0, max(wait, float(headers.get("Retry-After") or 0)))
    except ValueError:
        return wait


class Session:
    """Authenticated calls to the cloud on behalf of one application credential."""

    def __init__(self, auth_url, credential_id, secret, api_host=None, region=None,
                 interface="public", attempts=8, timeout=30.0, opener=None):
        self.auth_url = rewrite_host(auth_url.rstrip("/"), api_host)
        self.credential_id = credential_id
        self._secret = secret
        self.api_host = api_host
        self.region = region
        self.interface = interface
        self.attempts = attempts
        self.timeout = timeout
        self.opener = opener or urllib.request.build_opener()
        self.token = None
        self.token_expires = 0.0
        self.catalog = []
        self.user_id = None

    # -- plumbing --------------------------------------------------------
    def _once(self, method, url, body, headers):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers=dict(
            headers, **({"Content-Type": "application/json"} if data else {})))
        try:
            resp = self.opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            status, resp_headers = exc.code, exc.headers
            text = exc.read(MAX_BODY).decode("utf-8", "replace")
            exc.close()
            return status, resp_headers, text
        with resp:
            size = int(resp.headers.get("Content-Length") or 0)
            if size > MAX_BODY:
                raise ApiError(method, url, resp.status, "answer of %d bytes refused" % size)
            raw = resp.read(MAX_BODY + 1)
            if len(raw) > MAX_BODY:
                raise ApiError(method, url, resp.status, "answer over %d bytes" % MAX_BODY)
            return resp.status, resp.headers, raw.decode("utf-8", "replace")

    def _call(self, method, url, body=None, headers=None):
        """(status, headers, text); transient faults retried, the last one raised."""
        wait = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                status, resp_headers, text = self._once(method, url, body, headers or {})
            except (urllib.error.URLError, OSError, socket.timeout) as exc:
                if attempt == self.attempts:
                    raise ApiError(method, url, None, str(exc)) from exc
                LOG.info("%s %s: %s; retrying in %.1fs", method, url, exc, wait)
                SLEEP(wait)
                wait = min(wait * 2, 10.0)
                continue
            if status in TRANSIENT and attempt < self.attempts:
                delay = _retry_after(resp_headers, wait)
                LOG.info("%s %s: %d; retrying in %.1fs", method, url, status, delay)
                SLEEP(delay)
                wait = min(wait * 2, 10.0)
                continue
            return status, resp_headers, text
        raise AssertionError("unreachable")

    # -- authentication ----------------------------------------------------
    def authenticate(self):
        body = {"auth": {"identity": {"methods": ["application_credential"],
                                      "application_credential": {
                                          "id": self.credential_id,
                                          "secret": self._secret}}}}
        url = self.auth_url + "/auth/tokens"
        status, headers, text = self._call("POST", url, body)
        if status != 201:
            raise ApiError("POST", url, status, text)
        token = json.loads(text)["token"]
        self.token = headers.get("X-Subject-Token")
        self.catalog = token.get("catalog") or []
        self.user_id = (token.get("user") or {}).get("id")
        self.token_expires = time.time() + 600  # re-authenticate every ten minutes
        return token

    def endpoint(self, service_type):
        for svc in self.catalog:
            if svc.get("type") != service_type:
                continue
            for ep in svc.get("endpoints") or []:
                if ep.get("interface") == self.interface and (
                        self.region is None or ep.get("region_id") == self.region
                        or ep.get("region") == self.region):
                    return rewrite_host(ep["url"].rstrip("/"), self.api_host)
        raise ApiError("GET", "catalog", None, "no %s endpoint (%s)"
                       % (service_type, self.interface))

    def request(self, method, service_type, path, body=None, headers=None):
        """(status, parsed JSON or None) of ``method`` on the service's ``path``."""
        for attempt in (1, 2):
            if self.token is None or time.time() > self.token_expires:
                self.authenticate()
            base = self.endpoint(service_type)
            if service_type == "network" and not base.endswith("/v2.0"):
                base += "/v2.0"
            url = base + path
            hdrs = dict(headers or {}, **{"X-Auth-Token": self.token})
            status, _, text = self._call(method, url, body, hdrs)
            if status == 401 and attempt == 1:
                self.token = None
                continue
            try:
                data = json.loads(text) if text.strip() else None
            except ValueError:
                data = None
            return status, data
        raise AssertionError("unreachable")
