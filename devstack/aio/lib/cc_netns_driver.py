"""Nova virt driver of the all-in-one cloud: instances that answer SSH.

Loaded by nova-compute as ``compute_driver = cc_netns_driver.NetnsDriver``
(the rig appends this directory to ``nova.virt.__path__``). Scheduling,
resource tracking and power states are FakeDriver's; what a client can see
from outside (network, SSH, console log, user-data) is real, and is done by
``cc_netns_node``.
"""
import json
import os
import time

import eventlet
from oslo_log import log as logging

import nova.conf
from nova.compute import power_state
from nova.compute import task_states
from nova import exception
from nova.image import glance
from nova.virt import fake

import cc_netns_node as node

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)


def _vifs(network_info):
    vifs = []
    for vif in network_info or []:
        for subnet in vif["network"]["subnets"]:
            if subnet["version"] != 4 or not subnet["ips"]:
                continue
            gateway = subnet.get("gateway") or {}
            mtu = (vif["network"].get("meta") or {}).get("mtu")
            vifs.append(node.Vif(
                port_id=vif["id"], network_id=vif["network"]["id"],
                mac=vif["address"], address=subnet["ips"][0]["address"],
                prefixlen=int(subnet["cidr"].split("/")[1]),
                gateway=gateway.get("address"), mtu=int(mtu) if mtu else None))
            break
    return vifs


def _check_names(network_info, vifs):
    """The tap and bridge names Nova chose are the ones the rig makes."""
    by_port = {v.port_id: v for v in vifs}
    for vif in network_info or []:
        ours = by_port.get(vif["id"])
        if ours is None:
            continue
        for what, theirs, mine in (("tap", vif.get("devname"), ours.host_veth),
                                   ("bridge", vif["network"].get("bridge"), ours.bridge)):
            if theirs and theirs != mine:
                raise exception.InstanceDeployFailure(
                    reason="port %s: Nova names its %s %r, the rig %r"
                    % (vif["id"], what, theirs, mine))


def _plug_events(network_info):
    """The network-vif-plugged events to wait for, as Nova's libvirt driver
    waits: one per port Neutron has not yet reported active."""
    return [("network-vif-plugged", vif["id"]) for vif in network_info or []
            if vif.get("active", True) is False]


