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
