#!/bin/bash
# DevStack plugin of cloudcompute: installs the library and writes what the
# functional tests need. Dispatch follows DevStack's plugin interface.

function install_cloudcompute {
    setup_develop "$CLOUDCOMPUTE_DIR"
}

function configure_cloudcompute_tests {
    # clouds.yaml: DevStack's own (/etc/openstack/clouds.yaml, clouds
    # devstack and devstack-admin), plus a cloudcompute section for the tests.
    local clouds=/etc/openstack/clouds.yaml
    sudo mkdir -p "$(dirname "$CLOUDCOMPUTE_TEST_ENV")"
    sudo tee "$CLOUDCOMPUTE_TEST_ENV" >/dev/null <<EOT
export OS_CLIENT_CONFIG_FILE=$clouds
export OS_CLOUD=devstack
EOT
    sudo python3 - "$clouds" <<EOT
import sys, yaml
path = sys.argv[1]
data = yaml.safe_load(open(path))
for name in ("devstack", "devstack-admin"):
    if name in data.get("clouds", {}):
        data["clouds"][name]["cloudcompute"] = {
            "image": "$CLOUDCOMPUTE_TEST_IMAGE", "flavor": "$CLOUDCOMPUTE_TEST_FLAVOR",
            "network": "$CLOUDCOMPUTE_TEST_NETWORK", "ssh_user": "$CLOUDCOMPUTE_TEST_SSH_USER",
            "floating_ips": "auto"}
yaml.safe_dump(data, open(path, "w"), default_flow_style=False)
EOT
}

if is_service_enabled cloudcompute || [[ ",${ENABLED_SERVICES}" =~ ,"n-cpu" ]]; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing cloudcompute"
        install_cloudcompute
    elif [[ "$1" == "stack" && "$2" == "test-config" ]]; then
        echo_summary "Writing cloudcompute functional test settings"
        configure_cloudcompute_tests
    fi
    if [[ "$1" == "unstack" ]]; then
        :  # cloudcompute runs no service
    fi
    if [[ "$1" == "clean" ]]; then
        sudo rm -f "$CLOUDCOMPUTE_TEST_ENV"
    fi
fi
