"""The compute API's ``GET /servers/detail`` in front of a stand-in's own
server lister, for :mod:`cloudcompute.listing`.

``RawServers(lister)`` answers ``conn.compute.get`` as keystoneauth does:
the query's ``tags``, ``changes-since`` and ``name`` reach the lister as its
keywords (``changes_since`` as openstacksdk spells it), so the stand-in's
own filters decide what is listed; the servers come back as Nova's JSON,
``page`` at a time, a full page linked to the next (as Nova does), and the
``marker`` honoured.
"""
import json


class Response:
    def __init__(self, body, status_code=200):
        self.status_code = status_code
        self.headers = {"Content-Type": "application/json"}
        self._body = body
        self.text = json.dumps(body)
        self.content = self.text.encode()
        self.reason = "OK" if status_code < 400 else "Error"
        self.url = "/servers/detail"
        self.request = None

    def json(self):
        return self._body


def body_of(server):
    """Nova's JSON of one server, from an openstacksdk Server or a stand-in."""
    return {"id": server.id, "name": server.name,
            "status": getattr(server, "status", None) or "ACTIVE",
            "updated": getattr(server, "updated_at", None),
            "addresses": getattr(server, "addresses", None) or {},
            "fault": getattr(server, "fault", None),
            "tags": list(getattr(server, "tags", None) or [])}


class RawServers:
    def __init__(self, lister, page=1000):
        self.lister, self.page, self.calls = lister, page, []

    def __call__(self, url, params=None, microversion=None, raise_exc=True, **kw):
        assert url == "/servers/detail", url
        assert microversion is not None, "a tag filter needs a microversion"
        query = dict(params or {})
        self.calls.append(dict(query))
        marker = query.pop("marker", None)
        if "changes-since" in query:
            query["changes_since"] = query.pop("changes-since")
        servers = [body_of(s) for s in self.lister(**query)]
        if marker is not None:
            ids = [s["id"] for s in servers]
            servers = servers[ids.index(marker) + 1:]
        body = {"servers": servers[:self.page]}
        if len(body["servers"]) == self.page:  # Nova links a full page to the next
            body["servers_links"] = [{"rel": "next", "href": "/servers/detail?marker=x"}]
        return Response(body)
