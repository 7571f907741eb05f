"""ML2 mechanism driver for the all-in-one cloud: binds every port, no agent.

The all-in-one cloud has no L2 agent; its compute driver plugs ports itself
(veth + host bridge). This driver tells Neutron the binding succeeded so that
ports go ACTIVE and Nova gets ``network-vif-plugged``.
"""
from neutron_lib.api.definitions import portbindings
from neutron_lib import constants
from neutron_lib.plugins.ml2 import api


class NoAgentMechanismDriver(api.MechanismDriver):
    """Bind every port to its first segment with vif_type ``tap``."""

    def initialize(self):
        pass

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_TAP,
                {portbindings.CAP_PORT_FILTER: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
