"""keystoneauth's DEBUG log of real HTTP exchanges keeps no secret once cloudcompute
is imported (requests-mock answers; keystoneauth's own logging code runs)."""
import base64
import logging

import pytest
import requests_mock
from keystoneauth1 import session

import cloudcompute  # noqa: F401  (installs the filter)
from cloudcompute import redact
from cloudcompute.ssh import hostkeys

URL = "http://compute.test/v2.1/servers"


@pytest.fixture(scope="module")
def secrets():
    private, public = hostkeys.generate_ed25519()
    user_data = hostkeys.user_data_with_host_key(None, private, public)
    body_lines = [ln for ln in private.splitlines() if "PRIVATE KEY" not in ln]
    return dict(private=private, lines=body_lines,
                user_data=base64.b64encode(user_data.encode()).decode())


@pytest.mark.parametrize("split", [False, True])
def test_a_server_create_logs_no_user_data_token_or_secret(caplog, secrets, split):
    s = session.Session(split_loggers=split)
    with requests_mock.Mocker() as m, caplog.at_level(logging.DEBUG, logger="keystoneauth"):
        m.post(URL, json={"server": {"id": "s1", "adminPass": "nova-made-this"},
                          "credential": {"secret": "app-cred-secret"}},
               headers={"X-Subject-Token": "subject-token-value",
                        "Content-Type": "application/json"})  # bodies of JSON are logged
        s.post(URL, json={"server": {"name": "cc-x-node-0", "user_data": secrets["user_data"],
                                     "metadata": {"cc_name": "x"}},
                          "auth": {"password": "hunter2-pw"}},
               headers={"X-Auth-Token": "auth-token-value"})
    text = caplog.text
    # the request, and the response's body, were logged
    assert "cc-x-node-0" in text and "user_data" in text and '"id": "s1"' in text
    for secret in [secrets["user_data"], "nova-made-this", "app-cred-secret", "hunter2-pw",
                   "subject-token-value", "auth-token-value"] + secrets["lines"]:
        assert secret not in text


def test_pem_keys_and_headers_in_any_message_are_redacted(caplog, secrets):
    log = logging.getLogger("openstack.compute")
    with caplog.at_level(logging.DEBUG, logger="openstack"):
        log.debug("user data %s and header %s", secrets["private"],
                  {"X-Auth-Token": "tok-123", "Authorization": "Bearer abc"})
    assert "<redacted>" in caplog.text
    for secret in secrets["lines"] + ["tok-123", "Bearer abc"]:
        assert secret not in caplog.text


def test_ordinary_text_is_left_as_it_is():
    for text in ('{"name": "n", "status": "ACTIVE", "tokens": 3}', "GET /servers?name=x 200",
                 "100% done", "cc_name=demo"):
        assert redact.redact(text) == text


def test_install_is_idempotent_and_reaches_loggers_made_before_it():
    early = logging.getLogger("openstack.some_new_service")
    redact.install()
    redact.install()
    assert early.filters.count(redact._FILTER) == 1
    assert logging.getLogger("keystoneauth.session.body").filters.count(redact._FILTER) == 1


def test_redaction_stays_linear_on_long_messages():
    import time
    for unit in ("a.", '"a":', "x=", "'"):
        for n in (1000 << k for k in range(9)):  # up to 256,000 repeats: fails early if not
            t0 = time.monotonic()
            redact.redact(unit * n)
            assert time.monotonic() - t0 < 1.0, (unit, n)
