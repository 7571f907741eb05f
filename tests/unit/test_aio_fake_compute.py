"""Unit tests of the local cloud's opt-in fake compute host: its configs (from
write-configs, no cloud needed) and the quotas it runs with."""
import configparser
import importlib
import os
import subprocess
import sys

import pytest
import yaml

AIO = os.path.join(os.path.dirname(__file__), "..", "..", "devstack", "aio")


@pytest.fixture
def etc(tmp_path):
    env = dict(os.environ, STATE=str(tmp_path), LOGS=str(tmp_path / "logs"),
               DATA=str(tmp_path / "data"), ETC=str(tmp_path / "etc"), DBPASS="db",
               SVCPASS="svc")
    subprocess.run(["bash", os.path.join(AIO, "write-configs")], env=env, check=True)
    return tmp_path / "etc"


def _conf(path):
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path)
    return parser


def test_fake_host_has_its_own_name_driver_and_trait(etc):
    fake = _conf(etc / "nova" / "nova-fake-compute.conf")
    real = _conf(etc / "nova" / "nova-compute.conf")
    assert fake["DEFAULT"]["host"] == "aio-fake"
    assert fake["DEFAULT"]["compute_driver"] == "fake.FakeDriver"
    assert real["DEFAULT"]["host"] == "cc-aio"
    assert real["DEFAULT"]["compute_driver"] == "cc_netns_driver.NetnsDriver"
    location = fake["compute"]["provider_config_location"]
    assert "compute" not in real or "provider_config_location" not in real["compute"]
    with open(os.path.join(location, "fake.yaml")) as f:
        provider = yaml.safe_load(f)["providers"][0]
    assert provider["identification"] == {"uuid": "$COMPUTE_NODE"}
    assert provider["traits"]["additional"] == ["CUSTOM_CC_FAKE"]
    # the real host waits for its L2 agent to report each port up; the fake
    # host's ports are bound without an agent, and it does not wait
    assert (real["DEFAULT"]["vif_plugging_is_fatal"], real["DEFAULT"]["vif_plugging_timeout"]) \
        == ("true", "30")
    assert (fake["DEFAULT"]["vif_plugging_is_fatal"], fake["DEFAULT"]["vif_plugging_timeout"]) \
        == ("false", "0")
    # everything else is the same as the real host's
    for section in real.sections():
        for key, value in real[section].items():
            if key not in ("host", "compute_driver", "vif_plugging_is_fatal",
                           "vif_plugging_timeout"):
                assert fake[section][key] == value, (section, key)


def test_scheduler_isolates_trait_aggregates(etc):
    nova = _conf(etc / "nova" / "nova.conf")
    assert nova["scheduler"]["enable_isolated_aggregate_filtering"] == "True"


@pytest.fixture
def fake_compute(monkeypatch, tmp_path):
    monkeypatch.setenv("CC_AIO_STATE", str(tmp_path))
    monkeypatch.syspath_prepend(os.path.join(AIO, "lib"))
    for name in ("setup_cloud", "fake_compute"):
        sys.modules.pop(name, None)
    yield importlib.import_module("fake_compute")
    for name in ("setup_cloud", "fake_compute"):
        sys.modules.pop(name, None)


def test_quotas_raised_for_500_servers_and_nothing_lowered(fake_compute):
    base = fake_compute.DEMO_QUOTAS
    raised = fake_compute.fake_quotas()
    assert raised["compute"]["instances"] >= base["compute"]["instances"] + 500
    assert raised["network"]["port"] >= base["network"]["port"] + 500
    flavor_vcpus, flavor_ram = fake_compute.FLAVOR[2], fake_compute.FLAVOR[3]
    assert raised["compute"]["cores"] >= 600 * flavor_vcpus
    assert raised["compute"]["ram"] >= 600 * flavor_ram
    for kind in base:
        assert set(raised[kind]) == set(base[kind])
        assert all(raised[kind][k] >= v for k, v in base[kind].items())
