"""ML2 mechanism driver for the opt-in fake compute host: binds without an agent.

The all-in-one cloud's own host, cc-aio, runs neutron-linuxbridge-agent, and
ML2's ``linuxbridge`` driver binds its ports. The opt-in fake compute host
(``cloud fake-compute up``, Nova's FakeDriver, servers without namespaces)
has no agent: this driver binds the ports of that host alone, so that they
go ACTIVE and Nova gets ``network-vif-plugged``. Any other host is left to
the drivers before it.
"""
from neutron_lib.api.definitions import portbindings
from neutron_lib import constants
from neutron_lib.plugins.ml2 import api

FAKE_HOSTS = frozenset(["aio-fake"])


class NoAgentMechanismDriver(api.MechanismDriver):
    """Bind the fake host's ports to their first segment with vif_type ``tap``."""

    def initialize(self):
        pass

    def bind_port(self, context):
        if context.host not in FAKE_HOSTS:
            return
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_TAP,
                {portbindings.CAP_PORT_FILTER: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
