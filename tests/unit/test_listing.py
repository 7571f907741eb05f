"""cloudcompute.listing: server listings read as plain JSON, every page."""
import types

import pytest
from openstack import exceptions as os_exc

from cloudcompute import listing
from tests.unit.rawlist import RawServers, Response


def stand_in(n):
    return [types.SimpleNamespace(id="id-%03d" % i, name="s%d" % i, status="BUILD",
                                  updated_at="2026-01-01T00:00:%02dZ" % (i % 60),
                                  tags=["t"] if i % 2 else []) for i in range(n)]


def lister(items):
    def servers(**query):
        want = query.pop("tags", None)
        assert not query, "filter not modelled: %s" % query
        return [s for s in items if want is None or want in s.tags]
    return servers


def test_every_page_is_read_by_marker_and_filters_reach_the_cloud():
    items = stand_in(25)
    get = RawServers(lister(items), page=4)
    conn = types.SimpleNamespace(compute=types.SimpleNamespace(get=get))
    got = listing.servers(conn, tags="t")
    assert [s.id for s in got] == [s.id for s in items if "t" in s.tags]
    assert len(get.calls) == 4  # 12 tagged servers, 4 a page: 3 full pages, then the last
    assert [c.get("marker") for c in get.calls] == [None, "id-007", "id-015", "id-023"]
    assert all(c["tags"] == "t" for c in get.calls)
    assert got[0] == listing.ServerView("id-001", "s1", "BUILD", "2026-01-01T00:00:01Z")


def test_fields_of_the_wrong_type_are_left_empty_and_a_server_without_id_refused():
    view = listing.ServerView.from_api({"id": "a", "name": 7, "status": "active",
                                        "addresses": [1], "fault": "x", "updated": None})
    assert view == listing.ServerView("a", "", "ACTIVE", None, {}, None)
    with pytest.raises(ValueError, match="without an id"):
        listing.ServerView.from_api({"name": "no id"})


def test_an_http_error_raises_as_openstacksdk_and_a_body_without_servers_is_refused():
    def failing(url, **kw):
        r = Response({"computeFault": {"code": 503, "message": "busy"}}, 503)
        return r
    conn = types.SimpleNamespace(compute=types.SimpleNamespace(get=failing))
    with pytest.raises(os_exc.HttpException) as e:
        listing.servers(conn)
    assert e.value.status_code == 503
    conn.compute.get = lambda url, **kw: Response({"nothing": []})
    with pytest.raises(os_exc.SDKException, match="no list of servers"):
        listing.servers(conn)


def test_a_listing_that_never_ends_is_refused(monkeypatch):
    monkeypatch.setattr(listing, "MAX_PAGES", 3)
    endless = lambda url, params=None, **kw: Response(  # noqa: E731
        {"servers": [{"id": "x%s" % params.get("marker")}],
         "servers_links": [{"rel": "next", "href": "?"}]})
    conn = types.SimpleNamespace(compute=types.SimpleNamespace(get=endless))
    with pytest.raises(os_exc.SDKException, match="did not end after 3 pages"):
        listing.servers(conn)


def test_api_times_are_epoch_seconds_utc_without_a_zone():
    assert listing.parse_time("2026-01-01T00:00:00Z") == listing.parse_time(
        "2026-01-01T00:00:00") == 1767225600.0
    assert listing.parse_time("not a time") is None and listing.parse_time(None) is None



class NotJson(Response):
    def json(self):
        raise ValueError("Expecting value: line 1 column 1 (char 0)")


@pytest.mark.parametrize("answer", [NotJson({}), Response({"servers": [{"name": "no id"}]})],
                         ids=["html", "no-id"])
def test_a_body_that_is_not_novas_is_an_sdk_error(answer):
    conn = types.SimpleNamespace(compute=types.SimpleNamespace(get=lambda url, **kw: answer))
    with pytest.raises(os_exc.SDKException, match="not Nova's"):
        listing.servers(conn)


def test_links_that_are_not_a_list_end_the_listing():
    conn = types.SimpleNamespace(compute=types.SimpleNamespace(get=lambda url, **kw: Response(
        {"servers": [{"id": "a"}], "servers_links": 1})))
    assert [s.id for s in listing.servers(conn)] == ["a"]