class NetnsDriver(fake.FakeDriver):
    """FakeDriver whose instances are network namespaces running sshd."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        state = os.environ.get("CC_AIO_STATE", "/var/lib/cloudcompute-aio")
        self.host = node.NodeHost(state)
        self.boot_delay = float(os.environ.get(
            "CC_AIO_BOOT_DELAY", node.DEFAULT_BOOT_DELAY))
        self._image_api = glance.API()

    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        sysmeta = instance.system_metadata or {}
        props = {k[len("image_"):]: v for k, v in sysmeta.items()
                 if k.startswith("image_")}
        try:
            knobs = node.spec_knobs(dict(instance.metadata or {}), props)
        except node.NodeError as exc:
            raise exception.InstanceDeployFailure(reason=str(exc)) from exc
        if knobs["fault"] == "spawn_error" or (
                knobs["fault"] == "spawn_error_once"
                and self.host.first_failure(knobs["fault_key"] or instance.uuid)):
            raise exception.InstanceDeployFailure(
                reason="cc_fault=%s: this spawn was told to fail" % knobs["fault"])
        if knobs["fault"] == "slow_boot":
            LOG.info("cc_fault=slow_boot: spawn waits %ss", knobs["slow_boot"],
                     instance=instance)
            time.sleep(knobs["slow_boot"])
        vifs = _vifs(network_info)
        if not vifs:
            raise exception.InstanceDeployFailure(
                reason="cc-netns instances need an IPv4 port")
        _check_names(network_info, vifs)
        spec = node.NodeSpec(
            uuid=instance.uuid,
            hostname=instance.hostname or instance.uuid,
            user=props.get("os_admin_user") or node.DEFAULT_USER,
            key_data=instance.key_data,
            user_data=instance.user_data,
            vifs=vifs,
            boot_delay=(knobs["boot_delay"] if knobs["boot_delay"] is not None
                        else self.boot_delay),
            fault=knobs["fault"],
            python_bin=props.get("cc_python_bin", ""),
        )
        try:
            self._create_plugged(instance, spec, network_info)
            with open(os.path.join(self.host.inst_dir(spec.uuid),
                                   "vifs.json"), "w") as f:
                json.dump([v.__dict__ for v in vifs], f)
        except node.NodeError as exc:
            raise exception.InstanceDeployFailure(reason=str(exc)) from exc
        LOG.info("cc-netns instance up: %s user=%s delay=%ss fault=%s",
                 ", ".join(v.address for v in vifs), spec.user,
                 spec.boot_delay, spec.fault, instance=instance)
        super().spawn(context, instance, image_meta, injected_files,
                      admin_password, allocations, network_info,
                      block_device_info, power_on, accel_info)

    def _create_plugged(self, instance, spec, network_info):
        """Create the node, then wait until Neutron reports its ports up.

        As Nova's libvirt driver does: the events are registered before the
        taps exist, the L2 agent sees the taps, wires the security groups and
        tells Neutron, which tells Nova. A port Neutron reports failed, or no
        report within ``vif_plugging_timeout``, fails the spawn when
        ``vif_plugging_is_fatal`` (the node is removed again).
        """
        timeout = CONF.vif_plugging_timeout
        events = _plug_events(network_info) if timeout else []

        def failed(event_name, instance):
            LOG.error("Neutron reported failure on event %s", event_name,
                      instance=instance)
            if CONF.vif_plugging_is_fatal:
                raise exception.VirtualInterfaceCreateException()

        try:
            with self.virtapi.wait_for_instance_event(
                    instance, events, deadline=timeout, error_callback=failed):
                self.host.create(spec)
        except eventlet.timeout.Timeout as exc:
            LOG.warning("Timeout waiting for %s", events, instance=instance)
            if CONF.vif_plugging_is_fatal:
                self.host.destroy(spec.uuid, spec.vifs)
                raise exception.VirtualInterfaceCreateException() from exc
        except exception.VirtualInterfaceCreateException:
            self.host.destroy(spec.uuid, spec.vifs)
            raise

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        vifs = _vifs(network_info)
        path = os.path.join(self.host.inst_dir(instance.uuid), "vifs.json")
        try:
            with open(path) as f:
                vifs += [node.Vif(**v) for v in json.load(f)]
        except (OSError, ValueError):
            pass
        self.host.destroy(instance.uuid, vifs)
        super().destroy(context, instance, network_info, block_device_info,
                        destroy_disks, destroy_secrets)

    # -- server actions: what a VM does, done to the node's processes ------
    def _power(self, instance, action):
        try:
            action(instance.uuid)
        except node.NodeError as exc:
            raise exception.InstanceNotFound(instance_id=instance.uuid) from exc

    def _track(self, instance, running):
        """FakeDriver's record of the instance (lost when nova-compute restarts)."""
        state = power_state.RUNNING if running else power_state.SHUTDOWN
        self.instances[instance.uuid] = fake.FakeInstance(instance.name, state,
                                                          instance.uuid)

    def power_off(self, instance, timeout=0, retry_interval=0):
        self._power(instance, self.host.stop)
        self._track(instance, False)

    def power_on(self, context, instance, network_info, block_device_info=None,
                 accel_info=None):
        self._power(instance, self.host.start)
        self._track(instance, True)

    def reboot(self, context, instance, network_info, reboot_type,
               block_device_info=None, bad_volumes_callback=None, accel_info=None):
        """Soft or hard, the node's processes end and it boots again."""
        self._power(instance, self.host.start)
        self._track(instance, True)

    def migrate_disk_and_power_off(self, context, instance, dest, flavor, network_info,
                                   block_device_info=None, timeout=0, retry_interval=0):
        """A resize powers the node off; on this one host its files stay."""
        self._power(instance, self.host.stop)
        return ""

    def finish_migration(self, context, migration, instance, disk_info, network_info,
                         image_meta, resize_instance, allocations, block_device_info=None,
                         power_on=True):
        if not os.path.isdir(self.host.inst_dir(instance.uuid)):
            return super().finish_migration(
                context, migration, instance, disk_info, network_info, image_meta,
                resize_instance, allocations, block_device_info, power_on)
        if power_on:  # a resize on this host: the same node, new flavor
            self._power(instance, self.host.start)
        self._track(instance, power_on)

    def finish_revert_migration(self, context, instance, network_info, migration,
                                block_device_info=None, power_on=True):
        if power_on:
            self._power(instance, self.host.start)
        self._track(instance, power_on)

    def snapshot(self, context, instance, image_id, update_task_state):
        """Upload the node's files to the image Nova created for the snapshot.

        The task states and the upload are those of Nova's libvirt driver:
        IMAGE_PENDING_UPLOAD while the archive is made, IMAGE_UPLOADING while
        it goes to Glance, through Nova's own image API. The image's data is
        a gzip tarball of the node's home, /tmp and /var/tmp
        (``cc_netns_node.NodeHost.archive``); its disk and container formats
        are the instance image's, so that the snapshot boots like it.
        """
        if not os.path.isdir(self.host.inst_dir(instance.uuid)):
            raise exception.InstanceNotRunning(instance_id=instance.uuid)
        snapshot = self._image_api.get(context, image_id)
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        image_meta = instance.image_meta
        metadata = {
            "status": "active",
            "name": snapshot["name"],
            "disk_format": (image_meta.disk_format
                            if image_meta.obj_attr_is_set("disk_format")
                            else "raw"),
            "container_format": (image_meta.container_format
                                 if image_meta.obj_attr_is_set("container_format")
                                 else "bare"),
            "properties": {"image_location": "snapshot",
                           "image_state": "available",
                           "owner_id": instance.project_id,
                           "cc_snapshot_content": "node files, tar.gz"},
        }
        path = os.path.join(self.host.inst_dir(instance.uuid),
                            "snapshot-%s.tar.gz" % image_id)
        try:
            # A failure here propagates: Nova deletes the image and records
            # the fault (snapshot_instance's delete_image_on_error).
            size = self.host.archive(instance.uuid, path)
            update_task_state(task_state=task_states.IMAGE_UPLOADING,
                              expected_state=task_states.IMAGE_PENDING_UPLOAD)
            with open(path, "rb") as data:
                self._image_api.update(context, image_id, metadata, data)
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        LOG.info("Snapshot image upload complete (%d bytes)", size,
                 instance=instance)

    def get_console_output(self, context, instance):
        return self.host.console(instance.uuid).encode("utf-8")
