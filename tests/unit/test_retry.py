import pytest
from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as os_exc

from cloudcompute import retry


class FakeResponse:
    def __init__(self, code):
        self.status_code = code
        self.headers = {}
        self.text = ""

    def json(self):
        return {}


def http_error(code):
    return os_exc.HttpException(message="x", response=FakeResponse(code))


@pytest.mark.parametrize("code,transient", [(503, True), (429, True), (409, True),
                                            (500, True), (400, False), (404, False),
                                            (403, False)])
def test_transient_http(code, transient):
    assert retry.is_transient_api_error(http_error(code)) is transient


def test_connection_faults_are_transient_but_not_auth():
    assert retry.is_transient_api_error(ks_exc.ConnectFailure("reset"))
    assert not retry.is_transient_api_error(ks_exc.Unauthorized("no"))
    assert not retry.is_transient_api_error(ValueError("bug"))


def test_call_retries_then_succeeds_without_real_sleep(monkeypatch):
    sleeps = []
    monkeypatch.setattr(retry, "SLEEP", sleeps.append)
    calls = iter([http_error(503), http_error(503), "ok"])

    def flaky():
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v
    assert retry.call(flaky) == "ok"
    assert len(sleeps) == 2


def test_call_gives_up_and_reraises(monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: None)
    n = []

    def always():
        n.append(1)
        raise http_error(503)
    with pytest.raises(os_exc.HttpException):
        retry.call(always, attempts=3)
    assert len(n) == 3


def test_non_transient_is_not_retried(monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: None)
    n = []

    def bad():
        n.append(1)
        raise http_error(400)
    with pytest.raises(os_exc.HttpException):
        retry.call(bad)
    assert n == [1]


def http_error_after(code, value):
    resp = FakeResponse(code)
    resp.headers["Retry-After"] = value
    return os_exc.HttpException(message="x", response=resp)


def test_retry_after_is_honoured_and_capped(monkeypatch):
    sleeps = []
    monkeypatch.setattr(retry, "SLEEP", sleeps.append)
    calls = iter([http_error_after(429, "1.5"), http_error_after(503, "3600"), "ok"])

    def limited():
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v
    assert retry.call(limited) == "ok"
    assert sleeps == [1.5, 30.0]
    assert retry.retry_after(http_error_after(429, "soon")) is None
    assert retry.retry_after(http_error(503)) is None


def test_create_checked_finds_what_a_lost_answer_created(monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: None)
    made = []

    def create():
        made.append("server")  # created on the cloud, but the answer is lost
        raise ks_exc.ConnectFailure("reset")
    found = retry.create_checked(create, lambda: made[0] if made else None)
    assert found == "server" and made == ["server"]


def test_create_checked_retries_when_nothing_was_made(monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: None)
    calls = iter([http_error(503), "made"])

    def create():
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v
    looked = []
    assert retry.create_checked(create, lambda: looked.append(1)) == "made"
    assert looked == [1]
    with pytest.raises(os_exc.HttpException):
        retry.create_checked(lambda: (_ for _ in ()).throw(http_error(400)),
                             lambda: pytest.fail("no lookup for a permanent error"))
