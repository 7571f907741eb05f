"""ML2 mechanism driver for the all-in-one cloud: binds every port, no agent.

The all-in-one cloud has no L2 agent; its compute driver plugs ports itself
(veth + host bridge). This driver tells Neutron the binding succeeded so that
ports go ACTIVE and Nova gets ``network-vif-plugged``.
"""
from neutron_lib.api.definitions import portbindings
from neutron_lib import constants
from neutron_lib.plugins.ml2 import api

from neutron.plugins.ml2 import ovo_rpc


class NoAgentMechanismDriver(api.MechanismDriver):
    """Bind every port to its first segment with vif_type ``tap``."""

    def initialize(self):
        # ML2 pushes every port, network, subnet and security-group change to
        # the L2 agents as versioned objects: a thread reloads each changed
        # row and casts it over RPC. This cloud has no agents, so that work
        # only competed with the API requests it followed (a server build
        # changes a port twice). ML2 creates its pusher right after its
        # mechanism drivers are initialized, so it gets this inert one.
        ovo_rpc.OVOServerRpcInterface = _NoAgentsToPushTo

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_TAP,
                {portbindings.CAP_PORT_FILTER: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return


class _NoAgentsToPushTo:
    """Stands in for ML2's object-change pusher when no agent listens."""

    def wait(self):
        pass
